//! V8 ValueSerializer codec (format version 15), as Node's `advanced` IPC
//! serialization uses it.
//!
//! Pure code: no I/O, no allocation proportional to claimed (rather than
//! present) lengths, no panics on any input, bounded nesting. The decoder reads
//! every tag V8 can write so that the agent can find `source` and
//! `requesterUid`, which cluster-adapter puts *after* arbitrary user data.
//! The encoder writes every value the decoder reads, so that a value survives
//! `decode(encode(v)) == v` and Node accepts what we write (checked against
//! Node itself in `tests/v8_codec.rs`).
//!
//! Node specifics: `Buffer`s and typed arrays are *host objects* written by
//! Node's `ChildProcessSerializer` (tag `\`, then a varint `0`, Node's view
//! type index, the byte length and the bytes). See
//! `docs/node-ipc-protocol.md` in the design notes for the wire dumps.

use std::fmt;

/// The serializer format version Node 20 writes; readers accept any version
/// from 13 on (host objects got their explicit tag in 13).
pub const FORMAT_VERSION: u32 = 15;

/// Deepest nesting we decode, so that a hostile frame cannot overflow our
/// stack. Socket.IO packets nest a few levels; a message nested deeper is
/// reported as undecodable (and not relayed) rather than crash the agent.
pub const MAX_DEPTH: u32 = 128;

/// Most bytes a dense array reserves for the element count it claims before
/// its elements are there. Each element takes at least one input byte but
/// some 50 bytes as a [`Value`], and up to [`MAX_DEPTH`] arrays can be open at
/// once: reserving for the claim (even capped by the input left) would let a
/// small frame reserve gigabytes. Beyond this the vector grows with the
/// elements actually decoded.
const MAX_PREALLOC_BYTES: usize = 4096;

/// Node's view type index for `Buffer` (`FastBuffer`).
pub const NODE_BUFFER_VIEW: u32 = 10;

/// A JavaScript string as V8 wrote it. Kept in its wire form so that strings
/// with lone surrogates round-trip exactly.
#[derive(Clone, PartialEq, Eq)]
pub enum JsString {
    /// Tag `"`: one byte per character, Latin-1.
    Latin1(Vec<u8>),
    /// Tag `c`: UTF-16LE code units (may hold lone surrogates).
    Utf16(Vec<u16>),
    /// Tag `S`: UTF-8. V8 no longer writes it but reads it; we write it for
    /// strings that are not Latin-1.
    Utf8(String),
}

impl JsString {
    /// Whether this string equals `s` (compared as Unicode text).
    pub fn eq_str(&self, s: &str) -> bool {
        match self {
            JsString::Latin1(b) => s.chars().map(u32::from).eq(b.iter().map(|&x| u32::from(x))),
            JsString::Utf16(u) => s.encode_utf16().eq(u.iter().copied()),
            JsString::Utf8(t) => t == s,
        }
    }

    /// The text, with lone surrogates replaced by U+FFFD.
    pub fn to_string_lossy(&self) -> String {
        match self {
            // Sids, uids and namespaces are ASCII: copied, not re-encoded.
            JsString::Latin1(b) if b.is_ascii() => String::from_utf8(b.clone()).expect("ASCII is UTF-8"),
            JsString::Latin1(b) => b.iter().map(|&c| c as char).collect(),
            JsString::Utf16(u) => String::from_utf16_lossy(u),
            JsString::Utf8(t) => t.clone(),
        }
    }
}

impl From<&str> for JsString {
    fn from(s: &str) -> Self {
        if s.chars().all(|c| (c as u32) < 0x100) {
            JsString::Latin1(s.chars().map(|c| c as u8).collect())
        } else {
            JsString::Utf8(s.to_owned())
        }
    }
}

impl fmt::Debug for JsString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

