//! Test harness: real `sio up` masters, real Node workers, real
//! socket.io-client scenarios (`tests/node/*.js`).
#![allow(dead_code)] // each test binary uses a different part

pub mod sandbox;

use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn node_dir() -> PathBuf {
    repo().join("tests/node")
}

/// Installs the Node fixtures' packages once (`npm ci`), whatever the
/// number of test binaries running at once.
pub fn ensure_node_modules() {
    let dir = node_dir();
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(dir.join(".install.lock"))
        .unwrap();
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map(|held| {
            if !dir.join("node_modules/.package-lock.json").exists() {
                let ok = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .status()
                    .expect("npm is needed for the Node fixtures");
                assert!(ok.success(), "npm ci failed in {}", dir.display());
            }
            drop(held);
        })
        .map_err(|(_, e)| e)
        .expect("lock tests/node");
}

/// The agent binary of the previous bus protocol release, built once by
/// `tests/previous-agent.sh` (which `.ci/run` also runs before the tests).
pub fn previous_agent() -> PathBuf {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(std::env::temp_dir().join("sio-previous-agent.lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    let out = Command::new(repo().join("tests/previous-agent.sh")).stderr(Stdio::inherit()).output().unwrap();
    drop(held);
    assert!(out.status.success(), "tests/previous-agent.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique app name per test (apps share /run/sio and the journal).
pub fn app_name() -> String {
    format!("t{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sio-test-{name}"));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// A running `sio up` with its own app.
pub struct App {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    pub port: u16,
    /// How its master and its sioctl find their sockets: (variable, value).
    runtime_env: (&'static str, PathBuf),
}

impl App {
    /// `workers` instances of `tests/node/worker.js`, listening on an
    /// ephemeral loopback port.
    pub fn start(workers: u16) -> App {
        App::start_with(workers, json!({}))
    }

    /// Same, with fields merged into the config (e.g. `timeouts`).
    pub fn start_with(workers: u16, extra: Value) -> App {
        App::start_named(&app_name(), workers, extra, |_| {})
    }

    /// Same, for app `name`, with `prepare` run on its runtime folder
    /// (not created yet) before the master starts.
    pub fn start_named(name: &str, workers: u16, extra: Value, prepare: impl FnOnce(&Path)) -> App {
        let dir = scratch_dir(name);
        prepare(&dir.join("run"));
        let runtime_dir = dir.join("run");
        App::spawn(name, dir, workers, extra, ("SIO_RUNTIME_DIR", runtime_dir))
    }

    /// `workers` workers, with the sockets in `$XDG_RUNTIME_DIR/sio` as a
    /// user's `sio up` has them (shared by that user's apps).
    pub fn start_in_user_runtime(workers: u16, xdg_runtime_dir: &Path) -> App {
        let name = app_name();
        let dir = scratch_dir(&name);
        App::spawn(&name, dir, workers, json!({}), ("XDG_RUNTIME_DIR", xdg_runtime_dir.to_owned()))
    }

    fn spawn(name: &str, dir: PathBuf, workers: u16, extra: Value, runtime_env: (&'static str, PathBuf)) -> App {
        ensure_node_modules();
        let name = name.to_owned();
        let mut cfg = json!({
            "command": ["node", node_dir().join("worker.js")],
            "cwd": node_dir(),
            "instances": workers,
            "listen": "127.0.0.1:0",
        });
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let config = dir.join(format!("{name}.json"));
        fs::write(&config, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        App::launch(name, dir, config, workers, runtime_env)
    }

    /// `sio up CONFIG` of a config file written elsewhere (in `dir`, a
    /// scratch folder), once `workers` are ready.
    pub fn start_file(config: &Path, workers: u16) -> App {
        let name = config.file_stem().unwrap().to_str().unwrap().to_owned();
        let dir = config.parent().unwrap().to_owned();
        let runtime_dir = dir.join("run");
        App::launch(name, dir, config.to_owned(), workers, ("SIO_RUNTIME_DIR", runtime_dir))
    }

    fn launch(name: String, dir: PathBuf, config: PathBuf, workers: u16, runtime_env: (&'static str, PathBuf)) -> App {
        let log = fs::File::create(dir.join("sio.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sio"))
            .arg("up")
            .arg(&config)
            .env("SIO_LOG", "info,sio=debug")
            .env_remove("SIO_RUNTIME_DIR")
            .env(runtime_env.0, &runtime_env.1)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut app = App { name, dir, config, child: Some(child), port: 0, runtime_env };
        let status = app.wait_ready(workers as usize, Duration::from_secs(30));
        let addr = status["listen"][0].as_str().unwrap().to_owned();
        app.port = addr.rsplit(':').next().unwrap().parse().unwrap();
        app
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sio.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The master's private folder of sockets (`APP.bus`, `APP.control`).
    pub fn runtime_dir(&self) -> PathBuf {
        match self.runtime_env {
            ("XDG_RUNTIME_DIR", ref xdg) => xdg.join("sio"),
            (_, ref dir) => dir.clone(),
        }
    }

    /// `sioctl ARGS` for this app's master.
    pub fn sioctl(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sioctl"));
        cmd.env_remove("SIO_RUNTIME_DIR").env(self.runtime_env.0, &self.runtime_env.1);
        cmd
    }

    /// `sioctl status APP --json`, or None while no master answers.
    pub fn try_status(&self) -> Option<Value> {
        let out = self.sioctl().args(["status", &self.name, "--json"]).output().unwrap();
        out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|| panic!("no status from {}; log:\n{}", self.name, self.log()))
    }

    pub fn ready_workers(status: &Value) -> usize {
        status["workers"].as_array().unwrap().iter().filter(|w| w["state"] == "ready").count()
    }

    pub fn wait_ready(&mut self, n: usize, timeout: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                if App::ready_workers(&s) >= n {
                    return s;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sio up exited ({st}) before {n} workers were ready; log:\n{}", self.log());
            }
            assert!(t0.elapsed() < timeout, "{n} workers not ready after {timeout:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pids of the agents and their Node workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for w in self.status()["workers"].as_array().unwrap() {
            if let Some(agent) = w["pid"].as_u64() {
                pids.push(agent as u32);
                pids.extend(children_of(agent as u32));
            }
        }
        pids
    }

    /// SIGTERM, then waits for `sio up` to exit; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("sio up did not stop within 20 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

pub fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Runs `tests/bus_probe.py` (hostile peers of the Unix socket at `path`),
/// and returns what it reported.
pub fn bus_probe(path: &Path, args: &[&str]) -> Value {
    bus_probe_with(Command::new("python3"), path, args)
}

/// The same, run by `cmd` (e.g. `setpriv` into a sandbox, as another uid).
pub fn bus_probe_with(mut cmd: Command, path: &Path, args: &[&str]) -> Value {
    cmd.arg(repo().join("tests/bus_probe.py")).arg(path).args(args).stdin(Stdio::null());
    let out = cmd.output().expect("python3 is needed for the bus probes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bus_probe.py failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("bus_probe.py reports");
    serde_json::from_str(line).unwrap()
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs a Node scenario from `tests/node` and returns what it reported.
pub fn node(script: &str, args: &[&str]) -> Value {
    ensure_node_modules();
    let out = Command::new("node")
        .arg(node_dir().join(script))
        .args(args)
        .current_dir(node_dir())
        .stdin(Stdio::null())
        .output()
        .expect("node is needed for the tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed ({}):\n{stdout}\n{stderr}", out.status);
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("{script} reported nothing:\n{stdout}\n{stderr}"));
    serde_json::from_str(line).unwrap()
}

/// Polls `ok` every 50 ms until it holds; fails the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Node scenario from `tests/node` driven line by line: it prints one
/// line once set up (returned by `start`), takes commands on stdin, and
/// ends with a `RESULT <json>` line.
pub struct Scenario {
    child: Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Scenario {
    pub fn start(script: &str, args: &[&str]) -> (Scenario, String) {
        use std::io::BufRead;
        ensure_node_modules();
        let mut child = Command::new("node")
            .arg(node_dir().join(script))
            .args(args)
            .current_dir(node_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap_or_else(|| panic!("{script} said nothing")).unwrap();
        (Scenario { child, lines }, first)
    }

    pub fn say(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.child.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    /// Waits for the scenario's result, and for it to exit.
    pub fn result(mut self) -> Value {
        let line =
            self.lines.find_map(|l| l.ok()?.strip_prefix("RESULT ").map(str::to_owned)).expect("the scenario reports");
        let _ = self.child.wait();
        serde_json::from_str(&line).unwrap()
    }
}

/// A test that fails midway leaves no Node process behind (it would hold
/// the test's output open, and its port).
impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/node/hold.js`: clients that stay connected while a test changes
/// things under them.
pub struct Holder {
    scenario: Scenario,
    /// Clients per worker when they connected.
    pub by_worker: Value,
}

impl Holder {
    pub fn start(port: u16, clients: usize, transports: &str) -> Holder {
        let (scenario, ready) = Scenario::start("hold.js", &[&port.to_string(), &clients.to_string(), transports]);
        let by_worker =
            serde_json::from_str::<Value>(ready.strip_prefix("READY ").unwrap_or_else(|| panic!("{ready}"))).unwrap()
                ["byWorker"]
                .clone();
        Holder { scenario, by_worker }
    }

    /// Starts opening fresh connections continuously.
    pub fn probe(&mut self) {
        self.scenario.say("probe");
    }

    pub fn report(mut self) -> Value {
        self.scenario.say("report");
        self.scenario.result()
    }
}

/// Disconnects of all the clients in a `hold.js` report.
pub fn total_disconnects(report: &Value) -> u64 {
    report["clients"].as_array().unwrap().iter().map(|c| c["disconnects"].as_u64().unwrap()).sum()
}

/// The agents' pids in a status, worker by worker.
pub fn agent_pids(status: &Value) -> Vec<Value> {
    status["workers"].as_array().unwrap().iter().map(|w| w["pid"].clone()).collect()
}

/// Disconnects of the clients that first connected to `worker` (e.g. "w1").
pub fn disconnects_of(report: &Value, worker: &str) -> u64 {
    report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["first"] == worker)
        .map(|c| c["disconnects"].as_u64().unwrap())
        .sum()
}

/// Whether every held client is connected (again) at the end.
pub fn all_connected(report: &Value) -> bool {
    report["clients"].as_array().unwrap().iter().all(|c| c["connected"] == true)
}

/// What `cluster.js` reports when every server (worker) of every host
/// reaches every client: `clients` clients on `servers` servers.
pub fn assert_one_socket_io_cluster(r: &Value, clients: u64, servers: u64) {
    assert_eq!(r["clients"], clients, "{r}");
    let names = r["workers"].as_array().unwrap();
    assert_eq!(names.len() as u64, servers, "clients on every server: {r}");
    for (server, reached) in r["emitReachesAll"].as_object().unwrap() {
        assert_eq!(reached.as_u64(), Some(clients), "io.emit from {server} reaches every client: {r}");
    }
    assert_eq!(r["binaryKinds"], json!({ "binary": clients }), "a binary payload stays binary: {r}");
    for (server, count) in r["counts"].as_object().unwrap() {
        assert_eq!(count["count"].as_u64(), Some(clients), "fetchSockets on {server} sees every client: {r}");
        assert_eq!(count["servers"].as_u64(), Some(servers), "{server} counts every server: {r}");
    }
    for (server, sse) in r["sse"].as_object().unwrap() {
        let others: Vec<&Value> = names.iter().filter(|n| n.as_str() != Some(server)).collect();
        assert_eq!(sse["err"], Value::Null, "serverSideEmit from {server}: {r}");
        assert_eq!(
            sse["repliedBy"].as_array().unwrap().iter().collect::<Vec<_>>(),
            others,
            "every other server acks {server}'s serverSideEmit: {r}"
        );
    }
    assert_eq!(r["roomReached"].as_u64(), Some(clients), "socketsJoin on one server, a room emit from another: {r}");
}
