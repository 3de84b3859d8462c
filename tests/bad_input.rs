//! Bad input gets a clear answer and loses nothing; the master's memory
//! stays flat through all of it.

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn exchange(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn garbage_and_oversized_heads_get_an_answer_and_a_close() {
    let app = App::start(2);
    let tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage";
    let r = exchange(app.port, tls_hello);
    assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r:?}");
    assert!(r.contains("Connection: close\r\n"), "{r:?}");
    let mut endless = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nX-Filler: ".to_vec();
    endless.resize(64 * 1024, b'a');
    let r = exchange(app.port, &endless);
    assert!(r.starts_with("HTTP/1.1 431 "), "{r:?}");
    assert!(r.contains("Connection: close\r\n"), "{r:?}");
    let r = exchange(app.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 OK"), "a worker serves plain requests too: {r:?}");
    let c = &app.status()["counters"];
    assert_eq!((c["answered_400"].as_u64(), c["answered_431"].as_u64()), (Some(1), Some(1)), "{c}");
}

/// A client that started a head and stalls.
fn stalled_client(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /socket.io/?EIO=4").unwrap();
    s
}

#[test]
fn a_thousand_idle_connections_do_not_stop_other_clients() {
    let app = App::start_with(2, json!({"timeouts": {"head_ms": 8000}}));
    let mut idle: Vec<TcpStream> = (0..1000).map(|_| stalled_client(app.port)).collect();
    wait_for("1000 heads being read", Duration::from_secs(20), || app.status()["reading_heads"] == 1000);
    let r = node("race.js", &[&app.port.to_string(), "100"]);
    assert_eq!(r["counts"], json!({"ok": 100}), "{r}");
    assert_eq!(app.status()["reading_heads"], 1000, "the others were served while every idle one still waited");
    // Then each idle one is told it took too long, and closed.
    let mut answer = String::new();
    idle[0].set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    idle[0].read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    wait_for("every idle connection answered", Duration::from_secs(20), || {
        let s = app.status();
        s["reading_heads"] == 0 && s["counters"]["answered_408"] == 1000
    });
}

#[test]
fn the_master_is_handed_a_connection_only_once_its_request_has_arrived() {
    // TCP_DEFER_ACCEPT: the master is woken once per connection, with the
    // head there to peek at (main accepted at the handshake's last ACK,
    // found nothing, and had to watch the socket and wake again).
    let app = App::start(1);
    let accepted = || app.status()["counters"]["accepted"].as_u64().unwrap();
    let before = accepted();
    let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(accepted(), before, "the kernel keeps a connection that has said nothing yet");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert_eq!(accepted(), before + 1);
}

#[test]
fn connections_that_never_send_a_byte_are_closed_without_an_answer() {
    // A browser's pre-connect or a port probe: a 408 there could be read as
    // the answer to a request the browser sends later (HAProxy's
    // `http-ignore-probes`).
    let app = App::start_with(1, json!({"timeouts": {"head_ms": 500}}));
    let mut silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(("127.0.0.1", app.port)).unwrap()).collect();
    let mut slow = stalled_client(app.port);
    for s in silent.iter_mut().chain([&mut slow]) {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    for s in &mut silent {
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        assert!(answer.is_empty(), "closed silently: {:?}", String::from_utf8_lossy(&answer));
    }
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "a head begun and not finished is answered: {answer:?}");
    let c = &app.status()["counters"];
    assert_eq!((c["closed_idle"].as_u64(), c["answered_408"].as_u64()), (Some(20), Some(1)), "{c}");
}

#[test]
fn clients_that_close_mid_handoff_cost_nothing() {
    let app = App::start(2);
    let head = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..2000 {
        let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
        let _ = s.write_all(head);
        drop(s); // gone before the worker answers
    }
    let r = node("race.js", &[&app.port.to_string(), "50"]);
    assert_eq!(r["counts"], json!({"ok": 50}), "{r}");
    wait_for("nothing held", Duration::from_secs(10), || {
        let s = app.status();
        s["in_flight"] == 0 && s["waiting"] == 0 && s["reading_heads"] == 0
    });
}

