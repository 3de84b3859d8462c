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
pub mod provision;

use crate::config::Limits;
use crate::control::Usage;
use dbus::{JobProxy, ManagerProxy, ServiceProxy, UnitProxy};
use futures_util::StreamExt;
use std::collections::BTreeSet;
use std::time::Duration;
use zbus::zvariant::Value;

/// Longest a start or stop job may take before the master gives up on it.
const JOB_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest any one D-Bus call may take: a stuck systemd must not wedge the
/// master (it holds the scale/reload lock while it waits).
const CALL_TIMEOUT: Duration = Duration::from_secs(25);
/// Attempts at listing the running workers after a master restart.
const LIST_ATTEMPTS: u32 = 5;

/// The unit of worker `slot` of `app`: an instance of the app's own
/// template `sio-worker-APP@.service`, which the generator writes from the
/// app's config so that each app's workers run as a user of their own
/// ([`app_user`]). (systemd has no specifier for a part of an instance
/// name, and drop-ins follow only a unit's prefix: one template for every
/// app could not give each its user.)
pub fn worker_unit(app: &str, slot: u16) -> String {
    format!("{}{slot}.service", worker_prefix(app))
}

/// What the names of `app`'s worker units start with, up to the number.
fn worker_prefix(app: &str) -> String {
    format!("sio-worker-{app}@")
}

/// The unit of worker `slot` under releases before one user per app,
/// where every app's workers ran as `sio-app`. A master adopts such
/// workers after an upgrade (their sessions live on) and a reload
/// replaces them.
pub fn legacy_worker_unit(app: &str, slot: u16) -> String {
    format!("{}{slot}.service", legacy_worker_prefix(app))
}

fn legacy_worker_prefix(app: &str) -> String {
    format!("sio-worker@{app}:")
}

/// Longest user name systemd-sysusers accepts (utmp's 32 bytes, less the
/// NUL).
const MAX_USER_NAME: usize = 31;

/// The user, and group, that the workers of `app` run as: `sio-app-APP`.
/// A name too long for a user name keeps its first 10 bytes and adds 48
/// bits of a hash of the whole, so that two long names sharing a start are
/// still two users.
pub fn app_user(app: &str) -> String {
    let whole = format!("sio-app-{app}");
    if whole.len() <= MAX_USER_NAME {
        return whole;
    }
    let hash = crate::stable_hash(app.as_bytes());
    let start: String = app.chars().take(10).collect();
    format!("sio-app-{start}-{:012x}", hash >> 16)
}

/// journalctl's arguments for the app's master and all its workers.
pub fn journal_units(app: &str) -> [String; 4] {
    ["-u".into(), master_unit(app), "-u".into(), format!("{}*.service", worker_prefix(app))]
}

/// The master's unit.
pub fn master_unit(app: &str) -> String {
    format!("sio@{app}.service")
}

/// The object path under which the system manager serves `unit`
/// (`sd_bus_path_encode`: every byte but ASCII letters, and digits after
/// the first byte, as `_xx`).
fn unit_object_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("_{b:02x}"));
        }
    }
    path
}

/// An app's worker units, managed through systemd's D-Bus API.
pub struct Workers {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    app: String,
    /// Slots whose units are [`legacy_worker_unit`]s, as last listed.
    legacy: std::sync::Mutex<BTreeSet<u16>>,
}

impl Workers {
    pub async fn connect(app: &str) -> zbus::Result<Workers> {
        let conn = zbus::connection::Builder::system()?.method_timeout(CALL_TIMEOUT).build().await?;
        let manager = ManagerProxy::new(&conn).await?;
        manager.subscribe().await?;
        Ok(Workers { conn, manager, app: app.to_owned(), legacy: Default::default() })
    }

    /// The unit that runs worker `slot`: the app's own, or one adopted from
    /// a release before one user per app.
    fn unit_of(&self, slot: u16) -> String {
        if self.legacy.lock().unwrap_or_else(|e| e.into_inner()).contains(&slot) {
            legacy_worker_unit(&self.app, slot)
        } else {
            worker_unit(&self.app, slot)
        }
    }

