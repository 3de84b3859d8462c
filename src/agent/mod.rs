//! The worker agent (`sio worker APP:N`): the parent of one unmodified Node
//! worker, speaking Node's IPC protocol to it, and the worker's voice on
//! the master's bus.
//!
//! * It spawns the app's command with an IPC channel (`NODE_CHANNEL_FD`,
//!   `advanced` serialization, `NODE_UNIQUE_ID` so that sticky's
//!   `setupWorker` accepts to run) and the preload (`preload.js`).
//! * Connections from the master become `sticky:connection` handles, several
//!   in flight when Node reads each whole (see [`nodeipc::channel`]); each is
//!   confirmed to the master once Node has it.
//! * Cluster-adapter frames go to the master to be relayed, numbered and
//!   kept until the master acknowledges them (see [`relay`]); frames from
//!   the master go to Node byte for byte, each once.
//! * With websocket alone (config `transports`) the worker accepts on the
//!   app's sockets itself: the agent waits for the master to hand them over
//!   ([`ToAgent::Listener`]) before it starts Node with them, and watches
//!   the preload's heartbeat instead of handoff answers for a hung worker.
//! * The worker outlives the master: when the bus goes away the agent
//!   reconnects and tells the new master what it holds (ready, sessions,
//!   adapters). It exits when its Node worker exits, with the worker's
//!   status, so that its supervisor restarts it.

mod preload;
mod relay;

