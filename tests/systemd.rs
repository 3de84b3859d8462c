//! sio under a real systemd (booted per test in a sandbox): socket
//! activation, D-Bus scaling, readiness, master restarts, journald, sioctl.

mod common;

use common::sandbox::Sandbox;
use common::*;
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(port: u16, instances: u16) -> serde_json::Value {
    json!({
        "command": ["node", node_dir().join("worker.js")],
        "cwd": node_dir(),
        "instances": instances,
        "listen": format!("127.0.0.1:{port}"),
        "timeouts": {"drain_ms": 300},
    })
}

fn ready(n: usize) -> impl Fn(&serde_json::Value) -> bool {
    move |s| App::ready_workers(s) == n && s["workers"].as_array().unwrap().len() == n
}

/// A sandbox holding one app with `instances` workers, nothing started yet.
fn booted(instances: u16) -> (Sandbox, String, u16) {
    booted_with(instances, json!({}))
}

/// The same, with fields set in the app's config (e.g. `limits`).
fn booted_with(instances: u16, fields: serde_json::Value) -> (Sandbox, String, u16) {
    ensure_node_modules();
    let app = app_name();
    let port = free_port();
    let mut cfg = config(port, instances);
    for (k, v) in fields.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let sb = Sandbox::boot(&app, &[(&app, cfg)]);
    (sb, app, port)
}

#[test]
fn socket_activation_starts_the_master_and_its_workers() {
    let (sb, app, port) = booted(2);
    sb.systemctl(&["start", &format!("sio@{app}.socket")]);
    // Asking for the status goes through the control socket, which must
    // not activate the master: reading changes nothing.
    let out = sb.sioctl(&["status", &app], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not running (sio@"), "{out:?}");
    let out = sb.sioctl(&["ls"], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"), "{out:?}");
    assert!(sb.exec(&["systemctl", "is-active", "--quiet", &format!("sio@{app}.service")]).status.code() != Some(0));
    assert!(sb.active_workers(&app).is_empty(), "nothing runs before the first connection");
    // The first connection activates the master, which starts the workers,
    // and is served by the first one ready.
    let r = node("race.js", &[&port.to_string(), "1"]);
    assert_eq!(r["counts"], json!({"ok": 1}), "{r}");
    sb.wait_status(&app, "both workers ready", Duration::from_secs(20), ready(2));
    let r = node("cluster.js", &[&port.to_string()]);
    assert_eq!(r["workers"].as_array().unwrap().len(), 2, "{r}");
    for (w, reached) in r["emitReachesAll"].as_object().unwrap() {
        assert_eq!(reached, &r["clients"], "io.emit from {w}: {r}");
    }
    assert_eq!(
        sb.active_workers(&app),
        vec![format!("sio-worker-{app}@1.service"), format!("sio-worker-{app}@2.service")]
    );
    let show = sb.systemctl(&["show", &format!("sio@{app}.service"), "-p", "ActiveState", "-p", "StatusText"]);
    assert!(show.contains("ActiveState=active"), "{show}");
    assert!(show.contains("StatusText=2 workers ready, "), "{show}");
    // Logs: structured fields in the journal, and sioctl logs shows master and workers.
    let fields = sb.journal(&[&format!("SIO_APP={app}"), "-o", "cat"]);
    assert!(fields.contains("master started"), "{fields}");
    let logs = sb.sioctl(&["logs", &app, "-n", "500"], None);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains(&format!("sio@{app}.service")) || logs.contains("master started"), "{logs}");
    assert!(logs.contains(&format!("sio-worker-{app}@1")), "{logs}");
    // src/sched.rs under systemd: the master under SCHED_BATCH from its
    // unit (its system call filter refuses it the call), each agent by
    // itself, and Node under the default policy.
    let policy = |pid: &str| String::from_utf8_lossy(&sb.exec(&["chrt", "-p", pid]).stdout).into_owned();
    let status = sb.status(&app).unwrap();
    let master = policy(&status["pid"].to_string());
    assert!(master.contains("SCHED_BATCH"), "master: {master}");
    for w in status["workers"].as_array().unwrap() {
        let agent = w["pid"].to_string();
        assert!(policy(&agent).contains("SCHED_BATCH"), "agent {agent}: {}", policy(&agent));
        let children = String::from_utf8_lossy(&sb.exec(&["pgrep", "-P", &agent]).stdout).into_owned();
        let node = children.lines().next().unwrap_or_else(|| panic!("agent {agent} has no Node worker"));
        assert!(policy(node).contains("SCHED_OTHER"), "Node {node}: {}", policy(node));
        // The Node the tests run on (tests/run pins it in PATH), not another.
        let exe = String::from_utf8_lossy(&sb.exec(&["readlink", "-f", &format!("/proc/{node}/exe")]).stdout)
            .trim()
            .to_owned();
        assert_eq!(std::path::PathBuf::from(exe), which_node(), "Node {node}");
    }
}

#[test]
fn a_burst_at_socket_activation_spreads_over_every_configured_worker() {
    // The first worker ready would otherwise take the whole burst while the
    // second is still starting.
    let (sb, app, port) = booted(2);
    sb.systemctl(&["start", &format!("sio@{app}.socket")]);
    let r = node("mid_handoff.js", &[&port.to_string(), "20"]);
    for slot in ["slot 1", "slot 2"] {
        let n = r["counts"][slot].as_u64().unwrap_or(0);
        assert!(n >= 7, "{slot} got {n} of the 20: {r}");
    }
}

/// The `node` the tests' PATH names, resolved.
fn which_node() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let node = std::env::split_paths(&path).map(|d| d.join("node")).find(|n| n.is_file()).expect("node in PATH");
    node.canonicalize().unwrap()
}

/// A sandbox with APP's socket started and its workers ready.
fn running(instances: u16) -> (Sandbox, String, u16) {
    let (sb, app, port) = booted(instances);
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    sb.wait_status(&app, "workers ready", Duration::from_secs(30), ready(instances as usize));
    (sb, app, port)
}

fn units(app: &str, slots: &[u16]) -> Vec<String> {
    let mut u: Vec<String> = slots.iter().map(|s| format!("sio-worker-{app}@{s}.service")).collect();
    u.sort();
    u
}

fn sioctl_ok(sb: &Sandbox, args: &[&str]) -> String {
    let out = sb.sioctl(args, None);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "sioctl {args:?}: {text}\n{}", sb.journal(&["-n", "60"]));
    text
}

