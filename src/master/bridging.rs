//! The master's side of the host bridge ([`crate::bridge`]): it already
//! sees every adapter frame of this host's workers (it relays them), so
//! it hands each to the bridge as well, and delivers what comes from Redis
//! the way it relays between workers. A separate process would add a hop
//! for every frame and a peer to supervise; the bridge's Redis I/O runs in
//! tasks of its own, so a slow or absent Redis never holds the relay.

use super::{Master, State};
use crate::bridge::redis::{Out, Outbox};
use crate::bridge::{message::Message, Action, Bridge, Local, Names};
use crate::logging::RateLimit;
use crate::nodeipc::AdapterHeader;
use crate::wire::ToAgent;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub(super) struct HostBridge {
    state: RefCell<Bridge>,
    outbox: Rc<Outbox>,
    unreadable: RateLimit,
    rejected: RateLimit,
    /// Largest message carried either way (a quarter of
    /// `limits.bus_queue_bytes`): a larger one would take a worker's queue.
    max_bytes: usize,
}

impl HostBridge {
    /// Messages for the other hosts dropped while Redis was away.
    pub(super) fn dropped(&self) -> u64 {
        self.outbox.dropped()
    }
}

/// Messages from Redis handled together (a stream read gives up to 100).
const FROM_REDIS_BATCH: usize = 256;

/// A random uid in the adapter's form (16 hex digits).
fn random_uid() -> String {
    use std::hash::{BuildHasher, Hasher};
    format!("{:016x}", std::collections::hash_map::RandomState::new().build_hasher().finish())
}

