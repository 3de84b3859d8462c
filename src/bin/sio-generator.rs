//! `sio-generator`, the systemd generator (installed in
//! `/usr/lib/systemd/system-generators/`): see [`sio::systemd::generator`].
//! systemd passes three output folders; the units and drop-ins go to the
//! first ("normal"). `SIO_CONFIG_DIR` and `SIO_BIN` (the `sio` the workers
//! run) replace the package's paths, for tests. It logs to stderr only and never fails the boot.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("sio-generator: usage: sio-generator NORMAL_DIR [EARLY_DIR LATE_DIR]");
        return ExitCode::from(2);
    };
    let config_dir = std::env::var_os("SIO_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(sio::config::DEFAULT_CONFIG_DIR));
    // Where the workers' agent is: the package's, unless told otherwise.
    let sio = std::env::var_os("SIO_BIN").map_or_else(|| PathBuf::from("/usr/bin/sio"), PathBuf::from);
    if let Err(e) = sio::systemd::generator::generate(&config_dir, &out, &sio) {
        eprintln!("sio-generator: {e}");
    }
    ExitCode::SUCCESS
}
