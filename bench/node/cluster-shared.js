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

const workers = Number(process.env.WORKERS || 2);

setupPrimary();

cluster.setupPrimary({
  exec: path.join(__dirname, "worker.js"),
  serialization: "advanced",
});
const fork = () => cluster.fork({ SHARED_LISTEN: "1" });

for (let i = 0; i < workers; i++) {
  fork();
}

let stopping = false;
cluster.on("exit", (worker) => {
  if (stopping) {
    if (Object.keys(cluster.workers).length === 0) process.exit(0);
    return;
  }
  console.log(`Worker ${worker.process.pid} died`);
  fork();
});

const stop = () => {
  if (stopping) return;
  stopping = true;
  const alive = Object.values(cluster.workers);
  if (alive.length === 0) process.exit(0);
  for (const w of alive) w.process.kill("SIGTERM");
  setTimeout(() => {
    for (const w of Object.values(cluster.workers)) w.process.kill("SIGKILL");
    process.exit(0);
  }, 3000).unref();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
