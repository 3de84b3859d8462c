// Holds N connected clients while the Rust test changes things under them.
// Prints "READY <json>" once connected. Reads commands on stdin:
//   probe   start opening a fresh connection every 25 ms (handshake + echo)
//   report  print "RESULT <json>" (disconnects, reconnections, probes) and exit
const readline = require("readline");
const { io } = require("socket.io-client");
const { withTimeout, sleep } = require("./lib");

const port = process.argv[2];
const n = Number(process.argv[3] || 10);
const transports = process.argv[4] ? process.argv[4].split(",") : ["polling", "websocket"];
const url = `http://127.0.0.1:${port}`;

const clients = [];
function hold(i) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { forceNew: true, transports, reconnectionDelay: 100, reconnectionDelayMax: 1000 });
    const c = { i, socket, worker: null, firstWorker: null, disconnects: 0, welcomes: 0 };
    socket.on("welcome", (w) => {
      c.worker = w.worker;
      c.firstWorker = c.firstWorker || w.worker;
      c.welcomes++;
      resolve(c);
    });
    socket.on("disconnect", () => c.disconnects++);
    setTimeout(() => reject(new Error(`client ${i} not connected`)), 15000);
  });
}

const probes = { ok: 0, failed: 0, errors: {} };
let probing = false;
async function probeOnce() {
  const socket = io(url, { forceNew: true, reconnection: false, transports });
  try {
    await withTimeout(new Promise((res, rej) => { socket.on("welcome", res); socket.on("connect_error", rej); }), 15000, "probe welcome");
    await withTimeout(socket.emitWithAck("echo", "p"), 15000, "probe echo");
    probes.ok++;
  } catch (e) {
    probes.failed++;
    probes.errors[e.message] = (probes.errors[e.message] || 0) + 1;
  } finally {
    socket.disconnect();
  }
}
const inFlight = new Set();
async function probeLoop() {
  while (probing) {
    const p = probeOnce();
    inFlight.add(p);
    p.finally(() => inFlight.delete(p));
    await sleep(25);
  }
}

(async () => {
  for (let i = 0; i < n; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 50); j++) batch.push(hold(j));
    clients.push(...(await Promise.all(batch)));
  }
  const byWorker = {};
  for (const c of clients) byWorker[c.worker] = (byWorker[c.worker] || 0) + 1;
  console.log("READY " + JSON.stringify({ byWorker }));
  readline.createInterface({ input: process.stdin }).on("line", async (line) => {
    if (line === "probe") {
      probing = true;
      probeLoop();
    } else if (line === "report") {
      probing = false;
      await Promise.all([...inFlight]);
      // Give reconnecting clients a moment to land.
      const t0 = Date.now();
      while (clients.some((c) => !c.socket.connected) && Date.now() - t0 < 15000) await sleep(100);
      const perClient = clients.map((c) => ({ first: c.firstWorker, now: c.worker, disconnects: c.disconnects, connected: c.socket.connected }));
      console.log("RESULT " + JSON.stringify({ clients: perClient, probes }));
      process.exit(0);
    }
  });
})().catch((e) => {
  console.error("ERROR", e.message);
  process.exit(2);
});