    /// Whether process `pid` is the agent of worker `slot`: the main
    /// process of `sio-worker-APP@N.service` as PID 1 of the *system*
    /// manager tells it. A cgroup path is no proof: a user's own manager,
    /// or any delegated subtree, can make one whose last component has
    /// that name. Nor is a process in the right unit enough: the app's
    /// Node runs there too, as the agent's child.
    ///
    /// A worker of a release before one user per app, adopted after an
    /// upgrade, runs in [`legacy_worker_unit`]: asked for each hello rather
    /// than from the last listing, which an agent's hello may come before.
    pub async fn is_agent(&self, slot: u16, pid: u32) -> Result<(), String> {
        let unit = worker_unit(&self.app, slot);
        let path = match self.manager.get_unit_by_pid(pid).await {
            Ok(path) => path,
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.systemd1.NoUnitForPID" => {
                return Err(format!("pid {pid} runs in no unit of the system manager, not in {unit}"))
            }
            Err(e) => return Err(format!("cannot ask the system manager for the unit of pid {pid}: {e}")),
        };
        let legacy = legacy_worker_unit(&self.app, slot);
        let unit = if path.as_str() == unit_object_path(&legacy) {
            self.legacy.lock().unwrap_or_else(|e| e.into_inner()).insert(slot);
            legacy
        } else {
            unit
        };
        if path.as_str() != unit_object_path(&unit) {
            let id = async { UnitProxy::builder(&self.conn).path(path.clone())?.build().await?.id().await };
            let id = id.await.unwrap_or_else(|_: zbus::Error| path.to_string());
            return Err(format!("pid {pid} runs in {id}, not in {unit}"));
        }
        let service = ServiceProxy::builder(&self.conn)
            .path(path)
            .map_err(|e| e.to_string())?
            .build()
            .await
            .map_err(|e| e.to_string())?;
        match service.main_pid().await {
            Ok(main) if main == pid => Ok(()),
            Ok(main) => Err(format!("pid {pid} runs in {unit} but is not its main process (pid {main})")),
            Err(e) => Err(format!("cannot ask the system manager for the main process of {unit}: {e}")),
        }
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
        self.legacy.lock().unwrap_or_else(|e| e.into_inner()).remove(&slot);
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
        self.job(&self.unit_of(slot), false).await
    }

    /// Slots whose units are running or starting (after a master restart:
    /// the workers to adopt). A failed listing is tried again: taking it for
    /// "no workers" would treat every live session as lost.
    pub async fn live_slots(&self) -> zbus::Result<Vec<u16>> {
        let mut attempt = 1;
        loop {
            match self.slots_in(&["active", "activating", "reloading"]).await {
                Ok(slots) => {
                    let legacy = self.legacy.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if !legacy.is_empty() {
                        tracing::warn!(app = %self.app, "workers {legacy:?} run as sio-app, the user every app shared before this release: `systemctl reload sio@{}.service` replaces them with workers of the app's own user, {}", self.app, app_user(&self.app));
                    }
                    return Ok(slots);
                }
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

    /// Slots of this app's worker units in one of `states`, sorted; the
    /// legacy units among them are remembered as such.
    async fn slots_in(&self, states: &[&str]) -> zbus::Result<Vec<u16>> {
        let (own, legacy) = (worker_prefix(&self.app), legacy_worker_prefix(&self.app));
        let patterns = [format!("{own}*.service"), format!("{legacy}*.service")];
        let rows = self.manager.list_units_by_patterns(states, &[patterns[0].as_str(), patterns[1].as_str()]).await?;
        let slots_of = |prefix: &str| -> BTreeSet<u16> {
            rows.iter().filter_map(|r| r.0.strip_prefix(prefix)?.strip_suffix(".service")?.parse().ok()).collect()
        };
        let (own, legacy) = (slots_of(&own), slots_of(&legacy));
        // The app's own unit wins should both run under one number.
        self.legacy.lock().unwrap_or_else(|e| e.into_inner()).extend(legacy.difference(&own));
        Ok(own.union(&legacy).copied().collect())
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
        let path = self.manager.get_unit(&self.unit_of(slot)).await.ok()?;
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
    fn a_units_object_path_is_its_name_escaped_as_systemd_escapes_it() {
        // As `busctl call org.freedesktop.systemd1 ... GetUnit s NAME` answers.
        assert_eq!(unit_object_path("dbus.service"), "/org/freedesktop/systemd1/unit/dbus_2eservice");
        assert_eq!(
            unit_object_path("sio-worker@chat:12.service"),
            "/org/freedesktop/systemd1/unit/sio_2dworker_40chat_3a12_2eservice"
        );
        assert_eq!(
            unit_object_path(&worker_unit("chat", 12)),
            "/org/freedesktop/systemd1/unit/sio_2dworker_2dchat_4012_2eservice"
        );
        assert_eq!(unit_object_path("2x.service"), "/org/freedesktop/systemd1/unit/_32x_2eservice");
    }

    #[test]
    fn every_app_gets_a_user_name_sysusers_accepts_and_long_names_stay_apart() {
        assert_eq!(app_user("chat"), "sio-app-chat");
        let longest_plain = "a".repeat(MAX_USER_NAME - "sio-app-".len());
        assert_eq!(app_user(&longest_plain), format!("sio-app-{longest_plain}"));
        let (one, two) = (format!("{longest_plain}-one"), format!("{longest_plain}-two"));
        assert_ne!(app_user(&one), app_user(&two));
        for app in [one.as_str(), two.as_str(), &"Z-_9".repeat(16)] {
            let user = app_user(app);
            assert!(user.len() <= MAX_USER_NAME, "{user}");
            assert!(user.starts_with(&format!("sio-app-{}-", &app[..10])), "{user}");
            assert!(user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{user}");
            assert_eq!(app_user(app), user, "the same name every time");
        }
    }
}
