// One worker's memory grows past limits.memory_max. Holds one client on
// each of two workers, makes w1 allocate MB megabytes (touched, so
// resident), waits until w1's client is disconnected (its worker was
// stopped: by the kernel under systemd, by sio up's master otherwise), and
// checks that the other worker's client never noticed.
const { clientOnEachWorker, emitAck, report, run, sleep } = require("./lib");
const port = process.argv[2];
const mb = Number(process.argv[3] || 200);

run(async () => {
  const held = await clientOnEachWorker(port);
  const hogPid = held.w1.pid;
  held.w1.socket.emit("hog", mb);
  const t0 = Date.now();
  while (held.w1.disconnects === 0 && Date.now() - t0 < 30000) await sleep(50);
  const echo = await emitAck(held.w2, "echo", "still here");
  report({
    hogPid,
    hogDisconnected: held.w1.disconnects > 0,
    msUntilDisconnect: Date.now() - t0,
    healthyDisconnects: held.w2.disconnects,
    healthyEcho: echo.payload,
  });
  process.exit(0);
});
