//! A shutdown signal every long-running task can wait on (the mini-redis
//! pattern): one [`ShutdownTrigger`], any number of [`Shutdown`] clones.

use tokio::sync::watch;

/// Fires the shutdown once.
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Tells whether shutdown began, and waits for it.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once shutdown has begun (at once if it already has).
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which also means "stop".
        let _ = self.0.wait_for(|&down| down).await;
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
