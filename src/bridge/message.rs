//! Cluster-adapter messages in the three forms the bridge meets (pure):
//! Node's V8 frames on the bus, and `@socket.io/redis-streams-adapter`
//! 0.3's two Redis forms: a stream entry (fields `uid`, `nsp`, `type` as
//! a decimal string, `data` as JSON, or as base64 msgpack when it holds
//! binary) and a pub/sub payload (the whole message, msgpack).
//!
//! msgpack values ([`rmpv::Value`]) are the bridge's common form: they hold
//! everything a Socket.IO packet can (binary included), and are what the
//! adapter itself puts on Redis.

use crate::nodeipc::v8::{self, JsString, Value as V8};
use crate::nodeipc::ADAPTER_SOURCE;
use base64::Engine as _;
use rmpv::Value as Mp;

/// A cluster-adapter message, whoever sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `MessageType` of socket.io-adapter (1 to 13).
    pub kind: u32,
    /// The sending adapter (on Redis, a whole server).
    pub uid: String,
    pub nsp: String,
    pub data: Option<Mp>,
    /// Set on responses between workers (`NodeClusterAdapter`'s field);
    /// on Redis the response channel says it instead.
    pub requester_uid: Option<String>,
}

/// Why a message from Redis or a worker could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    V8(v8::DecodeError),
    Msgpack(String),
    Json(String),
    Base64,
    /// A field the adapter always sets is missing or of the wrong type.
    Field(&'static str),
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::V8(e) => write!(f, "bad V8 frame: {e}"),
            MessageError::Msgpack(e) => write!(f, "bad msgpack: {e}"),
            MessageError::Json(e) => write!(f, "bad JSON: {e}"),
            MessageError::Base64 => write!(f, "bad base64"),
            MessageError::Field(name) => write!(f, "field {name:?} missing or of the wrong type"),
        }
    }
}

impl std::error::Error for MessageError {}

impl Message {
    /// Reads a worker's frame (Node's 4-byte length prefix included).
    pub fn from_frame(frame: &[u8]) -> Result<Message, MessageError> {
        let value = v8::decode(frame.get(4..).unwrap_or_default()).map_err(MessageError::V8)?;
        let text = |key| value.get(key).and_then(V8::as_js_str).map(JsString::to_string_lossy);
        Ok(Message {
            kind: value.get("type").and_then(V8::as_f64).ok_or(MessageError::Field("type"))? as u32,
            uid: text("uid").ok_or(MessageError::Field("uid"))?,
            nsp: text("nsp").unwrap_or_else(|| "/".into()),
            data: value.get("data").map(v8_to_msgpack),
            requester_uid: text("requesterUid"),
        })
    }

    /// The frame a worker's `NodeClusterAdapter` reads.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut props = vec![
            ("source", V8::str(ADAPTER_SOURCE)),
            ("type", V8::Int32(self.kind as i32)),
            ("uid", V8::str(&self.uid)),
            ("nsp", V8::str(&self.nsp)),
        ];
        if let Some(data) = &self.data {
            props.push(("data", msgpack_to_v8(data)));
        }
        if let Some(r) = &self.requester_uid {
            props.push(("requesterUid", V8::str(r)));
        }
        v8::encode_frame(&V8::object(props))
    }

    /// The pub/sub payload (`encode(message)` in the adapter).
    pub fn to_pubsub(&self) -> Vec<u8> {
        let mut map = vec![
            (Mp::from("uid"), Mp::from(self.uid.as_str())),
            (Mp::from("nsp"), Mp::from(self.nsp.as_str())),
            (Mp::from("type"), Mp::from(self.kind)),
        ];
        if let Some(data) = &self.data {
            map.push((Mp::from("data"), data.clone()));
        }
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &Mp::Map(map)).expect("writing to a Vec cannot fail");
        out
    }

    pub fn from_pubsub(payload: &[u8]) -> Result<Message, MessageError> {
        let value = rmpv::decode::read_value_ref(&mut &payload[..])
            .map_err(|e| MessageError::Msgpack(e.to_string()))?
            .to_owned();
        let field = |key: &str| value.as_map().and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(key)));
        let text = |key: &'static str| field(key).and_then(|(_, v)| v.as_str()).map(str::to_owned);
        Ok(Message {
            kind: field("type").and_then(|(_, v)| v.as_u64()).ok_or(MessageError::Field("type"))? as u32,
            uid: text("uid").ok_or(MessageError::Field("uid"))?,
            nsp: text("nsp").ok_or(MessageError::Field("nsp"))?,
            data: field("data").map(|(_, v)| v.clone()),
            requester_uid: None,
        })
    }

    /// The stream entry's fields (`RedisStreamsAdapter.encode`).
    pub fn to_stream_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![("uid", self.uid.clone()), ("nsp", self.nsp.clone()), ("type", self.kind.to_string())];
        if let Some(data) = &self.data {
            let encoded = if has_binary(data) {
                let mut packed = Vec::new();
                rmpv::encode::write_value(&mut packed, data).expect("writing to a Vec cannot fail");
                base64::engine::general_purpose::STANDARD.encode(packed)
            } else {
                msgpack_to_json(data).to_string()
            };
            fields.push(("data", encoded));
        }
        fields
    }

    /// Reads a stream entry; `field` looks a field up by name.
    pub fn from_stream_fields<'a>(field: impl Fn(&str) -> Option<&'a str>) -> Result<Message, MessageError> {
        let kind = field("type").and_then(|t| t.parse().ok()).ok_or(MessageError::Field("type"))?;
        let data = match field("data") {
            None | Some("") => None,
            Some(json) if json.starts_with('{') => {
                Some(json_to_msgpack(&serde_json::from_str(json).map_err(|e| MessageError::Json(e.to_string()))?))
            }
            Some(b64) => {
                let packed = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| MessageError::Base64)?;
                Some(
                    rmpv::decode::read_value_ref(&mut &packed[..])
                        .map_err(|e| MessageError::Msgpack(e.to_string()))?
                        .to_owned(),
                )
            }
        };
        Ok(Message {
            kind,
            uid: field("uid").ok_or(MessageError::Field("uid"))?.to_owned(),
            nsp: field("nsp").ok_or(MessageError::Field("nsp"))?.to_owned(),
            data,
            requester_uid: None,
        })
    }

    /// `data.requestId`, on requests and responses.
    pub fn request_id(&self) -> Option<&str> {
        get(self.data.as_ref()?, "requestId")?.as_str()
    }
}

