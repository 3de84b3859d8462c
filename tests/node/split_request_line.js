// socket.io-sticky routes on the first read: a request line split across TCP
// segments misroutes there. sio peeks until the head is complete.
const { raw, handshake, pollPath, report, run } = require("./lib");
const port = process.argv[2];

run(async () => {
  const results = [];
  for (let i = 0; i < 12; i++) {
    const sid = await handshake(port);
    const head = `POST ${pollPath(sid)} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 2\r\n\r\n40`;
    const cut = 8 + (i % 20); // inside the request target, before the sid
    const r = await raw(port, [head.slice(0, cut), head.slice(cut)], { gapMs: 60 });
    results.push(r.data.startsWith("HTTP/1.1 200") && r.data.endsWith("ok") ? "ok" : r.data.split("\r\n")[0] + " " + r.data.slice(-60));
  }
  report({ results });
});
