//! The master: accepts client connections, peeks at each request head,
//! picks the worker, and hands the connection's fd to that worker's agent.
//! After the handoff it is out of the data path: it never reads a byte
//! that belongs to the worker (both Node routers do, and lose sessions for
//! it, nodejs/node#8353). It also relays cluster-adapter frames between
//! workers over the bus.
//!
//! Lifecycle of a client connection (see `LIFECYCLE.md` beside this file):
//! accepted -> head peeked (at once, or by a task with a deadline) ->
//! routed -> either handed off (held until the agent confirms Node got it,
//! re-routed if not) or waiting for a worker (bounded), or answered by the
//! master itself (400, 408, 431, 503; always `Connection: close`).
//!
//! With websocket alone (config `transports`) there is nothing to route:
//! the master accepts nothing and hands the app's sockets to each agent
//! that joins ([`ToAgent::Listener`]); its workers accept themselves.

mod accept;
mod bridging;
mod bus;
mod fleet;
mod scrape;

pub use bus::connect as connect_bus;
pub mod router;
pub mod supervisor;

use crate::config::AppConfig;
use crate::control::{Counters, Status, WorkerStatus};
use crate::handoff::Link;
use crate::http_head::{self, Head};
use crate::listen::Listeners;
use crate::logging::RateLimit;
use crate::nodeipc;
use crate::shutdown::Shutdown;
use crate::wire::ToAgent;
use router::{Route, Router};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};
use supervisor::Supervisor;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// How many times a connection is handed off before the master gives up
/// on it (each failed handoff means a worker died holding it).
const MAX_HANDOFF_ATTEMPTS: u8 = 3;

/// A connected agent.
struct Peer {
    link: Rc<Link>,
    pid: u32,
    /// The bus protocol it speaks.
    version: u16,
    /// Connections sent to the agent and not yet confirmed. The master
    /// keeps its copy until Node acknowledges, so that a worker dying
    /// mid-handoff loses nothing: the head is still unread, and the
    /// connection is routed again.
    in_flight: HashMap<u64, InFlight>,
}

struct InFlight {
    conn: Rc<OwnedFd>,
    head: Head,
    attempts: u8,
    /// When it was handed off (see [`Master::expire_handoffs`]).
    since: Instant,
}

/// How long a request with a foreign sid waits for the sid's announcement.
const ANNOUNCEMENT_WAIT: Duration = Duration::from_millis(500);

/// Right after start, how long new sessions wait for the rest of the
/// configured workers once the first is ready (so that a burst does not
/// all land on the worker that happened to be ready first). Node workers
/// start within a second or two of each other on a loaded machine.
const STARTUP_HOLD: Duration = Duration::from_secs(3);

/// After a restart, how long broadcasts wait for the workers still running
/// to reconnect (they retry every second at most), so that what one sends
/// again reaches those that come back a moment later.
const ADOPTION_WAIT: Duration = Duration::from_secs(3);

/// Waiting connections are expired at most this late: the expiry scan
/// runs at most this often however many distinct deadlines there are.
const EXPIRY_GRANULARITY: Duration = Duration::from_millis(10);

/// A connection whose head is complete, on its way to a worker.
struct Request {
    conn: OwnedFd,
    /// As peeked (a reroute compares it with a fresh peek).
    head: Head,
    /// Handoffs so far (each failed one means a worker died holding it).
    attempts: u8,
    /// When it started waiting for a worker.
    since: Instant,
    /// Its foreign sid was never announced: route it as a new session.
    as_new: bool,
}

impl Request {
    fn new(conn: OwnedFd, head: Head) -> Request {
        Request { conn, head, attempts: 0, since: Instant::now(), as_new: false }
    }
}

/// A connection waiting for a worker, or for its sid's announcement.
struct Waiting {
    req: Request,
    deadline: Instant,
    /// What happens at the deadline.
    then: GiveUp,
}

enum GiveUp {
    /// 503: no worker became ready in time.
    Answer503,
    /// The sid was never announced: route it like a new session (its
    /// worker answers "Session ID unknown" and the client starts over).
    AsNewSession,
}

