//! What the bridge lets through from Redis to its workers (pure).
//!
//! Every other host on the Redis server, and whoever else reaches it, can
//! put messages there; a worker's `NodeClusterAdapter` trusts what it
//! reads, and one malformed message kills it: a request without `data`
//! throws in the adapter's `message` listener, and a map key that is not
//! a string is a V8 object key Node's IPC deserializer rejects before any
//! app code runs. `@socket.io/redis-streams-adapter` catches both and
//! ignores the message; the bridge refuses such a message before it is
//! turned into a frame, so that no worker ever sees it.
//!
//! The fields required are those `ClusterAdapter.onMessage` and
//! `onResponse` (socket.io-adapter 2.5) read for each type.

use super::message::{get, Message};
use super::*;
use rmpv::Value as Mp;

/// Longest server uid accepted (the adapters make 16 hex digits).
pub const MAX_UID_LEN: usize = crate::nodeipc::MAX_UID_LEN;
/// Longest namespace name accepted.
pub const MAX_NSP_LEN: usize = crate::nodeipc::MAX_NSP_LEN;
/// Longest request id accepted (the adapters make 16 hex digits; the
/// bridge's probes a few more).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Why a message from Redis was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not one of socket.io-adapter's message types (1 to 13).
    UnknownType(u32),
    /// A field its type reads is missing or of the wrong kind.
    Field(&'static str),
    /// A map key that is not a string (no JavaScript object has one).
    NonStringKey,
    /// A string past its bound.
    TooLong(&'static str),
    /// The whole message past `limits.bus_queue_bytes / 4`.
    TooLarge(usize),
    /// Unreadable (bad msgpack, JSON, base64, or a missing `type`).
    Unreadable(String),
    /// A request whose id its server already has in flight here.
    Duplicate,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::UnknownType(t) => write!(f, "unknown message type {t}"),
            Rejection::Field(name) => write!(f, "field {name:?} missing or of the wrong type"),
            Rejection::NonStringKey => write!(f, "a map key that is not a string"),
            Rejection::TooLong(what) => write!(f, "{what} too long"),
            Rejection::TooLarge(n) => write!(f, "{n} bytes, over the bound"),
            Rejection::Unreadable(e) => write!(f, "unreadable: {e}"),
            Rejection::Duplicate => write!(f, "a request id already in flight"),
        }
    }
}

/// Checks a message from Redis before anything of it reaches a worker.
pub fn from_redis(m: &Message) -> Result<(), Rejection> {
    if m.uid.is_empty() || m.uid.len() > MAX_UID_LEN {
        return Err(Rejection::TooLong("uid"));
    }
    if !m.nsp.starts_with('/') {
        return Err(Rejection::Field("nsp"));
    }
    if m.nsp.len() > MAX_NSP_LEN {
        return Err(Rejection::TooLong("nsp"));
    }
    if let Some(data) = &m.data {
        if !string_keys(data) {
            return Err(Rejection::NonStringKey);
        }
    }
    let data = || m.data.as_ref().filter(|d| d.is_map()).ok_or(Rejection::Field("data"));
    let field = |name: &'static str| data().and_then(|d| get(d, name).ok_or(Rejection::Field(name)));
    match m.kind {
        INITIAL_HEARTBEAT | HEARTBEAT | ADAPTER_CLOSE => Ok(()),
        BROADCAST => {
            packet(field("packet")?)?;
            options(field("opts")?)?;
            optional_request_id(data()?)
        }
        SOCKETS_JOIN | SOCKETS_LEAVE => {
            options(field("opts")?)?;
            rooms(field("rooms")?, "rooms")
        }
        DISCONNECT_SOCKETS => {
            options(field("opts")?)?;
            match get(data()?, "close") {
                None | Some(Mp::Boolean(_)) | Some(Mp::Nil) => Ok(()),
                Some(_) => Err(Rejection::Field("close")),
            }
        }
        FETCH_SOCKETS => {
            options(field("opts")?)?;
            request_id(field("requestId")?)
        }
        FETCH_SOCKETS_RESPONSE => {
            request_id(field("requestId")?)?;
            field("sockets")?.as_array().map(|_| ()).ok_or(Rejection::Field("sockets"))
        }
        SERVER_SIDE_EMIT => {
            field("packet")?.as_array().ok_or(Rejection::Field("packet"))?;
            optional_request_id(data()?)
        }
        SERVER_SIDE_EMIT_RESPONSE | BROADCAST_ACK => {
            request_id(field("requestId")?)?;
            field("packet").map(|_| ())
        }
        BROADCAST_CLIENT_COUNT => {
            request_id(field("requestId")?)?;
            field("clientCount")?.as_u64().map(|_| ()).ok_or(Rejection::Field("clientCount"))
        }
        other => Err(Rejection::UnknownType(other)),
    }
}

