// A burst of handshakes, half of them abandoned mid-handoff (half of those
// with FIN, half with RST), mixed with real clients: the real ones must
// spread evenly over the workers.
const net = require("net");
const { connect, report, run, sleep } = require("./lib");
const [port, n, real] = [process.argv[2], Number(process.argv[3] || 200), Number(process.argv[4] || 50)];
const HEAD = "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n";

function abandoned(i) {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => {
      s.write(HEAD);
      if (i % 2 === 0) s.end();
      else s.resetAndDestroy();
      resolve();
    });
    s.on("error", () => resolve());
    s.on("data", () => {});
  });
}

run(async () => {
  const order = Array.from({ length: n + real }, (_, i) => (i % ((n + real) / real) === 0 ? "real" : "gone"));
  let g = 0;
  const results = await Promise.all(
    order.map((kind) => (kind === "real" ? connect(port, "r", { transports: ["websocket"] }) : abandoned(g++)))
  );
  const byWorker = {};
  for (const c of results.filter(Boolean)) byWorker[c.worker] = (byWorker[c.worker] || 0) + 1;
  await sleep(6000);
  const later = await Promise.all(Array.from({ length: real }, () => connect(port, "l", { transports: ["websocket"] })));
  const laterByWorker = {};
  for (const c of later) laterByWorker[c.worker] = (laterByWorker[c.worker] || 0) + 1;
  report({ byWorker, laterByWorker });
  process.exit(0);
});
