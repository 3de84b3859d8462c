// One Engine.IO long-polling step, for tests that follow a session by hand.
//   poll.js handshake PORT SLOT   a new session on worker SLOT (handshakes until one lands there)
//   poll.js get PORT SID          one poll of SID: its status, who answered, how long it took
const { handshake, pollPath, request, report, run, slotOf } = require("./lib");
const [cmd, port, arg] = process.argv.slice(2);

run(async () => {
  if (cmd === "handshake") {
    for (let i = 0; i < 50; i++) {
      const sid = await handshake(port);
      if (slotOf(sid) === Number(arg)) return report({ sid });
    }
    throw new Error(`no session landed on worker ${arg}`);
  }
  const t0 = Date.now();
  const r = await request(port, { path: pollPath(arg) });
  report({ status: r.status, worker: r.headers["x-sio-worker"], body: r.body, ms: Date.now() - t0 });
});
