//! The raw floor: the least a router that peeks and passes descriptors can
//! do per connection. One thread blocks in `accept4`, peeks the request head
//! (`MSG_PEEK`) and passes the descriptor (`SCM_RIGHTS`) to a sink thread
//! that receives it and closes it. Their CPU per connection is what sio's
//! master and agents are held against.

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Floor {
    pub addr: SocketAddr,
    /// Thread ids of the accepting and the receiving thread.
    pub accept_tid: i32,
    pub sink_tid: i32,
}

impl Floor {
    pub fn start() -> std::io::Result<Floor> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (to_sink, from_router) = UnixStream::pair()?;
        let (tids, tid) = mpsc::channel();
        let accept_tids = tids.clone();
        std::thread::spawn(move || {
            let _ = accept_tids.send(("accept", nix::unistd::gettid().as_raw()));
            accept_loop(listener, to_sink);
        });
        std::thread::spawn(move || {
            let _ = tids.send(("sink", nix::unistd::gettid().as_raw()));
            sink_loop(from_router);
        });
        let (mut accept_tid, mut sink_tid) = (0, 0);
        for _ in 0..2 {
            match tid.recv() {
                Ok(("accept", t)) => accept_tid = t,
                Ok((_, t)) => sink_tid = t,
                Err(_) => break,
            }
        }
        Ok(Floor { addr, accept_tid, sink_tid })
    }
}

fn accept_loop(listener: TcpListener, to_sink: UnixStream) {
    let mut head = [0u8; 4096];
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        // Peek until the head is complete, as a router must.
        loop {
            match stream.peek(&mut head) {
                Ok(0) | Err(_) => break,
                Ok(n) if head[..n].windows(4).any(|w| w == b"\r\n\r\n") => break,
                Ok(_) => std::thread::yield_now(),
            }
        }
        let fds = [stream.as_raw_fd()];
        let byte = [0u8];
        let _ = sendmsg::<()>(
            to_sink.as_raw_fd(),
            &[IoSlice::new(&byte)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        );
    }
}

fn sink_loop(from_router: UnixStream) {
    let mut byte = [0u8; 1];
    loop {
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut byte)];
        let Ok(message) = recvmsg::<()>(from_router.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()) else {
            return;
        };
        if message.bytes == 0 {
            return;
        }
        for cmsg in message.cmsgs().into_iter().flatten() {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                // SAFETY: the descriptor was just received and is owned here alone.
                fds.into_iter().for_each(|fd| drop(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
}

/// A floor client: connects, sends a websocket handshake head, waits for the
/// sink to close the connection.
pub async fn session(addr: SocketAddr, head: &[u8]) -> std::io::Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t0 = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(head).await?;
    let mut rest = [0u8; 64];
    // The sink closes with the head unread: the end is a reset, or EOF.
    let read_to_end = async {
        loop {
            match stream.read(&mut rest).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_to_end).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    Ok(t0.elapsed())
}
