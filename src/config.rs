//! App configuration: `/etc/sio/APP.json` (the folder can be changed with
//! `--config-dir` or `SIO_CONFIG_DIR`).
//!
//! Parsing is strict: an unknown field, a wrong type or an impossible value
//! is one error that names the field, and nothing starts half-configured.
//! The reference is in the README ("Configuration").
//!
//! Parsing ([`AppConfig::parse`]) is pure; [`AppConfig::load`] adds what
//! only the running system can tell (the working directory exists, the
//! control group resolves). The systemd generator reads nothing but
//! `listen` ([`listen_addresses`]): it runs before most filesystems are
//! mounted and must not ask NSS (LDAP, sssd) for groups.

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

/// The Engine.IO transports clients may use (`"transports"` in `APP.json`).
///
/// Long-polling is what needs a router: each of a session's HTTP requests
/// must reach the worker that owns it. Without it the workers accept
/// connections themselves, and no process stands between a client and Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transports {
    pub polling: bool,
    pub websocket: bool,
}

impl Default for Transports {
    fn default() -> Self {
        Transports { polling: true, websocket: true }
    }
}

impl Transports {
    /// Whether the workers accept on the app's sockets themselves, the master
    /// only supervising and relaying (websocket alone: no session to route).
    pub fn workers_accept(self) -> bool {
        !self.polling
    }

    /// As engine.io's `transports` option, space-separated (for the preload).
    pub fn engine_names(self) -> String {
        let names = [(self.polling, "polling"), (self.websocket, "websocket")];
        names.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect::<Vec<_>>().join(" ")
    }
}

impl<'de> Deserialize<'de> for Transports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bad = || serde::de::Error::custom("expected a list of \"polling\" and \"websocket\", e.g. [\"websocket\"]");
        let names = Vec::<String>::deserialize(d).map_err(|_| bad())?;
        let mut t = Transports { polling: false, websocket: false };
        for name in &names {
            let seen = match name.as_str() {
                "polling" => std::mem::replace(&mut t.polling, true),
                "websocket" => std::mem::replace(&mut t.websocket, true),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "{other:?} is not a transport sio serves: \"polling\" or \"websocket\""
                    )))
                }
            };
            if seen {
                return Err(serde::de::Error::custom(format!("{name:?} is listed twice")));
            }
        }
        if names.is_empty() {
            return Err(bad());
        }
        Ok(t)
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

/// A size: bytes, or a string with a binary suffix as systemd and PM2 write
/// them (`"512M"`, `"1.5G"`; K, M, G, T).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    let number: f64 = number.trim().parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let bytes = number * factor as f64;
    (bytes < u64::MAX as f64).then_some(bytes as u64)
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    let bad = || serde::de::Error::custom("expected bytes, or a size like \"512M\" or \"2G\"");
    match Option::<Raw>::deserialize(d).map_err(|_| bad())? {
        None => Ok(None),
        Some(Raw::Number(n)) => Ok(Some(n)),
        Some(Raw::Text(t)) => parse_bytes(&t).map(Some).ok_or_else(bad),
    }
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
    /// How long a worker may take to acknowledge a connection handed to it
    /// before it counts as hung and is killed (and restarted).
    #[serde(deserialize_with = "millis")]
    pub handoff_ms: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            head_ms: Duration::from_secs(10),
            worker_wait_ms: Duration::from_secs(10),
            stop_ms: Duration::from_secs(5),
            ready_ms: Duration::from_secs(30),
            drain_ms: Duration::from_secs(2),
            handoff_ms: Duration::from_secs(5),
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
    /// A worker's memory ceiling: under systemd its unit's `MemoryMax=`
    /// (the kernel's OOM killer, then systemd restarts it); under `sio up`
    /// the master replaces a worker whose resident memory is above it
    /// (PM2's `max_memory_restart`).
    #[serde(deserialize_with = "bytes")]
    pub memory_max: Option<u64>,
    /// Under systemd, the worker unit's `MemoryHigh=` (reclaim and
    /// throttling above it).
    #[serde(deserialize_with = "bytes")]
    pub memory_high: Option<u64>,
    /// Under systemd, the worker unit's `CPUWeight=` (1–10000; 100 is
    /// everyone's default).
    pub cpu_weight: Option<u16>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_pending_connections: 10_000,
            bus_queue_bytes: 64 << 20,
            memory_max: None,
            memory_high: None,
            cpu_weight: None,
        }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 3000))]
}

