// Polling-only sessions through a load balancer in front of several hosts:
// each client makes ROUNDS acknowledged round trips. A request that reaches
// a host other than the session's owner is answered "Session ID unknown"
// (400), which ends the session: it shows up in `errors`.
//   lb.js PORT CLIENTS ROUNDS
const { connect, emitAck, report, run } = require("./lib");
const [port, clientCount, rounds] = process.argv.slice(2).map(Number);

run(async () => {
  const clients = await Promise.all(Array.from({ length: clientCount }, (_, i) => connect(port, `c${i}`, { transports: ["polling"] })));
  const errors = [];
  let done = false;
  for (const c of clients) c.socket.on("disconnect", (reason) => done || errors.push(`${c.name} (${c.sid}): disconnected: ${reason}`));
  let roundTrips = 0;
  let answeredByAnother = 0;
  await Promise.all(
    clients.map(async (c) => {
      for (let i = 0; i < rounds; i++) {
        try {
          const r = await emitAck(c, "echo", i);
          roundTrips++;
          if (r.worker !== c.worker) answeredByAnother++;
        } catch (e) {
          errors.push(`${c.name} (${c.sid}): ${e.message}`);
          return;
        }
      }
    })
  );
  const byHost = {};
  const sidTags = {};
  for (const c of clients) {
    const host = c.worker.split("/")[0];
    byHost[host] = (byHost[host] || 0) + 1;
    sidTags[`${host}:${c.sid[2]}`] = (sidTags[`${host}:${c.sid[2]}`] || 0) + 1;
  }
  done = true;
  for (const c of clients) c.socket.disconnect();
  report({ clients: clientCount, roundTrips, answeredByAnother, byHost, sidTags, errors });
});
