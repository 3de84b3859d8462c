// What app A's code may do to app B's workers, two apps of one host:
// asks a worker of B where its Node is, then a worker of A to read, signal,
// reach and overwrite it.
//   neighbours.js PORT_A CONFIG_A PORT_B CONFIG_B BUS_B
const { connect, emitAck, report, run } = require("./lib");
const [portA, configA, portB, configB, busB] = process.argv.slice(2);

run(async () => {
  const b = await connect(portB, "b", { transports: ["websocket"] });
  const there = await emitAck(b, "whereabouts");
  const a = await connect(portA, "a", { transports: ["websocket"] });
  const tried = await emitAck(a, "neighbour", { ownConfig: configA, config: configB, bus: busB, ...there });
  a.socket.close();
  b.socket.close();
  report({ b: there, a: tried });
});