/// A decoded V8 value. Object-like variants are numbered in the order they
/// appear (V8's object ids); [`Value::Ref`] points back to one of them, which
/// is how V8 encodes shared and cyclic references.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Undefined,
    Null,
    Bool(bool),
    Int32(i32),
    Uint32(u32),
    Double(f64),
    /// `bitfield` bit 0 is the sign, the rest the byte length of `digits`
    /// (little-endian 64-bit digits, as V8 stores them).
    BigInt {
        negative: bool,
        digits: Vec<u8>,
    },
    String(JsString),
    /// Keys are strings or numbers, in insertion order.
    Object(Vec<(Value, Value)>),
    /// `None` elements are holes.
    Array {
        elements: Vec<Option<Value>>,
        properties: Vec<(Value, Value)>,
    },
    SparseArray {
        length: u32,
        properties: Vec<(Value, Value)>,
    },
    Date(f64),
    BooleanObject(bool),
    NumberObject(f64),
    BigIntObject {
        negative: bool,
        digits: Vec<u8>,
    },
    StringObject(JsString),
    RegExp {
        source: JsString,
        flags: u32,
    },
    Map(Vec<(Value, Value)>),
    Set(Vec<Value>),
    ArrayBuffer(Vec<u8>),
    ResizableArrayBuffer {
        bytes: Vec<u8>,
        max_byte_length: u32,
    },
    /// A V8-native view (tag `V`) over the buffer serialized just before it.
    ArrayBufferView {
        buffer: Box<Value>,
        subtag: u8,
        byte_offset: u32,
        byte_length: u32,
        flags: u32,
    },
    /// A Node `Buffer` or typed array (host object, view type index + bytes).
    NodeView {
        view_type: u32,
        bytes: Vec<u8>,
    },
    /// A Node host object that is not a view: a plain value follows.
    NodeHostValue(Box<Value>),
    Error(Box<JsError>),
    /// Back-reference to the object with this id.
    Ref(u32),
}

/// A serialized `Error` (tag `r`): only the parts V8 transfers.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct JsError {
    /// One of `E R F S T U` (EvalError ... URIError); `None` is `Error`.
    pub prototype: Option<u8>,
    pub message: Option<Value>,
    pub stack: Option<Value>,
    pub cause: Option<Value>,
}

impl Value {
    /// A Node `Buffer` holding `bytes`.
    pub fn buffer(bytes: impl Into<Vec<u8>>) -> Value {
        Value::NodeView { view_type: NODE_BUFFER_VIEW, bytes: bytes.into() }
    }

    pub fn str(s: &str) -> Value {
        Value::String(JsString::from(s))
    }

