//! Node's child_process IPC protocol, spoken as the parent of an unmodified
//! Socket.IO worker (`setupWorker(io)` + `io.adapter(createAdapter())`).
//!
//! * [`v8`]: the `advanced` serialization codec (pure).
//! * this module: what a frame from the child means ([`classify`]) and the
//!   frames the parent writes (pure).
//! * [`channel`]: the socketpair, framing and the discipline that keeps
//!   each `NODE_HANDLE` with its own fd (I/O).
//!
//! Framing in `advanced` mode: a 4-byte big-endian payload length, then a V8
//! payload. A frame is *internal* when it is an object whose `cmd` is a
//! string longer than 5 characters starting with `NODE_`.

pub mod channel;
pub mod v8;

use std::collections::{BTreeMap, BTreeSet};
use v8::Value;

/// `source` of every cluster-adapter message.
pub const ADAPTER_SOURCE: &str = "_sio_adapter";
/// Cluster-adapter message type of `ADAPTER_CLOSE`.
pub const ADAPTER_CLOSE: u32 = 13;
/// The message type the preload script sends once the app has attached
/// its message listeners (see `src/agent/preload.js`).
pub const READY_TYPE: &str = "sio:ready";
/// The message type in which the preload batches this worker's own
/// sessions, opened and closed (sids separated by spaces; see `preload.js`).
pub const SESSIONS_TYPE: &str = "sio:sessions";
/// The preload's heartbeat, from a worker that accepts connections itself
/// (nothing else would show that its event loop runs).
pub const ALIVE_TYPE: &str = "sio:alive";
/// What the parent tells a worker that accepts itself when it is retired:
/// close the listening sockets, keep the sessions (see `preload.js`).
pub const STOP_ACCEPTING_TYPE: &str = "sio:stop-accepting";

/// Routing header of a cluster-adapter frame; the frame itself is relayed
/// byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterHeader {
    pub kind: u32,
    pub uid: String,
    pub nsp: String,
    pub requester_uid: Option<String>,
}

impl AdapterHeader {
    /// Responses that `setupPrimary` (types 8 and 10), and we also for
    /// client counts and acks (11 and 12), send only to the requester.
    pub fn is_response(&self) -> bool {
        matches!(self.kind, 8 | 10 | 11 | 12) && self.requester_uid.is_some()
    }
}

/// The cluster-adapter instances seen from a worker, by `uid` then `nsp`.
/// Every broadcast names its adapter: looking it up borrows the header's
/// strings, and only an adapter seen for the first time is copied.
#[derive(Debug, Default)]
pub struct Adapters(BTreeMap<String, BTreeSet<String>>);

/// Adapters one worker may have open at once (a namespace each, dynamic
/// namespaces included): the master keeps a record of each.
pub const MAX_ADAPTERS: usize = 4096;
/// Longest adapter uid kept (the adapter makes 16 hex digits).
pub const MAX_UID_LEN: usize = 128;
/// Longest namespace name kept.
pub const MAX_NSP_LEN: usize = 1024;

impl Adapters {
    /// Records an adapter (no-op if known). Returns false, recording
    /// nothing, past the bounds ([`MAX_ADAPTERS`], [`MAX_UID_LEN`],
    /// [`MAX_NSP_LEN`]): strings a worker chooses never grow the master
    /// without bound.
    pub fn seen(&mut self, uid: &str, nsp: &str) -> bool {
        if self.0.get(uid).is_some_and(|nsps| nsps.contains(nsp)) {
            return true;
        }
        if uid.len() > MAX_UID_LEN || nsp.len() > MAX_NSP_LEN || self.len() >= MAX_ADAPTERS {
            return false;
        }
        self.0.entry(uid.to_owned()).or_default().insert(nsp.to_owned());
        true
    }

    /// How many adapters are open.
    fn len(&self) -> usize {
        self.0.values().map(BTreeSet::len).sum()
    }

    /// Forgets an adapter (`ADAPTER_CLOSE`).
    pub fn closed(&mut self, uid: &str, nsp: &str) {
        if let Some(nsps) = self.0.get_mut(uid) {
            nsps.remove(nsp);
            if nsps.is_empty() {
                self.0.remove(uid);
            }
        }
    }

    /// Whether an adapter of this `uid` is open (on any namespace).
    pub fn has_uid(&self, uid: &str) -> bool {
        self.0.contains_key(uid)
    }

    /// Whether an adapter serves `nsp`.
    pub fn serves(&self, nsp: &str) -> bool {
        self.0.values().any(|nsps| nsps.contains(nsp))
    }

