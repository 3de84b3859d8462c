// Test worker: a stock @socket.io/pm2-style Socket.IO server (setupWorker +
// createAdapter, no listen()), with events the tests drive.
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/cluster-adapter");
const { setupWorker } = require("@socket.io/sticky");

const httpServer = createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain" });
  res.end(`page from ${process.pid} for ${req.url}`);
});
const io = new Server(httpServer, { maxHttpBufferSize: 4e6 });
// An app with its own session ids (no slot inside): routed by the table the
// master learns from sticky's announcements.
// CUSTOM_IDS=base64: ids in standard base64, whose `+` and `/` the client
// percent-encodes in the query string.
if (process.env.CUSTOM_IDS === "base64") io.engine.generateId = () => "a+b/" + require("crypto").randomBytes(12).toString("base64");
else if (process.env.CUSTOM_IDS) io.engine.generateId = () => require("crypto").randomUUID();
// Under sio (a cluster parent) the worker takes connections from sticky's
// setupWorker; without one (a plain Node host beside sio hosts) it listens on
// PORT (0: a free one) and prints it.
const underCluster = typeof process.send === "function";
// ADAPTER=redis-streams | redis: the app's own Redis adapter
// (@socket.io/redis-streams-adapter or @socket.io/redis-adapter) at
// REDIS_URL instead of the cluster adapter: what an app across several
// hosts runs today. Connections are taken once the adapter is in place.
const adapter = process.env.ADAPTER || "cluster";
if (adapter === "cluster") {
  io.adapter(createAdapter());
  setupWorker(io);
} else {
  redisAdapter(adapter).then(
    (a) => {
      io.adapter(a);
      if (underCluster) setupWorker(io);
      else httpServer.listen(Number(process.env.PORT || 0), "127.0.0.1", () => console.log(`listening ${httpServer.address().port}`));
    },
    (e) => {
      console.error(`redis adapter: ${e.message}`);
      process.exit(1);
    }
  );
}

async function redisAdapter(kind) {
  const { createClient } = require("redis");
  const client = createClient({ url: process.env.REDIS_URL });
  client.on("error", (e) => console.error(`redis: ${e.message}`));
  await client.connect();
  if (kind === "redis-streams") return require("@socket.io/redis-streams-adapter").createAdapter(client);
  if (kind !== "redis") throw new Error(`unknown ADAPTER ${kind}`);
  const subscriber = client.duplicate();
  subscriber.on("error", (e) => console.error(`redis subscriber: ${e.message}`));
  await subscriber.connect();
  return require("@socket.io/redis-adapter").createAdapter(client, subscriber);
}

// Who answers: `w<cluster worker id>`, or `node` without a cluster parent,
// after HOST_NAME/ when the test runs several hosts.
const me = (process.env.HOST_NAME ? `${process.env.HOST_NAME}/` : "") + (underCluster ? `w${require("cluster").worker.id}` : "node");
// Which worker answered, on every response (engine.io's own errors too).
httpServer.prependListener("request", (req, res) => res.setHeader("X-Sio-Worker", me));

// FAKE_SESSIONS=N: announce N foreign sessions the way sticky does, so that
// a master restart has them to replay (they do not exist in engine.io: a
// request for one is answered "Session ID unknown", by this worker).
for (let i = 0; i < Number(process.env.FAKE_SESSIONS || 0); i++) {
  process.send({ type: "sticky:connection", data: `fake-${me}-${i}` });
}