/// The value of `key` in a msgpack map.
pub fn get<'v>(map: &'v Mp, key: &str) -> Option<&'v Mp> {
    map.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

fn has_binary(v: &Mp) -> bool {
    match v {
        Mp::Binary(_) => true,
        Mp::Array(a) => a.iter().any(has_binary),
        Mp::Map(m) => m.iter().any(|(k, v)| has_binary(k) || has_binary(v)),
        _ => false,
    }
}

/// What `@msgpack/msgpack` would make of the JavaScript value: `undefined`
/// is nil, every view or buffer is binary, and what has no msgpack form
/// (a back-reference, a `RegExp`) is nil.
pub fn v8_to_msgpack(v: &V8) -> Mp {
    let props = |p: &[(V8, V8)]| Mp::Map(p.iter().filter_map(|(k, v)| Some((v8_key(k)?, v8_to_msgpack(v)))).collect());
    match v {
        V8::Undefined | V8::Null => Mp::Nil,
        V8::Bool(b) | V8::BooleanObject(b) => Mp::Boolean(*b),
        V8::Int32(i) => Mp::from(*i),
        V8::Uint32(u) => Mp::from(*u),
        V8::Double(d) | V8::NumberObject(d) | V8::Date(d) => number(*d),
        V8::String(s) | V8::StringObject(s) => Mp::from(s.to_string_lossy()),
        V8::Object(p) => props(p),
        V8::Array { elements, .. } => {
            Mp::Array(elements.iter().map(|e| e.as_ref().map_or(Mp::Nil, v8_to_msgpack)).collect())
        }
        V8::Map(p) => props(p),
        V8::Set(items) => Mp::Array(items.iter().map(v8_to_msgpack).collect()),
        V8::ArrayBuffer(b) | V8::ResizableArrayBuffer { bytes: b, .. } | V8::NodeView { bytes: b, .. } => {
            Mp::Binary(b.clone())
        }
        V8::ArrayBufferView { buffer, byte_offset, byte_length, .. } => match &**buffer {
            V8::ArrayBuffer(b) | V8::ResizableArrayBuffer { bytes: b, .. } => {
                let (start, len) = (*byte_offset as usize, *byte_length as usize);
                Mp::Binary(b.get(start..start.saturating_add(len)).unwrap_or_default().to_vec())
            }
            _ => Mp::Nil,
        },
        V8::NodeHostValue(inner) => v8_to_msgpack(inner),
        V8::Error(e) => Mp::Map(vec![(Mp::from("message"), e.message.as_ref().map_or(Mp::Nil, v8_to_msgpack))]),
        V8::BigInt { .. } | V8::BigIntObject { .. } | V8::SparseArray { .. } | V8::RegExp { .. } | V8::Ref(_) => {
            Mp::Nil
        }
    }
}

