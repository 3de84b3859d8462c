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

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut answer = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
