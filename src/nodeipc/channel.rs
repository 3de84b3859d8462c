//! The parent's end of Node's IPC channel: the socketpair, and the
//! one-handle-in-flight discipline Node's own parent follows.
//!
//! While a `NODE_HANDLE` waits for its `NODE_HANDLE_ACK`/`NACK`, every
//! other message to the child is held: Node keeps only the latest received
//! fd as "pending", so a second handle in flight can give connection 2's
//! socket to message 1, and a plain message right after a handle can
//! overtake it (both verified; see the design notes, section 1.4). On ACK
//! the parent closes its copy of the fd (keeping it would stop a worker's
//! `destroy()` from reaching the client); on NACK it resends, at most
//! [`MAX_RETRANSMISSIONS`] times.

use crate::handoff::{Bytes, Link, OwnedLink};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub const MAX_RETRANSMISSIONS: u8 = 3;

enum Held {
    Frame(Bytes),
    Handle { id: u64, fd: OwnedFd },
}

struct InFlight {
    id: u64,
    fd: Rc<OwnedFd>,
    retransmissions: u8,
    /// When it was (last) sent: Node answers within milliseconds unless
    /// its event loop is stuck (see [`NodeChannel::unanswered_since`]).
    sent: Instant,
}

#[derive(Default)]
struct Discipline {
    in_flight: Option<InFlight>,
    held: VecDeque<Held>,
    /// Bytes of the frames in `held` (they count as queued for backpressure).
    held_bytes: usize,
}

/// The parent's end of a Node child's IPC channel.
pub struct NodeChannel {
    link: OwnedLink,
    discipline: RefCell<Discipline>,
    /// Woken when a handle is sent (a new one to watch for its answer).
    handle_sent: Notify,
    /// `{cmd:"NODE_HANDLE", ...sticky:connection}`, the same for every handoff.
    handoff_frame: Bytes,
}

/// The child's end, to be inherited as `NODE_CHANNEL_FD`.
pub struct ChildEnd(OwnedFd);

impl ChildEnd {
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// To call between fork and exec: lets exactly this fd cross `exec`.
    pub fn inherit_in_child(fd: RawFd) -> std::io::Result<()> {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map(drop).map_err(std::io::Error::from)
    }
}

