// What a worker's app may do to its host (see the "privileges" event of
// worker.js), asked of the worker that serves one client.
//   privileges.js PORT MASTER_PID APP
const { connect, emitAck, report, run } = require("./lib");
const [port, masterPid, app] = process.argv.slice(2);

run(async () => {
  const c = await connect(port, "probe", { transports: ["websocket"] });
  const r = await emitAck(c, "privileges", { masterPid: Number(masterPid), app });
  c.socket.close();
  report({ worker: c.worker, ...r });
});
