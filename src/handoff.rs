//! File descriptor handoff over Unix stream sockets (`SCM_RIGHTS`).
//!
//! [`Link`] is the one transport under both the bus (master <-> agent) and
//! Node's IPC channel (agent <-> Node): a non-blocking Unix stream with an
//! outgoing queue in which an item may carry one fd. The fd goes on the
//! `sendmsg` that carries the item's first byte, which is what libuv does
//! and expects; after a partial write the rest goes without control data.
//! Received fds are queued in arrival order: Linux ends a read after a
//! segment that carries fds, so each fd is seen before the bytes of any
//! later frame, and the oldest queued fd belongs to the next frame that
//! expects one.
//!
//! Single-threaded by design (`Rc`, `RefCell`): the master and the agent
//! each run one current-thread runtime, so no locks sit on the handoff path.
//!
//! Wake-ups cost more than the work they carry on the handoff path, so a
//! link asks the reactor only for what it waits for: readability always,
//! writability only while the socket is full (Linux signals a Unix socket's
//! write space on every read by its peer: a standing registration woke the
//! agent once per handoff for nothing).

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// Registers a descriptor this code owns with the reactor, for `interest`.
pub(crate) fn watch<T: AsRawFd>(owned: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `owned` owns its descriptor (an OwnedFd or a std listener),
    // so it stays open and the same until the AsyncFd lets go of it.
    unsafe { AsyncFd::register_with_interest(owned, interest) }.map_err(|e| e.into_parts().1)
}

/// Bytes to write, shared so that one relayed frame can sit in many queues
/// (an `Rc<Vec>` takes a `Vec` over without copying it).
pub type Bytes = Rc<Vec<u8>>;

struct Outgoing {
    data: Bytes,
    written: usize,
    /// Sent with the first byte; shared with whoever must keep the fd
    /// open until the receiver confirms it (the master's in-flight table).
    fd: Option<Rc<OwnedFd>>,
}

/// A framed, fd-carrying, non-blocking Unix stream. See the module docs.
pub struct Link {
    /// Registered for readability only; see [`Link::write_loop`] for
    /// writability.
    socket: AsyncFd<OwnedFd>,
    queue: RefCell<VecDeque<Outgoing>>,
    queued_bytes: Cell<usize>,
    /// Bytes ever queued and ever written: a position in the stream (see
    /// [`Link::position`]).
    queued_total: Cell<u64>,
    written_total: Cell<u64>,
    wake_writer: Notify,
    /// Woken when queued bytes were written (see [`Link::drained`]).
    drained: Notify,
    closed: Cell<bool>,
}

/// Sends `data` (one buffer or several, written in order) with `fd`
/// attached, never blocking, never raising SIGPIPE.
fn send_some(sock: RawFd, data: &[IoSlice], fd: Option<RawFd>) -> io::Result<usize> {
    let fds;
    let cmsgs: &[ControlMessage] = match fd {
        Some(f) => {
            fds = [f];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    sendmsg::<()>(sock, data, cmsgs, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT, None).map_err(io::Error::from)
}

/// Queued items written by one `sendmsg` at most (well under `IOV_MAX`).
const MAX_GATHER: usize = 64;

/// Reads into `buf`, appending any received fds to `fds` (close-on-exec).
fn recv_some(sock: RawFd, buf: &mut [u8], fds: &mut VecDeque<OwnedFd>) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 16]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: the kernel just created these descriptors for us.
            fds.extend(received.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other("control data truncated: a peer sent more fds than one frame carries"));
    }
    Ok(msg.bytes)
}

/// The owner of a [`Link`]: whoever reads from it. Dropping the owner
/// closes the link, so every way out of a reading task (an early return,
/// an error) also ends the link's writer task and lets the socket go; a
/// link cannot exist without one. Others hold `Rc<Link>` clones to send.
pub struct OwnedLink(Rc<Link>);

impl std::ops::Deref for OwnedLink {
    type Target = Rc<Link>;
    fn deref(&self) -> &Rc<Link> {
        &self.0
    }
}

