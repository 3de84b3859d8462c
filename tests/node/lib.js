// Helpers shared by the test scenarios.
const net = require("net");
const { io } = require("socket.io-client");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms)))]).finally(
    () => clearTimeout(t)
  );
}

/** A real socket.io-client connection that resolves on the worker's welcome. */
function connect(port, name, opts = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      // forceNew: otherwise io() multiplexes every client over one Engine.IO session
      const socket = io(`http://127.0.0.1:${port}`, { forceNew: true, reconnection: false, ...opts });
      const c = { name, socket, got: [], upgraded: false, disconnects: 0 };
      socket.on("welcome", (w) => {
        Object.assign(c, w);
        resolve(c);
      });
      socket.io.engine.on("upgrade", () => (c.upgraded = true));
      socket.on("bcast", (m) => c.got.push(["bcast", m]));
      socket.on("room-msg", (m) => c.got.push(["room", m]));
      socket.on("disconnect", () => c.disconnects++);
      socket.on("connect_error", (e) => reject(new Error(`${name}: connect_error ${e.message}`)));
    }),
    10000,
    `connect ${name}`
  );
}

const emitAck = (c, ...args) => withTimeout(c.socket.emitWithAck(...args), 10000, `${c.name} ${args[0]}`);

/** Sends raw bytes (possibly in several writes) and collects the whole answer until close. */
function raw(port, chunks, { gapMs = 0, timeoutMs = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1");
    const out = [];
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ data: Buffer.concat(out).toString("latin1"), timedOut: true });
    }, timeoutMs);
    s.on("connect", async () => {
      for (const c of chunks) {
        s.write(c);
        if (gapMs) await sleep(gapMs);
      }
    });
    s.on("data", (d) => out.push(d));
    s.on("error", () => {});
    s.on("close", () => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(out).toString("latin1"), timedOut: false });
    });
  });
}

/** Prints the scenario's result for the Rust test to assert on. */
function report(result) {
  console.log("RESULT " + JSON.stringify(result));
}

function run(main) {
  main().then(
    () => process.exit(0),
    (e) => {
      console.error("ERROR", e && e.stack ? e.stack : e);
      process.exit(2);
    }
  );
}

// One websocket client on each of workers w1 and w2 (new sessions are
// spread, so a few tries place them): { w1, w2 }.
async function clientOnEachWorker(port) {
  const held = {};
  for (let i = 0; i < 20 && !(held.w1 && held.w2); i++) {
    const c = await connect(port, `held${i}`, { transports: ["websocket"] });
    if (held[c.worker]) c.socket.close();
    else held[c.worker] = c;
  }
  if (!(held.w1 && held.w2)) throw new Error("could not place a client on each worker");
  return held;
}

module.exports = { sleep, withTimeout, connect, emitAck, raw, report, run, clientOnEachWorker };

const http = require("http");

/** The slot a sio sid names (first two base64url characters). */
function slotOf(sid) {
  const A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  return A.indexOf(sid[0]) * 64 + A.indexOf(sid[1]);
}

/** One HTTP request; resolves {status, headers, body}. */
function request(port, { method = "GET", path, body, headers = {}, agent }) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path, headers, agent }, (res) => {
      const parts = [];
      res.on("data", (d) => parts.push(d));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(parts).toString() }));
    });
    req.on("error", reject);
    req.setTimeout(15000, () => req.destroy(new Error("request timeout")));
    if (body !== undefined) req.end(body);
    else req.end();
  });
}

/** An Engine.IO polling handshake; resolves the new session's sid. */
async function handshake(port, extra = {}) {
  const r = await request(port, { path: "/socket.io/?EIO=4&transport=polling", ...extra });
  if (r.status !== 200) throw new Error(`handshake: ${r.status} ${r.body}`);
  return JSON.parse(r.body.slice(1)).sid;
}

// As engine.io-client writes it: the sid percent-encoded (a no-op for base64url ids).
const pollPath = (sid) => `/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`;

module.exports.slotOf = slotOf;
module.exports.request = request;
module.exports.handshake = handshake;
module.exports.pollPath = pollPath;
