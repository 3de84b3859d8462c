//! How many workers run, and replacing them: adopting workers that survived
//! a master restart, scaling, and the rolling reload.
//!
//! One operation at a time (`Master::ops`). Scaling down and reloading
//! *drain* a worker first: it takes no new sessions, keeps its own for
//! `timeouts.drain_ms`, then is stopped, and its clients reconnect to the
//! others. A reload starts each replacement and waits until it is ready
//! before it drains the worker it replaces, so at least N workers are
//! ready throughout.

use super::{Master, ADOPTION_WAIT};
use crate::master::router::WorkerState;
use futures_util::future::join_all;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How often the master asks whether a worker unit failed for good.
const FAILURE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// How often `sio up` compares its workers' memory with `limits.memory_max`.
const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Where the worker count set by `sioctl scale` is kept across restarts:
/// `$SIO_STATE_DIR`, or systemd's `StateDirectory=`. Without either
/// (`sio up`), a scale lasts as long as the master.
fn state_file(app: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SIO_STATE_DIR").or_else(|| std::env::var_os("STATE_DIRECTORY"))?;
    let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_owned();
    Some(PathBuf::from(first).join(format!("{app}.instances")))
}

pub(super) fn saved_instances(app: &str) -> Option<u16> {
    let text = std::fs::read_to_string(state_file(app)?).ok()?;
    text.trim().parse().ok().filter(|n| (1..=crate::sid::MAX_SLOT).contains(n))
}

