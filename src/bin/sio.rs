//! `sio`: the daemon side. `sio up` runs apps in the foreground; `sio
//! master` and `sio worker` are what the systemd units run.

use clap::Parser;
use sio::cli::{Cli, Command, Supervision};
use sio::config::{AppConfig, ConfigError};
use sio::up::Mode;
use std::path::Path;
use std::process::ExitCode;

/// Counts heap bytes in use, for `sioctl status` (see `sio::heap`).
#[global_allocator]
static HEAP: sio::heap::Counting = sio::heap::Counting;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("sio: {message}");
    ExitCode::from(1)
}

/// Exit code for configuration errors (sysexits' EX_CONFIG): systemd
/// units use it to tell "fix the config" from a crash.
const EX_CONFIG: u8 = 78;

fn config_error(e: ConfigError) -> ExitCode {
    eprintln!("sio: {e}");
    ExitCode::from(EX_CONFIG)
}

fn load_app(dir: &Path, app: &str) -> Result<AppConfig, ExitCode> {
    if !sio::config::valid_app_name(app) {
        return Err(fail(format!("{app:?} is not an app name (1-64 of A-Z a-z 0-9 _ -)")));
    }
    AppConfig::load(&AppConfig::path_in(dir, app)).map_err(config_error)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sio::logging::init();
    match cli.command {
        Command::Up { path } => {
            let configs =
                if path.is_dir() { AppConfig::load_dir(&path) } else { AppConfig::load(&path).map(|c| vec![c]) };
            let configs = match configs {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            sio::sched::router_policy();
            match sio::up::block_on(sio::up::run(configs, Mode::Embedded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Master { app, config_dir, supervisor } => {
            let cfg = match load_app(&config_dir, &app) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let mode = match supervisor {
                Supervision::Systemd => Mode::Systemd,
                Supervision::Embedded => Mode::Embedded,
                Supervision::Auto if sio::systemd::notify::under_systemd() => Mode::Systemd,
                Supervision::Auto => Mode::Embedded,
            };
            sio::sched::router_policy();
            match sio::up::block_on(sio::up::run(vec![cfg], mode)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Provision { app, config_dir } => match sio::systemd::provision::provision(&app, &config_dir) {
            Ok(notes) => {
                for note in notes {
                    eprintln!("sio provision {app}: {note}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("provision {app}: {e}")),
        },
        Command::Docs { dir } => match sio::docs::write_all(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("docs: {e}")),
        },
        Command::Worker { instance, config_dir, config } => {
            let Some((app, slot)) =
                instance.split_once(':').and_then(|(a, n)| Some((a.to_owned(), n.parse::<u16>().ok()?)))
            else {
                return fail(format!("{instance:?} is not APP:N (N from 1 to {})", sio::sid::MAX_SLOT));
            };
            if slot == 0 || slot > sio::sid::MAX_SLOT {
                return fail(format!("worker number {slot} is out of range 1..={}", sio::sid::MAX_SLOT));
            }
            let cfg = match config {
                Some(path) => AppConfig::load(&path).map_err(config_error),
                None => load_app(&config_dir, &app),
            };
            let cfg = match cfg {
                Ok(c) if c.app == app => c,
                Ok(c) => return fail(format!("{} configures app {:?}, not {app:?}", c.path.display(), c.app)),
                Err(code) => return code,
            };
            sio::sched::router_policy();
            let exit = sio::up::block_on(sio::agent::run(cfg, slot));
            if let sio::agent::Exit::Failed(why) = &exit {
                eprintln!("sio worker {instance}: {why}");
            }
            ExitCode::from(exit.code().clamp(0, 255) as u8)
        }
    }
}
