//! The core promise: unmodified Node workers behind sio, sessions sticky,
//! broadcasts reaching every worker.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

#[test]
fn websocket_only_polling_upgrade_polling_only_and_a_300k_post() {
    let app = App::start(2);
    let r = node("transports.js", &[&app.port.to_string()]);
    let spread = r["byWorker"].as_object().unwrap();
    assert_eq!(spread.len(), 2, "clients on both workers: {r}");
    assert!(spread.values().all(|n| n.as_u64().unwrap() == 8), "new sessions split evenly: {r}");
    assert_eq!(r["upgraded"], true, "{r}");
    assert_eq!(r["stillPolling"], true, "{r}");
    assert_eq!(r["echoByOwner"], true, "every packet reached the session's own worker: {r}");
    assert_eq!(r["bigOk"], true, "{r}");
}

#[test]
fn a_workers_own_sessions_are_counted_as_they_open_and_close() {
    // The preload sends sticky's announcements of the worker's own sids in
    // batches (`sio:sessions`); the master's counts must follow them.
    let app = App::start(2);
    let holder = Holder::start(app.port, 40, "websocket");
    let by_worker = holder.by_worker.clone();
    wait_for("40 sessions counted", Duration::from_secs(10), || app.status()["sessions"] == 40);
    for w in app.status()["workers"].as_array().unwrap() {
        let held = by_worker[format!("w{}", w["slot"])].as_u64().unwrap_or(0);
        assert_eq!(w["sessions"].as_u64(), Some(held), "worker {}: {by_worker}", w["slot"]);
    }
    holder.report();
    wait_for("no session counted once the clients are gone", Duration::from_secs(10), || app.status()["sessions"] == 0);
}

#[test]
fn a_burst_of_connections_is_answered_each_on_its_own_socket() {
    // Handles go to Node several at a time (src/nodeipc/channel.rs): each
    // must reach the worker with its own connection, none twice, none lost.
    use std::io::{Read, Write};
    let app = App::start(1);
    let burst = 300;
    let mut conns: Vec<std::net::TcpStream> = (0..burst)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", app.port)).unwrap();
            write!(c, "GET /burst/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            c
        })
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap_or_else(|e| panic!("connection {i}: {e} after {answer:?}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "connection {i}: {answer:?}");
        assert!(answer.contains(&format!(" for /burst/{i}\r\n")), "connection {i} got another's answer: {answer:?}");
    }
}

#[test]
fn cluster_adapter_across_workers() {
    let app = App::start(2);
    let r = node("cluster.js", &[&app.port.to_string()]);
    assert_one_socket_io_cluster(&r, 8, 2);
}

#[test]
fn with_websocket_alone_the_workers_accept_themselves_and_polling_is_refused() {
    let app = App::start_with(2, serde_json::json!({"transports": ["websocket"]}));
    let r = node("cluster.js", &[&app.port.to_string(), "--websocket-only"]);
    assert_one_socket_io_cluster(&r, 8, 2);
    let status = app.status();
    assert_eq!(status["counters"]["accepted"], 0, "no connection went through the master: {status}");
    assert_eq!(status["workers_accept"], true, "{status}");
    let text = app.sioctl().args(["status", &app.name]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("; the workers accept (websocket alone)"), "sioctl status says so: {text}");
    // A polling handshake reaches a worker, whose engine refuses it.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    s.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains("X-Sio-Worker: w") && answer.contains(r#"{"code":0,"message":"Transport unknown"}"#),
        "{answer}"
    );
}

