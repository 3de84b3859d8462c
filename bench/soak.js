// Soak: connections churning for a while against a running `sio up`, the
// master's and agents' memory and fds sampled all along, and the slope of
// each (least squares) reported. Run by bench/soak.sh.
//   node bench/soak.js PORT MASTER_PID APP SECONDS
const fs = require("fs");
const { execFileSync } = require("child_process");
const path = require("path");
const { io } = require(path.join(__dirname, "../tests/node/node_modules/socket.io-client"));

const [port, masterPid, app, seconds] = [process.argv[2], Number(process.argv[3]), process.argv[4], Number(process.argv[5] || 600)];
const url = `http://127.0.0.1:${port}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const rssKiB = (pid) => Number((fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/) || [0, 0])[1]);
const fds = (pid) => fs.readdirSync(`/proc/${pid}/fd`).length;
const children = (pid) => fs.readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
function heapBytes() {
  const out = execFileSync(path.join(__dirname, "../target/release/sioctl"), ["status", app, "--json"]);
  return JSON.parse(out).heap_bytes;
}

function sample(t) {
  const agents = children(masterPid);
  return {
    t,
    masterRssKiB: rssKiB(masterPid),
    masterHeapKiB: heapBytes() / 1024,
    masterFds: fds(masterPid),
    agentRssKiB: agents.reduce((s, p) => s + rssKiB(p), 0) / agents.length,
    agentFds: agents.reduce((s, p) => s + fds(p), 0) / agents.length,
  };
}

/** Least-squares slope of y over t, per minute. */
function slopePerMinute(rows, key) {
  const n = rows.length;
  const mt = rows.reduce((s, r) => s + r.t, 0) / n;
  const my = rows.reduce((s, r) => s + r[key], 0) / n;
  const num = rows.reduce((s, r) => s + (r.t - mt) * (r[key] - my), 0);
  const den = rows.reduce((s, r) => s + (r.t - mt) ** 2, 0);
  return (num / den) * 60;
}

let running = true;
const stats = { opened: 0, failed: 0, broadcasts: 0 };
async function churn(transports) {
  while (running) {
    const socket = io(url, { forceNew: true, reconnection: false, transports });
    try {
      await new Promise((res, rej) => {
        socket.on("welcome", res);
        socket.on("connect_error", rej);
        setTimeout(() => rej(new Error("timeout")), 10000);
      });
      await socket.timeout(10000).emitWithAck("echo", "x");
      stats.opened++;
    } catch {
      stats.failed++;
    }
    socket.close();
  }
}

(async () => {
  const resident = [];
  for (let i = 0; i < 200; i++) {
    const s = io(url, { forceNew: true, transports: ["websocket"] });
    resident.push(s);
  }
  await sleep(2000);
  for (let i = 0; i < 4; i++) churn(i % 2 ? ["polling"] : ["websocket"]);
  const broadcaster = setInterval(() => {
    resident[0].emit("broadcast", "tick");
    stats.broadcasts++;
  }, 100);
  // Warm-up minute, then samples every 10 s.
  await sleep(Math.min(60, seconds / 5) * 1000);
  const rows = [];
  const t0 = Date.now();
  while ((Date.now() - t0) / 1000 < seconds) {
    rows.push(sample((Date.now() - t0) / 1000));
    await sleep(10000);
  }
  rows.push(sample((Date.now() - t0) / 1000));
  running = false;
  clearInterval(broadcaster);
  const keys = ["masterRssKiB", "masterHeapKiB", "masterFds", "agentRssKiB", "agentFds"];
  const summary = Object.fromEntries(
    keys.map((k) => [k, { first: rows[0][k], last: rows[rows.length - 1][k], max: Math.max(...rows.map((r) => r[k])), slopePerMinute: slopePerMinute(rows, k) }])
  );
  console.log("| figure | first | last | max | slope per minute |");
  console.log("|---|---|---|---|---|");
  for (const k of keys) {
    const s = summary[k];
    console.log(`| ${k} | ${s.first.toFixed(1)} | ${s.last.toFixed(1)} | ${s.max.toFixed(1)} | ${s.slopePerMinute.toFixed(3)} |`);
  }
  console.log(`sessions churned: ${stats.opened}, failed: ${stats.failed}, broadcasts: ${stats.broadcasts}, samples: ${rows.length}`);
  console.log("JSON " + JSON.stringify({ seconds, stats, summary, rows }));
  process.exit(0);
})();
