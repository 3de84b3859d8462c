// The benchmark's one Socket.IO worker, used unchanged by every target.
// Stock @socket.io/pm2 style (https://socket.io/docs/v4/pm2/): no listen();
// connections arrive through @socket.io/sticky's setupWorker and broadcasts
// reach the other workers through @socket.io/cluster-adapter. Run by sio,
// @socket.io/pm2 (cluster mode) and cluster-sticky.js.
// Without an IPC channel (`node worker.js`, no parent) it is "one Node
// alone": no adapter, no sticky, it listens on 127.0.0.1:$PORT itself.
// With REDIS_URL (under sio) it takes @socket.io/redis-streams-adapter
// instead of the cluster adapter: the workers of two sio hosts reaching each
// other through Redis themselves, the anchor of sio's host bridge.
// With SHARED_LISTEN (cluster-shared.js) it listens itself, on the socket
// Node's cluster shares between the workers: two workers, no router.
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/cluster-adapter");
const { setupWorker } = require("@socket.io/sticky");

const httpServer = createServer();
const io = new Server(httpServer);

if (process.send && process.env.REDIS_URL) {
  // The cross-host anchor: the app's own @socket.io/redis-streams-adapter
  // (its own Redis connections in every worker), connections taken once it
  // is in place.
  const { createClient } = require("redis");
  const client = createClient({ url: process.env.REDIS_URL });
  client.on("error", (e) => console.error(`redis: ${e.message}`));
  client.connect().then(
    () => {
      io.adapter(require("@socket.io/redis-streams-adapter").createAdapter(client));
      setupWorker(io);
    },
    (e) => {
      console.error(`cannot reach Redis at ${process.env.REDIS_URL}: ${e.message}`);
      process.exit(1);
    }
  );
} else if (process.send && process.env.SHARED_LISTEN) {
  // cluster-shared.js: no router, the workers accept on one shared socket.
  io.adapter(createAdapter());
  httpServer.listen(Number(process.env.PORT), "127.0.0.1");
} else if (process.send) {
  io.adapter(createAdapter());
  setupWorker(io);
} else {
  httpServer.listen(Number(process.env.PORT), "127.0.0.1");
}

io.on("connection", (socket) => {
  // Which worker serves this session (balance across workers).
  socket.on("who", (ack) => typeof ack === "function" && ack(process.pid));
  // Fan-out: to every client on every worker.
  socket.on("bcast", (payload) => io.emit("m", payload));
});
