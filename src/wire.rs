//! The bus protocol between the master and its peers (worker agents and
//! `sioctl`), versioned and kept apart from the I/O that carries it.
//!
//! Transport: the app's Unix stream sockets ([`crate::endpoints`]; agents
//! of version 1 used the abstract name `@sio/APP`, which masters no longer
//! serve: anyone can connect to an abstract name). Every frame is `u32` little-endian length (of what
//! follows, at most [`MAX_FRAME`]), one tag byte, and the body. A [`ToAgent::Handoff`] frame
//! travels with exactly one file descriptor (`SCM_RIGHTS`) on the
//! `sendmsg` that carries its first byte, as does a [`ToAgent::Listener`];
//! the receiver queues fds in arrival order and gives the oldest to each
//! such frame it decodes.
//!
//! The first frame on a connection is [`ToMaster::Hello`] with the highest
//! version the peer speaks; the master answers [`ToAgent::Welcome`] with the
//! version both then speak (the lower of the two), or [`ToAgent::Refused`]
//! (peer credentials, a version older than [`MIN_PROTOCOL_VERSION`]).
//!
//! Evolution, so that agents that outlive a master upgrade keep working
//! (the model of sozu's command protocol):
//! * A tag, once given, keeps its layout and is never reused. Adding a
//!   frame means a new tag; a receiver skips a tag it does not know
//!   ([`WireError::UnknownTag`]: every frame carries its length), so old
//!   and new peers can send each other what they like.
//! * A change to an existing frame's layout bumps [`PROTOCOL_VERSION`], and
//!   both ends keep speaking every version from [`MIN_PROTOCOL_VERSION`].
//! * The golden-bytes tests below pin every frame of every version.

use crate::nodeipc::AdapterHeader;
use std::fmt;

/// The newest bus protocol this build speaks. Version 2 numbers
/// broadcasts so that none is lost or repeated when the master dies
/// ([`ToMaster::Broadcast`], [`ToAgent::Relayed`], [`ToAgent::Acked`]);
/// the master sends version 1 peers what version 1 knows. Version 3 hands
/// the app's listening sockets to agents whose workers accept connections
/// themselves ([`ToAgent::Listener`], [`ToAgent::StopAccepting`]; config
/// `transports`), which an agent of version 2 or older would skip.
pub const PROTOCOL_VERSION: u16 = 3;
/// The first version in which agents take the app's listening sockets.
pub const LISTENERS_VERSION: u16 = 3;
/// The oldest bus protocol this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Largest frame accepted: Node adapter frames (a `fetchSockets()` answer
/// over many sockets) can be large, but not unbounded.
pub const MAX_FRAME: usize = 256 << 20;

/// Who is saying hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A worker agent for `slot` of `app`.
    Agent { app: String, slot: u16, pid: u32 },
    /// An operator tool (`sioctl`).
    Control,
}

/// Frames to the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToMaster {
    Hello {
        version: u16,
        role: Role,
    },
    /// The Node worker is ready for new sessions.
    Ready,
    SessionOpened(String),
    SessionClosed(String),
    /// Node acknowledged the handed-off connection (`NODE_HANDLE_ACK`).
    HandoffDone(u64),
    /// The connection did not reach Node; the master still holds it.
    HandoffFailed(u64),
    /// A cluster-adapter frame to relay; `frame` is Node's raw frame.
    Adapter {
        header: AdapterHeader,
        frame: Vec<u8>,
    },
    /// An adapter this worker runs (replayed after reconnecting, so that a
    /// new master can close it on the worker's behalf).
    AdapterSeen {
        uid: String,
        nsp: String,
    },
    /// A JSON request from `sioctl`.
    Control(Vec<u8>),
    /// Version 2's [`ToMaster::Adapter`]: numbered by the agent (from 1,
    /// per agent process) and kept until the master acknowledges it
    /// ([`ToAgent::Acked`]), then sent again to the next master if this
    /// one dies first.
    Broadcast {
        seq: u64,
        header: AdapterHeader,
        frame: Vec<u8>,
    },
}

