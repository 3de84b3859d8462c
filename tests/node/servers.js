// The servers a worker of one host counts, over time, while the Rust test
// kills another host. A client of host A asks its worker's adapter for
// serverCount() every 250 ms. Prints "READY", then reads phase names on
// stdin (each labels the ticks after it); "end" prints "RESULT <json>".
//   servers.js PORT_A
const readline = require("readline");
const { sleep, connect, report, run } = require("./lib");
const [port] = process.argv.slice(2);

run(async () => {
  const a = await connect(port, "a", { transports: ["websocket"] });
  let phase = "before";
  let ended = false;
  readline.createInterface({ input: process.stdin }).on("line", (l) => {
    if (l.trim() === "end") ended = true;
    else phase = l.trim();
  });
  console.log("READY");
  const ticks = [];
  while (!ended) {
    const label = phase;
    const servers = await a.socket.timeout(2000).emitWithAck("servers").catch((e) => `error: ${e.message}`);
    ticks.push({ phase: label, at: Date.now(), servers });
    await sleep(250);
  }
  const disconnects = a.disconnects;
  a.socket.disconnect();
  report({ worker: a.worker, ticks, disconnects });
});
