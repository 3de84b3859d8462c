// Chat under chaos: N clients stay connected (reconnecting when their worker
// dies), the first K of them say something every second, and new clients
// keep arriving. The Rust test kills workers and tells this script which
// and when ("kill wN" on stdin); "report" prints what nobody can excuse:
// disconnects of clients whose worker was not killed, broadcasts lost
// between clients whose workers both lived, broadcasts received twice, new
// clients never served.
const readline = require("readline");
const { io } = require("socket.io-client");
const { withTimeout, report, sleep } = require("./lib");

const [port, n, speakers] = [process.argv[2], Number(process.argv[3] || 300), Number(process.argv[4] || 30)];
const url = `http://127.0.0.1:${port}`;
const kills = []; // { worker, t }
const sent = []; // { from, seq, t, worker }
const clients = [];

function hold(i) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { forceNew: true, transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 500 });
    const c = { i, socket, worker: null, since: null, intervals: [], disconnects: [], got: new Set(), duplicates: 0 };
    socket.on("welcome", (w) => {
      c.worker = w.worker;
      c.since = Date.now();
      resolve(c);
    });
    socket.on("disconnect", () => {
      const t = Date.now();
      c.disconnects.push({ t, worker: c.worker });
      if (c.since !== null) c.intervals.push([c.since, t, c.worker]);
      c.since = null;
    });
    socket.on("bcast", (m) => {
      const key = `${m.payload.from}:${m.payload.seq}`;
      if (c.got.has(key)) c.duplicates++;
      c.got.add(key);
    });
    setTimeout(() => reject(new Error(`client ${i} not connected`)), 20000);
  });
}

const killedNear = (worker, from, to) => kills.some((k) => k.worker === worker && k.t >= from && k.t <= to);
const connectedThrough = (c, from, to) =>
  (c.since !== null && c.since <= from) || c.intervals.some(([a, b]) => a <= from && b >= to);
const workerAt = (c, t) => {
  const i = c.intervals.find(([a, b]) => a <= t && t <= b);
  return i ? i[2] : c.since !== null && c.since <= t ? c.worker : null;
};

let speaking = true;
async function speak(c) {
  for (let seq = 0; speaking; seq++) {
    if (c.since !== null) {
      sent.push({ from: c.i, seq, t: Date.now(), worker: c.worker });
      c.socket.emit("broadcast", { from: c.i, seq });
    }
    await sleep(1000);
  }
}

const probes = { ok: 0, failed: 0, errors: {} };
async function probeLoop() {
  while (speaking) {
    const socket = io(url, { forceNew: true, transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 500 });
    try {
      await withTimeout(new Promise((res) => socket.on("welcome", res)), 10000, "probe welcome");
      probes.ok++;
    } catch (e) {
      probes.failed++;
      probes.errors[e.message] = (probes.errors[e.message] || 0) + 1;
    }
    socket.close();
    await sleep(200);
  }
}

(async () => {
  for (let i = 0; i < n; i += 50) clients.push(...(await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, j) => hold(i + j)))));
  const byWorker = {};
  for (const c of clients) byWorker[c.worker] = (byWorker[c.worker] || 0) + 1;
  console.log("READY " + JSON.stringify({ byWorker }));
  clients.slice(0, speakers).forEach(speak);
  probeLoop();
  readline.createInterface({ input: process.stdin }).on("line", async (line) => {
    const [cmd, worker] = line.split(" ");
    if (cmd === "kill") kills.push({ worker, t: Date.now() });
    if (cmd !== "report") return;
    speaking = false;
    await sleep(3000);
    // A client's disconnect is excused by a kill of its worker shortly
    // before (or a moment after: the test says "kill" once pkill returned,
    // and the client may notice first).
    const unexcused = clients.flatMap((c) => c.disconnects.filter((d) => !killedNear(d.worker, d.t - 5000, d.t + 1000)));
    // A broadcast must reach every client connected from just before it was
    // sent until well after, unless the sender's or the receiver's worker
    // was killed around then.
    let expected = 0;
    const lost = [];
    for (const m of sent) {
      if (killedNear(m.worker, m.t - 5000, m.t + 3000)) continue;
      for (const c of clients) {
        if (!connectedThrough(c, m.t - 500, m.t + 3000)) continue;
        const w = workerAt(c, m.t);
        if (!w || killedNear(w, m.t - 5000, m.t + 3000)) continue;
        expected++;
        if (!c.got.has(`${m.from}:${m.seq}`)) lost.push({ from: m.from, seq: m.seq, fromWorker: m.worker, to: c.i, toWorker: w });
      }
    }
    report({
      kills: kills.length,
      disconnects: clients.reduce((s, c) => s + c.disconnects.length, 0),
      unexcused: unexcused.slice(0, 10),
      unexcusedCount: unexcused.length,
      broadcastsSent: sent.length,
      expected,
      lostCount: lost.length,
      lost: lost.slice(0, 10),
      duplicates: clients.reduce((s, c) => s + c.duplicates, 0),
      probes,
      connectedAtEnd: clients.filter((c) => c.socket.connected).length,
    });
    process.exit(0);
  });
})().catch((e) => {
  console.error("ERROR", e.message);
  process.exit(2);
});
