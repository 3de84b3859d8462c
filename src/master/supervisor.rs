//! Who starts and stops the worker agents.
//!
//! * [`Supervisor::Embedded`] (`sio up`): the master spawns `sio worker
//!   APP:N` itself, restarts an agent that exits (with backoff), and stops
//!   them all when it stops. Agents die with the master
//!   (`PR_SET_PDEATHSIG`): no orphans even after a SIGKILL.
//!
//! Under systemd the workers are units with a life of their own (the next
//! step adds that variant).

use crate::config::AppConfig;
use crate::shutdown::Shutdown;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{error, info, warn};

/// An agent that ran this long before exiting resets the restart backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub enum Supervisor {
    Embedded(Rc<Embedded>),
}

impl Supervisor {
    /// `shutdown`: once it fires, exiting agents are no longer restarted.
    pub fn embedded(shutdown: Shutdown) -> std::io::Result<Supervisor> {
        Ok(Supervisor::Embedded(Rc::new(Embedded {
            exe: std::env::current_exe()?,
            running: RefCell::default(),
            shutdown,
            exited: Notify::new(),
        })))
    }

    /// Whether the workers stop when the master stops.
    pub fn owns_workers(&self) -> bool {
        match self {
            Supervisor::Embedded(_) => true,
        }
    }

    /// Starts the worker of `slot` and keeps it running.
    pub fn start(&self, cfg: &AppConfig, slot: u16) {
        match self {
            Supervisor::Embedded(e) => {
                tokio::task::spawn_local(e.clone().keep_running(cfg.clone(), slot));
            }
        }
    }

    /// Stops every worker: SIGTERM, then SIGKILL after the stop timeout.
    pub async fn shutdown(&self, cfg: &AppConfig) {
        match self {
            Supervisor::Embedded(e) => e.shutdown(cfg).await,
        }
    }
}

pub struct Embedded {
    exe: PathBuf,
    /// Slot -> pid of the running agent.
    running: RefCell<BTreeMap<u16, u32>>,
    shutdown: Shutdown,
    exited: Notify,
}

impl Embedded {
    async fn keep_running(self: Rc<Self>, cfg: AppConfig, slot: u16) {
        let mut backoff = FIRST_BACKOFF;
        while !self.shutdown.is_shutdown() {
            let mut cmd = tokio::process::Command::new(&self.exe);
            cmd.arg("worker")
                .arg(format!("{}:{slot}", cfg.app))
                .arg("--config")
                .arg(&cfg.path);
            // Agents die with the master, and a terminal's Ctrl-C reaches
            // only the master, which then stops them in order.
            // SAFETY: prctl and setpgid are async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
                    Ok(())
                });
            }
            let started = Instant::now();
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    error!(app = %cfg.app, slot, "cannot start agent {}: {e}", self.exe.display());
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            let pid = child.id().unwrap_or(0);
            self.running.borrow_mut().insert(slot, pid);
            let status = child.wait().await;
            self.running.borrow_mut().remove(&slot);
            self.exited.notify_waiters();
            if self.shutdown.is_shutdown() {
                return;
            }
            if started.elapsed() > STABLE_AFTER {
                backoff = FIRST_BACKOFF;
            }
            warn!(app = %cfg.app, slot, pid, status = ?status.ok(), "agent exited; restarting in {} ms", backoff.as_millis());
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn shutdown(&self, cfg: &AppConfig) {
        let signal_all = |sig: Signal| {
            for &pid in self.running.borrow().values() {
                let _ = kill(Pid::from_raw(pid as i32), sig);
            }
        };
        signal_all(Signal::SIGTERM);
        // The agent gives Node `stop_ms`; allow it a little on top.
        let deadline = Instant::now() + cfg.timeouts.stop_ms + Duration::from_secs(1);
        while !self.running.borrow().is_empty() {
            if tokio::time::timeout_at(deadline.into(), self.exited.notified())
                .await
                .is_err()
            {
                warn!(app = %cfg.app, left = self.running.borrow().len(), "workers did not stop in time: SIGKILL");
                signal_all(Signal::SIGKILL);
                break;
            }
        }
        info!(app = %cfg.app, "workers stopped");
    }
}
