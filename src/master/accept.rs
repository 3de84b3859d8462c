//! Accepting client connections and peeking at their request heads.
//!
//! The fast path costs three system calls per connection: `accept4`, one
//! `recv(MSG_PEEK)` (the head is there already: the listening sockets are
//! `TCP_DEFER_ACCEPT`, see [`crate::listen`]), and the `sendmsg`
//! that hands the fd over. Only a connection whose head is not complete
//! yet is registered with the reactor and given a task with a deadline;
//! while it waits it is out of the poll set except for new data
//! (edge-triggered), so a slow client costs no CPU.

use super::{Master, Request};
use crate::handoff::watch;
use crate::http_head::{self, Head, HeadError};
use crate::shutdown::Shutdown;
use nix::errno::Errno;
use nix::sys::socket::{accept4, recv, send, shutdown, MsgFlags, Shutdown as How, SockFlag};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tracing::{error, warn};

/// Accepts per wake-up before yielding to other tasks.
const ACCEPT_BATCH: usize = 128;
/// How long the master keeps reading (and discarding) from a client it
/// answered itself, so that closing does not reset the answer away.
const LINGER: Duration = Duration::from_secs(2);

pub(super) enum Peeked {
    Head(Head),
    /// Not complete yet: this many bytes have arrived so far.
    Incomplete(usize),
    Closed,
    Bad(HeadError),
}

/// How waiting for the rest of a head ended.
enum HeadWait {
    Done(Peeked),
    /// The deadline passed with this many bytes of a head.
    TimedOut(usize),
}

impl Master {
    /// Peeks at the head without consuming anything. `scanned`: how many
    /// bytes an earlier peek of this connection found incomplete; the new
    /// ones are scanned for the head's end before anything is parsed, so a
    /// client sending its head byte by byte costs each byte once, not the
    /// whole head again. The first bytes of a connection are always parsed
    /// (`None`, or `Some(0)`), which refuses garbage at once.
    pub(super) fn peek(&self, conn: &OwnedFd, scanned: Option<usize>) -> Peeked {
        let mut scratch = self.scratch.borrow_mut();
        let max = self.cfg.limits.max_head_bytes;
        match recv(conn.as_raw_fd(), &mut scratch, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(0) => Peeked::Closed,
            Ok(n)
                if n < max
                    && scanned.is_some_and(|from| from > 0 && http_head::head_end(&scratch[..n], from).is_none()) =>
            {
                Peeked::Incomplete(n)
            }
            Ok(n) => match http_head::parse(&scratch[..n], max) {
                Ok(Some(head)) => Peeked::Head(head),
                Ok(None) => Peeked::Incomplete(n),
                Err(e) => Peeked::Bad(e),
            },
            Err(Errno::EAGAIN | Errno::EINTR) => Peeked::Incomplete(0),
            Err(_) => Peeked::Closed,
        }
    }

