//! The parent's end of Node's IPC channel: the socketpair, and the
//! discipline that keeps every `NODE_HANDLE` with its own fd.
//!
//! Node gives the fd received with a read to the `NODE_HANDLE` message that
//! read completes (the design notes, section 1.4). Linux ends a read after
//! the segment that carries an fd, and Node reads 64 KiB at a time (libuv's
//! suggested size), so a handle message whose segment is whole in the read
//! that brings its fd gets its own fd. A handle sent while few bytes wait
//! unread before it ([`PIPELINE_BYTES`], counted by the kernel) is read that
//! way, and such handles can be in flight together: a burst of connections
//! costs one wake-up of the worker, not one round trip each. A handle sent
//! behind more waits alone for its answer, as Node's own parent makes
//! every handle wait: read in two pieces, its message would otherwise
//! complete with the next handle's fd.
//!
//! Other messages wait while handles are in flight (a plain message read
//! with a handle would overtake it; both verified), and handles sent after
//! a waiting message wait behind it, so a stream of connections never
//! starves the broadcasts. On ACK the parent closes its copy of the fd
//! (keeping it would stop a worker's `destroy()` from reaching the client);
//! on NACK it resends, at most [`MAX_RETRANSMISSIONS`] times. Node answers
//! handles in the order they were sent.

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

/// Bytes at most unread before a handle (its own included) for it to join
/// handles in flight: half of Node's 64 KiB read, since the kernel counts
/// whole socket buffers (about 1 KiB for a handle message of 88 bytes).
pub const PIPELINE_BYTES: usize = 32 * 1024;

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
    /// Sent with at most [`PIPELINE_BYTES`] unread before it: Node reads
    /// its message whole with its fd.
    whole: bool,
}

#[derive(Default)]
struct Discipline {
    /// Oldest first: the order Node answers in.
    in_flight: VecDeque<InFlight>,
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
    /// once every handle in flight is answered.
    pub fn send_frame(&self, frame: Bytes) {
        let mut d = self.discipline.borrow_mut();
        if d.in_flight.is_empty() {
            self.link.send_soon(frame);
        } else {
            d.held_bytes += frame.len();
            d.held.push_back(Held::Frame(frame));
        }
    }

    /// Hands a connection to the child (`sticky:connection`).
    pub fn send_handle(&self, id: u64, fd: OwnedFd) {
        let mut d = self.discipline.borrow_mut();
        if d.held.is_empty() {
            if let Some(whole) = self.may_launch(&d) {
                return self.launch(&mut d, id, fd, whole);
            }
        }
        d.held.push_back(Held::Handle { id, fd });
    }

    /// Whether a handle may go now: alone, or read whole joining handles
    /// that are all read whole. If it may, whether it is read whole (see
    /// [`InFlight::whole`]); `SIOCOUTQ` is asked only when that can matter.
    fn may_launch(&self, d: &Discipline) -> Option<bool> {
        if d.in_flight.iter().any(|f| !f.whole) {
            return None;
        }
        let whole = self.would_be_whole();
        (whole || d.in_flight.is_empty()).then_some(whole)
    }

    /// Whether a handle sent now would have at most [`PIPELINE_BYTES`]
    /// unread before it, its own bytes included.
    fn would_be_whole(&self) -> bool {
        let before = self.link.unread_by_peer().saturating_add(self.link.queued_bytes());
        before.saturating_add(self.handoff_frame.len()) <= PIPELINE_BYTES
    }

    fn launch(&self, d: &mut Discipline, id: u64, fd: OwnedFd, whole: bool) {
        let fd = Rc::new(fd);
        self.link.send(self.handoff_frame.clone(), Some(fd.clone()));
        d.in_flight.push_back(InFlight { id, fd, retransmissions: 0, sent: Instant::now(), whole });
        self.handle_sent.notify_one();
    }

    /// Sends what was held, in order, as far as the discipline lets it:
    /// frames once no handle is in flight, handles as [`Self::may_launch`].
    fn release(&self, d: &mut Discipline) {
        loop {
            match d.held.front() {
                Some(Held::Frame(_)) if d.in_flight.is_empty() => {
                    let Some(Held::Frame(f)) = d.held.pop_front() else { unreachable!("a frame is in front") };
                    d.held_bytes -= f.len();
                    self.link.send_soon(f);
                }
                Some(Held::Handle { .. }) => {
                    let Some(whole) = self.may_launch(d) else {
                        return;
                    };
                    let Some(Held::Handle { id, fd }) = d.held.pop_front() else {
                        unreachable!("a handle is in front")
                    };
                    self.launch(d, id, fd, whole);
                }
                _ => return,
            }
        }
    }

    /// `NODE_HANDLE_ACK`: the child has the oldest fd in flight. Returns
    /// its handoff id.
    pub fn acked(&self) -> Option<u64> {
        let mut d = self.discipline.borrow_mut();
        let done = d.in_flight.pop_front()?;
        // Dropping our Rc closes our copy (the link's queue let go of its
        // own when the frame went out, which it has: the child answered).
        drop(done.fd);
        self.release(&mut d);
        Some(done.id)
    }

