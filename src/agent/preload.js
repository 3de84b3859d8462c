// sio preload: loaded into every Node worker by its agent through
// NODE_OPTIONS=--require, before the user's worker.js, which stays unmodified.
//
// 1. Session ids carry the worker's slot (format: src/sid.rs). engine.io's
//    generateId is replaced on the prototype, so an app that sets its own
//    generateId on the instance keeps it (the master then routes its sids
//    through the table learned from sticky's announcements). A host's tag
//    (config `host_tag`) takes the place of the first random character, for
//    a load balancer in front of several hosts.
// 2. Every HTTP response says `Connection: close`. The master routes per
//    connection; a keep-alive connection reused for another session's
//    request would reach the wrong worker (socket.io-sticky#8, #17).
//    @socket.io/sticky 2.x does the same; 1.x does not.
// 3. Readiness: once the app has attached a `message` listener (sticky's
//    setupWorker and the cluster adapter both do) and its main module has
//    run, tell the agent `{type: "sio:ready"}`.
// 4. sticky announces every session twice over IPC (`sticky:connection`,
//    `sticky:disconnection`): two serialized messages, two writes and two
//    wake-ups of the agent per session. For this worker's own sids the
//    master needs them only for counting (the slot is in the sid), so they
//    travel together every SESSION_BATCH_MS as
//    `{type: "sio:sessions", opened: "sid sid…", closed: "sid…"}`. Foreign
//    sids (an app's own generateId) are routed by their announcement and
//    still go at once.
// 5. Websocket alone (config `transports`): the engine refuses long-polling,
//    and the worker accepts on the app's listening sockets
//    itself (SIO_LISTEN_FDS, inherited from the agent) once it is ready,
//    each connection given to sticky's setupWorker exactly as a handed-off
//    one would be. With no handoff to answer, a heartbeat every
//    SIO_HEARTBEAT_MS tells the agent the event loop runs.
"use strict";

const Module = require("module");
const crypto = require("crypto");
const http = require("http");
const net = require("net");

