//! Accepting client connections and peeking at their request heads.
//!
//! The fast path costs three system calls per connection: `accept4`, one
//! `recv(MSG_PEEK)` (the head is usually there already), and the `sendmsg`
//! that hands the fd over. Only a connection whose head is not complete
//! yet is registered with the reactor and given a task with a deadline;
//! while it waits it is out of the poll set except for new data
//! (edge-triggered), so a slow client costs no CPU.

use super::Master;
use crate::http_head::{self, Head, HeadError};
use crate::shutdown::Shutdown;
use nix::errno::Errno;
use nix::sys::socket::{accept4, recv, send, shutdown, MsgFlags, Shutdown as How, SockFlag};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{error, warn};

/// Accepts per wake-up before yielding to other tasks.
const ACCEPT_BATCH: usize = 128;
/// How long the master keeps reading (and discarding) from a client it
/// answered itself, so that closing does not reset the answer away.
const LINGER: Duration = Duration::from_secs(2);

/// Registers a socket this code owns with the reactor.
fn watch<T: AsRawFd>(owned: T, interest: Interest) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `owned` owns its descriptor (an OwnedFd or a std listener),
    // so it stays open and the same until the AsyncFd lets go of it.
    unsafe { AsyncFd::register_with_interest(owned, interest) }.map_err(|e| e.into_parts().1)
}

pub(super) enum Peeked {
    Head(Head),
    Incomplete,
    Closed,
    Bad(HeadError),
    TimedOut,
}

impl Master {
    /// Peeks at the head without consuming anything.
    pub(super) fn peek(&self, conn: &OwnedFd) -> Peeked {
        let mut scratch = self.scratch.borrow_mut();
        match recv(conn.as_raw_fd(), &mut scratch, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(0) => Peeked::Closed,
            Ok(n) => match http_head::parse(&scratch[..n], self.cfg.limits.max_head_bytes) {
                Ok(Some(head)) => Peeked::Head(head),
                Ok(None) => Peeked::Incomplete,
                Err(e) => Peeked::Bad(e),
            },
            Err(Errno::EAGAIN | Errno::EINTR) => Peeked::Incomplete,
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

    /// Connections the master holds that are not handed off yet.
    fn pending(&self) -> usize {
        let st = self.st.borrow();
        st.reading_heads + st.waiting.len() + st.lingering
    }

    fn accepted(self: &Rc<Self>, conn: OwnedFd) {
        self.st.borrow_mut().counters.accepted += 1;
        match self.peek(&conn) {
            Peeked::Head(head) => self.dispatch(conn, head, 0, Instant::now()),
            Peeked::Incomplete => {
                self.st.borrow_mut().reading_heads += 1;
                tokio::task::spawn_local(self.clone().read_head(conn));
            }
            Peeked::Closed => self.st.borrow_mut().counters.closed_early += 1,
            Peeked::Bad(e) => self.count_and_answer(conn, e.response()),
            Peeked::TimedOut => unreachable!("peeking alone never times out"),
        }
    }

    /// Waits for the rest of a head, up to the head timeout.
    async fn read_head(self: Rc<Self>, conn: OwnedFd) {
        let deadline = Instant::now() + self.cfg.timeouts.head_ms;
        let outcome = match watch(conn, Interest::READABLE) {
            Ok(conn) => {
                let peeked = loop {
                    let mut guard = tokio::select! {
                        g = conn.readable() => match g { Ok(g) => g, Err(_) => break Peeked::Closed },
                        _ = tokio::time::sleep_until(deadline.into()) => break Peeked::TimedOut,
                    };
                    match self.peek(conn.get_ref()) {
                        Peeked::Incomplete if guard.ready().is_read_closed() => break Peeked::Closed,
                        Peeked::Incomplete => guard.clear_ready(),
                        done => break done,
                    }
                };
                Some((conn.into_inner(), peeked))
            }
            Err(_) => None,
        };
        self.st.borrow_mut().reading_heads -= 1;
        self.room.notify_one();
        match outcome {
            Some((conn, Peeked::Head(head))) => self.dispatch(conn, head, 0, Instant::now()),
            Some((conn, Peeked::TimedOut)) => self.count_and_answer(conn, http_head::response::HEAD_TIMEOUT),
            Some((conn, Peeked::Bad(e))) => self.count_and_answer(conn, e.response()),
            Some((_, Peeked::Closed | Peeked::Incomplete)) | None => self.st.borrow_mut().counters.closed_early += 1,
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
            let Ok(conn) = watch(conn, Interest::READABLE) else {
                return;
            };
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                loop {
                    let Ok(mut g) = conn.readable().await else {
                        return;
                    };
                    match recv(conn.get_ref().as_raw_fd(), &mut sink, MsgFlags::MSG_DONTWAIT) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(Errno::EAGAIN) => g.clear_ready(),
                        Err(_) => return,
                    }
                }
            })
            .await;
            drop(conn);
            master.st.borrow_mut().lingering -= 1;
            master.room.notify_one();
        });
    }
}
