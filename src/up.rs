//! Running masters: `sio up` (the embedded default: master and agents in
//! the foreground, for a laptop or a container) and `sio master` (one app,
//! under systemd). SIGINT or SIGTERM stops everything started here.

use crate::config::AppConfig;
use crate::listen::Listeners;
use crate::master::supervisor::Supervisor;
use crate::master::Master;
use crate::shutdown::{self, termination_signal};
use std::future::Future;
use tracing::info;

/// Who runs the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The master spawns its agents (`sio up`).
    Embedded,
    /// Worker units started over D-Bus (`sio master` under systemd).
    Systemd,
}

/// Runs a future on the single-threaded runtime every sio process uses.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let output = local.block_on(&rt, f);
    // Tasks still in the set (aborted background tasks) are dropped with
    // it, and what they own may need the runtime as it goes (a zbus
    // connection does): drop them inside it, not after it.
    let _inside = rt.enter();
    drop(local);
    output
}

/// Runs the given apps until a termination signal.
pub async fn run(configs: Vec<AppConfig>, mode: Mode) -> std::io::Result<()> {
    let (trigger, shutdown) = shutdown::channel();
    // Open everything before starting anything: a port or bus in use stops
    // the whole start with one error.
    let mut ready = Vec::new();
    for cfg in configs {
        let mut listeners = Listeners::open(&cfg)?;
        let supervisor = match mode {
            Mode::Embedded => Supervisor::embedded(shutdown.clone())?,
            Mode::Systemd => Supervisor::systemd(&cfg.app)
                .await
                .map_err(|e| std::io::Error::other(format!("cannot reach systemd over D-Bus: {e}")))?,
        };
        let master = Master::new(cfg, &mut listeners, supervisor)?;
        ready.push((master, listeners));
    }
    let running: Vec<_> =
        ready.into_iter().map(|(m, l)| tokio::task::spawn_local(m.run(l, shutdown.clone()))).collect();
    termination_signal().await;
    info!("stopping");
    trigger.fire();
    for r in running {
        let _ = r.await;
    }
    Ok(())
}