fn default_instances() -> Instances {
    Instances::Max
}

/// One field of `APP.json`, as the config reference documents it.
pub struct Field {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every field of `APP.json`: the reference from which `sio.json(5)` is
/// generated, checked against the README's table by a test.
pub const FIELDS: &[Field] = &[
    Field { name: "command", default: "required", meaning: "the worker program and its arguments" },
    Field { name: "cwd", default: "the config file's folder", meaning: "the worker's working directory (relative paths are from the config's folder)" },
    Field { name: "env", default: "`{}`", meaning: "extra environment for the worker" },
    Field { name: "instances", default: "`\"max\"`", meaning: "number of workers, 1–4095, or `\"max\"`: one per CPU available to the master" },
    Field { name: "listen", default: "`\"127.0.0.1:3000\"`", meaning: "address or list of addresses, used when not socket-activated; port 0 picks a free port (see `sioctl status`)" },
    Field { name: "transports", default: "`[\"polling\", \"websocket\"]`", meaning: "the Engine.IO transports clients may use; `[\"websocket\"]` alone: the workers accept connections themselves, no router on a session's path (no added latency, and connections are taken while the master restarts), long-polling refused (clients connect with `transports: [\"websocket\"]`)" },
    Field { name: "timeouts.head_ms", default: "10000", meaning: "a client has this long to send its request head (then 408)" },
    Field { name: "timeouts.worker_wait_ms", default: "10000", meaning: "a request waits this long for a ready worker (then 503)" },
    Field { name: "timeouts.stop_ms", default: "5000", meaning: "a worker has this long between SIGTERM and SIGKILL" },
    Field { name: "timeouts.ready_ms", default: "30000", meaning: "a new worker (scale, reload) has this long to become ready" },
    Field { name: "timeouts.drain_ms", default: "2000", meaning: "a worker being removed serves its sessions this long, taking no new ones, before it is stopped" },
    Field { name: "timeouts.handoff_ms", default: "5000", meaning: "a worker that has not acknowledged a connection handed to it (with websocket alone: sent its heartbeat) for this long is hung: killed and restarted, its connections served by the others" },
    Field { name: "limits.max_head_bytes", default: "16384", meaning: "largest request head (then 431); 256–1048576" },
    Field { name: "limits.max_pending_connections", default: "10000", meaning: "connections the master holds (head being read, waiting for a worker, handed off and not yet acknowledged); above it accepting pauses and the kernel's backlog holds the rest" },
    Field { name: "limits.bus_queue_bytes", default: "64 MiB", meaning: "relayed frames queued for one worker before frames to it are dropped; also the broadcasts an agent keeps until the master acknowledges them (the oldest go first past it)" },
    Field { name: "limits.memory_max", default: "none", meaning: "a worker's memory ceiling, bytes or `\"512M\"`: under systemd its unit's `MemoryMax=` (the kernel stops it, systemd restarts it); under `sio up` a worker whose resident memory is above it is replaced (a new one first, then it drains)" },
    Field { name: "limits.memory_high", default: "none", meaning: "under systemd, the worker unit's `MemoryHigh=` (reclaimed and slowed above it); not enforced by `sio up`" },
    Field { name: "limits.cpu_weight", default: "none (100)", meaning: "under systemd, the worker unit's `CPUWeight=`, 1–10000; not enforced by `sio up`" },
    Field { name: "metrics", default: "none", meaning: "an address (`\"127.0.0.1:9464\"`) where the master serves Prometheus metrics at `/metrics`; under systemd `sio@APP.socket` holds it too" },
    Field { name: "control_group", default: "none", meaning: "a group whose members may scale and reload (besides root and the master's user)" },
    Field { name: "host_tag", default: "none", meaning: "one character (`A`–`Z`, `a`–`z`, `0`–`9`, `-`, `_`) this host puts third in every session id, so that a load balancer in front of several hosts can send each session's requests to the host that owns it" },
    Field { name: "redis.url", default: "none", meaning: "a Redis server (`\"redis://10.0.0.5:6379\"`, `\"redis+unix:///run/redis.sock\"`) through which the master bridges this host's cluster adapter to the other hosts', in the format of `@socket.io/redis-streams-adapter` 0.3 (see Several hosts)" },
    Field { name: "redis.channel_prefix", default: "`\"sio:APP\"`", meaning: "the adapter's `channelPrefix`: the same on every host of the app (per app by default, so that two apps on one Redis are not one cluster; `\"socket.io\"` is what a plain Node host's adapter uses unless told otherwise)" },
    Field { name: "redis.stream_name", default: "`\"sio:APP\"`", meaning: "the adapter's `streamName`: the same on every host of the app (`\"socket.io\"` for a plain Node host's default)" },
];

/// The host bridge to Redis (`"redis"` in `APP.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Empty until the config is checked, then the app's default if unset.
    #[serde(default)]
    pub channel_prefix: String,
    #[serde(default)]
    pub stream_name: String,
}