    /// `(uid, nsp)` of each adapter, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().flat_map(|(uid, nsps)| nsps.iter().map(move |nsp| (uid.as_str(), nsp.as_str())))
    }
}

/// What one frame from the Node child means to its parent.
#[derive(Debug, Clone, PartialEq)]
pub enum FromChild {
    HandleAck,
    HandleNack,
    /// The child passed a handle to its parent (`process.send(msg, handle)`).
    /// Its sender queues every later message until it gets an ACK.
    Handle,
    /// `NODE_CLUSTER` `online`, `listening`, `close`: no answer expected.
    ClusterNotice,
    /// The worker called `server.listen()` and waits for this answer.
    QueryServer {
        seq: Value,
        address: Option<String>,
        port: Option<f64>,
        address_type: Option<f64>,
    },
    /// `cluster.worker.disconnect()`: the worker waits for an ack.
    ExitedAfterDisconnect {
        seq: Value,
    },
    /// Another internal message (`NODE_*`) we have no business with.
    OtherInternal(String),
    /// sticky's `{type:"sticky:connection", data:sid}`.
    SessionOpened(String),
    /// sticky's `{type:"sticky:disconnection", data:sid}`.
    SessionClosed(String),
    /// The preload's batch of this worker's own sessions, in the order
    /// to apply them: every opened one, then every closed one.
    Sessions {
        opened: Vec<String>,
        closed: Vec<String>,
    },
    /// The preload's readiness signal.
    Ready,
    /// The preload's heartbeat.
    Alive,
    Adapter(AdapterHeader),
    /// The app's own `process.send()`: never relayed to other workers.
    App,
}

fn string_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_js_str).map(|s| s.to_string_lossy())
}

/// Classifies one payload (a frame without its length prefix).
///
/// Everything but Node's internal messages is classified by its top-level
/// strings and numbers alone, so it is decoded as an outline
/// ([`v8::decode_outline`]): a broadcast's packet is checked, not built.
pub fn classify(payload: &[u8]) -> Result<FromChild, v8::DecodeError> {
    classify_message(&v8::decode_outline(payload)?, || v8::decode(payload))
}

/// Classifies a message from its outline; `whole` decodes all of it, for
/// `NODE_CLUSTER`, whose `seq` goes back to Node as it came.
fn classify_message(
    msg: &Value,
    whole: impl FnOnce() -> Result<Value, v8::DecodeError>,
) -> Result<FromChild, v8::DecodeError> {
    if let Some(cmd) = msg.get("cmd").and_then(Value::as_js_str) {
        let cmd = cmd.to_string_lossy();
        if cmd.len() > 5 && cmd.starts_with("NODE_") {
            return classify_internal(&cmd, whole);
        }
    }
    let is_type = |t: &str| msg.get("type").and_then(Value::as_js_str).is_some_and(|s| s.eq_str(t));
    if string_field(msg, "source").as_deref() == Some(ADAPTER_SOURCE) {
        let kind = msg.get("type").and_then(Value::as_f64);
        let uid = string_field(msg, "uid");
        if let (Some(kind), Some(uid)) = (kind, uid) {
            return Ok(FromChild::Adapter(AdapterHeader {
                kind: kind as u32,
                uid,
                nsp: string_field(msg, "nsp").unwrap_or_else(|| "/".into()),
                requester_uid: string_field(msg, "requesterUid"),
            }));
        }
    }
    let sid = string_field(msg, "data");
    Ok(match sid {
        Some(sid) if is_type("sticky:connection") => FromChild::SessionOpened(sid),
        Some(sid) if is_type("sticky:disconnection") => FromChild::SessionClosed(sid),
        _ if is_type(READY_TYPE) => FromChild::Ready,
        _ if is_type(ALIVE_TYPE) => FromChild::Alive,
        _ if is_type(SESSIONS_TYPE) => {
            let sids = |key| {
                string_field(msg, key)
                    .map_or_else(Vec::new, |s| s.split_ascii_whitespace().map(str::to_owned).collect())
            };
            FromChild::Sessions { opened: sids("opened"), closed: sids("closed") }
        }
        _ => FromChild::App,
    })
}

fn classify_internal(
    cmd: &str,
    whole: impl FnOnce() -> Result<Value, v8::DecodeError>,
) -> Result<FromChild, v8::DecodeError> {
    Ok(match cmd {
        "NODE_HANDLE_ACK" => FromChild::HandleAck,
        "NODE_HANDLE_NACK" => FromChild::HandleNack,
        "NODE_HANDLE" => FromChild::Handle,
        "NODE_CLUSTER" => {
            let msg = &whole()?;
            let seq = msg.get("seq").cloned().unwrap_or(Value::Undefined);
            match string_field(msg, "act").as_deref() {
                Some("queryServer") => FromChild::QueryServer {
                    seq,
                    address: string_field(msg, "address"),
                    port: msg.get("port").and_then(Value::as_f64),
                    address_type: msg.get("addressType").and_then(Value::as_f64),
                },
                Some("exitedAfterDisconnect") => FromChild::ExitedAfterDisconnect { seq },
                _ => FromChild::ClusterNotice,
            }
        }
        other => FromChild::OtherInternal(other.to_owned()),
    })
}