use crate::config::AppConfig;
use crate::handoff::{is_disconnect, Bytes, FrameReader, Link, OwnedLink, Prefix};
use crate::logging::RateLimit;
use crate::master::connect_bus;
use crate::nodeipc::{self, channel::ChildEnd, channel::NodeChannel, Adapters, FromChild};
use crate::shutdown::termination_signal;
use crate::wire::{self, Role, ToAgent, ToMaster, WireError, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use relay::{Delivered, Unacked};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Reconnect delays to the master: short, because connections wait in the
/// master's backlog meanwhile.
const RECONNECT_FIRST: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Why the agent stops.
pub enum Exit {
    /// The Node worker exited with this status.
    Worker(ExitStatus),
    /// Asked to stop (SIGTERM/SIGINT); the worker was stopped.
    Stopped,
    /// The master refused this agent, or it could not start.
    Failed(String),
}

impl Exit {
    /// The agent's exit code: the worker's, 128+signal if it was killed.
    pub fn code(&self) -> i32 {
        match self {
            Exit::Worker(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
            Exit::Stopped => 0,
            Exit::Failed(_) => 1,
        }
    }
}

/// What the agent tells a (new) master about its worker.
struct Held {
    ready: bool,
    sessions: HashSet<String>,
    adapters: Adapters,
    master: Option<Rc<Link>>,
    /// The bus protocol spoken with `master`.
    version: u16,
    /// Broadcasts the master has not acknowledged, or that were produced
    /// while no master was connected.
    unacked: Unacked,
    /// Broadcasts from other workers already given to Node.
    delivered: Delivered,
}

struct Agent {
    cfg: AppConfig,
    slot: u16,
    node: Rc<NodeChannel>,
    held: RefCell<Held>,
    lost_broadcasts: RateLimit,
    /// Small messages to the master (handoff confirmations, session
    /// announcements) collected for [`COALESCE`], so that the master wakes
    /// once for several of them rather than once each.
    outbox: RefCell<Vec<u8>>,
    outbox_filled: tokio::sync::Notify,
    /// The app's listening sockets handed over by the master, while the
    /// worker waits for them (websocket alone), and whether it has started.
    listeners: RefCell<Vec<OwnedFd>>,
    listeners_handed: tokio::sync::Notify,
    worker_started: Cell<bool>,
    /// When the worker last wrote to its channel (with websocket alone, the
    /// preload's heartbeat at least every [`heartbeat`]).
    last_heard: Cell<Option<Instant>>,
}

/// How long a worker whose IPC channel closed may take to exit by itself.
const CHANNEL_GONE_GRACE: Duration = Duration::from_millis(500);

/// How long small messages to the master wait to travel together.
const COALESCE: Duration = Duration::from_millis(2);

/// How long an agent whose worker accepts itself waits for the app's
/// sockets before it says so (a master hands them over at once).
const LISTENERS_LATE: Duration = Duration::from_secs(3);

/// How often a worker that accepts itself says its event loop runs: four
/// times per `timeouts.handoff_ms`, the time after which it counts as hung.
fn heartbeat(cfg: &AppConfig) -> Duration {
    (cfg.timeouts.handoff_ms / 4).max(Duration::from_millis(10))
}

/// Runs the agent for `slot` of the app until its worker exits or it is
/// told to stop.
pub async fn run(cfg: AppConfig, slot: u16) -> Exit {
    let preload = match preload::install() {
        Ok(p) => p,
        Err(e) => return Exit::Failed(format!("cannot write the Node preload: {e}")),
    };
    let (node, child_end) = match NodeChannel::pair() {
        Ok(p) => p,
        Err(e) => return Exit::Failed(format!("cannot create the IPC channel: {e}")),
    };
    let held = Held {
        ready: false,
        sessions: HashSet::new(),
        adapters: Adapters::default(),
        master: None,
        version: 0,
        unacked: Unacked::new(cfg.limits.bus_queue_bytes),
        delivered: Delivered::default(),
    };
    let agent = Rc::new(Agent {
        cfg,
        slot,
        node,
        held: RefCell::new(held),
        lost_broadcasts: RateLimit::default(),
        outbox: RefCell::default(),
        outbox_filled: tokio::sync::Notify::new(),
        listeners: RefCell::default(),
        listeners_handed: tokio::sync::Notify::new(),
        worker_started: Cell::new(false),
        last_heard: Cell::new(None),
    });
    tokio::task::spawn_local(agent.clone().send_outbox());
    let channel = tokio::task::spawn_local(agent.clone().read_node());
    let mut master = tokio::task::spawn_local(agent.clone().serve_master());
    if agent.cfg.transports.workers_accept() {
        let handed = agent.listeners_handed.notified();
        tokio::pin!(handed);
        let mut warned = false;
        loop {
            tokio::select! {
                () = &mut handed => break,
                refused = &mut master => return Exit::Failed(refused.unwrap_or_else(|e| e.to_string())),
                _ = termination_signal() => return Exit::Stopped,
                // A master hands them over as it welcomes the agent.
                () = tokio::time::sleep(LISTENERS_LATE), if !warned => {
                    warned = true;
                    warn!(app = %agent.cfg.app, worker = slot, "no listening socket from the master yet: with `transports` websocket alone the worker starts once the master hands them over, which a master started with other `transports` never does (restart it)");
                }
            }
        }
    }
    let listeners = std::mem::take(&mut *agent.listeners.borrow_mut());
    let spawned = spawn_worker(&agent.cfg, slot, &preload, child_end, &listeners);
    agent.worker_started.set(true);
    // The worker has its copies: a listener left here would outlive it.
    drop(listeners);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let cfg = &agent.cfg;
            return Exit::Failed(format!("cannot start {:?} in {}: {e}", cfg.command, cfg.cwd.display()));
        }
    };
    let pid = child.id().unwrap_or(0);
    info!(app = %agent.cfg.app, worker = slot, pid, accepts = agent.cfg.transports.workers_accept(), "worker started");
    let exit = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => Exit::Worker(s),
            Err(e) => Exit::Failed(format!("lost the worker: {e}")),
        },
        // Without its channel the worker can take no connection: a worker
        // that crashed is about to exit anyway; one that disconnected
        // (`cluster.worker.disconnect()`) would linger, unreachable.
        _ = channel => match tokio::time::timeout(CHANNEL_GONE_GRACE, child.wait()).await {
            Ok(Ok(s)) => Exit::Worker(s),
            _ => Exit::Failed("the worker closed its IPC channel".into()),
        },
        refused = master => Exit::Failed(refused.unwrap_or_else(|e| e.to_string())),
        // Node acknowledges a connection within milliseconds unless its
        // event loop is stuck (a busy loop, a long synchronous job). A hung
        // worker would hold every connection sent to it, and look the least
        // loaded since it announces nothing: kill it (it cannot run a
        // SIGTERM handler anyway); its connections go back to the master
        // with their heads unread, and its supervisor restarts it. A worker
        // that accepts itself takes no new connection while hung (the
        // others do): its heartbeat tells.
        why = agent.hung() => {
            error!(app = %agent.cfg.app, worker = slot, pid, "the worker {why} for {:?}: its event loop is stuck; killed", agent.cfg.timeouts.handoff_ms);
            let _ = child.kill().await;
            match child.wait().await {
                Ok(s) => Exit::Worker(s),
                Err(e) => Exit::Failed(format!("lost the worker: {e}")),
            }
        }
        _ = termination_signal() => {
            crate::systemd::notify::stopping();
            agent.stop_worker(&mut child, pid).await;
            Exit::Stopped
        }
    };
    if matches!(exit, Exit::Failed(_)) {
        agent.stop_worker(&mut child, pid).await;
    }
    agent.worker_gone();
    exit
}

