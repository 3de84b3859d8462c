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

mod accept;
mod bus;
mod fleet;

pub use bus::connect as connect_bus;
pub mod router;
pub mod supervisor;

use crate::config::AppConfig;
use crate::control::{Counters, Status, WorkerStatus};
use crate::handoff::Link;
use crate::http_head::{self, Head};
use crate::listen::Listeners;
use crate::nodeipc;
use crate::shutdown::Shutdown;
use crate::wire::ToAgent;
use router::{Route, Router};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
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
}

/// How long a request with a foreign sid waits for the sid's announcement.
const ANNOUNCEMENT_WAIT: Duration = Duration::from_millis(500);

/// A connection waiting for a worker, or for its sid's announcement.
struct Waiting {
    conn: OwnedFd,
    head: Head,
    /// When it started waiting.
    since: Instant,
    attempts: u8,
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

#[derive(Default)]
struct State {
    router: Router,
    peers: BTreeMap<u16, Peer>,
    waiting: VecDeque<Waiting>,
    next_handoff: u64,
    reading_heads: usize,
    /// Connections answered by the master, being read out before closing.
    lingering: usize,
    counters: Counters,
}

pub struct Master {
    cfg: AppConfig,
    /// The bus, bound at creation, served once running.
    bus: RefCell<Option<tokio::net::UnixListener>>,
    listen: Vec<SocketAddr>,
    activated: bool,
    st: RefCell<State>,
    /// Woken when a worker becomes routable or a connection starts waiting.
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
}

impl Master {
    /// Binds the app's bus: fails if another master of the app runs.
    pub fn new(cfg: AppConfig, listeners: &Listeners, supervisor: Supervisor) -> std::io::Result<Rc<Master>> {
        let scratch = RefCell::new(vec![0; cfg.limits.max_head_bytes]);
        let desired = Cell::new(fleet::saved_instances(&cfg.app).unwrap_or_else(|| cfg.instances.resolve()));
        let bus = RefCell::new(Some(bus::listen(&cfg.app)?));
        Ok(Rc::new(Master {
            bus,
            listen: listeners.addresses(),
            activated: listeners.activated,
            cfg,
            st: RefCell::default(),
            waiting_changed: Notify::new(),
            room: Notify::new(),
            desired,
            supervisor,
            stopping: Cell::new(false),
            ops: tokio::sync::Mutex::new(()),
            workers_changed: Notify::new(),
            scratch,
        }))
    }