impl Drop for OwnedLink {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Link {
    /// A link over `stream`, with its writer task running on the current
    /// `LocalSet` until the link closes (or fails).
    pub fn spawn(stream: UnixStream) -> io::Result<OwnedLink> {
        let socket = watch(OwnedFd::from(stream.into_std()?), Interest::READABLE)?;
        let link = Rc::new(Link {
            socket,
            queue: RefCell::default(),
            queued_bytes: Cell::new(0),
            queued_total: Cell::new(0),
            written_total: Cell::new(0),
            wake_writer: Notify::new(),
            drained: Notify::new(),
            closed: Cell::new(false),
        });
        tokio::task::spawn_local({
            let link = link.clone();
            async move { link.write_loop().await }
        });
        Ok(OwnedLink(link))
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Bytes written that the peer has not read yet, as the kernel counts
    /// them (`SIOCOUTQ`: whole socket buffers, so more than the payload);
    /// `usize::MAX` if it cannot say.
    pub fn unread_by_peer(&self) -> usize {
        let mut unread: nix::libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) stores one int through the pointer.
        let r = unsafe { nix::libc::ioctl(self.socket.as_raw_fd(), nix::libc::TIOCOUTQ, &mut unread) };
        if r == 0 {
            usize::try_from(unread).unwrap_or(0)
        } else {
            usize::MAX
        }
    }

    /// Where the stream ends once what is queued now is written: pass it to
    /// [`Link::written_through`].
    pub fn position(&self) -> u64 {
        self.queued_total.get()
    }

    /// Returns once the stream up to `position` is in the kernel (then it
    /// reaches the peer even if this process dies), or the link closed.
    pub async fn written_through(&self, position: u64) {
        loop {
            let progress = self.drained.notified();
            if self.is_written_through(position) {
                return;
            }
            progress.await;
        }
    }

    /// Whether the stream up to `position` is in the kernel (or the link closed).
    pub fn is_written_through(&self, position: u64) -> bool {
        self.closed.get() || self.written_total.get() >= position
    }

    /// Marks the link dead: queued items are dropped (fds closed), further
    /// sends are ignored, and the socket is shut down both ways, so that the
    /// peer and this side's reading task see EOF at once (the fd itself
    /// closes when the last `Rc` goes).
    pub fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        let _ = nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
        self.wake_writer.notify_one();
        self.drained.notify_waiters();
    }

    /// Queues `data` (with `fd` on its first byte) and writes as much as the
    /// socket takes right now; the writer task sends the rest.
    pub fn send(&self, data: Bytes, fd: Option<Rc<OwnedFd>>) {
        if !self.enqueue(data, fd) {
            return;
        }
        match self.flush_now() {
            Ok(true) => {}
            Ok(false) => self.wake_writer.notify_one(),
            // A write error (ENOBUFS, ETOOMANYREFS, ...) ends the link:
            // carrying on would silently black-hole what follows.
            Err(_) => self.close(),
        }
    }

    /// Queues `data` for the writer task, which writes it together with
    /// whatever else is queued by the time it runs (once the calling task
    /// yields), in one `sendmsg`. For bursts, such as the broadcasts of
    /// one read relayed to a worker: a write per frame costs more than the
    /// frames. Ordered with [`Link::send`]: one queue.
    pub fn send_soon(&self, data: Bytes) {
        if self.enqueue(data, None) {
            self.wake_writer.notify_one();
        }
    }

