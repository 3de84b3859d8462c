//! sio's benchmark: the same `bench/node/worker.js` under sio, under
//! `@socket.io/pm2`, under Node's cluster with `@socket.io/sticky`, alone, and
//! as two cluster workers accepting on one shared socket with no router,
//! plus the raw floor of a router that peeks and passes descriptors; every
//! workload against each in turn, interleaved over rounds, medians of the
//! rounds printed side by side with the ratios, and JSON. `bench/run` is the
//! one command (it installs the pinned npm packages and builds sio first).
//!
//! The load generator runs on one thread (tokio's current-thread runtime).

mod client;
mod eio;
mod floor;
mod hosts;
mod target;

use clap::Parser;
use client::{Resident, SessionError, Stage};
use sio::procfs::{parse_stat, Table};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use target::{Across, Kind, Paths, Router, Target};

#[derive(Parser)]
#[command(
    about = "sio side by side with @socket.io/pm2, cluster + @socket.io/sticky, one Node, two Node workers on a shared socket, and the raw floor"
)]
struct Args {
    /// Interleaved rounds; figures are the rounds' medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Targets, in the order they run in each round. The cross-host ones,
    /// `bridge` and `app-redis`, are two sio hosts on a redis-server and run
    /// only the `hosts` workload; `sio-baseline` is sio run from the
    /// `--baseline` binary; `sio-ws` is sio with `"transports":
    /// ["websocket"]` (its workers accept themselves) and `shared` two Node
    /// workers on one shared socket with no router (both websocket
    /// workloads only).
    #[arg(long, value_delimiter = ',', default_value = "sio,sio-ws,pm2,sticky,node,shared,floor,bridge,app-redis")]
    targets: Vec<String>,
    /// Seconds of each saturation window.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Sessions in flight in closed-loop workloads.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Sessions per second of the moderate-rate workload.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Sessions of the moderate-rate workload (its lost-session count).
    #[arg(long, default_value_t = 5000)]
    moderate_sessions: u64,
    /// Clients of the broadcast fan-out.
    #[arg(long, default_value_t = 2000)]
    fanout_clients: usize,
    /// Clients held open for the memory figures.
    #[arg(long, default_value_t = 10_000)]
    resident_clients: usize,
    /// Workloads to run: sessions, polling, moderate, balance, fanout,
    /// relay, memory, kill, hosts (cross-host broadcast).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sessions,polling,moderate,balance,fanout,relay,memory,kill,hosts"
    )]
    workloads: Vec<String>,
    /// Write every figure of every round here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The sio binary (default: target/release/sio).
    #[arg(long)]
    sio: Option<PathBuf>,
    /// Another sio binary, run as the target `sio-baseline` (e.g. a build
    /// of the commit before a change, to measure the change in one run).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// What `cargo bench` passes to every benchmark binary.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One figure of a workload, for each target, each round.
#[derive(serde::Serialize)]
struct Figure {
    workload: &'static str,
    name: &'static str,
    unit: &'static str,
    values: BTreeMap<String, Vec<f64>>,
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
}

