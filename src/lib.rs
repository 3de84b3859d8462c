//! sio: a systemd-native supervisor that scales Socket.IO servers across
//! CPU cores, in place of `@socket.io/pm2`.
//!
//! # Layout
//!
//! Pure logic (no I/O; unit- and property-tested):
//! * [`sid`]: the session id format that names its worker's slot.
//! * [`http_head`]: is a peeked request head complete, and its sid.
//! * [`balance`]: least-loaded choice for new sessions, ties rotating.
//! * [`master::router`]: worker states, routing and relay decisions.
//! * [`nodeipc::v8`]: Node's `advanced` (V8) serialization codec.
//! * [`wire`]: the versioned bus protocol (master <-> agents, `sioctl`).
//! * [`config`]: `/etc/sio/APP.json`, strictly validated.
//! * [`bridge`]: what crosses to and from Redis (`bridge::check` validates
//!   it); [`bridge::redis`] is its client.
//! * [`top`]: `sioctl top`'s figures from two status samples.
//! * [`metrics`]: the Prometheus page of a master's status.
//!
//! I/O:
//! * [`listen`]: listening sockets from socket activation or the config.
//! * [`handoff`]: fd passing over Unix stream sockets (`SCM_RIGHTS`).
//! * [`master`]: accept, peek, route, hand off; the bus hub and relay.
//! * [`nodeipc`] and [`nodeipc::channel`]: Node's IPC protocol, parent side.
//! * [`agent`]: `sio worker APP:N`, the parent of one Node worker.
//! * [`up`]: `sio up`, master and agents in the foreground.
//! * [`systemd`]: worker units over D-Bus, `sd_notify`, the generator,
//!   `sio provision` (each app's user).
//! * [`control`]: `sioctl` requests and answers.
//! * [`cli`], [`docs`]: the command lines, and the man pages and completions made from them.
//! * [`endpoints`]: where the bus and control sockets live, and whom to trust on them.
//! * [`shutdown`]: the shutdown signal shared by long-running tasks.
//! * [`heap`]: heap bytes in use, counted by the allocator.
//! * [`sched`]: the router's processes under `SCHED_BATCH`, Node under the normal policy.
//! * [`procfs`]: memory and CPU from `/proc`.
//! * [`logging`]: journald fields under systemd, text on a terminal.
//! * [`import`]: `sioctl import`, a PM2 ecosystem file as `APP.json`.
//!
//! The design is in `docs/architecture.md`, the threat model in
//! `docs/security.md`, how to work on this tree in `CONTRIBUTING.md`.

pub mod agent;
pub mod balance;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod control;
pub mod docs;
pub mod endpoints;
pub mod handoff;
pub mod heap;
pub mod http_head;
pub mod import;
pub mod listen;
pub mod logging;
pub mod master;
pub mod metrics;
pub mod nodeipc;
pub mod procfs;
pub mod sched;
pub mod shutdown;
pub mod sid;
pub mod systemd;
pub mod top;
pub mod up;
pub mod wire;

/// FNV-1a, 64 bits: a hash that stays the same across builds and releases
/// (std's does not), for names derived from content or from other names.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
