//! The host bridge: carries this host's cluster-adapter traffic to and
//! from Redis in the wire format of `@socket.io/redis-streams-adapter` 0.3,
//! so that workers running the stock `@socket.io/cluster-adapter` and
//! servers running the Redis adapter form one Socket.IO cluster.
//!
//! To Redis the whole host is **one server** (one uid, one subscription to
//! each namespace's public channel), because 0.3 counts servers by the
//! subscribers of that channel and waits for that many answers minus one:
//! the bridge fans a remote request out to its workers and answers it
//! once ([`Incoming`]: sockets concatenated, client counts summed, the
//! first `serverSideEmit` answer). To its workers every remote server is
//! one more cluster member: the bridge learns them from their answers to
//! its probe (a `fetchSockets` of a room nobody is in, which every server
//! answers, on this host's private channel; a server that merely says
//! something is not made a member, so a flood of made-up uids adds none),
//! and sends heartbeats in their name, so that a worker's
//! `serverCount()` and its per-uid wait for answers include them; a remote
//! server that stops answering is no longer heartbeaten, and the workers
//! drop it on the adapter's own schedule.
//!
//! Nothing a remote server says is trusted: [`check`] refuses what a
//! worker could not take, and every table a remote fills has a bound
//! ([`MAX_REMOTES`], [`MAX_REQUESTS`], [`MAX_REQUESTS_PER_REMOTE`],
//! [`MAX_NAMESPACES`]).
//!
//! This module decides (pure: messages in, [`Action`]s out); [`redis`]
//! does the I/O, [`message`] the encodings.

pub mod check;
pub mod message;
pub mod redis;

use check::Rejection;

use message::{get, Message};
use rmpv::Value as Mp;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

pub const INITIAL_HEARTBEAT: u32 = 1;
pub const HEARTBEAT: u32 = 2;
pub const BROADCAST: u32 = 3;
pub const SOCKETS_JOIN: u32 = 4;
pub const SOCKETS_LEAVE: u32 = 5;
pub const DISCONNECT_SOCKETS: u32 = 6;
pub const FETCH_SOCKETS: u32 = 7;
pub const FETCH_SOCKETS_RESPONSE: u32 = 8;
pub const SERVER_SIDE_EMIT: u32 = 9;
pub const SERVER_SIDE_EMIT_RESPONSE: u32 = 10;
pub const BROADCAST_CLIENT_COUNT: u32 = 11;
pub const BROADCAST_ACK: u32 = 12;
pub const ADAPTER_CLOSE: u32 = 13;

/// How often the bridge probes for remote servers and heartbeats them to
/// its workers (whose adapter drops a member unheard of for 10 s).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A remote server unheard of for this long is no longer heartbeaten.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a remote request waits for this host's workers before the
/// bridge answers with what it has (the requester gives up at 5 s).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(4);
/// How long the route back of a local request is kept.
pub const REQUEST_TTL: Duration = Duration::from_secs(10);
/// Requests tracked at most in each direction: beyond it new ones are not
/// tracked (their answers are lost) rather than memory growing.
pub const MAX_REQUESTS: usize = 10_000;
/// Requests of one remote server tracked at once, so that one cannot fill
/// the table for the others.
pub const MAX_REQUESTS_PER_REMOTE: usize = 1_000;
/// Remote servers heartbeaten to the workers at most, counted per
/// (namespace, server): each is a cluster member the workers count and
/// wait for.
pub const MAX_REMOTES: usize = 1_024;
/// Namespaces bridged at most (each costs two subscriptions and a probe
/// every [`PROBE_INTERVAL`]).
pub const MAX_NAMESPACES: usize = 1_024;
/// A namespace no worker has served for this long is no longer bridged
/// (unsubscribed, no longer probed): dynamic namespaces come and go, and
/// a worker's restart is far shorter.
pub const UNSERVED_GRACE: Duration = Duration::from_secs(60);
/// The room of the probe: no socket can be in it (rooms come from
/// `socket.join()`, and this one holds a NUL).
pub const PROBE_ROOM: &str = "\0sio-bridge-probe";
/// Prefix of the probe's request ids.
const PROBE_ID: &str = "sio-probe-";

/// The adapter's names on Redis (its `channelPrefix` and `streamName`).
#[derive(Debug, Clone)]
pub struct Names {
    pub channel_prefix: String,
    pub stream: String,
}