fn spawn_worker(
    cfg: &AppConfig,
    slot: u16,
    preload: &std::path::Path,
    channel: ChildEnd,
    listeners: &[OwnedFd],
) -> std::io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(&cfg.command[0]);
    cmd.args(&cfg.command[1..]).current_dir(&cfg.cwd).envs(&cfg.env);
    // What systemd gave the agent is the agent's, not the worker's.
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        cmd.env_remove(var);
    }
    let fd = channel.raw();
    cmd.env("NODE_CHANNEL_FD", fd.to_string())
        .env("NODE_CHANNEL_SERIALIZATION_MODE", "advanced")
        .env("NODE_UNIQUE_ID", slot.to_string())
        .env("NODE_APP_INSTANCE", (slot - 1).to_string())
        .env("SIO_APP", &cfg.app)
        .env("SIO_WORKER_SLOT", slot.to_string());
    match cfg.host_tag {
        Some(tag) => cmd.env("SIO_HOST_TAG", tag.to_string()),
        None => cmd.env_remove("SIO_HOST_TAG"),
    };
    let listener_fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    cmd.env("SIO_TRANSPORTS", cfg.transports.engine_names());
    if listener_fds.is_empty() {
        cmd.env_remove("SIO_LISTEN_FDS").env_remove("SIO_HEARTBEAT_MS");
    } else {
        let fds: Vec<String> = listener_fds.iter().map(RawFd::to_string).collect();
        cmd.env("SIO_LISTEN_FDS", fds.join(" ")).env("SIO_HEARTBEAT_MS", heartbeat(cfg).as_millis().to_string());
    }
    let before = cfg.env.get("NODE_OPTIONS").cloned().or_else(|| std::env::var("NODE_OPTIONS").ok());
    let quoted = preload.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
    let options = format!("{} --require \"{quoted}\"", before.as_deref().unwrap_or("")).trim().to_owned();
    cmd.env("NODE_OPTIONS", options);
    match before {
        Some(b) => cmd.env("SIO_NODE_OPTIONS", b),
        None => cmd.env_remove("SIO_NODE_OPTIONS"),
    };
    // SAFETY: fcntl, prctl and sched_setscheduler are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            ChildEnd::inherit_in_child(fd)?;
            for &listener in &listener_fds {
                ChildEnd::inherit_in_child(listener)?;
            }
            // The agent's SCHED_BATCH is for its own wake-ups.
            crate::sched::default_policy_in_child()?;
            // The worker never outlives its agent.
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn()?;
    drop(channel);
    Ok(child)
}

