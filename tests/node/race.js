// socket.io-sticky #2: hundreds of sessions whose next request is sent the
// instant the handshake arrives, all at once. Sticky learns a session's worker
// from an asynchronous announcement and loses this race ("Session ID unknown").
const { handshake, pollPath, request, report, run } = require("./lib");
const http = require("http");
const port = process.argv[2];
const n = Number(process.argv[3] || 500);

run(async () => {
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  const outcomes = await Promise.all(
    Array.from({ length: n }, async () => {
      try {
        const sid = await handshake(port, { agent });
        const post = await request(port, { method: "POST", path: pollPath(sid), body: "40", agent, headers: { "Content-Type": "text/plain" } });
        if (post.status !== 200) return post.body.includes("Session ID unknown") ? "unknown" : `post ${post.status}`;
        const get = await request(port, { path: pollPath(sid), agent });
        if (get.status !== 200) return get.body.includes("Session ID unknown") ? "unknown" : `get ${get.status}`;
        return get.body.startsWith("40") ? "ok" : `get body ${get.body.slice(0, 20)}`;
      } catch (e) {
        return `error ${e.message}`;
      }
    })
  );
  const counts = {};
  for (const o of outcomes) counts[o] = (counts[o] || 0) + 1;
  report({ n, counts });
});