/// A key as a string, as JavaScript makes an object's property key of it
/// (`String(key)`), since every reader of the message on Redis builds
/// plain objects, and Node's IPC refuses an object key that is not a
/// string or a number. A `Map` key that has no such form (an object, an
/// array, binary) is left out, with its value.
fn v8_key(k: &V8) -> Option<Mp> {
    match k {
        V8::String(s) => Some(Mp::from(s.to_string_lossy())),
        other => match v8_to_msgpack(other) {
            Mp::Integer(i) => Some(Mp::from(i.to_string())),
            Mp::F64(f) => Some(Mp::from(f.to_string())),
            Mp::F32(f) => Some(Mp::from(f.to_string())),
            Mp::Boolean(b) => Some(Mp::from(b.to_string())),
            Mp::Nil => Some(Mp::from(if matches!(other, V8::Undefined) { "undefined" } else { "null" })),
            Mp::String(s) => s.into_str().map(Mp::from),
            _ => None,
        },
    }
}

/// A JavaScript number as msgpack: an integer if it is one.
fn number(d: f64) -> Mp {
    if d.fract() == 0.0 && d.abs() < 9_007_199_254_740_992.0 {
        Mp::from(d as i64)
    } else {
        Mp::F64(d)
    }
}

/// The JavaScript value `@msgpack/msgpack` decodes, as V8 writes it (binary
/// becomes a Node `Buffer`, which socket.io sends as binary).
pub fn msgpack_to_v8(v: &Mp) -> V8 {
    match v {
        Mp::Nil => V8::Null,
        Mp::Boolean(b) => V8::Bool(*b),
        Mp::Integer(i) => match i.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(small) => V8::Int32(small),
            None => V8::Double(i.as_f64().unwrap_or(0.0)),
        },
        Mp::F32(f) => V8::Double(f64::from(*f)),
        Mp::F64(f) => V8::Double(*f),
        Mp::String(s) => V8::String(JsString::from(s.as_str().unwrap_or_default())),
        Mp::Binary(b) => V8::buffer(b.clone()),
        Mp::Array(a) => V8::Array { elements: a.iter().map(|e| Some(msgpack_to_v8(e))).collect(), properties: vec![] },
        Mp::Map(m) => V8::Object(m.iter().map(|(k, v)| (msgpack_to_v8(k), msgpack_to_v8(v))).collect()),
        Mp::Ext(..) => V8::Null,
    }
}

fn msgpack_to_json(v: &Mp) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Mp::Nil | Mp::Ext(..) | Mp::Binary(_) => J::Null,
        Mp::Boolean(b) => J::Bool(*b),
        Mp::Integer(i) => i.as_i64().map(J::from).or_else(|| i.as_u64().map(J::from)).unwrap_or(J::Null),
        Mp::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number),
        Mp::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Mp::String(s) => J::from(s.as_str().unwrap_or_default()),
        Mp::Array(a) => J::Array(a.iter().map(msgpack_to_json).collect()),
        Mp::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().map_or_else(|| k.to_string(), str::to_owned), msgpack_to_json(v)))
                .collect(),
        ),
    }
}

