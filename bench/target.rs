//! The servers under test, each running `bench/node/worker.js` unchanged,
//! started and stopped by pid, reached on 127.0.0.1 (all listen there only
//! but pm2's God, which binds every interface).

use sio::procfs::Table;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `sio up`, 2 workers.
    Sio,
    /// The same with `"transports": ["websocket"]`: the workers accept
    /// themselves, no router on the path. Websocket only.
    SioWs,
    /// The same with another sio binary (`--baseline`): a change measured
    /// against the build before it in one run.
    SioBaseline,
    /// `@socket.io/pm2` in cluster mode, 2 instances.
    Pm2,
    /// Node's `cluster` + `@socket.io/sticky` + the cluster adapter's `setupPrimary`.
    Sticky,
    /// One Node process, no router.
    Node,
    /// Node's `cluster`, 2 workers accepting on one shared socket, no
    /// router: what two workers cost on the machine. Websocket only
    /// (nothing keeps a long-polling session on its worker).
    Shared,
}

impl Kind {
    pub const ALL: [Kind; 7] =
        [Kind::Sio, Kind::SioWs, Kind::SioBaseline, Kind::Pm2, Kind::Sticky, Kind::Node, Kind::Shared];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Sio => "sio",
            Kind::SioWs => "sio-ws",
            Kind::SioBaseline => "sio-baseline",
            Kind::Pm2 => "pm2",
            Kind::Sticky => "sticky",
            Kind::Node => "node",
            Kind::Shared => "shared",
        }
    }

    /// Whether every request of a session reaches its worker (long-polling
    /// works).
    pub fn sticky(self) -> bool {
        !matches!(self, Kind::Shared | Kind::SioWs)
    }

    pub fn workers(self) -> usize {
        if self == Kind::Node {
            1
        } else {
            2
        }
    }
}

/// How a sio target's broadcasts reach the workers of other hosts (the
/// cross-host targets run two sio targets on one Redis).
pub enum Across {
    /// One host: broadcasts stay on it.
    Nothing,
    /// The master's host bridge to the Redis at this URL; workers unchanged.
    Bridge(String),
    /// Each worker's own `@socket.io/redis-streams-adapter` on the Redis at
    /// this URL (`REDIS_URL` in its environment), in place of the cluster
    /// adapter.
    AppAdapter(String),
}

/// Where things are: the sio binaries and `bench/node` (npm packages installed).
pub struct Paths {
    pub sio: PathBuf,
    pub baseline: Option<PathBuf>,
    pub node_dir: PathBuf,
}

pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    /// The pm2 daemon, which is not our child.
    daemon: Option<u32>,
    dir: PathBuf,
}

/// A process that routes connections or relays broadcasts, for CPU and
/// memory accounting.
#[derive(Clone)]
pub struct Router {
    pub role: String,
    pub pid: u32,
}