struct State {
    router: Router,
    peers: BTreeMap<u16, Peer>,
    /// Connections waiting for a worker (retried when one changes state).
    waiting: VecDeque<Waiting>,
    /// Connections whose foreign sid is not announced yet, by sid (retried
    /// only when exactly that sid is announced: never a scan per announcement).
    awaiting_announcement: HashMap<String, Vec<Waiting>>,
    awaiting_count: usize,
    /// The earliest deadline among waiting connections (the expiry task's alarm).
    next_expiry: Option<Instant>,
    /// Handoff ids start at a random point in each master, so that a late
    /// confirmation for an earlier master's id cannot match one of ours.
    next_handoff: u64,
    /// Connections handed off and not yet confirmed, over all peers.
    in_flight: usize,
    reading_heads: usize,
    /// Connections answered by the master, being read out before closing.
    lingering: usize,
    /// Bus connections per uid other than root's and the master's.
    bus_connections_by_uid: HashMap<u32, usize>,
    /// Slots whose units failed for good (forgotten by the router).
    failed_workers: BTreeSet<u16>,
    counters: Counters,
}

impl Default for State {
    fn default() -> State {
        use std::hash::{BuildHasher, Hasher};
        // std seeds RandomState from the OS's randomness.
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        State {
            router: Router::default(),
            peers: BTreeMap::new(),
            waiting: VecDeque::new(),
            awaiting_announcement: HashMap::new(),
            awaiting_count: 0,
            next_expiry: None,
            next_handoff: seed >> 1,
            in_flight: 0,
            reading_heads: 0,
            lingering: 0,
            bus_connections_by_uid: HashMap::new(),
            failed_workers: BTreeSet::new(),
            counters: Counters::default(),
        }
    }
}

impl State {
    /// Parks a connection until its deadline (or until it can be routed).
    fn park(&mut self, w: Waiting) -> bool {
        let earlier = self.next_expiry.is_none_or(|t| w.deadline < t);
        if earlier {
            self.next_expiry = Some(w.deadline);
        }
        match (&w.then, w.req.head.sid.clone()) {
            (GiveUp::AsNewSession, Some(sid)) => {
                self.awaiting_count += 1;
                self.awaiting_announcement.entry(sid).or_default().push(w);
            }
            _ => self.waiting.push_back(w),
        }
        earlier
    }
}

impl State {
    /// Connections waiting, for a worker or for an announcement.
    fn waiting_count(&self) -> usize {
        self.waiting.len() + self.awaiting_count
    }

    /// Takes every waiting connection that `expired` selects.
    fn take_waiting(&mut self, expired: impl Fn(&Waiting) -> bool) -> Vec<Waiting> {
        let mut taken = Vec::new();
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting).into_iter().partition(|w| expired(w));
        self.waiting = keep.into();
        taken.extend(old);
        self.awaiting_announcement.retain(|_, waiting| {
            let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(waiting).into_iter().partition(|w| expired(w));
            taken.extend(old);
            *waiting = keep;
            !waiting.is_empty()
        });
        self.awaiting_count = self.awaiting_announcement.values().map(Vec::len).sum();
        taken
    }

    /// The agent of `slot` is done with handoff `id` (confirmed, or failed).
    fn settle(&mut self, slot: u16, id: u64) -> Option<InFlight> {
        let flight = self.peers.get_mut(&slot)?.in_flight.remove(&id)?;
        self.in_flight -= 1;
        Some(flight)
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        let announced = self.awaiting_announcement.values().flatten();
        self.waiting.iter().chain(announced).map(|w| w.deadline).min()
    }
}

/// Rate-limited warnings about misbehaving bus peers.
#[derive(Default)]
struct Warnings {
    too_many_connections: RateLimit,
    foreign_agent: RateLimit,
    silent_peer: RateLimit,
    bad_hello: RateLimit,
    denied: RateLimit,
}

