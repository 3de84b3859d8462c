// The cluster adapter across workers: io.emit, binary broadcast, fetchSockets,
// serverSideEmit with ack, socketsJoin then a room emit.
const { sleep, connect, emitAck, report, run } = require("./lib");
const port = process.argv[2];

run(async () => {
  const clients = [];
  for (let i = 0; i < 8; i++) clients.push(await connect(port, `c${i}`, { transports: i % 2 ? ["websocket"] : ["polling", "websocket"] }));
  const workers = [...new Set(clients.map((c) => c.worker))].sort();
  const first = (w) => clients.find((c) => c.worker === w);
  await sleep(500);

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

  const counts = await Promise.all(workers.map((w) => emitAck(first(w), "count")));
  const sse = await emitAck(first(workers[0]), "sse");

  await emitAck(first(workers[0]), "join-all", "room1");
  clients.forEach((c) => (c.got = []));
  first(workers[1]).socket.emit("to-room", "room1", "to the room");
  await sleep(500);
  const roomReached = clients.filter((c) => c.got.some(([k]) => k === "room")).length;

  for (const c of clients) c.socket.disconnect();
  report({ clients: clients.length, workers, emitReachesAll, binaryKinds, counts, sse, roomReached });
});
