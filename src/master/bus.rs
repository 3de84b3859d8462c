//! The master's side of the bus: admitting peers, serving agents (handoff
//! confirmations, session announcements, adapter frames to relay) and
//! operators (`sioctl`).
//!
//! Two doors (see [`crate::endpoints`]): the bus (file mode keeps
//! strangers out; agents only) and the control socket (anyone may connect
//! and read the status; operators only). Every peer is checked with
//! `SO_PEERCRED` before it may say anything: an agent must be the main
//! process of its worker's unit as the system manager tells it (or the
//! agent this master spawned), whatever its uid or cgroup path says; a
//! change needs root, the master's user or the app's `control_group`.
//! Every path a peer can take is bounded: a few KiB and 5 s for the hello,
//! small frames and an idle timeout for operators, replies that must be
//! read before the next request is, a cap on connections per uid on both
//! doors, fds closed as they arrive, and the socket closed on every way
//! out. Protocol 1's abstract name `@sio/APP` is not served: anyone in the
//! network namespace can connect to an abstract name, and protocol-1
//! agents were never packaged.

use super::{Master, Peer};
use crate::control::{Request, Response};
use crate::endpoints::Endpoints;
use crate::handoff::{is_disconnect, Bytes, FrameReader, Link, Prefix};
use crate::logging::RateLimit;
use crate::nodeipc::{self, AdapterHeader};
use crate::wire::{self, Role, ToAgent, ToMaster, WireError, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials, UnixCredentials};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

/// A peer must introduce itself within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted before a peer is admitted.
const MAX_HELLO: usize = 4096;
/// Largest frame from an operator: requests are tiny JSON.
const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// An operator connection that asks nothing for this long is closed.
const CONTROL_IDLE: Duration = Duration::from_secs(60);
/// Bus connections a uid other than root's or the master's may hold at
/// once (saying hello, or as operators): each costs the master an fd.
const MAX_CONNECTIONS_PER_UID: usize = 32;
/// Frames from one agent handled before letting the other tasks run.
const FRAMES_PER_TURN: u32 = 64;
/// Which of the master's sockets a peer came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Door {
    /// `APP.bus`: only the master's user, the app's group and root can
    /// connect (file mode); agents and operators.
    Bus,
    /// `APP.control`: anyone can connect; operators only.
    Control,
}

/// The master's listening Unix sockets.
pub(super) struct Doors {
    pub(super) endpoints: Endpoints,
    pub(super) listeners: Vec<(Door, UnixListener)>,
    /// The socket files this master bound itself (`sio up`), removed when
    /// it stops so that `sioctl ls` does not list a master that is gone.
    /// systemd's outlive every master.
    pub(super) bound_here: Vec<PathBuf>,
}

/// The app's bus and control sockets: those systemd passed (under
/// systemd), else bound in this user's private folder (`sio up`). Fails
/// if another master of the app runs.
pub(super) fn open(
    app: &str,
    passed: &mut Vec<(PathBuf, std::os::unix::net::UnixListener)>,
    systemd: bool,
) -> io::Result<Doors> {
    let system = Endpoints::system(app);
    let mut listeners = Vec::new();
    let mut bound_here = Vec::new();
    let mut endpoints = system.clone();
    for (path, l) in passed.drain(..) {
        let door = if path == system.bus {
            Door::Bus
        } else if path == system.control {
            Door::Control
        } else {
            return Err(io::Error::other(format!(
                "systemd passed the socket {} that is neither {} nor {}",
                path.display(),
                system.bus.display(),
                system.control.display()
            )));
        };
        listeners.push((door, UnixListener::from_std(l)?));
    }
    if systemd {
        for (door, path) in [(Door::Bus, &system.bus), (Door::Control, &system.control)] {
            if !listeners.iter().any(|(d, _)| *d == door) {
                return Err(io::Error::other(format!(
                    "systemd passed no socket {}: start the master through sio@{app}.socket (with sio-bus@{app}.socket installed)",
                    path.display()
                )));
            }
        }
    } else {
        endpoints = Endpoints::in_dir(&crate::endpoints::private_dir()?, app);
        listeners.push((Door::Bus, bind_private(app, &endpoints.bus, 0o600)?));
        listeners.push((Door::Control, bind_private(app, &endpoints.control, 0o666)?));
        bound_here = vec![endpoints.bus.clone(), endpoints.control.clone()];
    }
    Ok(Doors { endpoints, listeners, bound_here })
}

