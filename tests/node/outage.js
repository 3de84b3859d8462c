// Chat across two hosts while the Rust test takes their Redis away and
// brings it back. A client on each worker of host A and one on host B;
// every 250 ms A's first client and B's client each emit, and the tick
// records whether the emit reached A's other worker (local) and the other
// host (remote). Prints "READY", then reads phase names on stdin (each
// labels the ticks after it), or "flood N"; "end" prints "RESULT <json>".
//   outage.js PORT_A PORT_B
const readline = require("readline");
const { sleep, connect, report, run } = require("./lib");
const [portA, portB] = process.argv.slice(2);

run(async () => {
  // New sessions are spread: a few tries place one on each worker.
  const onA = [];
  for (let i = 0; i < 20 && onA.length < 2; i++) {
    const c = await connect(portA, `a${i}`, { transports: ["websocket"] });
    if (onA.some((o) => o.worker === c.worker)) c.socket.close();
    else onA.push(c);
  }
  if (onA.length < 2) throw new Error("could not place a client on each worker of host A");
  const [w1, w2] = onA;
  const b = await connect(portB, "b", { transports: ["websocket"] });
  let phase = "before";
  let ended = false;
  readline.createInterface({ input: process.stdin }).on("line", (l) => {
    const [word, n] = l.trim().split(" ");
    if (word === "end") ended = true;
    // "flood N": N broadcasts from host A, more than the bridge holds while
    // Redis is away, 100 every 25 ms, to a room no client is in (every
    // worker and the bridge get them; the chat's clients are not drowned).
    else if (word === "flood") flood(Number(n));
    else phase = word;
  });
  const flood = async (n) => {
    for (let sent = 0; sent < n; sent += 100) {
      for (let i = 0; i < 100; i++) w1.socket.emit("to-room", "nobody", "flood");
      await sleep(25);
    }
  };
  const disconnects = { a1: 0, a2: 0, b: 0 };
  w1.socket.on("disconnect", () => disconnects.a1++);
  w2.socket.on("disconnect", () => disconnects.a2++);
  b.socket.on("disconnect", () => disconnects.b++);
  console.log("READY");
  const got = (c, tag) => c.got.some(([k, m]) => k === "bcast" && m.payload && m.payload.tag === tag);
  const ticks = [];
  for (let n = 0; !ended; n++) {
    const at = Date.now();
    const label = phase;
    w1.socket.emit("broadcast", { tag: `a${n}` });
    b.socket.emit("broadcast", { tag: `b${n}` });
    await sleep(250);
    ticks.push({
      phase: label,
      at,
      local: got(w2, `a${n}`),
      remote: got(b, `a${n}`) && got(w1, `b${n}`) && got(w2, `b${n}`),
    });
    for (const c of [w1, w2, b]) c.got = [];
  }
  const lost = { ...disconnects };
  for (const c of [w1, w2, b]) c.socket.disconnect();
  report({ ticks, disconnects: lost });
});
