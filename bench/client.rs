//! Socket.IO clients of the load generator, on one thread (tokio's
//! current-thread runtime in a `LocalSet`): short sessions (websocket, or
//! long-polling then upgrade) and resident clients that count broadcasts.

use crate::eio::{self, Packet, SioPacket};
use futures_util::{SinkExt, StreamExt};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long one step of a session may take before the session counts as lost.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TcpStream>;

/// Where a session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// TCP connect or the websocket handshake.
    Connect,
    /// The Engine.IO open packet.
    Open,
    /// The namespace CONNECT was never answered: a lost session.
    NamespaceConnect,
    /// The websocket upgrade of a polling session.
    Upgrade,
    /// The websocket close was never answered: a lost session.
    Close,
}

impl Stage {
    /// Lost sessions: the server accepted them, then never answered.
    pub fn is_lost(self) -> bool {
        matches!(self, Stage::NamespaceConnect | Stage::Close)
    }
}

#[derive(Debug)]
pub struct SessionError {
    pub stage: Stage,
    pub detail: String,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.stage, self.detail)
    }
}

fn at<E: fmt::Display>(stage: Stage) -> impl FnOnce(E) -> SessionError {
    move |e| SessionError { stage, detail: e.to_string() }
}

async fn step<T, E: fmt::Display>(
    stage: Stage,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(result) => result.map_err(at(stage)),
        Err(_) => Err(SessionError { stage, detail: "timed out".into() }),
    }
}

async fn ws_connect(addr: SocketAddr, sid: Option<&str>) -> Result<Ws, Box<dyn std::error::Error>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{addr}{}", eio::path("websocket", sid));
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
    Ok(ws)
}

/// The next Engine.IO text packet, answering pings on the way.
async fn next_packet(ws: &mut Ws) -> Result<String, Box<dyn std::error::Error>> {
    loop {
        match ws.next().await {
            None => return Err("connection closed".into()),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(text))) => {
                if text.as_str() == "2" {
                    ws.send(Message::text(eio::PONG)).await?;
                    continue;
                }
                return Ok(text.as_str().to_owned());
            }
            Some(Ok(Message::Close(_))) => return Err("closed by the server".into()),
            Some(Ok(_)) => continue,
        }
    }
}

/// Waits for the namespace's CONNECT answer, skipping other packets.
async fn until_connected(ws: &mut Ws) -> Result<(), Box<dyn std::error::Error>> {
    loop {
        let text = next_packet(ws).await?;
        if let Packet::Message(message) = eio::parse_packet(&text)? {
            match eio::parse_sio(message)? {
                SioPacket::Connected => return Ok(()),
                SioPacket::ConnectError(why) => return Err(format!("connect error {why}").into()),
                _ => continue,
            }
        }
    }
}

