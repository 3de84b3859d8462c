//! `sioctl`: the operator's tool, PM2's verbs on top of systemd.
//!
//! Read commands (`ls`, `status`) take `--json`. `scale` and `reload` are
//! checked by the master itself: only root, the master's user or the app's
//! `control_group` may run them.

use clap::Parser;
use sio::cli::{CtlCli as Cli, CtlCommand as Command};
use sio::control::{thousands, Request, Response, Status};
use sio::endpoints::Endpoints;
use sio::top::mib;
use sio::wire::{self, Role, ToAgent, ToMaster, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

/// One request to an app's master over its bus; progress lines are printed
/// as they come.
fn ask(app: &str, request: &Request) -> Result<Response, String> {
    let path = Endpoints::find(app).control;
    if let Some(state) = stopped_under_systemd(app, &path) {
        return Err(format!(
            "the master of {app:?} is not running (sio@{app}.service is {state}; `systemctl start sio@{app}.socket` starts it)"
        ));
    }
    let mut s = UnixStream::connect(&path)
        .map_err(|e| format!("the master of {app:?} is not running ({}: {e})", path.display()))?;
    sio::endpoints::check_server(&s, &path)?;
    let timeout = if matches!(request, Request::Status) { 10 } else { 3600 };
    s.set_read_timeout(Some(Duration::from_secs(timeout))).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    ToMaster::Hello { version: PROTOCOL_VERSION, role: Role::Control }.encode(&mut out);
    ToMaster::Control(serde_json::to_vec(request).expect("requests serialize")).encode(&mut out);
    s.write_all(&out).map_err(|e| format!("bus: {e}"))?;
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).map_err(|e| format!("the master hung up: {e}"))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > wire::MAX_FRAME {
            return Err("oversized answer".into());
        }
        let mut body = vec![0; len];
        s.read_exact(&mut body).map_err(|e| format!("bus: {e}"))?;
        match ToAgent::decode(&body).map_err(|e| e.to_string())? {
            ToAgent::Welcome { .. } => continue,
            ToAgent::Refused(why) => return Err(format!("the master refused: {why}")),
            ToAgent::ControlReply(json) => {
                match serde_json::from_slice(&json).map_err(|e| format!("bad answer: {e}"))? {
                    Response::Progress(line) => println!("{app}: {line}"),
                    other => return Ok(other),
                }
            }
            _ => return Err("unexpected answer".into()),
        }
    }
}

/// Under systemd, the state of an app's master if it is stopped: then its
/// control socket would start it (socket activation), and asking for a
/// status must change nothing.
fn stopped_under_systemd(app: &str, control: &std::path::Path) -> Option<String> {
    if !control.starts_with(sio::endpoints::SYSTEM_DIR) || !std::path::Path::new("/run/systemd/system").exists() {
        return None;
    }
    let out = std::process::Command::new("systemctl")
        .args(["show", "--property=ActiveState", "--value", &format!("sio@{app}.service")])
        .output()
        .ok()?;
    let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && (state == "inactive" || state == "failed")).then_some(state)
}

fn seconds(ns: Option<u64>) -> String {
    ns.map_or("-".into(), |ns| format!("{:.1}s", ns as f64 / 1e9))
}

fn print_status(s: &Status) {
    println!("{}: {}", s.app, s.summary());
    let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
    let m = s.master.clone().unwrap_or_default();
    println!(
        "master pid {}, {} memory, {} CPU, listening on {}{}{}",
        s.pid,
        mib(m.memory_bytes),
        seconds(m.cpu_ns),
        listen.join(", "),
        if s.activated { " (socket-activated)" } else { "" },
        if s.workers_accept { "; the workers accept (websocket alone)" } else { "" }
    );
    if let Some(m) = s.metrics {
        println!("metrics at http://{m}/metrics");
    }
    println!(
        "{:<6} {:<10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "WORKER", "STATE", "PID", "SESSIONS", "MEMORY", "CPU", "RESTARTS", "AGENT"
    );
    for w in &s.workers {
        let pid = w.pid.map_or("-".to_owned(), |p| p.to_string());
        let u = w.usage.clone().unwrap_or_default();
        let restarts = u.restarts.map_or("-".into(), |r| r.to_string());
        println!(
            "{:<6} {:<10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            w.slot,
            w.state,
            pid,
            thousands(u64::from(w.sessions)),
            mib(u.memory_bytes),
            seconds(u.cpu_ns),
            restarts,
            mib(w.agent.as_ref().and_then(|a| a.memory_bytes)),
        );
    }
}