/// Binds a socket in the private folder, replacing a stale one (nobody
/// answers on it), never a live one.
fn bind_private(app: &str, path: &Path, mode: u32) -> io::Result<UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another master of {app:?} is running ({} answers)", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot replace {}: {e}", path.display()))),
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}

/// Connects to an app's bus (agents) and checks who serves it. Never
/// blocks: a bus whose backlog is full (a hung master) answers
/// `WouldBlock`, and the caller tries again later. `PermissionDenied`
/// (the socket's mode, or a server nobody should trust) is for good.
pub fn connect(app: &str) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let path = Endpoints::find(app).bus;
    let addr = UnixAddr::new(&path)?;
    let sock = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    connect(sock.as_raw_fd(), &addr)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", path.display())))?;
    crate::endpoints::check_server(&sock, &path).map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    UnixStream::from_std(std::os::unix::net::UnixStream::from(sock))
}

/// Holds one of a uid's [`MAX_CONNECTIONS_PER_UID`] places while it lives.
struct UidPlace {
    master: Rc<Master>,
    uid: u32,
}

impl Drop for UidPlace {
    fn drop(&mut self) {
        let mut st = self.master.st.borrow_mut();
        if let Some(n) = st.bus_connections_by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                st.bus_connections_by_uid.remove(&self.uid);
            }
        }
    }
}

