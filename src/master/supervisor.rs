//! Who starts and stops the worker agents.
//!
//! * [`Supervisor::Embedded`] (`sio up`): the master spawns `sio worker
//!   APP:N` itself, restarts an agent that exits (with backoff), and stops
//!   them all when it stops. Agents die with the master
//!   (`PR_SET_PDEATHSIG`): no orphans even after a SIGKILL.
//! * [`Supervisor::Systemd`] (`sio master` under systemd): workers are
//!   `sio-worker-APP@N.service` units with a life of their own, started and
//!   stopped over D-Bus. systemd restarts them; a master restart leaves them
//!   running (the new master adopts them); only a real stop of the master's
//!   unit stops them too.

use crate::config::AppConfig;
use crate::control::Usage;
use crate::shutdown::Shutdown;
use crate::systemd::Workers;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{error, warn};

/// An agent that ran this long before exiting resets the restart backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub enum Supervisor {
    Embedded(Rc<Embedded>),
    Systemd(Rc<Workers>),
}

impl Supervisor {
    /// `shutdown`: once it fires, exiting agents are no longer restarted.
    pub fn embedded(shutdown: Shutdown) -> std::io::Result<Supervisor> {
        Ok(Supervisor::Embedded(Rc::new(Embedded {
            exe: std::env::current_exe()?,
            runtime_dir: crate::endpoints::private_dir()?,
            running: RefCell::default(),
            retired: RefCell::default(),
            restarts: RefCell::default(),
            shutdown,
            exited: Notify::new(),
        })))
    }

    pub async fn systemd(app: &str) -> zbus::Result<Supervisor> {
        Ok(Supervisor::Systemd(Rc::new(Workers::connect(app).await?)))
    }

    /// Whether process `pid` is the agent of worker `slot`: one this master
    /// spawned (`sio up`), or the main process of that worker's unit as
    /// the system manager tells it.
    pub async fn is_agent(&self, slot: u16, pid: u32) -> Result<(), String> {
        match self {
            Supervisor::Embedded(e) => match e.running.borrow().get(&slot) {
                Some(&p) if p == pid => Ok(()),
                _ => Err(format!("pid {pid} is not the agent this master started for worker {slot}")),
            },
            Supervisor::Systemd(w) => w.is_agent(slot, pid).await,
        }
    }

    /// Whether `limits` other than `memory_max` go unenforced (`sio up`
    /// has no cgroups of its own) and `memory_max` is the master's to
    /// enforce, rather than the kernel's.
    pub fn enforces_limits_itself(&self) -> bool {
        matches!(self, Supervisor::Embedded(_))
    }

    /// Workers already running when the master starts (to adopt).
    pub async fn existing(&self) -> Result<Vec<u16>, String> {
        match self {
            Supervisor::Embedded(_) => Ok(Vec::new()),
            Supervisor::Systemd(w) => w.live_slots().await.map_err(|e| format!("cannot list the worker units: {e}")),
        }
    }

    /// Workers whose supervisor gave up restarting them. `sio up` never
    /// gives up (it backs off instead).
    pub async fn failed(&self) -> Vec<u16> {
        match self {
            Supervisor::Embedded(_) => Vec::new(),
            Supervisor::Systemd(w) => w.failed_slots().await.unwrap_or_default(),
        }
    }

    /// Starts the worker of `slot` (and keeps it running).
    pub async fn start(&self, cfg: &AppConfig, slot: u16) -> Result<(), String> {
        match self {
            Supervisor::Embedded(e) => {
                e.retired.borrow_mut().remove(&slot);
                tokio::task::spawn_local(e.clone().keep_running(cfg.clone(), slot));
                Ok(())
            }
            Supervisor::Systemd(w) => w.start(slot, &cfg.limits).await,
        }
    }

    /// Stops the worker of `slot` for good; returns once it is gone.
    pub async fn stop(&self, cfg: &AppConfig, slot: u16) -> Result<(), String> {
        match self {
            Supervisor::Embedded(e) => {
                e.retired.borrow_mut().insert(slot);
                e.stop(cfg, &[slot]).await;
                Ok(())
            }
            Supervisor::Systemd(w) => w.stop(slot).await,
        }
    }

    /// Whether the workers must stop because the master stops now.
    pub async fn workers_stop_with_master(&self) -> bool {
        match self {
            Supervisor::Embedded(_) => true,
            Supervisor::Systemd(w) => w.stop_is_final().await,
        }
    }

    /// Stops every worker (the master stops for good).
    pub async fn stop_all(&self, cfg: &AppConfig, slots: &[u16]) {
        match self {
            Supervisor::Embedded(e) => {
                let running: Vec<u16> = e.running.borrow().keys().copied().collect();
                e.stop(cfg, &running).await;
            }
            Supervisor::Systemd(w) => {
                let stops = slots.iter().map(|&s| w.stop(s));
                for r in futures_util::future::join_all(stops).await {
                    if let Err(e) = r {
                        warn!(app = %cfg.app, "{e}");
                    }
                }
            }
        }
    }

