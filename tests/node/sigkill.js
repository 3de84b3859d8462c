// One worker SIGKILLed: the other worker's clients stay connected, its
// fetchSockets() answers at once (sio closes the dead worker's adapters on
// its behalf), and the dead worker's clients reconnect and are served.
const { sleep, connect, emitAck, report, run } = require("./lib");
const port = process.argv[2];

run(async () => {
  const clients = [];
  for (let i = 0; i < 8; i++) {
    clients.push(await connect(port, `c${i}`, { transports: ["websocket"], reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 500 }));
  }
  const deadPid = clients[0].pid;
  const victims = clients.filter((c) => c.pid === deadPid);
  const survivors = clients.filter((c) => c.pid !== deadPid);
  if (!survivors.length) throw new Error("all clients on one worker");
  await sleep(300);
  process.kill(deadPid, "SIGKILL");
  // Time for the agent to see its worker die and the master to tell the survivor.
  await sleep(50);
  const count = await emitAck(survivors[0], "count");

  // The dead worker's clients come back (to whichever worker is ready).
  const t0 = Date.now();
  while (victims.some((c) => !c.socket.connected || c.pid === deadPid) && Date.now() - t0 < 15000) await sleep(100);
  const echoes = await Promise.all(victims.map((c) => emitAck(c, "echo", c.name).catch((e) => ({ error: e.message }))));
  report({
    victims: victims.length,
    survivors: survivors.length,
    survivorDisconnects: survivors.reduce((n, c) => n + c.disconnects, 0),
    count,
    reconnected: victims.filter((c) => c.socket.connected && c.pid !== deadPid).length,
    echoes: echoes.filter((e, i) => e.payload === victims[i].name).length,
  });
  for (const c of clients) c.socket.disconnect();
});