    pub(super) async fn accept_loop(self: Rc<Self>, listener: TcpListener, mut shutdown: Shutdown) {
        let listener = match watch(listener, Interest::READABLE) {
            Ok(l) => l,
            Err(e) => return error!(app = %self.cfg.app, "cannot watch listening socket: {e}"),
        };
        loop {
            while self.pending() >= self.cfg.limits.max_pending_connections {
                // Full: the kernel's backlog holds the rest meanwhile.
                tokio::select! {
                    _ = self.room.notified() => {}
                    _ = shutdown.recv() => return,
                }
            }
            let mut guard = tokio::select! {
                g = listener.readable() => match g {
                    Ok(g) => g,
                    Err(e) => return error!(app = %self.cfg.app, "listening socket failed: {e}"),
                },
                _ = shutdown.recv() => return,
            };
            let mut accepted = 0;
            while accepted < ACCEPT_BATCH {
                if self.pending() >= self.cfg.limits.max_pending_connections {
                    break;
                }
                match accept4(listener.get_ref().as_raw_fd(), SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC) {
                    // SAFETY: accept4 returned a new descriptor that nobody else owns.
                    Ok(fd) => {
                        accepted += 1;
                        self.accepted(unsafe { OwnedFd::from_raw_fd(fd) })
                    }
                    Err(Errno::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO) => continue,
                    Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                        warn!(app = %self.cfg.app, "accept: {e}; pausing 100 ms (raise LimitNOFILE=?)");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                    Err(e) => {
                        error!(app = %self.cfg.app, "accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
            }
            if accepted == ACCEPT_BATCH {
                // More are waiting: let the other tasks run first.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Connections the master holds: not handed off yet, or handed off and
    /// not confirmed (a hung worker's connections count too).
    fn pending(&self) -> usize {
        let st = self.st.borrow();
        st.reading_heads + st.waiting_count() + st.lingering + st.in_flight
    }

    fn accepted(self: &Rc<Self>, conn: OwnedFd) {
        self.st.borrow_mut().counters.accepted += 1;
        match self.peek(&conn, None) {
            Peeked::Head(head) => self.dispatch(Request::new(conn, head)),
            Peeked::Incomplete(arrived) => {
                self.st.borrow_mut().reading_heads += 1;
                tokio::task::spawn_local(self.clone().read_head(conn, arrived));
            }
            Peeked::Closed => self.st.borrow_mut().counters.closed_early += 1,
            Peeked::Bad(e) => self.count_and_answer(conn, e.response()),
        }
    }

    /// Waits for the rest of a head (`arrived` bytes of it are there), up
    /// to the head timeout.
    async fn read_head(self: Rc<Self>, conn: OwnedFd, mut arrived: usize) {
        let deadline = Instant::now() + self.cfg.timeouts.head_ms;
        let outcome = match watch(conn, Interest::READABLE) {
            Ok(conn) => {
                let waited = loop {
                    let mut guard = tokio::select! {
                        g = conn.readable() => match g { Ok(g) => g, Err(_) => break HeadWait::Done(Peeked::Closed) },
                        _ = tokio::time::sleep_until(deadline.into()) => break HeadWait::TimedOut(arrived),
                    };
                    match self.peek(conn.get_ref(), Some(arrived)) {
                        Peeked::Incomplete(_) if guard.ready().is_read_closed() => {
                            break HeadWait::Done(Peeked::Closed)
                        }
                        Peeked::Incomplete(n) => {
                            arrived = n;
                            guard.clear_ready()
                        }
                        done => break HeadWait::Done(done),
                    }
                };
                Some((conn.into_inner(), waited))
            }
            Err(_) => None,
        };
        self.st.borrow_mut().reading_heads -= 1;
        self.room.notify_one();
        match outcome {
            Some((conn, HeadWait::Done(Peeked::Head(head)))) => self.dispatch(Request::new(conn, head)),
            // A connection that never sent a byte (a browser's pre-connect,
            // a port probe) is closed without an answer, as HAProxy's
            // `http-ignore-probes` does: a 408 there could be taken for the
            // answer to a request sent later on the same socket.
            Some((_, HeadWait::TimedOut(0))) => self.st.borrow_mut().counters.closed_idle += 1,
            Some((conn, HeadWait::TimedOut(_))) => self.count_and_answer(conn, http_head::response::HEAD_TIMEOUT),
            Some((conn, HeadWait::Done(Peeked::Bad(e)))) => self.count_and_answer(conn, e.response()),
            Some((_, HeadWait::Done(Peeked::Closed | Peeked::Incomplete(_)))) | None => {
                self.st.borrow_mut().counters.closed_early += 1
            }
        }
    }

    /// Answers with one of the master's own responses (and counts it).
    pub(super) fn count_and_answer(self: &Rc<Self>, conn: OwnedFd, response: &'static [u8]) {
        {
            let c = &mut self.st.borrow_mut().counters;
            match &response[9..12] {
                b"400" => c.answered_400 += 1,
                b"408" => c.answered_408 += 1,
                b"431" => c.answered_431 += 1,
                _ => c.answered_503 += 1,
            }
        }
        self.answer(conn, response);
    }

    /// Writes `response`, ends the write side, and reads the client out
    /// for a moment before closing: closing with unread data would make the
    /// kernel send a reset that can destroy the answer in flight.
    pub(super) fn answer(self: &Rc<Self>, conn: OwnedFd, response: &'static [u8]) {
        let _ = send(conn.as_raw_fd(), response, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT);
        let _ = shutdown(conn.as_fd().as_raw_fd(), How::Write);
        self.st.borrow_mut().lingering += 1;
        let master = self.clone();
        tokio::task::spawn_local(async move {
            if let Ok(conn) = watch(conn, Interest::READABLE) {
                let _ = tokio::time::timeout(LINGER, async {
                    loop {
                        let Ok(mut g) = conn.readable().await else {
                            return;
                        };
                        // Into the shared scratch buffer, borrowed for the
                        // call only: a buffer of its own would cost every
                        // lingering connection 4 KiB of heap for its task,
                        // and a hostile client can hold thousands of them.
                        let read =
                            recv(conn.get_ref().as_raw_fd(), &mut master.scratch.borrow_mut(), MsgFlags::MSG_DONTWAIT);
                        match read {
                            Ok(0) => return,
                            Ok(_) => {}
                            Err(Errno::EAGAIN) => g.clear_ready(),
                            Err(_) => return,
                        }
                    }
                })
                .await;
            }
            master.st.borrow_mut().lingering -= 1;
            master.room.notify_one();
        });
    }
}
