//! `sio up`: the embedded default. Runs the master of each app and its
//! worker agents in the foreground, without systemd (a laptop, a
//! container). SIGINT or SIGTERM stops everything; agents and workers die
//! with it even if it is killed outright.

use crate::config::AppConfig;
use crate::listen::Listeners;
use crate::master::supervisor::Supervisor;
use crate::master::Master;
use crate::shutdown::{self, termination_signal};
use std::future::Future;
use tracing::info;

/// Runs a future on the single-threaded runtime every sio process uses.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// Runs the given apps until a termination signal.
pub async fn run(configs: Vec<AppConfig>) -> std::io::Result<()> {
    let (trigger, shutdown) = shutdown::channel();
    // Open everything before starting anything: a port or bus in use stops
    // the whole start with one error.
    let mut ready = Vec::new();
    for cfg in configs {
        let listeners = Listeners::open(&cfg)?;
        let master = Master::new(cfg, &listeners, Supervisor::embedded(shutdown.clone())?)?;
        ready.push((master, listeners));
    }
    let running: Vec<_> = ready
        .into_iter()
        .map(|(m, l)| tokio::task::spawn_local(m.run(l, shutdown.clone())))
        .collect();
    termination_signal().await;
    info!("stopping");
    trigger.fire();
    for r in running {
        let _ = r.await;
    }
    Ok(())
}