/// Frames from the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToAgent {
    Welcome {
        version: u16,
    },
    Refused(String),
    /// Carries one fd: a client connection whose head is unread.
    Handoff(u64),
    /// A raw Node frame to write to the worker.
    Adapter(Vec<u8>),
    /// A JSON answer to a control request.
    ControlReply(Vec<u8>),
    /// Version 2's [`ToAgent::Adapter`] for a [`ToMaster::Broadcast`]: from
    /// the agent whose pid (the kernel's) is `origin`, so that a receiver
    /// can drop what a dead master's successor relays again.
    Relayed {
        origin: u32,
        seq: u64,
        frame: Vec<u8>,
    },
    /// Every [`ToMaster::Broadcast`] up to `seq` reached the sockets of
    /// every worker it was for: the agent may forget them.
    Acked(u64),
    /// Version 3. Carries one fd: listening socket `index` of `count` of
    /// the app, sent at welcome when its workers accept themselves. The
    /// agent starts its worker with all of them.
    Listener {
        index: u16,
        count: u16,
    },
    /// Version 3: the worker is being retired (scale down, reload) and,
    /// accepting itself, must take no new connection from now on.
    StopAccepting,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    UnknownTag(u8),
    BadUtf8,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => write!(f, "truncated frame"),
            WireError::UnknownTag(t) => write!(f, "unknown frame tag {t}"),
            WireError::BadUtf8 => write!(f, "string is not UTF-8"),
        }
    }
}

impl std::error::Error for WireError {}

/// Writes frames into a buffer.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Writer<'a> {
    fn begin(out: &'a mut Vec<u8>, tag: u8) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, tag]);
        Writer { out, start }
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32);
        self.out.extend_from_slice(s.as_bytes());
        self
    }
    fn rest(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }
    fn adapter(&mut self, header: &AdapterHeader) -> &mut Self {
        self.u32(header.kind).str(&header.uid).str(&header.nsp);
        match &header.requester_uid {
            Some(r) => self.rest(&[1]).str(r),
            None => self.rest(&[0]),
        }
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        let len = (self.out.len() - self.start - 4) as u32;
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Reads a frame body.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn str(&mut self) -> Result<String, WireError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| WireError::BadUtf8)
    }
    fn opt_str(&mut self) -> Result<Option<String>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.str().map(Some),
        }
    }
    fn adapter(&mut self) -> Result<AdapterHeader, WireError> {
        Ok(AdapterHeader { kind: self.u32()?, uid: self.str()?, nsp: self.str()?, requester_uid: self.opt_str()? })
    }
    fn rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.b).to_vec()
    }
    fn done<T>(&self, v: T) -> Result<T, WireError> {
        if self.b.is_empty() {
            Ok(v)
        } else {
            Err(WireError::Truncated)
        }
    }
}

/// A whole frame (length prefix included) of a message.
fn frame_of(encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out);
    out
}

