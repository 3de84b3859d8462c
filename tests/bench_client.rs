//! The benchmark's load generator (`bench/`) held against real servers: its
//! Engine.IO 4 / Socket.IO 5 handling (websocket, long-polling then upgrade,
//! acks, broadcasts, reconnection) against socket.io 4.8 alone and under
//! sio, and the raw floor's handoff. Its packet functions' unit tests too.

// What only the benchmark's report uses is unused here.
#[allow(dead_code)]
#[path = "../bench/client.rs"]
mod client;
mod common;
#[path = "../bench/eio.rs"]
mod eio;
#[path = "../bench/floor.rs"]
mod floor;

use common::{node_dir, repo, App};
use eio::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn local<F: std::future::Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, future)
}

/// The benchmark's worker, with the tests' npm packages (bench/node's own
/// are only installed by `bench/run`; the versions are the same).
fn bench_worker() -> (serde_json::Value, String) {
    (json!(["node", repo().join("bench/node/worker.js")]), node_dir().join("node_modules").display().to_string())
}

/// What the load generator's clients see of a server at `addr` with
/// `workers` workers.
async fn exercise(addr: SocketAddr, workers: usize) {
    for _ in 0..20 {
        let t = client::ws_session_timed(addr).await.unwrap_or_else(|e| panic!("websocket session: {e}"));
        // The upgrade is answered before the namespace CONNECT is.
        assert!(t.upgraded > Duration::ZERO && t.upgraded < t.connected && t.connected < client::STEP_TIMEOUT);
        client::polling_session(addr).await.unwrap_or_else(|e| panic!("polling session: {e}"));
    }
    let epoch = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(client::Resident::connect(addr, epoch, false).await.unwrap());
    }
    let mut pids = BTreeSet::new();
    for c in &clients {
        pids.insert(c.worker().await.unwrap());
    }
    assert_eq!(pids.len(), workers, "clients served by {pids:?}");
    clients[0].emit("bcast", &[json!(epoch.elapsed().as_micros() as u64)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while clients.iter().any(|c| c.received.get() == 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in &clients {
        assert_eq!(c.received.get(), 1, "every client gets the broadcast once");
        assert_eq!(c.latencies_us.borrow().len(), 1, "its send time is read back");
    }
}

#[test]
fn load_generator_speaks_to_one_socket_io_server() {
    common::ensure_node_modules();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (command, node_path) = bench_worker();
    let _node = Killed(
        Command::new(command[0].as_str().unwrap())
            .arg(command[1].as_str().unwrap())
            .env("PORT", port.to_string())
            .env("NODE_PATH", node_path)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "node worker.js never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    local(exercise(addr, 1));
}

/// A process killed when dropped: a failed assertion does not leave it
/// running (and holding the test's output pipe open).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn load_generator_speaks_to_sio_and_reconnects_after_a_kill() {
    let (command, node_path) = bench_worker();
    let mut app = App::start_with(2, json!({ "command": command, "env": { "NODE_PATH": node_path } }));
    let addr = SocketAddr::from(([127, 0, 0, 1], app.port));
    local(async {
        exercise(addr, 2).await;
        // A resident that reconnects: its worker killed, it is served again.
        let epoch = Instant::now();
        let client = client::Resident::connect(addr, epoch, true).await.unwrap();
        let pid = client.worker().await.unwrap();
        let killed = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        let deadline = killed + Duration::from_secs(20);
        while client.connected_at.get() < killed && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(client.connected_at.get() > killed, "the client never reconnected");
        assert_ne!(client.worker().await.unwrap(), pid);
    });
    app.stop();
}

#[test]
fn floor_passes_each_connection_to_its_sink() {
    let floor = floor::Floor::start().unwrap();
    assert!(floor.accept_tid > 0 && floor.sink_tid > 0);
    local(async {
        for _ in 0..50 {
            floor::session(floor.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        }
    });
}

#[test]
fn open_packet_of_socket_io_4() {
    let text = r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
    let Packet::Open(open) = parse_packet(text).unwrap() else { panic!("not an open packet") };
    assert_eq!(open.sid, "lv_VI97HAXpY6yYWAAAC");
    assert_eq!(open.upgrades, ["websocket"]);
    assert_eq!(open.ping_interval_ms, 25_000);
}

#[test]
fn messages_and_acks() {
    assert_eq!(parse_packet(r#"40{"sid":"x"}"#).unwrap(), Packet::Message(r#"0{"sid":"x"}"#));
    assert_eq!(parse_sio(r#"0{"sid":"x"}"#).unwrap(), SioPacket::Connected);
    assert_eq!(parse_sio("312[4242]").unwrap(), SioPacket::Ack { id: 12, args: "[4242]" });
    assert_eq!(parse_sio(r#"2["m",1]"#).unwrap(), SioPacket::Event { ack_id: None, args: r#"["m",1]"# });
    assert_eq!(parse_sio(r#"27["who"]"#).unwrap(), SioPacket::Event { ack_id: Some(7), args: r#"["who"]"# });
    assert!(parse_sio("3[1]").is_err());
    assert!(parse_sio("2/admin,[1]").is_err());
    assert_eq!(event("who", &[], Some(3)), r#"423["who"]"#);
    assert_eq!(event("bcast", &[serde_json::json!("x")], None), r#"42["bcast","x"]"#);
    assert_eq!(event_name(r#"["m",{"a":1}]"#), Some("m"));
    assert_eq!(event_name("[1]"), None);
}

#[test]
fn polling_payloads_and_bad_packets() {
    let body = "40{\"sid\":\"a\"}\x1e2\x1e6";
    let packets: Vec<_> = split_payload(body).map(|p| parse_packet(p).unwrap()).collect();
    assert_eq!(packets, [Packet::Message("0{\"sid\":\"a\"}"), Packet::Ping(""), Packet::Noop]);
    assert!(parse_packet("").is_err());
    assert!(parse_packet("9").is_err());
    assert!(parse_packet("0{}").is_err());
    assert!(parse_packet("0{not json").is_err());
    assert_eq!(path("polling", Some("s")), "/socket.io/?EIO=4&transport=polling&sid=s");
}
