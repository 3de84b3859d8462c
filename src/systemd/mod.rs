//! systemd as the supervisor: worker units started and stopped over D-Bus,
//! readiness and status through `sd_notify`, the socket unit's addresses
//! from a generator.
//!
//! Every job follows the same pattern (subscribe, call, wait for the
//! matching `JobRemoved`, anything but `done` is a failure), with a time
//! limit so that a stuck job never wedges the master.

pub mod dbus;
pub mod generator;
pub mod notify;

use crate::config::Limits;
use crate::control::Usage;
use dbus::{JobProxy, ManagerProxy, ServiceProxy, UnitProxy};
use futures_util::StreamExt;
use std::time::Duration;
use zbus::zvariant::Value;

/// Longest a start or stop job may take before the master gives up on it.
const JOB_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest any one D-Bus call may take: a stuck systemd must not wedge the
/// master (it holds the scale/reload lock while it waits).
const CALL_TIMEOUT: Duration = Duration::from_secs(25);
/// Attempts at listing the running workers after a master restart.
const LIST_ATTEMPTS: u32 = 5;

/// The unit of worker `slot` of `app`.
pub fn worker_unit(app: &str, slot: u16) -> String {
    format!("sio-worker@{app}:{slot}.service")
}

/// The master's unit.
pub fn master_unit(app: &str) -> String {
    format!("sio@{app}.service")
}

/// The service a process runs in, from its `/proc/PID/cgroup`: the last
/// `*.service` component of its cgroup path (the unified hierarchy's line
/// `0::`, else the `name=systemd` one), which a process cannot leave
/// without privileges systemd's units do not grant.
pub fn service_of_cgroup(cgroup: &str) -> Option<&str> {
    let path_of = |prefix: &str| cgroup.lines().find_map(|l| l.strip_prefix(prefix));
    let path =
        path_of("0::").or_else(|| cgroup.lines().find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p)))?;
    path.rsplit('/').find(|c| c.ends_with(".service"))
}

/// Whether process `pid` runs in worker unit `slot` of `app`.
pub fn runs_in_worker_unit(app: &str, slot: u16, pid: u32) -> Result<(), String> {
    let unit = worker_unit(app, slot);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot tell the unit of pid {pid}: {e}"))?;
    match service_of_cgroup(&cgroup) {
        Some(u) if u == unit => Ok(()),
        Some(u) => Err(format!("pid {pid} runs in {u}, not in {unit}")),
        None => Err(format!("pid {pid} runs in no service, not in {unit}")),
    }
}

/// An app's worker units, managed through systemd's D-Bus API.
pub struct Workers {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    app: String,
}

impl Workers {
    pub async fn connect(app: &str) -> zbus::Result<Workers> {
        let conn = zbus::connection::Builder::system()?.method_timeout(CALL_TIMEOUT).build().await?;
        let manager = ManagerProxy::new(&conn).await?;
        manager.subscribe().await?;
        Ok(Workers { conn, manager, app: app.to_owned() })
    }