impl ToMaster {
    pub fn to_frame(&self) -> Vec<u8> {
        frame_of(|out| self.encode(out))
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ToMaster::Hello { version, role } => {
                let mut w = Writer::begin(out, 1);
                w.u16(*version);
                match role {
                    Role::Agent { app, slot, pid } => w.rest(&[1]).str(app).u16(*slot).u32(*pid),
                    Role::Control => w.rest(&[2]),
                };
            }
            ToMaster::Ready => drop(Writer::begin(out, 2)),
            ToMaster::SessionOpened(sid) => drop(Writer::begin(out, 3).str(sid)),
            ToMaster::SessionClosed(sid) => drop(Writer::begin(out, 4).str(sid)),
            ToMaster::HandoffDone(id) => drop(Writer::begin(out, 5).u64(*id)),
            ToMaster::HandoffFailed(id) => drop(Writer::begin(out, 6).u64(*id)),
            ToMaster::Adapter { header, frame } => {
                Writer::begin(out, 7).adapter(header).rest(frame);
            }
            ToMaster::Broadcast { seq, header, frame } => {
                Writer::begin(out, 10).u64(*seq).adapter(header).rest(frame);
            }
            ToMaster::AdapterSeen { uid, nsp } => drop(Writer::begin(out, 8).str(uid).str(nsp)),
            ToMaster::Control(json) => drop(Writer::begin(out, 9).rest(json)),
        }
    }

    /// Decodes a frame body (tag included).
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { b: body };
        let msg = match r.u8()? {
            1 => {
                let version = r.u16()?;
                let role = match r.u8()? {
                    1 => Role::Agent { app: r.str()?, slot: r.u16()?, pid: r.u32()? },
                    2 => Role::Control,
                    t => return Err(WireError::UnknownTag(t)),
                };
                ToMaster::Hello { version, role }
            }
            2 => ToMaster::Ready,
            3 => ToMaster::SessionOpened(r.str()?),
            4 => ToMaster::SessionClosed(r.str()?),
            5 => ToMaster::HandoffDone(r.u64()?),
            6 => ToMaster::HandoffFailed(r.u64()?),
            7 => ToMaster::Adapter { header: r.adapter()?, frame: r.rest() },
            8 => ToMaster::AdapterSeen { uid: r.str()?, nsp: r.str()? },
            9 => ToMaster::Control(r.rest()),
            10 => ToMaster::Broadcast { seq: r.u64()?, header: r.adapter()?, frame: r.rest() },
            t => return Err(WireError::UnknownTag(t)),
        };
        r.done(msg)
    }
}