    /// An object from `(key, value)` pairs with string keys.
    pub fn object<'k>(props: impl IntoIterator<Item = (&'k str, Value)>) -> Value {
        Value::Object(props.into_iter().map(|(k, v)| (Value::str(k), v)).collect())
    }

    /// The value of property `key` if this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(props) => {
                props.iter().find(|(k, _)| matches!(k, Value::String(s) if s.eq_str(key))).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    pub fn as_js_str(&self) -> Option<&JsString> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number this value holds, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int32(i) => Some(i as f64),
            Value::Uint32(u) => Some(u as f64),
            Value::Double(d) => Some(d),
            _ => None,
        }
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    BadHeader,
    UnknownTag { tag: u8, at: usize },
    TooDeep,
    BadVarint,
    BadReference(u32),
    TrailingBytes(usize),
    Malformed(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "value truncated"),
            DecodeError::BadHeader => {
                write!(f, "no V8 serializer header (expected 0xFF + version)")
            }
            DecodeError::UnknownTag { tag, at } => {
                write!(f, "unknown V8 tag 0x{tag:02x} at byte {at}")
            }
            DecodeError::TooDeep => write!(f, "value nested deeper than {MAX_DEPTH}"),
            DecodeError::BadVarint => write!(f, "varint out of range"),
            DecodeError::BadReference(id) => write!(f, "back-reference to unknown object {id}"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} bytes after the value"),
            DecodeError::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one serialized payload (header + one value, without Node's
/// 4-byte length prefix).
pub fn decode(payload: &[u8]) -> Result<Value, DecodeError> {
    decode_to_depth(payload, u32::MAX)
}

/// Decodes one payload's *outline*: the value and, if it is a container,
/// its own entries, with the containers among them left empty and anything
/// deeper (strings, bytes) empty too. The whole payload is read and checked
/// as [`decode`] checks it (same errors, same object ids), but nothing below
/// the second level is built: a cluster-adapter frame's packet, which the
/// agent relays byte for byte and only needs the top-level `type`, `uid`,
/// `nsp`, `source` and `requesterUid` of, costs no allocation.
pub fn decode_outline(payload: &[u8]) -> Result<Value, DecodeError> {
    decode_to_depth(payload, 2)
}

/// Decodes a payload, building values down to `build_depth` (the payload's
/// value is at depth 1).
fn decode_to_depth(payload: &[u8], build_depth: u32) -> Result<Value, DecodeError> {
    let mut d = Decoder { input: payload, pos: 0, next_id: 0, depth: 0, build_depth };
    d.header()?;
    let v = d.value()?;
    // V8 pads the buffer; Node's reader ignores what follows the value.
    if d.input[d.pos..].iter().any(|&b| b != 0) {
        return Err(DecodeError::TrailingBytes(d.input.len() - d.pos));
    }
    Ok(v)
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    next_id: u32,
    /// Depth of the value being read: 1 for the payload's value.
    depth: u32,
    /// Values deeper than this are read and checked, not built.
    build_depth: u32,
}

impl<'a> Decoder<'a> {
    fn header(&mut self) -> Result<(), DecodeError> {
        if self.byte()? != 0xFF {
            return Err(DecodeError::BadHeader);
        }
        let version = self.varint32()?;
        if !(13..=FORMAT_VERSION).contains(&version) {
            return Err(DecodeError::BadHeader);
        }
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.input.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// The next tag, skipping V8's alignment padding.
    fn tag(&mut self) -> Result<u8, DecodeError> {
        loop {
            match self.byte()? {
                0 => continue,
                t => return Ok(t),
            }
        }
    }

    fn peek_tag(&mut self) -> Result<u8, DecodeError> {
        while self.input.get(self.pos) == Some(&0) {
            self.pos += 1;
        }
        self.input.get(self.pos).copied().ok_or(DecodeError::Truncated)
    }

    fn varint64(&mut self) -> Result<u64, DecodeError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError::BadVarint)
    }

    fn varint32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint64()?).map_err(|_| DecodeError::BadVarint)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let slice = self.input.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn len_prefixed(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint32()? as usize;
        self.bytes(n)
    }

    fn double(&mut self) -> Result<f64, DecodeError> {
        let b = self.bytes(8)?;
        Ok(f64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// The capacity to reserve for `claimed` elements of `T`: no more than
    /// the input left (one byte per element at least) or
    /// [`MAX_PREALLOC_BYTES`] can hold.
    fn capacity_for<T>(&self, claimed: usize) -> usize {
        let left = self.input.len() - self.pos;
        claimed.min(left.min(MAX_PREALLOC_BYTES) / std::mem::size_of::<T>())
    }

    /// Whether the value being read is built.
    fn builds(&self) -> bool {
        self.depth <= self.build_depth
    }

    /// Whether the entries of the container being read are built.
    fn builds_entries(&self) -> bool {
        self.depth < self.build_depth
    }

    /// `n` bytes, copied if the value being read is built.
    fn owned_bytes(&mut self, n: usize) -> Result<Vec<u8>, DecodeError> {
        let raw = self.bytes(n)?;
        Ok(if self.builds() { raw.to_vec() } else { Vec::new() })
    }

    fn new_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn string_body(&mut self, tag: u8) -> Result<JsString, DecodeError> {
        let raw = self.len_prefixed()?;
        let builds = self.builds();
        Ok(match tag {
            b'"' if builds => JsString::Latin1(raw.to_vec()),
            b'c' if raw.len() % 2 != 0 => return Err(DecodeError::Malformed("two-byte string")),
            b'c' if builds => JsString::Utf16(raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()),
            // Not built: every kind of string is left as the empty one.
            b'"' | b'c' => JsString::Latin1(Vec::new()),
            _ => {
                let text = std::str::from_utf8(raw).map_err(|_| DecodeError::Malformed("UTF-8 string"))?;
                if builds {
                    JsString::Utf8(text.to_owned())
                } else {
                    JsString::Latin1(Vec::new())
                }
            }
        })
    }

    /// A value that must be a string (RegExp sources, string objects).
    fn any_string(&mut self) -> Result<JsString, DecodeError> {
        match self.tag()? {
            t @ (b'"' | b'c' | b'S') => self.string_body(t),
            _ => Err(DecodeError::Malformed("string")),
        }
    }

    fn bigint_body(&mut self) -> Result<(bool, Vec<u8>), DecodeError> {
        let bitfield = self.varint32()?;
        let digits = self.owned_bytes((bitfield >> 1) as usize)?;
        Ok((bitfield & 1 == 1, digits))
    }

    /// Reads `key, value` pairs until `end` is the next tag (consumed).
    fn properties(&mut self, end: u8) -> Result<Vec<(Value, Value)>, DecodeError> {
        let mut props = Vec::new();
        while self.peek_tag()? != end {
            let k = self.value()?;
            let v = self.value()?;
            if self.builds_entries() {
                props.push((k, v));
            }
        }
        self.pos += 1;
        Ok(props)
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let v = self.value_inner();
        self.depth -= 1;
        v
    }

    fn value_inner(&mut self) -> Result<Value, DecodeError> {
        let (at, tag) = loop {
            let at = self.pos;
            match self.tag()? {
                // kVerifyObjectCount: a count to ignore, then the real value.
                // A loop, not a recursion: any number of them costs no stack.
                b'?' => {
                    self.varint32()?;
                }
                tag => break (at, tag),
            }
        };
        Ok(match tag {
            b'_' => Value::Undefined,
            b'0' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'I' => {
                let z = self.varint32()?;
                Value::Int32(((z >> 1) as i32) ^ -((z & 1) as i32))
            }
            b'U' => Value::Uint32(self.varint32()?),
            b'N' => Value::Double(self.double()?),
            b'Z' => {
                let (negative, digits) = self.bigint_body()?;
                Value::BigInt { negative, digits }
            }
            b'"' | b'c' | b'S' => Value::String(self.string_body(tag)?),
            b'^' => {
                let id = self.varint32()?;
                if id >= self.next_id {
                    return Err(DecodeError::BadReference(id));
                }
                Value::Ref(id)
            }
            b'o' => {
                self.new_id();
                let props = self.properties(b'{')?;
                self.varint32()?;
                Value::Object(props)
            }
            b'A' => {
                self.new_id();
                let len = self.varint32()? as usize;
                let builds = self.builds_entries();
                let mut elements = Vec::with_capacity(if builds { self.capacity_for::<Option<Value>>(len) } else { 0 });
                for _ in 0..len {
                    let element = if self.peek_tag()? == b'-' {
                        self.pos += 1;
                        None
                    } else {
                        Some(self.value()?)
                    };
                    if builds {
                        elements.push(element);
                    }
                }
                let properties = self.properties(b'$')?;
                self.varint32()?;
                self.varint32()?;
                Value::Array { elements, properties }
            }
            b'a' => {
                self.new_id();
                let length = self.varint32()?;
                let properties = self.properties(b'@')?;
                self.varint32()?;
                self.varint32()?;
                Value::SparseArray { length, properties }
            }
            b'D' => {
                self.new_id();
                Value::Date(self.double()?)
            }
            b'y' | b'x' => {
                self.new_id();
                Value::BooleanObject(tag == b'y')
            }
            b'n' => {
                self.new_id();
                Value::NumberObject(self.double()?)
            }
            b'z' => {
                self.new_id();
                let (negative, digits) = self.bigint_body()?;
                Value::BigIntObject { negative, digits }
            }
            b's' => {
                self.new_id();
                Value::StringObject(self.any_string()?)
            }
            b'R' => {
                self.new_id();
                let source = self.any_string()?;
                Value::RegExp { source, flags: self.varint32()? }
            }
            b';' => {
                self.new_id();
                let mut entries = Vec::new();
                while self.peek_tag()? != b':' {
                    let k = self.value()?;
                    let v = self.value()?;
                    if self.builds_entries() {
                        entries.push((k, v));
                    }
                }
                self.pos += 1;
                self.varint32()?;
                Value::Map(entries)
            }
            b'\'' => {
                self.new_id();
                let mut items = Vec::new();
                while self.peek_tag()? != b',' {
                    let item = self.value()?;
                    if self.builds_entries() {
                        items.push(item);
                    }
                }
                self.pos += 1;
                self.varint32()?;
                Value::Set(items)
            }
            b'B' | b'~' => {
                self.new_id();
                let len = self.varint32()? as usize;
                let max_byte_length = if tag == b'~' { Some(self.varint32()?) } else { None };
                let bytes = self.owned_bytes(len)?;
                let buffer = match max_byte_length {
                    Some(max_byte_length) => Value::ResizableArrayBuffer { bytes, max_byte_length },
                    None => Value::ArrayBuffer(bytes),
                };
                self.maybe_view(buffer)?
            }
            b'\\' => {
                self.new_id();
                match self.varint32()? {
                    0 => {
                        let view_type = self.varint32()?;
                        let len = self.varint32()? as usize;
                        let bytes = self.owned_bytes(len)?;
                        Value::NodeView { view_type, bytes }
                    }
                    1 => Value::NodeHostValue(Box::new(self.value()?)),
                    _ => return Err(DecodeError::Malformed("Node host object")),
                }
            }
            b'r' => {
                self.new_id();
                // V8 writes each part once, the message and stack as strings:
                // holding to that keeps re-encoding exact, as only the cause
                // can then number objects (a part read twice would drop the
                // object ids of the first, and references past them would
                // point elsewhere once re-encoded).
                let mut err = JsError::default();
                loop {
                    let (part, value) = match self.byte()? {
                        b'.' => break,
                        p @ (b'E' | b'R' | b'F' | b'S' | b'T' | b'U') => {
                            if err.prototype.replace(p).is_some() {
                                return Err(DecodeError::Malformed("error"));
                            }
                            continue;
                        }
                        b'm' => (&mut err.message, Value::String(self.any_string()?)),
                        b's' => (&mut err.stack, Value::String(self.any_string()?)),
                        b'c' => (&mut err.cause, self.value()?),
                        _ => return Err(DecodeError::Malformed("error")),
                    };
                    if part.replace(value).is_some() {
                        return Err(DecodeError::Malformed("error"));
                    }
                }
                Value::Error(Box::new(err))
            }
            _ => return Err(DecodeError::UnknownTag { tag, at }),
        })
    }

    /// After an ArrayBuffer, a `V` tag makes it the backing store of a view.
    fn maybe_view(&mut self, buffer: Value) -> Result<Value, DecodeError> {
        if self.input.get(self.pos) != Some(&b'V') {
            return Ok(buffer);
        }
        self.pos += 1;
        self.new_id();
        let subtag = self.byte()?;
        let byte_offset = self.varint32()?;
        let byte_length = self.varint32()?;
        let flags = self.varint32()?;
        Ok(Value::ArrayBufferView { buffer: Box::new(buffer), subtag, byte_offset, byte_length, flags })
    }
}

/// Appends `n` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Encodes one value as a full Node IPC frame: 4-byte big-endian payload
/// length, then the V8 header and the value.
pub fn encode_frame(value: &Value) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0, 0xFF, FORMAT_VERSION as u8];
    encode_value(&mut out, value);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