impl Master {
    /// Starts the bridge if the app names a Redis server: its tasks.
    pub(super) fn start_bridge(self: &Rc<Self>) -> Vec<JoinHandle<()>> {
        let Some(cfg) = &self.cfg.redis else { return vec![] };
        let names = Names { channel_prefix: cfg.channel_prefix.clone(), stream: cfg.stream_name.clone() };
        let uid = random_uid();
        let max_bytes = self.cfg.limits.bus_queue_bytes / 4;
        let (outbox, mut inbound) = match crate::bridge::redis::spawn(&cfg.url, &names, &uid, max_bytes) {
            Ok(io) => io,
            Err(e) => {
                warn!(app = %self.cfg.app, "no bridge to Redis: {e}");
                return vec![];
            }
        };
        // The address only: the URL may hold a password.
        info!(app = %self.cfg.app, redis = %crate::bridge::redis::address(&cfg.url), channel_prefix = %names.channel_prefix, stream = %names.stream, uid, "bridging the cluster adapter to Redis");
        let bridge = HostBridge {
            state: RefCell::new(Bridge::new(uid, names)),
            outbox,
            unreadable: RateLimit::default(),
            rejected: RateLimit::default(),
            max_bytes,
        };
        if self.bridge.set(bridge).is_err() {
            return vec![];
        }
        let from_redis = tokio::task::spawn_local({
            let master = self.clone();
            async move {
                // What one read from Redis gave is handled at once, so that
                // each worker gets its frames in one write.
                let mut batch = Vec::with_capacity(FROM_REDIS_BATCH);
                while inbound.recv_many(&mut batch, FROM_REDIS_BATCH).await > 0 {
                    master.adoption_over().await;
                    let mut st = master.st.borrow_mut();
                    let bridge = master.bridge.get().expect("set above");
                    let mut actions = Vec::new();
                    for m in batch.drain(..) {
                        let taken = m.and_then(|m| {
                            let workers = st.router.adapters_on(&m.nsp);
                            bridge.state.borrow_mut().from_redis(m, workers, Instant::now())
                        });
                        match taken {
                            Ok(taken) => actions.extend(taken),
                            Err(why) => {
                                st.counters.bridge_rejected += 1;
                                if bridge.rejected.due() {
                                    warn!(app = %master.cfg.app, "bridge refused a message from Redis ({why}): no worker gets it (sio_bridge_rejected_messages_total counts them)");
                                }
                            }
                        }
                    }
                    master.apply(&mut st, actions);
                }
            }
        });
        let ticking = tokio::task::spawn_local({
            let master = self.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    let bridge = master.bridge.get().expect("set above");
                    let now = Instant::now();
                    let mut actions = bridge.state.borrow_mut().tick(now);
                    let st = master.st.borrow();
                    actions
                        .extend(bridge.state.borrow_mut().forget_unserved(now, |nsp| st.router.adapters_on(nsp) > 0));
                    drop(st);
                    master.apply(&mut master.st.borrow_mut(), actions);
                }
            }
        });
        vec![from_redis, ticking]
    }

    /// Tells the other hosts that this one leaves (a clean stop).
    pub(super) async fn stop_bridge(&self) {
        if let Some(bridge) = self.bridge.get() {
            let actions = bridge.state.borrow().closing();
            self.apply(&mut self.st.borrow_mut(), actions);
            // The publisher sends what is queued within a round trip.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Hands a worker's adapter frame to the bridge. Returns whether it
    /// was a response to a remote request (which only the bridge takes).
    pub(super) fn bridge_frame(&self, st: &mut State, header: &AdapterHeader, frame: &[u8]) -> bool {
        let Some(bridge) = self.bridge.get() else { return false };
        if frame.len() > bridge.max_bytes {
            if bridge.unreadable.due() {
                warn!(app = %self.cfg.app, bytes = frame.len(), "bridge kept an adapter frame off Redis: over a quarter of limits.bus_queue_bytes");
            }
            return false;
        }
        let m = match Message::from_frame(frame) {
            Ok(m) => m,
            Err(e) => {
                if bridge.unreadable.due() {
                    warn!(app = %self.cfg.app, "bridge skipped an adapter frame it cannot read: {e}");
                }
                return false;
            }
        };
        let remote_response = header.is_response()
            && bridge.state.borrow().takes_response(header.requester_uid.as_deref().unwrap_or(""), m.request_id());
        let actions = bridge.state.borrow_mut().from_worker(m, Instant::now());
        self.apply(st, actions);
        remote_response
    }

    /// Carries out the bridge's actions. The frames for each worker are
    /// written together at the end: one write per worker, not per message.
    fn apply(&self, st: &mut State, actions: Vec<Action>) {
        let Some(bridge) = self.bridge.get() else { return };
        let mut to_workers: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
        for action in actions {
            match action {
                Action::Subscribe(channels) => bridge.outbox.send(Out::Subscribe(channels)),
                Action::Unsubscribe(channels) => bridge.outbox.send(Out::Unsubscribe(channels)),
                Action::Publish { channel, payload } => bridge.outbox.send(Out::Publish { channel, payload }),
                Action::Append(fields) => bridge.outbox.send(Out::Append(fields)),
                Action::ToWorkers { to, message } => {
                    let targets = match &to {
                        Local::Adapter(uid) => st.router.adapter_owner(uid).into_iter().collect(),
                        Local::All => {
                            let header = AdapterHeader {
                                kind: message.kind,
                                uid: message.uid.clone(),
                                nsp: message.nsp.clone(),
                                requester_uid: None,
                            };
                            st.router.relay_targets(0, &header)
                        }
                    };
                    let frame = ToAgent::Adapter(message.to_frame()).to_frame();
                    for slot in targets {
                        let Some(peer) = st.peers.get(&slot) else { continue };
                        let pending = to_workers.get(&slot).map_or(0, Vec::len);
                        if peer.link.queued_bytes() + pending + frame.len() > self.cfg.limits.bus_queue_bytes {
                            st.counters.dropped_frames += 1;
                            continue;
                        }
                        to_workers.entry(slot).or_default().extend_from_slice(&frame);
                        st.counters.relayed_frames += 1;
                    }
                    debug!(app = %self.cfg.app, kind = message.kind, uid = %message.uid, "from Redis to workers");
                }
            }
        }
        for (slot, frames) in to_workers {
            if let Some(peer) = st.peers.get(&slot) {
                peer.link.send(Rc::new(frames), None);
            }
        }
    }
}