impl Master {
    /// Admits peers until the master is dropped (it keeps serving handoff
    /// confirmations while it stops).
    pub(super) async fn bus_loop(self: Rc<Self>, door: Door, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::task::spawn_local(self.clone().admit(door, stream));
                }
                Err(e) => {
                    warn!(app = %self.cfg.app, "bus accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Whether a uid is the master's own or root's: such peers are not
    /// capped per uid, and may change things.
    fn trusted_uid(uid: u32) -> bool {
        uid == 0 || uid == nix::unistd::geteuid().as_raw()
    }

    /// Takes a place for a connection of `uid`, or `None` if it holds too many.
    fn place_for(self: &Rc<Self>, uid: u32) -> Option<UidPlace> {
        let mut st = self.st.borrow_mut();
        let n = st.bus_connections_by_uid.entry(uid).or_default();
        if *n >= MAX_CONNECTIONS_PER_UID {
            return None;
        }
        *n += 1;
        Some(UidPlace { master: self.clone(), uid })
    }

    /// Serves one bus connection from its hello to its end. Every way out
    /// drops the link's owner, which closes the socket.
    async fn admit(self: Rc<Self>, door: Door, stream: UnixStream) {
        let creds = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => c,
            Err(e) => return warn!(app = %self.cfg.app, "bus peer without credentials: {e}"),
        };
        // Both doors: the bus's file mode keeps strangers out, but every
        // app's Node (the app's group) is still a stranger to this master.
        let place = if Master::trusted_uid(creds.uid()) {
            None
        } else {
            match self.place_for(creds.uid()) {
                Some(p) => Some(p),
                None => {
                    self.st.borrow_mut().counters.refused_peers += 1;
                    if self.warned.too_many_connections.due() {
                        warn!(app = %self.cfg.app, peer_uid = creds.uid(), peer_pid = creds.pid(), limit = MAX_CONNECTIONS_PER_UID, "bus peer refused: its uid holds too many bus connections");
                    }
                    return;
                }
            }
        };
        let link = match Link::spawn(stream) {
            Ok(link) => link,
            Err(e) => {
                return warn!(app = %self.cfg.app, peer_pid = creds.pid(), "bus peer dropped: cannot watch its socket: {e}")
            }
        };
        let mut reader = FrameReader::without_fds(Prefix::Bus, MAX_HELLO);
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, reader.next(&link)).await {
            Ok(Ok(Some(body))) => ToMaster::decode(body),
            Ok(Ok(None)) => return debug!(app = %self.cfg.app, peer_pid = creds.pid(), "bus peer left before hello"),
            Ok(Err(e)) => {
                return debug!(app = %self.cfg.app, peer_pid = creds.pid(), "bus peer failed before hello: {e}")
            }
            Err(_) => {
                if self.warned.silent_peer.due() {
                    warn!(app = %self.cfg.app, peer_uid = creds.uid(), peer_pid = creds.pid(), "bus peer said nothing for {HELLO_TIMEOUT:?}: dropped");
                }
                return;
            }
        };
        let (version, role) = match hello {
            Ok(ToMaster::Hello { version, role }) if version >= MIN_PROTOCOL_VERSION => (version, role),
            Ok(ToMaster::Hello { version, .. }) => {
                if self.warned.bad_hello.due() {
                    warn!(app = %self.cfg.app, version, peer_uid = creds.uid(), peer_pid = creds.pid(), "bus peer speaks an unsupported protocol version");
                }
                return refuse(
                    &link,
                    &format!(
                        "protocol version {version} not supported (this master speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})"
                    ),
                );
            }
            Ok(_) | Err(_) => {
                if self.warned.bad_hello.due() {
                    warn!(app = %self.cfg.app, peer_uid = creds.uid(), peer_pid = creds.pid(), "bus peer did not start with hello: dropped");
                }
                return refuse(&link, "expected hello");
            }
        };
        // Both ends speak the older of their two versions.
        let version = version.min(PROTOCOL_VERSION);
        match role {
            Role::Agent { app, slot, pid: _claimed } => {
                // The kernel's pid, never the one the peer claims.
                let pid = u32::try_from(creds.pid()).unwrap_or(0);
                if door == Door::Control {
                    return refuse(&link, "agents connect to the bus, not to the control socket");
                }
                if app != self.cfg.app {
                    return refuse(&link, &format!("this bus belongs to app {:?}, not {app:?}", self.cfg.app));
                }
                if !(1..=crate::sid::MAX_SLOT).contains(&slot) {
                    return refuse(&link, &format!("worker {slot} is out of range 1..={}", crate::sid::MAX_SLOT));
                }
                // Admitted by what runs it (the system manager's word on its
                // unit, or this master's spawn), not by its uid or by its
                // cgroup's name: the app's user is not trusted, and anyone
                // can make a cgroup of that name in a subtree of their own.
                if let Err(why) = self.supervisor.is_agent(slot, pid).await {
                    self.st.borrow_mut().counters.refused_peers += 1;
                    if self.warned.foreign_agent.due() {
                        warn!(app = %self.cfg.app, worker = slot, peer_uid = creds.uid(), peer_pid = pid, "refused a bus peer that claims to be an agent: {why}");
                    }
                    return refuse(&link, &format!("permission denied: {why}"));
                }
                drop(place);
                if !self.st.borrow_mut().router.connected(slot) {
                    warn!(app = %self.cfg.app, worker = slot, pid, "second agent for one slot refused");
                    return refuse(&link, &format!("slot {slot} already has an agent"));
                }
                self.st
                    .borrow_mut()
                    .peers
                    .insert(slot, Peer { link: link.clone(), pid, version, in_flight: HashMap::new() });
                welcome(&link, version);
                self.hand_listeners(&link, slot, version);
                reader.set_max(wire::MAX_FRAME);
                info!(app = %self.cfg.app, worker = slot, pid, version, "worker connected");
                self.worker_changed();
                let relayed = Rc::new(Unacknowledged::default());
                let acknowledging = tokio::task::spawn_local(acknowledge(link.clone(), relayed.clone()));
                self.serve_agent(slot, &link, reader, &relayed).await;
                acknowledging.abort();
                self.agent_gone(slot);
            }
            Role::Control if door == Door::Bus => {
                refuse(&link, "operators connect to the control socket, not to the bus")
            }
            Role::Control => {
                welcome(&link, version);
                reader.set_max(MAX_CONTROL_FRAME);
                self.serve_control(&link, reader, creds).await;
            }
        }
    }

    /// Gives a joining agent the app's listening sockets when its worker
    /// accepts itself (it starts the worker with them, or keeps the ones it
    /// has if this is a new master).
    fn hand_listeners(&self, link: &Link, slot: u16, version: u16) {
        let listeners = self.worker_listeners.borrow();
        if listeners.is_empty() {
            return;
        }
        if version < wire::LISTENERS_VERSION {
            return warn!(app = %self.cfg.app, worker = slot, version, "this worker's agent speaks bus protocol {version}, too old to accept connections itself (config `transports`: websocket alone): it takes none until restarted");
        }
        // A few addresses (`listen`), never near u16::MAX.
        let count = listeners.len() as u16;
        for (index, fd) in listeners.iter().enumerate() {
            let frame = ToAgent::Listener { index: index as u16, count }.to_frame();
            link.send(frame.into(), Some(fd.clone()));
        }
    }