#[test]
fn scale_2_4_1_keeps_the_surviving_workers_clients() {
    let (sb, app, port) = running(2);
    let holder = Holder::start(port, 20, "websocket");
    sioctl_ok(&sb, &["scale", &app, "4"]);
    assert_eq!(sb.active_workers(&app), units(&app, &[1, 2, 3, 4]));
    sb.wait_status(&app, "4 ready", Duration::from_secs(10), ready(4));
    let out = sioctl_ok(&sb, &["scale", &app, "1"]);
    assert!(out.contains("draining and stopping workers [2, 3, 4]"), "{out}");
    assert_eq!(sb.active_workers(&app), units(&app, &[1]));
    let r = holder.report();
    assert_eq!(disconnects_of(&r, "w1"), 0, "clients of the surviving worker stay connected: {r}");
    assert!(
        r["clients"].as_array().unwrap().iter().all(|c| c["connected"] == true && c["now"] == "w1"),
        "the others came back to it: {r}"
    );
    // The count survives a master restart.
    sb.systemctl(&["restart", &format!("sio@{app}.service")]);
    let s = sb.wait_status(&app, "1 ready after restart", Duration::from_secs(20), ready(1));
    assert_eq!(s["workers"][0]["slot"], 1, "{s}");
    assert_eq!(sb.active_workers(&app), units(&app, &[1]));
}

#[test]
fn master_restart_drops_no_connection_and_refuses_none() {
    let (sb, app, port) = running(2);
    let mut holder = Holder::start(port, 200, "polling,websocket");
    let before = sb.status(&app).unwrap();
    holder.probe();
    std::thread::sleep(Duration::from_millis(300));
    sb.systemctl(&["restart", &format!("sio@{app}.service")]);
    std::thread::sleep(Duration::from_millis(500));
    let after = sb.wait_status(&app, "ready after restart", Duration::from_secs(20), ready(2));
    let r = holder.report();
    let disconnects = total_disconnects(&r);
    assert_eq!(disconnects, 0, "{r}");
    assert_eq!(r["probes"]["failed"], 0, "every new connection during the restart succeeded: {r}");
    assert!(r["probes"]["ok"].as_u64().unwrap() >= 10, "{r}");
    assert_ne!(before["pid"], after["pid"], "a new master");
    assert_eq!(agent_pids(&before), agent_pids(&after), "the same workers, adopted");
    assert!(sb.journal(&[&format!("SIO_APP={app}"), "-o", "cat"]).contains("adopting running workers"));
}

#[test]
fn with_websocket_alone_the_workers_accept_through_a_master_restart() {
    let (sb, app, port) = booted_with(2, json!({"transports": ["websocket"]}));
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    let before = sb.wait_status(&app, "workers ready", Duration::from_secs(30), ready(2));
    let mut holder = Holder::start(port, 40, "websocket");
    holder.probe();
    sb.systemctl(&["restart", &format!("sio@{app}.service")]);
    let after = sb.wait_status(&app, "adopted after a restart", Duration::from_secs(20), |s| {
        s["pid"] != before["pid"] && ready(2)(s)
    });
    let r = holder.report();
    assert_eq!(total_disconnects(&r), 0, "{r}");
    assert_eq!(r["probes"]["failed"], 0, "every new connection during the restart succeeded: {r}");
    assert_eq!(agent_pids(&before), agent_pids(&after), "the same workers, adopted");
    // The adopted workers kept their sockets, and the new master relays.
    let r = node("cluster.js", &[&port.to_string(), "--websocket-only"]);
    assert_one_socket_io_cluster(&r, 8, 2);
    assert_eq!(sb.status(&app).unwrap()["counters"]["accepted"], 0, "the master took no connection");
    let journal = sb.journal(&[&format!("SIO_APP={app}"), "-o", "cat"]);
    assert!(!journal.contains("takes none until restarted"), "{journal}");
}

#[test]
fn a_sigkilled_worker_is_restarted_by_systemd() {
    let (sb, app, port) = running(2);
    let holder = Holder::start(port, 10, "websocket");
    let status = sb.status(&app).unwrap();
    let agent = status["workers"][0]["pid"].as_u64().unwrap().to_string();
    let out = sb.exec(&["pkill", "-KILL", "-P", &agent]);
    assert!(out.status.success(), "killed the Node worker of worker 1");
    let s = sb.wait_status(&app, "worker 1 restarted", Duration::from_secs(15), |s| {
        ready(2)(s) && s["workers"][0]["usage"]["restarts"].as_u64() >= Some(1)
    });
    assert_ne!(s["workers"][0]["pid"].as_u64().unwrap().to_string(), agent);
    let r = holder.report();
    assert_eq!(disconnects_of(&r, "w2"), 0, "clients of the other worker unaffected: {r}");
    assert!(all_connected(&r), "{r}");
}

#[test]
fn rolling_reload_refuses_nothing_and_everyone_is_back() {
    let (sb, app, port) = running(2);
    let mut holder = Holder::start(port, 40, "polling,websocket");
    holder.probe();
    sb.systemctl(&["reload", &format!("sio@{app}.service")]);
    let r = holder.report();
    assert_eq!(r["probes"]["failed"], 0, "no refused connection during the reload: {r}");
    assert!(all_connected(&r), "every client connected again: {r}");
    let s = sb.wait_status(&app, "2 ready", Duration::from_secs(10), ready(2));
    let slots: Vec<_> = s["workers"].as_array().unwrap().iter().map(|w| w["slot"].as_u64().unwrap() as u16).collect();
    assert_eq!(slots, vec![1, 3], "worker 1 was replaced by 3, then 2 by 1: {s}");
    assert_eq!(sb.active_workers(&app), units(&app, &[1, 3]));
    let log = sb.journal(&["-u", &format!("sio@{app}.service"), "-o", "cat"]);
    assert!(log.contains("worker 2 replaced by worker 1 (2/2)"), "{log}");
}

#[test]
fn workers_of_the_release_before_one_user_per_app_are_adopted_and_a_reload_replaces_them() {
    // Before each app had its user, its workers were sio-worker@APP:N.service
    // of one template for every app. After an upgrade the new master finds
    // them running: it adopts them (their sessions live on), and a reload
    // moves them to the app's own units.
    let (sb, app, port) = booted(2);
    let legacy = format!(
        "[Service]\nType=notify\nNotifyAccess=main\nExecStart={} worker %i\nUser={user}\nGroup={user}\n\
         RuntimeDirectory=sio-worker\nRuntimeDirectoryPreserve=yes\nKillMode=mixed\nEnvironment=SIO_CONFIG_DIR={}\n",
        env!("CARGO_BIN_EXE_sio"),
        sb.config_dir.display(),
        user = sio::systemd::app_user(&app),
    );
    std::fs::write(sb.dir.join("units/sio-worker@.service"), legacy).unwrap();
    sb.systemctl(&["daemon-reload"]);
    // The bus socket makes the app's user; the old workers come up with the master.
    sb.systemctl(&["start", &format!("sio-bus@{app}.socket")]);
    let old: Vec<String> = (1..=2).map(|n| format!("sio-worker@{app}:{n}.service")).collect();
    sb.systemctl(&["start", "--no-block", &old[0], &old[1]]);
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    let adopted = sb.wait_status(&app, "the old workers adopted", Duration::from_secs(30), ready(2));
    let main_pid =
        |unit: &str| sb.systemctl(&["show", unit, "-p", "MainPID", "--value"]).trim().parse::<u64>().unwrap();
    let mut pids: Vec<u64> = old.iter().map(|u| main_pid(u)).collect();
    let mut agents: Vec<u64> = agent_pids(&adopted).iter().map(|p| p.as_u64().unwrap()).collect();
    pids.sort_unstable();
    agents.sort_unstable();
    assert_eq!(agents, pids, "the old units' agents serve: {adopted}");
    assert!(sb.active_workers(&app).is_empty(), "no worker of the new kind was started");
    let r = node("race.js", &[&port.to_string(), "10"]);
    assert_eq!(r["counts"], json!({"ok": 10}), "{r}");
    let log = sb.journal(&["-u", &format!("sio@{app}.service"), "-o", "cat"]);
    assert!(log.contains("the user every app shared before this release"), "{log}");
    let holder = Holder::start(port, 20, "websocket");
    sb.systemctl(&["reload", &format!("sio@{app}.service")]);
    let r = holder.report();
    assert!(all_connected(&r), "every client connected again: {r}");
    sb.wait_status(&app, "2 ready", Duration::from_secs(20), ready(2));
    assert_eq!(sb.active_workers(&app).len(), 2, "the app's own units now");
    for unit in &old {
        let state = sb.exec(&["systemctl", "is-active", unit]);
        assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "inactive", "{unit} was stopped");
    }
}

