//! The bridge's Redis I/O: two connections per host, whatever its number
//! of workers (a Redis-adapter worker holds three of its own): one
//! multiplexed RESP3 connection for publishing, appending and the pub/sub
//! subscriptions (pushed on the same connection, restored after a
//! reconnect), and one for the stream's blocking reads.
//!
//! Redis may go away: what is to be sent waits in a bounded queue and is
//! dropped (counted, and logged once per outage) when it is full, reads
//! retry every second, and the master's own relaying between workers never
//! waits for any of it.

use super::check::Rejection;
use super::message::Message;
use super::Names;
use crate::logging::RateLimit;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushKind};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Messages waiting for Redis at most (in each direction).
pub const QUEUE: usize = 10_000;
/// How long one stream read blocks on the server.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries taken per stream read (the adapter's `readCount`).
const READ_COUNT: usize = 100;
/// Stream length kept, about (the adapter's `maxLen`).
const MAX_LEN: usize = 10_000;
/// Commands sent in one round trip at most.
const BATCH: usize = 256;

/// Something to do on Redis.
#[derive(Debug)]
pub enum Out {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    Publish { channel: String, payload: Vec<u8> },
    Append(Vec<(&'static str, String)>),
}

/// The sending side, used by the master.
pub struct Outbox {
    tx: mpsc::Sender<Out>,
    dropped: Cell<u64>,
    warning: RateLimit,
}

impl Outbox {
    /// Queues `out`, or drops it if Redis has been away for too long.
    pub fn send(&self, out: Out) {
        if self.tx.try_send(out).is_err() {
            self.dropped.set(self.dropped.get() + 1);
            if self.warning.due() {
                warn!(dropped = self.dropped.get(), "Redis is unreachable and {QUEUE} messages wait for it: dropping what other hosts should get (this host's workers still reach each other)");
            }
        }
    }

    /// Messages dropped because Redis was away, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// Whether `url` names a Redis server this build can reach (for the
/// config's check).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("rediss:") {
        return Err("TLS (rediss://) is not built in: reach a remote Redis through a TLS tunnel on this host (stunnel, spiped) and name its local end".into());
    }
    url.into_connection_info().map(drop).map_err(|e| e.to_string())
}

/// Where `url` points, without its user name or password (for logs).
pub fn address(url: &str) -> String {
    match url.into_connection_info() {
        Ok(info) => info.addr().to_string(),
        Err(_) => "(a URL that does not parse)".into(),
    }
}

/// The IP address of a TCP Redis named by address in `url` (for the
/// master unit's `IPAddressAllow=`); none for a Unix socket, a host name or
/// a URL that does not parse.
pub fn tcp_ip(url: &str) -> Option<std::net::IpAddr> {
    match url.into_connection_info().ok()?.addr() {
        redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
            host.trim_start_matches('[').trim_end_matches(']').parse().ok()
        }
        _ => None,
    }
}

/// What the readers hand the bridge: a message, or why one was refused
/// unread (the bridge counts and logs refusals in one place).
pub type Inbound = Result<Message, Rejection>;

/// Connects in the background and returns the outbox and what arrives
/// from Redis: decoded messages, or why one could not be (unreadable, or
/// larger than `max_bytes`, which is never decoded). The stream's entries
/// written by `own_uid`, this host's echoes, are skipped before their
/// payload is decoded.
pub fn spawn(
    url: &str,
    names: &Names,
    own_uid: &str,
    max_bytes: usize,
) -> Result<(Rc<Outbox>, mpsc::Receiver<Inbound>), String> {
    let info = url.into_connection_info().map_err(|e| e.to_string())?;
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings)).map_err(|e| e.to_string())?;
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_local(write_and_subscribe(
        client.clone(),
        names.stream.clone(),
        out_rx,
        in_tx.clone(),
        max_bytes,
    ));
    tokio::task::spawn_local(read_stream(client, names.stream.clone(), own_uid.to_owned(), in_tx, max_bytes));
    Ok((Rc::new(Outbox { tx: out_tx, dropped: Cell::new(0), warning: RateLimit::default() }), in_rx))
}