    /// Appends to the queue; whether it was empty (nobody is writing yet).
    fn enqueue(&self, data: Bytes, fd: Option<Rc<OwnedFd>>) -> bool {
        if self.closed.get() {
            return false;
        }
        self.queued_bytes.set(self.queued_bytes.get() + data.len());
        self.queued_total.set(self.queued_total.get() + data.len() as u64);
        let mut q = self.queue.borrow_mut();
        q.push_back(Outgoing { data, written: 0, fd });
        q.len() == 1
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Returns once some queued bytes were written (or the link closed).
    pub async fn drained(&self) {
        if !self.closed.get() {
            self.drained.notified().await;
        }
    }

    /// Writes queued items until the socket would block, up to
    /// [`MAX_GATHER`] of them per `sendmsg`: the front item's fd goes with
    /// the first byte of the write, and a later item with an fd starts a
    /// write of its own. `Ok(true)` when the queue is empty.
    fn flush_now(&self) -> io::Result<bool> {
        let sock = self.socket.as_raw_fd();
        loop {
            let mut q = self.queue.borrow_mut();
            let Some(front) = q.front() else {
                return Ok(true);
            };
            let fd = if front.written == 0 { front.fd.as_ref().map(|f| f.as_raw_fd()) } else { None };
            let slices: Vec<IoSlice> = std::iter::once(&front.data[front.written..])
                .chain(q.iter().skip(1).take_while(|item| item.fd.is_none()).map(|item| &item.data[..]))
                .take(MAX_GATHER)
                .map(IoSlice::new)
                .collect();
            let r = send_some(sock, &slices, fd);
            drop(slices);
            match r {
                Ok(n) => {
                    self.queued_bytes.set(self.queued_bytes.get() - n);
                    self.written_total.set(self.written_total.get() + n as u64);
                    self.drained.notify_waiters();
                    let mut left = n;
                    while let Some(item) = q.front_mut() {
                        let taken = left.min(item.data.len() - item.written);
                        item.written += taken;
                        left -= taken;
                        if item.written < item.data.len() {
                            break;
                        }
                        q.pop_front();
                        if left == 0 {
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The writer: runs until the link is closed. A write error closes it
    /// (see [`Link::close`]), so the reading side tears the peer down.
    ///
    /// Writability is watched through a duplicate of the socket registered
    /// for it alone, and only while the socket is full: most writes never
    /// wait, and a standing registration would wake this process at every
    /// read of the peer.
    async fn write_loop(&self) {
        let mut full: Option<AsyncFd<OwnedFd>> = None;
        while !self.closed.get() {
            match self.flush_now() {
                Ok(true) => {
                    full = None;
                    self.wake_writer.notified().await;
                }
                Ok(false) => {
                    if full.is_none() {
                        match self.socket.get_ref().try_clone().and_then(|dup| watch(dup, Interest::WRITABLE)) {
                            Ok(watch) => full = Some(watch),
                            Err(_) => break,
                        }
                    }
                    let watch = full.as_ref().expect("registered above");
                    // Readiness seen now is consumed: the next flush finds
                    // the space it announced, and a later edge is kept.
                    match watch.writable().await {
                        Ok(mut ready) => ready.clear_ready(),
                        Err(_) => break,
                    }
                }
                Err(_) => break,
            }
        }
        self.close();
    }

    /// Reads what is available into `into` and received fds into `fds`,
    /// waiting until something is. `Ok(0)` is EOF.
    pub async fn read(&self, into: &mut [u8], fds: &mut VecDeque<OwnedFd>) -> io::Result<usize> {
        loop {
            // Readiness stays until a read finds nothing: that read often
            // finds what arrived meanwhile, so a relaying task handles more
            // frames per wake-up and its writes gather more of them.
            let mut ready = self.socket.readable().await?;
            match ready.try_io(|s| recv_some(s.as_raw_fd(), into, fds)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// Whether an error from a peer means "the peer is gone" (a normal event).
pub fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN | Errno::ESHUTDOWN)
    )
}

/// How a stream's frames start: a 4-byte length of what follows.
#[derive(Debug, Clone, Copy)]
pub enum Prefix {
    /// The bus: little-endian (see [`crate::wire`]).
    Bus,
    /// Node's IPC channel in `advanced` mode: big-endian.
    Node,
}

/// Bytes a [`FrameReader`] reads at a time; its buffer starts at this size,
/// grows for larger frames, and shrinks back once they are consumed.
const READ_CHUNK: usize = 64 * 1024;

/// Splits what a [`Link`] reads into frames.
pub struct FrameReader {
    prefix: Prefix,
    /// Initialized once (reads go straight into it, nothing is zeroed per
    /// read); `buf[start..end]` holds the bytes not yet handed out.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Fds received so far, oldest first; whoever decodes a frame that
    /// carries one takes it from the front.
    pub fds: VecDeque<OwnedFd>,
    /// Whether this peer may send fds at all; if not, any that arrive are
    /// closed as soon as they are read (a hostile peer cannot fill the fd
    /// table with them).
    keep_fds: bool,
    max: usize,
}

impl FrameReader {
    /// `max`: the largest frame body accepted; a larger one is an error
    /// (the peer is dropped), before any of it is buffered. Frames may
    /// carry fds (see [`FrameReader::fds`]).
    pub fn new(prefix: Prefix, max: usize) -> Self {
        FrameReader { prefix, buf: vec![0; READ_CHUNK], start: 0, end: 0, fds: VecDeque::new(), keep_fds: true, max }
    }

    /// Like [`FrameReader::new`], for a peer that never sends fds.
    pub fn without_fds(prefix: Prefix, max: usize) -> Self {
        FrameReader { keep_fds: false, ..FrameReader::new(prefix, max) }
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The next frame body (without its length prefix), reading as
    /// needed. `Ok(None)` on a clean EOF between frames.
    pub async fn next(&mut self, link: &Link) -> io::Result<Option<&[u8]>> {
        loop {
            let mut needed = 4;
            if let Some(len) = self.buf.get(self.start..self.start + 4).filter(|_| self.end - self.start >= 4) {
                let len: [u8; 4] = len.try_into().expect("4 bytes");
                let len = match self.prefix {
                    Prefix::Bus => u32::from_le_bytes(len),
                    Prefix::Node => u32::from_be_bytes(len),
                } as usize;
                if len > self.max {
                    return Err(io::Error::other(format!("frame of {len} bytes exceeds the limit of {}", self.max)));
                }
                if self.end - self.start >= 4 + len {
                    let at = self.start;
                    self.start += 4 + len;
                    return Ok(Some(&self.buf[at + 4..at + 4 + len]));
                }
                needed = 4 + len;
            }
            self.make_room(needed);
            let n = link.read(&mut self.buf[self.end..], &mut self.fds).await?;
            if !self.keep_fds {
                self.fds.clear();
            }
            if n == 0 {
                return if self.start == self.end { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
            }
            self.end += n;
        }
    }

    /// Moves the unread bytes to the front, and sizes the buffer for the
    /// next read: a read's worth, or for a larger frame of `needed` bytes
    /// twice what has arrived of it. Memory follows the bytes a peer
    /// actually sent, never the length it announced.
    fn make_room(&mut self, needed: usize) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let want = needed.min(2 * self.end).max(self.end + READ_CHUNK);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        } else if self.buf.len() > 4 * READ_CHUNK && want <= READ_CHUNK {
            // A large frame is gone: do not keep its memory per peer.
            self.buf.truncate(READ_CHUNK);
            self.buf.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Bytes {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        Rc::new(f)
    }

    /// A socket, and its inode to know it again on the other side.
    fn a_socket() -> (Rc<OwnedFd>, u64) {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd: OwnedFd = a.into();
        let inode = inode(&fd);
        (Rc::new(fd), inode)
    }

    fn inode(fd: &OwnedFd) -> u64 {
        nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_ino
    }

    /// What a peer sends: a frame alone, with an fd, or soon (gathered).
    #[derive(Debug, Clone)]
    enum Sent {
        Now(Vec<u8>),
        WithFd(Vec<u8>),
        Soon(Vec<u8>),
    }

    fn sent() -> impl Strategy<Value = Sent> {
        // Up to 200 KiB: larger than a socket buffer, so writes go partial.
        let body = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 0..200_000)
        ];
        (0..3u8, body).prop_map(|(how, body)| match how {
            0 => Sent::Now(body),
            1 => Sent::WithFd(body),
            _ => Sent::Soon(body),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// However sends are mixed (now, soon, with fds) and however the
        /// kernel splits the writes, the peer reads every frame whole and
        /// in order, and the oldest fd it holds when a frame with an fd is
        /// decoded is that frame's own (an fd may be read ahead with the
        /// bytes before it, never after its frame).
        #[test]
        fn gathered_writes_keep_frames_in_order_and_fds_on_their_frames(
            sends in proptest::collection::vec(sent(), 1..40),
        ) {
            crate::up::block_on(async {
                let (ours, theirs) = UnixStream::pair().unwrap();
                let (ours, theirs) = (Link::spawn(ours).unwrap(), Link::spawn(theirs).unwrap());
                let mut inodes = VecDeque::new();
                for s in &sends {
                    match s {
                        Sent::Now(b) => ours.send(frame(b), None),
                        Sent::WithFd(b) => {
                            let (fd, inode) = a_socket();
                            inodes.push_back(inode);
                            ours.send(frame(b), Some(fd));
                        }
                        Sent::Soon(b) => ours.send_soon(frame(b)),
                    }
                }
                let mut reader = FrameReader::new(Prefix::Bus, 1 << 20);
                for (i, s) in sends.iter().enumerate() {
                    let body = reader.next(&theirs).await.unwrap().expect("a frame").to_vec();
                    let (expected, with_fd) = match s {
                        Sent::Now(b) | Sent::Soon(b) => (b, false),
                        Sent::WithFd(b) => (b, true),
                    };
                    assert!(&body == expected, "frame {i} arrived whole and in order");
                    if with_fd {
                        let fd = reader.fds.pop_front().expect("the frame's fd arrived by its frame");
                        assert_eq!(Some(inode(&fd)), inodes.pop_front(), "frame {i} got its own fd");
                    }
                }
                assert!(reader.fds.is_empty() && inodes.is_empty());
                assert!(ours.is_written_through(ours.position()));
                assert_eq!(ours.queued_bytes(), 0);
            });
        }
    }
}
