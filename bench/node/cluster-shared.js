// Node's cluster primary with no router at all: WORKERS (default 2) workers
// run worker.js and accept on one shared listening socket, the kernel
// choosing which (`schedulingPolicy: SCHED_NONE`, set before `cluster` is
// loaded); broadcasts cross through @socket.io/cluster-adapter's
// setupPrimary. Not a deployment Socket.IO supports (nothing keeps a
// long-polling session on its worker): websocket-only clients work, and this
// is what two workers cost on the machine with no router in the way.
//   PORT=3000 WORKERS=2 node cluster-shared.js
// SIGTERM/SIGINT stop the workers, then the primary.
process.env.NODE_CLUSTER_SCHED_POLICY = "none";
const cluster = require("cluster");
const path = require("path");
const { setupPrimary } = require("@socket.io/cluster-adapter");
const runWorkers = require("./primary");

const workers = Number(process.env.WORKERS || 2);

setupPrimary();

cluster.setupPrimary({
  exec: path.join(__dirname, "worker.js"),
  serialization: "advanced",
});

runWorkers(workers, () => cluster.fork({ SHARED_LISTEN: "1" }));