impl Report {
    fn record(&mut self, workload: &'static str, name: &'static str, unit: &'static str, target: &str, value: f64) {
        let index = match self.figures.iter().position(|f| f.workload == workload && f.name == name) {
            Some(i) => i,
            None => {
                self.figures.push(Figure { workload, name, unit, values: BTreeMap::new() });
                self.figures.len() - 1
            }
        };
        self.figures[index].values.entry(target.to_owned()).or_default().push(value);
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

/// What a batch of sessions gave.
#[derive(Default)]
struct Outcome {
    latencies: Vec<Duration>,
    failures: BTreeMap<Stage, u64>,
    first_failures: Vec<String>,
    elapsed: Duration,
}

impl Outcome {
    fn add(&mut self, result: Result<Duration, SessionError>) {
        match result {
            Ok(latency) => self.latencies.push(latency),
            Err(e) => {
                *self.failures.entry(e.stage).or_default() += 1;
                if self.first_failures.len() < 3 {
                    self.first_failures.push(e.to_string());
                }
            }
        }
    }
    fn lost(&self) -> u64 {
        self.failures.iter().filter(|(s, _)| s.is_lost()).map(|(_, n)| n).sum()
    }
    fn errors(&self) -> u64 {
        self.failures.iter().filter(|(s, _)| !s.is_lost()).map(|(_, n)| n).sum()
    }
    fn sorted(&mut self) -> &[Duration] {
        self.latencies.sort();
        &self.latencies
    }
    fn warn(&self, what: &str) {
        for failure in &self.first_failures {
            eprintln!("  {what}: {failure}");
        }
    }
}

/// `concurrency` sessions in flight for `duration`; sessions in flight at
/// the end complete (the elapsed time counts them).
async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, session: F) -> Outcome
where
    F: Fn() -> Fut + Clone + 'static,
    Fut: Future<Output = Result<Duration, SessionError>>,
{
    let outcome = Rc::new(RefCell::new(Outcome::default()));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (session, outcome) = (session.clone(), outcome.clone());
        tasks.spawn_local(async move {
            while t0.elapsed() < duration {
                let result = session().await;
                outcome.borrow_mut().add(result);
            }
        });
    }
    finish(tasks, outcome, t0).await
}

/// Waits for the session tasks; their outcome, timed from `t0`.
async fn finish(mut tasks: tokio::task::JoinSet<()>, outcome: Rc<RefCell<Outcome>>, t0: Instant) -> Outcome {
    while let Some(ended) = tasks.join_next().await {
        ended.expect("a session task panicked");
    }
    let mut outcome = Rc::try_unwrap(outcome).ok().expect("tasks ended").into_inner();
    outcome.elapsed = t0.elapsed();
    outcome
}

/// `count` sessions started at `rate` per second, whatever the answers.
async fn open_loop<F, Fut>(rate: u64, count: u64, session: F) -> Outcome
where
    F: Fn() -> Fut + 'static,
    Fut: Future<Output = Result<Duration, SessionError>> + 'static,
{
    let outcome = Rc::new(RefCell::new(Outcome::default()));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..count {
        ticks.tick().await;
        let outcome = outcome.clone();
        let future = session();
        tasks.spawn_local(async move {
            let result = future.await;
            outcome.borrow_mut().add(result);
        });
    }
    finish(tasks, outcome, t0).await
}

/// CPU time (ns) of the routers, by role, and of the workers, between two
/// moments; the processes are those at the start.
struct CpuWindow {
    routers: Vec<Router>,
    workers: Vec<u32>,
    before: Vec<(String, u64)>,
}

impl CpuWindow {
    fn start(target: &Target) -> CpuWindow {
        let table = Table::read();
        CpuWindow::of(target.routers(&table), target.workers(&table), &table)
    }

    fn of(routers: Vec<Router>, workers: Vec<u32>, table: &Table) -> CpuWindow {
        let mut window = CpuWindow { routers, workers, before: Vec::new() };
        window.before = window.by_role(table);
        window
    }

    fn by_role(&self, table: &Table) -> Vec<(String, u64)> {
        let cpu = |pid| table.process(pid).and_then(|u| u.cpu_ns).unwrap_or(0);
        let mut roles: Vec<(String, u64)> = Vec::new();
        for router in &self.routers {
            let role = if router.role == "agent" { "agents".to_owned() } else { router.role.clone() };
            match roles.iter_mut().find(|(r, _)| *r == role) {
                Some((_, ns)) => *ns += cpu(router.pid),
                None => roles.push((role, cpu(router.pid))),
            }
        }
        let workers: u64 = self.workers.iter().map(|&pid| table.tree(pid).and_then(|u| u.cpu_ns).unwrap_or(0)).sum();
        roles.push(("workers".to_owned(), workers));
        roles
    }

    /// (role, µs per unit of work).
    fn per(self, units: f64) -> Vec<(String, f64)> {
        let after = self.by_role(&Table::read());
        after
            .into_iter()
            .map(|(role, ns)| {
                let before = self.before.iter().find(|(r, _)| *r == role).map_or(0, |(_, b)| *b);
                (role, ns.saturating_sub(before) as f64 / 1e3 / units.max(1.0))
            })
            .collect()
    }
}