impl Names {
    /// Every server of the namespace listens here (`socket.io#/#`).
    pub fn public_channel(&self, nsp: &str) -> String {
        format!("{}#{nsp}#", self.channel_prefix)
    }

    /// Answers to server `uid` (`socket.io#/#uid#`).
    pub fn private_channel(&self, nsp: &str, uid: &str) -> String {
        format!("{}#{nsp}#{uid}#", self.channel_prefix)
    }
}

/// Who on this host a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// Every worker (that runs an adapter).
    All,
    /// The worker whose adapter has this uid.
    Adapter(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    Publish {
        channel: String,
        payload: Vec<u8>,
    },
    /// An entry on the stream.
    Append(Vec<(&'static str, String)>),
    ToWorkers {
        to: Local,
        message: Message,
    },
}

/// A request of a remote server being answered by this host's workers.
struct Incoming {
    requester: String,
    nsp: String,
    kind: u32,
    expected: usize,
    answered: usize,
    sockets: Vec<Mp>,
    client_count: u64,
    /// Whether this host's one answer went out (after which only
    /// broadcast acks, one per client, still do).
    done: bool,
    deadline: Instant,
}

/// A request of one of this host's workers, out on Redis.
struct Outgoing {
    requester: String,
    expires: Instant,
}

pub struct Bridge {
    /// This host's uid on Redis.
    uid: String,
    names: Names,
    namespaces: BTreeSet<String>,
    /// Bridged namespaces no worker serves, since when.
    unserved_since: HashMap<String, Instant>,
    /// Remote servers by (namespace, uid), when last heard of.
    remotes: HashMap<(String, String), Instant>,
    /// By (requester, request id): a request id is the requester's own, so
    /// another server cannot take over its answer by reusing it.
    incoming: HashMap<(String, String), Incoming>,
    /// How many of `incoming` each requester has.
    incoming_by_requester: HashMap<String, usize>,
    outgoing: HashMap<String, Outgoing>,
    next_probe: Option<Instant>,
    probes: u64,
}

impl Bridge {
    pub fn new(uid: String, names: Names) -> Bridge {
        Bridge {
            uid,
            names,
            namespaces: BTreeSet::new(),
            unserved_since: HashMap::new(),
            remotes: HashMap::new(),
            incoming: HashMap::new(),
            incoming_by_requester: HashMap::new(),
            outgoing: HashMap::new(),
            next_probe: None,
            probes: 0,
        }
    }

    /// Whether a worker's response answers a remote request (then it goes
    /// to the bridge only, not to the other workers).
    pub fn takes_response(&self, requester_uid: &str, request_id: Option<&str>) -> bool {
        request_id.is_some_and(|id| self.incoming.contains_key(&(requester_uid.to_owned(), id.to_owned())))
    }

    /// Forgets a remote request (answered, or out of time).
    fn forget_incoming(&mut self, key: &(String, String)) -> Option<Incoming> {
        let req = self.incoming.remove(key)?;
        if let Some(n) = self.incoming_by_requester.get_mut(&req.requester) {
            *n -= 1;
            if *n == 0 {
                self.incoming_by_requester.remove(&req.requester);
            }
        }
        Some(req)
    }

    /// A namespace this host serves: subscribed and probed at once (up to
    /// [`MAX_NAMESPACES`]; past it a namespace stays this host's own).
    fn serve(&mut self, nsp: &str, now: Instant, out: &mut Vec<Action>) {
        if self.namespaces.contains(nsp) || self.namespaces.len() >= MAX_NAMESPACES {
            return;
        }
        self.namespaces.insert(nsp.to_owned());
        out.push(Action::Subscribe(vec![self.names.public_channel(nsp), self.names.private_channel(nsp, &self.uid)]));
        out.push(self.probe(nsp));
        self.next_probe.get_or_insert(now + PROBE_INTERVAL);
    }

    fn probe(&mut self, nsp: &str) -> Action {
        self.probes += 1;
        let opts = Mp::Map(vec![
            (Mp::from("rooms"), Mp::Array(vec![Mp::from(PROBE_ROOM)])),
            (Mp::from("except"), Mp::Array(vec![])),
            (Mp::from("flags"), Mp::Map(vec![])),
        ]);
        let data = Mp::Map(vec![
            (Mp::from("opts"), opts),
            (Mp::from("requestId"), Mp::from(format!("{PROBE_ID}{}-{}", self.uid, self.probes))),
        ]);
        self.publish(&self.names.public_channel(nsp), FETCH_SOCKETS, nsp, data)
    }

    /// A message of this host (uid rewritten to the host's) on Redis.
    fn publish(&self, channel: &str, kind: u32, nsp: &str, data: Mp) -> Action {
        let m = Message { kind, uid: self.uid.clone(), nsp: nsp.to_owned(), data: Some(data), requester_uid: None };
        Action::Publish { channel: channel.to_owned(), payload: m.to_pubsub() }
    }

    /// A frame from one of this host's workers (already relayed to the
    /// others by the master).
    pub fn from_worker(&mut self, m: Message, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.serve(&m.nsp, now, &mut out);
        match m.kind {
            INITIAL_HEARTBEAT => {
                // A new member: it learns the remote servers at once.
                out.extend(self.heartbeats(&m.nsp, Local::Adapter(m.uid.clone())));
            }
            HEARTBEAT | ADAPTER_CLOSE => {}
            FETCH_SOCKETS_RESPONSE | SERVER_SIDE_EMIT_RESPONSE | BROADCAST_CLIENT_COUNT | BROADCAST_ACK => {
                self.answer(m, &mut out)
            }
            _ => {
                let with_request = m.request_id().map(str::to_owned);
                let ephemeral = matches!(m.kind, FETCH_SOCKETS | SERVER_SIDE_EMIT) || with_request.is_some();
                if let Some(id) = with_request {
                    if self.outgoing.len() < MAX_REQUESTS {
                        self.outgoing.insert(id, Outgoing { requester: m.uid.clone(), expires: now + REQUEST_TTL });
                    }
                }
                let hosted = Message { uid: self.uid.clone(), requester_uid: None, ..m };
                if ephemeral {
                    let channel = self.names.public_channel(&hosted.nsp);
                    out.push(Action::Publish { channel, payload: hosted.to_pubsub() });
                } else {
                    out.push(Action::Append(hosted.to_stream_fields()));
                }
            }
        }
        out
    }

    /// A worker's answer to a remote request: merged into this host's one.
    fn answer(&mut self, m: Message, out: &mut Vec<Action>) {
        let Some(id) = m.request_id().map(str::to_owned) else { return };
        let key = (m.requester_uid.clone().unwrap_or_default(), id.clone());
        let Some(req) = self.incoming.get_mut(&key) else { return };
        let data = m.data.unwrap_or(Mp::Nil);
        req.answered += 1;
        let all_in = req.answered >= req.expected;
        let reply = |kind, data| (kind, data);
        let send = match m.kind {
            FETCH_SOCKETS_RESPONSE => {
                if let Some(Mp::Array(s)) = get(&data, "sockets") {
                    req.sockets.extend(s.iter().cloned());
                }
                all_in.then(|| reply(FETCH_SOCKETS_RESPONSE, sockets_answer(&id, std::mem::take(&mut req.sockets))))
            }
            SERVER_SIDE_EMIT_RESPONSE if !req.done => Some(reply(SERVER_SIDE_EMIT_RESPONSE, data)),
            BROADCAST_CLIENT_COUNT => {
                req.client_count += get(&data, "clientCount").and_then(Mp::as_u64).unwrap_or(0);
                all_in.then(|| reply(BROADCAST_CLIENT_COUNT, count_answer(&id, req.client_count)))
            }
            BROADCAST_ACK => {
                req.answered -= 1; // one per client, not per worker
                Some(reply(BROADCAST_ACK, data))
            }
            _ => None,
        };
        if let Some((kind, data)) = send {
            if kind != BROADCAST_ACK {
                req.done = true;
            }
            let channel = self.names.private_channel(&req.nsp, &req.requester);
            let (nsp, finished) = (req.nsp.clone(), req.done && req.kind != BROADCAST);
            out.push(self.publish(&channel, kind, &nsp, data));
            if finished {
                self.forget_incoming(&key);
            }
        }
    }

    /// A message from Redis (stream or pub/sub). `workers` is how many of
    /// this host's workers run an adapter for its namespace. A message no
    /// worker could take ([`check::from_redis`]), or a request id its
    /// server already has in flight here, is refused: nothing of it goes
    /// anywhere.
    pub fn from_redis(&mut self, m: Message, workers: usize, now: Instant) -> Result<Vec<Action>, Rejection> {
        let mut out = Vec::new();
        if m.uid == self.uid || !self.namespaces.contains(&m.nsp) {
            return Ok(out); // our own echo, or a namespace nobody here serves
        }
        check::from_redis(&m)?;
        let key = (m.nsp.clone(), m.uid.clone());
        if m.kind == ADAPTER_CLOSE {
            self.remotes.remove(&key);
            out.push(Action::ToWorkers { to: Local::All, message: m });
            return Ok(out);
        }
        // A member is kept alive by anything it says, but made one only by
        // its answer to this host's probe, up to the bound (the workers
        // wait for every member's answers to their requests).
        if let Some(seen) = self.remotes.get_mut(&key) {
            *seen = now;
        } else if self.answers_own_probe(&m) && self.remotes.len() < MAX_REMOTES {
            self.remotes.insert(key, now);
            out.push(Action::ToWorkers { to: Local::All, message: heartbeat(&m.uid, &m.nsp) });
        }
        let id = m.request_id().map(str::to_owned);
        match m.kind {
            INITIAL_HEARTBEAT | HEARTBEAT => {}
            FETCH_SOCKETS_RESPONSE | SERVER_SIDE_EMIT_RESPONSE | BROADCAST_CLIENT_COUNT | BROADCAST_ACK => {
                // To the worker that asked (a probe's answer only said the
                // server is there).
                if let Some(req) = id.and_then(|id| self.outgoing.get(&id)) {
                    let to = Local::Adapter(req.requester.clone());
                    let requester_uid = Some(req.requester.clone());
                    out.push(Action::ToWorkers { to, message: Message { requester_uid, ..m } });
                }
            }
            FETCH_SOCKETS if is_probe(&m) => {
                let id = id.unwrap_or_default();
                let channel = self.names.private_channel(&m.nsp, &m.uid);
                out.push(self.publish(&channel, FETCH_SOCKETS_RESPONSE, &m.nsp, sockets_answer(&id, vec![])));
            }
            FETCH_SOCKETS | SERVER_SIDE_EMIT | BROADCAST if id.is_some() => {
                let id = id.expect("matched");
                let key = (m.uid.clone(), id.clone());
                if self.incoming.contains_key(&key) {
                    return Err(Rejection::Duplicate);
                }
                if workers == 0 {
                    if m.kind == FETCH_SOCKETS {
                        let channel = self.names.private_channel(&m.nsp, &m.uid);
                        out.push(self.publish(&channel, FETCH_SOCKETS_RESPONSE, &m.nsp, sockets_answer(&id, vec![])));
                    }
                    return Ok(out);
                }
                let of_requester = self.incoming_by_requester.get(&m.uid).copied().unwrap_or(0);
                if self.incoming.len() < MAX_REQUESTS && of_requester < MAX_REQUESTS_PER_REMOTE {
                    *self.incoming_by_requester.entry(m.uid.clone()).or_default() += 1;
                    let wait = match m.kind {
                        // Acks come as long as the emitter's timeout allows.
                        BROADCAST => m
                            .data
                            .as_ref()
                            .and_then(|d| get(d, "opts"))
                            .and_then(|o| get(o, "flags"))
                            .and_then(|f| get(f, "timeout"))
                            .and_then(Mp::as_u64)
                            .map_or(ANSWER_WITHIN, |ms| Duration::from_millis(ms.min(60_000))),
                        _ => ANSWER_WITHIN,
                    };
                    self.incoming.insert(
                        key,
                        Incoming {
                            requester: m.uid.clone(),
                            nsp: m.nsp.clone(),
                            kind: m.kind,
                            expected: workers,
                            answered: 0,
                            sockets: Vec::new(),
                            client_count: 0,
                            done: false,
                            deadline: now + wait,
                        },
                    );
                }
                out.push(Action::ToWorkers { to: Local::All, message: m });
            }
            _ => out.push(Action::ToWorkers { to: Local::All, message: m }),
        }
        Ok(out)
    }

    /// Whether `m` answers one of this host's probes.
    fn answers_own_probe(&self, m: &Message) -> bool {
        m.kind == FETCH_SOCKETS_RESPONSE
            && m.request_id()
                .and_then(|id| id.strip_prefix(PROBE_ID))
                .is_some_and(|rest| rest.strip_prefix(self.uid.as_str()).is_some_and(|n| n.starts_with('-')))
    }

    /// Heartbeats in the name of every live remote server of `nsp`.
    fn heartbeats(&self, nsp: &str, to: Local) -> Vec<Action> {
        self.remotes
            .keys()
            .filter(|(n, _)| n == nsp)
            .map(|(n, uid)| Action::ToWorkers { to: to.clone(), message: heartbeat(uid, n) })
            .collect()
    }

    /// Probes, heartbeats, late answers and expiries; call about every
    /// second.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.remotes.retain(|_, seen| now.duration_since(*seen) < REMOTE_TIMEOUT);
        self.outgoing.retain(|_, r| now < r.expires);
        // Requests whose workers did not all answer in time: what is there.
        let late: Vec<(String, String)> =
            self.incoming.iter().filter(|(_, r)| now >= r.deadline).map(|(key, _)| key.clone()).collect();
        for key in late {
            let req = self.forget_incoming(&key).expect("listed");
            let id = key.1;
            let channel = self.names.private_channel(&req.nsp, &req.requester);
            match req.kind {
                FETCH_SOCKETS if !req.done => {
                    out.push(self.publish(&channel, FETCH_SOCKETS_RESPONSE, &req.nsp, sockets_answer(&id, req.sockets)))
                }
                BROADCAST if !req.done => out.push(self.publish(
                    &channel,
                    BROADCAST_CLIENT_COUNT,
                    &req.nsp,
                    count_answer(&id, req.client_count),
                )),
                _ => {}
            }
        }
        if self.next_probe.is_some_and(|t| now >= t) {
            self.next_probe = Some(now + PROBE_INTERVAL);
            let namespaces: Vec<String> = self.namespaces.iter().cloned().collect();
            for nsp in namespaces {
                out.push(self.probe(&nsp));
                out.extend(self.heartbeats(&nsp, Local::All));
            }
        }
        out
    }

    /// Stops bridging the namespaces that no worker has served (`served`
    /// says which are) for [`UNSERVED_GRACE`]; call with [`Self::tick`].
    pub fn forget_unserved(&mut self, now: Instant, served: impl Fn(&str) -> bool) -> Vec<Action> {
        let mut out = Vec::new();
        let namespaces: Vec<String> = self.namespaces.iter().cloned().collect();
        for nsp in namespaces {
            if served(&nsp) {
                self.unserved_since.remove(&nsp);
                continue;
            }
            let since = *self.unserved_since.entry(nsp.clone()).or_insert(now);
            if now.duration_since(since) >= UNSERVED_GRACE {
                self.unserved_since.remove(&nsp);
                self.namespaces.remove(&nsp);
                self.remotes.retain(|(n, _), _| *n != nsp);
                out.push(Action::Unsubscribe(vec![
                    self.names.public_channel(&nsp),
                    self.names.private_channel(&nsp, &self.uid),
                ]));
            }
        }
        out
    }

    /// What to say on Redis when this host leaves.
    pub fn closing(&self) -> Vec<Action> {
        let namespaces = self.namespaces.iter();
        namespaces
            .map(|nsp| {
                let m = Message {
                    kind: ADAPTER_CLOSE,
                    uid: self.uid.clone(),
                    nsp: nsp.clone(),
                    data: None,
                    requester_uid: None,
                };
                Action::Publish { channel: self.names.public_channel(nsp), payload: m.to_pubsub() }
            })
            .collect()
    }
}

fn is_probe(m: &Message) -> bool {
    let rooms = m.data.as_ref().and_then(|d| get(d, "opts")).and_then(|o| get(o, "rooms"));
    matches!(rooms, Some(Mp::Array(r)) if r.len() == 1 && r[0].as_str() == Some(PROBE_ROOM))
}

fn heartbeat(uid: &str, nsp: &str) -> Message {
    Message { kind: HEARTBEAT, uid: uid.to_owned(), nsp: nsp.to_owned(), data: None, requester_uid: None }
}

fn sockets_answer(id: &str, sockets: Vec<Mp>) -> Mp {
    Mp::Map(vec![(Mp::from("requestId"), Mp::from(id)), (Mp::from("sockets"), Mp::Array(sockets))])
}

fn count_answer(id: &str, count: u64) -> Mp {
    Mp::Map(vec![(Mp::from("requestId"), Mp::from(id)), (Mp::from("clientCount"), Mp::from(count))])
}

#[cfg(test)]
mod tests;