#[test]
fn an_unprivileged_users_scale_is_denied_by_the_master() {
    let (sb, app, _) = running(2);
    let out = sb.sioctl(&["scale", &app, "3"], Some(65534));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("permission denied: only root or user sio (the master's) may change {app}")),
        "{err}"
    );
    // Reading is allowed.
    let out = sb.sioctl(&["status", &app], Some(65534));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sb.active_workers(&app).len(), 2);
    assert!(sb.journal(&[&format!("SIO_APP={app}"), "-o", "cat"]).contains("permission denied"));
}

#[test]
fn stopping_socket_and_service_leaves_nothing_running() {
    let (sb, app, _) = running(2);
    sb.systemctl(&["stop", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    assert!(sb.active_workers(&app).is_empty(), "{:?}", sb.active_workers(&app));
    let left = sb.exec(&["pgrep", "-f", "worker.js|sio (master|worker)"]);
    assert!(left.stdout.is_empty(), "still running: {}", String::from_utf8_lossy(&left.stdout));
}

#[test]
fn a_hung_master_is_killed_by_the_watchdog_and_the_next_one_adopts_the_workers() {
    let (sb, app, port) = booted(2);
    sb.drop_in(&format!("sio@{app}.service"), "[Service]\nWatchdogSec=2s\nRestartSec=100ms\n");
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    let before = sb.wait_status(&app, "workers ready", Duration::from_secs(30), ready(2));
    let holder = Holder::start(port, 10, "websocket");
    // Alive and pinging: still the same master after three watchdog periods.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(sb.status(&app).unwrap()["pid"], before["pid"], "a healthy master is left alone");
    // A hung event loop stops the pings.
    let pid = before["pid"].as_u64().unwrap().to_string();
    assert!(sb.exec(&["kill", "-STOP", &pid]).status.success());
    let after =
        sb.wait_status(&app, "a new master", Duration::from_secs(20), |s| s["pid"] != before["pid"] && ready(2)(s));
    assert_eq!(agent_pids(&before), agent_pids(&after), "the workers were adopted, not restarted");
    let log = sb.journal(&["-u", &format!("sio@{app}.service"), "-o", "cat"]);
    assert!(log.contains("Watchdog timeout"), "{log}");
    let r = holder.report();
    let disconnects = total_disconnects(&r);
    assert_eq!(disconnects, 0, "{r}");
}

#[test]
fn twenty_master_restarts_in_a_row_misroute_nothing_and_log_no_panic() {
    let (sb, app, port) = booted(2);
    // systemd's default start limit (5 in 10 s) would stop the 6th restart.
    sb.drop_in(&format!("sio@{app}.service"), "[Unit]\nStartLimitIntervalSec=0\n");
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    sb.wait_status(&app, "workers ready", Duration::from_secs(30), ready(2));
    // Polling sessions: every poll is routed by its sid, so a request that a
    // new master sends to the wrong worker ends its session ("Session ID
    // unknown"), which the client sees as a disconnect.
    let mut holder = Holder::start(port, 30, "polling");
    holder.probe();
    for i in 0..20 {
        sb.systemctl(&["restart", &format!("sio@{app}.service")]);
        std::thread::sleep(Duration::from_millis(100 + 37 * (i % 5)));
    }
    sb.wait_status(&app, "ready after the restarts", Duration::from_secs(20), ready(2));
    let r = holder.report();
    let disconnects = total_disconnects(&r);
    assert_eq!(disconnects, 0, "no session misrouted or dropped: {r}");
    assert_eq!(r["probes"]["failed"], 0, "every new connection during the restarts succeeded: {r}");
    assert!(r["probes"]["ok"].as_u64().unwrap() >= 20, "{r}");
    let log = sb.journal(&["-u", &format!("sio@{app}.service"), "-o", "cat"]);
    assert!(!log.contains("panicked"), "a replaced master exits cleanly:\n{log}");
    assert_eq!(log.matches("adopting running workers").count(), 20, "{log}");
}

#[test]
fn agents_of_the_previous_protocol_release_work_with_this_master() {
    // Agents outlive a master upgrade: the README's promise that a master
    // restart drops nothing holds only if a new master speaks to them.
    let previous = previous_agent();
    let (sb, app, port) = booted(2);
    sb.drop_in(
        &format!("sio-worker-{app}@.service"),
        &format!("[Service]\nExecStart=\nExecStart={} worker {app}:%i\n", previous.display()),
    );
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    let before = sb.wait_status(&app, "workers ready", Duration::from_secs(30), ready(2));
    let r = node("cluster.js", &[&port.to_string()]);
    for (w, reached) in r["emitReachesAll"].as_object().unwrap() {
        assert_eq!(reached, &r["clients"], "io.emit from {w} through the current master: {r}");
    }
    let holder = Holder::start(port, 20, "polling,websocket");
    sb.systemctl(&["restart", &format!("sio@{app}.service")]);
    let after = sb.wait_status(&app, "adopted after a restart", Duration::from_secs(20), |s| {
        s["pid"] != before["pid"] && ready(2)(s)
    });
    assert_eq!(agent_pids(&before), agent_pids(&after), "the previous release's agents were adopted");
    let r = holder.report();
    let disconnects = total_disconnects(&r);
    assert_eq!(disconnects, 0, "{r}");
}

#[test]
fn chaos_a_worker_killed_every_few_seconds_costs_nothing_on_the_others() {
    let (sb, app, port) = running(3);
    let (mut chat, first) = Scenario::start("chaos.js", &[&port.to_string(), "300", "30"]);
    assert!(first.starts_with("READY "), "{first}");
    // For a minute, SIGKILL the Node process of a worker every 3 s, chosen
    // by a fixed pseudo-random sequence (reproducible from run to run).
    let mut seed: u32 = 0x5105;
    let t0 = std::time::Instant::now();
    let mut kills = 0;
    while t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(3));
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let slot = 1 + (seed >> 16) % 3;
        let status = sb.status(&app).unwrap();
        let Some(agent) =
            status["workers"].as_array().unwrap().iter().find(|w| w["slot"] == slot && w["state"] == "ready")
        else {
            continue; // still coming back from the last kill
        };
        let agent = agent["pid"].as_u64().unwrap().to_string();
        if sb.exec(&["pkill", "-KILL", "-P", &agent]).status.success() {
            kills += 1;
            chat.say(&format!("kill w{slot}"));
        }
    }
    chat.say("report");
    let r = chat.result();
    println!("chaos: {r}");
    assert!(kills >= 10, "{kills} kills");
    assert_eq!(r["unexcusedCount"], 0, "clients of surviving workers stay connected: {r}");
    assert_eq!(r["lostCount"], 0, "broadcasts between surviving workers all arrive: {r}");
    assert!(r["expected"].as_u64().unwrap() > 10_000, "{r}");
    assert_eq!(r["probes"]["failed"], 0, "every new client was served: {r}");
    assert_eq!(r["connectedAtEnd"], 300, "{r}");
    sb.wait_status(&app, "all workers back", Duration::from_secs(20), ready(3));
}