    /// A worker that accepts itself is told to stop (if its agent speaks
    /// [`wire::LISTENERS_VERSION`], it got the sockets: see
    /// [`Self::hand_listeners`]).
    pub(super) fn stop_accepting(&self, slot: u16) {
        if self.worker_listeners.borrow().is_empty() {
            return;
        }
        if let Some(peer) = self.st.borrow().peers.get(&slot).filter(|p| p.version >= wire::LISTENERS_VERSION) {
            peer.link.send(ToAgent::StopAccepting.to_frame().into(), None);
        }
    }

    async fn serve_agent(self: &Rc<Self>, slot: u16, link: &Link, mut reader: FrameReader, relayed: &Unacknowledged) {
        let drop_warning = RateLimit::default();
        let mut served: u32 = 0;
        loop {
            // Frames already buffered come without awaiting anything: a
            // replay of tens of thousands of sessions would otherwise hold
            // the loop (no accepts, no watchdog pings) until it is done.
            served = served.wrapping_add(1);
            if served % FRAMES_PER_TURN == 0 {
                tokio::task::yield_now().await;
            }
            let body = match reader.next(link).await {
                Ok(Some(body)) => body,
                Ok(None) => return,
                Err(e) if is_disconnect(&e) => return,
                Err(e) => return warn!(app = %self.cfg.app, worker = slot, "agent link failed: {e}"),
            };
            let msg = match ToMaster::decode(body) {
                Ok(m) => m,
                // A newer agent's frame this master does not know: skip it
                // (every frame carries its length), as the protocol promises.
                Err(WireError::UnknownTag(tag)) => {
                    debug!(app = %self.cfg.app, worker = slot, tag, "frame of a newer protocol skipped");
                    continue;
                }
                Err(e) => return warn!(app = %self.cfg.app, worker = slot, "agent sent a bad frame ({e}): dropped"),
            };
            let now = Instant::now();
            match msg {
                ToMaster::Ready => {
                    self.st.borrow_mut().router.ready(slot);
                    info!(app = %self.cfg.app, worker = slot, "worker ready");
                    self.worker_changed();
                }
                ToMaster::SessionOpened(sid) => {
                    debug!(app = %self.cfg.app, worker = slot, sid = %sid, "session opened");
                    let foreign = self.st.borrow_mut().router.session_opened(slot, &sid, now);
                    if foreign {
                        // A request may be waiting for exactly this announcement.
                        self.announced(&sid);
                    }
                }
                ToMaster::SessionClosed(sid) => self.st.borrow_mut().router.session_closed(slot, &sid),
                ToMaster::HandoffDone(id) => {
                    if self.st.borrow_mut().settle(slot, id).is_some() {
                        self.room.notify_one();
                    }
                }
                ToMaster::HandoffFailed(id) => {
                    let flight = self.st.borrow_mut().settle(slot, id);
                    if let Some(flight) = flight {
                        self.reroute(flight);
                    }
                }
                ToMaster::AdapterSeen { uid, nsp } => self.st.borrow_mut().router.adapter_seen(slot, &uid, &nsp),
                ToMaster::Adapter { header, frame } => {
                    self.adoption_over().await;
                    self.relay(slot, &header, frame, None, &drop_warning);
                }
                ToMaster::Broadcast { seq, header, frame } => {
                    self.adoption_over().await;
                    let copies = self.relay(slot, &header, frame, Some(seq), &drop_warning);
                    relayed.push(seq, copies);
                }
                ToMaster::Hello { .. } | ToMaster::Control(_) => {
                    return warn!(app = %self.cfg.app, worker = slot, "agent sent an unexpected frame: dropped");
                }
            }
        }
    }