#[test]
fn a_worker_that_dies_mid_handoff_loses_no_connection() {
    let app = App::start(2);
    let status = app.status();
    let w1 = status["workers"].as_array().unwrap().iter().find(|w| w["slot"] == 1).unwrap().clone();
    let node1 = children_of(w1["pid"].as_u64().unwrap() as u32)[0];
    // Frozen, the worker cannot acknowledge what it is sent...
    kill(Pid::from_raw(node1 as i32), Signal::SIGSTOP).unwrap();
    let port = app.port.to_string();
    let client = std::thread::spawn(move || node("mid_handoff.js", &[&port, "20"]));
    wait_for("handoffs to the frozen worker", Duration::from_secs(5), || app.status()["in_flight"].as_u64() >= Some(5));
    // ...and then it dies holding them.
    kill(Pid::from_raw(node1 as i32), Signal::SIGKILL).unwrap();
    let r = client.join().unwrap();
    assert_eq!(r["counts"], json!({"slot 2": 20}), "every handshake answered by the survivor: {r}");
    assert!(app.status()["counters"]["rerouted"].as_u64() >= Some(5), "{}", app.status());
}

#[test]
fn strangers_cannot_reach_the_bus_and_agents_are_admitted_by_who_started_them() {
    let app = App::start(1);
    let bus = app.runtime_dir().join(format!("{}.bus", app.name));
    // A real agent run as nobody: the private folder keeps it out.
    let its_own = scratch_dir(&format!("{}-nobody", app.name));
    std::os::unix::fs::chown(&its_own, Some(65534), Some(65534)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sio"))
        .args(["worker", &format!("{}:9", app.name), "--config"])
        .arg(&app.config)
        .env("SIO_RUNTIME_DIR", app.runtime_dir())
        .env("RUNTIME_DIRECTORY", &its_own)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Permission denied"), "{err}");
    // The master's own uid, but not an agent the master started: refused,
    // and logged with the kernel's pid.
    let agent = Command::new(env!("CARGO_BIN_EXE_sio"))
        .args(["worker", &format!("{}:9", app.name), "--config"])
        .arg(&app.config)
        .env("SIO_RUNTIME_DIR", app.runtime_dir())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = agent.id();
    let out = agent.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("the master refused this agent: permission denied"), "{err}");
    wait_for("the refusal logged", Duration::from_secs(5), || {
        let log = app.log();
        log.contains("refused a bus peer that claims to be an agent") && log.contains(&format!("peer_pid={pid}"))
    });
    // Same uid, but garbage instead of a hello.
    let mut s = std::os::unix::net::UnixStream::connect(&bus).unwrap();
    s.write_all(&[0xff; 64]).unwrap();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut rest);
    let status = app.status();
    assert_eq!(status["counters"]["refused_peers"], 1, "{status}");
    assert_eq!(status["workers"].as_array().unwrap().len(), 1, "no worker 9: {status}");
    assert_eq!(App::ready_workers(&status), 1, "the worker is unaffected: {status}");
}

#[test]
fn a_squatter_on_the_old_abstract_name_or_in_the_runtime_folder_changes_nothing() {
    // Before any master: one binds protocol 1's abstract name, another
    // leaves a dead socket file where the bus goes.
    let name = app_name();
    let squat = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
        format!("sio/{name}").as_bytes(),
    )
    .unwrap();
    let _squatter = std::os::unix::net::UnixListener::bind_addr(&squat).unwrap();
    let app = App::start_named(&name, 2, json!({}), |run| {
        std::fs::create_dir_all(run).unwrap();
        std::fs::set_permissions(run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        drop(std::os::unix::net::UnixListener::bind(run.join(format!("{name}.bus"))).unwrap());
    });
    let r = node("race.js", &[&app.port.to_string(), "20"]);
    assert_eq!(r["counts"], json!({"ok": 20}), "served: {r}");
    // A runtime folder others may enter is refused, by name.
    let dir = scratch_dir(&format!("{name}-open"));
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sio"))
        .arg("up")
        .arg(&app.config)
        .env("SIO_RUNTIME_DIR", &dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("that nobody else may enter (mode 0700)"), "{err}");
}

