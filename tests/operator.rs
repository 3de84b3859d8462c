//! What an operator sees of a running app: Prometheus metrics, checked by
//! promtool and scraped by a real Prometheus server (Debian's
//! `prometheus` package; `.ci/run` installs it).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `curl URL`: the status code and the body.
fn curl(url: &str, query: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"]);
    if let Some(q) = query {
        cmd.args(["-G", "--data-urlencode", &format!("query={q}")]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), body.to_owned())
}

/// The value of the sample `name{app="APP"...}` on a metrics page.
fn sample(page: &str, prefix: &str) -> f64 {
    let line = page.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{page}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A Prometheus server scraping `target` every second, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &std::path::Path, target: &str) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sio\n    static_configs:\n      - targets: ['{target}']\n"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Prometheus { child, port }
    }

    /// The result vector of an instant query, once Prometheus answers.
    fn query(&self, q: &str) -> Vec<Value> {
        let (code, body) = curl(&format!("http://127.0.0.1:{}/api/v1/query", self.port), Some(q));
        if code != 200 {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_pass_promtool_count_traffic_and_are_scraped_by_prometheus() {
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let app = App::start_with(2, json!({ "metrics": metrics }));
    assert_eq!(app.status()["metrics"], json!(metrics), "sioctl status says where");
    let url = format!("http://{metrics}/metrics");
    let (code, before) = curl(&url, None);
    assert_eq!(code, 200, "{before}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(before.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}\n{before}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let app_label = format!("{{app=\"{}\"", app.name);
    assert_eq!(sample(&before, &format!("sio_workers{app_label},state=\"ready\"}}")), 2.0);
    assert!(sample(&before, &format!("sio_worker_memory_bytes{app_label},worker=\"1\"}}")) > 1e6);
    assert!(sample(&before, &format!("process_resident_memory_bytes{app_label}}}")) > 1e6);

    let r = node("race.js", &[&app.port.to_string(), "20"]);
    assert_eq!(r["counts"], json!({"ok": 20}), "{r}");
    let (_, after) = curl(&url, None);
    let handoffs = |page: &str| sample(page, &format!("sio_handoffs_total{app_label}}}"));
    assert!(handoffs(&after) >= handoffs(&before) + 20.0, "before:\n{before}\nafter:\n{after}");
    let accepted = |page: &str| sample(page, &format!("sio_accepted_connections_total{app_label}}}"));
    assert!(accepted(&after) > accepted(&before));

    // Anything else is answered, and bounded.
    assert_eq!(curl(&format!("http://{metrics}/"), None).0, 404);
    let mut garbage = std::net::TcpStream::connect(&metrics).unwrap();
    garbage.write_all(b"\x16\x03\x01 not http\r\n\r\n").unwrap();
    let mut answer = String::new();
    garbage.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // A real Prometheus scrapes it.
    let prometheus = Prometheus::start(&app.dir, &metrics);
    let t0 = Instant::now();
    let result = loop {
        let result = prometheus.query(&format!("sio_handoffs_total{{app=\"{}\"}}", app.name));
        if !result.is_empty() {
            break result;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{}",
            std::fs::read_to_string(app.dir.join("prometheus.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let scraped: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(scraped >= handoffs(&after), "{result:?}");
    let up = prometheus.query("up{job=\"sio\"}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
}

fn sioctl_import(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sioctl")).arg("import").args(args).output().unwrap()
}

#[test]
fn sioctl_import_turns_the_socket_io_pm2_seed_into_a_config_sio_up_starts() {
    let out = sioctl_import(&[node_dir().join("ecosystem.config.js").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut cfg: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cfg, json!({"command": ["node", "worker.js"], "cwd": node_dir(), "instances": "max"}));
    assert!(out.stderr.is_empty(), "nothing dropped: {}", String::from_utf8_lossy(&out.stderr));
    // Port 0 rather than the default 3000, which the demo may hold.
    cfg["listen"] = json!("127.0.0.1:0");
    let dir = scratch_dir(&format!("{}-seed", app_name()));
    std::fs::write(dir.join("worker.json"), cfg.to_string()).unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get() as u16;
    let app = App::start_file(&dir.join("worker.json"), cpus);
    let r = node("race.js", &[&app.port.to_string(), "10"]);
    assert_eq!(r["counts"], json!({"ok": 10}), "{r}");
}

#[test]
fn sioctl_import_of_a_rich_file_writes_every_app_and_says_what_it_drops() {
    let dir = scratch_dir(&format!("{}-rich", app_name()));
    let port = free_port();
    let file = node_dir().join("ecosystem.rich.config.js");
    let out = Command::new(env!("CARGO_BIN_EXE_sioctl"))
        .args(["import", "--env", "production", "--write"])
        .arg(&dir)
        .arg(&file)
        .env("TEST_PORT", port.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for said in ["rich-chat: watch: not carried over", "rich-chat: out_file: not carried over (logs go to the journal"]
    {
        assert!(stderr.contains(said), "{said}: {stderr}");
    }
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("rich-chat.json")).unwrap()).unwrap();
    assert_eq!(cfg["command"], json!(["node", "--max-old-space-size=256", "worker.js", "--title", "rich chat"]));
    assert_eq!(cfg["env"], json!({"NODE_ENV": "production", "PORT": port.to_string(), "GREETING": "hello"}));
    assert_eq!(cfg["listen"], json!(format!("0.0.0.0:{port}")));
    assert_eq!((&cfg["limits"]["memory_max"], &cfg["timeouts"]["stop_ms"]), (&json!("200M"), &json!(3000)));
    assert!(dir.join("second.json").exists());
    // Written files are never overwritten.
    let again = Command::new(env!("CARGO_BIN_EXE_sioctl")).args(["import", "--write"]).arg(&dir).arg(&file).output();
    assert!(!again.unwrap().status.success());
    // More than one app needs --write.
    let printed = sioctl_import(&[file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&printed.stderr).contains("2 apps"), "{printed:?}");

    let app = App::start_file(&dir.join("rich-chat.json"), 2);
    assert_eq!(app.port, port);
    let r = node("race.js", &[&port.to_string(), "10"]);
    assert_eq!(r["counts"], json!({"ok": 10}), "{r}");
}

/// A tmux server of this test's own (`-L`), killed on drop.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").args(["-L", &self.0]).args(args).output().unwrap()
    }

    fn pane(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Waits until the pane shows what `ok` wants; returns it.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let pane = self.pane();
            if ok(&pane) {
                return pane;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{what}; the pane shows:\n{pane}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn sioctl_top_in_a_real_terminal_shows_the_workers_updates_and_quits_on_q() {
    let app = App::start(2);
    let tmux = Tmux(format!("sio-{}", app.name));
    let sioctl = format!(
        "SIO_RUNTIME_DIR={} {} top {} --interval-ms 300",
        app.runtime_dir().display(),
        env!("CARGO_BIN_EXE_sioctl"),
        app.name
    );
    let started = tmux.cmd(&["new-session", "-d", "-s", "top", "-x", "120", "-y", "40", &sioctl]);
    assert!(started.status.success(), "{started:?}");
    tmux.wait("two workers ready, no sessions", |p| p.contains("2 workers ready, 0 sessions") && p.contains("WORKER"));
    let holder = Holder::start(app.port, 10, "websocket");
    let pane = tmux.wait("the ten sessions", |p| p.contains("2 workers ready, 10 sessions"));
    let rows: Vec<&str> = pane.lines().filter(|l| l.contains("ready") && !l.contains("workers ready")).collect();
    assert_eq!(rows.len(), 2, "a line per worker:\n{pane}");
    // WORKER STATE PID SESSIONS …, inside the table's borders.
    let sessions: u64 =
        rows.iter().map(|l| l.replace('│', " ").split_whitespace().nth(3).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(sessions, 10, "the workers' sessions add up:\n{pane}");
    tmux.cmd(&["send-keys", "-t", "top", "Down"]);
    tmux.wait("worker 2 selected", |p| p.contains("worker 2 selected"));
    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    let t0 = Instant::now();
    while tmux.cmd(&["has-session", "-t", "top"]).status.success() {
        assert!(t0.elapsed() < Duration::from_secs(10), "still running after q:\n{}", tmux.pane());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(holder);

    // Not a terminal: plain text, refreshed, stopping when asked.
    let out = app.sioctl().args(["top", &app.name, "--interval-ms", "100", "-n", "2"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text.matches("WORKER").count(), 2, "{text}");
}

#[test]
fn idle_and_trickling_connections_cannot_keep_a_scrape_out() {
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let app = App::start_with(1, json!({ "metrics": metrics }));
    // A hundred connections that say nothing, and ten that trickle a
    // request a byte at a time, held while Prometheus scrapes.
    let idle: Vec<std::net::TcpStream> = (0..100).map(|_| std::net::TcpStream::connect(&metrics).unwrap()).collect();
    let mut trickling: Vec<std::net::TcpStream> =
        (0..10).map(|_| std::net::TcpStream::connect(&metrics).unwrap()).collect();
    for s in &mut trickling {
        s.write_all(b"GE").unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let (code, page) = curl(&format!("http://{metrics}/metrics"), None);
    let took = t0.elapsed();
    println!("a scrape past 110 idle connections took {took:?}");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("sio_sessions"), "{page}");
    drop((idle, trickling));
    assert!(alive(app.pid()));
}

#[test]
fn sioctl_import_as_root_runs_the_ecosystem_file_as_its_owner_and_writes_the_config_for_owner_and_group_alone() {
    let dir = scratch_dir(&format!("{}-import-root", app_name()));
    // Root's own file: run as nobody. It says who ran it, and what the
    // caller's NODE_OPTIONS would have slipped in.
    let file = dir.join("ecosystem.config.js");
    std::fs::write(
        &file,
        "module.exports = { apps: [{ name: 'by' + process.getuid() + (process.env.NODE_OPTIONS ? 'opts' : ''), script: 'w.js', env: { SECRET: 's' } }] };\n",
    )
    .unwrap();
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sioctl"))
        .args(["import", "--write"])
        .arg(&out_dir)
        .arg(&file)
        .env("NODE_OPTIONS", "--max-old-space-size=100")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = if nix::unistd::geteuid().is_root() { "by65534.json" } else { "" };
    let written: Vec<String> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    if !expected.is_empty() {
        assert_eq!(written, [expected], "root's ecosystem file ran as nobody, without NODE_OPTIONS");
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(out_dir.join(&written[0])).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o640, "the config holds secrets");
}