impl ToAgent {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ToAgent::Welcome { version } => drop(Writer::begin(out, 1).u16(*version)),
            ToAgent::Refused(reason) => drop(Writer::begin(out, 2).str(reason)),
            ToAgent::Handoff(id) => drop(Writer::begin(out, 3).u64(*id)),
            ToAgent::Adapter(frame) => drop(Writer::begin(out, 4).rest(frame)),
            ToAgent::ControlReply(json) => drop(Writer::begin(out, 5).rest(json)),
            ToAgent::Relayed { origin, seq, frame } => drop(Writer::begin(out, 6).u32(*origin).u64(*seq).rest(frame)),
            ToAgent::Acked(seq) => drop(Writer::begin(out, 7).u64(*seq)),
            ToAgent::Listener { index, count } => drop(Writer::begin(out, 8).u16(*index).u16(*count)),
            ToAgent::StopAccepting => drop(Writer::begin(out, 9)),
        }
    }

    pub fn to_frame(&self) -> Vec<u8> {
        frame_of(|out| self.encode(out))
    }

    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { b: body };
        let msg = match r.u8()? {
            1 => ToAgent::Welcome { version: r.u16()? },
            2 => ToAgent::Refused(r.str()?),
            3 => ToAgent::Handoff(r.u64()?),
            4 => ToAgent::Adapter(r.rest()),
            5 => ToAgent::ControlReply(r.rest()),
            6 => ToAgent::Relayed { origin: r.u32()?, seq: r.u64()?, frame: r.rest() },
            7 => ToAgent::Acked(r.u64()?),
            8 => ToAgent::Listener { index: r.u16()?, count: r.u16()? },
            9 => ToAgent::StopAccepting,
            t => return Err(WireError::UnknownTag(t)),
        };
        r.done(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The body of a whole frame, checking its length prefix.
    fn body(f: &[u8]) -> &[u8] {
        assert_eq!(u32::from_le_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
        &f[4..]
    }

    fn roundtrip_up(m: ToMaster) {
        assert_eq!(ToMaster::decode(body(&m.to_frame())).unwrap(), m);
    }

    #[test]
    fn every_frame_roundtrips() {
        roundtrip_up(ToMaster::Hello { version: 1, role: Role::Agent { app: "chat".into(), slot: 7, pid: 42 } });
        roundtrip_up(ToMaster::Hello { version: 1, role: Role::Control });
        roundtrip_up(ToMaster::Ready);
        roundtrip_up(ToMaster::SessionOpened("s".into()));
        roundtrip_up(ToMaster::SessionClosed("s".into()));
        roundtrip_up(ToMaster::HandoffDone(u64::MAX));
        roundtrip_up(ToMaster::HandoffFailed(3));
        roundtrip_up(ToMaster::Adapter {
            header: AdapterHeader { kind: 8, uid: "a".into(), nsp: "/".into(), requester_uid: Some("b".into()) },
            frame: vec![1, 2, 3],
        });
        roundtrip_up(ToMaster::AdapterSeen { uid: "a".into(), nsp: "/x".into() });
        roundtrip_up(ToMaster::Control(b"{}".to_vec()));
        roundtrip_up(ToMaster::Broadcast {
            seq: 7,
            header: AdapterHeader { kind: 2, uid: "a".into(), nsp: "/".into(), requester_uid: None },
            frame: vec![4, 5],
        });
        for m in [
            ToAgent::Welcome { version: 1 },
            ToAgent::Refused("no".into()),
            ToAgent::Handoff(9),
            ToAgent::Adapter(vec![0; 10]),
            ToAgent::ControlReply(b"[]".to_vec()),
            ToAgent::Relayed { origin: 42, seq: u64::MAX, frame: vec![1] },
            ToAgent::Acked(3),
            ToAgent::Listener { index: 1, count: 2 },
            ToAgent::StopAccepting,
        ] {
            let f = m.to_frame();
            assert_eq!(ToAgent::decode(body(&f)).unwrap(), m);
        }
    }

    #[test]
    fn truncated_bodies_and_trailing_bytes_are_errors() {
        let f = ToMaster::SessionOpened("abc".into()).to_frame();
        assert_eq!(ToMaster::decode(&f[4..f.len() - 1]), Err(WireError::Truncated));
        let mut long = f[4..].to_vec();
        long.push(0);
        assert_eq!(ToMaster::decode(&long), Err(WireError::Truncated));
        assert_eq!(ToMaster::decode(&[]), Err(WireError::Truncated));
        assert_eq!(ToMaster::decode(&[200]), Err(WireError::UnknownTag(200)));
    }

    /// Version 1 on the wire, byte for byte: agents built from older code
    /// send and expect exactly these, so they must never change.
    #[test]
    fn version_1_frames_are_pinned() {
        let adapter = AdapterHeader { kind: 8, uid: "a".into(), nsp: "/".into(), requester_uid: Some("b".into()) };
        let up: &[(ToMaster, &[u8])] = &[
            (
                ToMaster::Hello { version: 1, role: Role::Agent { app: "chat".into(), slot: 7, pid: 42 } },
                b"\x12\0\0\0\x01\x01\0\x01\x04\0\0\0chat\x07\0\x2a\0\0\0",
            ),
            (ToMaster::Hello { version: 1, role: Role::Control }, b"\x04\0\0\0\x01\x01\0\x02"),
            (ToMaster::Ready, b"\x01\0\0\0\x02"),
            (ToMaster::SessionOpened("s1".into()), b"\x07\0\0\0\x03\x02\0\0\0s1"),
            (ToMaster::SessionClosed("s1".into()), b"\x07\0\0\0\x04\x02\0\0\0s1"),
            (ToMaster::HandoffDone(258), b"\x09\0\0\0\x05\x02\x01\0\0\0\0\0\0"),
            (ToMaster::HandoffFailed(1), b"\x09\0\0\0\x06\x01\0\0\0\0\0\0\0"),
            (
                ToMaster::Adapter { header: adapter, frame: vec![9, 9] },
                b"\x17\0\0\0\x07\x08\0\0\0\x01\0\0\0a\x01\0\0\0/\x01\x01\0\0\0b\x09\x09",
            ),
            (ToMaster::AdapterSeen { uid: "a".into(), nsp: "/".into() }, b"\x0b\0\0\0\x08\x01\0\0\0a\x01\0\0\0/"),
            (ToMaster::Control(b"{}".to_vec()), b"\x03\0\0\0\x09{}"),
        ];
        for (msg, bytes) in up {
            assert_eq!(&msg.to_frame(), bytes, "{msg:?}");
            assert_eq!(&ToMaster::decode(&bytes[4..]).unwrap(), msg);
        }
        let down: &[(ToAgent, &[u8])] = &[
            (ToAgent::Welcome { version: 1 }, b"\x03\0\0\0\x01\x01\0"),
            (ToAgent::Refused("no".into()), b"\x07\0\0\0\x02\x02\0\0\0no"),
            (ToAgent::Handoff(3), b"\x09\0\0\0\x03\x03\0\0\0\0\0\0\0"),
            (ToAgent::Adapter(vec![1, 2]), b"\x03\0\0\0\x04\x01\x02"),
            (ToAgent::ControlReply(b"[]".to_vec()), b"\x03\0\0\0\x05[]"),
        ];
        for (msg, bytes) in down {
            assert_eq!(&msg.to_frame(), bytes, "{msg:?}");
            assert_eq!(&ToAgent::decode(&bytes[4..]).unwrap(), msg);
        }
    }

    /// The frames version 2 added (version 1's stay as pinned above).
    #[test]
    fn version_2_frames_are_pinned() {
        let header = AdapterHeader { kind: 2, uid: "a".into(), nsp: "/".into(), requester_uid: None };
        let frame = ToMaster::Broadcast { seq: 3, header, frame: vec![9] };
        let bytes: &[u8] = b"\x19\0\0\0\x0a\x03\0\0\0\0\0\0\0\x02\0\0\0\x01\0\0\0a\x01\0\0\0/\0\x09";
        assert_eq!(frame.to_frame(), bytes);
        assert_eq!(ToMaster::decode(&bytes[4..]).unwrap(), frame);
        let down: &[(ToAgent, &[u8])] = &[
            (
                ToAgent::Relayed { origin: 42, seq: 3, frame: vec![9] },
                b"\x0e\0\0\0\x06\x2a\0\0\0\x03\0\0\0\0\0\0\0\x09",
            ),
            (ToAgent::Acked(258), b"\x09\0\0\0\x07\x02\x01\0\0\0\0\0\0"),
        ];
        for (msg, bytes) in down {
            assert_eq!(&msg.to_frame(), bytes, "{msg:?}");
            assert_eq!(&ToAgent::decode(&bytes[4..]).unwrap(), msg);
        }
    }

    /// The frames version 3 added.
    #[test]
    fn version_3_frames_are_pinned() {
        let down: &[(ToAgent, &[u8])] = &[
            (ToAgent::Listener { index: 1, count: 2 }, b"\x05\0\0\0\x08\x01\0\x02\0"),
            (ToAgent::StopAccepting, b"\x01\0\0\0\x09"),
        ];
        for (msg, bytes) in down {
            assert_eq!(&msg.to_frame(), bytes, "{msg:?}");
            assert_eq!(&ToAgent::decode(&bytes[4..]).unwrap(), msg);
        }
    }

    #[test]
    fn an_unknown_tag_is_its_own_error_so_receivers_can_skip_it() {
        assert_eq!(ToMaster::decode(&[99, 1, 2, 3]), Err(WireError::UnknownTag(99)));
        assert_eq!(ToAgent::decode(&[99]), Err(WireError::UnknownTag(99)));
    }

    proptest! {
        #[test]
        fn hostile_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ToMaster::decode(&body);
            let _ = ToAgent::decode(&body);
        }
    }
}