    /// `NODE_HANDLE_NACK`: the oldest fd in flight did not arrive with its
    /// message. Resends it (behind the others in flight: Node answers in
    /// order), or gives up and returns the id of the connection that failed.
    pub fn nacked(&self) -> Option<u64> {
        let mut d = self.discipline.borrow_mut();
        let mut flight = d.in_flight.pop_front()?;
        if flight.retransmissions < MAX_RETRANSMISSIONS {
            flight.retransmissions += 1;
            flight.sent = Instant::now();
            // Where it lands is not known: nothing joins it until answered.
            flight.whole = false;
            self.link.send(self.handoff_frame.clone(), Some(flight.fd.clone()));
            d.in_flight.push_back(flight);
            self.handle_sent.notify_one();
            return None;
        }
        self.release(&mut d);
        Some(flight.id)
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

    /// Since when the oldest handle in flight waits for its answer, if one
    /// does.
    pub fn unanswered_since(&self) -> Option<Instant> {
        self.discipline.borrow().in_flight.front().map(|f| f.sent)
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
        let mut ids: Vec<u64> = d.in_flight.drain(..).map(|f| f.id).collect();
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
            let next = tokio::time::timeout(Duration::from_secs(5), self.reader.next(&self.link));
            let payload = next.await.expect("a frame within 5 s").unwrap().unwrap().to_vec();
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

    /// A socket, and its inode to know it again in the child.
    fn a_socket_and_inode() -> (OwnedFd, u64) {
        let sock = a_socket();
        let inode = inode(&sock);
        (sock, inode)
    }

    fn inode(fd: &OwnedFd) -> u64 {
        nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_ino
    }

    #[test]
    fn handles_go_together_and_a_message_waits_for_every_answer() {
        crate::up::block_on(async {
            let (channel, mut child) = pair();
            let (one, two, three) = (a_socket_and_inode(), a_socket_and_inode(), a_socket_and_inode());
            channel.send_handle(1, one.0);
            channel.send_handle(2, two.0);
            channel.send_frame(Rc::new(b"\0\0\0\x01x".to_vec()));
            channel.send_handle(3, three.0);
            for (n, expected) in [(1, one.1), (2, two.1)] {
                let (payload, fd) = child.next().await;
                assert!(payload == channel.handoff_frame[4..], "handle {n}, before any answer");
                assert_eq!(fd.map(|f| inode(&f)), Some(expected), "handle {n} with its own connection");
            }
            assert!(child.quiet().await, "the message waits for both answers, the third handle behind it");
            assert_eq!(channel.acked(), Some(1));
            assert!(child.quiet().await, "handle 2 is still in flight");
            assert_eq!(channel.acked(), Some(2));
            let (held, fd) = child.next().await;
            assert!(held == b"x" && fd.is_none(), "then the message, in order");
            let (_, fd) = child.next().await;
            assert_eq!(fd.map(|f| inode(&f)), Some(three.1), "then handle 3");
            assert!(child.quiet().await);
            assert_eq!(channel.acked(), Some(3));
            assert_eq!(channel.acked(), None);
        });
    }

    #[test]
    fn a_handle_behind_unread_bytes_waits_alone_for_its_answer() {
        // Read in two pieces, its message would complete with the next
        // handle's fd: nothing joins it.
        crate::up::block_on(async {
            let (channel, mut child) = pair();
            let mut big = (40_000u32).to_be_bytes().to_vec();
            big.resize(4 + 40_000, b'.');
            channel.send_frame(Rc::new(big));
            tokio::task::yield_now().await;
            let (one, two) = (a_socket_and_inode(), a_socket_and_inode());
            channel.send_handle(1, one.0);
            channel.send_handle(2, two.0);
            assert_eq!(child.next().await.0.len(), 40_000, "the frame first");
            assert_eq!(child.next().await.1.map(|f| inode(&f)), Some(one.1), "then handle 1");
            assert!(child.quiet().await, "handle 2 waits for handle 1's answer");
            assert_eq!(channel.acked(), Some(1));
            assert_eq!(child.next().await.1.map(|f| inode(&f)), Some(two.1), "then handle 2");
            assert_eq!(channel.acked(), Some(2));
        });
    }

    #[test]
    fn a_nacked_handle_is_sent_again_behind_the_others_and_goes_alone() {
        crate::up::block_on(async {
            let (channel, mut child) = pair();
            let (one, two, three) = (a_socket_and_inode(), a_socket_and_inode(), a_socket_and_inode());
            channel.send_handle(1, one.0);
            channel.send_handle(2, two.0);
            child.next().await;
            child.next().await;
            assert_eq!(channel.nacked(), None, "handle 1 NACKed: sent again");
            assert_eq!(child.next().await.1.map(|f| inode(&f)), Some(one.1), "handle 1 again, behind handle 2");
            channel.send_handle(3, three.0);
            assert!(child.quiet().await, "nothing joins a resent handle");
            assert_eq!(channel.acked(), Some(2), "Node answers in order: handle 2 first");
            assert!(child.quiet().await, "handle 3 still waits for the resent one");
            assert_eq!(channel.acked(), Some(1));
            assert_eq!(child.next().await.1.map(|f| inode(&f)), Some(three.1));
            assert_eq!(channel.acked(), Some(3));
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
