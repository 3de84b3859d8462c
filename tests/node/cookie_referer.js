// sticky's sid regex scans the whole head: a sid= in a Cookie or Referer
// header routes there. sio reads the sid from the request target only.
const { handshake, pollPath, request, slotOf, report, run } = require("./lib");
const port = process.argv[2];

run(async () => {
  const a = await handshake(port);
  const decoy = { Cookie: `io=x; sid=${a}`, Referer: `http://example/?EIO=4&sid=${a}` };
  const slots = {};
  for (let i = 0; i < 20; i++) {
    const s = slotOf(await handshake(port, { headers: decoy }));
    slots[s] = (slots[s] || 0) + 1;
  }
  // A request for another worker's session, carrying the decoy headers.
  let b;
  do b = await handshake(port);
  while (slotOf(b) === slotOf(a));
  const post = await request(port, { method: "POST", path: pollPath(b), body: "40", headers: { ...decoy, "Content-Type": "text/plain" } });
  report({ decoySlot: slotOf(a), handshakeSlots: slots, otherSession: { status: post.status, body: post.body } });
});