impl Agent {
    /// Returns once the worker counts as hung, saying what it failed to do:
    /// answer a connection handed to it, or (accepting itself) send its
    /// heartbeat, within `timeouts.handoff_ms`. The heartbeat is watched
    /// from the worker's first word on: starting up has `timeouts.ready_ms`.
    async fn hung(&self) -> &'static str {
        let limit = self.cfg.timeouts.handoff_ms;
        if !self.cfg.transports.workers_accept() {
            self.node.unanswered_for(limit).await;
            return "took no connection";
        }
        loop {
            match self.last_heard.get() {
                Some(heard) if heard.elapsed() >= limit => return "sent no heartbeat",
                Some(heard) => tokio::time::sleep_until((heard + limit).into()).await,
                None => tokio::time::sleep(heartbeat(&self.cfg)).await,
            }
        }
    }

    async fn stop_worker(&self, child: &mut tokio::process::Child, pid: u32) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(self.cfg.timeouts.stop_ms, child.wait()).await.is_err() {
            warn!(app = %self.cfg.app, worker = self.slot, pid, "worker ignored SIGTERM for {:?}: SIGKILL", self.cfg.timeouts.stop_ms);
            let _ = child.kill().await;
        }
    }

    /// Connections the worker never got are handed back to the master.
    fn worker_gone(&self) {
        for id in self.node.abandon() {
            self.to_master(ToMaster::HandoffFailed(id));
        }
        // The agent exits next: no time to wait for the outbox.
        if let Some(link) = self.held.borrow().master.clone() {
            self.flush_outbox(&link);
        }
    }

    fn to_master(&self, msg: ToMaster) {
        let mut held = self.held.borrow_mut();
        let held = &mut *held;
        match (&held.master, msg) {
            (Some(link), ToMaster::Adapter { header, frame }) if held.version == 1 => {
                self.flush_outbox(link);
                link.send(ToMaster::Adapter { header, frame }.to_frame().into(), None);
            }
            (master, ToMaster::Adapter { header, frame }) => {
                // Kept until acknowledged, and for the next master if there
                // is none now; the rest is replayed from state.
                let (numbered, evicted) =
                    held.unacked.push(|seq| ToMaster::Broadcast { seq, header, frame }.to_frame());
                match master {
                    Some(link) => {
                        // Broadcasts go at once (after what is collected, in
                        // order), those of one read from Node in one write.
                        self.flush_outbox(link);
                        link.send_soon(numbered);
                    }
                    None if evicted > 0 && self.lost_broadcasts.due() => {
                        warn!(app = %self.cfg.app, worker = self.slot, kept = held.unacked.len(), "no master for a while and limits.bus_queue_bytes reached: the oldest broadcasts are dropped");
                    }
                    None => {}
                }
            }
            (Some(_), msg) => {
                let mut outbox = self.outbox.borrow_mut();
                if outbox.is_empty() {
                    self.outbox_filled.notify_one();
                }
                msg.encode(&mut outbox);
            }
            (None, _) => {}
        }
    }

    fn flush_outbox(&self, link: &Link) {
        let batch = std::mem::take(&mut *self.outbox.borrow_mut());
        if !batch.is_empty() {
            link.send(Rc::new(batch), None);
        }
    }

    /// Sends collected small messages [`COALESCE`] after the first of them.
    async fn send_outbox(self: Rc<Self>) {
        loop {
            self.outbox_filled.notified().await;
            tokio::time::sleep(COALESCE).await;
            if let Some(link) = self.held.borrow().master.clone() {
                self.flush_outbox(&link);
            }
        }
    }

    /// Reads the Node worker's frames until its channel closes.
    async fn read_node(self: Rc<Self>) {
        // The child has no reason to pass handles: any it sends are closed.
        let mut reader = FrameReader::without_fds(Prefix::Node, wire::MAX_FRAME - 64);
        loop {
            let payload = match reader.next(self.node.link()).await {
                Ok(Some(p)) => p,
                Ok(None) => return debug!(app = %self.cfg.app, worker = self.slot, "worker closed its channel"),
                Err(e) if is_disconnect(&e) => return,
                Err(e) => return error!(app = %self.cfg.app, worker = self.slot, "worker channel: {e}"),
            };
            // Only a worker that accepts itself is watched by what it says.
            if self.cfg.transports.workers_accept() {
                self.last_heard.set(Some(Instant::now()));
            }
            match nodeipc::classify(payload) {
                Ok(msg) => {
                    let frame = if matches!(msg, FromChild::Adapter(_)) { Some(node_frame(payload)) } else { None };
                    self.on_node_message(msg, frame);
                }
                Err(e) => {
                    warn!(app = %self.cfg.app, worker = self.slot, "undecodable message from the worker ({e}); ignored")
                }
            }
        }
    }

    fn on_node_message(&self, msg: FromChild, frame: Option<Vec<u8>>) {
        match msg {
            FromChild::HandleAck => {
                if let Some(id) = self.node.acked() {
                    self.to_master(ToMaster::HandoffDone(id));
                }
            }
            FromChild::HandleNack => {
                if let Some(id) = self.node.nacked() {
                    warn!(app = %self.cfg.app, worker = self.slot, "worker did not receive a connection after retries; handed back");
                    self.to_master(ToMaster::HandoffFailed(id));
                }
            }
            FromChild::Handle => {
                // Node queues everything after a handle until it is
                // answered: without this ACK the worker would fall silent.
                warn!(app = %self.cfg.app, worker = self.slot, "the worker sent a handle to its parent: closed");
                self.node.send_frame(nodeipc::handle_ack_frame().into());
            }
            // Heard, which is all a heartbeat says (see `read_node`).
            FromChild::ClusterNotice | FromChild::Alive => {}
            FromChild::QueryServer { seq, address, port, address_type } => {
                warn!(app = %self.cfg.app, worker = self.slot, port, "the worker called listen(): ignored, connections come from the sio master");
                self.node
                    .send_frame(nodeipc::query_server_reply_frame(&seq, address.as_deref(), port, address_type).into());
            }
            FromChild::ExitedAfterDisconnect { seq } => self.node.send_frame(nodeipc::cluster_ack_frame(&seq).into()),
            FromChild::OtherInternal(cmd) => {
                debug!(app = %self.cfg.app, worker = self.slot, cmd, "internal message ignored")
            }
            FromChild::SessionOpened(sid) => self.session_opened(sid),
            FromChild::SessionClosed(sid) => self.session_closed(sid),
            FromChild::Sessions { opened, closed } => {
                opened.into_iter().for_each(|sid| self.session_opened(sid));
                closed.into_iter().for_each(|sid| self.session_closed(sid));
            }
            FromChild::Ready => {
                info!(app = %self.cfg.app, worker = self.slot, "worker ready");
                crate::systemd::notify::ready("worker ready");
                self.held.borrow_mut().ready = true;
                self.to_master(ToMaster::Ready);
            }
            FromChild::Adapter(header) => {
                {
                    let mut held = self.held.borrow_mut();
                    if header.kind == nodeipc::ADAPTER_CLOSE {
                        held.adapters.closed(&header.uid, &header.nsp);
                    } else {
                        held.adapters.seen(&header.uid, &header.nsp);
                    }
                }
                self.to_master(ToMaster::Adapter { header, frame: frame.expect("adapter frames are kept") });
            }
            FromChild::App => {
                debug!(app = %self.cfg.app, worker = self.slot, "app message ignored")
            }
        }
    }

    fn session_opened(&self, sid: String) {
        self.held.borrow_mut().sessions.insert(sid.clone());
        self.to_master(ToMaster::SessionOpened(sid));
    }

    fn session_closed(&self, sid: String) {
        self.held.borrow_mut().sessions.remove(&sid);
        self.to_master(ToMaster::SessionClosed(sid));
    }

    /// Connects to the master, and again whenever it goes away. Returns
    /// only if a master refuses this agent.
    async fn serve_master(self: Rc<Self>) -> String {
        let mut delay = RECONNECT_FIRST;
        let mut announced_wait = false;
        loop {
            match connect_bus(&self.cfg.app) {
                Ok(stream) => {
                    delay = RECONNECT_FIRST;
                    announced_wait = false;
                    let link = match Link::spawn(stream) {
                        Ok(link) => link,
                        Err(e) => return format!("cannot watch the bus socket: {e}"),
                    };
                    if let Err(refusal) = self.session(link).await {
                        return refusal;
                    }
                    info!(app = %self.cfg.app, worker = self.slot, "master gone; the worker keeps running, reconnecting");
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return format!("cannot join the bus: {e}");
                }
                Err(e) if !announced_wait => {
                    announced_wait = true;
                    info!(app = %self.cfg.app, worker = self.slot, "waiting for the master ({e})");
                }
                Err(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RECONNECT_MAX);
        }
    }

    /// One connection to a master. `Err` if it refused us.
    async fn session(&self, link: OwnedLink) -> Result<(), String> {
        let hello = ToMaster::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Agent { app: self.cfg.app.clone(), slot: self.slot, pid: std::process::id() },
        };
        link.send(hello.to_frame().into(), None);
        let mut reader = FrameReader::new(Prefix::Bus, wire::MAX_FRAME);
        let version = match reader.next(&link).await.map(|b| b.map(ToAgent::decode)) {
            // The master answers with the version both speak: ours or older.
            Ok(Some(Ok(ToAgent::Welcome { version })))
                if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
                    && (version >= wire::LISTENERS_VERSION || !self.awaits_listeners()) =>
            {
                version
            }
            Ok(Some(Ok(ToAgent::Welcome { version }))) if self.awaits_listeners() => {
                return Err(format!(
                    "the master speaks bus protocol {version}, too old to hand over the app's sockets (config `transports`: websocket alone)"
                ))
            }
            Ok(Some(Ok(ToAgent::Welcome { version }))) => {
                return Err(format!(
                    "the master speaks bus protocol {version}, this agent {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
                ))
            }
            Ok(Some(Ok(ToAgent::Refused(reason)))) => return Err(format!("the master refused this agent: {reason}")),
            _ => return Ok(()),
        };
        self.attach(&link, version);
        let result = loop {
            // A worker slow to read its channel: stop reading the bus, so
            // that the master's bounded queue for this worker takes the
            // excess (and drops it, counted), not this agent's memory.
            self.node.room_for(self.cfg.limits.bus_queue_bytes).await;
            let body = match reader.next(&link).await {
                Ok(Some(b)) => b,
                Ok(None) => break Ok(()),
                Err(e) => {
                    if !is_disconnect(&e) {
                        warn!(app = %self.cfg.app, worker = self.slot, "bus: {e}");
                    }
                    break Ok(());
                }
            };
            match ToAgent::decode(body) {
                Ok(ToAgent::Handoff(id)) => match reader.fds.pop_front() {
                    Some(fd) => self.node.send_handle(id, fd),
                    None => {
                        error!(app = %self.cfg.app, worker = self.slot, id, "handoff without a file descriptor");
                        self.to_master(ToMaster::HandoffFailed(id));
                    }
                },
                Ok(ToAgent::Listener { index, count }) => match reader.fds.pop_front() {
                    Some(fd) => self.listener_handed(fd, index, count),
                    None => {
                        error!(app = %self.cfg.app, worker = self.slot, index, "listening socket without a file descriptor")
                    }
                },
                Ok(ToAgent::StopAccepting) => {
                    info!(app = %self.cfg.app, worker = self.slot, "retired: the worker takes no new connection");
                    self.node.send_frame(nodeipc::stop_accepting_frame().into());
                }
                Ok(ToAgent::Adapter(frame)) => self.node.send_frame(Bytes::from(frame)),
                Ok(ToAgent::Relayed { origin, seq, frame }) => {
                    // Sent again by a master whose predecessor had relayed it?
                    if self.held.borrow_mut().delivered.first_time(origin, seq) {
                        self.node.send_frame(Bytes::from(frame));
                    } else {
                        debug!(app = %self.cfg.app, worker = self.slot, origin, seq, "broadcast relayed again: dropped");
                    }
                }
                Ok(ToAgent::Acked(seq)) => self.held.borrow_mut().unacked.acked(seq),
                // A newer master's frame this agent does not know: skipped.
                Err(WireError::UnknownTag(tag)) => {
                    debug!(app = %self.cfg.app, worker = self.slot, tag, "frame of a newer protocol skipped")
                }
                Ok(other) => {
                    debug!(app = %self.cfg.app, worker = self.slot, ?other, "unexpected frame from the master")
                }
                Err(e) => {
                    warn!(app = %self.cfg.app, worker = self.slot, "bad frame from the master: {e}");
                    break Ok(());
                }
            }
        };
        self.held.borrow_mut().master = None;
        // What was not sent is replayed from state to the next master.
        self.outbox.borrow_mut().clear();
        result
    }

    /// Whether the worker waits for the app's sockets to start.
    fn awaits_listeners(&self) -> bool {
        self.cfg.transports.workers_accept() && !self.worker_started.get()
    }

    /// One of the app's `count` listening sockets, from a master whose
    /// workers accept themselves. The worker starts once it has them all.
    fn listener_handed(&self, fd: OwnedFd, index: u16, count: u16) {
        if self.worker_started.get() {
            // A new master handing them again: the worker has its own.
            if index == 0 && !self.cfg.transports.workers_accept() {
                warn!(app = %self.cfg.app, worker = self.slot, "the master hands over the app's sockets (config `transports`: websocket alone), but this worker was started to take its connections from the master: it takes none until restarted (`sioctl reload {}`)", self.cfg.app);
            }
            return;
        }
        let mut listeners = self.listeners.borrow_mut();
        if index == 0 {
            listeners.clear();
        }
        listeners.push(fd);
        if listeners.len() == usize::from(count) {
            self.listeners_handed.notify_one();
        }
    }

    /// A master accepted us: tell it what the worker holds, then send the
    /// broadcasts not acknowledged by its predecessor (or produced since).
    fn attach(&self, link: &Rc<Link>, version: u16) {
        let mut held = self.held.borrow_mut();
        let mut replay = Vec::new();
        for (uid, nsp) in held.adapters.iter() {
            ToMaster::AdapterSeen { uid: uid.to_owned(), nsp: nsp.to_owned() }.encode(&mut replay);
        }
        for sid in &held.sessions {
            ToMaster::SessionOpened(sid.clone()).encode(&mut replay);
        }
        if held.ready {
            ToMaster::Ready.encode(&mut replay);
        }
        if !replay.is_empty() {
            link.send(replay.into(), None);
        }
        if version >= 2 {
            for frame in held.unacked.frames() {
                link.send(frame.clone(), None);
            }
        } else {
            // A master of protocol 1 neither numbers nor acknowledges.
            for frame in held.unacked.take_all() {
                if let Some(unnumbered) = unnumbered(&frame) {
                    link.send(unnumbered.into(), None);
                }
            }
        }
        held.version = version;
        held.master = Some(link.clone());
    }
}

/// A [`ToMaster::Broadcast`] frame as protocol 1's [`ToMaster::Adapter`].
fn unnumbered(frame: &[u8]) -> Option<Vec<u8>> {
    match ToMaster::decode(frame.get(4..)?) {
        Ok(ToMaster::Broadcast { header, frame, .. }) => Some(ToMaster::Adapter { header, frame }.to_frame()),
        _ => None,
    }
}

/// Node's frame (length prefix included) around a payload, as relayed.
fn node_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 4);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}