    /// Memory, CPU and restarts of worker `slot`, whose agent is `agent`:
    /// systemd's accounting of its unit (completed from `/proc`), or under
    /// `sio up` the agent's process tree in `processes` and the restarts
    /// this master made.
    pub async fn usage(
        &self,
        slot: u16,
        agent: Option<u32>,
        processes: Option<&crate::procfs::Table>,
    ) -> Option<Usage> {
        match self {
            Supervisor::Embedded(e) => {
                let mut usage = agent.and_then(|pid| processes?.tree(pid)).unwrap_or_default();
                usage.restarts = Some(e.restarts.borrow().get(&slot).copied().unwrap_or(0));
                Some(usage)
            }
            Supervisor::Systemd(w) => {
                // Resident memory as under `sio up` (systemd's is the
                // cgroup's), and CPU where the unit's accounting lacks it
                // (no cpu controller, as in a container).
                let mut usage = w.usage(slot).await?;
                let tree = agent.and_then(|pid| processes?.tree(pid)).unwrap_or_default();
                usage.memory_bytes = tree.memory_bytes.or(usage.cgroup_memory_bytes);
                usage.cpu_ns = usage.cpu_ns.or(tree.cpu_ns);
                Some(usage)
            }
        }
    }
}

pub struct Embedded {
    exe: PathBuf,
    /// Where the master's sockets are, told to the agents it spawns (it
    /// would not do to find a systemd-run namesake's in /run/sio).
    runtime_dir: PathBuf,
    /// Slot -> pid of the running agent.
    running: RefCell<BTreeMap<u16, u32>>,
    /// Slots stopped on purpose: not restarted.
    retired: RefCell<BTreeSet<u16>>,
    /// Slot -> how many times its agent was started again after it exited.
    restarts: RefCell<BTreeMap<u16, u32>>,
    shutdown: Shutdown,
    exited: Notify,
}

impl Embedded {
    fn keeps(&self, slot: u16) -> bool {
        !self.shutdown.is_shutdown() && !self.retired.borrow().contains(&slot)
    }

    async fn keep_running(self: Rc<Self>, cfg: AppConfig, slot: u16) {
        let mut backoff = FIRST_BACKOFF;
        while self.keeps(slot) {
            let mut cmd = tokio::process::Command::new(&self.exe);
            cmd.arg("worker").arg(format!("{}:{slot}", cfg.app)).arg("--config").arg(&cfg.path);
            cmd.env("SIO_RUNTIME_DIR", &self.runtime_dir);
            // Agents die with the master, and a terminal's Ctrl-C reaches
            // only the master, which then stops them in order.
            // SAFETY: prctl, setpgid and sched_setscheduler are async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    // The agent chooses its policy itself, from the default.
                    crate::sched::default_policy_in_child()?;
                    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
                    Ok(())
                });
            }
            let started = Instant::now();
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    error!(app = %cfg.app, worker = slot, "cannot start agent {}: {e}", self.exe.display());
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            let pid = child.id().unwrap_or(0);
            self.running.borrow_mut().insert(slot, pid);
            let status = child.wait().await;
            self.running.borrow_mut().remove(&slot);
            self.exited.notify_waiters();
            if !self.keeps(slot) {
                return;
            }
            if started.elapsed() > STABLE_AFTER {
                backoff = FIRST_BACKOFF;
            }
            warn!(app = %cfg.app, worker = slot, pid, status = ?status.ok(), "agent exited; restarting in {} ms", backoff.as_millis());
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if self.keeps(slot) {
                *self.restarts.borrow_mut().entry(slot).or_default() += 1;
            }
        }
    }

    /// SIGTERM to the agents of `slots`, SIGKILL after the stop timeout.
    async fn stop(&self, cfg: &AppConfig, slots: &[u16]) {
        let signal = |sig: Signal| {
            for slot in slots {
                if let Some(&pid) = self.running.borrow().get(slot) {
                    let _ = kill(Pid::from_raw(pid as i32), sig);
                }
            }
        };
        let left = || slots.iter().filter(|s| self.running.borrow().contains_key(s)).count();
        signal(Signal::SIGTERM);
        // The agent gives Node `stop_ms`; allow it a little on top.
        let deadline = Instant::now() + cfg.timeouts.stop_ms + Duration::from_secs(1);
        while left() > 0 {
            if tokio::time::timeout_at(deadline.into(), self.exited.notified()).await.is_err() {
                warn!(app = %cfg.app, left = left(), "agents did not stop in time: SIGKILL");
                signal(Signal::SIGKILL);
                break;
            }
        }
    }
}