// Children of the worker must not load this file again.
if (process.env.SIO_NODE_OPTIONS !== undefined) {
  process.env.NODE_OPTIONS = process.env.SIO_NODE_OPTIONS;
  delete process.env.SIO_NODE_OPTIONS;
} else {
  delete process.env.NODE_OPTIONS;
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const slot = Number(process.env.SIO_WORKER_SLOT);
// The transports sio serves that the config leaves out (others, such as
// webtransport, never reach sio and are the app's business).
const allowed = (process.env.SIO_TRANSPORTS ?? "polling websocket").split(" ");
const refused = ["polling", "websocket"].filter((t) => !allowed.includes(t));
const listenFds = (process.env.SIO_LISTEN_FDS || "").split(" ").filter(Boolean).map(Number);
const heartbeatMs = Number(process.env.SIO_HEARTBEAT_MS);
for (const name of ["SIO_TRANSPORTS", "SIO_LISTEN_FDS", "SIO_HEARTBEAT_MS"]) delete process.env[name];
const hostTag = /^[A-Za-z0-9_-]$/.test(process.env.SIO_HOST_TAG || "") ? process.env.SIO_HOST_TAG : "";

function check(prefix) {
  let h = 0x811c9dc5;
  const s = "sio1:" + prefix;
  for (let i = 0; i < s.length; i++) {
    h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  }
  return (h ^ (h >>> 12) ^ (h >>> 24)) & 0xfff;
}

function sioGenerateId() {
  let sid = ALPHABET[slot >> 6] + ALPHABET[slot & 63] + hostTag;
  for (const b of crypto.randomBytes(16 - hostTag.length)) sid += ALPHABET[b & 63];
  const c = check(sid);
  return sid + ALPHABET[c >> 6] + ALPHABET[c & 63];
}

function patchEngineIo(eio) {
  for (const Server of [eio && eio.BaseServer, eio && eio.Server]) {
    if (typeof Server === "function" && Server.prototype && !Server.prototype.__sioPatched) {
      Object.defineProperty(Server.prototype, "__sioPatched", { value: true });
      Server.prototype.generateId = sioGenerateId;
    }
  }
  const Server = eio && eio.Server;
  if (refused.length > 0 && typeof Server === "function" && !Server.prototype.__sioTransports) {
    Object.defineProperty(Server.prototype, "__sioTransports", { value: true });
    const init = Server.prototype.init;
    Server.prototype.init = function () {
      const asked = this.opts.transports;
      this.opts.transports = asked.filter((t) => !refused.includes(t));
      if (this.opts.transports.length === 0) {
        console.error(`sio: the app's transports ${JSON.stringify(asked)} are all left out by sio's config (\`transports\`): every client is refused`);
      }
      return init.apply(this, arguments);
    };
  }
}

if (Number.isInteger(slot) && slot >= 0 && slot <= 4095) {
  const load = Module._load;
  Module._load = function (request) {
    const exported = load.apply(this, arguments);
    if (request === "engine.io") patchEngineIo(exported);
    return exported;
  };
}

const emit = http.Server.prototype.emit;
http.Server.prototype.emit = function (event, req, res) {
  if (event === "request" && res && !res.headersSent) res.setHeader("Connection", "close");
  return emit.apply(this, arguments);
};

const SESSION_BATCH_MS = 20;

function isOwnSid(sid) {
  return (
    typeof sid === "string" &&
    sid.length === 20 &&
    ALPHABET.indexOf(sid[0]) * 64 + ALPHABET.indexOf(sid[1]) === slot &&
    check(sid.slice(0, 18)) === ALPHABET.indexOf(sid[18]) * 64 + ALPHABET.indexOf(sid[19])
  );
}

if (typeof process.send === "function" && Number.isInteger(slot)) {
  const send = process.send;
  let opened = [];
  let closed = [];
  let timer = null;
  const flush = () => {
    timer = null;
    const batch = { type: "sio:sessions", opened: opened.join(" "), closed: closed.join(" ") };
    opened = [];
    closed = [];
    if (process.connected) send.call(process, batch, () => {});
  };
  process.send = function (message, ...rest) {
    const kind = message && message.type;
    if ((kind === "sticky:connection" || kind === "sticky:disconnection") && isOwnSid(message.data)) {
      (kind === "sticky:connection" ? opened : closed).push(message.data);
      if (timer === null) {
        timer = setTimeout(flush, SESSION_BATCH_MS);
        timer.unref();
      }
      const callback = rest.find((arg) => typeof arg === "function");
      if (callback) process.nextTick(callback, null);
      return true;
    }
    return send.apply(this, arguments);
  };
}

// Each connection as sticky's primary hands one over: `data` is what was
// read of it before, nothing here. A retired worker closes its sockets and
// keeps its sessions until it is stopped.
const acceptors = [];
function acceptOn(fd) {
  const server = net.createServer((socket) => process.emit("message", { type: "sticky:connection", data: Buffer.alloc(0) }, socket));
  server.on("error", (e) => {
    console.error(`sio: cannot accept on the app's socket (fd ${fd}): ${e.message}`);
    process.exit(1);
  });
  // listen({fd}) in a cluster worker asks the primary for the socket
  // (`queryServer`), whose answer here brings none. What the answer's
  // handle would be given to is `_listen2` (net's setupListenHandle, as
  // Node's own SCHED_NONE workers reach it); the backlog is sio's (see
  // src/listen.rs), so that listening again does not shorten it.
  server._listen2(null, null, null, 4096, fd);
  acceptors.push(server);
}

function stopAcceptingOnRequest() {
  process.on("message", (message) => {
    if (message && message.type === "sio:stop-accepting") acceptors.splice(0).forEach((server) => server.close());
  });
}

if (heartbeatMs > 0 && typeof process.send === "function") {
  const send = process.send;
  setInterval(() => {
    if (process.connected) send.call(process, { type: "sio:alive" }, () => {});
  }, heartbeatMs).unref();
}

let readySent = false;
process.on("newListener", (event) => {
  if (event !== "message" || readySent) return;
  readySent = true;
  setImmediate(() => {
    listenFds.forEach(acceptOn);
    if (acceptors.length > 0) stopAcceptingOnRequest();
    if (typeof process.send === "function") process.send({ type: "sio:ready" });
  });
});