#[test]
fn sioctl_refuses_a_server_of_another_uid() {
    // A fake master: a socket of nobody's in a folder of nobody's.
    let dir = scratch_dir(&format!("{}-fake", app_name()));
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let path = dir.join("chat.control");
    let mut fake = Command::new("/usr/bin/python3")
        .args(["-c", "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); print('up', flush=True); c,_=s.accept(); c.sendall(bytes([3,0,0,0,1,1,0])); time.sleep(5)"])
        .arg(&path)
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(fake.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sioctl"))
        .args(["status", "chat"])
        .env("SIO_RUNTIME_DIR", &dir)
        .output()
        .unwrap();
    let _ = fake.kill();
    let _ = fake.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("neither root, the sio user nor this user: not talking to it"), "{err}");
}

#[test]
fn the_masters_memory_stays_bounded() {
    let app = App::start_with(2, json!({"timeouts": {"head_ms": 1000}}));
    // One round of 1,000 idle connections, 500 garbage heads, 300 sessions
    // and 200 bus peers that hang up; then what the master holds, once
    // nothing is in progress: heap bytes in use (counted by its allocator,
    // so what the system allocator keeps for reuse is no noise) and fds.
    let round = || {
        let idle: Vec<TcpStream> = (0..1000).map(|_| stalled_client(app.port)).collect();
        for _ in 0..500 {
            exchange(app.port, b"\x00\x01garbage\r\n\r\n");
        }
        let r = node("race.js", &[&app.port.to_string(), "300"]);
        assert_eq!(r["counts"], json!({"ok": 300}), "{r}");
        bus_probe(&app.runtime_dir().join(format!("{}.control", app.name)), &["close", "200"]);
        drop(idle);
        let mut held = (0, 0);
        wait_for("nothing in progress", Duration::from_secs(10), || {
            let s = app.status();
            let quiet = s["reading_heads"] == 0 && s["waiting"] == 0 && s["in_flight"] == 0 && s["lingering"] == 0;
            held = (s["heap_bytes"].as_u64().expect("the master counts its heap"), open_fds(app.pid()));
            quiet
        });
        held
    };
    // The first rounds size the pools (reactor slots, buffers, tables at
    // their high-water mark); after that nothing may grow.
    round();
    round();
    let (warm_heap, warm_fds) = round();
    let mut after = (0, 0);
    for _ in 0..3 {
        after = round();
    }
    println!(
        "master heap: {warm_heap} bytes after three rounds, {} after three more; fds {warm_fds} -> {}; RSS {} KiB",
        after.0,
        after.1,
        rss_kib(app.pid())
    );
    assert!(
        after.0 < warm_heap + 64 * 1024,
        "heap grew from {warm_heap} to {} bytes: something is kept per connection",
        after.0
    );
    assert!(after.1 <= warm_fds + 2, "fds grew from {warm_fds} to {}", after.1);
}

#[test]
fn operators_that_ask_and_never_read_hold_one_reply_each_and_others_are_served() {
    let app = App::start(2);
    let control = app.runtime_dir().join(format!("{}.control", app.name));
    let idle = app.status()["heap_bytes"].as_u64().unwrap();
    let rss_idle = rss_kib(app.pid());
    // Eight clients, each with 100,000 status requests it never reads the
    // answers to, for 5 s.
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let control = control.clone();
            std::thread::spawn(move || bus_probe(&control, &["unread", "100000", "5"]))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    // Another operator, and clients, meanwhile.
    let during = app.status();
    let heap = during["heap_bytes"].as_u64().unwrap();
    let r = node("race.js", &[&app.port.to_string(), "20"]);
    assert_eq!(r["counts"], json!({"ok": 20}), "clients served meanwhile: {r}");
    let rss = rss_kib(app.pid());
    let results: Vec<Value> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    println!("master heap: {idle} bytes idle, {heap} with 8 operators not reading; RSS {rss_idle} -> {rss} KiB");
    for r in &results {
        assert!(r["sent"].as_u64() < r["all"].as_u64(), "the master stopped reading requests it cannot answer: {r}");
    }
    assert!(heap < idle + 2 * 1024 * 1024, "one reply each is held, not all: {idle} -> {heap} bytes");
    assert_eq!(App::ready_workers(&during), 2, "{during}");
}