pub struct Master {
    cfg: AppConfig,
    /// The bus and control sockets, bound (or taken from systemd) at
    /// creation, served once running.
    doors: RefCell<Option<bus::Doors>>,
    listen: Vec<SocketAddr>,
    /// Where the Prometheus metrics are served.
    metrics: Option<SocketAddr>,
    activated: bool,
    st: RefCell<State>,
    /// Woken when a connection starts waiting with an earlier deadline than
    /// the expiry task sleeps until.
    waiting_changed: Notify,
    /// Woken when a connection stops reading its head (room to accept more).
    room: Notify,
    supervisor: Supervisor,
    stopping: Cell<bool>,
    /// How many workers should run (config, or the last `sioctl scale`).
    desired: Cell<u16>,
    /// Scale and reload, one at a time.
    ops: tokio::sync::Mutex<()>,
    /// Woken (all waiters) whenever a worker's state changes.
    workers_changed: Notify,
    /// Peek buffer shared by all connections (peeking does not consume, so
    /// nothing needs to be kept between peeks).
    scratch: RefCell<Vec<u8>>,
    warned: Warnings,
    /// The gid of the app's `control_group`, and the answer to those who
    /// may not change the app: both resolved at start (NSS may block).
    control_gid: Option<u32>,
    who_may_change: String,
    /// Whether the start-up hold on new sessions is over (every configured
    /// worker was ready once, or the hold ran out).
    started_up: Cell<bool>,
    /// Whether the start-up hold began (a first worker was ready).
    holding: Cell<bool>,
    /// Whether broadcasts wait for adopted workers to reconnect (see
    /// [`ADOPTION_WAIT`]); `adopted` is woken when they stop waiting.
    adopting: Cell<bool>,
    adopted: Notify,
    /// The bridge to Redis, if the app names one (set once running).
    bridge: std::cell::OnceCell<bridging::HostBridge>,
    /// The app's listening sockets, held for the agents when the workers
    /// accept themselves (config `transports`: websocket alone).
    worker_listeners: RefCell<Vec<Rc<OwnedFd>>>,
}

