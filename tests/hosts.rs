//! Several hosts: sio apps standing in for machines (each its own `sio up`
//! on its own port) beside a plain Node server, sharing one real
//! `redis-server` started by the test.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real `redis-server` on a loopback port, without persistence; killed
/// when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let mut redis = Redis { child: None, port: free_port(), dir: dir.to_owned() };
        redis.resume();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port) and waits until it answers.
    fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server is needed for these tests (Debian: redis-server)");
        self.child = Some(child);
        wait_for("redis-server to answer PING", Duration::from_secs(10), || self.ping());
    }

    /// Kills the server (the test's outage).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends commands as raw RESP on one connection (binary-safe, any
    /// bytes a hostile peer could send), and waits for every reply.
    fn pipeline(&self, commands: &[Vec<&[u8]>]) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut out = Vec::new();
        for args in commands {
            out.extend(format!("*{}\r\n", args.len()).into_bytes());
            for a in args {
                out.extend(format!("${}\r\n", a.len()).into_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        }
        s.write_all(&out).unwrap();
        // One line per reply: XADD answers an id, PUBLISH a count.
        let mut reader = BufReader::new(s);
        for _ in commands {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.starts_with('$') {
                line.clear();
                reader.read_line(&mut line).unwrap();
            }
            assert!(!line.starts_with('-'), "Redis refused a command: {line}");
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut answer = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `tests/node/worker.js` as a plain Node server (no cluster parent), on a
/// free port; killed when dropped.
struct NodeHost {
    child: Child,
    port: u16,
}

impl NodeHost {
    fn start(env: &[(&str, &str)]) -> NodeHost {
        ensure_node_modules();
        let mut child = Command::new("node")
            .arg(node_dir().join("worker.js"))
            .current_dir(node_dir())
            .envs(env.iter().copied())
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the plain Node server did not start: {line:?}"))
            .parse()
            .unwrap();
        NodeHost { child, port }
    }
}

impl Drop for NodeHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sio host: `sio up` of `workers` workers with `env` for them.
fn sio_host(workers: u16, env: Value) -> App {
    App::start_with(workers, json!({ "env": env }))
}

/// A real HAProxy (Debian's) in front of `hosts` (tag, port), with the
/// stickiness rules README's "Several hosts" gives; killed when dropped.
struct Haproxy {
    child: Child,
    port: u16,
}

impl Haproxy {
    fn start(dir: &Path, hosts: &[(char, u16)]) -> Haproxy {
        let port = free_port();
        let mut config = format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 1h\n\n\
             frontend socket_io\n  bind 127.0.0.1:{port}\n  default_backend hosts\n\n\
             backend hosts\n  balance roundrobin\n"
        );
        for (tag, _) in hosts {
            config += &format!("  use-server {tag} if {{ urlp(sid) -m reg ^..{tag} }}\n");
        }
        for (tag, host_port) in hosts {
            config += &format!("  server {tag} 127.0.0.1:{host_port} check inter 1s\n");
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("haproxy is needed for this test (Debian: haproxy)");
        wait_for("haproxy to listen", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        Haproxy { child, port }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn apps_own_redis_adapter_across_hosts(adapter: &str) {
    let dir = scratch_dir(&app_name());
    let redis = Redis::start(&dir);
    let url = redis.url();
    let a = sio_host(2, json!({ "ADAPTER": adapter, "REDIS_URL": url, "HOST_NAME": "a" }));
    let b = sio_host(2, json!({ "ADAPTER": adapter, "REDIS_URL": url, "HOST_NAME": "b" }));
    let plain = NodeHost::start(&[("ADAPTER", adapter), ("REDIS_URL", &url), ("HOST_NAME", "c")]);
    let r = node("cluster.js", &[&a.port.to_string(), &b.port.to_string(), &plain.port.to_string()]);
    assert_one_socket_io_cluster(&r, 12, 5);
}

#[test]
fn two_sio_hosts_and_a_plain_node_host_on_the_apps_own_redis_streams_adapter() {
    // The documented path across machines today: worker.js with
    // @socket.io/redis-streams-adapter instead of the cluster adapter.
    apps_own_redis_adapter_across_hosts("redis-streams");
}

#[test]
fn two_sio_hosts_and_a_plain_node_host_on_the_apps_own_redis_adapter() {
    // Same with the pub/sub @socket.io/redis-adapter.
    apps_own_redis_adapter_across_hosts("redis");
}

/// A sio host whose unchanged cluster-adapter workers reach the other
/// hosts through its master's bridge to Redis.
fn bridged_host(name: &str, redis: &Redis) -> App {
    App::start_with(
        2,
        json!({ "env": { "HOST_NAME": name }, "redis": { "url": redis.url(), "channel_prefix": "socket.io", "stream_name": "socket.io" } }),
    )
}

/// A Redis and two bridged hosts on it, `a` and `b`.
fn two_bridged_hosts() -> (Redis, App, App) {
    let redis = Redis::start(&scratch_dir(&app_name()));
    let a = bridged_host("a", &redis);
    let b = bridged_host("b", &redis);
    (redis, a, b)
}

#[test]
fn unchanged_cluster_adapter_workers_on_two_bridged_hosts_and_a_plain_redis_streams_host_form_one_cluster() {
    let (redis, a, b) = two_bridged_hosts();
    let plain = NodeHost::start(&[("ADAPTER", "redis-streams"), ("REDIS_URL", &redis.url()), ("HOST_NAME", "c")]);
    // The bridges probe for the other servers every 2 s.
    std::thread::sleep(Duration::from_secs(3));
    let r = node("cluster.js", &[&a.port.to_string(), &b.port.to_string(), &plain.port.to_string()]);
    let clients = 12;
    assert_eq!(r["clients"], clients, "{r}");
    let names: Vec<&str> = r["workers"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(names, ["a/w1", "a/w2", "b/w1", "b/w2", "c/node"], "clients on every server: {r}");
    let host = |w: &str| w.split('/').next().unwrap().to_owned();
    for (server, reached) in r["emitReachesAll"].as_object().unwrap() {
        assert_eq!(reached.as_u64(), Some(clients), "io.emit from {server} reaches every client: {r}");
    }
    assert_eq!(r["binaryKinds"], json!({ "binary": clients }), "a binary payload stays binary across Redis: {r}");
    for (server, count) in r["counts"].as_object().unwrap() {
        assert_eq!(count["count"].as_u64(), Some(clients), "fetchSockets on {server} sees every client: {r}");
        // To Redis a host is one server; to a worker, its host's other
        // workers and each other host are.
        let servers = if server == "c/node" { 3 } else { 4 };
        assert_eq!(count["servers"].as_u64(), Some(servers), "serverCount on {server}: {r}");
    }
    for (server, sse) in r["sse"].as_object().unwrap() {
        assert_eq!(sse["err"], Value::Null, "serverSideEmit from {server} is answered by every server: {r}");
        let replied: Vec<String> =
            sse["repliedBy"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect();
        // Its own host's other worker by name, every other host once.
        let mut by_host: Vec<String> = replied.iter().map(|w| host(w)).collect();
        by_host.sort();
        let mut expected: Vec<String> = ["a", "b", "c"].iter().map(|h| h.to_string()).collect();
        if server == "c/node" {
            expected.retain(|h| h != "c");
        }
        assert_eq!(by_host, expected, "one answer from every other server of {server}: {r}");
        if server != "c/node" {
            let sibling = names.iter().find(|w| host(w) == host(server) && *w != server).unwrap();
            assert!(replied.iter().any(|w| w == sibling), "{sibling} answers {server}: {r}");
        }
    }
    assert_eq!(r["roomReached"].as_u64(), Some(clients), "socketsJoin on one host, a room emit from another: {r}");
}

#[test]
fn malformed_messages_on_redis_restart_no_worker_and_are_counted_and_made_up_servers_join_no_cluster() {
    // What any peer of the shared Redis can send: each of the first five
    // killed every bridged worker before (socket.io-adapter throws on a
    // request without `data`; Node's IPC refuses a nil object key).
    let (redis, a, b) = two_bridged_hosts();
    // The bridges probe for the other servers every 2 s.
    std::thread::sleep(Duration::from_secs(3));
    let pids = (a.worker_pids(), b.worker_pids());
    let rss_before = rss_kib(a.pid());
    let xadd = |fields: &[&'static [u8]]| {
        let mut args: Vec<&[u8]> = vec![b"XADD", b"socket.io", b"*"];
        args.extend_from_slice(fields);
        args
    };
    // msgpack {uid: "evil", nsp: "/", type: 3, data: {nil: 1}}
    let nil_key_payload: &[u8] = &[
        0x84, 0xa3, b'u', b'i', b'd', 0xa4, b'e', b'v', b'i', b'l', 0xa3, b'n', b's', b'p', 0xa1, b'/', 0xa4, b't',
        b'y', b'p', b'e', 0x03, 0xa4, b'd', b'a', b't', b'a', 0x81, 0xc0, 0x01,
    ];
    let long_uid = vec![b'u'; 100_000];
    let mut long = xadd(&[b"nsp", b"/", b"type", b"2", b"uid"]);
    long.push(&long_uid);
    let malformed = vec![
        xadd(&[b"uid", b"evil", b"nsp", b"/", b"type", b"3"]),
        xadd(&[b"uid", b"evil", b"nsp", b"/", b"type", b"7", b"data", b"{}"]),
        // base64 of msgpack {nil: 1}
        xadd(&[b"uid", b"evil", b"nsp", b"/", b"type", b"3", b"data", b"gcAB"]),
        vec![b"PUBLISH" as &[u8], b"socket.io#/#", nil_key_payload],
        long,
        xadd(&[b"uid", b"evil", b"nsp", b"/", b"type", b"42", b"data", b"{}"]),
    ];
    redis.pipeline(&malformed);
    // A flood of made-up servers, each saying hello.
    let names: Vec<Vec<u8>> = (0..20_000).map(|i| format!("fake{i:05}").into_bytes()).collect();
    let flood: Vec<Vec<u8>> = names
        .iter()
        .map(|uid| {
            // msgpack {uid: <9 bytes>, nsp: "/", type: 1}
            let mut m = vec![0x83, 0xa3, b'u', b'i', b'd', 0xa9];
            m.extend_from_slice(uid);
            m.extend_from_slice(&[0xa3, b'n', b's', b'p', 0xa1, b'/', 0xa4, b't', b'y', b'p', b'e', 0x01]);
            m
        })
        .collect();
    let flood: Vec<Vec<&[u8]>> = flood.iter().map(|m| vec![b"PUBLISH" as &[u8], b"socket.io#/#", m]).collect();
    redis.pipeline(&flood);
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = rss_kib(a.pid());
    eprintln!("host A's master: {rss_before} KiB before, {rss_after} KiB after the malformed messages and 20,000 made-up servers");
    for (host, before) in [(&a, &pids.0), (&b, &pids.1)] {
        assert_eq!(&host.worker_pids(), before, "no worker restarted: {}", host.log());
        let rejected = host.status()["counters"]["bridge_rejected"].as_u64();
        assert_eq!(
            rejected,
            Some(malformed.len() as u64),
            "each malformed message refused and counted: {}",
            host.log()
        );
        let log = host.log();
        assert!(log.contains("bridge refused a message from Redis"), "{log}");
        assert!(log.matches("bridge refused a message from Redis").count() < 3, "said at a bounded rate: {log}");
    }
    assert!(rss_after < rss_before + 32 * 1024, "the master stays bounded ({rss_before} -> {rss_after} KiB)");
    // Still one cluster: every worker counts itself, its sibling and the
    // other host, and none of the made-up servers.
    let r = node("cluster.js", &[&a.port.to_string(), &b.port.to_string()]);
    assert_eq!(r["clients"], 8, "{r}");
    for (server, reached) in r["emitReachesAll"].as_object().unwrap() {
        assert_eq!(reached.as_u64(), Some(8), "io.emit from {server} reaches every client: {r}");
    }
    for (server, count) in r["counts"].as_object().unwrap() {
        assert_eq!(count["count"].as_u64(), Some(8), "fetchSockets on {server} sees every client: {r}");
        assert_eq!(count["servers"].as_u64(), Some(3), "serverCount on {server}: {r}");
    }
    for (server, sse) in r["sse"].as_object().unwrap() {
        assert_eq!(sse["err"], Value::Null, "serverSideEmit from {server} is answered: {r}");
    }
}

#[test]
fn redis_down_for_10_s_local_chat_goes_on_and_chat_across_hosts_resumes_when_it_is_back() {
    let (mut redis, a, b) = two_bridged_hosts();
    let (mut chat, ready) = Scenario::start("outage.js", &[&a.port.to_string(), &b.port.to_string()]);
    assert_eq!(ready, "READY");
    std::thread::sleep(Duration::from_secs(2));
    let rss_before = rss_kib(a.pid());
    redis.stop();
    chat.say("down");
    std::thread::sleep(Duration::from_secs(2));
    // More than the bridge keeps for Redis (10,000): the rest is dropped,
    // counted, and said, rather than held.
    chat.say("flood 12000");
    std::thread::sleep(Duration::from_secs(8));
    let rss_away = rss_kib(a.pid());
    let dropped = a.status()["counters"]["bridge_dropped"].as_u64().unwrap();
    redis.resume();
    chat.say("up");
    std::thread::sleep(Duration::from_secs(8));
    chat.say("end");
    let r = chat.result();
    let ticks = r["ticks"].as_array().unwrap();
    let phase = |p: &'static str| ticks.iter().filter(move |t| t["phase"] == p);
    assert!(ticks.iter().all(|t| t["local"] == true), "local chat never stops: {r}");
    assert!(phase("before").next_back().unwrap()["remote"] == true, "chat across hosts before: {r}");
    assert!(phase("down").count() >= 30, "{r}");
    let up: Vec<&Value> = phase("up").collect();
    let resumed_at = up.iter().position(|t| t["remote"] == true).unwrap_or_else(|| panic!("never resumed: {r}"));
    let after = (up[resumed_at]["at"].as_u64().unwrap() - up[0]["at"].as_u64().unwrap()) as f64 / 1000.0;
    assert!(after < 5.0, "chat across hosts resumes within a few seconds of Redis ({after} s): {r}");
    assert!(up[resumed_at..].iter().all(|t| t["remote"] == true), "and stays: {r}");
    assert_eq!(r["disconnects"], json!({ "a1": 0, "a2": 0, "b": 0 }), "no client lost its connection: {r}");
    eprintln!("host A's master: {rss_before} KiB before the outage, {rss_away} KiB with the bridge's queue full");
    assert!(dropped > 1000, "host A's bridge dropped what did not fit ({dropped}): {}", a.log());
    assert!(a.log().contains("messages wait for it: dropping"), "and said so: {}", a.log());
    for host in [&a, &b] {
        let log = host.log();
        assert!(alive(host.pid()), "the master survived: {log}");
        assert!(log.contains("cannot read the Redis stream"), "the outage is in the log: {log}");
        assert!(log.contains("reads the Redis stream again"), "and its end: {log}");
    }
}

#[test]
fn a_bridged_host_that_dies_is_dropped_by_the_other_hosts_workers_on_the_heartbeat_schedule() {
    let (_redis, a, b) = two_bridged_hosts();
    let (mut servers, ready) = Scenario::start("servers.js", &[&a.port.to_string()]);
    assert_eq!(ready, "READY");
    // The bridges probe for the other servers every 2 s.
    std::thread::sleep(Duration::from_secs(4));
    // Host B dies at once, master, agents and workers: nothing says goodbye.
    let mut tree = vec![b.pid()];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children_of(tree[i]));
        i += 1;
    }
    for &pid in &tree {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    servers.say("dead");
    std::thread::sleep(Duration::from_secs(25));
    servers.say("end");
    let r = servers.result();
    let ticks = r["ticks"].as_array().unwrap();
    let before: Vec<&Value> = ticks.iter().filter(|t| t["phase"] == "before").collect();
    assert_eq!(before.last().unwrap()["servers"], 3, "itself, its sibling and host B before: {r}");
    let dead: Vec<&Value> = ticks.iter().filter(|t| t["phase"] == "dead").collect();
    let at = |t: &Value| t["at"].as_u64().unwrap();
    let dropped = dead.iter().position(|t| t["servers"] == 2).unwrap_or_else(|| panic!("host B never dropped: {r}"));
    let after = (at(dead[dropped]) - at(dead[0])) as f64 / 1000.0;
    eprintln!("host B dropped {after} s after it died");
    // The bridge stops heartbeating B 6 s after its last sign of life and
    // the cluster adapter drops a server 10 s after its last heartbeat,
    // checking every 5 s: between about 5 and 21 s.
    assert!(dead[..dropped].iter().all(|t| t["servers"] == 3), "kept until it is dropped: {r}");
    assert!(after > 3.0, "not dropped at the first missed probe ({after} s): {r}");
    assert!(after < 23.0, "dropped on the heartbeat schedule ({after} s): {r}");
    assert!(dead[dropped..].iter().all(|t| t["servers"] == 2), "and stays dropped: {r}");
    assert_eq!(r["disconnects"], 0, "host A's client is not disturbed: {r}");
    assert!(alive(a.pid()), "host A's master lives on: {}", a.log());
}

#[test]
fn behind_haproxy_a_polling_session_stays_on_the_host_its_sid_names() {
    // Each host puts its `host_tag` third in its sids; HAProxy sends a
    // request with a sid to the host it names and spreads new sessions.
    // Long-polling is the hard case: every poll and every POST is a new
    // request that must reach the session's owner.
    let dir = scratch_dir(&app_name());
    let host = |tag: &str| App::start_with(2, json!({ "host_tag": tag, "env": { "HOST_NAME": tag } }));
    let (a, b) = (host("a"), host("b"));
    let lb = Haproxy::start(&dir, &[('a', a.port), ('b', b.port)]);
    let r = node("lb.js", &[&lb.port.to_string(), "20", "20"]);
    assert_eq!(r["errors"], json!([]), "no session lost to a request sent to another host: {r}");
    assert_eq!(r["roundTrips"], 400, "{r}");
    assert_eq!(r["answeredByAnother"], 0, "{r}");
    assert_eq!(
        r["sidTags"],
        json!({ "a:a": r["byHost"]["a"], "b:b": r["byHost"]["b"] }),
        "a host's sids carry its tag: {r}"
    );
    let on_a = r["byHost"]["a"].as_u64().unwrap_or(0);
    assert!((5..=15).contains(&on_a), "new sessions spread over both hosts: {r}");
}