/// The envelope that hands a connection to sticky's `setupWorker`:
/// `{cmd:"NODE_HANDLE", type:"net.Socket", msg:{type:"sticky:connection", data:<empty Buffer>}}`.
/// `data` is empty because the master only peeked: the worker's HTTP parser
/// reads the original request bytes itself.
pub fn sticky_handoff_frame() -> Vec<u8> {
    v8::encode_frame(&Value::object([
        ("cmd", Value::str("NODE_HANDLE")),
        ("type", Value::str("net.Socket")),
        ("msg", Value::object([("type", Value::str("sticky:connection")), ("data", Value::buffer(Vec::new()))])),
    ]))
}

/// `{type:"sio:stop-accepting"}`, for the preload of a retired worker.
pub fn stop_accepting_frame() -> Vec<u8> {
    v8::encode_frame(&Value::object([("type", Value::str(STOP_ACCEPTING_TYPE))]))
}

/// `{cmd:"NODE_HANDLE_ACK"}`: what a receiver of a handle answers.
pub fn handle_ack_frame() -> Vec<u8> {
    v8::encode_frame(&Value::object([("cmd", Value::str("NODE_HANDLE_ACK"))]))
}

/// `{cmd:"NODE_CLUSTER", ack:seq}`: the answer to `exitedAfterDisconnect`.
pub fn cluster_ack_frame(seq: &Value) -> Vec<u8> {
    v8::encode_frame(&Value::object([("cmd", Value::str("NODE_CLUSTER")), ("ack", seq.clone())]))
}

/// A round-robin style answer to `queryServer` with no handle: `listen()`
/// succeeds in the worker, and no connection ever arrives through it (all
/// of them come from the master). Refusing would crash apps that call
/// `listen()` out of habit.
pub fn query_server_reply_frame(
    seq: &Value,
    address: Option<&str>,
    port: Option<f64>,
    address_type: Option<f64>,
) -> Vec<u8> {
    let ipv6 = address_type == Some(6.0);
    let address = address.unwrap_or(if ipv6 { "::" } else { "0.0.0.0" });
    v8::encode_frame(&Value::object([
        ("cmd", Value::str("NODE_CLUSTER")),
        ("ack", seq.clone()),
        ("errno", Value::Null),
        ("key", Value::str("sio:no-listen")),
        ("data", Value::Null),
        (
            "sockname",
            Value::object([
                ("address", Value::str(address)),
                ("family", Value::str(if ipv6 { "IPv6" } else { "IPv4" })),
                ("port", Value::Double(port.unwrap_or(0.0))),
            ]),
        ),
    ]))
}

