//! The master's routing and relay decisions, apart from any I/O.
//!
//! Workers are known by *slot* (the `N` of `sio worker APP:N`, the number
//! inside every sid the worker makes). Each has an explicit state:
//!
//! ```text
//!            agent says Hello        agent says Ready
//! Starting ───────────────────▶ Connected ─────────────▶ Ready
//!    ▲                              │                      │ drain() (from any state)
//!    │ agent gone (will restart)    │                      ▼
//!    └──────────────────────────────┴────────────────── Draining ── agent gone ─▶ (removed)
//! ```
//!
//! * A request with a sid goes to the sid's owner: the learned table for
//!   foreign sids first, then the slot inside a sio sid. It waits while the
//!   owner is `Starting` (coming back); an owner that is not known at all
//!   lost the session, and the request goes where a new session would (the
//!   worker answers "Session ID unknown" and the client reconnects).
//! * A new session goes to the `Ready` worker with the least load; it waits
//!   if no worker is ready.
//! * Adapter frames go where `setupPrimary` sends them (see [`Router::relay_targets`]).

use crate::balance::{Balancer, Load};
pub use crate::control::WorkerState;
use crate::http_head::Head;
use crate::nodeipc::{AdapterHeader, Adapters};
use crate::sid;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Foreign sids one worker may have announced and not closed.
pub const MAX_FOREIGN_SIDS: usize = 65_536;
/// Longest foreign sid kept (engine.io's own are 20 characters).
pub const MAX_SID_LEN: usize = 128;

#[derive(Debug)]
struct Worker {
    state: WorkerState,
    load: Load,
    /// `(uid, nsp)` of every cluster-adapter instance seen from it.
    adapters: Adapters,
    /// How many of [`Router::foreign_sids`] it owns.
    foreign_sids: usize,
}

impl Worker {
    fn new(state: WorkerState) -> Worker {
        Worker { state, load: Load::default(), adapters: Adapters::default(), foreign_sids: 0 }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    To(u16),
    /// No suitable worker now: hold the connection (bounded), retry when a
    /// worker's state changes.
    Wait,
    /// A foreign sid (an app's own `generateId`) not announced yet: its
    /// worker's `sticky:connection` is likely still on its way (the
    /// client's next request can overtake it, socket.io-sticky#2). Hold it
    /// briefly, retry on each announcement, then balance it as new.
    AwaitAnnouncement,
}

/// A worker as `sioctl status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub slot: u16,
    pub state: WorkerState,
    pub sessions: u32,
}

#[derive(Debug, Default)]
pub struct Router {
    workers: BTreeMap<u16, Worker>,
    /// Sids that do not carry their slot (an app's own `generateId`),
    /// learned from `sticky:connection`.
    foreign_sids: HashMap<String, u16>,
    /// Which worker runs each adapter uid (to unicast responses).
    uid_owner: HashMap<String, u16>,
    balancer: Balancer,
    /// A restarted master has not yet learned which workers still run: a
    /// sid whose slot is unknown may belong to one that has not reconnected.
    discovering: bool,
    /// New sessions wait until then (see [`Router::hold_new_sessions`]).
    hold_new_sessions_until: Option<Instant>,
}

impl Router {
    /// While `on`, a sid whose slot is unknown waits instead of counting as
    /// lost: the master is still learning which workers run.
    pub fn discovering(&mut self, on: bool) {
        self.discovering = on;
    }

    /// New sessions wait until `until` (then are balanced as usual): right
    /// after start, so that a burst spreads over all the configured workers
    /// rather than landing on the one that was ready first.
    pub fn hold_new_sessions(&mut self, until: Option<Instant>) {
        self.hold_new_sessions_until = until;
    }

    /// Whether announcements may still come for sids nobody announced: the
    /// master is discovering, or a worker has not replayed its sessions yet.
    pub fn announcements_pending(&self) -> bool {
        self.discovering
            || self.workers.values().any(|w| matches!(w.state, WorkerState::Starting | WorkerState::Connected))
    }

    /// Workers ready for new sessions.
    pub fn ready_count(&self) -> usize {
        self.workers.values().filter(|w| w.state == WorkerState::Ready).count()
    }