fn save_instances(app: &str, n: u16) -> std::io::Result<()> {
    let Some(path) = state_file(app) else {
        return Ok(());
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{n}\n"))?;
    std::fs::rename(tmp, path)
}

/// Progress lines for the operator, as the operation goes.
pub(super) type Progress<'a> = &'a dyn Fn(String);

impl Master {
    /// At start: adopt the workers that are already running (a master
    /// restart under systemd), then start or stop workers to reach the count.
    pub(super) async fn bring_up(self: Rc<Self>) {
        let _op = self.ops.lock().await;
        let adopted = match self.supervisor.existing().await {
            Ok(slots) => slots,
            Err(e) => {
                // Without the listing every live session would be taken for
                // lost; exiting lets systemd restart the master to try again.
                error!(app = %self.cfg.app, "{e}; exiting");
                std::process::exit(1);
            }
        };
        {
            let mut st = self.st.borrow_mut();
            for &slot in &adopted {
                st.router.expect(slot);
            }
            // Now a slot nobody runs is gone for good.
            st.router.discovering(false);
        }
        if !adopted.is_empty() {
            info!(app = %self.cfg.app, workers = ?adopted, "adopting running workers");
        }
        tokio::task::spawn_local(self.clone().await_adopted(adopted.clone()));
        self.worker_changed();
        if let Err(e) = self.reconcile(&|line| info!(app = %self.cfg.app, "{line}")).await {
            error!(app = %self.cfg.app, "{e}");
        }
    }

    /// Broadcasts wait until the agents of the `adopted` workers are back
    /// (or [`ADOPTION_WAIT`] passed): relayed earlier, what an agent sends
    /// again after a master died would miss the workers that reconnect
    /// after it.
    async fn await_adopted(self: Rc<Self>, adopted: Vec<u16>) {
        let deadline = tokio::time::Instant::now() + ADOPTION_WAIT;
        loop {
            let changed = self.workers_changed.notified();
            let missing: Vec<u16> = {
                // A worker forgotten meanwhile (its unit failed) is not awaited.
                let st = self.st.borrow();
                let known = st.router.slots();
                adopted.iter().copied().filter(|s| !st.peers.contains_key(s) && known.contains(s)).collect()
            };
            if missing.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                warn!(app = %self.cfg.app, workers = ?missing, "adopted workers did not reconnect within {ADOPTION_WAIT:?}: broadcasts go on without them");
                break;
            }
        }
        self.adopting.set(false);
        self.adopted.notify_waiters();
    }

    /// Returns once broadcasts may be relayed (see [`Master::await_adopted`]).
    pub(super) async fn adoption_over(&self) {
        loop {
            let over = self.adopted.notified();
            if !self.adopting.get() {
                return;
            }
            over.await;
        }
    }

    /// Starts or retires workers until `desired` are active.
    async fn reconcile(self: &Rc<Self>, progress: Progress<'_>) -> Result<String, String> {
        let desired = usize::from(self.desired.get());
        let active = self.st.borrow().router.active_slots();
        if active.len() < desired {
            let mut new = Vec::new();
            for _ in active.len()..desired {
                let mut st = self.st.borrow_mut();
                let slot = st.router.free_slot().ok_or("no free worker slot")?;
                st.router.expect(slot);
                new.push(slot);
            }
            progress(format!("starting workers {new:?}"));
            let started = join_all(new.iter().map(|&s| self.start_and_wait(s))).await;
            started.into_iter().collect::<Result<Vec<()>, String>>()?;
            Ok(format!("{desired} workers ready"))
        } else if active.len() > desired {
            let extra = &active[desired..];
            progress(format!("draining and stopping workers {extra:?}"));
            join_all(extra.iter().map(|&s| self.retire(s))).await.into_iter().collect::<Result<Vec<()>, String>>()?;
            Ok(format!("{desired} workers"))
        } else {
            Ok(format!("{desired} workers already"))
        }
    }

    async fn start_and_wait(&self, slot: u16) -> Result<(), String> {
        self.st.borrow_mut().failed_workers.remove(&slot);
        if let Err(e) = self.supervisor.start(&self.cfg, slot).await {
            self.st.borrow_mut().router.forget(slot);
            return Err(e);
        }
        self.wait_ready(slot).await
    }

    /// A replacement that never became ready is stopped and forgotten, so
    /// that a failed reload leaves no extra, never-ready worker behind.
    async fn abandon(&self, slot: u16) {
        // Draining: when its agent leaves, it is removed, not expected back.
        self.st.borrow_mut().router.drain(slot);
        if let Err(e) = self.supervisor.stop(&self.cfg, slot).await {
            error!(app = %self.cfg.app, worker = slot, "{e}");
        }
        let mut st = self.st.borrow_mut();
        if !st.peers.contains_key(&slot) {
            st.router.forget(slot);
        }
    }

    /// Waits until the worker in `slot` is ready, up to `timeouts.ready_ms`.
    async fn wait_ready(&self, slot: u16) -> Result<(), String> {
        let deadline = Instant::now() + self.cfg.timeouts.ready_ms;
        loop {
            if self.st.borrow().router.state(slot) == Some(WorkerState::Ready) {
                return Ok(());
            }
            let changed = self.workers_changed.notified();
            if tokio::time::timeout_at(deadline.into(), changed).await.is_err() {
                return Err(format!("worker {slot} was not ready within {:?}", self.cfg.timeouts.ready_ms));
            }
        }
    }

    /// Drains a worker, then stops it.
    async fn retire(self: &Rc<Self>, slot: u16) -> Result<(), String> {
        self.st.borrow_mut().router.drain(slot);
        self.stop_accepting(slot);
        self.worker_changed();
        tokio::time::sleep(self.cfg.timeouts.drain_ms).await;
        let result = self.supervisor.stop(&self.cfg, slot).await;
        // A worker that never connected has no agent to say goodbye.
        let mut st = self.st.borrow_mut();
        if !st.peers.contains_key(&slot) {
            st.router.forget(slot);
        }
        drop(st);
        self.worker_changed();
        result
    }

    pub(super) async fn scale(self: &Rc<Self>, n: u16, progress: Progress<'_>) -> Result<String, String> {
        let _op = self.ops.lock().await;
        save_instances(&self.cfg.app, n).map_err(|e| format!("cannot save the worker count: {e}"))?;
        self.desired.set(n);
        info!(app = %self.cfg.app, instances = n, "scaling");
        self.reconcile(progress).await
    }

    /// Replaces every worker, one at a time (see [`Master::replace`]).
    pub(super) async fn reload(self: &Rc<Self>, progress: Progress<'_>) -> Result<String, String> {
        let _op = self.ops.lock().await;
        let old = self.st.borrow().router.active_slots();
        info!(app = %self.cfg.app, workers = ?old, "rolling reload");
        for (i, &slot) in old.iter().enumerate() {
            let new = self.replace(slot).await.map_err(|e| format!("reload stopped, {e}"))?;
            progress(format!("worker {slot} replaced by worker {new} ({}/{})", i + 1, old.len()));
        }
        Ok(format!("reloaded {} workers", old.len()))
    }

    /// Replaces one worker without ever having fewer ready: starts a new
    /// one, waits until it is ready, drains the old one, stops it. Returns
    /// the new worker's slot. The caller holds `ops`.
    async fn replace(self: &Rc<Self>, slot: u16) -> Result<u16, String> {
        let new = {
            let mut st = self.st.borrow_mut();
            let new = st.router.free_slot().ok_or("no free worker slot")?;
            st.router.expect(new);
            new
        };
        if let Err(e) = self.start_and_wait(new).await {
            self.abandon(new).await;
            return Err(format!("worker {slot} kept: {e}"));
        }
        self.retire(slot).await?;
        Ok(new)
    }

    /// Under `sio up`, PM2's `max_memory_restart`: a worker whose resident
    /// memory (its agent and every process below it) is above
    /// `limits.memory_max` is replaced as a reload replaces it. Under
    /// systemd the kernel enforces the unit's `MemoryMax=` instead.
    pub(super) async fn watch_memory(self: Rc<Self>) {
        if !self.supervisor.enforces_limits_itself() {
            return;
        }
        let l = &self.cfg.limits;
        if l.memory_high.is_some() || l.cpu_weight.is_some() {
            warn!(app = %self.cfg.app, "limits.memory_high and limits.cpu_weight apply under systemd only; sio up does not enforce them");
        }
        let Some(max) = l.memory_max else { return };
        loop {
            tokio::time::sleep(MEMORY_CHECK_EVERY).await;
            let Ok(processes) = tokio::task::spawn_blocking(crate::procfs::Table::read).await else { continue };
            let over: Vec<(u16, u64)> = {
                let st = self.st.borrow();
                st.router
                    .active_slots()
                    .into_iter()
                    .filter(|&slot| st.router.state(slot) == Some(WorkerState::Ready))
                    .filter_map(|slot| {
                        let memory = processes.tree(st.peers.get(&slot)?.pid)?.memory_bytes?;
                        (memory > max).then_some((slot, memory))
                    })
                    .collect()
            };
            for (slot, memory) in over {
                let _op = self.ops.lock().await;
                // A scale or reload may have retired it meanwhile.
                if !self.st.borrow().router.active_slots().contains(&slot) {
                    continue;
                }
                let mib = |b: u64| b >> 20;
                warn!(app = %self.cfg.app, worker = slot, memory, limit = max, "worker {slot} uses {} MiB, above limits.memory_max ({} MiB): replacing it", mib(memory), mib(max));
                match self.replace(slot).await {
                    Ok(new) => {
                        info!(app = %self.cfg.app, worker = slot, "worker {slot} replaced by worker {new} (memory)")
                    }
                    Err(e) => error!(app = %self.cfg.app, worker = slot, "cannot replace worker {slot}: {e}"),
                }
            }
        }
    }

    /// A worker whose unit failed for good (systemd hit its start limit)
    /// is reported and forgotten, rather than counted as starting forever:
    /// its sessions' requests go to the others at once instead of waiting
    /// for it and getting a 503. A scale or reload brings a new one.
    pub(super) async fn watch_failures(self: Rc<Self>) {
        loop {
            tokio::time::sleep(FAILURE_CHECK_EVERY).await;
            for slot in self.supervisor.failed().await {
                let mut st = self.st.borrow_mut();
                if st.router.state(slot) != Some(WorkerState::Starting) || st.peers.contains_key(&slot) {
                    continue;
                }
                st.router.forget(slot);
                st.failed_workers.insert(slot);
                drop(st);
                error!(app = %self.cfg.app, worker = slot, "worker {slot} failed for good: systemd gave up restarting it (journalctl -u {}); its sessions go to the other workers", crate::systemd::worker_unit(&self.cfg.app, slot));
                self.worker_changed();
            }
        }
    }

    /// Under systemd: `READY=1` once the configured workers are ready, a
    /// `STATUS=` line whenever it changes, `WATCHDOG=1` from this event loop.
    pub(super) async fn report_to_systemd(self: Rc<Self>) {
        use crate::systemd::notify;
        if !notify::under_systemd() {
            return;
        }
        if let Some(every) = notify::watchdog_interval() {
            tokio::task::spawn_local(async move {
                loop {
                    notify::watchdog();
                    tokio::time::sleep(every).await;
                }
            });
        }
        let mut ready_sent = false;
        let mut last = String::new();
        loop {
            let status = self.status();
            let summary = status.summary();
            // A worker that failed for good will not be ready: the app is
            // up (degraded, which STATUS= says) with the others.
            if !ready_sent && status.ready_workers() + status.failed.len() >= usize::from(self.desired.get()) {
                notify::ready(&summary);
                ready_sent = true;
                last = summary;
            } else if summary != last {
                notify::status(&summary);
                last = summary;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.workers_changed.notified()).await;
        }
    }
}
