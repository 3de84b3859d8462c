// N requests at once for sessions announced by FAKE_SESSIONS workers
// ("fake-wK-I"), sent while the master restarts: each must reach the worker
// that announced it (its X-Sio-Worker header), however long it waited.
const http = require("http");
const { report, run } = require("./lib");
const [port, n, workers, perWorker] = process.argv.slice(2).map(Number);

run(async () => {
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  const t0 = Date.now();
  const outcomes = await Promise.all(
    Array.from({ length: n }, (_, i) => {
      const owner = `w${1 + (i % workers)}`;
      const sid = `fake-${owner}-${(i * 7919) % perWorker}`;
      return new Promise((resolve) => {
        const req = http.get({ host: "127.0.0.1", port, path: `/socket.io/?EIO=4&transport=polling&sid=${sid}`, agent }, (res) => {
          res.resume();
          res.on("end", () => resolve(res.headers["x-sio-worker"] === owner ? "right worker" : `${res.statusCode} from ${res.headers["x-sio-worker"]}`));
        });
        req.on("error", (e) => resolve(`error ${e.code || e.message}`));
        req.setTimeout(30000, () => req.destroy(new Error("timeout")));
      });
    })
  );
  const counts = {};
  for (const o of outcomes) counts[o] = (counts[o] || 0) + 1;
  report({ counts, ms: Date.now() - t0 });
});
