//! App configuration: `/etc/sio/APP.json` (the folder can be changed with
//! `--config-dir` or `SIO_CONFIG_DIR`).
//!
//! Parsing is strict: an unknown field, a wrong type or an impossible value
//! is one error that names the field, and nothing starts half-configured.
//! The reference is in the README ("Configuration").

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where app configs live unless told otherwise.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/sio";

/// How many workers to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    Count(u16),
    /// One per CPU available to the master (its affinity mask).
    Max,
}

impl Instances {
    pub fn resolve(self) -> u16 {
        match self {
            Instances::Count(n) => n,
            Instances::Max => std::thread::available_parallelism().map_or(1, |n| n.get().min(4095) as u16),
        }
    }
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let bad = || serde::de::Error::custom("expected a whole number from 1 to 4095, or \"max\"");
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::N(n) if (1..=4095).contains(&n) => Ok(Instances::Count(n as u16)),
            Raw::S(s) if s == "max" => Ok(Instances::Max),
            _ => Err(bad()),
        }
    }
}

/// One address or a list.
fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let list =
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected \"host:port\" or a list of them"))? {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        };
    if list.is_empty() {
        return Err(serde::de::Error::custom("needs at least one \"host:port\""));
    }
    list.iter()
        .map(|s| {
            s.parse().map_err(|_| {
                serde::de::Error::custom(format!("{s:?} is not an IP address with a port, like \"127.0.0.1:3000\""))
            })
        })
        .collect()
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ms = u64::deserialize(d)?;
    if ms == 0 {
        return Err(serde::de::Error::custom("must be at least 1 (milliseconds)"));
    }
    Ok(Duration::from_millis(ms))
}

/// Time limits, in milliseconds in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// How long a client may take to send its request head (then 408).
    #[serde(deserialize_with = "millis")]
    pub head_ms: Duration,
    /// How long a request waits for a ready worker (then 503).
    #[serde(deserialize_with = "millis")]
    pub worker_wait_ms: Duration,
    /// How long a worker has between SIGTERM and SIGKILL.
    #[serde(deserialize_with = "millis")]
    pub stop_ms: Duration,
    /// How long a new worker (scale, reload) may take to become ready.
    #[serde(deserialize_with = "millis")]
    pub ready_ms: Duration,
    /// How long a worker being removed keeps serving its sessions, taking
    /// no new ones, before it is stopped (its clients then reconnect).
    #[serde(deserialize_with = "millis")]
    pub drain_ms: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            head_ms: Duration::from_secs(10),
            worker_wait_ms: Duration::from_secs(10),
            stop_ms: Duration::from_secs(5),
            ready_ms: Duration::from_secs(30),
            drain_ms: Duration::from_secs(2),
        }
    }
}

/// Bounds that keep the master's memory flat whatever clients do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head the master peeks at (then 431).
    pub max_head_bytes: usize,
    /// Connections accepted and not yet handed off; accepting pauses above it
    /// (the rest wait in the kernel's backlog).
    pub max_pending_connections: usize,
    /// Bytes of relayed adapter frames queued for one slow worker before
    /// further frames to it are dropped (and counted).
    pub bus_queue_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head_bytes: 16 * 1024, max_pending_connections: 10_000, bus_queue_bytes: 64 << 20 }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 3000))]
}

fn default_instances() -> Instances {
    Instances::Max
}

/// An app as written in `APP.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    command: Vec<String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default = "default_instances")]
    instances: Instances,
    #[serde(default = "default_listen", deserialize_with = "addresses")]
    listen: Vec<SocketAddr>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    control_group: Option<String>,
}

/// A validated app configuration.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The app's name: the config file's stem, used in unit names, the bus
    /// address and log fields.
    pub app: String,
    /// The file it came from.
    pub path: PathBuf,
    /// The worker program and its arguments, e.g. `["node", "worker.js"]`.
    pub command: Vec<String>,
    /// Working directory of the worker; relative paths are taken from the
    /// config file's folder, and the default is that folder.
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub instances: Instances,
    /// Where the master listens when not socket-activated.
    pub listen: Vec<SocketAddr>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Members of this group may scale and reload the app (besides root
    /// and the master's own user).
    pub control_group: Option<String>,
}