    /// Runs until `shutdown`, then stops cleanly: no new connections, heads
    /// being read and connections waiting for a worker are finished (within
    /// bounds), and the workers are stopped if they stop with the master.
    pub async fn run(self: Rc<Self>, listeners: Listeners, mut shutdown: Shutdown) {
        let bus = self.bus.borrow_mut().take().expect("a master runs once");
        info!(app = %self.cfg.app, listen = ?self.listen, activated = self.activated, bus = %crate::wire::bus_address(&self.cfg.app), instances = self.desired.get(), "master started");
        let accepting: Vec<_> = listeners
            .sockets
            .into_iter()
            .map(|l| tokio::task::spawn_local(self.clone().accept_loop(l, shutdown.clone())))
            .collect();
        let background = [
            tokio::task::spawn_local(self.clone().bus_loop(bus)),
            tokio::task::spawn_local(self.clone().expire_waiting()),
            tokio::task::spawn_local(self.clone().report_to_systemd()),
            tokio::task::spawn_local(self.clone().bring_up()),
        ];
        shutdown.recv().await;
        self.stopping.set(true);
        crate::systemd::notify::stopping();
        info!(app = %self.cfg.app, "stopping: no new connections");
        for t in accepting {
            let _ = t.await;
        }
        self.finish().await;
        for t in background {
            t.abort();
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
        while !self.st.borrow().waiting.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let waiting: Vec<_> = self.st.borrow_mut().waiting.drain(..).collect();
        for w in waiting {
            self.count_and_answer(w.conn, http_head::response::NO_WORKER);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.st.borrow().peers.values().any(|p| !p.in_flight.is_empty()) && Instant::now() < deadline {
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
    /// `since`: when it started waiting for a worker (now, for a new one).
    fn dispatch(&self, conn: OwnedFd, head: Head, attempts: u8, since: Instant) {
        let now = Instant::now();
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        match st.router.route(&head, now) {
            Route::To(slot) => {
                let Some(peer) = st.peers.get_mut(&slot) else {
                    // Router and peers move together; this is a bug, not a client's fault.
                    warn!(worker = slot, "routable worker without an agent");
                    let deadline = since + self.cfg.timeouts.worker_wait_ms;
                    st.waiting.push_back(Waiting { conn, head, since, attempts, deadline, then: GiveUp::Answer503 });
                    return;
                };
                let id = st.next_handoff;
                st.next_handoff += 1;
                st.router.handed_off(slot, &head, now);
                debug!(app = %self.cfg.app, worker = slot, sid = head.sid.as_deref().unwrap_or(""), handshake = head.handshake, "handoff");
                let conn = Rc::new(conn);
                peer.link.send(ToAgent::Handoff(id).to_frame().into(), Some(conn.clone()));
                peer.in_flight.insert(id, InFlight { conn, head, attempts });
                st.counters.handed_off += 1;
            }
            Route::Wait => {
                let deadline = since + self.cfg.timeouts.worker_wait_ms;
                st.waiting.push_back(Waiting { conn, head, since, attempts, deadline, then: GiveUp::Answer503 });
                self.waiting_changed.notify_one();
            }
            Route::AwaitAnnouncement => {
                let deadline = since + ANNOUNCEMENT_WAIT;
                st.waiting.push_back(Waiting { conn, head, since, attempts, deadline, then: GiveUp::AsNewSession });
                self.waiting_changed.notify_one();
            }
        }
    }

    /// Routes every waiting connection again (a worker became routable).
    fn retry_waiting(&self) {
        let waiting: Vec<_> = self.st.borrow_mut().waiting.drain(..).collect();
        for w in waiting {
            self.dispatch(w.conn, w.head, w.attempts, w.since);
        }
        self.room.notify_one();
    }

    /// Gives up on connections that waited too long: 503 for those that
    /// waited for a worker, a new-session route for unannounced sids.
    async fn expire_waiting(self: Rc<Self>) {
        loop {
            let next = self.st.borrow().waiting.iter().map(|w| w.deadline).min();
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
            let expired: Vec<_> = {
                let mut st = self.st.borrow_mut();
                let (old, keep): (Vec<_>, Vec<_>) = st.waiting.drain(..).partition(|w| w.deadline <= now);
                st.waiting = keep.into();
                old
            };
            let mut answered = 0;
            for mut w in expired {
                match w.then {
                    GiveUp::Answer503 => {
                        answered += 1;
                        self.count_and_answer(w.conn, http_head::response::NO_WORKER);
                    }
                    GiveUp::AsNewSession => {
                        debug!(app = %self.cfg.app, sid = w.head.sid.as_deref().unwrap_or(""), "sid never announced: routed as new");
                        w.head.sid = None;
                        self.dispatch(w.conn, w.head, w.attempts, now);
                    }
                }
            }
            if answered > 0 {
                warn!(app = %self.cfg.app, count = answered, "no worker ready in time: answered 503");
            }
            self.room.notify_one();
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
        match self.peek(&conn) {
            accept::Peeked::Head(head) if head == flight.head => {
                self.dispatch(conn, head, flight.attempts + 1, Instant::now())
            }
            // Consumed or changed: a worker read it before dying. Nothing to save.
            _ => debug!(app = %self.cfg.app, "connection torn by a dying worker; closed"),
        }
    }

    /// A worker's state changed: waiting connections may have somewhere
    /// to go now, and whoever waits for a state hears of it.
    fn worker_changed(&self) {
        self.retry_waiting();
        self.workers_changed.notify_waiters();
    }

    /// The agent of `slot` disconnected: route its unconfirmed connections
    /// again and close its adapters on the survivors.
    fn agent_gone(self: &Rc<Self>, slot: u16) {
        let (peer, adapters) = {
            let mut st = self.st.borrow_mut();
            let Some(peer) = st.peers.remove(&slot) else {
                return;
            };
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

    /// The status, with each worker's resource use (under systemd).
    pub async fn status_with_usage(&self) -> Status {
        let mut status = self.status();
        for w in &mut status.workers {
            w.usage = self.supervisor.usage(w.slot).await;
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
            pid: std::process::id(),
            listen: self.listen.clone(),
            activated: self.activated,
            sessions: workers.iter().map(|w| u64::from(w.sessions)).sum(),
            workers,
            reading_heads: st.reading_heads,
            waiting: st.waiting.len(),
            in_flight: st.peers.values().map(|p| p.in_flight.len()).sum(),
            counters: st.counters.clone(),
        }
    }
}
