//! Serving the `metrics` address: one short HTTP/1.1 exchange per
//! connection, the page from [`crate::metrics`]. Bounded like every other
//! peer: 8 KiB and 5 s for the request head, 10 s in all. Idle connections
//! cannot blind the scrapes: a connection costs nothing but its head's
//! buffer until its head is in, at most [`MAX_READING`] read heads at once
//! (a new one closes the oldest), and only a complete `GET /metrics` waits
//! for one of the [`MAX_SCRAPES`] places that build the page.

use super::Master;
use crate::metrics::{self, Route};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tracing::{error, warn};

const MAX_HEAD: usize = 8192;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages built at once (each reads `/proc` and asks systemd).
const MAX_SCRAPES: usize = 8;
/// Connections whose head is being read at once; past it the oldest goes.
const MAX_READING: usize = 64;

/// The connections reading their head, oldest first.
#[derive(Default)]
struct Reading {
    next: u64,
    tasks: VecDeque<(u64, AbortHandle)>,
}

impl Master {
    pub(super) async fn serve_metrics(self: Rc<Self>, listener: std::net::TcpListener) {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return error!(app = %self.cfg.app, "cannot serve metrics: {e}"),
        };
        let places = Rc::new(Semaphore::new(MAX_SCRAPES));
        let reading = Rc::new(RefCell::new(Reading::default()));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds, say: accepting again at once would spin.
                    warn!(app = %self.cfg.app, "metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let mut r = reading.borrow_mut();
            if r.tasks.len() >= MAX_READING {
                if let Some((_, oldest)) = r.tasks.pop_front() {
                    oldest.abort();
                }
            }
            let id = r.next;
            r.next += 1;
            let (master, places, done_reading) = (self.clone(), places.clone(), reading.clone());
            let task = tokio::task::spawn_local(async move {
                let _ = tokio::time::timeout(
                    SCRAPE_TIMEOUT,
                    master.scrape(stream, &places, || done_reading.borrow_mut().tasks.retain(|(i, _)| *i != id)),
                )
                .await;
            });
            r.tasks.push_back((id, task.abort_handle()));
        }
    }

    /// Reads the head, then (`head_read` called, a place taken) answers.
    async fn scrape(&self, mut stream: TcpStream, places: &Semaphore, head_read: impl FnOnce()) -> std::io::Result<()> {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        let read = async {
            while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>(())
        };
        let read = tokio::time::timeout(HEAD_TIMEOUT, read).await;
        head_read();
        read.map_err(|_| std::io::ErrorKind::TimedOut)??;
        let (status, body) = match metrics::route(&head) {
            Route::Metrics => {
                let _place = places.acquire().await.expect("the semaphore is never closed");
                ("200 OK", metrics::render(&self.status_with_usage().await))
            }
            Route::NotFound => ("404 Not Found", "sio serves /metrics only\n".to_owned()),
            Route::Bad => ("400 Bad Request", String::new()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        if !head.starts_with(b"HEAD ") {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    }
}