/// The apps configured in the config folder (the names of its `APP.json`
/// files: their content is the master's business, not listing's), and
/// those whose masters run from anywhere else (`sio up` of any folder).
/// A config folder that does not exist holds no apps.
fn apps(cli: &Cli) -> Result<Vec<String>, String> {
    let mut apps: Vec<String> = match std::fs::read_dir(&cli.config_dir) {
        Ok(entries) => entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                (path.extension()? == "json").then_some(())?;
                Some(path.file_stem()?.to_str()?.to_owned())
            })
            .filter(|name| sio::config::valid_app_name(name))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", cli.config_dir.display())),
    };
    apps.extend(sio::endpoints::running_apps().into_iter().map(|(name, _)| name));
    apps.sort();
    apps.dedup();
    Ok(apps)
}

/// Who runs an app's master: systemd (its sockets are in /run/sio) or `sio up`.
fn supervisor(app: &str) -> &'static str {
    if Endpoints::find(app).control.starts_with(sio::endpoints::SYSTEM_DIR) {
        "systemd"
    } else {
        "sio up"
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("sioctl: {e}");
    ExitCode::FAILURE
}

/// Node evaluates the ecosystem file as PM2 does (`require`), and prints
/// its apps as JSON (functions and other non-JSON values drop out).
const READ_ECOSYSTEM: &str = "const f = require(require('path').resolve(process.argv[1])); \
    const apps = Array.isArray(f) ? f : f.apps ? [].concat(f.apps) : [f]; \
    process.stdout.write(JSON.stringify(apps));";

