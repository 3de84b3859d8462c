// One Socket.IO cluster across workers, and across hosts when given several
// entry points: from every server (worker), io.emit reaches every client and
// a binary payload stays binary; fetchSockets counts every client and
// serverCount every server; serverSideEmit with ack is answered by every
// other server; socketsJoin on one server then a room emit from another
// reach everyone.
//   cluster.js PORT [PORT...]   one entry point per host
// --websocket-only: every client connects with websocket alone, and the
// kernel, not a router, picks each one's worker: the last client of a host
// is kept for a worker none of the others reached (within 30 tries).
const { sleep, connect, emitAck, report, run } = require("./lib");
const websocketOnly = process.argv.includes("--websocket-only");
const ports = process.argv.slice(2).filter((a) => a !== "--websocket-only");

run(async () => {
  const clients = [];
  const perPort = ports.length === 1 ? 8 : 4;
  for (const [h, port] of ports.entries()) {
    const here = [];
    for (let i = 0, tries = 0; i < perPort; tries++) {
      const transports = websocketOnly || i % 2 ? ["websocket"] : ["polling", "websocket"];
      const c = await connect(port, `h${h}c${i}`, { transports });
      const last = i === perPort - 1;
      if (websocketOnly && last && tries < 30 && here.every((o) => o.worker === c.worker)) {
        c.socket.disconnect();
        continue;
      }
      here.push(c);
      i++;
    }
    clients.push(...here);
  }
  const workers = [...new Set(clients.map((c) => c.worker))].sort();
  const first = (w) => clients.find((c) => c.worker === w);
  await sleep(ports.length === 1 ? 500 : 1000);

  const emitReachesAll = {};
  for (const w of workers) {
    clients.forEach((c) => (c.got = []));
    first(w).socket.emit("broadcast", { text: `hello from ${w}` });
    await sleep(500);
    emitReachesAll[w] = clients.filter((c) => c.got.some(([k, m]) => k === "bcast" && m.from === w)).length;
  }

  clients.forEach((c) => (c.got = []));
  first(workers[0]).socket.emit("broadcast", { bin: Buffer.from([1, 2, 3, 255]) });
  await sleep(500);
  const binaryKinds = {};
  for (const c of clients) {
    const m = c.got.find(([k]) => k === "bcast");
    const b = m && m[1].payload.bin;
    const ok = b && (Buffer.isBuffer(b) || b instanceof ArrayBuffer) && Buffer.from(b).equals(Buffer.from([1, 2, 3, 255]));
    const kind = !m ? "missing" : ok ? "binary" : `other:${JSON.stringify(b).slice(0, 40)}`;
    binaryKinds[kind] = (binaryKinds[kind] || 0) + 1;
  }

  const counts = {};
  const sse = {};
  for (const w of workers) {
    counts[w] = await emitAck(first(w), "count");
    const r = await emitAck(first(w), "sse");
    sse[w] = { err: r.err, repliedBy: (r.replies || []).map((x) => x.pong).sort() };
  }

  await emitAck(first(workers[0]), "join-all", "room1");
  clients.forEach((c) => (c.got = []));
  first(workers[workers.length - 1]).socket.emit("to-room", "room1", "to the room");
  await sleep(500);
  const roomReached = clients.filter((c) => c.got.some(([k]) => k === "room")).length;

  for (const c of clients) c.socket.disconnect();
  report({ clients: clients.length, workers, emitReachesAll, binaryKinds, counts, sse, roomReached });
});