/// Whether every map key, however deep, is a string.
pub fn string_keys(v: &Mp) -> bool {
    match v {
        Mp::Map(entries) => entries.iter().all(|(k, v)| k.is_str() && string_keys(v)),
        Mp::Array(items) => items.iter().all(string_keys),
        _ => true,
    }
}

/// A Socket.IO packet: a numeric `type`, and for an event its arguments.
fn packet(p: &Mp) -> Result<(), Rejection> {
    let kind = get(p, "type").and_then(Mp::as_u64).ok_or(Rejection::Field("packet.type"))?;
    // EVENT and BINARY_EVENT: the adapter may append an offset to `data`.
    if matches!(kind, 2 | 5) && !get(p, "data").is_some_and(Mp::is_array) {
        return Err(Rejection::Field("packet.data"));
    }
    Ok(())
}

/// The adapter's encoded options: `rooms` and `except` are lists of rooms
/// (made into `Set`s), `flags` a map.
fn options(o: &Mp) -> Result<(), Rejection> {
    if !o.is_map() {
        return Err(Rejection::Field("opts"));
    }
    for (name, what) in [("rooms", "opts.rooms"), ("except", "opts.except")] {
        if let Some(r) = get(o, name) {
            rooms(r, what)?;
        }
    }
    match get(o, "flags") {
        None | Some(Mp::Nil) | Some(Mp::Map(_)) => Ok(()),
        Some(_) => Err(Rejection::Field("opts.flags")),
    }
}

fn rooms(r: &Mp, what: &'static str) -> Result<(), Rejection> {
    let list = r.as_array().ok_or(Rejection::Field(what))?;
    if list.iter().all(|room| room.is_str() || room.is_number()) {
        Ok(())
    } else {
        Err(Rejection::Field(what))
    }
}

fn request_id(id: &Mp) -> Result<(), Rejection> {
    match id {
        Mp::String(s) if s.as_bytes().len() > MAX_REQUEST_ID_LEN => Err(Rejection::TooLong("requestId")),
        Mp::String(s) if s.as_str().is_some() => Ok(()),
        Mp::Integer(_) => Ok(()),
        _ => Err(Rejection::Field("requestId")),
    }
}