    /// Relays an adapter frame of `from` where `setupPrimary` would send it,
    /// numbered for agents of protocol 2 if `seq` is given. Returns where
    /// each copy ends in its target's stream, to acknowledge once written.
    fn relay(
        &self,
        from: u16,
        header: &AdapterHeader,
        frame: Vec<u8>,
        seq: Option<u64>,
        drop_warning: &RateLimit,
    ) -> Copies {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        if header.kind != nodeipc::ADAPTER_CLOSE {
            st.router.adapter_seen(from, &header.uid, &header.nsp);
        }
        // Answers to another host's request are the bridge's alone.
        if self.bridge_frame(st, header, &frame) {
            return Vec::new();
        }
        let origin = st.peers.get(&from).map_or(0, |p| p.pid);
        let targets: Vec<&Peer> =
            st.router.relay_targets(from, header).iter().filter_map(|t| st.peers.get(t)).collect();
        let numbered = |p: &Peer| seq.is_some() && p.version >= 2;
        // Each encoding made once, and only if some target needs it.
        let (mut as_v2, mut as_v1): (Option<Bytes>, Option<Bytes>) = (None, None);
        if let Some(seq) = seq.filter(|_| targets.iter().any(|p| numbered(p))) {
            as_v2 = Some(ToAgent::Relayed { origin, seq, frame: frame.clone() }.to_frame().into());
        }
        if targets.iter().any(|p| !numbered(p)) {
            as_v1 = Some(ToAgent::Adapter(frame).to_frame().into());
        }
        let mut written = Vec::with_capacity(targets.len());
        for peer in targets {
            let out = if numbered(peer) { &as_v2 } else { &as_v1 };
            let out = out.as_ref().expect("encoded above");
            if peer.link.queued_bytes() + out.len() > self.cfg.limits.bus_queue_bytes {
                st.counters.dropped_frames += 1;
                if drop_warning.due() {
                    warn!(app = %self.cfg.app, pid = peer.pid, queued = peer.link.queued_bytes(), "worker reads the bus too slowly: dropping adapter frames for it");
                }
                continue;
            }
            peer.link.send_soon(out.clone());
            written.push((peer.link.clone(), peer.link.position()));
            st.counters.relayed_frames += 1;
        }
        if header.kind == nodeipc::ADAPTER_CLOSE {
            st.router.adapter_closed(from, &header.uid, &header.nsp);
        }
        written
    }

    /// Operators: anyone may read the status; scaling and reloading need
    /// root, the master's own user, or the app's `control_group`. One
    /// request at a time: the next is read once the last reply is written.
    async fn serve_control(self: &Rc<Self>, link: &Link, mut reader: FrameReader, creds: UnixCredentials) {
        let reply = |r: &Response| {
            link.send(
                ToAgent::ControlReply(serde_json::to_vec(r).expect("responses serialize")).to_frame().into(),
                None,
            )
        };
        while let Ok(Ok(Some(body))) = tokio::time::timeout(CONTROL_IDLE, reader.next(link)).await {
            let request = match ToMaster::decode(body) {
                Ok(ToMaster::Control(json)) => serde_json::from_slice::<Request>(&json),
                _ => return,
            };
            let progress = |line: String| reply(&Response::Progress(line));
            let response = match request {
                Err(e) => Response::Error(format!("bad request: {e}")),
                Ok(r) if r.changes_things() && !self.privileged(&creds) => {
                    self.st.borrow_mut().counters.refused_peers += 1;
                    if self.warned.denied.due() {
                        warn!(app = %self.cfg.app, peer_uid = creds.uid(), peer_pid = creds.pid(), request = ?r, "permission denied");
                    }
                    Response::Error(self.who_may_change.clone())
                }
                Ok(Request::Status) => Response::Status(Box::new(self.status_with_usage().await)),
                Ok(Request::Scale { instances }) if !(1..=crate::sid::MAX_SLOT).contains(&instances) => {
                    Response::Error(format!("cannot scale to {instances}: from 1 to {} workers", crate::sid::MAX_SLOT))
                }
                Ok(Request::Scale { instances }) => match self.scale(instances, &progress).await {
                    Ok(done) => Response::Done(done),
                    Err(e) => Response::Error(e),
                },
                Ok(Request::Reload) => match self.reload(&progress).await {
                    Ok(done) => Response::Done(done),
                    Err(e) => Response::Error(e),
                },
            };
            reply(&response);
            // The next request is read once this reply is in the kernel: a
            // peer that asks and never reads holds one reply here, not all.
            let written = link.written_through(link.position());
            if tokio::time::timeout(CONTROL_IDLE, written).await.is_err() {
                return debug!(app = %self.cfg.app, peer_uid = creds.uid(), peer_pid = creds.pid(), "operator read no reply for {CONTROL_IDLE:?}: dropped");
            }
        }
    }

    /// Whether a peer may change the app: root, the master's user, or a
    /// member of the app's `control_group` (its gid resolved at start, so
    /// that no denial waits for NSS on the event loop).
    fn privileged(&self, creds: &UnixCredentials) -> bool {
        if Master::trusted_uid(creds.uid()) {
            return true;
        }
        let Some(gid) = self.control_gid else { return false };
        creds.gid() == gid || supplementary_groups(creds.pid()).contains(&gid)
    }
}