    async fn job(&self, unit: &str, start: bool) -> Result<(), String> {
        let mut removed = self.manager.receive_job_removed().await.map_err(|e| e.to_string())?;
        let verb = if start { "start" } else { "stop" };
        let job = if start {
            self.manager.start_unit(unit, "replace").await
        } else {
            self.manager.stop_unit(unit, "replace").await
        };
        let job = match job {
            Ok(j) => j,
            // Stopping a unit systemd does not know: nothing to stop.
            Err(zbus::Error::MethodError(name, _, _))
                if !start && name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                return Ok(())
            }
            Err(e) => return Err(format!("{verb} {unit}: {e}")),
        };
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if *args.job() == job {
                    return match args.result().as_str() {
                        "done" => Ok(()),
                        other => Err(format!("{verb} {unit}: job {other} (see journalctl -u {unit})")),
                    };
                }
            }
            Err(format!("{verb} {unit}: lost the D-Bus connection"))
        };
        tokio::time::timeout(JOB_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| Err(format!("{verb} {unit}: no answer in {JOB_TIMEOUT:?}")))
    }

    pub async fn start(&self, slot: u16, limits: &Limits) -> Result<(), String> {
        let unit = worker_unit(&self.app, slot);
        // A slot whose unit once failed for good is used again: clear its
        // start limit (an error only means there was nothing to clear).
        let _ = self.manager.reset_failed_unit(&unit).await;
        self.apply_limits(&unit, limits).await?;
        self.job(&unit, true).await
    }

    /// The app's `limits` as the unit's cgroup settings, for this boot
    /// (`runtime`: a drop-in in /run/systemd/system.control), set before
    /// every start so that a limit taken out of the config is lifted too.
    /// The kernel enforces them; systemd restarts a worker killed for
    /// going over `MemoryMax=`.
    async fn apply_limits(&self, unit: &str, limits: &Limits) -> Result<(), String> {
        // systemd's "infinity" and "not set".
        let unset = u64::MAX;
        let properties = [
            ("MemoryMax", Value::from(limits.memory_max.unwrap_or(unset))),
            ("MemoryHigh", Value::from(limits.memory_high.unwrap_or(unset))),
            ("CPUWeight", Value::from(limits.cpu_weight.map_or(unset, u64::from))),
        ];
        match self.manager.set_unit_properties(unit, true, &properties).await {
            Ok(()) => Ok(()),
            Err(e) if limits.memory_max.is_some() || limits.memory_high.is_some() || limits.cpu_weight.is_some() => {
                Err(format!("cannot apply limits to {unit}: {e} (the polkit rule 50-sio.rules must let user sio set-property on it)"))
            }
            // Nothing to lift unless limits were set once: not an error.
            Err(e) => {
                tracing::debug!(app = %self.app, "no limits to lift on {unit}: {e}");
                Ok(())
            }
        }
    }

    pub async fn stop(&self, slot: u16) -> Result<(), String> {
        self.job(&worker_unit(&self.app, slot), false).await
    }

    /// Slots whose units are running or starting (after a master restart:
    /// the workers to adopt). A failed listing is tried again: taking it for
    /// "no workers" would treat every live session as lost.
    pub async fn live_slots(&self) -> zbus::Result<Vec<u16>> {
        let mut attempt = 1;
        loop {
            match self.slots_in(&["active", "activating", "reloading"]).await {
                Ok(slots) => return Ok(slots),
                Err(e) if attempt < LIST_ATTEMPTS => {
                    tracing::warn!(app = %self.app, attempt, "cannot list the worker units yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Slots whose units failed for good: systemd stopped restarting them
    /// (their start limit was hit).
    pub async fn failed_slots(&self) -> zbus::Result<Vec<u16>> {
        self.slots_in(&["failed"]).await
    }

    /// Slots of this app's worker units in one of `states`, sorted.
    async fn slots_in(&self, states: &[&str]) -> zbus::Result<Vec<u16>> {
        let pattern = format!("sio-worker@{}:*.service", self.app);
        let rows = self.manager.list_units_by_patterns(states, &[pattern.as_str()]).await?;
        let prefix = format!("sio-worker@{}:", self.app);
        let mut slots: Vec<u16> =
            rows.iter().filter_map(|r| r.0.strip_prefix(&prefix)?.strip_suffix(".service")?.parse().ok()).collect();
        slots.sort_unstable();
        Ok(slots)
    }

    /// Whether the master's own unit is being stopped for good (a stop job),
    /// rather than restarted: only then do the workers stop with it.
    pub async fn stop_is_final(&self) -> bool {
        matches!(self.own_job_type().await, Ok(Some(t)) if t == "stop")
    }

    async fn own_job_type(&self) -> zbus::Result<Option<String>> {
        let path = self.manager.get_unit(&master_unit(&self.app)).await?;
        let unit = UnitProxy::builder(&self.conn).path(path)?.build().await?;
        let (id, job) = unit.job().await?;
        if id == 0 {
            return Ok(None);
        }
        let job = JobProxy::builder(&self.conn).path(job)?.build().await?;
        Ok(Some(job.job_type().await?))
    }

    /// Memory, CPU and restarts of a worker, from systemd's accounting.
    pub async fn usage(&self, slot: u16) -> Option<Usage> {
        let path = self.manager.get_unit(&worker_unit(&self.app, slot)).await.ok()?;
        let service = ServiceProxy::builder(&self.conn).path(path).ok()?.build().await.ok()?;
        let valid = |v: u64| (v != u64::MAX).then_some(v);
        Some(Usage {
            memory_bytes: None,
            cgroup_memory_bytes: service.memory_current().await.ok().and_then(valid),
            cpu_ns: service.cpu_usage_nsec().await.ok().and_then(valid),
            restarts: service.n_restarts().await.ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_of_a_process_comes_from_its_cgroup_path() {
        let v2 = "0::/system.slice/system-sio\\x2dworker.slice/sio-worker@chat:1.service\n";
        assert_eq!(service_of_cgroup(v2), Some("sio-worker@chat:1.service"));
        // A sub-cgroup inside the unit (delegation) still names the unit.
        assert_eq!(service_of_cgroup("0::/system.slice/sio@chat.service/payload\n"), Some("sio@chat.service"));
        let hybrid = "12:cpu:/x\n1:name=systemd:/system.slice/sio-worker@a:2.service\n0::/\n";
        assert_eq!(service_of_cgroup(hybrid), None, "the unified line wins, and names no service here");
        let v1 = "12:cpu:/x\n1:name=systemd:/system.slice/sio-worker@a:2.service\n";
        assert_eq!(service_of_cgroup(v1), Some("sio-worker@a:2.service"));
        assert_eq!(service_of_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n"), None);
        assert_eq!(service_of_cgroup(""), None);
    }
}