fn optional_request_id(data: &Mp) -> Result<(), Rejection> {
    match get(data, "requestId") {
        None | Some(Mp::Nil) => Ok(()),
        Some(id) => request_id(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u32, data: Option<Mp>) -> Message {
        Message { kind, uid: "0123456789abcdef".into(), nsp: "/".into(), data, requester_uid: None }
    }

    fn map(entries: Vec<(&str, Mp)>) -> Mp {
        Mp::Map(entries.into_iter().map(|(k, v)| (Mp::from(k), v)).collect())
    }

    fn opts() -> Mp {
        map(vec![("rooms", Mp::Array(vec![])), ("except", Mp::Array(vec![])), ("flags", map(vec![]))])
    }

    fn event() -> Mp {
        map(vec![
            ("type", Mp::from(2)),
            ("data", Mp::Array(vec![Mp::from("chat"), Mp::from("hi")])),
            ("nsp", Mp::from("/")),
        ])
    }

    #[test]
    fn what_the_adapters_send_passes() {
        let ok = [
            msg(HEARTBEAT, None),
            msg(ADAPTER_CLOSE, None),
            msg(BROADCAST, Some(map(vec![("packet", event()), ("opts", opts())]))),
            msg(BROADCAST, Some(map(vec![("packet", event()), ("opts", opts()), ("requestId", Mp::from("ab12"))]))),
            msg(SOCKETS_JOIN, Some(map(vec![("opts", opts()), ("rooms", Mp::Array(vec![Mp::from("r")]))]))),
            msg(DISCONNECT_SOCKETS, Some(map(vec![("opts", opts()), ("close", Mp::Boolean(true))]))),
            msg(FETCH_SOCKETS, Some(map(vec![("opts", opts()), ("requestId", Mp::from("x"))]))),
            msg(FETCH_SOCKETS_RESPONSE, Some(map(vec![("requestId", Mp::from("x")), ("sockets", Mp::Array(vec![]))]))),
            msg(SERVER_SIDE_EMIT, Some(map(vec![("packet", Mp::Array(vec![Mp::from("ping")]))]))),
            msg(SERVER_SIDE_EMIT_RESPONSE, Some(map(vec![("requestId", Mp::from("x")), ("packet", Mp::Nil)]))),
            msg(BROADCAST_CLIENT_COUNT, Some(map(vec![("requestId", Mp::from("x")), ("clientCount", Mp::from(3))]))),
            msg(BROADCAST_ACK, Some(map(vec![("requestId", Mp::from("x")), ("packet", Mp::Array(vec![]))]))),
        ];
        for m in ok {
            assert_eq!(from_redis(&m), Ok(()), "{m:?}");
        }
    }

    #[test]
    fn what_kills_a_worker_is_refused() {
        // socket.io-adapter reads `message.data.requestId` first: no data, no worker.
        assert_eq!(from_redis(&msg(BROADCAST, None)), Err(Rejection::Field("data")));
        assert_eq!(from_redis(&msg(FETCH_SOCKETS, Some(Mp::from("x")))), Err(Rejection::Field("data")));
        assert_eq!(
            from_redis(&msg(SOCKETS_JOIN, Some(map(vec![("rooms", Mp::Array(vec![]))])))),
            Err(Rejection::Field("opts"))
        );
        // `new Set(5)` throws.
        let bad_rooms = map(vec![("rooms", Mp::from(5))]);
        let m = msg(FETCH_SOCKETS, Some(map(vec![("opts", bad_rooms), ("requestId", Mp::from("x"))])));
        assert_eq!(from_redis(&m), Err(Rejection::Field("opts.rooms")));
        // A nil key, however deep.
        let nil_key = Mp::Map(vec![(Mp::Nil, Mp::from(1))]);
        assert_eq!(from_redis(&msg(BROADCAST, Some(nil_key.clone()))), Err(Rejection::NonStringKey));
        let deep = map(vec![
            ("packet", map(vec![("type", Mp::from(2)), ("data", Mp::Array(vec![nil_key]))])),
            ("opts", opts()),
        ]);
        assert_eq!(from_redis(&msg(BROADCAST, Some(deep))), Err(Rejection::NonStringKey));
        // An event whose arguments are not a list.
        let flat = map(vec![("packet", map(vec![("type", Mp::from(2)), ("data", Mp::from("x"))])), ("opts", opts())]);
        assert_eq!(from_redis(&msg(BROADCAST, Some(flat))), Err(Rejection::Field("packet.data")));
        assert_eq!(from_redis(&msg(14, None)), Err(Rejection::UnknownType(14)));
        assert_eq!(from_redis(&msg(0, None)), Err(Rejection::UnknownType(0)));
    }

    #[test]
    fn strings_past_their_bounds_are_refused() {
        let mut m = msg(HEARTBEAT, None);
        m.uid = "u".repeat(MAX_UID_LEN + 1);
        assert_eq!(from_redis(&m), Err(Rejection::TooLong("uid")));
        m.uid = String::new();
        assert_eq!(from_redis(&m), Err(Rejection::TooLong("uid")));
        let mut m = msg(HEARTBEAT, None);
        m.nsp = format!("/{}", "n".repeat(MAX_NSP_LEN));
        assert_eq!(from_redis(&m), Err(Rejection::TooLong("nsp")));
        m.nsp = "chat".into();
        assert_eq!(from_redis(&m), Err(Rejection::Field("nsp")));
        let id = Mp::from("i".repeat(MAX_REQUEST_ID_LEN + 1));
        let m = msg(FETCH_SOCKETS, Some(map(vec![("opts", opts()), ("requestId", id)])));
        assert_eq!(from_redis(&m), Err(Rejection::TooLong("requestId")));
    }
}