/// The floor's two sides stand in the rows of the master and the agents.
const MASTER_CPU: &str = "CPU: master (floor: accept, peek, sendmsg)";
const AGENTS_CPU: &str = "CPU: agents (floor: recvmsg, close)";

/// Router CPU figures: each role, and the routers' total.
fn record_cpu(report: &mut Report, workload: &'static str, unit: &'static str, target: &str, per: &[(String, f64)]) {
    let mut routers = 0.0;
    for (role, us) in per {
        let name: &'static str = match role.as_str() {
            "master" => MASTER_CPU,
            "agents" => AGENTS_CPU,
            "God" => "CPU: pm2 God",
            "primary" => "CPU: cluster primary",
            "redis" => "CPU: redis-server",
            _ => "CPU: Node workers",
        };
        if role != "workers" {
            routers += us;
        }
        report.record(workload, name, unit, target, *us);
    }
    if per.len() > 1 {
        report.record(workload, "CPU: router total", unit, target, routers);
    }
}

fn mib(bytes: Option<u64>) -> f64 {
    bytes.unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

fn record_memory(
    report: &mut Report,
    name_router: &'static str,
    name_agent: &'static str,
    name_workers: &'static str,
    target: &Target,
) {
    let table = Table::read();
    let routers = target.routers(&table);
    let name = target.kind.name();
    for router in &routers {
        let rss = mib(table.process(router.pid).and_then(|u| u.memory_bytes));
        if router.role == "agent" {
            report.record("memory", name_agent, "MiB", name, rss);
        } else {
            report.record("memory", name_router, "MiB", name, rss);
        }
    }
    let workers: f64 =
        target.workers(&table).into_iter().map(|pid| mib(table.tree(pid).and_then(|u| u.memory_bytes))).sum();
    report.record("memory", name_workers, "MiB", name, workers);
}

/// `count` connected clients, `concurrency` connecting at a time. A failed
/// connect is retried (a server that loses sessions still gets its clients);
/// the failures are returned with them. More than a tenth failing is an
/// error.
async fn residents(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
    epoch: Instant,
    reconnect: bool,
) -> Result<(Vec<Resident>, u64), String> {
    let made = Rc::new(RefCell::new(Vec::with_capacity(count)));
    let failures = Rc::new(std::cell::Cell::new(0u64));
    let next = Rc::new(std::cell::Cell::new(0usize));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(count) {
        let (made, next, failures) = (made.clone(), next.clone(), failures.clone());
        tasks.spawn_local(async move {
            while next.get() < count {
                next.set(next.get() + 1);
                loop {
                    match Resident::connect(addr, epoch, reconnect).await {
                        Ok(resident) => break made.borrow_mut().push(resident),
                        Err(e) if failures.get() as usize > count / 10 => return Err(e.to_string()),
                        Err(_) => failures.set(failures.get() + 1),
                    }
                }
            }
            Ok::<(), String>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.map_err(|e| e.to_string())??;
    }
    Ok((Rc::try_unwrap(made).ok().expect("tasks ended").into_inner(), failures.get()))
}

/// Residents grouped by the pid of the worker serving them.
async fn by_worker(clients: &[Resident]) -> Result<BTreeMap<u32, Vec<usize>>, String> {
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, client) in clients.iter().enumerate() {
        groups.entry(client.worker().await.map_err(|e| e.to_string())?).or_default().push(i);
    }
    Ok(groups)
}

const FLOOR_HEAD: &[u8] = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn thread_cpu_ns(tid: i32) -> u64 {
    let tick_ns =
        1_000_000_000 / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .map_or(0, |s| s.cpu_ticks * tick_ns)
}

async fn run_floor(args: &Args, report: &mut Report, floor: &floor::Floor) {
    let addr = floor.addr;
    let (accept0, sink0) = (thread_cpu_ns(floor.accept_tid), thread_cpu_ns(floor.sink_tid));
    let outcome = closed_loop(args.concurrency, Duration::from_secs(args.seconds), move || async move {
        floor::session(addr, FLOOR_HEAD)
            .await
            .map_err(|e| SessionError { stage: Stage::Connect, detail: e.to_string() })
    })
    .await;
    let n = outcome.latencies.len() as f64;
    let accept = (thread_cpu_ns(floor.accept_tid) - accept0) as f64 / 1e3 / n.max(1.0);
    let sink = (thread_cpu_ns(floor.sink_tid) - sink0) as f64 / 1e3 / n.max(1.0);
    report.record("websocket sessions", MASTER_CPU, "µs/session", "floor", accept);
    report.record("websocket sessions", AGENTS_CPU, "µs/session", "floor", sink);
    report.record("websocket sessions", "CPU: router total", "µs/session", "floor", accept + sink);
    report.record("websocket sessions", SESSION_RATE, "/s", "floor", n / outcome.elapsed.as_secs_f64());
    record_outcome(report, "websocket sessions", "floor", outcome);
}

async fn run_target(args: &Args, report: &mut Report, target: &mut Target) -> Result<(), String> {
    let addr = target.addr;
    let epoch = Instant::now();
    ready(target, epoch).await?;
    record_memory(
        report,
        "RSS idle: router (master, God, primary)",
        "RSS idle: each agent",
        "RSS idle: Node workers",
        target,
    );
    closed_loop(args.concurrency, Duration::from_secs(1), move || client::ws_session(addr)).await;

    for workload in &args.workloads {
        match workload.as_str() {
            "sessions" => {
                saturation(args, report, target, "websocket sessions", move || client::ws_session(addr)).await
            }
            "polling" if target.kind.sticky() => {
                saturation(args, report, target, "polling then upgrade", move || client::polling_session(addr)).await
            }
            "moderate" => moderate_rate(args, report, target).await,
            "balance" => balance(args, report, target).await?,
            "fanout" => fanout(args, report, target).await?,
            "relay" => relay(args, report, target).await?,
            "memory" => memory(args, report, target).await?,
            "kill" if target.kind.workers() > 1 => worker_killed(args, report, target).await?,
            "kill" | "hosts" | "polling" => {}
            other => return Err(format!("unknown workload {other:?}")),
        }
    }
    Ok(())
}

/// Waits until the target's workers run and each answers sessions.
async fn ready(target: &mut Target, epoch: Instant) -> Result<(), String> {
    target.wait_workers(Duration::from_secs(60))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((clients, _)) = residents(target.addr, 8 * target.kind.workers(), 8, epoch, false).await {
            if by_worker(&clients).await.map(|g| g.len()) == Ok(target.kind.workers()) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{}: not every worker answers: {}", target.kind.name(), target.log()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sessions back to back, `concurrency` in flight, for the window: their
/// rate, connect times and losses, and the CPU per session of each router
/// and of the workers.
async fn saturation<F, Fut>(args: &Args, report: &mut Report, target: &Target, workload: &'static str, session: F)
where
    F: Fn() -> Fut + Clone + 'static,
    Fut: Future<Output = Result<Duration, SessionError>>,
{
    let name = target.kind.name();
    eprintln!("  {name}: {workload}");
    let cpu = CpuWindow::start(target);
    let outcome = closed_loop(args.concurrency, Duration::from_secs(args.seconds), session).await;
    let n = outcome.latencies.len() as f64;
    record_cpu(report, workload, "µs/session", name, &cpu.per(n));
    report.record(workload, SESSION_RATE, "/s", name, n / outcome.elapsed.as_secs_f64());
    record_outcome(report, workload, name, outcome);
}

/// The floor's connections stand in the row of the sessions.
const SESSION_RATE: &str = "sessions/s (floor: connections/s)";

/// Connect times, lost sessions and other failures.
fn record_outcome(report: &mut Report, workload: &'static str, name: &str, mut outcome: Outcome) {
    report.record(workload, "connect p50", "ms", name, percentile(outcome.sorted(), 0.5));
    report.record(workload, "connect p99", "ms", name, percentile(outcome.sorted(), 0.99));
    report.record(workload, "lost", "sessions", name, outcome.lost() as f64);
    report.record(workload, "errors", "sessions", name, outcome.errors() as f64);
    outcome.warn(name);
}

/// Sessions started at a fixed rate whatever the answers (open loop): the
/// latency tail and the losses below saturation.
async fn moderate_rate(args: &Args, report: &mut Report, target: &Target) {
    let (name, addr) = (target.kind.name(), target.addr);
    eprintln!("  {name}: {} websocket sessions at {}/s", args.moderate_sessions, args.rate);
    let upgrades = Rc::new(RefCell::new(Vec::new()));
    let timed = upgrades.clone();
    let outcome = open_loop(args.rate, args.moderate_sessions, move || {
        let timed = timed.clone();
        async move {
            let timing = client::ws_session_timed(addr).await?;
            timed.borrow_mut().push(timing.upgraded);
            Ok(timing.connected)
        }
    })
    .await;
    record_outcome(report, "moderate rate", name, outcome);
    // The part of the connect time a router is on the path of: until the
    // upgrade's answer (the rest is between the client and Node alone).
    let mut upgrades = upgrades.take();
    upgrades.sort();
    report.record("moderate rate", "upgrade answered p50", "ms", name, percentile(&upgrades, 0.5));
    report.record("moderate rate", "upgrade answered p99", "ms", name, percentile(&upgrades, 0.99));
}

async fn balance(args: &Args, report: &mut Report, target: &Target) -> Result<(), String> {
    let (name, addr) = (target.kind.name(), target.addr);
    let epoch = Instant::now();
    eprintln!("  {name}: balance");
    let shares = Rc::new(RefCell::new(BTreeMap::<u32, u64>::new()));
    let counted = shares.clone();
    closed_loop(args.concurrency, Duration::from_secs(args.seconds.min(5)), move || {
        let shares = counted.clone();
        async move {
            let t0 = Instant::now();
            let client = Resident::connect(addr, epoch, false).await?;
            let worker = client.worker().await?;
            *shares.borrow_mut().entry(worker).or_default() += 1;
            Ok(t0.elapsed())
        }
    })
    .await;
    let shares = shares.borrow();
    let total: u64 = shares.values().sum();
    let even = total as f64 / target.kind.workers() as f64;
    let worst = shares.values().map(|&n| ((n as f64 - even) / even).abs() * 100.0).fold(0.0, f64::max);
    report.record("balance", "worst worker's distance from an even share", "%", name, worst);
    Ok(())
}

async fn fanout(args: &Args, report: &mut Report, target: &Target) -> Result<(), String> {
    let (name, addr) = (target.kind.name(), target.addr);
    let epoch = Instant::now();
    eprintln!("  {name}: broadcast fan-out to {} clients", args.fanout_clients);
    let (clients, failed) = residents(addr, args.fanout_clients, args.concurrency, epoch, false).await?;
    report.record("broadcast fan-out", "client connects that failed (retried)", "clients", name, failed as f64);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = |clients: &[Resident]| clients.iter().map(|c| c.received.get()).sum::<u64>();
    let cpu = CpuWindow::start(target);
    let t0 = Instant::now();
    let mut fanout_times = Vec::new();
    let base = total(&clients);
    let broadcasts = 30u64;
    for i in 1..=broadcasts {
        let sent = Instant::now();
        clients[0].emit("bcast", &[serde_json::json!(epoch.elapsed().as_micros() as u64)]);
        let want = base + i * clients.len() as u64;
        while total(&clients) < want && sent.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        fanout_times.push(sent.elapsed());
    }
    let delivered = (total(&clients) - base) as f64;
    let elapsed = t0.elapsed().as_secs_f64();
    record_cpu(report, "broadcast fan-out", "µs/delivery", name, &cpu.per(delivered));
    fanout_times.sort();
    let latencies = delivery_latencies(&clients);
    report.record("broadcast fan-out", "deliveries/s", "/s", name, delivered / elapsed);
    report.record(
        "broadcast fan-out",
        "missing deliveries",
        "messages",
        name,
        (broadcasts * clients.len() as u64) as f64 - delivered,
    );
    report.record("broadcast fan-out", "time to reach all, p50", "ms", name, percentile(&fanout_times, 0.5));
    report.record("broadcast fan-out", "time to reach all, p99", "ms", name, percentile(&fanout_times, 0.99));
    report.record("broadcast fan-out", "delivery latency p50", "ms", name, percentile(&latencies, 0.5));
    report.record("broadcast fan-out", "delivery latency p99", "ms", name, percentile(&latencies, 0.99));
    drop(clients);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

async fn relay(args: &Args, report: &mut Report, target: &Target) -> Result<(), String> {
    let (name, addr) = (target.kind.name(), target.addr);
    let epoch = Instant::now();
    eprintln!("  {name}: relay-bound broadcast");
    let (clients, _) = residents(addr, 8, 8, epoch, false).await?;
    let groups = by_worker(&clients).await?;
    let sender = groups.values().next().and_then(|g| g.first().copied()).ok_or("no client")?;
    let sender_worker = *groups.keys().next().ok_or("no client")?;
    let remote: Vec<usize> = groups.iter().filter(|(w, _)| **w != sender_worker).flat_map(|(_, g)| g.clone()).collect();
    let local: Vec<usize> = groups[&sender_worker].clone();
    // One Node alone has no remote clients: its local deliveries are the anchor.
    let tracked = remote.first().copied().unwrap_or(local[local.len() - 1]);
    let cpu = CpuWindow::start(target);
    let flow = in_flight(&clients, sender, tracked, Duration::from_secs(args.seconds), epoch).await;
    let per_remote = if remote.is_empty() { flow.rate(&local) } else { flow.rate(&remote) };
    report.record("relay-bound broadcast", "msgs/s per remote client (node: per local client)", "/s", name, per_remote);
    report.record("relay-bound broadcast", "msgs/s per local client", "/s", name, flow.rate(&local));
    record_cpu(report, "relay-bound broadcast", "µs/message", name, &cpu.per(flow.sent as f64));
    drop(clients);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// The `m` delivery latencies of these clients, sorted.
fn delivery_latencies(clients: &[Resident]) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = clients
        .iter()
        .flat_map(|c| c.latencies_us.borrow().iter().map(|&us| Duration::from_micros(us)).collect::<Vec<_>>())
        .collect();
    latencies.sort();
    latencies
}

/// What a window of broadcasts kept in flight gave.
struct Flow {
    sent: u64,
    /// `m` broadcasts each client received in the window.
    received: Vec<u64>,
    elapsed: Duration,
}

impl Flow {
    /// Messages per second per client of `group`.
    fn rate(&self, group: &[usize]) -> f64 {
        let total: u64 = group.iter().map(|&i| self.received[i]).sum();
        total as f64 / self.elapsed.as_secs_f64() / group.len().max(1) as f64
    }
}

/// `sender` broadcasts for the window, keeping 64 of its messages on their
/// way to `tracked` (a client on another worker or host): the rate the
/// relay path allows.
async fn in_flight(clients: &[Resident], sender: usize, tracked: usize, window: Duration, epoch: Instant) -> Flow {
    const WINDOW: u64 = 64;
    let start_counts: Vec<u64> = clients.iter().map(|c| c.received.get()).collect();
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < window {
        if sent - (clients[tracked].received.get() - start_counts[tracked]) < WINDOW {
            clients[sender].emit("bcast", &[serde_json::json!(epoch.elapsed().as_micros() as u64)]);
            sent += 1;
            if sent % 16 == 0 {
                tokio::task::yield_now().await;
            }
            continue;
        }
        tokio::select! {
            _ = clients[tracked].notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    let elapsed = t0.elapsed();
    let received = clients.iter().zip(&start_counts).map(|(c, start)| c.received.get() - start).collect();
    Flow { sent, received, elapsed }
}

/// Broadcasts across hosts: 4 clients on each of two sio hosts, one sender
/// on the first keeping 64 messages in flight to a client on the second.
/// Rates per client on each host, delivery latency on the other host, and
/// the CPU per message of everything on the path.
async fn cross_host(args: &Args, report: &mut Report, hosts: &mut hosts::Hosts) -> Result<(), String> {
    const WORKLOAD: &str = "cross-host broadcast";
    let name = hosts.name;
    let epoch = Instant::now();
    for host in &mut hosts.hosts {
        ready(host, epoch).await?;
    }
    let [first, second] = &hosts.hosts;
    eprintln!("  {name}: {WORKLOAD}");
    let (mut clients, _) = residents(first.addr, 4, 4, epoch, false).await?;
    clients.extend(residents(second.addr, 4, 4, epoch, false).await?.0);
    let (here, there): (Vec<usize>, Vec<usize>) = ((0..4).collect(), (4..8).collect());
    let (sender, tracked) = (here[0], there[0]);
    // The hosts see each other once a broadcast from the first reaches the
    // second (subscriptions made, streams read).
    let deadline = Instant::now() + Duration::from_secs(30);
    while clients[tracked].received.get() == 0 {
        if Instant::now() > deadline {
            return Err(format!("{name}: no broadcast crosses the hosts after 30 s: {}{}", first.log(), second.log()));
        }
        clients[sender].emit("bcast", &[serde_json::json!(epoch.elapsed().as_micros() as u64)]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for client in &clients {
        client.latencies_us.borrow_mut().clear();
    }
    let table = Table::read();
    let cpu = CpuWindow::of(hosts.routers(&table), hosts.workers(&table), &table);
    let flow = in_flight(&clients, sender, tracked, Duration::from_secs(args.seconds), epoch).await;
    report.record(WORKLOAD, "msgs/s per client on the other host", "/s", name, flow.rate(&there));
    report.record(WORKLOAD, "msgs/s per client on the sender's host", "/s", name, flow.rate(&here));
    let latencies = delivery_latencies(&clients[there[0]..]);
    report.record(WORKLOAD, "delivery latency on the other host, p50", "ms", name, percentile(&latencies, 0.5));
    report.record(WORKLOAD, "delivery latency on the other host, p99", "ms", name, percentile(&latencies, 0.99));
    record_cpu(report, WORKLOAD, "µs/message", name, &cpu.per(flow.sent as f64));
    let connections = hosts.redis_connections().ok_or("redis-server does not answer INFO")?;
    report.record(WORKLOAD, "connections to Redis, 2 hosts of 2 workers", "connections", name, connections as f64);
    drop(clients);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

async fn memory(args: &Args, report: &mut Report, target: &Target) -> Result<(), String> {
    let (name, addr) = (target.kind.name(), target.addr);
    let epoch = Instant::now();
    eprintln!("  {name}: {} resident clients", args.resident_clients);
    let (clients, failed) = residents(addr, args.resident_clients, args.concurrency, epoch, false).await?;
    report.record("memory", "resident client connects that failed (retried)", "clients", name, failed as f64);
    tokio::time::sleep(Duration::from_secs(1)).await;
    record_memory(
        report,
        "RSS with residents: router",
        "RSS with residents: each agent",
        "RSS with residents: Node workers",
        target,
    );
    drop(clients);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// 200 clients that reconnect at once (every 20 ms) when their connection
/// ends; one worker killed (SIGKILL): how long until each of its clients has
/// a session again.
async fn worker_killed(args: &Args, report: &mut Report, target: &Target) -> Result<(), String> {
    let (name, addr, epoch) = (target.kind.name(), target.addr, Instant::now());
    eprintln!("  {name}: a worker killed");
    let (clients, _) = residents(addr, 200, args.concurrency, epoch, true).await?;
    let groups = by_worker(&clients).await?;
    let (&victim, affected) = groups.iter().next().ok_or("no client")?;
    let killed = Instant::now();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL);
    let deadline = killed + Duration::from_secs(30);
    while affected.iter().any(|&i| clients[i].connected_at.get() < killed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let back = affected
        .iter()
        .map(|&i| clients[i].connected_at.get().saturating_duration_since(killed))
        .max()
        .unwrap_or_default();
    let stranded = affected.iter().filter(|&&i| clients[i].connected_at.get() < killed).count();
    report.record("worker killed", "until its clients are served again", "ms", name, back.as_secs_f64() * 1e3);
    report.record("worker killed", "clients never served again (30 s)", "clients", name, stranded as f64);
    Ok(())
}

/// A table per workload, with the targets that ran it; ratios are the first
/// target's figures (sio, or the bridge across hosts) over each other's.
fn print(report: &Report, args: &Args, machine: &str) {
    let mut workloads: Vec<&str> = Vec::new();
    for figure in &report.figures {
        if !workloads.contains(&figure.workload) {
            workloads.push(figure.workload);
        }
    }
    for workload in workloads {
        let figures: Vec<&Figure> = report.figures.iter().filter(|f| f.workload == workload).collect();
        let targets: Vec<&str> = args
            .targets
            .iter()
            .map(String::as_str)
            .filter(|t| figures.iter().any(|f| f.values.contains_key(*t)))
            .collect();
        let Some((&subject, anchors)) = targets.split_first() else { continue };
        println!("\n### {workload} ({machine})\n");
        let ratio_heads: String = anchors.iter().map(|a| format!(" {subject}/{a} |")).collect();
        println!("| figure | unit |{} {ratio_heads}", targets.iter().map(|t| format!(" {t} |")).collect::<String>());
        println!("|---|---|{}{}", "---|".repeat(targets.len()), "---|".repeat(anchors.len()));
        for figure in figures {
            print_row(figure, &targets, subject, anchors);
        }
    }
}

fn print_row(figure: &Figure, targets: &[&str], subject: &str, anchors: &[&str]) {
    let value = |t: &str| figure.values.get(t).map(|v| median(v));
    let cells: String = targets.iter().map(|t| format!(" {} |", value(t).map_or("".into(), format_value))).collect();
    let ratios: String = anchors
        .iter()
        .map(|a| match (value(subject), value(a)) {
            (Some(s), Some(x)) if x != 0.0 && s.is_finite() && x.is_finite() => format!(" {:.2} |", s / x),
            _ => " |".into(),
        })
        .collect();
    println!("| {} | {} |{cells}{ratios}", figure.name, figure.unit);
}

fn format_value(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        let whole = format!("{:.0}", v);
        let digits: Vec<char> = whole.chars().collect();
        let mut out = String::new();
        for (i, c) in digits.iter().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 && *c != '-' && digits[i - 1] != '-' {
                out.push(',');
            }
            out.push(*c);
        }
        out
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%F %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, {date}")
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    raise_fd_limit();
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Relative to where the benchmark was started: the targets run in
    // folders of their own.
    let absolute = |p: &PathBuf| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
    let paths = Paths {
        sio: args.sio.as_ref().map(absolute).transpose()?.unwrap_or_else(|| manifest.join("target/release/sio")),
        baseline: args.baseline.as_ref().map(absolute).transpose()?,
        node_dir: target::node_dir(&manifest),
    };
    let machine = machine();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let mut report = Report::default();
    local.block_on(&runtime, async {
        let floor = floor::Floor::start().map_err(|e| e.to_string())?;
        for round in 1..=args.rounds {
            for name in &args.targets {
                eprintln!("round {round}/{}: {name}", args.rounds);
                if name == "floor" {
                    run_floor(&args, &mut report, &floor).await;
                    continue;
                }
                if let Some(&name) = hosts::NAMES.iter().find(|n| *n == name) {
                    if args.workloads.iter().any(|w| w == "hosts") {
                        let mut hosts = hosts::Hosts::start(name, &paths)?;
                        let result = cross_host(&args, &mut report, &mut hosts).await;
                        hosts.stop();
                        result?;
                    }
                    continue;
                }
                let kind = Kind::ALL.into_iter().find(|k| k.name() == name).ok_or(format!("unknown target {name}"))?;
                let mut target = Target::start(kind, &paths, &Across::Nothing)?;
                let result = run_target(&args, &mut report, &mut target).await;
                target.stop();
                result?;
            }
        }
        Ok::<(), String>(())
    })?;
    println!("# sio benchmark: {machine}, {} round(s), medians", args.rounds);
    print(&report, &args, &machine);
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "machine": machine, "rounds": args.rounds, "figures": report.figures });
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap_or_default()).map_err(|e| e.to_string())?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}
