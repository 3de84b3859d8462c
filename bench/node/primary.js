// What the benchmark's two cluster primaries (cluster-sticky.js,
// cluster-shared.js) do alike: fork the workers, fork again any that dies,
// and on SIGTERM/SIGINT stop the workers (SIGKILL after 3 s), then exit.
const cluster = require("cluster");

// `fork()` starts one worker; `onStop()` runs first when asked to stop.
module.exports = function runWorkers(workers, fork, onStop = () => {}) {
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
    onStop();
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
};
