//! `sioctl import`: the `APP.json` equivalent of each app of a PM2
//! ecosystem file, and what PM2 options do not carry over, with why.
//! The file is evaluated by Node, as PM2 does (see `sioctl`); the mapping
//! of its JSON here is pure.

use serde_json::{json, Map, Value};

/// One app of an ecosystem file, as an sio config.
#[derive(Debug)]
pub struct Imported {
    pub name: String,
    pub config: Value,
    /// Options not carried over (or changed), each with the reason.
    pub notes: Vec<String>,
}

/// PM2 options sio has no use for, with the reason (the rest of the
/// options this import does not know are listed as unknown).
const NOT_CARRIED: &[(&str, &str)] = &[
    ("watch", "restart on file changes: a development feature; `sioctl reload APP` after a deploy"),
    ("ignore_watch", "see watch"),
    ("watch_options", "see watch"),
    ("autorestart", "sio always restarts a worker that dies (systemd: Restart=always)"),
    ("max_restarts", "systemd's StartLimitBurst= on sio-worker-APP@.service"),
    ("min_uptime", "systemd's StartLimitIntervalSec= on sio-worker-APP@.service"),
    ("restart_delay", "systemd's RestartSec= on sio-worker-APP@.service"),
    ("exp_backoff_restart_delay", "systemd's RestartSec= and RestartSteps= on sio-worker-APP@.service"),
    ("cron_restart", "a systemd timer running `sioctl reload APP`"),
    ("out_file", "logs go to the journal: `sioctl logs APP`"),
    ("error_file", "logs go to the journal: `sioctl logs APP`"),
    ("log_file", "logs go to the journal: `sioctl logs APP`"),
    ("merge_logs", "logs go to the journal: `sioctl logs APP`"),
    ("combine_logs", "logs go to the journal: `sioctl logs APP`"),
    ("log_date_format", "journalctl -o short-iso-precise"),
    ("log_type", "journalctl -o json"),
    ("pid_file", "systemd tracks the pids: `sioctl status APP`"),
    ("instance_var", "sio sets NODE_APP_INSTANCE (slot - 1) as PM2 does by default"),
    ("wait_ready", "sio waits for each worker's readiness already"),
    ("listen_timeout", "carried as timeouts.ready_ms"),
    ("shutdown_with_message", "sio stops workers with SIGTERM, then SIGKILL after timeouts.stop_ms"),
    ("treekill", "systemd stops the worker's whole cgroup"),
    ("source_map_support", "add --enable-source-maps to node_args"),
    ("vizion", "no version-control metadata in sio"),
    ("post_update", "no deploy hooks in sio"),
    ("force", "sio runs one master per app name"),
    ("namespace", "one app per APP.json; group with systemd targets"),
    ("increment_var", "not supported"),
    ("appendEnvToName", "not supported"),
];

/// Fields of an ecosystem app this import maps.
const MAPPED: &[&str] = &[
    "name",
    "script",
    "args",
    "interpreter",
    "exec_interpreter",
    "node_args",
    "interpreter_args",
    "instances",
    "exec_mode",
    "cwd",
    "env",
    "max_memory_restart",
    "kill_timeout",
    "listen_timeout",
];

/// Arguments given as a string (split on whitespace, as PM2 does) or a list.
fn arguments(value: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| format!("{field}: expected strings")))
            .collect(),
        Some(_) => Err(format!("{field}: expected a string or a list of strings")),
    }
}

/// A PM2 size (`"150M"`, `"1G"`, bytes): the same forms sio takes.
fn size(value: &Value) -> Option<Value> {
    match value {
        Value::Number(n) => n.as_u64().map(Value::from),
        Value::String(s) => crate::config::parse_bytes(s).map(|_| Value::from(s.clone())),
        _ => None,
    }
}

