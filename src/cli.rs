//! The command lines of `sio` and `sioctl`, here rather than in the
//! binaries so that the man pages and shell completions are generated
//! from the same definitions ([`crate::docs`]).

use crate::config::DEFAULT_CONFIG_DIR;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sio", version, about = "Scale Socket.IO servers across CPU cores, supervised by systemd")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run apps in the foreground, without systemd: an APP.json file, or a
    /// folder of them. Ctrl-C stops everything.
    Up { path: PathBuf },
    /// Run the master of APP (what sio@APP.service runs).
    Master {
        app: String,
        /// Folder of APP.json files.
        #[arg(long, env = "SIO_CONFIG_DIR", default_value = DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// Who runs the workers: systemd units (when run by systemd), or
        /// agents spawned by the master.
        #[arg(long, value_enum, default_value_t = Supervision::Auto)]
        supervisor: Supervision,
    },
    /// Make APP's user and group (sio-app-APP) and let them read its config:
    /// what sio-bus@APP.socket runs, as root, before it binds the app's bus.
    /// Run it by hand to own the app's files by that group before its first
    /// start.
    Provision {
        app: String,
        /// Folder of APP.json files.
        #[arg(long, env = "SIO_CONFIG_DIR", default_value = DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Write the man pages and shell completions into DIR (for packages).
    #[command(hide = true)]
    Docs { dir: PathBuf },
    /// Run the agent of one worker, APP:N (what sio-worker-APP@N.service runs).
    Worker {
        instance: String,
        /// Folder of APP.json files.
        #[arg(long, env = "SIO_CONFIG_DIR", default_value = DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// The app's config file (instead of looking in --config-dir).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Supervision {
    Auto,
    Systemd,
    Embedded,
}

#[derive(Parser)]
#[command(name = "sioctl", version, about = "Operate sio apps (PM2's verbs, on systemd)")]
pub struct CtlCli {
    /// Folder of APP.json files.
    #[arg(long, global = true, env = "SIO_CONFIG_DIR", default_value = DEFAULT_CONFIG_DIR)]
    pub config_dir: PathBuf,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand)]
pub enum CtlCommand {
    /// Every configured app, and whether its master runs.
    Ls {
        /// Print JSON (the same fields) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Workers, their state, sessions, memory, CPU and restarts.
    Status {
        /// One app (default: every configured app).
        app: Option<String>,
        /// Print JSON (the same fields) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A live view of APP (PM2's monit): workers, the master's rates, recent
    /// logs; q quits, up/down select a worker. Plain text, once per
    /// interval, when the output is not a terminal.
    Top {
        app: String,
        /// Refresh interval.
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        interval_ms: u64,
        /// Stop after N refreshes (plain text only; default: until stopped).
        #[arg(short = 'n', long)]
        iterations: Option<u64>,
    },
    /// Print the APP.json of a PM2 ecosystem file's app (evaluated by Node,
    /// as PM2 does), saying on stderr what does not carry over and why.
    Import {
        /// ecosystem.config.js (or .cjs, .json).
        file: PathBuf,
        /// Merge the apps' env_NAME over env (PM2's --env NAME).
        #[arg(long)]
        env: Option<String>,
        /// Write DIR/APP.json for each app (never over an existing file)
        /// instead of printing one app.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// Run N workers (kept across master restarts).
    Scale { app: String, instances: u16 },
    /// Replace every worker, one at a time, never fewer ready than before.
    Reload { app: String },
    /// The journal of the master and all workers of APP.
    Logs {
        app: String,
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
        /// Lines to show.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u32,
    },
}