/// The default of both Redis names: per app, so that two apps bridged to
/// one Redis do not become one cluster by accident.
fn default_redis_name(app: &str) -> String {
    format!("sio:{app}")
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
    transports: Transports,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    control_group: Option<String>,
    #[serde(default)]
    metrics: Option<SocketAddr>,
    #[serde(default, deserialize_with = "host_tag")]
    host_tag: Option<char>,
    #[serde(default)]
    redis: Option<RedisConfig>,
}

/// One character of the sid alphabet ([`crate::sid::HOST_TAG_AT`]).
fn host_tag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<char>, D::Error> {
    let bad = || serde::de::Error::custom("expected one character: A-Z, a-z, 0-9, - or _");
    let text = String::deserialize(d).map_err(|_| bad())?;
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if crate::sid::is_sid_char(c) => Ok(Some(c)),
        _ => Err(bad()),
    }
}

/// What the systemd generator reads: `listen`, `metrics` and `redis.url`
/// alone, through the same deserializers as [`RawConfig`] (same forms, same
/// errors), every other field ignored.
#[derive(Deserialize)]
pub struct GeneratorView {
    #[serde(default = "default_listen", deserialize_with = "addresses")]
    pub listen: Vec<SocketAddr>,
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    #[serde(default)]
    pub redis: Option<RedisUrl>,
}

/// `redis.url` alone.
#[derive(Deserialize)]
pub struct RedisUrl {
    pub url: String,
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
    /// What clients may use; websocket alone takes the master off the path.
    pub transports: Transports,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Members of this group may scale and reload the app (besides root
    /// and the master's own user).
    pub control_group: Option<String>,
    /// Where the master serves Prometheus metrics (`GET /metrics`), if
    /// anywhere: never the app's own port.
    pub metrics: Option<SocketAddr>,
    /// The character this host puts in its sids for a load balancer in
    /// front of several hosts to route by.
    pub host_tag: Option<char>,
    /// The Redis server the master bridges this host's adapter to.
    pub redis: Option<RedisConfig>,
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

/// The app a config file is for: its file stem, which must be a valid name.
pub fn app_name(path: &Path) -> Result<String, ConfigError> {
    let app = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if !valid_app_name(app) {
        let message = format!("app name {app:?} (the file name) must be 1-64 of A-Z a-z 0-9 _ -");
        return Err(ConfigError { path: path.to_owned(), field: None, message });
    }
    Ok(app.to_owned())
}

/// Deserializes `text` as `T`, an error naming the field at fault.
fn deserialize<'de, T: Deserialize<'de>>(path: &Path, text: &'de str) -> Result<T, ConfigError> {
    // serde also reads a struct from an array of its fields in order. Nobody
    // writes a config so, and the generator's `listen`-only view would read
    // such an array differently from the full config.
    if text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('[') {
        return Err(ConfigError { path: path.to_owned(), field: None, message: "must be a JSON object".into() });
    }
    let de = &mut serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        ConfigError { path: path.to_owned(), field: (field != ".").then_some(field), message }
    })?;
    // Text after the object is a second config pasted in, or a broken edit.
    de.end().map_err(|e| ConfigError { path: path.to_owned(), field: None, message: e.to_string() })?;
    Ok(value)
}

