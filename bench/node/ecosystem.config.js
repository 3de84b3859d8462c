// @socket.io/pm2 (the fork of pm2) running worker.js in cluster mode, as
// https://socket.io/docs/v4/pm2/ sets it up, with 2 instances (WORKERS)
// instead of "max". The God daemon, not this file, owns the port: it reads
// PM2_PORT (default 8080) from its environment when it starts. See README.md.
const path = require("path");

module.exports = {
  apps: [
    {
      name: "bench",
      script: path.join(__dirname, "worker.js"),
      cwd: __dirname,
      instances: Number(process.env.WORKERS || 2),
      exec_mode: "cluster",
    },
  ],
};
