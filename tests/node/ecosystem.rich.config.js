// A richer ecosystem file (`sioctl import` test): computed values (Node
// evaluates the file), arguments, environments, limits, and options sio
// does not carry over.
const os = require("os");

module.exports = {
  apps: [
    {
      name: "rich-chat",
      script: "worker.js",
      args: ["--title", "rich chat"],
      node_args: "--max-old-space-size=256",
      instances: Math.min(2, os.cpus().length + 1),
      exec_mode: "cluster",
      env: { NODE_ENV: "development", PORT: process.env.TEST_PORT, GREETING: "hello" },
      env_production: { NODE_ENV: "production" },
      max_memory_restart: "200M",
      kill_timeout: 3000,
      watch: true,
      out_file: "/var/log/rich-chat.log",
    },
    { name: "second", script: "worker.js", instances: 1 },
  ],
};