const hogged = [];
io.on("connection", (socket) => {
  socket.emit("welcome", { worker: me, pid: process.pid, sid: socket.conn.id });
  socket.on("echo", (payload, ack) => ack({ worker: me, payload }));
  socket.on("broadcast", (payload) => io.emit("bcast", { from: me, payload }));
  socket.on("count", async (ack) => {
    const t0 = Date.now();
    try {
      const sockets = await io.fetchSockets();
      ack({ worker: me, count: sockets.length, servers: await io.of("/").adapter.serverCount(), ms: Date.now() - t0 });
    } catch (e) {
      ack({ worker: me, error: e.message, ms: Date.now() - t0 });
    }
  });
  // The servers this worker's adapter counts (its own included).
  socket.on("servers", async (ack) => ack(await io.of("/").adapter.serverCount()));
  socket.on("sse", (ack) => {
    io.serverSideEmit("ping", me, (err, replies) => ack({ worker: me, err: err && err.message, replies }));
  });
  socket.on("join-all", (room, ack) => {
    io.socketsJoin(room);
    setTimeout(() => ack({ worker: me }), 200);
  });
  socket.on("to-room", (room, payload) => io.to(room).emit("room-msg", { from: me, payload }));
  // What the app may do to its host: each attempt's outcome (an errno
  // code, "denied: ..." for a refused D-Bus call, or "allowed").
  socket.on("privileges", ({ masterPid, app }, ack) => {
    const fs = require("fs");
    const { execFileSync } = require("child_process");
    const attempt = (f) => {
      try {
        f();
        return "allowed";
      } catch (e) {
        if (e.stderr) return `denied: ${String(e.stderr).trim().split("\n")[0]}`;
        return e.code || String(e.message);
      }
    };
    const systemd = (method, unit) => () =>
      execFileSync("busctl", ["call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", method, "ss", unit, "replace"], { stdio: "pipe" });
    ack({
      uid: process.getuid(),
      readShadow: attempt(() => fs.readFileSync("/etc/shadow")),
      writeEtc: attempt(() => fs.writeFileSync("/etc/sio-probe", "x")),
      writeCwd: attempt(() => fs.writeFileSync(require("path").join(process.cwd(), ".sio-probe"), "x")),
      signalMaster: attempt(() => process.kill(masterPid, 0)),
      readMaster: attempt(() => fs.readFileSync(`/proc/${masterPid}/environ`)),
      stopDbus: attempt(systemd("StopUnit", "dbus.service")),
      stopSibling: attempt(systemd("StopUnit", `sio-worker@${app}:2.service`)),
      startWorker: attempt(systemd("StartUnit", `sio-worker@${app}:3.service`)),
    });
  });
  // Where this worker's Node is, as another app's code would look for it.
  socket.on("whereabouts", (ack) =>
    ack({ pid: process.pid, uid: process.getuid(), preload: Object.keys(require.cache).find((m) => /preload-[0-9a-f]+\.cjs$/.test(m)) }),
  );
  // What this app may do to another app's workers (see neighbours.js):
  // each attempt's outcome, an errno code or "allowed".
  socket.on("neighbour", async ({ ownConfig, config, pid, bus, preload }, ack) => {
    const fs = require("fs");
    const path = require("path");
    const attempt = (f) => {
      try {
        f();
        return "allowed";
      } catch (e) {
        return e.code || String(e.message);
      }
    };
    const reachBus = await new Promise((resolve) => {
      const c = require("net").connect(bus);
      c.on("connect", () => {
        c.destroy();
        resolve("allowed");
      });
      c.on("error", (e) => resolve(e.code || String(e.message)));
    });
    ack({
      uid: process.getuid(),
      readOwnConfig: attempt(() => fs.readFileSync(ownConfig)),
      readConfig: attempt(() => fs.readFileSync(config)),
      readEnviron: attempt(() => fs.readFileSync(`/proc/${pid}/environ`)),
      signal: attempt(() => process.kill(pid, 0)),
      reachBus,
      writePreload: attempt(() => fs.appendFileSync(preload, "")),
      writeBesidePreload: attempt(() => fs.writeFileSync(path.join(path.dirname(preload), "preload-0000000000000000.cjs"), "")),
    });
  });
  // The app's memory grows: MB megabytes of live, touched buffers.
  socket.on("hog", (mb) => {
    for (let i = 0; i < mb; i++) hogged.push(Buffer.alloc(1 << 20, 1));
  });
  // The app's JavaScript gets stuck for good: its event loop never runs again.
  socket.on("hang", () => {
    for (;;) {}
  });
});

io.on("ping", (from, cb) => cb({ pong: me, from }));

// A worker that leaves the cluster on its own: Node waits for the parent's
// ack of exitedAfterDisconnect, closes the channel, and lingers (timers).
if (process.env.DISCONNECT_AFTER_MS) {
  setTimeout(() => {
    console.log(`disconnecting ${me}`);
    require("cluster").worker.disconnect();
  }, Number(process.env.DISCONNECT_AFTER_MS));
}

// SEND_HANDLE: the app passes a handle to its parent (process.send with a
// server), which Node's sender holds every later message behind until the
// parent answers it.
if (process.env.SEND_HANDLE) {
  const server = require("net").createServer();
  // exclusive: bound by the worker itself, not through cluster's primary.
  server.listen({ port: 0, host: "127.0.0.1", exclusive: true }, () => process.send({ type: "app:handle" }, server));
}

// Some apps also call listen() out of habit: under a cluster parent that
// asks the primary (queryServer) and must still work.
if (process.env.CALL_LISTEN) {
  httpServer.listen(Number(process.env.CALL_LISTEN), () => console.log(`listen callback ${me}`));
}
