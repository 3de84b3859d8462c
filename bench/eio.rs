//! Engine.IO 4 / Socket.IO 5 packets as the load generator speaks them: text
//! packets of the default namespace, pure functions (no I/O), checked against
//! a real socket.io server by `tests/bench_client.rs`, which holds their unit
//! tests too (the benchmark target has no test harness).

use std::fmt;

/// What the server's open packet (`0{...}`) tells a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub sid: String,
    pub upgrades: Vec<String>,
    pub ping_interval_ms: u64,
}

/// An Engine.IO packet (text frames and polling payload items).
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Open(Open),
    Close,
    Ping(&'a str),
    Pong(&'a str),
    /// A message: the Socket.IO packet it carries.
    Message(&'a str),
    Upgrade,
    Noop,
}

/// A Socket.IO packet of the default namespace.
#[derive(Debug, PartialEq, Eq)]
pub enum SioPacket<'a> {
    /// `0{"sid":...}`: the namespace CONNECT answered.
    Connected,
    Disconnect,
    /// `2[...]` or `2ID[...]`: the event's JSON array.
    Event {
        ack_id: Option<u64>,
        args: &'a str,
    },
    /// `3ID[...]`: an acknowledgement's JSON array.
    Ack {
        id: u64,
        args: &'a str,
    },
    ConnectError(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn error(what: &str, text: &str) -> ProtocolError {
    let shown: String = text.chars().take(80).collect();
    ProtocolError(format!("{what}: {shown:?}"))
}

/// The request target of an Engine.IO request.
pub fn path(transport: &str, sid: Option<&str>) -> String {
    match sid {
        Some(sid) => format!("/socket.io/?EIO=4&transport={transport}&sid={sid}"),
        None => format!("/socket.io/?EIO=4&transport={transport}"),
    }
}

/// The namespace CONNECT a client sends first (`40`).
pub const CONNECT: &str = "40";
/// The websocket upgrade probe and its answer, and the upgrade itself.
pub const PROBE: &str = "2probe";
pub const PROBE_ANSWER: &str = "3probe";
pub const UPGRADE: &str = "5";
/// The answer to a server ping.
pub const PONG: &str = "3";

pub fn parse_packet(text: &str) -> Result<Packet<'_>, ProtocolError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or_else(|| error("empty packet", text))?;
    let rest = chars.as_str();
    Ok(match kind {
        '0' => Packet::Open(parse_open(rest)?),
        '1' => Packet::Close,
        '2' => Packet::Ping(rest),
        '3' => Packet::Pong(rest),
        '4' => Packet::Message(rest),
        '5' => Packet::Upgrade,
        '6' => Packet::Noop,
        _ => return Err(error("unknown Engine.IO packet", text)),
    })
}

fn parse_open(json: &str) -> Result<Open, ProtocolError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|_| error("open packet is not JSON", json))?;
    let sid = value["sid"].as_str().ok_or_else(|| error("open packet without sid", json))?;
    let upgrades = value["upgrades"]
        .as_array()
        .map(|list| list.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    Ok(Open { sid: sid.to_owned(), upgrades, ping_interval_ms: value["pingInterval"].as_u64().unwrap_or(25_000) })
}

/// The packets of a polling response body (separated by `\x1e`).
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split('\x1e').filter(|p| !p.is_empty())
}

pub fn parse_sio(message: &str) -> Result<SioPacket<'_>, ProtocolError> {
    let mut chars = message.chars();
    let kind = chars.next().ok_or_else(|| error("empty Socket.IO packet", message))?;
    let rest = chars.as_str();
    if rest.starts_with('/') {
        return Err(error("packet of another namespace", message));
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (id, json) = rest.split_at(digits);
    let id = if digits == 0 { None } else { Some(id.parse().map_err(|_| error("ack id overflows", message))?) };
    Ok(match kind {
        '0' => SioPacket::Connected,
        '1' => SioPacket::Disconnect,
        '2' => SioPacket::Event { ack_id: id, args: json },
        '3' => SioPacket::Ack { id: id.ok_or_else(|| error("ack without id", message))?, args: json },
        '4' => SioPacket::ConnectError(json),
        _ => return Err(error("unknown Socket.IO packet", message)),
    })
}

/// An event message (`42["name",...args]`, `42ID[...]` when an ack is asked).
pub fn event(name: &str, args: &[serde_json::Value], ack_id: Option<u64>) -> String {
    let mut array = vec![serde_json::Value::from(name)];
    array.extend_from_slice(args);
    let id = ack_id.map(|id| id.to_string()).unwrap_or_default();
    format!("42{id}{}", serde_json::Value::Array(array))
}

/// The name of an event (the first item of its array), without parsing the
/// rest: resident clients count broadcasts by name.
pub fn event_name(args: &str) -> Option<&str> {
    let rest = args.strip_prefix("[\"")?;
    Some(&rest[..rest.find('"')?])
}
