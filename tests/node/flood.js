// Clients on every worker; on "go" (stdin) one client sends broadcasts of
// 50 KiB every 10 ms (a rate a working worker sustains) and every client not
// on the frozen worker counts what arrives.
const readline = require("readline");
const { connect, sleep, report, run } = require("./lib");
const port = process.argv[2];
const frozen = process.argv[3]; // e.g. "w3"
const count = Number(process.argv[4] || 200);

run(async () => {
  const clients = [];
  for (let i = 0; i < 9; i++) clients.push(await connect(port, `c${i}`, { transports: ["websocket"] }));
  console.log("READY " + JSON.stringify(clients.map((c) => c.worker)));
  await new Promise((resolve) => readline.createInterface({ input: process.stdin }).once("line", resolve));
  const sender = clients.find((c) => c.worker !== frozen);
  const payload = "x".repeat(50 * 1024);
  for (let i = 0; i < count; i++) {
    sender.socket.emit("broadcast", { i, payload });
    await sleep(10);
  }
  const watched = clients.filter((c) => c.worker !== frozen);
  const t0 = Date.now();
  while (watched.some((c) => c.got.length < count) && Date.now() - t0 < 20000) await sleep(100);
  report({ received: watched.map((c) => [c.worker, c.got.length]) });
  process.exit(0);
});