#[test]
fn connections_the_master_answers_cost_it_little_heap_while_they_linger() {
    // Answered clients are read out for a moment before closing; main gave
    // each lingering one a 4 KiB buffer of its own (4.9 MB for these 1,000),
    // and a client holding the connection open keeps it for the whole linger.
    let app = App::start_with(1, json!({"timeouts": {"head_ms": 500}}));
    let before = app.status()["heap_bytes"].as_u64().expect("the master counts its heap");
    let idle: Vec<TcpStream> = (0..1000).map(|_| stalled_client(app.port)).collect();
    let mut lingering = (0, 0);
    wait_for("1000 answered with 408 and lingering", Duration::from_secs(20), || {
        let s = app.status();
        lingering = (s["lingering"].as_u64().unwrap(), s["heap_bytes"].as_u64().unwrap());
        s["counters"]["answered_408"] == 1000 && lingering.0 == 1000
    });
    let per_connection = lingering.1.saturating_sub(before) / 1000;
    println!("master heap {before} bytes -> {} with 1000 lingering: {per_connection} bytes each", lingering.1);
    assert!(per_connection < 2048, "{per_connection} bytes of heap per lingering connection");
    drop(idle);
    wait_for("none lingering", Duration::from_secs(10), || app.status()["lingering"] == 0);
}

#[test]
fn bus_peers_that_hang_up_or_speak_garbage_leave_no_fd_behind() {
    let app = App::start(1);
    let before = open_fds(app.pid());
    // Peers of both sockets, hanging up at every step before being admitted.
    for door in ["bus", "control"] {
        let path = app.runtime_dir().join(format!("{}.{door}", app.name));
        for mode in ["close", "garbage", "truncated"] {
            let r = bus_probe(&path, &[mode, "500"]);
            assert_eq!(r["connected"], 500, "{door} {mode}: {r}");
        }
    }
    wait_for("the master's fds back to where they were", Duration::from_secs(10), || open_fds(app.pid()) <= before + 2);
    let r = node("race.js", &[&app.port.to_string(), "20"]);
    assert_eq!(r["counts"], json!({"ok": 20}), "still serving: {r}");
}

#[test]
fn huge_frames_announced_by_a_peer_leave_the_masters_memory_flat() {
    let app = App::start(1);
    let before = rss_kib(app.pid());
    // Each says hello as an operator, then announces a 256 MiB frame and
    // sends 4 KiB of it (main grew to 1.5 GiB: buffers sized by the claim).
    let r = bus_probe(&app.runtime_dir().join(format!("{}.control", app.name)), &["huge", "16", "3000"]);
    let after = rss_kib(app.pid());
    println!("master RSS {before} KiB -> {after} KiB");
    assert_eq!(r["closedByMaster"], 16, "each is dropped for its oversized frame: {r}");
    assert!(after < before + 16 * 1024, "RSS grew from {before} to {after} KiB");
    let r = node("race.js", &[&app.port.to_string(), "20"]);
    assert_eq!(r["counts"], json!({"ok": 20}), "still serving: {r}");
}