impl Master {
    /// Takes the app's bus and control sockets from `listeners` (systemd)
    /// or binds them: fails if another master of the app runs.
    pub fn new(cfg: AppConfig, listeners: &mut Listeners, supervisor: Supervisor) -> std::io::Result<Rc<Master>> {
        let scratch = RefCell::new(vec![0; cfg.limits.max_head_bytes]);
        let desired = Cell::new(fleet::saved_instances(&cfg.app).unwrap_or_else(|| cfg.instances.resolve()));
        let systemd = matches!(supervisor, Supervisor::Systemd(_));
        // Not dumpable: a process of the same uid (a compromised worker
        // under `sio up`) cannot ptrace the master or read its memory.
        nix::sys::prctl::set_dumpable(false)?;
        let doors = RefCell::new(Some(bus::open(&cfg.app, &mut listeners.unix, systemd)?));
        let mut st = State::default();
        // A restarted master under systemd must first learn which workers
        // still run before it may call any sid's owner gone.
        st.router.discovering(matches!(supervisor, Supervisor::Systemd(_)));
        let adopting = Cell::new(matches!(supervisor, Supervisor::Systemd(_)));
        let control_gid = cfg
            .control_group
            .as_deref()
            .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
            .map(|g| g.gid.as_raw());
        if let (Some(g), None) = (&cfg.control_group, control_gid) {
            warn!(app = %cfg.app, group = %g, "control_group names no group: only root and the master's user may change the app");
        }
        let who_may_change = bus::who_may_change(&cfg);
        Ok(Rc::new(Master {
            control_gid,
            who_may_change,
            doors,
            listen: listeners.addresses(),
            metrics: listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()),
            activated: listeners.activated,
            cfg,
            st: RefCell::new(st),
            waiting_changed: Notify::new(),
            room: Notify::new(),
            desired,
            supervisor,
            stopping: Cell::new(false),
            ops: tokio::sync::Mutex::new(()),
            workers_changed: Notify::new(),
            scratch,
            warned: Warnings::default(),
            started_up: Cell::new(false),
            holding: Cell::new(false),
            adopting,
            adopted: Notify::new(),
            bridge: std::cell::OnceCell::new(),
            worker_listeners: RefCell::default(),
        }))
    }

    /// Runs until `shutdown`, then stops cleanly: no new connections, heads
    /// being read and connections waiting for a worker are finished (within
    /// bounds), and the workers are stopped if they stop with the master.
    pub async fn run(self: Rc<Self>, listeners: Listeners, mut shutdown: Shutdown) {
        let doors = self.doors.borrow_mut().take().expect("a master runs once");
        let workers_accept = self.cfg.transports.workers_accept();
        info!(app = %self.cfg.app, listen = ?self.listen, activated = self.activated, bus = %doors.endpoints.bus.display(), control = %doors.endpoints.control.display(), instances = self.desired.get(), accepting = if workers_accept { "workers" } else { "master" }, "master started");
        // With websocket alone no session needs routing: the workers accept
        // on the app's sockets themselves, handed over as each agent joins.
        let accepting: Vec<_> = if workers_accept {
            *self.worker_listeners.borrow_mut() =
                listeners.sockets.into_iter().map(|l| Rc::new(OwnedFd::from(l))).collect();
            Vec::new()
        } else {
            listeners
                .sockets
                .into_iter()
                .map(|l| tokio::task::spawn_local(self.clone().accept_loop(l, shutdown.clone())))
                .collect()
        };
        let bound_here = doors.bound_here;
        let doors: Vec<_> =
            doors.listeners.into_iter().map(|(d, l)| tokio::task::spawn_local(self.clone().bus_loop(d, l))).collect();
        let background = [
            tokio::task::spawn_local(self.clone().expire_waiting()),
            tokio::task::spawn_local(self.clone().expire_handoffs()),
            tokio::task::spawn_local(self.clone().report_to_systemd()),
            tokio::task::spawn_local(self.clone().watch_failures()),
            tokio::task::spawn_local(self.clone().watch_memory()),
            tokio::task::spawn_local({
                let master = self.clone();
                let metrics = listeners.metrics;
                async move {
                    if let Some(l) = metrics {
                        master.serve_metrics(l).await;
                    }
                }
            }),
            tokio::task::spawn_local(self.clone().bring_up()),
        ];
        let bridging = self.start_bridge();
        shutdown.recv().await;
        self.stopping.set(true);
        crate::systemd::notify::stopping();
        info!(app = %self.cfg.app, "stopping: no new connections");
        for t in accepting {
            let _ = t.await;
        }
        self.stop_bridge().await;
        self.finish().await;
        for t in background.into_iter().chain(bridging).chain(doors) {
            t.abort();
        }
        for path in bound_here {
            let _ = std::fs::remove_file(path);
        }
        info!(app = %self.cfg.app, "master stopped");
    }

    /// After accepting stopped: lets started work end, within bounds.
    async fn finish(self: &Rc<Self>) {
        let until = |limit: Duration| Instant::now() + limit.min(Duration::from_secs(5));
        let deadline = until(self.cfg.timeouts.head_ms);
        while self.st.borrow().reading_heads > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = until(self.cfg.timeouts.worker_wait_ms);
        while self.st.borrow().waiting_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let waiting = self.st.borrow_mut().take_waiting(|_| true);
        for w in waiting {
            self.count_and_answer(w.req.conn, http_head::response::NO_WORKER);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.st.borrow().in_flight > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.supervisor.workers_stop_with_master().await {
            let slots = self.st.borrow().router.slots();
            info!(app = %self.cfg.app, workers = ?slots, "stopping the workers");
            self.supervisor.stop_all(&self.cfg, &slots).await;
        } else {
            info!(app = %self.cfg.app, "workers keep running for the next master");
        }
    }

    /// Routes a connection whose head is complete: hands it off, or parks it.
    fn dispatch(&self, req: Request) {
        let now = Instant::now();
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let route = if req.as_new {
            st.router.route(&Head { sid: None, handshake: false }, now)
        } else {
            st.router.route(&req.head, now)
        };
        let (deadline, then) = match route {
            Route::To(slot) => {
                let Some(peer) = st.peers.get_mut(&slot) else {
                    // Router and peers move together; this is a bug, not a client's fault.
                    warn!(worker = slot, "routable worker without an agent");
                    let deadline = req.since + self.cfg.timeouts.worker_wait_ms;
                    if st.park(Waiting { req, deadline, then: GiveUp::Answer503 }) {
                        self.waiting_changed.notify_one();
                    }
                    return;
                };
                let id = st.next_handoff;
                st.next_handoff = st.next_handoff.wrapping_add(1);
                st.in_flight += 1;
                st.router.handed_off(slot, &req.head, now);
                debug!(app = %self.cfg.app, worker = slot, sid = req.head.sid.as_deref().unwrap_or(""), handshake = req.head.handshake, "handoff");
                let conn = Rc::new(req.conn);
                peer.link.send(ToAgent::Handoff(id).to_frame().into(), Some(conn.clone()));
                peer.in_flight.insert(id, InFlight { conn, head: req.head, attempts: req.attempts, since: now });
                st.counters.handed_off += 1;
                return;
            }
            Route::Wait => (req.since + self.cfg.timeouts.worker_wait_ms, GiveUp::Answer503),
            Route::AwaitAnnouncement => (req.since + ANNOUNCEMENT_WAIT, GiveUp::AsNewSession),
        };
        if st.park(Waiting { req, deadline, then }) {
            self.waiting_changed.notify_one();
        }
    }

    /// Routes the connections waiting for a worker again (a worker's state
    /// changed). Those waiting for an announcement wait for it.
    fn retry_waiting(&self) {
        let waiting = std::mem::take(&mut self.st.borrow_mut().waiting);
        for w in waiting {
            self.dispatch(w.req);
        }
        self.room.notify_one();
    }

    /// A foreign sid was announced: route the requests that waited for it.
    fn announced(&self, sid: &str) {
        let waiting = {
            let mut st = self.st.borrow_mut();
            let Some(waiting) = st.awaiting_announcement.remove(sid) else {
                return;
            };
            st.awaiting_count -= waiting.len();
            waiting
        };
        for w in waiting {
            self.dispatch(w.req);
        }
        self.room.notify_one();
    }

    /// Gives up on connections that waited too long: 503 for those that
    /// waited for a worker, a new-session route for unannounced sids.
    async fn expire_waiting(self: Rc<Self>) {
        loop {
            let next = self.st.borrow().next_expiry;
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.waiting_changed.notified() => continue,
            }
            let now = Instant::now();
            let expired = {
                let mut st = self.st.borrow_mut();
                let expired = st.take_waiting(|w| w.deadline <= now);
                let earliest = st.earliest_deadline();
                st.next_expiry = earliest.map(|t| t.max(now + EXPIRY_GRANULARITY));
                expired
            };
            let mut answered = 0;
            for Waiting { mut req, then, .. } in expired {
                match then {
                    GiveUp::Answer503 => {
                        answered += 1;
                        self.count_and_answer(req.conn, http_head::response::NO_WORKER);
                    }
                    GiveUp::AsNewSession
                        if self.st.borrow().router.announcements_pending()
                            && now < req.since + self.cfg.timeouts.worker_wait_ms =>
                    {
                        // A worker that has not replayed its sessions to this
                        // master yet (it restarted) may still announce it.
                        let deadline = (now + ANNOUNCEMENT_WAIT).min(req.since + self.cfg.timeouts.worker_wait_ms);
                        self.st.borrow_mut().park(Waiting { req, deadline, then: GiveUp::AsNewSession });
                    }
                    GiveUp::AsNewSession => {
                        debug!(app = %self.cfg.app, sid = req.head.sid.as_deref().unwrap_or(""), "sid never announced: routed as new");
                        req.as_new = true;
                        req.since = now;
                        self.dispatch(req);
                    }
                }
            }
            if answered > 0 {
                warn!(app = %self.cfg.app, count = answered, "no worker ready in time: answered 503");
            }
            self.room.notify_one();
        }
    }

    /// Drops the agents that hold a handoff unconfirmed for twice
    /// `timeouts.handoff_ms`: a working agent confirms it, or kills its hung
    /// Node and says so, within `handoff_ms`. Whatever holds it longer is
    /// broken or hostile, and must not keep the connection, nor a place
    /// among `limits.max_pending_connections`: its link is closed, and
    /// what it held is routed again as for a worker that died.
    async fn expire_handoffs(self: Rc<Self>) {
        let limit = self.cfg.timeouts.handoff_ms * 2;
        let mut every = tokio::time::interval(Duration::from_secs(1).min(limit));
        loop {
            every.tick().await;
            let now = Instant::now();
            let st = self.st.borrow();
            for (slot, peer) in &st.peers {
                if let Some(oldest) = peer.in_flight.values().map(|f| f.since).min() {
                    if now.duration_since(oldest) >= limit {
                        warn!(app = %self.cfg.app, worker = slot, pid = peer.pid, unconfirmed = peer.in_flight.len(), "agent confirmed no connection handed to it for {limit:?}: dropped, its connections go to the others");
                        peer.link.close();
                    }
                }
            }
        }
    }

    /// A worker's agent reported that a connection did not reach Node, or
    /// the agent died holding it: if the head is still unread, route again.
    fn reroute(self: &Rc<Self>, flight: InFlight) {
        // The agent only reports connections it received, and a dead
        // link's queue is cleared before this: the master's copy is the last.
        let Ok(conn) = Rc::try_unwrap(flight.conn) else {
            warn!(app = %self.cfg.app, "a connection to reroute is still queued to its dead worker; closed");
            return;
        };
        self.st.borrow_mut().counters.rerouted += 1;
        if flight.attempts + 1 >= MAX_HANDOFF_ATTEMPTS {
            self.count_and_answer(conn, http_head::response::NO_WORKER);
            return;
        }
        match self.peek(&conn, None) {
            accept::Peeked::Head(head) if head == flight.head => {
                self.dispatch(Request { attempts: flight.attempts + 1, ..Request::new(conn, head) })
            }
            // Consumed or changed: a worker read it before dying. Nothing to save.
            _ => debug!(app = %self.cfg.app, "connection torn by a dying worker; closed"),
        }
    }

    /// A worker's state changed: waiting connections may have somewhere
    /// to go now, and whoever waits for a state hears of it.
    fn worker_changed(self: &Rc<Self>) {
        self.update_startup_hold();
        self.retry_waiting();
        self.workers_changed.notify_waiters();
    }

    /// At start, new sessions wait (up to [`STARTUP_HOLD`] after the first
    /// worker is ready) until every configured worker is ready.
    fn update_startup_hold(self: &Rc<Self>) {
        if self.started_up.get() {
            return;
        }
        let mut st = self.st.borrow_mut();
        let ready = st.router.ready_count();
        if ready >= usize::from(self.desired.get()) {
            self.started_up.set(true);
            st.router.hold_new_sessions(None);
        } else if ready > 0 && !self.holding.replace(true) {
            st.router.hold_new_sessions(Some(Instant::now() + STARTUP_HOLD));
            let master = self.clone();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(STARTUP_HOLD).await;
                if !master.started_up.replace(true) {
                    master.st.borrow_mut().router.hold_new_sessions(None);
                    master.retry_waiting();
                }
            });
        }
    }

    /// The agent of `slot` disconnected: route its unconfirmed connections
    /// again and close its adapters on the survivors.
    fn agent_gone(self: &Rc<Self>, slot: u16) {
        let (peer, adapters) = {
            let mut st = self.st.borrow_mut();
            let Some(peer) = st.peers.remove(&slot) else {
                return;
            };
            st.in_flight -= peer.in_flight.len();
            let adapters = st.router.gone(slot);
            (peer, adapters)
        };
        peer.link.close();
        if self.stopping.get() {
            info!(app = %self.cfg.app, worker = slot, pid = peer.pid, "worker stopped");
        } else {
            warn!(app = %self.cfg.app, worker = slot, pid = peer.pid, unconfirmed = peer.in_flight.len(), adapters = adapters.len(), "worker left");
        }
        for (uid, nsp) in &adapters {
            let frame: crate::handoff::Bytes =
                ToAgent::Adapter(nodeipc::adapter_close_frame(uid, nsp)).to_frame().into();
            for p in self.st.borrow().peers.values() {
                p.link.send(frame.clone(), None);
            }
        }
        for (_, flight) in peer.in_flight {
            self.reroute(flight);
        }
        self.workers_changed.notify_waiters();
    }

    /// The status, with the resource use of the master, each worker and
    /// each agent (`/proc` is read once, off the event loop).
    pub async fn status_with_usage(&self) -> Status {
        let mut status = self.status();
        let processes = tokio::task::spawn_blocking(crate::procfs::Table::read).await.ok();
        status.master = processes.as_ref().and_then(|t| t.process(status.pid));
        for w in &mut status.workers {
            w.agent = w.pid.and_then(|pid| processes.as_ref()?.process(pid));
            w.usage = self.supervisor.usage(w.slot, w.pid, processes.as_ref()).await;
        }
        status
    }

    pub fn status(&self) -> Status {
        let st = self.st.borrow();
        let workers: Vec<WorkerStatus> = st
            .router
            .workers()
            .iter()
            .map(|v| {
                let peer = st.peers.get(&v.slot);
                WorkerStatus::new(v, peer.map(|p| p.pid), peer.map_or(0, |p| p.link.queued_bytes()))
            })
            .collect();
        Status {
            app: self.cfg.app.clone(),
            // Absolute: `sioctl ls` may run from anywhere.
            config: Some(std::path::absolute(&self.cfg.path).unwrap_or_else(|_| self.cfg.path.clone())),
            pid: std::process::id(),
            master: None,
            listen: self.listen.clone(),
            metrics: self.metrics,
            activated: self.activated,
            workers_accept: self.cfg.transports.workers_accept(),
            sessions: workers.iter().map(|w| u64::from(w.sessions)).sum(),
            workers,
            reading_heads: st.reading_heads,
            waiting: st.waiting_count(),
            in_flight: st.in_flight,
            lingering: st.lingering,
            heap_bytes: crate::heap::in_use(),
            failed: st.failed_workers.iter().copied().collect(),
            counters: Counters { bridge_dropped: self.bridge.get().map_or(0, |b| b.dropped()), ..st.counters.clone() },
        }
    }
}