/// Sends a close frame and waits for the server's (or the end of the
/// stream after it).
async fn close(mut ws: Ws) -> Result<(), Box<dyn std::error::Error>> {
    ws.close(None).await?;
    loop {
        match ws.next().await {
            None => return Ok(()),
            Some(Ok(Message::Close(_))) => continue,
            Some(Ok(_)) => continue,
            Some(Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed)) => return Ok(()),
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// A websocket session: open, namespace CONNECT, close. Returns the time
/// from the TCP connect to the CONNECT's answer.
pub async fn ws_session(addr: SocketAddr) -> Result<Duration, SessionError> {
    ws_session_timed(addr).await.map(|t| t.connected)
}

/// When a websocket session got its answers, from the TCP connect.
pub struct WsTiming {
    /// The upgrade's answer (`101`): the part of the session a router is
    /// on the path of. What follows is between the client and Node alone.
    pub upgraded: Duration,
    /// The namespace CONNECT's answer.
    pub connected: Duration,
}

/// [`ws_session`], with the upgrade's answer timed too.
pub async fn ws_session_timed(addr: SocketAddr) -> Result<WsTiming, SessionError> {
    let t0 = Instant::now();
    let mut ws = step(Stage::Connect, ws_connect(addr, None)).await?;
    let upgraded = t0.elapsed();
    let text = step(Stage::Open, next_packet(&mut ws)).await?;
    match eio::parse_packet(&text).map_err(at(Stage::Open))? {
        Packet::Open(_) => {}
        other => return Err(SessionError { stage: Stage::Open, detail: format!("{other:?}") }),
    }
    step(Stage::NamespaceConnect, ws.send(Message::text(eio::CONNECT))).await?;
    step(Stage::NamespaceConnect, until_connected(&mut ws)).await?;
    let connected = t0.elapsed();
    step(Stage::Close, close(ws)).await?;
    Ok(WsTiming { upgraded, connected })
}

/// A long-polling session that upgrades to websocket, as socket.io-client
/// does by default: handshake, CONNECT posted and answered by a poll, probe,
/// upgrade, close. Returns the time until the CONNECT's answer.
pub async fn polling_session(addr: SocketAddr) -> Result<Duration, SessionError> {
    let t0 = Instant::now();
    let mut http = step(Stage::Connect, Http::connect(addr)).await?;
    let body = step(Stage::Open, http.request("GET", &eio::path("polling", None), None)).await?;
    let first = eio::split_payload(&body).next().unwrap_or_default();
    let open = match eio::parse_packet(first).map_err(at(Stage::Open))? {
        Packet::Open(open) => open,
        other => return Err(SessionError { stage: Stage::Open, detail: format!("{other:?}") }),
    };
    let target = eio::path("polling", Some(&open.sid));
    let ok = step(Stage::NamespaceConnect, http.request("POST", &target, Some(eio::CONNECT))).await?;
    if ok != "ok" {
        return Err(SessionError { stage: Stage::NamespaceConnect, detail: format!("POST answered {ok:?}") });
    }
    loop {
        let body = step(Stage::NamespaceConnect, http.request("GET", &target, None)).await?;
        let mut connected = false;
        for packet in eio::split_payload(&body) {
            if let Packet::Message(message) = eio::parse_packet(packet).map_err(at(Stage::NamespaceConnect))? {
                connected |= eio::parse_sio(message).map_err(at(Stage::NamespaceConnect))? == SioPacket::Connected;
            }
        }
        if connected {
            break;
        }
    }
    let connected = t0.elapsed();
    let mut ws = step(Stage::Upgrade, ws_connect(addr, Some(&open.sid))).await?;
    step(Stage::Upgrade, ws.send(Message::text(eio::PROBE))).await?;
    let answer = step(Stage::Upgrade, next_packet(&mut ws)).await?;
    if answer != eio::PROBE_ANSWER {
        return Err(SessionError { stage: Stage::Upgrade, detail: format!("probe answered {answer:?}") });
    }
    step(Stage::Upgrade, ws.send(Message::text(eio::UPGRADE))).await?;
    drop(http);
    step(Stage::Close, close(ws)).await?;
    Ok(connected)
}

/// HTTP/1.1 requests as a browser's long-polling transport makes them: on
/// a keep-alive connection, and on a new one after a `Connection: close`
/// (sio and @socket.io/sticky close every connection after its response).
struct Http {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> std::io::Result<Http> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Http { addr, stream: Some(stream), buffer: Vec::with_capacity(1024) })
    }

    async fn stream(&mut self) -> std::io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.buffer.clear();
            self.stream = Some(stream);
        }
        Ok(self.stream.as_mut().expect("connected above"))
    }

    async fn request(
        &mut self,
        method: &str,
        target: &str,
        body: Option<&str>,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n");
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            request.push_str("\r\n");
        }
        self.stream().await?.write_all(request.as_bytes()).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = response.parse(&self.buffer)? {
                let status = response.code.unwrap_or(0);
                let header =
                    |name: &str| response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
                let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
                let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"));
                let length =
                    header("content-length").and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
                let body = match (length, chunked) {
                    (Some(length), _) => {
                        while self.buffer.len() < head_len + length {
                            self.read_more().await?;
                        }
                        let body = String::from_utf8_lossy(&self.buffer[head_len..head_len + length]).into_owned();
                        self.buffer.drain(..head_len + length);
                        body
                    }
                    (None, true) => loop {
                        if let Some((body, used)) = dechunk(&self.buffer[head_len..]) {
                            self.buffer.drain(..head_len + used);
                            break body;
                        }
                        self.read_more().await?;
                    },
                    // Delimited by the end of the connection.
                    (None, false) => {
                        while self.read_more().await.is_ok() {}
                        let body = String::from_utf8_lossy(&self.buffer[head_len..]).into_owned();
                        self.buffer.clear();
                        self.stream = None;
                        body
                    }
                };
                if close {
                    self.stream = None;
                }
                if status != 200 {
                    return Err(format!("HTTP {status}: {body}").into());
                }
                return Ok(body);
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let mut chunk = [0u8; 4096];
        let n = self.stream().await?.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed".into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// A complete chunked body at the start of `data`: (body, bytes used).
fn dechunk(data: &[u8]) -> Option<(String, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + data[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        let chunk = line_end + 2;
        if data.len() < chunk + size + 2 {
            return None;
        }
        if size == 0 {
            return Some((String::from_utf8_lossy(&body).into_owned(), chunk + 2));
        }
        body.extend_from_slice(&data[chunk..chunk + size]);
        at = chunk + size + 2;
    }
}

/// A client that stays connected: it counts the `m` broadcasts it gets,
/// answers pings, sends what it is given, and, if `reconnect` is set, opens
/// a new session when its connection ends (a worker killed).
pub struct Resident {
    commands: mpsc::UnboundedSender<Command>,
    /// `m` broadcasts received.
    pub received: Rc<Cell<u64>>,
    /// Woken at each `m` received.
    pub notify: Rc<Notify>,
    /// The send times (µs since `epoch`) carried by `m` broadcasts, turned
    /// into delivery latencies.
    pub latencies_us: Rc<RefCell<Vec<u64>>>,
    /// When the current session's CONNECT was answered.
    pub connected_at: Rc<Cell<Instant>>,
}

enum Command {
    Send(String),
    Ask(String, oneshot::Sender<String>),
}

impl Resident {
    pub async fn connect(addr: SocketAddr, epoch: Instant, reconnect: bool) -> Result<Resident, SessionError> {
        let ws = session(addr).await?;
        let (commands, inbox) = mpsc::unbounded_channel();
        let resident = Resident {
            commands,
            received: Rc::default(),
            notify: Rc::default(),
            latencies_us: Rc::default(),
            connected_at: Rc::new(Cell::new(Instant::now())),
        };
        let state = Shared {
            received: resident.received.clone(),
            notify: resident.notify.clone(),
            latencies_us: resident.latencies_us.clone(),
            connected_at: resident.connected_at.clone(),
            epoch,
        };
        tokio::task::spawn_local(run(addr, ws, inbox, state, reconnect));
        Ok(resident)
    }

    /// Sends an event.
    pub fn emit(&self, name: &str, args: &[serde_json::Value]) {
        let _ = self.commands.send(Command::Send(eio::event(name, args, None)));
    }

    /// Emits `name` with an acknowledgement and returns the ack's JSON array.
    pub async fn ask(&self, name: &str) -> Result<String, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Ask(name.to_owned(), tx))
            .map_err(|_| SessionError { stage: Stage::Connect, detail: "client gone".into() })?;
        step(Stage::NamespaceConnect, rx).await
    }

    /// The pid of the worker serving this client (the worker's `who` ack).
    pub async fn worker(&self) -> Result<u32, SessionError> {
        let args = self.ask("who").await?;
        serde_json::from_str::<(u32,)>(&args)
            .map(|(pid,)| pid)
            .map_err(|e| SessionError { stage: Stage::NamespaceConnect, detail: format!("who: {e}: {args}") })
    }
}

