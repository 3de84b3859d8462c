//! Log setup. Under systemd (`JOURNAL_STREAM` set) records go to the
//! journal natively, with structured fields `SIO_APP`, `SIO_WORKER`,
//! `SIO_SID`, ... (so `journalctl SIO_APP=chat` works); elsewhere as lines
//! on stderr. `SIO_LOG` filters (`info` by default; `debug` shows every
//! routing decision and its sid).

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