#[test]
fn with_websocket_alone_new_sessions_are_served_while_the_master_is_frozen() {
    let app = App::start_with(2, serde_json::json!({"transports": ["websocket"]}));
    let mut holder = Holder::start(app.port, 20, "websocket");
    let master = nix::unistd::Pid::from_raw(app.pid() as i32);
    nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGSTOP).unwrap();
    holder.probe();
    std::thread::sleep(Duration::from_secs(2));
    // Reported with the master still stopped: probes that wait for it would
    // time out instead.
    let r = holder.report();
    nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(r["probes"]["failed"], 0, "{r}");
    assert!(r["probes"]["ok"].as_u64().unwrap() >= 20, "new sessions served meanwhile: {r}");
    assert_eq!(total_disconnects(&r), 0, "{r}");
    assert!(app.status()["workers"].as_array().unwrap().len() == 2, "the master carries on");
}

#[test]
fn with_websocket_alone_a_retired_worker_takes_no_new_session() {
    let app = App::start_with(2, serde_json::json!({"transports": ["websocket"], "timeouts": {"drain_ms": 6000}}));
    let mut scale = app.sioctl().args(["scale", &app.name, "1"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let mut retired = None;
    wait_for("a worker draining", Duration::from_secs(10), || {
        let status = app.status();
        retired =
            status["workers"].as_array().unwrap().iter().find(|w| w["state"] == "draining").map(|w| w["slot"].clone());
        retired.is_some()
    });
    let holder = Holder::start(app.port, 20, "websocket");
    let retired = format!("w{}", retired.unwrap());
    assert!(holder.by_worker.get(&retired).is_none(), "no new session on {retired}: {}", holder.by_worker);
    assert!(scale.wait().unwrap().success());
}

#[test]
fn a_worker_killed_with_sigkill() {
    let mut app = App::start(2);
    let r = node("sigkill.js", &[&app.port.to_string()]);
    assert_eq!(r["survivorDisconnects"], 0, "clients of the other worker stay connected: {r}");
    assert!(r["count"]["error"].is_null(), "fetchSockets on the survivor answered: {r}");
    assert!(r["count"]["ms"].as_u64().unwrap() < 100, "and at once, not after the adapter's 5 s timeout: {r}");
    assert_eq!(r["count"]["servers"], 1, "the dead worker's adapter is gone: {r}");
    assert_eq!(r["reconnected"], r["victims"], "{r}");
    assert_eq!(r["echoes"], r["victims"], "the reconnected clients are served: {r}");
    // And the dead worker is back.
    app.wait_ready(2, std::time::Duration::from_secs(15));
}

/// A process's scheduling policy.
fn policy_of(pid: u32) -> i32 {
    // SAFETY: no pointers.
    let p = unsafe { nix::libc::sched_getscheduler(pid as i32) };
    assert!(p >= 0, "sched_getscheduler({pid}): {}", std::io::Error::last_os_error());
    p
}

#[test]
fn the_router_runs_under_sched_batch_and_node_under_the_default() {
    // src/sched.rs: woken master and agents must not preempt a busy Node
    // worker (they halved their CPU per session that way), and Node, which
    // the agent starts, is given the default policy back.
    let app = App::start(2);
    assert_eq!(policy_of(app.pid()), nix::libc::SCHED_BATCH, "master");
    for agent in agent_pids(&app.status()) {
        let agent = agent.as_u64().unwrap() as u32;
        assert_eq!(policy_of(agent), nix::libc::SCHED_BATCH, "agent {agent}");
        let node = children_of(agent);
        assert_eq!(node.len(), 1, "agent {agent}'s Node worker: {node:?}");
        assert_eq!(policy_of(node[0]), nix::libc::SCHED_OTHER, "Node worker {}", node[0]);
    }
}

#[test]
fn sio_up_stops_every_process_it_started() {
    let mut app = App::start(2);
    let pids = app.worker_pids();
    assert_eq!(pids.len(), 4, "two agents and two Node workers: {pids:?}");
    let sockets = [format!("{}.bus", app.name), format!("{}.control", app.name)].map(|f| app.runtime_dir().join(f));
    assert!(sockets.iter().all(|s| s.exists()), "{sockets:?}");
    let status = app.stop();
    assert!(status.success(), "{status}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let left: Vec<_> = pids.iter().filter(|&&p| alive(p)).collect();
    assert!(left.is_empty(), "still running after sio up stopped: {left:?}");
    let left: Vec<_> = sockets.iter().filter(|s| s.exists()).collect();
    assert!(left.is_empty(), "sockets left behind (sioctl ls would list a master that is gone): {left:?}");
}

#[test]
fn sio_up_killed_outright_leaves_no_orphans() {
    let app = App::start(2);
    let pids = app.worker_pids();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(app.pid() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let t0 = std::time::Instant::now();
    while pids.iter().any(|&p| alive(p)) && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left: Vec<_> = pids.iter().filter(|&&p| alive(p)).collect();
    assert!(left.is_empty(), "orphans after SIGKILL of sio up: {left:?}");
}

#[test]
fn a_broken_config_is_one_clear_error_and_nothing_starts() {
    let dir = scratch_dir(&app_name());
    let cfg = dir.join("broken.json");
    std::fs::write(&cfg, r#"{"command": ["node", "worker.js"], "instances": "lots"}"#).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sio")).arg("up").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("broken.json: field `instances`: expected a whole number from 1 to 4095, or \"max\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one error: {err}");
}

#[test]
fn a_worker_that_calls_listen_still_works() {
    let app = App::start_with(2, serde_json::json!({"env": {"CALL_LISTEN": "3999"}}));
    let r = node("cluster.js", &[&app.port.to_string()]);
    assert_eq!(r["workers"].as_array().unwrap().len(), 2, "{r}");
    let log = app.log();
    assert!(log.contains("listen callback w1") && log.contains("listen callback w2"), "listen() completed: {log}");
    assert!(log.contains("the worker called listen(): ignored"), "{log}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", 3999)).is_err(), "nothing listens on the worker's own port");
}

#[test]
fn an_app_with_its_own_generate_id_is_routed_by_the_learned_table() {
    let app = App::start_with(2, serde_json::json!({"env": {"CUSTOM_IDS": "1"}}));
    let r = node("transports.js", &[&app.port.to_string()]);
    assert_eq!(r["byWorker"].as_object().unwrap().len(), 2, "{r}");
    assert_eq!(r["echoByOwner"], true, "{r}");
    assert_eq!(r["upgraded"], true, "{r}");
    assert_eq!(r["bigOk"], true, "{r}");
    assert!(app.log().contains("session opened"), "sticky's announcements reach the master");
}

#[test]
fn a_worker_that_disconnects_from_the_cluster_is_replaced() {
    let mut app = App::start_with(1, serde_json::json!({"env": {"DISCONNECT_AFTER_MS": "1500"}}));
    let first = app.worker_pids();
    let t0 = std::time::Instant::now();
    while !app.log().contains("the worker closed its IPC channel") {
        assert!(
            t0.elapsed().as_secs() < 15,
            "the agent acked the disconnect and noticed the channel close: {}",
            app.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(app.log().contains("disconnecting w1"), "{}", app.log());
    // The old worker is gone for good, and a new one serves.
    for p in &first {
        let t0 = std::time::Instant::now();
        while alive(*p) {
            assert!(t0.elapsed().as_secs() < 10, "pid {p} still running");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    app.wait_ready(1, std::time::Duration::from_secs(15));
}

#[test]
fn a_worker_that_sends_its_parent_a_handle_keeps_talking_to_the_cluster() {
    // Node holds every message after a handle until the parent answers it:
    // unanswered, the worker's announcements and adapter frames never leave.
    let app = App::start_with(2, serde_json::json!({"env": {"SEND_HANDLE": "1"}}));
    let r = node("cluster.js", &[&app.port.to_string()]);
    for (w, reached) in r["emitReachesAll"].as_object().unwrap() {
        assert_eq!(reached, &r["clients"], "io.emit from {w}: {r}");
    }
    assert!(app.log().contains("the worker sent a handle to its parent"), "{}", app.log());
}