/// The `listen` addresses of the config `text` read from `path`, ignoring
/// every other field (even unknown ones, or a missing `command`): all the
/// systemd generator needs, so that one broken field elsewhere or a `cwd`
/// on a filesystem not mounted yet does not cost the app its socket.
pub fn listen_addresses(path: &Path, text: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    generator_view(path, text).map(|v| v.listen)
}

/// The same, with the `metrics` address (the other socket `sio@APP.socket`
/// holds for the app) and the Redis the master must be let reach: what the
/// generator's drop-ins say.
pub fn generator_view(path: &Path, text: &str) -> Result<GeneratorView, ConfigError> {
    deserialize::<GeneratorView>(path, text)
}

/// Why a folder that exists on the host may look missing here: the units'
/// `ProtectHome=` hides `/home`, `/root` and `/run/user`.
fn hidden_hint(path: &Path, app: &str) -> String {
    let hidden = ["/home", "/root", "/run/user"].iter().any(|h| path.starts_with(h));
    if hidden && std::env::var_os("INVOCATION_ID").is_some() {
        format!(
            " (as this unit sees it: its ProtectHome= hides /home, /root and /run/user; put the app under \
             /srv/{app}, or grant the folder with a drop-in: see \"Where apps live\" in the README)"
        )
    } else {
        String::new()
    }
}

impl AppConfig {
    /// The config file of `app` in `dir`.
    pub fn path_in(dir: &Path, app: &str) -> PathBuf {
        dir.join(format!("{app}.json"))
    }