/// The denial of a change, naming exactly who may make it.
pub(super) fn who_may_change(cfg: &crate::config::AppConfig) -> String {
    let me = nix::unistd::geteuid();
    let user = match nix::unistd::User::from_uid(me).ok().flatten() {
        Some(u) => format!("user {} (the master's)", u.name),
        None => format!("uid {me} (the master's)"),
    };
    let app = &cfg.app;
    match &cfg.control_group {
        Some(g) if me.is_root() => format!("permission denied: only root or members of group {g} may change {app}"),
        Some(g) => format!("permission denied: only root, {user} or members of group {g} may change {app}"),
        None => format!(
            "permission denied: only root{} may change {app} (\"control_group\" in {} names a group that may too)",
            if me.is_root() { String::new() } else { format!(" or {user}") },
            cfg.path.display()
        ),
    }
}

/// A process's supplementary groups (SO_PEERCRED carries only the primary one).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:")).unwrap_or("");
    line.split_whitespace().filter_map(|g| g.parse().ok()).collect()
}

/// Where each copy of a relayed broadcast ends in its target's stream.
type Copies = Vec<(Rc<Link>, u64)>;

/// Relayed batches kept apart at most; past that the newest absorbs the
/// next (acknowledgements are cumulative, so merging only acknowledges
/// later), so a target that stops reading costs a bounded amount here.
const MAX_UNACKNOWLEDGED_BATCHES: usize = 1024;

/// An agent's numbered broadcasts as relayed and not yet acknowledged.
#[derive(Default)]
pub(super) struct Unacknowledged {
    batches: RefCell<VecDeque<(u64, Copies)>>,
    added: tokio::sync::Notify,
}

impl Unacknowledged {
    fn push(&self, seq: u64, copies: Copies) {
        let mut batches = self.batches.borrow_mut();
        let full = batches.len() >= MAX_UNACKNOWLEDGED_BATCHES;
        match batches.back_mut() {
            Some((last, merged)) if full => {
                *last = seq;
                for (link, position) in copies {
                    match merged.iter_mut().find(|(l, _)| Rc::ptr_eq(l, &link)) {
                        Some((_, p)) => *p = (*p).max(position),
                        None => merged.push((link, position)),
                    }
                }
            }
            _ => batches.push_back((seq, copies)),
        }
        self.added.notify_one();
    }

    /// Removes the batches whose copies are all written; the highest seq.
    fn take_written(&self) -> Option<u64> {
        let mut batches = self.batches.borrow_mut();
        let mut through = None;
        while let Some((seq, copies)) = batches.front() {
            if !copies.iter().all(|(l, p)| l.is_written_through(*p)) {
                break;
            }
            through = Some(*seq);
            batches.pop_front();
        }
        through
    }
}

/// Acknowledges an agent's broadcasts once every copy is written to its
/// target's socket (from there the kernel delivers it even if this master
/// dies), one acknowledgement for all that are through.
async fn acknowledge(origin: Rc<Link>, pending: Rc<Unacknowledged>) {
    loop {
        let oldest = pending.batches.borrow().front().map(|(_, copies)| copies.clone());
        match oldest {
            None => pending.added.notified().await,
            Some(copies) => {
                for (link, position) in &copies {
                    link.written_through(*position).await;
                }
            }
        }
        if let Some(seq) = pending.take_written() {
            origin.send(ToAgent::Acked(seq).to_frame().into(), None);
        }
    }
}

fn welcome(link: &Link, version: u16) {
    link.send(ToAgent::Welcome { version }.to_frame().into(), None);
}

/// Says why, then hangs up.
fn refuse(link: &Link, reason: &str) {
    link.send(ToAgent::Refused(reason.to_owned()).to_frame().into(), None);
    link.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_that_stops_reading_costs_a_bounded_number_of_batches() {
        crate::up::block_on(async {
            let (ours, _theirs) = UnixStream::pair().unwrap();
            let target = Link::spawn(ours).unwrap();
            let pending = Unacknowledged::default();
            // Copies that never get written: the target reads nothing.
            let never = target.position() + (1 << 40);
            for seq in 1..=5000 {
                pending.push(seq, vec![(Rc::clone(&target), never + seq)]);
            }
            assert_eq!(pending.batches.borrow().len(), MAX_UNACKNOWLEDGED_BATCHES);
            assert_eq!(pending.take_written(), None, "nothing written, nothing acknowledged");
            let (last, copies) = pending.batches.borrow().back().cloned().unwrap();
            assert_eq!((last, copies.len(), copies[0].1), (5000, 1, never + 5000), "merged into the newest");
            // A target that goes away counts as written.
            target.close();
            assert_eq!(pending.take_written(), Some(5000));
            assert!(pending.batches.borrow().is_empty());
        });
    }
}
