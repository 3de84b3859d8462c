// N polling handshakes at once; reports each one's outcome.
const { handshake, slotOf, report, run } = require("./lib");
const port = process.argv[2];
const n = Number(process.argv[3] || 20);

run(async () => {
  const outcomes = await Promise.all(
    Array.from({ length: n }, () => handshake(port).then((sid) => `slot ${slotOf(sid)}`, (e) => `error ${e.message}`))
  );
  const counts = {};
  for (const o of outcomes) counts[o] = (counts[o] || 0) + 1;
  report({ counts });
});
