//! Serving the `metrics` address: one short HTTP/1.1 exchange per
//! connection, the page from [`crate::metrics`]. Bounded like every other
//! peer: 8 KiB and 5 s for the request head, 10 s in all, 8 scrapes at once
//! (more wait in the kernel's backlog).

use super::Master;
use crate::metrics::{self, Route};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{error, warn};

const MAX_HEAD: usize = 8192;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SCRAPES: usize = 8;

impl Master {
    pub(super) async fn serve_metrics(self: Rc<Self>, listener: std::net::TcpListener) {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return error!(app = %self.cfg.app, "cannot serve metrics: {e}"),
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
        loop {
            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds, say: accepting again at once would spin.
                    warn!(app = %self.cfg.app, "metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let master = self.clone();
            tokio::task::spawn_local(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(SCRAPE_TIMEOUT, master.scrape(stream)).await;
            });
        }
    }

    async fn scrape(&self, mut stream: TcpStream) -> std::io::Result<()> {
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
        tokio::time::timeout(HEAD_TIMEOUT, read).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
        let (status, body) = match metrics::route(&head) {
            Route::Metrics => ("200 OK", metrics::render(&self.status_with_usage().await)),
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