fn json_to_msgpack(v: &serde_json::Value) -> Mp {
    use serde_json::Value as J;
    match v {
        J::Null => Mp::Nil,
        J::Bool(b) => Mp::Boolean(*b),
        J::Number(n) => n
            .as_i64()
            .map(Mp::from)
            .or_else(|| n.as_u64().map(Mp::from))
            .unwrap_or_else(|| Mp::F64(n.as_f64().unwrap_or(0.0))),
        J::String(s) => Mp::from(s.as_str()),
        J::Array(a) => Mp::Array(a.iter().map(json_to_msgpack).collect()),
        J::Object(o) => Mp::Map(o.iter().map(|(k, v)| (Mp::from(k.as_str()), json_to_msgpack(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn broadcast(data: Mp) -> Message {
        Message { kind: 3, uid: "0123456789abcdef".into(), nsp: "/".into(), data: Some(data), requester_uid: None }
    }

    fn packet(payload: Mp) -> Mp {
        Mp::Map(vec![
            (Mp::from("packet"), Mp::Map(vec![(Mp::from("type"), Mp::from(2)), (Mp::from("data"), payload)])),
            (Mp::from("opts"), Mp::Map(vec![(Mp::from("rooms"), Mp::Array(vec![]))])),
        ])
    }

    #[test]
    fn a_text_broadcast_is_a_json_stream_entry_and_a_binary_one_base64_msgpack() {
        let text = broadcast(packet(Mp::Array(vec![Mp::from("chat"), Mp::from("hi")])));
        let fields = text.to_stream_fields();
        assert_eq!(fields[2], ("type", "3".to_owned()));
        assert_eq!(fields[3].1, r#"{"opts":{"rooms":[]},"packet":{"data":["chat","hi"],"type":2}}"#);
        let binary = broadcast(packet(Mp::Array(vec![Mp::from("bin"), Mp::Binary(vec![1, 2, 255])])));
        let data = &binary.to_stream_fields()[3].1;
        assert!(!data.starts_with('{'), "{data}");
        for m in [text, binary] {
            let fields = m.to_stream_fields();
            let back = Message::from_stream_fields(|k| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str()));
            // JSON orders keys; compare through JSON-free equality of content.
            assert_eq!(back.as_ref().map(|b| (b.kind, &b.uid, &b.nsp)), Ok((3, &m.uid, &m.nsp)));
            assert_eq!(has_binary(back.unwrap().data.as_ref().unwrap()), has_binary(m.data.as_ref().unwrap()));
        }
    }

    #[test]
    fn a_worker_frame_becomes_a_pubsub_payload_and_back_with_buffers_kept_binary() {
        let value = V8::object([
            ("source", V8::str(ADAPTER_SOURCE)),
            ("type", V8::Int32(10)),
            ("uid", V8::str("w1")),
            ("nsp", V8::str("/chat")),
            ("data", V8::object([("requestId", V8::str("r1")), ("packet", V8::buffer(vec![0, 1]))])),
            ("requesterUid", V8::str("remote")),
        ]);
        let m = Message::from_frame(&v8::encode_frame(&value)).unwrap();
        assert_eq!((m.kind, m.uid.as_str(), m.nsp.as_str(), m.request_id()), (10, "w1", "/chat", Some("r1")));
        assert_eq!(m.requester_uid.as_deref(), Some("remote"));
        let back = Message::from_pubsub(&m.to_pubsub()).unwrap();
        assert_eq!(back, Message { requester_uid: None, ..m.clone() });
        let frame = Message::from_frame(&back.to_frame()).unwrap();
        assert_eq!(get(frame.data.as_ref().unwrap(), "packet"), Some(&Mp::Binary(vec![0, 1])));
    }

    #[test]
    fn a_maps_keys_reach_redis_as_strings_and_keys_with_no_string_form_are_left_out() {
        // `new Map([[null, 1], [true, 2], [3, 3], [[4], 4]])` in a worker.
        let map = V8::Map(vec![
            (V8::Null, V8::Int32(1)),
            (V8::Bool(true), V8::Int32(2)),
            (V8::Int32(3), V8::Int32(3)),
            (V8::Array { elements: vec![Some(V8::Int32(4))], properties: vec![] }, V8::Int32(4)),
        ]);
        let got = v8_to_msgpack(&map);
        let keys: Vec<_> = got.as_map().unwrap().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, [Some("null"), Some("true"), Some("3")]);
        assert!(crate::bridge::check::string_keys(&got));
    }

    #[test]
    fn garbage_from_redis_is_an_error_not_a_panic() {
        assert!(Message::from_pubsub(b"\xc1").is_err());
        assert!(Message::from_pubsub(&[0x90]).is_err(), "an array is not a message");
        let none = |_: &str| None;
        assert_eq!(Message::from_stream_fields(none), Err(MessageError::Field("type")));
        let bad_b64 = |k: &str| match k {
            "type" => Some("3"),
            "data" => Some("!!"),
            _ => Some("x"),
        };
        assert_eq!(Message::from_stream_fields(bad_b64), Err(MessageError::Base64));
    }

    fn mp_value() -> impl Strategy<Value = Mp> {
        let leaf = prop_oneof![
            Just(Mp::Nil),
            any::<bool>().prop_map(Mp::Boolean),
            any::<i32>().prop_map(Mp::from),
            "[a-z\u{e9}\u{4e2d}]{0,6}".prop_map(Mp::from),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Mp::Binary),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Mp::Array),
                proptest::collection::vec(("[a-z]{1,4}", inner), 0..4)
                    .prop_map(|kv| Mp::Map(kv.into_iter().map(|(k, v)| (Mp::from(k), v)).collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn msgpack_values_survive_a_trip_through_a_worker(data in mp_value()) {
            let m = broadcast(data);
            let back = Message::from_frame(&m.to_frame()).unwrap();
            prop_assert_eq!(back, m);
        }

        #[test]
        fn any_pubsub_payload_decodes_or_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::from_pubsub(&bytes);
        }
    }
}