#[test]
fn a_hung_worker_is_killed_and_its_connections_are_served_by_the_others() {
    let app = App::start_with(2, json!({"timeouts": {"handoff_ms": 2000}}));
    let r = node("hung.js", &[&app.port.to_string(), "20"]);
    assert_eq!(r["served"], 20, "every new session is served: {r}");
    assert!(r["maxMs"].as_u64().unwrap() < 2000 + 4000, "within the handoff bound plus a margin: {r}");
    assert_eq!(r["healthyDisconnects"], 0, "a client of the healthy worker is unaffected: {r}");
    assert_eq!(r["healthyEcho"], "still here", "{r}");
    wait_for("the hung worker replaced", Duration::from_secs(20), || App::ready_workers(&app.status()) == 2);
    assert!(app.log().contains("its event loop is stuck; killed"), "{}", app.log());
}

#[test]
fn with_websocket_alone_a_hung_worker_is_killed_for_its_silent_heartbeat() {
    // No connection is handed to a worker that accepts itself: the
    // preload's heartbeat is what shows its event loop runs.
    let app = App::start_with(2, json!({"transports": ["websocket"], "timeouts": {"handoff_ms": 2000}}));
    let r = node("hung.js", &[&app.port.to_string(), "20"]);
    assert_eq!(r["served"], 20, "every new session is served: {r}");
    assert_eq!(r["healthyDisconnects"], 0, "a client of the healthy worker is unaffected: {r}");
    assert_eq!(r["healthyEcho"], "still here", "{r}");
    wait_for("the hung worker killed", Duration::from_secs(20), || app.log().contains("sent no heartbeat"));
    wait_for("the hung worker replaced", Duration::from_secs(20), || App::ready_workers(&app.status()) == 2);
    // Idle workers that run are heard: none else is killed, the new one neither.
    std::thread::sleep(Duration::from_secs(5));
    let log = app.log();
    let killed: Vec<&str> = log.lines().filter(|l| l.contains("its event loop is stuck; killed")).collect();
    assert_eq!(killed.len(), 1, "{log}");
    assert!(killed[0].contains("sent no heartbeat") && killed[0].contains("worker=1"), "{log}");
}

#[test]
fn a_reload_into_websocket_alone_without_a_master_restart_keeps_the_workers_and_says_why() {
    // The README asks for a restart of the master, then a reload. Forget the
    // restart: the new agents read the new config and wait for sockets this
    // master never hands over.
    let app = App::start_with(2, json!({"timeouts": {"ready_ms": 5000}}));
    let before = agent_pids(&app.status());
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&app.config).unwrap()).unwrap();
    cfg["transports"] = json!(["websocket"]);
    std::fs::write(&app.config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let out = app.sioctl().args(["reload", &app.name]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && said.contains("kept"), "{said}");
    assert!(app.log().contains("no listening socket from the master yet"), "the new agent says why: {}", app.log());
    let status = app.status();
    assert_eq!(agent_pids(&status), before, "the old workers serve on: {status}");
    // Long-polling too: the master still routes with its own config.
    let r = Holder::start(app.port, 10, "polling,websocket").report();
    assert!(all_connected(&r), "{r}");
}

#[test]
fn a_stalled_worker_does_not_block_the_relay() {
    let app = App::start_with(3, json!({"limits": {"bus_queue_bytes": 2 << 20}}));
    let (mut flood, ready) = Scenario::start("flood.js", &[&app.port.to_string(), "w3", "400"]);
    assert!(ready.starts_with("READY ") && ready.contains("w3"), "{ready}");
    let w3 =
        app.status()["workers"].as_array().unwrap().iter().find(|w| w["slot"] == 3).unwrap()["pid"].as_u64().unwrap();
    let node3 = Pid::from_raw(children_of(w3 as u32)[0] as i32);
    kill(node3, Signal::SIGSTOP).unwrap();
    flood.say("go");
    let result = flood.result();
    let status = app.status();
    kill(node3, Signal::SIGCONT).unwrap();
    for pair in result["received"].as_array().unwrap() {
        assert_eq!(pair[1], 400, "every broadcast reached the workers that read: {result}");
    }
    assert!(
        status["counters"]["dropped_frames"].as_u64().unwrap() > 0,
        "frames for the frozen worker dropped: {status}"
    );
    let queued =
        status["workers"].as_array().unwrap().iter().map(|w| w["queued_bytes"].as_u64().unwrap()).max().unwrap();
    assert!(queued <= 2 << 20, "the master's queue for it stays within bus_queue_bytes: {status}");
}

