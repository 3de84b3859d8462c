//! The cross-host targets: two sio hosts (two `sio up` of 2 workers each, on
//! two ports) and the `redis-server` between them, started by the benchmark
//! and stopped by pid. `bridge`: the masters' host bridge carries the
//! unchanged workers' cluster adapter to Redis. `app-redis`: every worker
//! runs `@socket.io/redis-streams-adapter` itself.

use crate::target::{free_port, signal, Across, Kind, Paths, Router, Target};
use sio::procfs::Table;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The names `--targets` knows them by.
pub const NAMES: [&str; 2] = ["bridge", "app-redis"];

/// A `redis-server` on a free loopback port, without persistence.
pub struct Redis {
    child: Child,
    port: u16,
    pub url: String,
}

impl Redis {
    pub fn start() -> Result<Redis, String> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("redis-server (Debian: apt install redis-server) for the cross-host targets: {e}; leave them out with --targets")
            })?;
        let redis = Redis { child, port, url: format!("redis://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(10);
        while query(port, "PING").as_deref() != Some("+PONG\r\n") {
            if Instant::now() > deadline {
                redis.stop();
                return Err("redis-server does not answer PING after 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(redis)
    }

    /// Its clients' connections (`INFO clients`), the benchmark's own
    /// query included.
    pub fn connections(&self) -> Option<u64> {
        let info = query(self.port, "INFO clients")?;
        info.lines().find_map(|l| l.strip_prefix("connected_clients:")).and_then(|n| n.trim().parse().ok())
    }

    pub fn router(&self) -> Router {
        Router { role: "redis".into(), pid: self.child.id() }
    }

    pub fn stop(mut self) {
        signal(self.child.id(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// One inline command on a connection of its own; the first read of the
/// answer (small answers come whole on loopback).
fn query(port: u16, command: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).ok()?;
    Some(String::from_utf8_lossy(&answer[..n]).into_owned())
}

/// Two sio hosts on one Redis.
pub struct Hosts {
    pub name: &'static str,
    pub hosts: [Target; 2],
    redis: Redis,
}

impl Hosts {
    pub fn start(name: &'static str, paths: &Paths) -> Result<Hosts, String> {
        let redis = Redis::start()?;
        let across = || match name {
            "bridge" => Ok(Across::Bridge(redis.url.clone())),
            "app-redis" => Ok(Across::AppAdapter(redis.url.clone())),
            other => Err(format!("unknown cross-host target {other:?}")),
        };
        let first = match across().and_then(|a| Target::start(Kind::Sio, paths, &a)) {
            Ok(target) => target,
            Err(e) => {
                redis.stop();
                return Err(e);
            }
        };
        match across().and_then(|a| Target::start(Kind::Sio, paths, &a)) {
            Ok(second) => Ok(Hosts { name, hosts: [first, second], redis }),
            Err(e) => {
                first.stop();
                redis.stop();
                Err(e)
            }
        }
    }

    /// Every process that is not a Node worker: both hosts' masters and
    /// agents, and redis-server.
    pub fn routers(&self, table: &Table) -> Vec<Router> {
        let mut routers: Vec<Router> = self.hosts.iter().flat_map(|h| h.routers(table)).collect();
        routers.push(self.redis.router());
        routers
    }

    /// Connections to Redis, less the query's own.
    pub fn redis_connections(&self) -> Option<u64> {
        self.redis.connections().map(|n| n.saturating_sub(1))
    }

    pub fn workers(&self, table: &Table) -> Vec<u32> {
        self.hosts.iter().flat_map(|h| h.workers(table)).collect()
    }

    pub fn stop(self) {
        let [first, second] = self.hosts;
        first.stop();
        second.stop();
        self.redis.stop();
    }
}