/// `app`, one element of the ecosystem file's `apps`; `env_name` selects
/// `env_NAME` (PM2's `--env NAME`), merged over `env`. `base`: the
/// ecosystem file's folder, against which PM2 takes a relative `cwd` (and
/// which is the `cwd` when there is none).
pub fn from_pm2(app: &Value, env_name: Option<&str>, base: &std::path::Path) -> Result<Imported, String> {
    let fields = app.as_object().ok_or("an app must be an object")?;
    let script = fields.get("script").and_then(Value::as_str).ok_or("an app needs a `script`")?;
    let name = match fields.get("name").and_then(Value::as_str) {
        Some(n) => n.to_owned(),
        // PM2 names an app after its script.
        None => std::path::Path::new(script).file_stem().and_then(|s| s.to_str()).unwrap_or("app").to_owned(),
    };
    if !crate::config::valid_app_name(&name) {
        return Err(format!("{name:?} cannot be an app name (1-64 of A-Z a-z 0-9 _ -): rename it in the file"));
    }
    let mut notes = Vec::new();
    let mut config = Map::new();

    let interpreter = fields.get("interpreter").or(fields.get("exec_interpreter")).and_then(Value::as_str);
    let mut command = match interpreter {
        Some("none") => Vec::new(),
        Some(i) => vec![i.to_owned()],
        None => vec!["node".to_owned()],
    };
    command.extend(arguments(fields.get("node_args").or(fields.get("interpreter_args")), "node_args")?);
    command.push(script.to_owned());
    command.extend(arguments(fields.get("args"), "args")?);
    config.insert("command".into(), json!(command));

    let cwd = base.join(fields.get("cwd").and_then(Value::as_str).unwrap_or(""));
    config.insert("cwd".into(), json!(cwd.to_string_lossy().trim_end_matches('/')));
    match fields.get("instances") {
        None => {}
        Some(Value::String(s)) if s == "max" => {
            config.insert("instances".into(), json!("max"));
        }
        Some(Value::Number(n)) if n.as_i64() == Some(0) => {
            config.insert("instances".into(), json!("max"));
        }
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=4095).contains(&n)) => {
            config.insert("instances".into(), json!(n));
        }
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n < 0) => {
            notes.push(format!(
                "instances {n} (all CPUs but {}): sio takes a count or \"max\"; set to \"max\"",
                -n.as_i64().unwrap()
            ));
            config.insert("instances".into(), json!("max"));
        }
        Some(other) => return Err(format!("instances: {other} is not a count or \"max\"")),
    }
    if fields.get("exec_mode").and_then(Value::as_str).is_some_and(|m| m.starts_with("fork")) {
        notes.push(
            "exec_mode fork: sio runs every app in cluster mode; the worker must use @socket.io/sticky's setupWorker"
                .into(),
        );
    }

    let mut env: Map<String, Value> = fields.get("env").and_then(Value::as_object).cloned().unwrap_or_default();
    if let Some(name) = env_name {
        match fields.get(&format!("env_{name}")).and_then(Value::as_object) {
            Some(extra) => env.extend(extra.clone()),
            None => notes.push(format!("no env_{name} in this app: only `env` was used")),
        }
    }
    // PM2 passes values as strings to the process environment.
    let env: Map<String, Value> = env
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, Value::String(text))
        })
        .collect();
    if let Some(port) = env.get("PORT").and_then(Value::as_str) {
        match port.parse::<u16>() {
            Ok(p) => {
                config.insert("listen".into(), json!(format!("0.0.0.0:{p}")));
                notes.push(format!("PORT {p}: the master listens on 0.0.0.0:{p} (all interfaces, as Node's listen({p}) does); narrow `listen` if a proxy is in front"));
            }
            Err(_) => notes.push(format!("PORT {port:?} is not a port number: `listen` left at its default")),
        }
    }
    if !env.is_empty() {
        config.insert("env".into(), Value::Object(env));
    }

    let mut timeouts = Map::new();
    let mut millis = |pm2: &str, ours: &str| match fields.get(pm2) {
        Some(v) if v.as_u64().is_some_and(|ms| ms > 0) => {
            timeouts.insert(ours.into(), v.clone());
            Ok(())
        }
        Some(v) => Err(format!("{pm2}: {v} is not a number of milliseconds")),
        None => Ok(()),
    };
    millis("kill_timeout", "stop_ms")?;
    millis("listen_timeout", "ready_ms")?;
    if !timeouts.is_empty() {
        config.insert("timeouts".into(), Value::Object(timeouts));
    }
    if let Some(v) = fields.get("max_memory_restart") {
        let bytes = size(v).ok_or_else(|| format!("max_memory_restart: {v} is not a size like \"150M\""))?;
        config.insert("limits".into(), json!({ "memory_max": bytes }));
    }

    for key in fields.keys() {
        if MAPPED.contains(&key.as_str()) || key.starts_with("env_") {
            continue;
        }
        match NOT_CARRIED.iter().find(|(k, _)| k == key) {
            Some((_, why)) => notes.push(format!("{key}: not carried over ({why})")),
            None => notes.push(format!("{key}: not carried over (unknown to sioctl import)")),
        }
    }
    Ok(Imported { name, config: Value::Object(config), notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the ecosystem file is.
    fn base() -> &'static std::path::Path {
        std::path::Path::new("/srv/chat")
    }

    #[test]
    fn the_socket_io_pm2_seed_is_a_max_instances_app_named_after_its_script() {
        let i = from_pm2(&json!({"script": "worker.js", "instances": "max", "exec_mode": "cluster"}), None, base())
            .unwrap();
        assert_eq!(i.name, "worker");
        assert_eq!(i.config, json!({"command": ["node", "worker.js"], "cwd": "/srv/chat", "instances": "max"}));
        assert!(i.notes.is_empty(), "{:?}", i.notes);
    }

    #[test]
    fn a_rich_app_maps_field_by_field_and_says_what_it_drops() {
        let app = json!({
            "name": "chat", "script": "server.js", "args": "--color --x=1", "node_args": ["--max-old-space-size=512"],
            "instances": 4, "exec_mode": "cluster", "cwd": "app",
            "env": {"NODE_ENV": "development", "PORT": 3000, "DEBUG": false},
            "env_production": {"NODE_ENV": "production"},
            "max_memory_restart": "300M", "kill_timeout": 8000, "listen_timeout": 20000,
            "watch": true, "out_file": "/var/log/chat.log", "frobnicate": 1,
        });
        let i = from_pm2(&app, Some("production"), base()).unwrap();
        assert_eq!(
            i.config,
            json!({
                "command": ["node", "--max-old-space-size=512", "server.js", "--color", "--x=1"],
                "cwd": "/srv/chat/app", "instances": 4, "listen": "0.0.0.0:3000",
                "env": {"NODE_ENV": "production", "PORT": "3000", "DEBUG": "false"},
                "timeouts": {"stop_ms": 8000, "ready_ms": 20000},
                "limits": {"memory_max": "300M"},
            })
        );
        let notes = i.notes.join("\n");
        for said in [
            "watch: not carried over",
            "out_file: not carried over (logs go to the journal",
            "frobnicate: not carried over (unknown",
            "PORT 3000",
        ] {
            assert!(notes.contains(said), "{said}: {notes}");
        }
    }

    #[test]
    fn what_cannot_be_an_app_is_an_error_naming_it() {
        assert!(from_pm2(&json!({"name": "my app", "script": "a.js"}), None, base())
            .unwrap_err()
            .contains("\"my app\""));
        assert!(from_pm2(&json!({"name": "a"}), None, base()).unwrap_err().contains("script"));
        assert!(from_pm2(&json!({"script": "a.js", "instances": "lots"}), None, base())
            .unwrap_err()
            .contains("instances"));
        assert!(from_pm2(&json!({"script": "a.js", "max_memory_restart": "big"}), None, base())
            .unwrap_err()
            .contains("150M"));
        let none = from_pm2(
            &json!({"script": "run.sh", "interpreter": "none", "instances": -1, "cwd": "/opt/x"}),
            None,
            base(),
        )
        .unwrap();
        assert_eq!(none.config, json!({"command": ["run.sh"], "cwd": "/opt/x", "instances": "max"}));
        assert!(none.notes[0].contains("all CPUs but 1"), "{:?}", none.notes);
    }
}