    /// A worker is expected in `slot` (started, or about to be).
    pub fn expect(&mut self, slot: u16) {
        self.workers.entry(slot).or_insert_with(|| Worker::new(WorkerState::Starting));
    }

    /// Its agent connected. Returns false if the slot already has one.
    pub fn connected(&mut self, slot: u16) -> bool {
        let w = self.workers.entry(slot).or_insert_with(|| Worker::new(WorkerState::Starting));
        if w.state != WorkerState::Starting {
            return false;
        }
        w.state = WorkerState::Connected;
        true
    }

    pub fn ready(&mut self, slot: u16) {
        if let Some(w) = self.workers.get_mut(&slot) {
            if w.state == WorkerState::Connected {
                w.state = WorkerState::Ready;
            }
        }
    }

    /// No new sessions for this worker; it is removed when its agent leaves.
    pub fn drain(&mut self, slot: u16) {
        if let Some(w) = self.workers.get_mut(&slot) {
            w.state = WorkerState::Draining;
        }
    }

    /// Forgets a slot that will not come back (scaled away before it ever
    /// connected).
    pub fn forget(&mut self, slot: u16) {
        self.workers.remove(&slot);
    }

    /// The agent left. Returns the adapters to close on its behalf. A
    /// draining worker is removed; any other is expected back (`Starting`).
    pub fn gone(&mut self, slot: u16) -> Vec<(String, String)> {
        let Some(w) = self.workers.get_mut(&slot) else {
            return Vec::new();
        };
        let adapters = std::mem::take(&mut w.adapters);
        if w.state == WorkerState::Draining {
            self.workers.remove(&slot);
        } else {
            *w = Worker::new(WorkerState::Starting);
        }
        self.foreign_sids.retain(|_, s| *s != slot);
        self.uid_owner.retain(|_, s| *s != slot);
        adapters.iter().map(|(uid, nsp)| (uid.to_owned(), nsp.to_owned())).collect()
    }

    pub fn state(&self, slot: u16) -> Option<WorkerState> {
        self.workers.get(&slot).map(|w| w.state)
    }

