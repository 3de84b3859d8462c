//! Log setup. Under systemd (`JOURNAL_STREAM` set) records go to the
//! journal natively, with structured fields `SIO_APP`, `SIO_WORKER`,
//! `SIO_SID`, ... (so `journalctl SIO_APP=chat` works); elsewhere as lines
//! on stderr. `SIO_LOG` filters (`info` by default; `debug` shows every
//! routing decision and its sid).

use std::cell::Cell;
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("SIO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|l| l.with_field_prefix(Some("SIO".into())));
    match journald {
        Some(journal) => {
            let _ = tracing_subscriber::registry().with(filter).with(journal).try_init();
        }
        None => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init();
        }
    }
}

/// Warnings about one kind of misbehaving peer (or one kind of loss) are
/// rate-limited to one per this.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A warning that is logged at most once per [`WARN_EVERY`], so that a
/// hostile peer cannot flood the journal.
#[derive(Default)]
pub struct RateLimit(Cell<Option<Instant>>);

impl RateLimit {
    pub fn due(&self) -> bool {
        let now = Instant::now();
        let due = self.0.get().is_none_or(|t| now.duration_since(t) > WARN_EVERY);
        if due {
            self.0.set(Some(now));
        }
        due
    }
}