fn import(file: &std::path::Path, env: Option<&str>, write: Option<&std::path::Path>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let mut node = std::process::Command::new("node");
    // The ecosystem file is code, and what it `require`s too: run as root,
    // it runs as its file's owner (root's own file as nobody), without
    // native addons and without the caller's NODE_OPTIONS.
    node.args(["--no-addons", "-e", READ_ECOSYSTEM]).arg(file).env_remove("NODE_OPTIONS");
    if nix::unistd::geteuid().is_root() {
        let owner = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let (uid, gid) = match (owner.uid(), owner.gid()) {
            (0, _) => (65534, 65534),
            ids => ids,
        };
        // std drops root's supplementary groups with the uid.
        node.uid(uid).gid(gid);
    }
    let out = node.output().map_err(|e| format!("cannot run node to read {}: {e}", file.display()))?;
    if !out.status.success() {
        return Err(format!("node could not read {}: {}", file.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let apps: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{}: no apps in it ({e})", file.display()))?;
    let base = std::fs::canonicalize(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let base = base.parent().unwrap_or(std::path::Path::new("/"));
    let imported = apps
        .iter()
        .map(|app| sio::import::from_pm2(app, env, base))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let json = |i: &sio::import::Imported| serde_json::to_string_pretty(&i.config).expect("json") + "\n";
    match (write, imported.as_slice()) {
        (None, [one]) => print!("{}", json(one)),
        (None, many) => {
            return Err(format!("{} apps in {}: --write DIR writes DIR/APP.json for each", many.len(), file.display()))
        }
        (Some(dir), all) => {
            for i in all {
                let path = dir.join(format!("{}.json", i.name));
                // It may hold the app's secrets (`env`): readable by its
                // owner and group alone (README, "Under systemd").
                use std::os::unix::fs::OpenOptionsExt;
                let mut f =
                    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o640).open(&path).map_err(|e| {
                        format!("{}: {e} (an existing app config is never overwritten)", path.display())
                    })?;
                f.write_all(json(i).as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    for i in &imported {
        for note in &i.notes {
            eprintln!("sioctl: {}: {note}", i.name);
        }
    }
    Ok(())
}

fn run_change(app: &str, request: Request) -> ExitCode {
    match ask(app, &request) {
        Ok(Response::Done(msg)) => {
            println!("{app}: {msg}");
            ExitCode::SUCCESS
        }
        Ok(Response::Error(e)) => fail(e),
        Ok(_) => fail("unexpected answer"),
        Err(e) => fail(e),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Ls { json } => {
            let apps = match apps(&cli) {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            let rows: Vec<serde_json::Value> = apps
                .iter()
                .map(|app| match ask(app, &Request::Status) {
                    Ok(Response::Status(s)) => serde_json::json!({
                        "app": app, "running": true, "summary": s.summary(), "ready": s.ready_workers(),
                        "workers": s.workers.len(), "sessions": s.sessions, "pid": s.pid, "config": s.config,
                        "supervisor": supervisor(app), "master": s.master,
                    }),
                    _ => serde_json::json!({"app": app, "running": false}),
                })
                .collect();
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows).expect("json"));
            } else {
                println!("{:<20} {:<8} {:<40} CONFIG", "APP", "BY", "STATE");
                for r in &rows {
                    let text = |key: &str| r[key].as_str().unwrap_or("-").to_owned();
                    let (by, state) = if r["running"] == true {
                        (text("supervisor"), text("summary"))
                    } else {
                        ("-".into(), "not running".into())
                    };
                    println!("{:<20} {by:<8} {state:<40} {}", text("app"), text("config"));
                }
            }
            ExitCode::SUCCESS
        }
        Command::Status { app, json } => {
            let apps = match app {
                Some(a) => vec![a.clone()],
                None => match apps(&cli) {
                    Ok(a) => a,
                    Err(e) => return fail(e),
                },
            };
            let mut all = Vec::new();
            for name in &apps {
                match ask(name, &Request::Status) {
                    Ok(Response::Status(s)) => all.push(*s),
                    Ok(Response::Error(e)) => return fail(e),
                    Ok(_) => return fail("unexpected answer"),
                    // Every app: those not running are said so, on stderr
                    // (the JSON lists the running ones).
                    Err(e) if app.is_none() => eprintln!("sioctl: {e}"),
                    Err(e) => return fail(e),
                }
            }
            if *json {
                let out = if app.is_some() {
                    serde_json::to_string_pretty(&all[0])
                } else {
                    serde_json::to_string_pretty(&all)
                };
                println!("{}", out.expect("status serializes"));
            } else {
                for s in &all {
                    print_status(s);
                }
            }
            ExitCode::SUCCESS
        }
        Command::Top { app, interval_ms, iterations } => {
            match top_view::run(app, Duration::from_millis((*interval_ms).max(100)), *iterations) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Import { file, env, write } => match import(file, env.as_deref(), write.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Scale { app, instances } => run_change(app, Request::Scale { instances: *instances }),
        Command::Reload { app } => run_change(app, Request::Reload),
        Command::Logs { app, follow, lines } => {
            let mut cmd = std::process::Command::new("journalctl");
            cmd.args(sio::systemd::journal_units(app)).args(["-n", &lines.to_string(), "--no-pager"]);
            if *follow {
                cmd.arg("-f");
            }
            match cmd.status() {
                Ok(s) if s.success() => ExitCode::SUCCESS,
                Ok(s) => fail(format!("journalctl: {s}")),
                Err(e) => fail(format!("cannot run journalctl: {e}")),
            }
        }
    }
}

/// `sioctl top`: the status every interval, drawn by [`sio::top`].
mod top_view {
    use super::{ask, Request, Response};
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Style, Stylize};
    use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};
    use sio::top::{self, Sample};
    use std::io::IsTerminal;
    use std::time::{Duration, Instant};

    fn sample(app: &str, t0: Instant) -> Result<Sample, String> {
        match ask(app, &Request::Status)? {
            Response::Status(s) => Ok(Sample { at: t0.elapsed().as_secs_f64(), status: *s }),
            Response::Error(e) => Err(e),
            _ => Err("unexpected answer".into()),
        }
    }

    /// The last lines of the app's journal (systemd), or why there are none.
    fn recent_logs(app: &str, under_systemd: bool) -> Vec<String> {
        if !under_systemd {
            return vec!["(sio up writes its logs to its own terminal)".into()];
        }
        let out = std::process::Command::new("journalctl")
            .args(sio::systemd::journal_units(app))
            .args(["-n", "5", "-o", "short", "--no-pager", "-q"])
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect(),
            _ => vec!["(cannot read the journal: root or the adm group can)".into()],
        }
    }

    pub fn run(app: &str, interval: Duration, iterations: Option<u64>) -> Result<(), String> {
        let t0 = Instant::now();
        if !std::io::stdout().is_terminal() {
            let mut before = None;
            for n in 1.. {
                let now = sample(app, t0)?;
                println!("{}", top::plain(before.as_ref(), &now));
                before = Some(now);
                if iterations.is_some_and(|i| n >= i) {
                    break;
                }
                std::thread::sleep(interval);
            }
            return Ok(());
        }
        let mut terminal = ratatui::init();
        let result = live(&mut terminal, app, interval, t0);
        ratatui::restore();
        result
    }

    fn live(terminal: &mut ratatui::DefaultTerminal, app: &str, interval: Duration, t0: Instant) -> Result<(), String> {
        let under_systemd = super::supervisor(app) == "systemd";
        let mut before: Option<Sample> = None;
        let mut now = sample(app, t0)?;
        let mut logs = recent_logs(app, under_systemd);
        let mut table = TableState::default().with_selected(0);
        let mut next = Instant::now() + interval;
        loop {
            let rates = top::rates(before.as_ref(), &now);
            let rows = top::worker_rows(before.as_ref(), &now);
            terminal
                .draw(|f| {
                    let [head, workers, log, help] = Layout::vertical([
                        Constraint::Length(5),
                        Constraint::Min(4),
                        Constraint::Length(7),
                        Constraint::Length(1),
                    ])
                    .areas(f.area());
                    let master = top::master_lines(&now, &rates).join("\n");
                    f.render_widget(Paragraph::new(master).block(Block::bordered().title(" sio top ")), head);
                    let selected = table
                        .selected()
                        .and_then(|i| rows.get(i))
                        .map_or(String::new(), |w| format!(" worker {} selected ", w.slot));
                    let body = rows.iter().map(|w| {
                        Row::new([
                            w.slot.to_string(),
                            w.state.clone(),
                            w.pid.clone(),
                            w.sessions.clone(),
                            w.cpu.clone(),
                            w.memory.clone(),
                            w.restarts.clone(),
                        ])
                    });
                    let widths = [6, 10, 8, 9, 7, 9, 8].map(Constraint::Length);
                    let grid = Table::new(body, widths)
                        .header(Row::new(top::HEADER).bold())
                        .row_highlight_style(Style::new().reversed())
                        .block(Block::bordered().title(" workers ").title_bottom(selected));
                    f.render_stateful_widget(grid, workers, &mut table);
                    f.render_widget(
                        Paragraph::new(logs.join("\n")).block(Block::bordered().title(" recent logs ")),
                        log,
                    );
                    f.render_widget(Paragraph::new(" q quit   up/down select a worker").dim(), help);
                })
                .map_err(|e| e.to_string())?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait).map_err(|e| e.to_string())? {
                if let Event::Key(k) = event::read().map_err(|e| e.to_string())? {
                    if k.kind == KeyEventKind::Press {
                        match k.code {
                            KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
                            KeyCode::Up | KeyCode::Char('k') => table.select_previous(),
                            KeyCode::Down | KeyCode::Char('j')
                                if table.selected().is_some_and(|i| i + 1 < rows.len()) =>
                            {
                                table.select_next()
                            }
                            _ => {}
                        }
                    }
                }
                continue;
            }
            next += interval;
            before = Some(std::mem::replace(&mut now, sample(app, t0)?));
            logs = recent_logs(app, under_systemd);
        }
    }
}