    /// `slot` announced a session. Returns whether its sid is foreign (a
    /// request may be waiting for this announcement). A worker may announce
    /// only sids it can own: a sio sid of another slot, or a foreign sid
    /// another worker announced first, is ignored; so is a foreign sid past
    /// the bounds ([`MAX_SID_LEN`], [`MAX_FOREIGN_SIDS`] per worker), whose
    /// requests are then routed as new sessions.
    pub fn session_opened(&mut self, slot: u16, sid: &str, now: Instant) -> bool {
        let Some(w) = self.workers.get_mut(&slot) else { return false };
        let foreign = match sid::slot_of(sid.as_bytes()) {
            Some(s) if s == slot => false,
            Some(_) => return false,
            None if sid.len() > MAX_SID_LEN || w.foreign_sids >= MAX_FOREIGN_SIDS => return false,
            None => match self.foreign_sids.entry(sid.to_owned()) {
                std::collections::hash_map::Entry::Occupied(_) => return false,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(slot);
                    w.foreign_sids += 1;
                    true
                }
            },
        };
        w.load.session_opened(now);
        foreign
    }

    /// `slot` announced the end of a session (only its own count).
    pub fn session_closed(&mut self, slot: u16, sid: &str) {
        let own = match sid::slot_of(sid.as_bytes()) {
            Some(s) => s == slot,
            None => self.foreign_sids.get(sid) == Some(&slot),
        };
        if !own {
            return;
        }
        let foreign = self.foreign_sids.remove(sid).is_some();
        if let Some(w) = self.workers.get_mut(&slot) {
            w.foreign_sids -= usize::from(foreign);
            w.load.session_closed();
        }
    }

    /// The sid's owner, if the sid names one.
    fn owner(&self, sid: &str) -> Option<u16> {
        self.foreign_sids.get(sid).copied().or_else(|| sid::slot_of(sid.as_bytes()))
    }

    pub fn route(&mut self, head: &Head, now: Instant) -> Route {
        if let Some(sid) = head.sid.as_deref() {
            match self.owner(sid).map(|owner| (owner, self.workers.get(&owner).map(|w| w.state))) {
                Some((_, Some(WorkerState::Starting))) => return Route::Wait,
                Some((owner, Some(_))) => return Route::To(owner),
                // Perhaps a worker this master has not heard of yet.
                Some((_, None)) if self.discovering => return Route::Wait,
                Some((_, None)) => {} // the owner is gone for good: so is the session
                None => return Route::AwaitAnnouncement,
            }
        }
        if self.hold_new_sessions_until.is_some_and(|t| now < t) {
            return Route::Wait;
        }
        let ready = self.workers.iter_mut().filter(|(_, w)| w.state == WorkerState::Ready);
        let candidates: Vec<(u16, u32)> = ready.map(|(&s, w)| (s, w.load.value(now))).collect();
        self.balancer.pick(candidates).map_or(Route::Wait, Route::To)
    }

    /// A request was handed to `slot`; a handshake counts as a session from now.
    pub fn handed_off(&mut self, slot: u16, head: &Head, now: Instant) {
        if head.handshake {
            if let Some(w) = self.workers.get_mut(&slot) {
                w.load.handshake_sent(now);
            }
        }
    }

    /// Records the adapter behind a frame from `slot`. The first worker
    /// seen with a uid keeps it (another cannot take its responses over).
    pub fn adapter_seen(&mut self, slot: u16, uid: &str, nsp: &str) {
        if let Some(w) = self.workers.get_mut(&slot) {
            if !w.adapters.seen(uid, nsp) {
                return;
            }
            if !self.uid_owner.contains_key(uid) {
                self.uid_owner.insert(uid.to_owned(), slot);
            }
        }
    }

    /// `slot` closed an adapter (`ADAPTER_CLOSE`): forget it, so that the
    /// bookkeeping of apps with short-lived namespaces does not grow.
    pub fn adapter_closed(&mut self, slot: u16, uid: &str, nsp: &str) {
        let Some(w) = self.workers.get_mut(&slot) else {
            return;
        };
        w.adapters.closed(uid, nsp);
        if !w.adapters.has_uid(uid) && self.uid_owner.get(uid) == Some(&slot) {
            self.uid_owner.remove(uid);
        }
    }

    /// Where a frame from `from` goes, as `setupPrimary` does it: responses
    /// (8, 10, and also 11, 12) to the worker that owns `requesterUid`;
    /// everything else to every other connected worker. A response whose
    /// requester is unknown goes to all others too (non-requesters drop it).
    pub fn relay_targets(&self, from: u16, header: &AdapterHeader) -> Vec<u16> {
        if header.is_response() {
            if let Some(&owner) = header.requester_uid.as_ref().and_then(|r| self.uid_owner.get(r)) {
                return vec![owner];
            }
        }
        self.workers.iter().filter(|(&s, w)| s != from && w.state != WorkerState::Starting).map(|(&s, _)| s).collect()
    }

    /// The worker that runs the adapter `uid`.
    pub fn adapter_owner(&self, uid: &str) -> Option<u16> {
        self.uid_owner.get(uid).copied()
    }

    /// How many workers a frame to every worker reaches that run an
    /// adapter for `nsp` (those answer a request).
    pub fn adapters_on(&self, nsp: &str) -> usize {
        let serving = |w: &&Worker| w.state != WorkerState::Starting && w.adapters.serves(nsp);
        self.workers.values().filter(serving).count()
    }

    pub fn workers(&self) -> Vec<WorkerView> {
        self.workers.iter().map(|(&slot, w)| WorkerView { slot, state: w.state, sessions: w.load.sessions() }).collect()
    }

    /// Slots in any state.
    pub fn slots(&self) -> Vec<u16> {
        self.workers.keys().copied().collect()
    }

    /// Slots of workers that are not being removed.
    pub fn active_slots(&self) -> Vec<u16> {
        self.workers.iter().filter(|(_, w)| w.state != WorkerState::Draining).map(|(&s, _)| s).collect()
    }

    /// The lowest slot not in use.
    pub fn free_slot(&self) -> Option<u16> {
        (1..=sid::MAX_SLOT).find(|s| !self.workers.contains_key(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(sid: Option<&str>) -> Head {
        Head { sid: sid.map(str::to_owned), handshake: sid.is_none() }
    }

    fn ready_router(slots: &[u16]) -> Router {
        let mut r = Router::default();
        for &s in slots {
            r.expect(s);
            assert!(r.connected(s));
            r.ready(s);
        }
        r
    }

    #[test]
    fn sio_sids_route_to_their_slot_without_any_announcement() {
        let now = Instant::now();
        let mut r = ready_router(&[1, 2, 3]);
        let sid = sid::make(2, &[7; 16]);
        for _ in 0..5 {
            assert_eq!(r.route(&head(Some(&sid)), now), Route::To(2));
        }
    }

    #[test]
    fn foreign_sids_use_the_learned_table() {
        let now = Instant::now();
        let mut r = ready_router(&[1, 2]);
        // Not announced yet: wait for it.
        assert_eq!(r.route(&head(Some("my-uuid-style-session-id")), now), Route::AwaitAnnouncement);
        r.session_opened(2, "my-uuid-style-session-id", now);
        assert_eq!(r.route(&head(Some("my-uuid-style-session-id")), now), Route::To(2));
        r.session_closed(2, "my-uuid-style-session-id");
        assert_eq!(r.route(&head(Some("my-uuid-style-session-id")), now), Route::AwaitAnnouncement);
    }

    #[test]
    fn sessions_of_a_restarting_worker_wait_and_a_vanished_ones_are_rebalanced() {
        let now = Instant::now();
        let mut r = ready_router(&[1, 2]);
        let sid = sid::make(1, &[1; 16]);
        r.adapter_seen(1, "u1", "/");
        assert_eq!(r.gone(1), vec![("u1".to_owned(), "/".to_owned())]);
        assert_eq!(r.state(1), Some(WorkerState::Starting));
        assert_eq!(r.route(&head(Some(&sid)), now), Route::Wait);
        r.drain(1);
        r.gone(1);
        assert_eq!(r.state(1), None);
        assert_eq!(r.route(&head(Some(&sid)), now), Route::To(2));
    }

    #[test]
    fn new_sessions_only_to_ready_workers_and_never_to_draining_ones() {
        let now = Instant::now();
        let mut r = ready_router(&[1, 2]);
        r.expect(3);
        r.connected(3);
        r.drain(1);
        for _ in 0..4 {
            let Route::To(s) = r.route(&head(None), now) else { panic!() };
            assert_eq!(s, 2);
            r.handed_off(s, &head(None), now);
        }
        // A draining worker keeps its own sessions.
        let sid = sid::make(1, &[0; 16]);
        assert_eq!(r.route(&head(Some(&sid)), now), Route::To(1));
        r.drain(2);
        assert_eq!(r.route(&head(None), now), Route::Wait);
    }

    #[test]
    fn responses_go_to_the_requester_only() {
        let mut r = ready_router(&[1, 2, 3]);
        r.adapter_seen(1, "A", "/");
        r.adapter_seen(2, "B", "/");
        let resp = AdapterHeader { kind: 8, uid: "B".into(), nsp: "/".into(), requester_uid: Some("A".into()) };
        assert_eq!(r.relay_targets(2, &resp), vec![1]);
        let bcast = AdapterHeader { kind: 3, uid: "B".into(), nsp: "/".into(), requester_uid: None };
        assert_eq!(r.relay_targets(2, &bcast), vec![1, 3]);
        let unknown = AdapterHeader { requester_uid: Some("Z".into()), ..resp };
        assert_eq!(r.relay_targets(2, &unknown), vec![1, 3]);
    }

    #[test]
    fn while_discovering_a_sid_of_an_unknown_slot_waits_then_counts_as_lost() {
        let now = Instant::now();
        let mut r = ready_router(&[1]);
        r.discovering(true);
        let of_slot_2 = sid::make(2, &[3; 16]);
        assert_eq!(r.route(&head(Some(&of_slot_2)), now), Route::Wait, "worker 2 may not have reconnected yet");
        assert!(r.announcements_pending());
        r.discovering(false);
        assert_eq!(r.route(&head(Some(&of_slot_2)), now), Route::To(1), "nobody runs slot 2: a new session");
        assert!(!r.announcements_pending());
    }

    #[test]
    fn the_start_up_hold_parks_new_sessions_only() {
        let now = Instant::now();
        let mut r = ready_router(&[1]);
        r.hold_new_sessions(Some(now + std::time::Duration::from_secs(1)));
        assert_eq!(r.route(&head(None), now), Route::Wait);
        let sid = sid::make(1, &[5; 16]);
        assert_eq!(r.route(&head(Some(&sid)), now), Route::To(1), "a session's requests are not held");
        assert_eq!(r.route(&head(None), now + std::time::Duration::from_secs(2)), Route::To(1), "bounded");
    }

    #[test]
    fn a_worker_announces_and_closes_only_sessions_it_can_own() {
        let now = Instant::now();
        let mut r = ready_router(&[1, 2]);
        let of_slot_1 = sid::make(1, &[9; 16]);
        assert!(!r.session_opened(2, &of_slot_1, now), "a sio sid of another slot is ignored");
        assert_eq!(r.route(&head(Some(&of_slot_1)), now), Route::To(1));
        assert!(r.session_opened(1, "foreign-a", now));
        assert!(!r.session_opened(2, "foreign-a", now), "the first announcer keeps a foreign sid");
        r.session_closed(2, "foreign-a");
        assert_eq!(r.route(&head(Some("foreign-a")), now), Route::To(1), "only the owner closes it");
        assert_eq!(r.workers().iter().map(|w| w.sessions).collect::<Vec<_>>(), vec![1, 0]);
    }

    #[test]
    fn adapter_close_forgets_the_adapter_and_the_first_owner_keeps_a_uid() {
        let mut r = ready_router(&[1, 2, 3]);
        r.adapter_seen(1, "A", "/");
        r.adapter_seen(2, "A", "/x");
        let resp = AdapterHeader { kind: 8, uid: "B".into(), nsp: "/".into(), requester_uid: Some("A".into()) };
        assert_eq!(r.relay_targets(3, &resp), vec![1], "worker 2 cannot take worker 1's responses");
        r.adapter_closed(1, "A", "/");
        assert_eq!(r.relay_targets(3, &resp), vec![1, 2], "the requester is unknown now: to all others");
        assert_eq!(r.gone(1), Vec::<(String, String)>::new(), "nothing left to close for it");
    }

    #[test]
    fn strings_a_worker_chooses_are_kept_within_bounds_and_freed_as_they_close() {
        let now = Instant::now();
        let mut r = ready_router(&[1, 2]);
        let long = "s".repeat(MAX_SID_LEN + 1);
        assert!(!r.session_opened(1, &long, now), "a foreign sid past its length is not kept");
        for i in 0..MAX_FOREIGN_SIDS + 10 {
            r.session_opened(1, &format!("f{i}"), now);
        }
        assert_eq!(r.foreign_sids.len(), MAX_FOREIGN_SIDS, "one worker's sids are bounded");
        assert!(r.session_opened(2, "another-worker", now), "and leave the others theirs");
        r.session_closed(1, "f0");
        assert!(r.session_opened(1, "room-again", now), "a closed one frees its place");
        for i in 0..crate::nodeipc::MAX_ADAPTERS + 10 {
            r.adapter_seen(1, "A", &format!("/n{i}"));
        }
        r.adapter_seen(1, &"u".repeat(crate::nodeipc::MAX_UID_LEN + 1), "/");
        assert_eq!(r.gone(1).len(), crate::nodeipc::MAX_ADAPTERS, "one worker's adapters are bounded");
        assert_eq!(r.foreign_sids.len(), 1, "a worker's sids go with it");
    }

    #[test]
    fn a_slot_admits_one_agent() {
        let mut r = ready_router(&[1]);
        assert!(!r.connected(1));
    }
}
