// One worker's JavaScript gets stuck for good while clients keep arriving.
// Holds one client on each of two workers, makes worker w1 hang, then opens
// N fresh websocket sessions at once and times each until its welcome.
const { clientOnEachWorker, connect, emitAck, report, run, sleep, withTimeout } = require("./lib");
const port = process.argv[2];
const n = Number(process.argv[3] || 20);

run(async () => {
  const held = await clientOnEachWorker(port);
  held.w1.socket.emit("hang");
  await sleep(300);
  const t0 = Date.now();
  const outcomes = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      try {
        const c = await withTimeout(connect(port, `new${i}`, { transports: ["websocket"] }), 20000, `new${i}`);
        c.socket.close();
        return { ok: true, worker: c.worker, ms: Date.now() - t0 };
      } catch (e) {
        return { ok: false, error: e.message, ms: Date.now() - t0 };
      }
    })
  );
  const healthy = held.w2;
  const echo = await emitAck(healthy, "echo", "still here");
  report({
    served: outcomes.filter((o) => o.ok).length,
    failed: outcomes.filter((o) => !o.ok).map((o) => o.error),
    maxMs: Math.max(...outcomes.map((o) => o.ms)),
    byWorker: outcomes.reduce((acc, o) => ((acc[o.worker || "none"] = (acc[o.worker || "none"] || 0) + 1), acc), {}),
    healthyDisconnects: healthy.disconnects,
    healthyEcho: echo.payload,
  });
  process.exit(0);
});
