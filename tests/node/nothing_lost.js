// nodejs/node#8353: both Node routers keep reading a socket after handing it
// off, and lose the client's first bytes now and then. Here: N websocket
// sessions opened at RATE per second, each sending its namespace CONNECT
// ("40") the moment it opens; every one must be answered.
const WebSocket = require("ws");
const { report, run } = require("./lib");
const port = process.argv[2];
const n = Number(process.argv[3] || 10000);
const rate = Number(process.argv[4] || 500);

function session() {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`);
    const timer = setTimeout(() => (ws.terminate(), resolve("timeout")), 15000);
    const done = (outcome) => {
      clearTimeout(timer);
      ws.terminate();
      resolve(outcome);
    };
    ws.on("open", () => ws.send("40"));
    ws.on("message", (m) => {
      if (String(m).startsWith("40")) done("answered");
    });
    ws.on("error", (e) => done(`error ${e.message}`));
    ws.on("close", () => done("closed"));
  });
}

run(async () => {
  const started = Date.now();
  const all = [];
  for (let i = 0; i < n; i++) {
    const due = started + (i * 1000) / rate;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    all.push(session());
  }
  const outcomes = await Promise.all(all);
  const counts = {};
  for (const o of outcomes) counts[o] = (counts[o] || 0) + 1;
  report({ n, rate, seconds: (Date.now() - started) / 1000, counts });
});