/// Connects, retrying every second until Redis answers.
async fn connect(client: &redis::Client, config: ConnectionManagerConfig, what: &str) -> ConnectionManager {
    let mut warned = false;
    loop {
        match client.get_connection_manager_with_config(config.clone()).await {
            Ok(c) => {
                info!(redis = %client.get_connection_info().addr(), "bridge {what} connected to Redis");
                return c;
            }
            Err(e) => {
                if !warned {
                    warn!(redis = %client.get_connection_info().addr(), "bridge cannot reach Redis ({e}): retrying every second");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn write_and_subscribe(
    client: redis::Client,
    stream: String,
    mut rx: mpsc::Receiver<Out>,
    inbound: mpsc::Sender<Inbound>,
    max_bytes: usize,
) {
    let (push_tx, mut push_rx) = mpsc::unbounded_channel();
    let config = ConnectionManagerConfig::new()
        .set_push_sender(push_tx)
        .set_automatic_resubscription()
        .set_max_delay(Duration::from_secs(1));
    let mut con = connect(&client, config, "publisher").await;
    // Pushed messages are read at once, so the unbounded channel stays
    // short; what the master cannot take (`QUEUE` waiting) is dropped.
    tokio::task::spawn_local(async move {
        while let Some(push) = push_rx.recv().await {
            if push.kind != PushKind::Message {
                continue;
            }
            let Some(redis::Value::BulkString(payload)) = push.data.get(1) else { continue };
            let m = if payload.len() > max_bytes {
                Err(Rejection::TooLarge(payload.len()))
            } else {
                Message::from_pubsub(&payload[..]).map_err(|e| Rejection::Unreadable(e.to_string()))
            };
            let _ = inbound.try_send(m);
        }
    });
    let mut failing = false;
    let mut batch = Vec::with_capacity(BATCH);
    // Channels whose SUBSCRIBE failed (Redis away): redis-rs restores only
    // the subscriptions that succeeded, so these are asked again with
    // every batch until they do.
    let mut unsubscribed: Vec<String> = Vec::new();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if !unsubscribed.is_empty() {
            let channels = std::mem::take(&mut unsubscribed);
            if con.subscribe(&channels).await.is_err() {
                unsubscribed = channels;
            } else {
                info!("bridge subscribed to {channels:?} after Redis came back");
            }
        }
        let mut pipe = redis::pipe();
        for out in batch.drain(..) {
            match out {
                Out::Subscribe(channels) => {
                    if let Err(e) = con.subscribe(&channels).await {
                        warn!("bridge cannot subscribe to {channels:?} ({e}): asked again until Redis answers");
                        unsubscribed.extend(channels);
                    }
                }
                Out::Unsubscribe(channels) => {
                    unsubscribed.retain(|c| !channels.contains(c));
                    // Failing, redis-rs keeps them for its next reconnect:
                    // their messages are then dropped for an unserved namespace.
                    let _ = con.unsubscribe(&channels).await;
                }
                Out::Publish { channel, payload } => {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                }
                Out::Append(fields) => {
                    let cmd = pipe.cmd("XADD").arg(&stream).arg("MAXLEN").arg("~").arg(MAX_LEN).arg("*");
                    for (k, v) in fields {
                        cmd.arg(k).arg(v);
                    }
                    cmd.ignore();
                }
            }
        }
        match pipe.exec_async(&mut con).await {
            Ok(()) if failing => {
                failing = false;
                info!("bridge reaches Redis again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                warn!("bridge lost messages to Redis ({e}): other hosts miss them until it is back; this host's workers still reach each other");
            }
            Err(_) => {}
        }
    }
}

async fn read_stream(
    client: redis::Client,
    stream: String,
    own_uid: String,
    inbound: mpsc::Sender<Inbound>,
    max_bytes: usize,
) {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(BLOCK + Duration::from_secs(2)))
        .set_max_delay(Duration::from_secs(1));
    let mut con = connect(&client, config, "stream reader").await;
    let mut offset = "$".to_owned();
    let mut failing = false;
    loop {
        let read: redis::RedisResult<Option<redis::streams::StreamReadReply>> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&offset)
            .query_async(&mut con)
            .await;
        let reply = match read {
            Ok(r) => {
                if failing {
                    failing = false;
                    info!("bridge reads the Redis stream again");
                }
                r
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    warn!("bridge cannot read the Redis stream ({e}): retrying every second");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            let field = |name: &str| match entry.map.get(name) {
                Some(redis::Value::BulkString(b)) => std::str::from_utf8(b).ok(),
                Some(redis::Value::SimpleString(s)) => Some(s.as_str()),
                _ => None,
            };
            offset.clone_from(&entry.id);
            if field("uid") == Some(own_uid.as_str()) {
                continue;
            }
            let size: usize =
                entry.map.values().map(|v| if let redis::Value::BulkString(b) = v { b.len() } else { 0 }).sum();
            let m = if size > max_bytes {
                Err(Rejection::TooLarge(size))
            } else {
                Message::from_stream_fields(field).map_err(|e| Rejection::Unreadable(e.to_string()))
            };
            let _ = inbound.try_send(m);
        }
    }
}