#[test]
fn the_pending_connection_cap_pauses_accepting_and_resumes() {
    let app = App::start_with(2, json!({"timeouts": {"head_ms": 1000}, "limits": {"max_pending_connections": 20}}));
    let idle: Vec<TcpStream> = (0..100).map(|_| stalled_client(app.port)).collect();
    wait_for("the cap reached", Duration::from_secs(10), || app.status()["reading_heads"] == 20);
    std::thread::sleep(Duration::from_millis(300));
    let s = app.status();
    assert_eq!(s["reading_heads"], 20, "no more than the cap held: {s}");
    assert_eq!(s["counters"]["accepted"].as_u64(), Some(20), "the rest wait in the kernel's backlog: {s}");
    // As idle ones time out, the rest are accepted in turn, then real clients.
    let r = node("race.js", &[&app.port.to_string(), "20"]);
    assert_eq!(r["counts"], json!({"ok": 20}), "{r}");
    wait_for("every idle connection answered", Duration::from_secs(20), || {
        app.status()["counters"]["answered_408"] == 100
    });
    drop(idle);
}

#[test]
fn no_worker_ready_in_time_is_a_503_that_closes() {
    // A worker that starts but never attaches a message listener: never ready.
    let app = App::start_with(
        0,
        json!({"instances": 1, "command": ["node", "-e", "setInterval(() => {}, 1000)"], "timeouts": {"worker_wait_ms": 500}}),
    );
    let r = exchange(app.port, b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r:?}");
    assert!(r.contains("Connection: close\r\n") && r.contains("Retry-After: 1\r\n"), "{r:?}");
    let s = app.status();
    assert_eq!(s["counters"]["answered_503"], 1, "{s}");
    assert_eq!(s["workers"][0]["state"], "connected", "{s}");
}

#[test]
fn a_burst_with_half_its_connections_abandoned_mid_handoff_spreads_evenly() {
    let app = App::start(2);
    // 200 handshakes abandoned right after their head (half FIN, half RST)
    // among 50 real clients; then, once the abandoned ones stopped counting
    // as pending, 50 more.
    let r = node("burst.js", &[&app.port.to_string(), "200", "50"]);
    for phase in ["byWorker", "laterByWorker"] {
        for w in ["w1", "w2"] {
            let n = r[phase][w].as_u64().unwrap_or(0);
            assert!((22..=28).contains(&n), "{phase}: within 10% of an even split: {r}");
        }
    }
}

#[test]
fn sio_up_replaces_a_worker_above_memory_max_and_the_others_never_notice() {
    let app = App::start_with(2, json!({"limits": {"memory_max": "96M"}, "timeouts": {"drain_ms": 300}}));
    let r = node("hog.js", &[&app.port.to_string(), "200"]);
    assert_eq!(r["hogDisconnected"], true, "the worker above its limit was stopped: {r}");
    assert_eq!(r["healthyDisconnects"], 0, "a client of the other worker is unaffected: {r}");
    assert_eq!(r["healthyEcho"], "still here", "{r}");
    wait_for("a replacement ready, worker 1 gone", Duration::from_secs(20), || {
        let s = app.status();
        let slots: Vec<u64> = s["workers"].as_array().unwrap().iter().map(|w| w["slot"].as_u64().unwrap()).collect();
        App::ready_workers(&s) == 2 && !slots.contains(&1) && slots.contains(&2)
    });
    assert!(!alive(r["hogPid"].as_u64().unwrap() as u32), "the hog's Node process is gone");
    assert!(app.log().contains("above limits.memory_max (96 MiB): replacing it"), "{}", app.log());
}