#[test]
fn a_restart_replaying_40k_sessions_with_4k_requests_waiting_stays_inside_the_watchdog() {
    let (sb, app, port) = booted_with(2, json!({"env": {"FAKE_SESSIONS": "20000"}}));
    sb.drop_in(&format!("sio@{app}.service"), "[Service]\nWatchdogSec=2s\n");
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    sb.wait_status(&app, "40k sessions announced", Duration::from_secs(60), |s| {
        ready(2)(s) && s["sessions"].as_u64() == Some(40_000)
    });
    // The new master must learn 40k sessions from the agents' replay while
    // 4,000 requests for them queue up (the socket's backlog holds them).
    sb.systemctl(&["restart", "--no-block", &format!("sio@{app}.service")]);
    let r = node("replay_wait.js", &[&port.to_string(), "4000", "2", "20000"]);
    assert_eq!(r["counts"], json!({"right worker": 4000}), "every request reached its session's worker: {r}");
    let s = sb.wait_status(&app, "40k sessions again", Duration::from_secs(30), |s| {
        ready(2)(s) && s["sessions"].as_u64() == Some(40_000)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sb.status(&app).unwrap()["pid"], s["pid"], "the new master lives on");
    let log = sb.journal(&["-u", &format!("sio@{app}.service"), "-o", "cat"]);
    assert!(!log.contains("Watchdog timeout"), "{log}");
}

#[test]
fn a_worker_unit_that_fails_for_good_is_reported_and_its_sessions_go_to_the_others() {
    let (sb, app, port) = booted(2);
    let limit = "[Unit]\nStartLimitIntervalSec=60\nStartLimitBurst=3\n";
    sb.drop_in(&format!("sio-worker-{app}@2.service"), limit);
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    let status = sb.wait_status(&app, "workers ready", Duration::from_secs(30), ready(2));
    let sid = node("poll.js", &["handshake", &port.to_string(), "2"])["sid"].as_str().unwrap().to_owned();
    // Worker 2 breaks for good: its program can no longer start, then it dies.
    sb.drop_in(
        &format!("sio-worker-{app}@2.service"),
        &format!("{limit}[Service]\nExecStart=\nExecStart=/bin/false\n"),
    );
    let agent2 = status["workers"][1]["pid"].as_u64().unwrap().to_string();
    assert!(sb.exec(&["kill", "-KILL", &agent2]).status.success());
    let s = sb.wait_status(&app, "worker 2 reported failed", Duration::from_secs(30), |s| s["failed"] == json!([2]));
    assert_eq!(s["workers"].as_array().unwrap().len(), 1, "worker 2 no longer counts as starting: {s}");
    let show = sb.systemctl(&["show", &format!("sio@{app}.service"), "-p", "StatusText"]);
    assert!(show.contains("1 failed"), "{show}");
    assert!(sb.journal(&[&format!("SIO_APP={app}"), "-o", "cat"]).contains("worker 2 failed for good"));
    // Its session is gone: a poll of it is answered by worker 1 at once,
    // not held for worker 2 until a 503.
    let r = node("poll.js", &["get", &port.to_string(), &sid]);
    assert_eq!((r["status"].as_u64(), r["worker"].as_str()), (Some(400), Some("w1")), "{r}");
    assert!(r["ms"].as_u64().unwrap() < 2000, "{r}");
    // A scale brings a worker back in that slot.
    sb.drop_in(&format!("sio-worker-{app}@2.service"), limit);
    sioctl_ok(&sb, &["scale", &app, "2"]);
    sb.wait_status(&app, "2 ready again", Duration::from_secs(30), |s| ready(2)(s) && s["failed"] == json!([]));
}

#[test]
fn chaos_the_master_sigkilled_in_a_loop_loses_no_client_and_no_broadcast() {
    let (sb, app, port) = booted(3);
    // Killed every 3 s for a minute: systemd's start limit would give up.
    sb.drop_in(&format!("sio@{app}.service"), "[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestartSec=300ms\n");
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    let before = sb.wait_status(&app, "workers ready", Duration::from_secs(30), ready(3));
    let (mut chat, first) = Scenario::start("chaos.js", &[&port.to_string(), "300", "30"]);
    assert!(first.starts_with("READY "), "{first}");
    // A master kill excuses nothing in chaos.js's report: every client stays
    // connected, every broadcast arrives, every new client is served.
    let t0 = std::time::Instant::now();
    let mut kills = 0;
    let mut killed = serde_json::Value::Null;
    while t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2500 + 250 * (kills % 3)));
        let Some(status) = sb.status(&app) else { continue };
        if status["pid"] == killed {
            continue; // the last kill's successor has not answered yet
        }
        let pid = status["pid"].as_u64().unwrap().to_string();
        if sb.exec(&["kill", "-KILL", &pid]).status.success() {
            kills += 1;
            killed = status["pid"].clone();
            chat.say("kill master");
        }
    }
    let after = sb.wait_status(&app, "a master with every worker", Duration::from_secs(20), |s| {
        s["pid"] != killed && ready(3)(s)
    });
    chat.say("report");
    let r = chat.result();
    println!("master chaos: {r}");
    assert!(kills >= 15, "{kills} kills");
    assert_eq!(agent_pids(&before), agent_pids(&after), "the workers were adopted every time, never restarted");
    assert_eq!(r["disconnects"], 0, "no client was disconnected: {r}");
    assert_eq!(r["lostCount"], 0, "every broadcast reached every client: {r}");
    assert_eq!(r["duplicates"], 0, "and none twice: {r}");
    assert!(r["expected"].as_u64().unwrap() > 100_000, "{r}");
    assert_eq!(r["probes"]["failed"], 0, "every new client was served: {r}");
    assert_eq!(r["connectedAtEnd"], 300, "{r}");
}