impl Target {
    pub fn start(kind: Kind, paths: &Paths, across: &Across) -> Result<Target, String> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = std::env::temp_dir().join(format!("sio-bench-{}-{}-{port}", kind.name(), std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        let worker = paths.node_dir.join("worker.js");
        let mut command = match kind {
            Kind::Sio | Kind::SioWs | Kind::SioBaseline => {
                // The app's name is the file's: one per port, so two hosts
                // can run side by side.
                let config = dir.join(format!("bench-{port}.json"));
                let mut json = serde_json::json!({
                    "command": ["node", worker],
                    "cwd": paths.node_dir,
                    "instances": 2,
                    "listen": addr.to_string(),
                });
                if kind == Kind::SioWs {
                    json["transports"] = serde_json::json!(["websocket"]);
                }
                match across {
                    Across::Nothing => {}
                    // The hosts are two apps (bench-PORT): their Redis names
                    // must be shared, not each app's default.
                    Across::Bridge(url) => {
                        json["redis"] =
                            serde_json::json!({ "url": url, "channel_prefix": "socket.io", "stream_name": "socket.io" })
                    }
                    Across::AppAdapter(url) => json["env"] = serde_json::json!({ "REDIS_URL": url }),
                }
                std::fs::write(&config, json.to_string()).map_err(|e| e.to_string())?;
                let sio = match kind {
                    Kind::SioBaseline => paths.baseline.as_ref().ok_or("target sio-baseline needs --baseline PATH")?,
                    _ => &paths.sio,
                };
                let mut c = Command::new(sio);
                c.arg("up").arg(&config);
                c
            }
            // As socket.io's docs run it: `pm2 start` launches the God
            // daemon (its pid in $PM2_HOME/pm2.pid), which listens on
            // $PM2_PORT (on every interface: @socket.io/pm2 passes no host).
            Kind::Pm2 => {
                let mut c = Command::new(paths.node_dir.join("node_modules/.bin/pm2"));
                c.args(["start", "ecosystem.config.js"])
                    .env("PM2_HOME", dir.join("pm2"))
                    .env("PM2_PORT", port.to_string());
                c
            }
            Kind::Sticky => {
                let mut c = Command::new("node");
                c.arg(paths.node_dir.join("cluster-sticky.js")).env("WORKERS", "2");
                c
            }
            Kind::Shared => {
                let mut c = Command::new("node");
                c.arg(paths.node_dir.join("cluster-shared.js")).env("WORKERS", "2");
                c
            }
            Kind::Node => {
                let mut c = Command::new("node");
                c.arg(&worker);
                c
            }
        };
        let child = command
            .current_dir(&paths.node_dir)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{kind:?}: {e}"))?;
        Ok(Target { kind, addr, child, daemon: None, dir })
    }

    /// The process whose descendants are the workers.
    fn root(&self) -> u32 {
        self.daemon.unwrap_or(self.child.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Waits until `workers()` Node processes run (the readiness of their
    /// sockets is checked by the caller with real sessions).
    pub fn wait_workers(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // `pm2 start` exits once its daemon runs.
                if !(self.kind == Kind::Pm2 && status.success()) {
                    return Err(format!("{:?} exited ({status}): {}", self.kind, self.log()));
                }
            }
            self.find_daemon();
            if self.workers(&Table::read()).len() == self.kind.workers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("{:?}: workers not up after {timeout:?}: {}", self.kind, self.log()))
    }

    /// The pm2 daemon's pid, once `pm2 start` has written it.
    fn find_daemon(&mut self) {
        if self.kind == Kind::Pm2 && self.daemon.is_none() {
            self.daemon =
                std::fs::read_to_string(self.dir.join("pm2/pm2.pid")).ok().and_then(|p| p.trim().parse().ok());
        }
    }

    /// The Node workers' pids.
    pub fn workers(&self, table: &Table) -> Vec<u32> {
        match self.kind {
            Kind::Node => vec![self.child.id()],
            // The master's children are the agents, theirs the Node workers.
            Kind::Sio | Kind::SioWs | Kind::SioBaseline => {
                table.children(self.root()).into_iter().flat_map(|agent| table.children(agent)).collect()
            }
            Kind::Pm2 | Kind::Sticky | Kind::Shared => table.children(self.root()),
        }
    }

    /// The processes that route connections and relay broadcasts.
    pub fn routers(&self, table: &Table) -> Vec<Router> {
        match self.kind {
            Kind::Node => vec![],
            Kind::Sio | Kind::SioWs | Kind::SioBaseline => {
                std::iter::once(Router { role: "master".into(), pid: self.root() })
                    .chain(table.children(self.root()).into_iter().map(|pid| Router { role: "agent".into(), pid }))
                    .collect()
            }
            Kind::Pm2 => vec![Router { role: "God".into(), pid: self.root() }],
            Kind::Sticky => vec![Router { role: "primary".into(), pid: self.root() }],
            // Its primary relays broadcasts (cluster-adapter's setupPrimary)
            // but routes no connection.
            Kind::Shared => vec![Router { role: "primary".into(), pid: self.root() }],
        }
    }

    /// Stops everything it started, by pid: SIGTERM to the root, then
    /// SIGKILL to whatever of its tree is left after 5 s.
    pub fn stop(mut self) {
        // A start that failed early may not have looked for it yet.
        self.find_daemon();
        let table = Table::read();
        let mut pids = vec![self.root()];
        let mut i = 0;
        while i < pids.len() {
            pids.extend(table.children(pids[i]));
            i += 1;
        }
        pids.push(self.child.id());
        signal(self.root(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
            let _ = self.child.try_wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        for &pid in &pids {
            if alive(pid) {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// bench/node, found from the crate's folder.
pub fn node_dir(manifest: &Path) -> PathBuf {
    manifest.join("bench/node")
}