/// A config error: the file, the field (if one is to blame), and what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field `{}`: {}", self.path.display(), field, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Whether `name` can be an app name: it ends up in unit names, the bus
/// address and journal fields.
pub fn valid_app_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl AppConfig {
    /// The config file of `app` in `dir`.
    pub fn path_in(dir: &Path, app: &str) -> PathBuf {
        dir.join(format!("{app}.json"))
    }

    /// Loads and validates one app config; the app name is the file stem.
    pub fn load(path: &Path) -> Result<AppConfig, ConfigError> {
        let err = |field: Option<String>, message: String| ConfigError { path: path.to_owned(), field, message };
        let app = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_owned();
        if !valid_app_name(&app) {
            return Err(err(None, format!("app name {app:?} (the file name) must be 1-64 of A-Z a-z 0-9 _ -")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(None, format!("cannot read: {e}")))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let field = (field != ".").then_some(field);
            err(field, inner.to_string())
        })?;
        if raw.command.is_empty() || raw.command[0].is_empty() {
            return Err(err(Some("command".into()), "must name a program, e.g. [\"node\", \"worker.js\"]".into()));
        }
        for key in raw.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(err(Some(format!("env.{key}")), "is not a valid environment variable name".into()));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let cwd = match raw.cwd {
            Some(c) if c.is_absolute() => c,
            Some(c) => base.join(c),
            None => base.to_owned(),
        };
        let cwd = if cwd.as_os_str().is_empty() { PathBuf::from(".") } else { cwd };
        if !cwd.is_dir() {
            return Err(err(Some("cwd".into()), format!("{} is not a directory", cwd.display())));
        }
        if let Some(g) = &raw.control_group {
            if nix::unistd::Group::from_name(g).ok().flatten().is_none() {
                return Err(err(Some("control_group".into()), format!("no group named {g:?}")));
            }
        }
        let l = &raw.limits;
        if l.max_head_bytes < 256 || l.max_head_bytes > 1 << 20 {
            return Err(err(Some("limits.max_head_bytes".into()), "must be from 256 to 1048576".into()));
        }
        if l.max_pending_connections == 0 || l.bus_queue_bytes == 0 {
            let field = if l.max_pending_connections == 0 {
                "limits.max_pending_connections"
            } else {
                "limits.bus_queue_bytes"
            };
            return Err(err(Some(field.into()), "must be at least 1".into()));
        }
        Ok(AppConfig {
            app,
            path: path.to_owned(),
            command: raw.command,
            cwd,
            env: raw.env,
            instances: raw.instances,
            listen: raw.listen,
            timeouts: raw.timeouts,
            limits: raw.limits,
            control_group: raw.control_group,
        })
    }

    /// Every `*.json` app config in a folder, sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<AppConfig>, ConfigError> {
        let err = |message: String| ConfigError { path: dir.to_owned(), field: None, message };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| err(format!("cannot read folder: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(err("holds no APP.json file".into()));
        }
        paths.iter().map(|p| AppConfig::load(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<AppConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("sio-config-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("chat.json");
        std::fs::write(&p, json).unwrap();
        let r = AppConfig::load(&p);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(r#"{"command": ["node", "worker.js"]}"#).unwrap();
        assert_eq!(c.app, "chat");
        assert_eq!(c.instances, Instances::Max);
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.timeouts.head_ms, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_field() {
        let e = load(r#"{"command": ["node"], "instances": 0}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("instances"), "{e}");
        let e = load(r#"{"command": ["node"], "timeouts": {"head_ms": "soon"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("timeouts.head_ms"), "{e}");
        let e = load(r#"{"command": ["node"], "listen": "localhost"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("listen"), "{e}");
        let e = load(r#"{"command": ["node"], "instance": 2}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `instance`"), "{e}");
        let e = load(r#"{"command": []}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("command"), "{e}");
        let e = load(r#"{"command": ["node"], "cwd": "/nonexistent/x"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cwd"), "{e}");
        let e = load(r#"{"command": ["node"],"#).unwrap_err();
        assert!(e.to_string().contains("EOF"), "{e}");
    }

    #[test]
    fn instances_and_listen_forms() {
        let c = load(r#"{"command": ["n"], "instances": 3, "listen": ["127.0.0.1:1", "[::1]:2"]}"#).unwrap();
        assert_eq!(c.instances, Instances::Count(3));
        assert_eq!(c.listen.len(), 2);
        assert!(Instances::Max.resolve() >= 1);
    }
}
