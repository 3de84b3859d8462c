// Run as an IPC child of the Rust codec test (advanced serialization): sends
// every kind of value Node can send, expects each back unchanged after the
// Rust side decoded and re-encoded it, and checks a value the Rust side built.
const util = require("util");

const circular = { name: "loop" };
circular.self = circular;
const shared = { s: 1 };
const sparse = new Array(1000);
sparse[500] = "x";
const withProps = [1, 2, 3];
withProps.extra = "prop";
const err = new TypeError("bad thing", { cause: new Error("root") });

const values = [
  null, true, false, 0, 1, -1, 2147483647, -2147483648, 2147483648, 4294967295, 1.5, -0, NaN, Infinity, -Infinity,
  2n ** 100n, -(2n ** 64n), 0n,
  "", "ascii", "café", "€ and 😀", "\ud800 lone", "x".repeat(100000),
  { a: 1, b: { c: [1, 2, { d: "e" }] } }, { 1: "numeric key", 2: "two", z: "last" },
  [1, , 3], withProps, sparse, [],
  new Date(1700000000000), /a+b/gi, new Map([["k", 1], [{ o: 1 }, [2]]]), new Set([1, "two", null]),
  Object(true), Object(false), Object(3.5), Object("boxed"), Object(7n),
  new ArrayBuffer(4), Buffer.from([0, 1, 2, 255]), new Uint8Array([9, 8]), new Int16Array([-1, 300]),
  new Float64Array([0.5, -2]), new BigInt64Array([-5n]), new DataView(new ArrayBuffer(3)),
  new Error("plain"), new RangeError("range"), err,
  circular, [shared, shared],
  { type: 3, data: { packet: { type: 2, data: ["event", Buffer.from([1, 2])] }, opts: { rooms: [], except: [], flags: {} } }, uid: "0123456789abcdef", nsp: "/", source: "_sio_adapter" },
];

const mismatches = [];
let next = 0;
process.on("message", (msg) => {
  if (msg && msg.kind === "from-rust") {
    const expected = { kind: "from-rust", s: "h€llo 😀", latin: "café", b: Buffer.from([1, 2, 3]), n: -5, d: 1.5, arr: [1, "x", null, true, undefined] };
    const ok = util.isDeepStrictEqual(msg, expected) && Buffer.isBuffer(msg.b);
    process.send({ done: true, count: values.length, mismatches, fromRust: ok ? "ok" : util.inspect(msg) });
    return;
  }
  const { i, v } = msg;
  const same = util.isDeepStrictEqual(v, values[i]) && Object.prototype.toString.call(v) === Object.prototype.toString.call(values[i]);
  if (!same) mismatches.push({ i, sent: util.inspect(values[i]).slice(0, 80), back: util.inspect(v).slice(0, 80) });
  if (++next < values.length) process.send({ i: next, v: values[next] });
  else process.send({ ask: "from-rust" });
});
process.send({ i: 0, v: values[0] });
