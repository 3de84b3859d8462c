// A stock Socket.IO worker, exactly as @socket.io/pm2 runs it: no listen();
// connections arrive through @socket.io/sticky's setupWorker, and broadcasts
// reach the other workers through @socket.io/cluster-adapter.
const { createServer } = require("http");
const { readFileSync } = require("fs");
const { join } = require("path");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/cluster-adapter");
const { setupWorker } = require("@socket.io/sticky");

const page = readFileSync(join(__dirname, "index.html"));
const httpServer = createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
  res.end(page);
});
const io = new Server(httpServer);
io.adapter(createAdapter());
setupWorker(io);

const worker = `worker ${require("cluster").worker.id} (pid ${process.pid})`;

io.on("connection", (socket) => {
  socket.emit("hello", { worker });
  socket.on("chat", (text) => io.emit("chat", { text: String(text).slice(0, 500), worker }));
});
