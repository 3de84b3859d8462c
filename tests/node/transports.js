// websocket-only, polling then upgrade, polling only, and a 300 KiB polling POST.
const { sleep, connect, emitAck, report, run } = require("./lib");
const port = process.argv[2];

run(async () => {
  const clients = [];
  for (let i = 0; i < 6; i++) clients.push(await connect(port, `ws${i}`, { transports: ["websocket"] }));
  for (let i = 0; i < 6; i++) clients.push(await connect(port, `up${i}`));
  for (let i = 0; i < 4; i++) clients.push(await connect(port, `poll${i}`, { transports: ["polling"] }));
  const byWorker = {};
  for (const c of clients) byWorker[c.worker] = (byWorker[c.worker] || 0) + 1;

  await sleep(1000);
  const ups = clients.filter((c) => c.name.startsWith("up"));
  const upgraded = ups.every((c) => c.upgraded && c.socket.io.engine.transport.name === "websocket");
  const polls = clients.filter((c) => c.name.startsWith("poll"));
  const stillPolling = polls.every((c) => c.socket.io.engine.transport.name === "polling");

  const echoes = await Promise.all(clients.map((c) => emitAck(c, "echo", { n: c.name })));
  const echoByOwner = echoes.every((e, i) => e.worker === clients[i].worker && e.payload.n === clients[i].name);

  const big = "x".repeat(300 * 1024) + "\u00e9\u20ac";
  const bigOnes = ["poll0", "poll1", "up0", "ws0"].map((n) => clients.find((c) => c.name === n));
  const bigEchoes = await Promise.all(bigOnes.map((c) => emitAck(c, "echo", big)));
  const bigOk = bigEchoes.every((r, i) => r.payload === big && r.worker === bigOnes[i].worker);

  for (const c of clients) c.socket.disconnect();
  report({ byWorker, upgraded, stillPolling, echoByOwner, bigOk });
});
