// Node's cluster primary with @socket.io/sticky and @socket.io/cluster-adapter,
// as https://socket.io/docs/v4/using-multiple-nodes/ and
// https://socket.io/docs/v4/cluster-adapter/ set it up, forking WORKERS
// (default 2) workers that run worker.js. Listens on 127.0.0.1:$PORT.
//   PORT=3000 WORKERS=2 node cluster-sticky.js
// This process (the primary) is the router; its children are the workers.
// SIGTERM/SIGINT stop the workers, then the primary.
const cluster = require("cluster");
const http = require("http");
const path = require("path");
const { setupMaster } = require("@socket.io/sticky");
const { setupPrimary } = require("@socket.io/cluster-adapter");
const runWorkers = require("./primary");

const port = Number(process.env.PORT);
const workers = Number(process.env.WORKERS || 2);

const httpServer = http.createServer();

setupMaster(httpServer, {
  loadBalancingMethod: "least-connection",
});

setupPrimary();

cluster.setupPrimary({
  exec: path.join(__dirname, "worker.js"),
  serialization: "advanced",
});

httpServer.listen(port, "127.0.0.1");

runWorkers(workers, () => cluster.fork(), () => httpServer.close());