struct Shared {
    received: Rc<Cell<u64>>,
    notify: Rc<Notify>,
    latencies_us: Rc<RefCell<Vec<u64>>>,
    connected_at: Rc<Cell<Instant>>,
    epoch: Instant,
}

async fn session(addr: SocketAddr) -> Result<Ws, SessionError> {
    let mut ws = step(Stage::Connect, ws_connect(addr, None)).await?;
    step(Stage::Open, next_packet(&mut ws)).await?;
    step(Stage::NamespaceConnect, ws.send(Message::text(eio::CONNECT))).await?;
    step(Stage::NamespaceConnect, until_connected(&mut ws)).await?;
    Ok(ws)
}

async fn run(
    addr: SocketAddr,
    mut ws: Ws,
    mut inbox: mpsc::UnboundedReceiver<Command>,
    state: Shared,
    reconnect: bool,
) {
    let mut next_ack = 0u64;
    let mut waiting: HashMap<u64, oneshot::Sender<String>> = HashMap::new();
    loop {
        tokio::select! {
            command = inbox.recv() => {
                let text = match command {
                    None => { let _ = close(ws).await; return; }
                    Some(Command::Send(text)) => text,
                    Some(Command::Ask(name, tx)) => {
                        next_ack += 1;
                        waiting.insert(next_ack, tx);
                        eio::event(&name, &[], Some(next_ack))
                    }
                };
                if ws.send(Message::text(text)).await.is_err() && !reconnect {
                    return;
                }
            }
            message = ws.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => {
                        if !reconnect {
                            return;
                        }
                        waiting.clear();
                        ws = loop {
                            match session(addr).await {
                                Ok(ws) => break ws,
                                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                            }
                        };
                        state.connected_at.set(Instant::now());
                        continue;
                    }
                };
                on_packet(&mut ws, text.as_str(), &state, &mut waiting).await;
            }
        }
    }
}

async fn on_packet(ws: &mut Ws, text: &str, state: &Shared, waiting: &mut HashMap<u64, oneshot::Sender<String>>) {
    match eio::parse_packet(text) {
        Ok(Packet::Ping(_)) => {
            let _ = ws.send(Message::text(eio::PONG)).await;
        }
        Ok(Packet::Message(message)) => match eio::parse_sio(message) {
            Ok(SioPacket::Event { args, .. }) if eio::event_name(args) == Some("m") => {
                state.received.set(state.received.get() + 1);
                if let Ok((_, sent_us)) = serde_json::from_str::<(String, u64)>(args) {
                    let now_us = state.epoch.elapsed().as_micros() as u64;
                    state.latencies_us.borrow_mut().push(now_us.saturating_sub(sent_us));
                }
                state.notify.notify_waiters();
            }
            Ok(SioPacket::Ack { id, args }) => {
                if let Some(tx) = waiting.remove(&id) {
                    let _ = tx.send(args.to_owned());
                }
            }
            _ => {}
        },
        _ => {}
    }
}