#[test]
fn the_app_runs_as_its_own_user_and_can_touch_neither_its_master_nor_any_unit() {
    let (sb, app, port) = running(2);
    let master = sb.status(&app).unwrap()["pid"].as_u64().unwrap().to_string();
    let r = node("privileges.js", &[&port.to_string(), &master, &app]);
    println!("what the app may do: {r}");
    let uid_of = |name: &str| nix::unistd::User::from_name(name).unwrap().unwrap().uid.as_raw();
    let user = sio::systemd::app_user(&app);
    assert_eq!(r["uid"], uid_of(&user), "the app's own user: {r}");
    assert_ne!(uid_of(&user), uid_of("sio"), "not the master's");
    assert_eq!(r["readShadow"], "EACCES", "{r}");
    assert_eq!(r["writeEtc"], "EROFS", "{r}");
    assert_eq!(r["writeCwd"], "EROFS", "nothing is writable but what a drop-in grants: {r}");
    assert_eq!(r["signalMaster"], "EPERM", "another uid cannot signal the master: {r}");
    assert_eq!(r["readMaster"], "ENOENT", "nor see it in /proc (ProtectProc=invisible): {r}");
    for call in ["stopDbus", "stopSibling", "startWorker"] {
        assert!(r[call].as_str().unwrap().starts_with("denied"), "{call}: {r}");
    }
    // The master's user outside the master's unit gets nothing from polkit
    // either: the grant is for the process in sio@APP.service.
    let busctl = |method: &str, unit: &str| {
        vec![
            "busctl",
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain([method.to_owned(), "ss".into(), unit.to_owned(), "replace".into()])
        .collect::<Vec<String>>()
    };
    let third = format!("sio-worker-{app}@3.service");
    let as_sio = busctl("StartUnit", &third);
    let out = sb.command(Some("sio"), &as_sio.iter().map(String::as_str).collect::<Vec<_>>()).output().unwrap();
    assert!(!out.status.success(), "user sio outside the master started a worker");
    let mut in_unit = vec!["systemd-run", "--wait", "--quiet", "-p", "User=sio", "--unit", "sio-intruder.service"];
    in_unit.extend(as_sio.iter().map(String::as_str));
    assert!(!sb.exec(&in_unit).status.success(), "user sio in another unit started a worker");
    assert_eq!(sb.active_workers(&app), units(&app, &[1, 2]), "nothing was started or stopped");
    assert!(sb.systemctl(&["is-active", "dbus.service"]).starts_with("active"));
}

#[test]
fn two_apps_on_one_host_can_neither_read_signal_reach_nor_load_code_into_each_other() {
    // As on a host of PM2's users: several apps, each with its npm tree,
    // any of which may be compromised. Each app's workers run as its own
    // user: one app's code gets nothing of the other's.
    ensure_node_modules();
    let (a, b) = (app_name(), app_name());
    let (port_a, port_b) = (free_port(), free_port());
    let sb = Sandbox::boot(&a, &[(&a, config(port_a, 2)), (&b, config(port_b, 2))]);
    let config_of = |app: &str| sb.config_dir.join(format!("{app}.json"));
    // As the README says to write them: root's, not readable by others.
    for app in [&a, &b] {
        std::fs::set_permissions(config_of(app), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    }
    for app in [&a, &b] {
        sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    }
    let before_a = sb.wait_status(&a, "a's workers ready", Duration::from_secs(30), ready(2));
    let before_b = sb.wait_status(&b, "b's workers ready", Duration::from_secs(30), ready(2));
    // The bus socket made each app's user and gave it the app's config.
    for app in [&a, &b] {
        let meta = std::fs::metadata(config_of(app)).unwrap();
        let group = nix::unistd::Group::from_gid(std::os::unix::fs::MetadataExt::gid(&meta).into()).unwrap().unwrap();
        assert_eq!(group.name, sio::systemd::app_user(app), "{app}'s config is its group's");
        assert_eq!(std::os::unix::fs::MetadataExt::mode(&meta) & 0o777, 0o640);
    }
    let r = node(
        "neighbours.js",
        &[
            &port_a.to_string(),
            config_of(&a).to_str().unwrap(),
            &port_b.to_string(),
            config_of(&b).to_str().unwrap(),
            &format!("/run/sio/{b}.bus"),
        ],
    );
    println!("what app a may do to app b: {r}");
    let uid_of = |app: &str| nix::unistd::User::from_name(&sio::systemd::app_user(app)).unwrap().unwrap().uid.as_raw();
    assert_eq!((&r["a"]["uid"], &r["b"]["uid"]), (&json!(uid_of(&a)), &json!(uid_of(&b))), "each app its own user");
    assert_ne!(uid_of(&a), uid_of(&b));
    assert_eq!(r["a"]["readOwnConfig"], "allowed", "an app reads its own config: {r}");
    assert_eq!(r["a"]["readConfig"], "EACCES", "not another's (its secrets in `env`): {r}");
    let environ = r["a"]["readEnviron"].as_str().unwrap();
    assert!(["ENOENT", "EACCES"].contains(&environ), "nor another's workers' environment: {r}");
    assert_eq!(r["a"]["signal"], "EPERM", "nor signal them: {r}");
    assert_eq!(r["a"]["reachBus"], "EACCES", "nor reach its bus: {r}");
    assert!(r["b"]["preload"].as_str().unwrap().contains(&format!("/sio-worker-{b}/")), "{r}");
    for write in ["writePreload", "writeBesidePreload"] {
        let outcome = r["a"][write].as_str().unwrap();
        assert!(["EACCES", "EROFS"].contains(&outcome), "nor change what its Node loads ({write}): {r}");
    }
    // Both serve, through a master restart of one and a reload of the other.
    let holder = Holder::start(port_a, 20, "polling,websocket");
    sb.systemctl(&["restart", &format!("sio@{a}.service")]);
    let after_a =
        sb.wait_status(&a, "a adopted", Duration::from_secs(20), |s| s["pid"] != before_a["pid"] && ready(2)(s));
    assert_eq!(agent_pids(&before_a), agent_pids(&after_a), "a's workers were adopted");
    let r = holder.report();
    assert_eq!(total_disconnects(&r), 0, "{r}");
    assert_eq!(r["probes"]["failed"], 0, "{r}");
    sb.systemctl(&["reload", &format!("sio@{b}.service")]);
    let after_b = sb.wait_status(&b, "b reloaded", Duration::from_secs(60), |s| {
        ready(2)(s) && agent_pids(s).iter().all(|p| !agent_pids(&before_b).contains(p))
    });
    assert_eq!(sb.active_workers(&b).len(), 2, "{after_b}");
    for port in [port_a, port_b] {
        let r = node("race.js", &[&port.to_string(), "10"]);
        assert_eq!(r["counts"], json!({"ok": 10}), "both apps serve: {r}");
    }
}

#[test]
fn strangers_cannot_join_the_bus_squat_it_or_pose_as_an_agent() {
    let (sb, app, port) = booted(2);
    // Before the master ever ran, somebody binds protocol 1's abstract
    // name: the master serves agents on its path sockets alone.
    let mut squatter = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.bind(b'\\0sio/'+sys.argv[1].encode()); s.listen(); print('bound', flush=True); time.sleep(600)", &app])
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(squatter.stdout.take().unwrap()), &mut said).unwrap();
    assert_eq!(said.trim(), "bound");
    sb.systemctl(&["start", &format!("sio@{app}.socket")]);
    let r = node("race.js", &[&port.to_string(), "20"]);
    assert_eq!(r["counts"], json!({"ok": 20}), "the app starts and serves: {r}");
    sb.wait_status(&app, "workers ready", Duration::from_secs(30), ready(2));
    let bus = format!("/run/sio/{app}.bus");
    let control = format!("/run/sio/{app}.control");
    let probe = |user: &str, path: &str, args: &[&str]| {
        bus_probe_with(sb.command(Some(user), &["/usr/bin/python3"]), std::path::Path::new(path), args)
    };
    // Another uid cannot connect to the bus; on the control socket it is
    // capped at 32 connections.
    assert_eq!(probe("nobody", &bus, &["close", "5"])["connected"], 0);
    let r = probe("nobody", &control, &["connect", "40", "2000"]);
    assert_eq!((r["connected"].as_u64(), r["kept"].as_u64()), (Some(40), Some(32)), "{r}");
    // The app's own user (its Node) may connect to the bus, but holds no
    // more there than anyone on the control socket.
    let user = sio::systemd::app_user(&app);
    let r = probe(&user, &bus, &["connect", "40", "2000"]);
    assert_eq!((r["connected"].as_u64(), r["kept"].as_u64()), (Some(40), Some(32)), "{r}");
    // Nor does it ask as an operator there.
    let r = probe(&user, &bus, &["operator"]);
    assert_eq!(r["reply"], "refused: operators connect to the control socket, not to the bus", "{r}");
    assert_eq!(probe(&user, &control, &["operator"])["reply"], "welcome");
    // The agents' own uid, outside a worker unit: refused, by the kernel's pid.
    let out = sb
        .command(Some(&user), &[env!("CARGO_BIN_EXE_sio"), "worker", &format!("{app}:1"), "--config-dir"])
        .arg(&sb.config_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("permission denied: pid ") && err.contains(&format!("not in sio-worker-{app}@1.service")),
        "{err}"
    );
    let log = sb.journal(&[&format!("SIO_APP={app}"), "-o", "cat"]);
    assert!(log.contains("refused a bus peer that claims to be an agent"), "{log}");
    assert!(!log.contains(&format!("@sio/{app}")), "the abstract name is none of the master's business: {log}");
    // A master restart: the agents come back through the same socket.
    let mut holder = Holder::start(port, 20, "websocket");
    holder.probe();
    sb.systemctl(&["restart", &format!("sio@{app}.service")]);
    sb.wait_status(&app, "ready after the restart", Duration::from_secs(20), ready(2));
    let r = holder.report();
    assert_eq!(total_disconnects(&r), 0, "{r}");
    assert_eq!(r["probes"]["failed"], 0, "{r}");
    let _ = squatter.kill();
    let _ = squatter.wait();
}

#[test]
fn a_process_in_a_lookalike_worker_cgroup_is_refused_as_an_agent_on_every_door_and_logged_by_its_pid() {
    // What a user's own manager makes of `systemctl --user start
    // sio-worker-APP@4095.service` (or any delegated subtree): a cgroup
    // path whose last component is a worker unit's name, outside the
    // system manager's worker units. Its process runs as the app's user,
    // as another app's Node would, so the bus's file mode lets it in.
    let (sb, app, _port) = running(2);
    let slot = 4095;
    let fake = format!("user.slice/user-65534.slice/user@65534.service/app.slice/sio-worker-{app}@{slot}.service");
    let user = sio::systemd::app_user(&app);
    let probe = repo().join("tests/bus_probe.py");
    // Into that cgroup in every hierarchy the sandbox mounts (the unified
    // one, or on a legacy host each v1 hierarchy, `name=systemd` too).
    let script = format!(
        "for h in $(awk '$2 ~ \"^/sys/fs/cgroup\" && ($3 == \"cgroup\" || $3 == \"cgroup2\") {{print $2}}' /proc/self/mounts); do \
           mount -o remount,rw $h 2>/dev/null; mkdir -p \"$h/{fake}\" 2>/dev/null && echo $$ > \"$h/{fake}/cgroup.procs\" 2>/dev/null; done; \
         grep -q 'sio-worker-{app}@{slot}.service' /proc/self/cgroup || {{ cat /proc/self/cgroup; exit 1; }}; \
         echo pid $$ && exec setpriv --reuid={user} --regid={user} --init-groups /usr/bin/python3 {} \"$0\" agent {slot} {app}",
        probe.display()
    );
    let pose = |door: &str| {
        // In a mount namespace of its own: systemd mounts the cgroup tree
        // read-only for everyone else.
        let out = sb.command(None, &["unshare", "-m", "sh", "-c", &script, door]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pid = text.lines().find_map(|l| l.strip_prefix("pid ")).map(str::to_owned);
        let result = text.lines().find_map(|l| l.strip_prefix("RESULT ")).map(|r| serde_json::from_str(r).unwrap());
        let result: serde_json::Value =
            result.unwrap_or_else(|| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
        (pid.unwrap_or_else(|| panic!("{text}")), result)
    };
    let (pid, on_bus) = pose(&format!("/run/sio/{app}.bus"));
    let reply = on_bus["reply"].as_str().unwrap_or_default().to_owned();
    assert!(reply.starts_with("refused: permission denied: pid "), "the bus: {on_bus}");
    assert!(
        reply.contains(&format!("pid {pid} runs in "))
            && reply.contains(&format!("not in sio-worker-{app}@{slot}.service")),
        "{on_bus}"
    );
    let (_, on_control) = pose(&format!("/run/sio/{app}.control"));
    assert_eq!(on_control["reply"], "refused: agents connect to the bus, not to the control socket", "{on_control}");
    // Protocol 1's abstract name, which anyone can reach, is not served.
    let (_, abstract_name) = pose(&format!("@sio/{app}"));
    assert_eq!(abstract_name["connected"], false, "{abstract_name}");
    let log = sb.journal(&[&format!("SIO_APP={app}"), "-o", "cat"]);
    assert!(log.contains("refused a bus peer that claims to be an agent"), "{log}");
    let status = sb.wait_status(&app, "the real workers", Duration::from_secs(5), ready(2));
    assert_eq!(status["counters"]["refused_peers"], 1, "the one that got as far as its unit's check: {status}");
    eprintln!("the master's answer on the bus: {reply}");
    // The refusal names the kernel's pid in the journal's fields too.
    let fields = sb.journal(&[&format!("SIO_APP={app}"), "-o", "json"]);
    assert!(fields.contains(&format!("\"SIO_PEER_PID\":\"{pid}\"")), "logged with its pid {pid}: {fields}");
}

#[test]
fn an_agent_that_never_confirms_a_handoff_is_dropped_and_its_connections_served_by_the_others() {
    // Worker 2's unit runs an agent that takes connections and answers
    // nothing: the master's own timer, not the agent's, must end it.
    let (sb, app, port) = booted_with(2, json!({"timeouts": {"drain_ms": 300, "handoff_ms": 1000}}));
    let silent = repo().join("tests/silent_agent.py");
    sb.drop_in(
        &format!("sio-worker-{app}@2.service"),
        &format!("[Service]\nExecStart=\nExecStart=/usr/bin/python3 {} {app}:%i\nRestartSec=60s\n", silent.display()),
    );
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    sb.wait_status(&app, "both workers ready", Duration::from_secs(30), ready(2));
    let r = node("race.js", &[&port.to_string(), "20"]);
    assert_eq!(r["counts"], json!({"ok": 20}), "every session served: {r}");
    let log = sb.journal(&[&format!("SIO_APP={app}"), "-o", "cat"]);
    assert!(log.contains("agent confirmed no connection handed to it for 2s: dropped"), "{log}");
    let held = sb.journal(&["-u", &format!("sio-worker-{app}@2.service"), "-o", "cat"]);
    assert!(held.contains("holding "), "the silent agent took connections: {held}");
}

#[test]
fn each_units_exposure_stays_within_its_threshold() {
    // systemd-analyze's threshold is the exposure times ten.
    let dir = scratch_dir(&format!("{}-security", app_name()));
    let master = std::fs::read_to_string(repo().join("systemd/sio@.service")).unwrap();
    // The worker's unit as the generator writes it for an app.
    let config = std::path::Path::new("/etc/sio/chat.json");
    let worker = sio::systemd::generator::worker_template(config, "chat", std::path::Path::new("/usr/bin/sio"));
    for (template, text, instance, limit) in [
        ("sio@.service", master, "sio@chat.service", 15),
        ("sio-worker-chat@.service", worker, "sio-worker-chat@1.service", 25),
    ] {
        std::fs::write(dir.join(instance), text).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=yes", &format!("--threshold={limit}")])
            .arg(dir.join(instance))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let overall = text.lines().find(|l| l.contains("Overall exposure")).unwrap_or("no overall line");
        println!("{template}: {overall}");
        assert!(out.status.success(), "{template} is above {}: {overall}", limit as f64 / 10.0);
    }
}

#[test]
fn an_app_in_a_folder_the_unit_hides_fails_naming_the_reason() {
    ensure_node_modules();
    let app = app_name();
    // As the README once invited: the app's folder under /root.
    let hidden = std::path::PathBuf::from("/root").join(format!("sio-hidden-{app}"));
    std::fs::create_dir_all(&hidden).unwrap();
    let mut cfg = config(free_port(), 1);
    cfg["cwd"] = json!(hidden);
    let sb = Sandbox::boot(&app, &[(&app, cfg)]);
    // The sandbox lifts ProtectHome= for checkouts under /root: put it back.
    sb.drop_in(&format!("sio@{app}.service"), "[Service]\nProtectHome=yes\n");
    let started = sb.exec(&["systemctl", "start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    let _ = std::fs::remove_dir(&hidden);
    assert!(!started.status.success(), "the master cannot start");
    let log = sb.journal(&["-u", &format!("sio@{app}.service"), "-o", "cat"]);
    assert!(log.contains(&format!("field `cwd`: {} is not a directory", hidden.display())), "{log}");
    assert!(log.contains("its ProtectHome= hides /home, /root and /run/user; put the app under /srv/"), "{log}");
    assert!(log.contains("status=78/CONFIG"), "{log}");
}

/// A /proc to read: this machine's, or a sandbox's (its pid namespace).
struct Proc<'a> {
    /// A file's text.
    read: &'a dyn Fn(&str) -> String,
    /// A process's children.
    children: &'a dyn Fn(u64) -> Vec<u64>,
}

/// Memory (bytes, from VmRSS) and CPU (ns, utime+stime+cutime+cstime) of
/// `pid` and, with `tree`, all its descendants: the test's own reading of
/// /proc, to hold sioctl's figures against.
fn proc_usage(pid: u64, tree: bool, proc: &Proc) -> (f64, f64) {
    let Proc { read, children } = proc;
    let (mut rss, mut cpu) = (0.0, 0.0);
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let status = read(&format!("/proc/{p}/status"));
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .map_or(0.0, |v| v.split_whitespace().next().unwrap().parse::<f64>().unwrap());
        rss += kib * 1024.0;
        let stat = read(&format!("/proc/{p}/stat"));
        let fields: Vec<f64> =
            stat[stat.rfind(')').unwrap() + 2..].split(' ').map(|f| f.parse().unwrap_or(0.0)).collect();
        cpu += (fields[11] + fields[12] + fields[13] + fields[14]) * 1e7; // 100 ticks/s
        if tree {
            todo.extend(children(p));
        }
    }
    (rss, cpu)
}

/// Within 20%, or (CPU) within 3 clock ticks of 10 ms.
fn close(what: &str, reported: &serde_json::Value, measured: f64, slack: f64) {
    let reported = reported.as_f64().unwrap_or_else(|| panic!("{what}: no figure ({reported})"));
    assert!(
        (reported - measured).abs() <= (0.2 * measured).max(slack),
        "{what}: sioctl says {reported}, /proc says {measured}"
    );
}

#[test]
fn sioctl_ls_and_status_find_every_master_with_memory_cpu_and_restarts() {
    let (sb, app, _) = running(2);
    // Two `sio up` apps of one user, in folders of their own, found
    // through that user's runtime folder as any of them would be.
    let user_runtime = scratch_dir(&format!("{app}-xdg"));
    let up1 = App::start_in_user_runtime(1, &user_runtime);
    let up2 = App::start_in_user_runtime(2, &user_runtime);
    assert_ne!(up1.config.parent(), up2.config.parent());
    let node_pid = children_of(up2.status()["workers"][1]["pid"].as_u64().unwrap() as u32)[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(node_pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let t0 = std::time::Instant::now();
    while up2.status()["workers"][1]["usage"]["restarts"] != 1 || App::ready_workers(&up2.status()) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", up2.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    let sioctl = |args: &[&str]| {
        let config_dir = sb.config_dir.display().to_string();
        let mut full = vec![env!("CARGO_BIN_EXE_sioctl"), "--config-dir", &config_dir];
        full.extend(args);
        let out = sb.command(None, &full).env_remove("SIO_RUNTIME_DIR").env("XDG_RUNTIME_DIR", &user_runtime).output();
        let out = out.unwrap();
        assert!(out.status.success(), "sioctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let rows: serde_json::Value = serde_json::from_str(&sioctl(&["ls", "--json"])).unwrap();
    for (name, by, config) in [
        (&app, "systemd", sb.config_dir.join(format!("{app}.json"))),
        (&up1.name, "sio up", up1.config.clone()),
        (&up2.name, "sio up", up2.config.clone()),
    ] {
        let row = rows.as_array().unwrap().iter().find(|r| &r["app"] == name).unwrap_or_else(|| panic!("{rows}"));
        assert_eq!((&row["running"], &row["supervisor"]), (&json!(true), &json!(by)), "{row}");
        assert_eq!(row["config"], json!(config), "{row}");
    }
    let text = sioctl(&["ls"]);
    for name in [&app, &up1.name, &up2.name] {
        assert!(text.lines().any(|l| l.starts_with(name.as_str()) && l.contains("ready")), "{text}");
    }

    let all: serde_json::Value = serde_json::from_str(&sioctl(&["status", "--json"])).unwrap();
    let host_read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let host_children = |pid: u64| children_of(pid as u32).into_iter().map(u64::from).collect();
    let sandbox_read = |path: &str| String::from_utf8_lossy(&sb.exec(&["cat", path]).stdout).into_owned();
    let sandbox_children = |pid: u64| {
        let out = sb.exec(&["pgrep", "-P", &pid.to_string()]);
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(|p| p.parse().unwrap()).collect()
    };
    for name in [&app, &up1.name, &up2.name] {
        let s = all.as_array().unwrap().iter().find(|s| &s["app"] == name).unwrap_or_else(|| panic!("{all}"));
        let proc = if name == &app {
            Proc { read: &sandbox_read, children: &sandbox_children }
        } else {
            Proc { read: &host_read, children: &host_children }
        };
        let (rss, cpu) = proc_usage(s["pid"].as_u64().unwrap(), false, &proc);
        close(&format!("{name} master memory"), &s["master"]["memory_bytes"], rss, 0.0);
        close(&format!("{name} master CPU"), &s["master"]["cpu_ns"], cpu, 3e7);
        for w in s["workers"].as_array().unwrap() {
            let agent = w["pid"].as_u64().unwrap();
            let (rss, cpu) = proc_usage(agent, false, &proc);
            close(&format!("{name} agent memory"), &w["agent"]["memory_bytes"], rss, 0.0);
            close(&format!("{name} agent CPU"), &w["agent"]["cpu_ns"], cpu, 3e7);
            let (rss, cpu) = proc_usage(agent, true, &proc);
            assert!(w["usage"]["restarts"].is_u64(), "{w}");
            close(&format!("{name} worker CPU"), &w["usage"]["cpu_ns"], cpu, 3e7);
            close(&format!("{name} worker memory"), &w["usage"]["memory_bytes"], rss, 0.0);
            // Under systemd also what the cgroup is charged (less: Node's
            // code pages are charged to whoever read them first).
            assert_eq!(w["usage"]["cgroup_memory_bytes"].as_u64().is_some_and(|b| b > 1 << 20), name == &app, "{w}");
        }
    }
    let up2_status = all.as_array().unwrap().iter().find(|s| s["app"] == json!(up2.name)).unwrap();
    assert_eq!(up2_status["workers"][0]["usage"]["restarts"], 0);
    assert_eq!(up2_status["workers"][1]["usage"]["restarts"], 1, "the killed worker was restarted once");
    let text = sioctl(&["status"]);
    assert!(text.contains("master pid") && text.contains("AGENT"), "{text}");
}

#[test]
fn a_worker_above_memory_max_is_stopped_by_the_kernel_and_restarted_by_systemd() {
    let limits = json!({"memory_max": "96M", "memory_high": "80M", "cpu_weight": 50});
    let (sb, app, port) = booted_with(2, json!({ "limits": limits }));
    sb.systemctl(&["start", &format!("sio@{app}.socket"), &format!("sio@{app}.service")]);
    let before = sb.wait_status(&app, "workers ready", Duration::from_secs(30), ready(2));
    let unit = |slot: u16| format!("sio-worker-{app}@{slot}.service");
    let show = sb.systemctl(&["show", &unit(1), "-p", "MemoryMax", "-p", "MemoryHigh", "-p", "CPUWeight"]);
    let mut show: Vec<&str> = show.lines().collect();
    show.sort_unstable();
    assert_eq!(show, ["CPUWeight=50", "MemoryHigh=83886080", "MemoryMax=100663296"], "the unit's cgroup settings");
    let r = node("hog.js", &[&port.to_string(), "200"]);
    assert_eq!(r["hogDisconnected"], true, "the worker above its limit was stopped: {r}");
    assert_eq!(r["healthyDisconnects"], 0, "a client of the other worker is unaffected: {r}");
    assert_eq!(r["healthyEcho"], "still here", "{r}");
    let after = sb.wait_status(&app, "worker 1 restarted", Duration::from_secs(30), |s| {
        ready(2)(s) && s["workers"][0]["usage"]["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(after["workers"][1]["pid"], before["workers"][1]["pid"], "worker 2 untouched");
    assert_eq!(after["workers"][1]["usage"]["restarts"], 0);
    // systemd names it 'oom-kill' on cgroup v2; elsewhere the kernel's
    // SIGKILL shows as status 137 (nothing else here kills Node).
    let journal = sb.journal(&["-u", &unit(1)]);
    assert!(journal.contains("oom-kill") || journal.contains("status=137"), "{journal}");
}

#[test]
fn metrics_are_served_from_a_socket_the_socket_unit_holds() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let (sb, app, _) = booted_with(2, json!({ "metrics": metrics }));
    sb.systemctl(&["start", &format!("sio@{app}.socket")]);
    // The generator gave the socket unit the metrics address too.
    let listen = sb.systemctl(&["show", &format!("sio@{app}.socket"), "-p", "Listen"]);
    assert!(listen.contains(&format!("{metrics} (Stream)")), "{listen}");
    // A scrape activates the master like any client, which serves it from
    // the passed socket (it may not open one to the network itself).
    let scrape = || {
        let out = Command::new("curl").args(["-sf", "--max-time", "20", &format!("http://{metrics}/metrics")]).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    };
    let page = scrape();
    assert!(page.contains(&format!("sio_handoffs_total{{app=\"{app}\"}}")), "{page}");
    let s = sb.wait_status(&app, "workers ready", Duration::from_secs(30), ready(2));
    assert_eq!(s["metrics"], json!(metrics));
    let page = scrape();
    assert!(page.contains(&format!("sio_workers{{app=\"{app}\",state=\"ready\"}} 2")), "{page}");
}
