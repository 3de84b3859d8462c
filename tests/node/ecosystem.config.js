// The ecosystem file of @socket.io/pm2's documentation, as a user has it
// (`sioctl import` test): the app is named after its script.
module.exports = {
  apps: [
    {
      script: "worker.js",
      instances: "max",
      exec_mode: "cluster",
    },
  ],
};