/// `ADAPTER_CLOSE` on behalf of a dead worker's adapter, so that survivors
/// drop it at once instead of waiting out their heartbeat timeout (and
/// failing `fetchSockets()` after 5 s meanwhile).
pub fn adapter_close_frame(uid: &str, nsp: &str) -> Vec<u8> {
    v8::encode_frame(&Value::object([
        ("type", Value::Int32(ADAPTER_CLOSE as i32)),
        ("uid", Value::str(uid)),
        ("nsp", Value::str(nsp)),
        ("source", Value::str(ADAPTER_SOURCE)),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payload(v: Value) -> Vec<u8> {
        v8::encode_frame(&v)[4..].to_vec()
    }

    #[test]
    fn adapter_response_keeps_requester() {
        let p = payload(Value::object([
            ("type", Value::Int32(8)),
            (
                "data",
                Value::object([
                    ("requestId", Value::str("abc")),
                    ("sockets", Value::Array { elements: vec![], properties: vec![] }),
                ]),
            ),
            ("uid", Value::str("u1")),
            ("nsp", Value::str("/")),
            ("source", Value::str(ADAPTER_SOURCE)),
            ("requesterUid", Value::str("u2")),
        ]));
        let FromChild::Adapter(h) = classify(&p).unwrap() else { panic!() };
        assert_eq!(h, AdapterHeader { kind: 8, uid: "u1".into(), nsp: "/".into(), requester_uid: Some("u2".into()) });
        assert!(h.is_response());
    }

    #[test]
    fn sticky_messages_and_internal_ones() {
        let p = payload(Value::object([("type", Value::str("sticky:connection")), ("data", Value::str("SID"))]));
        assert_eq!(classify(&p).unwrap(), FromChild::SessionOpened("SID".into()));
        let p = payload(Value::object([
            ("type", Value::str(SESSIONS_TYPE)),
            ("opened", Value::str("a1 b2")),
            ("closed", Value::str("")),
        ]));
        let sids = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(classify(&p).unwrap(), FromChild::Sessions { opened: sids(&["a1", "b2"]), closed: vec![] });
        let p = payload(Value::object([("type", Value::str(SESSIONS_TYPE)), ("closed", Value::str("c3"))]));
        assert_eq!(classify(&p).unwrap(), FromChild::Sessions { opened: vec![], closed: sids(&["c3"]) });
        assert_eq!(classify(&handle_ack_frame()[4..]).unwrap(), FromChild::HandleAck);
        let p = payload(Value::object([("cmd", Value::str("NODE_HANDLE")), ("type", Value::str("net.Socket"))]));
        assert_eq!(classify(&p).unwrap(), FromChild::Handle);
        let p = payload(Value::object([
            ("cmd", Value::str("NODE_CLUSTER")),
            ("act", Value::str("online")),
            ("seq", Value::Int32(0)),
        ]));
        assert_eq!(classify(&p).unwrap(), FromChild::ClusterNotice);
        // `cmd` of 5 characters or less is a user message in Node's rules.
        let p = payload(Value::object([("cmd", Value::str("NODE_"))]));
        assert_eq!(classify(&p).unwrap(), FromChild::App);
        let p = payload(Value::str("ready"));
        assert_eq!(classify(&p).unwrap(), FromChild::App);
    }

    fn arb_field() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            Just("NODE_CLUSTER"),
            Just("NODE_HANDLE_ACK"),
            Just("queryServer"),
            Just(ADAPTER_SOURCE),
            Just("sticky:connection"),
            Just(SESSIONS_TYPE),
            Just(READY_TYPE),
            Just("/chat"),
            Just("a1 b2"),
        ];
        let leaf = prop_oneof![
            6 => text.prop_map(Value::str),
            2 => any::<i32>().prop_map(Value::Int32),
            1 => Just(Value::Null),
            1 => proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::buffer),
        ];
        // Mostly what classify looks for; sometimes a nested object.
        let nested = proptest::collection::vec(("[a-z]{1,3}", leaf.clone()), 0..3)
            .prop_map(|props| Value::Object(props.into_iter().map(|(k, v)| (Value::str(&k), v)).collect()));
        prop_oneof![4 => leaf, 1 => nested]
    }

    proptest! {
        /// The outline classifies every message as the whole of it does.
        #[test]
        fn classifying_the_outline_is_classifying_the_message(
            fields in proptest::collection::vec((
                prop_oneof![
                    Just("cmd"), Just("type"), Just("source"), Just("uid"), Just("nsp"), Just("requesterUid"),
                    Just("data"), Just("opened"), Just("closed"), Just("act"), Just("seq"), Just("port"),
                ],
                arb_field(),
            ), 0..8),
        ) {
            let p = payload(Value::object(fields.iter().map(|(k, v)| (*k, v.clone()))));
            let whole = v8::decode(&p).unwrap();
            prop_assert_eq!(classify(&p).unwrap(), classify_message(&whole, || v8::decode(&p)).unwrap());
        }
    }

    #[test]
    fn adapters_are_kept_by_uid_and_namespace() {
        let mut a = Adapters::default();
        a.seen("u2", "/");
        a.seen("u1", "/chat");
        a.seen("u1", "/");
        a.seen("u1", "/chat");
        assert_eq!(a.iter().collect::<Vec<_>>(), [("u1", "/"), ("u1", "/chat"), ("u2", "/")]);
        assert!(a.serves("/chat") && !a.serves("/admin"));
        a.closed("u1", "/chat");
        assert!(!a.serves("/chat"));
        assert!(a.has_uid("u1"), "u1 still serves /");
        a.closed("u1", "/");
        a.closed("u9", "/");
        assert!(!a.has_uid("u1"));
        assert_eq!(a.iter().collect::<Vec<_>>(), [("u2", "/")]);
    }

    #[test]
    fn adapter_close_is_an_adapter_frame() {
        let f = adapter_close_frame("u9", "/chat");
        let FromChild::Adapter(h) = classify(&f[4..]).unwrap() else { panic!() };
        assert_eq!((h.kind, h.uid.as_str(), h.nsp.as_str()), (13, "u9", "/chat"));
        assert!(!h.is_response());
    }
}