impl NodeChannel {
    /// A socketpair: both ends close-on-exec, so no other child inherits
    /// ours (a leaked parent end would keep the channel open after the
    /// parent closed it, and the worker would never see EOF).
    pub fn pair() -> std::io::Result<(Rc<NodeChannel>, ChildEnd)> {
        let (parent, child) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)?;
        let parent = std::os::unix::net::UnixStream::from(parent);
        parent.set_nonblocking(true)?;
        let link = Link::spawn(tokio::net::UnixStream::from_std(parent)?)?;
        let channel = NodeChannel {
            link,
            discipline: RefCell::default(),
            handle_sent: Notify::new(),
            handoff_frame: super::sticky_handoff_frame().into(),
        };
        Ok((Rc::new(channel), ChildEnd(child)))
    }

    pub fn link(&self) -> &Rc<Link> {
        &self.link
    }

    /// Sends a frame soon (with the others of this turn, in one write), or
    /// after the handle in flight is acknowledged.
    pub fn send_frame(&self, frame: Bytes) {
        let mut d = self.discipline.borrow_mut();
        if d.in_flight.is_some() {
            d.held_bytes += frame.len();
            d.held.push_back(Held::Frame(frame));
        } else {
            self.link.send_soon(frame);
        }
    }

    /// Hands a connection to the child (`sticky:connection`).
    pub fn send_handle(&self, id: u64, fd: OwnedFd) {
        let mut d = self.discipline.borrow_mut();
        if d.in_flight.is_some() {
            d.held.push_back(Held::Handle { id, fd });
        } else {
            self.launch(&mut d, id, fd);
        }
    }

    fn launch(&self, d: &mut Discipline, id: u64, fd: OwnedFd) {
        let fd = Rc::new(fd);
        self.link.send(self.handoff_frame.clone(), Some(fd.clone()));
        d.in_flight = Some(InFlight { id, fd, retransmissions: 0, sent: Instant::now() });
        self.handle_sent.notify_one();
    }

    /// Sends held messages up to (and including) the next handle.
    fn release(&self, d: &mut Discipline) {
        while let Some(h) = d.held.pop_front() {
            match h {
                Held::Frame(f) => {
                    d.held_bytes -= f.len();
                    self.link.send_soon(f)
                }
                Held::Handle { id, fd } => return self.launch(d, id, fd),
            }
        }
    }

    /// `NODE_HANDLE_ACK`: the child has the fd. Returns the handoff id.
    pub fn acked(&self) -> Option<u64> {
        let mut d = self.discipline.borrow_mut();
        let done = d.in_flight.take()?;
        // Dropping our Rc closes our copy (the link's queue let go of its
        // own when the frame went out, which it has: the child answered).
        drop(done.fd);
        self.release(&mut d);
        Some(done.id)
    }

    /// `NODE_HANDLE_NACK`: the fd did not arrive with the message. Resends,
    /// or gives up and returns the id of the connection that failed.
    pub fn nacked(&self) -> Option<u64> {
        let mut d = self.discipline.borrow_mut();
        let flight = d.in_flight.as_mut()?;
        if flight.retransmissions < MAX_RETRANSMISSIONS {
            flight.retransmissions += 1;
            flight.sent = Instant::now();
            self.link.send(self.handoff_frame.clone(), Some(flight.fd.clone()));
            return None;
        }
        let failed = d.in_flight.take().map(|f| f.id);
        self.release(&mut d);
        failed
    }

    /// Bytes waiting for the child: in the link's queue, and held behind a
    /// handle in flight.
    pub fn queued_bytes(&self) -> usize {
        self.link.queued_bytes() + self.discipline.borrow().held_bytes
    }

    /// Waits until at most `limit` bytes wait for the child (or the channel
    /// closed): backpressure for whoever feeds it.
    pub async fn room_for(&self, limit: usize) {
        while self.queued_bytes() > limit && !self.link.is_closed() {
            self.link.drained().await;
        }
    }

    /// Since when the handle in flight waits for its answer, if one does.
    pub fn unanswered_since(&self) -> Option<Instant> {
        self.discipline.borrow().in_flight.as_ref().map(|f| f.sent)
    }

    /// Returns once a handle has waited `limit` for its answer: the child's
    /// event loop is stuck (it answers within milliseconds otherwise).
    pub async fn unanswered_for(&self, limit: Duration) {
        loop {
            let Some(sent) = self.unanswered_since() else {
                self.handle_sent.notified().await;
                continue;
            };
            tokio::time::sleep_until((sent + limit).into()).await;
            if self.unanswered_since() == Some(sent) {
                return;
            }
        }
    }

    /// The child is gone: the ids of every connection it never got.
    pub fn abandon(&self) -> Vec<u64> {
        let mut d = self.discipline.borrow_mut();
        let mut ids: Vec<u64> = d.in_flight.take().map(|f| f.id).into_iter().collect();
        ids.extend(d.held.drain(..).filter_map(|h| match h {
            Held::Handle { id, .. } => Some(id),
            Held::Frame(_) => None,
        }));
        d.held_bytes = 0;
        self.link.close();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::{FrameReader, Prefix};

    /// Plays Node's side of the channel: reads what the parent sends.
    struct FakeChild {
        link: OwnedLink,
        reader: FrameReader,
    }

    impl FakeChild {
        /// The next frame's payload, and the fd Node would give it: like
        /// Node, the oldest fd received goes to the next `NODE_HANDLE`.
        async fn next(&mut self) -> (Vec<u8>, Option<OwnedFd>) {
            let payload = self.reader.next(&self.link).await.unwrap().unwrap().to_vec();
            let is_handle = payload == super::super::sticky_handoff_frame()[4..];
            let fd = if is_handle { self.reader.fds.pop_front() } else { None };
            (payload, fd)
        }

        /// Whether nothing more arrives within a short while.
        async fn quiet(&mut self) -> bool {
            tokio::time::timeout(std::time::Duration::from_millis(50), self.reader.next(&self.link)).await.is_err()
        }
    }

    /// A channel, and Node's end of it.
    fn pair() -> (Rc<NodeChannel>, FakeChild) {
        let (channel, child) = NodeChannel::pair().unwrap();
        let child = std::os::unix::net::UnixStream::from(child.0);
        child.set_nonblocking(true).unwrap();
        let link = Link::spawn(tokio::net::UnixStream::from_std(child).unwrap()).unwrap();
        (channel, FakeChild { link, reader: FrameReader::new(Prefix::Node, 1 << 20) })
    }

    fn a_socket() -> OwnedFd {
        let (a, _b) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).unwrap();
        a
    }

    #[test]
    fn one_handle_in_flight_others_held_until_ack() {
        crate::up::block_on(async {
            let (channel, mut child) = pair();
            channel.send_handle(1, a_socket());
            channel.send_frame(Rc::new(b"\0\0\0\x01x".to_vec()));
            channel.send_handle(2, a_socket());
            let (first, fd) = child.next().await;
            assert!(fd.is_some() && first == channel.handoff_frame[4..], "the first handle, with its fd");
            assert!(child.quiet().await, "nothing else before the ACK");
            assert_eq!(channel.acked(), Some(1));
            let (held, fd) = child.next().await;
            assert!(held == b"x" && fd.is_none(), "then the held message, in order");
            assert!(child.next().await.1.is_some(), "then the second handle, with its fd");
            assert!(child.quiet().await);
            assert_eq!(channel.acked(), Some(2));
        });
    }

    #[test]
    fn nack_resends_the_same_handle_then_gives_up() {
        crate::up::block_on(async {
            let (channel, mut child) = pair();
            let sock = a_socket();
            let inode = nix::sys::stat::fstat(sock.as_raw_fd()).unwrap().st_ino;
            channel.send_handle(7, sock);
            // The first send and each retransmission carry the same connection.
            for _ in 0..MAX_RETRANSMISSIONS {
                let fd = child.next().await.1.expect("an fd");
                assert_eq!(nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_ino, inode);
                assert_eq!(channel.nacked(), None, "NACK: sent again");
            }
            let fd = child.next().await.1.expect("an fd");
            assert_eq!(nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_ino, inode);
            assert_eq!(
                channel.nacked(),
                Some(7),
                "after {MAX_RETRANSMISSIONS} retransmissions the connection is handed back"
            );
            assert_eq!(channel.abandon(), Vec::<u64>::new());
        });
    }
}