    /// Loads and validates one app config; the app name is the file stem.
    /// Beyond [`AppConfig::parse`], checks what only this system can tell:
    /// `cwd` is a directory and `control_group` is a group.
    pub fn load(path: &Path) -> Result<AppConfig, ConfigError> {
        let err =
            |field: &str, message: String| ConfigError { path: path.to_owned(), field: Some(field.into()), message };
        // A bad file name is reported before the file is read, as it names no app.
        app_name(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        let cfg = AppConfig::parse(path, &text)?;
        if !cfg.cwd.is_dir() {
            return Err(err(
                "cwd",
                format!("{} is not a directory{}", cfg.cwd.display(), hidden_hint(&cfg.cwd, &cfg.app)),
            ));
        }
        if let Some(g) = &cfg.control_group {
            if nix::unistd::Group::from_name(g).ok().flatten().is_none() {
                return Err(err("control_group", format!("no group named {g:?}")));
            }
        }
        Ok(cfg)
    }

    /// Validates the config `text` read from `path` without touching the
    /// filesystem or NSS: the app name is the file stem, and a relative
    /// `cwd` is taken from the file's folder.
    pub fn parse(path: &Path, text: &str) -> Result<AppConfig, ConfigError> {
        let err = |field: String, message: &str| ConfigError {
            path: path.to_owned(),
            field: Some(field),
            message: message.into(),
        };
        let app = app_name(path)?;
        let raw: RawConfig = deserialize(path, text)?;
        if raw.command.is_empty() || raw.command[0].is_empty() {
            return Err(err("command".into(), "must name a program, e.g. [\"node\", \"worker.js\"]"));
        }
        // A NUL cannot reach execve: every spawn would fail, and the agent
        // would restart forever instead of the config being refused once.
        if let Some(i) = raw.command.iter().position(|a| a.contains('\0')) {
            return Err(err(format!("command[{i}]"), "must not contain a NUL character"));
        }
        for (key, value) in &raw.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(err(format!("env.{key}"), "is not a valid environment variable name"));
            }
            if value.contains('\0') {
                return Err(err(format!("env.{key}"), "must not contain a NUL character"));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let cwd = match raw.cwd {
            Some(c) if c.is_absolute() => c,
            Some(c) => base.join(c),
            None => base.to_owned(),
        };
        let cwd = if cwd.as_os_str().is_empty() { PathBuf::from(".") } else { cwd };
        if cwd.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(err("cwd".into(), "must not contain a NUL character"));
        }
        let l = &raw.limits;
        if l.max_head_bytes < 256 || l.max_head_bytes > 1 << 20 {
            return Err(err("limits.max_head_bytes".into(), "must be from 256 to 1048576"));
        }
        if l.max_pending_connections == 0 || l.bus_queue_bytes == 0 {
            let field = if l.max_pending_connections == 0 {
                "limits.max_pending_connections"
            } else {
                "limits.bus_queue_bytes"
            };
            return Err(err(field.into(), "must be at least 1"));
        }
        if let Some(m) = raw.metrics.filter(|m| {
            raw.listen.iter().any(|l| {
                l.port() == m.port() && (l.ip() == m.ip() || l.ip().is_unspecified() || m.ip().is_unspecified())
            })
        }) {
            return Err(err(
                "metrics".into(),
                &format!("{m} is the app's own address (`listen`): give the metrics a port of their own"),
            ));
        }
        // Node itself needs tens of MiB: a smaller ceiling is a typo.
        for (field, value) in [("limits.memory_max", l.memory_max), ("limits.memory_high", l.memory_high)] {
            if value.is_some_and(|v| v < 32 << 20) {
                return Err(err(field.into(), "must be at least 32M (Node alone needs about that)"));
            }
        }
        if let (Some(high), Some(max)) = (l.memory_high, l.memory_max) {
            if high > max {
                return Err(err("limits.memory_high".into(), "must not be above limits.memory_max"));
            }
        }
        if l.cpu_weight.is_some_and(|w| !(1..=10_000).contains(&w)) {
            return Err(err("limits.cpu_weight".into(), "must be from 1 to 10000"));
        }
        if let Some(r) = &raw.redis {
            if let Err(e) = crate::bridge::redis::check_url(&r.url) {
                return Err(err("redis.url".into(), &format!("not a Redis URL this build can use: {e}")));
            }
        }
        let mut redis = raw.redis;
        if let Some(r) = &mut redis {
            for name in [&mut r.channel_prefix, &mut r.stream_name] {
                if name.is_empty() {
                    *name = default_redis_name(&app);
                }
            }
        }
        Ok(AppConfig {
            app,
            path: path.to_owned(),
            command: raw.command,
            cwd,
            env: raw.env,
            instances: raw.instances,
            listen: raw.listen,
            transports: raw.transports,
            timeouts: raw.timeouts,
            limits: raw.limits,
            control_group: raw.control_group,
            metrics: raw.metrics,
            host_tag: raw.host_tag,
            redis,
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
    fn transports_are_a_list_of_known_names_once_each() {
        let c = parse(r#"{"command": ["node"]}"#).unwrap();
        assert!(!c.transports.workers_accept());
        assert_eq!(c.transports.engine_names(), "polling websocket");
        let c = parse(r#"{"command": ["node"], "transports": ["websocket"]}"#).unwrap();
        assert!(c.transports.workers_accept());
        assert_eq!(c.transports.engine_names(), "websocket");
        let c = parse(r#"{"command": ["node"], "transports": ["websocket", "polling"]}"#).unwrap();
        assert_eq!(c.transports, Transports::default());
        for (bad, says) in [
            (r#"[]"#, "expected a list"),
            (r#""websocket""#, "expected a list"),
            (r#"["webtransport"]"#, "\"webtransport\" is not a transport sio serves"),
            (r#"["websocket", "websocket"]"#, "listed twice"),
        ] {
            let e = parse(&format!(r#"{{"command": ["node"], "transports": {bad}}}"#)).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("transports"), "{e}");
            assert!(e.message.contains(says), "{bad}: {e}");
        }
    }

    fn parse(json: &str) -> Result<AppConfig, ConfigError> {
        AppConfig::parse(Path::new("/etc/sio/chat.json"), json)
    }

    #[test]
    fn a_nul_in_an_env_value_names_env_key() {
        let e = parse(r#"{"command": ["node"], "env": {"OK": "1", "KEY": "a\u0000b"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("env.KEY"), "{e}");
        assert!(e.to_string().contains("NUL"), "{e}");
    }

    #[test]
    fn sizes_are_bytes_or_binary_suffixes_as_systemd_and_pm2_write_them() {
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("150mb"), Some(150 << 20));
        assert_eq!(parse_bytes(" 64 K "), Some(64 << 10));
        assert_eq!(parse_bytes("1000"), Some(1000));
        for bad in ["", "M", "12Q", "-1M", "1e400", "NaNM", "99999999T"] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
        let c = parse(
            r#"{"command": ["node"], "limits": {"memory_max": "1G", "memory_high": 805306368, "cpu_weight": 200}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.limits.memory_max, c.limits.memory_high, c.limits.cpu_weight),
            (Some(1 << 30), Some(768 << 20), Some(200))
        );
    }

    #[test]
    fn a_host_tag_is_one_sid_character() {
        assert_eq!(parse(r#"{"command": ["node"], "host_tag": "b"}"#).unwrap().host_tag, Some('b'));
        assert_eq!(parse(r#"{"command": ["node"]}"#).unwrap().host_tag, None);
        for bad in [r#""""#, r#""ab""#, r#""+""#, r#""é""#, "7"] {
            let e = parse(&format!(r#"{{"command": ["node"], "host_tag": {bad}}}"#)).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("host_tag"), "{bad}: {e}");
        }
    }

    #[test]
    fn metrics_get_a_port_of_their_own() {
        for (listen, metrics) in
            [("127.0.0.1:3000", "127.0.0.1:3000"), ("0.0.0.0:3000", "127.0.0.1:3000"), ("[::1]:3000", "[::]:3000")]
        {
            let e = parse(&format!(r#"{{"command": ["node"], "listen": "{listen}", "metrics": "{metrics}"}}"#))
                .unwrap_err();
            assert_eq!(e.field.as_deref(), Some("metrics"), "{e}");
        }
        let c = parse(r#"{"command": ["node"], "listen": "127.0.0.1:3000", "metrics": "127.0.0.1:9464"}"#).unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(parse(r#"{"command": ["node"], "metrics": "localhost:9464"}"#).is_err());
    }

    #[test]
    fn a_bad_limit_names_its_field() {
        for (limits, field, says) in [
            (r#"{"memory_max": "lots"}"#, "limits.memory_max", "512M"),
            (r#"{"memory_max": "16M"}"#, "limits.memory_max", "at least 32M"),
            (r#"{"memory_max": "100M", "memory_high": "200M"}"#, "limits.memory_high", "not be above"),
            (r#"{"cpu_weight": 0}"#, "limits.cpu_weight", "1 to 10000"),
        ] {
            let e = parse(&format!(r#"{{"command": ["node"], "limits": {limits}}}"#)).unwrap_err();
            assert!(e.to_string().contains(field) && e.to_string().contains(says), "{limits}: {e}");
        }
    }

    #[test]
    fn a_nul_in_a_command_argument_or_cwd_names_it() {
        let e = parse(r#"{"command": ["node", "worker.js", "--x=\u0000"]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("command[2]"), "{e}");
        let e = parse(r#"{"command": ["no\u0000de"]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("command[0]"), "{e}");
        let e = parse(r#"{"command": ["node"], "cwd": "/srv/\u0000"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cwd"), "{e}");
    }

    #[test]
    fn parsing_touches_neither_the_filesystem_nor_nss() {
        let json = r#"{"command": ["node"], "cwd": "app", "control_group": "sio-test-no-such-group"}"#;
        let c = parse(json).unwrap();
        assert_eq!(c.cwd, Path::new("/etc/sio/app"));
        assert_eq!(c.control_group.as_deref(), Some("sio-test-no-such-group"));
        assert_eq!(parse(r#"{"command": ["node"]}"#).unwrap().cwd, Path::new("/etc/sio"));
        // Loading checks both.
        let e = load(r#"{"command": ["node"], "control_group": "sio-test-no-such-group"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("control_group"), "{e}");
    }

    #[test]
    fn a_config_is_an_object_not_an_array_of_its_fields() {
        let e = parse(r#" [["node"]]"#).unwrap_err();
        assert!(e.to_string().contains("must be a JSON object"), "{e}");
    }

    #[test]
    fn text_after_the_object_is_an_error() {
        let e = parse(r#"{"command": ["node"]} {"command": ["evil"]}"#).unwrap_err();
        assert!(e.to_string().contains("trailing characters"), "{e}");
        let e = listen_addresses(Path::new("/etc/sio/chat.json"), r#"{} x"#).unwrap_err();
        assert!(e.to_string().contains("trailing characters"), "{e}");
        assert!(parse("{\"command\": [\"node\"]}\n\n").is_ok());
    }

    #[test]
    fn the_app_name_comes_from_the_file_name() {
        let e = AppConfig::parse(Path::new("/etc/sio/bad name.json"), r#"{"command": ["node"]}"#).unwrap_err();
        assert_eq!(e.field, None);
        assert!(e.to_string().contains("app name"), "{e}");
        assert_eq!(app_name(Path::new("/etc/sio/chat-2.json")).unwrap(), "chat-2");
    }

    #[test]
    fn listen_addresses_ignore_every_other_field() {
        let path = Path::new("/etc/sio/chat.json");
        let listen = listen_addresses(path, r#"{"listen": "[::1]:4000", "future_field": {}, "instances": -3}"#);
        assert_eq!(listen.unwrap(), vec!["[::1]:4000".parse().unwrap()]);
        assert_eq!(listen_addresses(path, "{}").unwrap(), default_listen());
        assert_eq!(listen_addresses(path, r#"{"cwd": "/nonexistent"}"#).unwrap(), default_listen());
    }

    #[test]
    fn listen_errors_are_the_full_configs() {
        let path = Path::new("/etc/sio/chat.json");
        for listen in [r#""localhost""#, "[]", "3000", r#"["127.0.0.1:1", "x"]"#] {
            let full = parse(&format!(r#"{{"command": ["node"], "listen": {listen}}}"#)).unwrap_err();
            let only = listen_addresses(path, &format!(r#"{{"command": ["node"], "listen": {listen}}}"#)).unwrap_err();
            assert_eq!(only.field.as_deref(), Some("listen"), "{only}");
            assert_eq!(only.to_string(), full.to_string());
        }
        assert!(listen_addresses(path, r#"["127.0.0.1:1"]"#).is_err());
        assert!(listen_addresses(path, r#"{"listen": "127.0.0.1:1""#).is_err());
    }

    #[test]
    fn instances_and_listen_forms() {
        let c = load(r#"{"command": ["n"], "instances": 3, "listen": ["127.0.0.1:1", "[::1]:2"]}"#).unwrap();
        assert_eq!(c.instances, Instances::Count(3));
        assert_eq!(c.listen.len(), 2);
        assert!(Instances::Max.resolve() >= 1);
    }

    #[test]
    fn the_redis_names_default_to_the_apps_own_and_rediss_is_refused_by_name() {
        let path = std::path::Path::new("/etc/sio/chat.json");
        let c = AppConfig::parse(path, r#"{"command": ["n"], "redis": {"url": "redis://127.0.0.1"}}"#).unwrap();
        let r = c.redis.unwrap();
        assert_eq!((r.channel_prefix.as_str(), r.stream_name.as_str()), ("sio:chat", "sio:chat"));
        let text = r#"{"command": ["n"], "redis": {"url": "redis://h", "channel_prefix": "socket.io"}}"#;
        assert_eq!(AppConfig::parse(path, text).unwrap().redis.unwrap().channel_prefix, "socket.io");
        let tls = AppConfig::parse(path, r#"{"command": ["n"], "redis": {"url": "rediss://h:6380"}}"#);
        assert!(tls.unwrap_err().to_string().contains("TLS (rediss://) is not built in"));
    }

    #[test]
    fn the_field_reference_is_the_readmes_table_and_the_parsers_fields() {
        let readme = include_str!("../README.md");
        let table = &readme[readme.find("| field | default | meaning |").expect("the README has the table")..];
        let rows: Vec<String> = table.lines().skip(2).take_while(|l| l.starts_with('|')).map(str::to_owned).collect();
        let ours: Vec<String> =
            FIELDS.iter().map(|f| format!("| `{}` | {} | {} |", f.name, f.default, f.meaning)).collect();
        assert_eq!(rows, ours, "README.md's config table and config::FIELDS differ");
        for f in FIELDS {
            let top = f.name.split('.').next().unwrap();
            let text = format!(r#"{{"command": ["node"], "{top}": null}}"#);
            let err = AppConfig::parse(std::path::Path::new("/x/app.json"), &text).err().map(|e| e.to_string());
            assert!(!err.unwrap_or_default().contains("unknown field"), "{} is not a field", f.name);
        }
    }
}