fn put_string(out: &mut Vec<u8>, tag_latin1: u8, tag_utf16: u8, tag_utf8: u8, s: &JsString) {
    match s {
        JsString::Latin1(b) => {
            out.push(tag_latin1);
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        JsString::Utf16(u) => {
            out.push(tag_utf16);
            put_varint(out, (u.len() * 2) as u64);
            out.extend(u.iter().flat_map(|c| c.to_le_bytes()));
        }
        JsString::Utf8(t) => {
            out.push(tag_utf8);
            put_varint(out, t.len() as u64);
            out.extend_from_slice(t.as_bytes());
        }
    }
}

fn put_bigint(out: &mut Vec<u8>, negative: bool, digits: &[u8]) {
    put_varint(out, ((digits.len() as u64) << 1) | u64::from(negative));
    out.extend_from_slice(digits);
}

fn put_properties(out: &mut Vec<u8>, props: &[(Value, Value)]) {
    for (k, v) in props {
        encode_value(out, k);
        encode_value(out, v);
    }
}

fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Undefined => out.push(b'_'),
        Value::Null => out.push(b'0'),
        Value::Bool(b) => out.push(if *b { b'T' } else { b'F' }),
        Value::Int32(i) => {
            out.push(b'I');
            put_varint(out, u64::from(((*i << 1) ^ (*i >> 31)) as u32));
        }
        Value::Uint32(u) => {
            out.push(b'U');
            put_varint(out, u64::from(*u));
        }
        Value::Double(d) => {
            out.push(b'N');
            out.extend_from_slice(&d.to_le_bytes());
        }
        Value::BigInt { negative, digits } => {
            out.push(b'Z');
            put_bigint(out, *negative, digits);
        }
        Value::String(s) => put_string(out, b'"', b'c', b'S', s),
        Value::Object(props) => {
            out.push(b'o');
            put_properties(out, props);
            out.push(b'{');
            put_varint(out, props.len() as u64);
        }
        Value::Array { elements, properties } => {
            out.push(b'A');
            put_varint(out, elements.len() as u64);
            for e in elements {
                match e {
                    Some(v) => encode_value(out, v),
                    None => out.push(b'-'),
                }
            }
            put_properties(out, properties);
            out.push(b'$');
            put_varint(out, properties.len() as u64);
            put_varint(out, elements.len() as u64);
        }
        Value::SparseArray { length, properties } => {
            out.push(b'a');
            put_varint(out, u64::from(*length));
            put_properties(out, properties);
            out.push(b'@');
            put_varint(out, properties.len() as u64);
            put_varint(out, u64::from(*length));
        }
        Value::Date(ms) => {
            out.push(b'D');
            out.extend_from_slice(&ms.to_le_bytes());
        }
        Value::BooleanObject(b) => out.push(if *b { b'y' } else { b'x' }),
        Value::NumberObject(d) => {
            out.push(b'n');
            out.extend_from_slice(&d.to_le_bytes());
        }
        Value::BigIntObject { negative, digits } => {
            out.push(b'z');
            put_bigint(out, *negative, digits);
        }
        Value::StringObject(s) => {
            out.push(b's');
            put_string(out, b'"', b'c', b'S', s);
        }
        Value::RegExp { source, flags } => {
            out.push(b'R');
            put_string(out, b'"', b'c', b'S', source);
            put_varint(out, u64::from(*flags));
        }
        Value::Map(entries) => {
            out.push(b';');
            put_properties(out, entries);
            out.push(b':');
            put_varint(out, (entries.len() * 2) as u64);
        }
        Value::Set(items) => {
            out.push(b'\'');
            for v in items {
                encode_value(out, v);
            }
            out.push(b',');
            put_varint(out, items.len() as u64);
        }
        Value::ArrayBuffer(bytes) => {
            out.push(b'B');
            put_varint(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        Value::ResizableArrayBuffer { bytes, max_byte_length } => {
            out.push(b'~');
            put_varint(out, bytes.len() as u64);
            put_varint(out, u64::from(*max_byte_length));
            out.extend_from_slice(bytes);
        }
        Value::ArrayBufferView { buffer, subtag, byte_offset, byte_length, flags } => {
            encode_value(out, buffer);
            out.push(b'V');
            out.push(*subtag);
            put_varint(out, u64::from(*byte_offset));
            put_varint(out, u64::from(*byte_length));
            put_varint(out, u64::from(*flags));
        }
        Value::NodeView { view_type, bytes } => {
            out.push(b'\\');
            put_varint(out, 0);
            put_varint(out, u64::from(*view_type));
            put_varint(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        Value::NodeHostValue(v) => {
            out.push(b'\\');
            put_varint(out, 1);
            encode_value(out, v);
        }
        Value::Error(err) => {
            out.push(b'r');
            if let Some(p) = err.prototype {
                out.push(p);
            }
            for (sub, part) in [(b'm', &err.message), (b's', &err.stack), (b'c', &err.cause)] {
                if let Some(v) = part {
                    out.push(sub);
                    encode_value(out, v);
                }
            }
            out.push(b'.');
        }
        Value::Ref(id) => {
            out.push(b'^');
            put_varint(out, u64::from(*id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payload(frame: &[u8]) -> &[u8] {
        &frame[4..]
    }

    #[test]
    fn decodes_the_sticky_handle_envelope_node_writes() {
        // Verified dump from the design notes (advanced mode, Node 20).
        let mut p = vec![0xFF, 0x0F];
        p.extend_from_slice(b"o\"\x03cmd\"\x0bNODE_HANDLE\"\x04type\"\x0anet.Socket\"\x03msgo\"\x04type\"\x11sticky:connection\"\x04data\\\x00\x0a\x03abc{\x02{\x03");
        let v = decode(&p).unwrap();
        assert!(v.get("cmd").unwrap().as_js_str().unwrap().eq_str("NODE_HANDLE"));
        let msg = v.get("msg").unwrap();
        assert_eq!(msg.get("data"), Some(&Value::buffer(b"abc".to_vec())));
    }

    #[test]
    fn skips_alignment_padding_before_tags() {
        let p = [0xFF, 0x0F, 0x00, b'c', 2, b'h', 0];
        assert_eq!(decode(&p).unwrap(), Value::String(JsString::Utf16(vec![u16::from(b'h')])));
    }

    #[test]
    fn zigzag_int32_extremes() {
        for i in [0, 1, -1, 63, -64, i32::MAX, i32::MIN] {
            let f = encode_frame(&Value::Int32(i));
            assert_eq!(decode(payload(&f)).unwrap(), Value::Int32(i));
        }
    }

    #[test]
    fn rejects_references_forward_and_huge_claims() {
        assert_eq!(decode(&[0xFF, 0x0F, b'^', 0]), Err(DecodeError::BadReference(0)));
        // A string claiming 4 GiB must not allocate it.
        assert_eq!(decode(&[0xFF, 0x0F, b'"', 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), Err(DecodeError::Truncated));
        // A dense array claiming 2^32-1 elements.
        assert_eq!(decode(&[0xFF, 0x0F, b'A', 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]), Err(DecodeError::Truncated));
    }

    #[test]
    fn nesting_is_bounded() {
        let mut p = vec![0xFF, 0x0F];
        p.extend(std::iter::repeat_n([b'A', 1], 100_000).flatten());
        assert_eq!(decode(&p), Err(DecodeError::TooDeep));
    }

    #[test]
    fn an_error_with_a_part_twice_or_a_message_that_is_no_string_is_malformed() {
        // `r c o{0} m ^1 .`: the message refers to the cause's object; written
        // back as message-then-cause, the reference would point forward.
        let p = [0xFF, 0x0F, b'r', b'c', b'o', b'{', 0, b'm', b'^', 1, b'.'];
        assert_eq!(decode(&p), Err(DecodeError::Malformed("string")));
        let p = [0xFF, 0x0F, b'r', b'c', b'o', b'{', 0, b'c', b'_', b'.'];
        assert_eq!(decode(&p), Err(DecodeError::Malformed("error")));
        let p = [0xFF, 0x0F, b'r', b'm', b'"', 1, b'a', b'm', b'"', 1, b'b', b'.'];
        assert_eq!(decode(&p), Err(DecodeError::Malformed("error")));
        let p = [0xFF, 0x0F, b'r', b'T', b'm', b'"', 1, b'a', b'c', b'o', b'{', 0, b'.'];
        let err = JsError {
            prototype: Some(b'T'),
            message: Some(Value::str("a")),
            stack: None,
            cause: Some(Value::Object(vec![])),
        };
        assert_eq!(decode(&p), Ok(Value::Error(Box::new(err))));
    }

    #[test]
    fn any_number_of_verify_object_count_tags_costs_no_stack() {
        let mut p = vec![0xFF, 0x0F];
        p.extend(std::iter::repeat_n([b'?', 0], 100_000).flatten());
        assert!(decode(&p).is_err());
        p.push(b'T');
        assert_eq!(decode(&p), Ok(Value::Bool(true)));
    }

    /// Counts the bytes this thread allocates, so that a test can bound what
    /// a decode reserves (other tests run on other threads).
    struct CountingAllocator;

    thread_local! {
        static ALLOCATED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    // SAFETY: every call is forwarded to the system allocator unchanged.
    unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
            unsafe { std::alloc::System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
            let _ = ALLOCATED.try_with(|a| a.set(a.get() + new_size.saturating_sub(layout.size())));
            unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAllocator = CountingAllocator;

    fn allocated_by<T>(f: impl FnOnce() -> T) -> usize {
        let before = ALLOCATED.with(|a| a.get());
        drop(f());
        ALLOCATED.with(|a| a.get()) - before
    }

    #[test]
    fn claimed_array_lengths_reserve_little_up_front() {
        // 127 nested arrays each claiming 2^32-1 elements, then 64 KiB of
        // padding: each level may not reserve for what it merely claims.
        let mut p = vec![0xFF, 0x0F];
        p.extend(std::iter::repeat_n([b'A', 0xFF, 0xFF, 0xFF, 0xFF, 0x0F], 127).flatten());
        p.resize(p.len() + (64 << 10), 0);
        let bytes = allocated_by(|| assert_eq!(decode(&p), Err(DecodeError::Truncated)));
        assert!(bytes < 1 << 20, "decoding {} bytes allocated {bytes}", p.len());
    }

    #[test]
    fn latin1_equality_is_by_character() {
        let s = JsString::from("é");
        assert_eq!(s, JsString::Latin1(vec![0xE9]));
        assert!(s.eq_str("é"));
        assert!(!s.eq_str("e"));
        assert!(JsString::from("€").eq_str("€"));
    }

    fn arb_string() -> impl Strategy<Value = JsString> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(JsString::Latin1),
            proptest::collection::vec(any::<u16>(), 0..8).prop_map(JsString::Utf16),
            ".{0,8}".prop_map(JsString::Utf8),
        ]
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Undefined),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::Int32),
            any::<u32>().prop_map(Value::Uint32),
            any::<f64>().prop_filter("NaN != NaN", |d| !d.is_nan()).prop_map(Value::Double),
            arb_string().prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::buffer),
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..3))
                .prop_map(|(negative, d)| Value::BigInt { negative, digits: d.repeat(8) }),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec((arb_string().prop_map(Value::String), inner.clone()), 0..4)
                    .prop_map(Value::Object),
                proptest::collection::vec(proptest::option::of(inner.clone()), 0..4)
                    .prop_map(|elements| Value::Array { elements, properties: vec![] }),
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..3).prop_map(Value::Map),
                inner.prop_map(|v| Value::NodeHostValue(Box::new(v))),
            ]
        })
    }

    /// What [`decode_outline`] gives for `v` found at `depth`: the spec its
    /// property test holds the decoder to.
    fn outlined(v: &Value, depth: u32) -> Value {
        let builds = depth <= 2;
        let entries = |n: usize| if depth < 2 { n } else { 0 };
        let pair = |(k, v): &(Value, Value)| (outlined(k, depth + 1), outlined(v, depth + 1));
        match v {
            Value::String(_) if !builds => Value::String(JsString::Latin1(vec![])),
            Value::NodeView { view_type, .. } if !builds => Value::NodeView { view_type: *view_type, bytes: vec![] },
            Value::BigInt { negative, .. } if !builds => Value::BigInt { negative: *negative, digits: vec![] },
            Value::Object(props) => Value::Object(props.iter().take(entries(props.len())).map(pair).collect()),
            Value::Map(e) => Value::Map(e.iter().take(entries(e.len())).map(pair).collect()),
            Value::Set(items) => {
                Value::Set(items.iter().take(entries(items.len())).map(|i| outlined(i, depth + 1)).collect())
            }
            Value::Array { elements, properties } => Value::Array {
                elements: elements
                    .iter()
                    .take(entries(elements.len()))
                    .map(|e| e.as_ref().map(|e| outlined(e, depth + 1)))
                    .collect(),
                properties: properties.iter().take(entries(properties.len())).map(pair).collect(),
            },
            Value::NodeHostValue(inner) => Value::NodeHostValue(Box::new(outlined(inner, depth + 1))),
            other => other.clone(),
        }
    }

    #[test]
    fn an_outline_builds_nothing_below_the_top_level_entries() {
        // An adapter broadcast: small routing fields after a large packet.
        let packet = Value::Array {
            elements: (0..1000).map(|i| Some(Value::object([("text", Value::str(&format!("message {i}")))]))).collect(),
            properties: vec![],
        };
        let msg = Value::object([
            ("type", Value::Int32(3)),
            ("data", Value::object([("packet", packet), ("opts", Value::buffer(vec![7; 1 << 16]))])),
            ("uid", Value::str("abc123")),
            ("nsp", Value::str("/")),
            ("source", Value::str("_sio_adapter")),
        ]);
        let f = encode_frame(&msg);
        let whole = allocated_by(|| decode(payload(&f)).unwrap());
        let outline = allocated_by(|| {
            let o = decode_outline(payload(&f)).unwrap();
            assert!(o.get("uid").unwrap().as_js_str().unwrap().eq_str("abc123"));
            assert_eq!(o.get("data"), Some(&Value::Object(vec![])));
        });
        assert!(whole > 1 << 16, "the whole decode allocated {whole} bytes");
        assert!(outline < 1 << 10, "the outline allocated {outline} bytes");
    }

    proptest! {
        #[test]
        fn an_outline_is_the_value_down_to_its_top_level_entries(v in arb_value()) {
            let f = encode_frame(&v);
            prop_assert_eq!(decode_outline(payload(&f)).unwrap(), outlined(&v, 1));
        }

        #[test]
        fn an_outline_refuses_what_decode_refuses(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..256),
            v in arb_value(),
            cut in 0usize..64,
        ) {
            bytes.splice(0..0, [0xFF, 0x0F]);
            prop_assert_eq!(decode_outline(&bytes).err(), decode(&bytes).err());
            let f = encode_frame(&v);
            let cut = &payload(&f)[..cut.min(f.len() - 4)];
            prop_assert_eq!(decode_outline(cut).err(), decode(cut).err());
        }

        #[test]
        fn encode_then_decode_is_identity(v in arb_value()) {
            let f = encode_frame(&v);
            prop_assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
            prop_assert_eq!(decode(payload(&f)).unwrap(), v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            bytes.splice(0..0, [0xFF, 0x0F]);
            let _ = decode(&bytes);
        }

        #[test]
        fn truncating_a_valid_frame_is_an_error_not_a_panic(v in arb_value(), cut in 0usize..64) {
            let f = encode_frame(&v);
            let p = payload(&f);
            if cut < p.len() {
                let _ = decode(&p[..cut]);
            }
        }
    }
}
