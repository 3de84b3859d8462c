// socket.io-sticky #8 and #17: two sessions on one keep-alive connection.
const http = require("http");
const { raw, handshake, pollPath, request, slotOf, report, run } = require("./lib");
const port = process.argv[2];

async function sessionsOnTwoWorkers() {
  const a = await handshake(port);
  for (;;) {
    const b = await handshake(port);
    if (slotOf(b) !== slotOf(a)) return [a, b];
  }
}

run(async () => {
  // 1. An HTTP client that keeps one connection alive and reuses it.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const [a, b] = await sessionsOnTwoWorkers();
  const answers = [];
  for (const [method, sid, body] of [["POST", a, "40"], ["POST", b, "40"], ["GET", a], ["GET", b]]) {
    const r = await request(port, { method, path: pollPath(sid), body, agent, headers: body ? { "Content-Type": "text/plain" } : {} });
    answers.push({ method, slot: slotOf(sid), status: r.status, connection: r.headers.connection, body: r.body.slice(0, 40) });
  }
  agent.destroy();

  // 2. Two requests of different sessions pipelined on one TCP connection.
  const [c, d] = await sessionsOnTwoWorkers();
  const req = (sid) => `POST ${pollPath(sid)} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n40`;
  const piped = await raw(port, [req(c) + req(d)]);
  const responses = piped.data.split("HTTP/1.1 ").slice(1).map((r) => r.split("\r\n")[0] + " " + r.slice(-30));
  // The second request is not served on that connection; a client sends it again.
  const again = await request(port, { method: "POST", path: pollPath(d), body: "40", headers: { "Content-Type": "text/plain" } });
  report({ answers, pipelined: responses, timedOut: piped.timedOut, retried: { status: again.status, body: again.body } });
});
