//! The packages as an operator meets them: built by `packaging/build.sh`,
//! checked by lintian and rpm, installed with dpkg, run under a real
//! systemd from the files they installed (copied unmodified into the
//! sandbox), upgraded with clients connected, removed and purged. Needs
//! root, lintian, rpm, man, cargo-deb and cargo-generate-rpm (`.ci/run`
//! installs them). One scenario, in order: every step needs the one before.

mod common;

use common::sandbox::Sandbox;
use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds both packages of package release `release` (a higher one is an
/// upgrade); returns the .deb and the .rpm.
fn build(release: &str) -> (PathBuf, PathBuf) {
    run(Command::new(repo().join("packaging/build.sh")).arg(release));
    let pkg = repo().join("target/pkg");
    let find = |ext: &str| {
        std::fs::read_dir(&pkg)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .unwrap_or_else(|| panic!("no .{ext} in {}", pkg.display()))
    };
    (find("deb"), find("rpm"))
}

/// The regular files a .deb holds, as absolute paths.
fn deb_files(deb: &Path) -> BTreeSet<String> {
    run(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

/// The regular files an .rpm holds (`rpm -qlp` lists folders too).
fn rpm_files(rpm: &Path) -> BTreeSet<String> {
    run(Command::new("rpm").args(["-qp", "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]"]).arg(rpm))
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_once(' ').map(|(_, path)| path.to_owned()))
        .collect()
}

/// The .deb's files where Fedora's conventions put them: zsh completions
/// in `site-functions` (Debian's zsh reads `vendor-completions`), and
/// without Debian's own `changelog.Debian.gz` and `copyright`.
fn as_rpm_would_place(deb: BTreeSet<String>) -> BTreeSet<String> {
    deb.into_iter()
        .filter(|f| !matches!(f.as_str(), "/usr/share/doc/sio/changelog.Debian.gz" | "/usr/share/doc/sio/copyright"))
        .map(|f| f.replace("/usr/share/zsh/vendor-completions/", "/usr/share/zsh/site-functions/"))
        .collect()
}

/// `man SECTION PAGE`, rendered now: at a width other than 80 man-db
/// neither reads nor writes its cache of formatted pages, which would serve
/// a page of an earlier build (the package's files all have the
/// changelog's date).
fn man(section: &str, page: &str) -> String {
    run(Command::new("man").args(["-P", "cat", section, page]).env("MANWIDTH", "100"))
}

/// Whatever happens, the machine is left without sio's package and the
/// test's app (user `sio` stays, as Debian keeps system users; the app's,
/// one per test run, goes).
struct Cleanup {
    app: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "sio"]).output();
        let _ = std::fs::remove_file(format!("/etc/sio/{}.json", self.app));
        let _ = std::fs::remove_dir("/etc/sio");
        let _ = std::fs::remove_dir_all(format!("/srv/{}", self.app));
        let _ = std::fs::remove_file(format!("/etc/systemd/system/sockets.target.wants/sio@{}.socket", self.app));
        let user = sio::systemd::app_user(&self.app);
        let _ = Command::new("sh").arg("-c").arg(format!("userdel {user}; groupdel {user}")).output();
    }
}

fn ready(n: usize) -> impl Fn(&serde_json::Value) -> bool {
    move |s| App::ready_workers(s) == n
}

#[test]
fn the_packages_install_run_upgrade_without_a_disconnect_and_purge_clean() {
    ensure_node_modules();
    let app = app_name();
    let _cleanup = Cleanup { app: app.clone() };
    let (deb, rpm) = build("1");

    // Checked as distributions check them.
    run(Command::new("lintian").args(["--fail-on", "error"]).arg(&deb));
    assert_eq!(as_rpm_would_place(deb_files(&deb)), rpm_files(&rpm), "the .deb and the .rpm install the same files");

    // Installed on this machine: every file landed, the pages render,
    // completion completes, the units verify.
    run(Command::new("dpkg").arg("-i").arg(&deb));
    for f in deb_files(&deb) {
        assert!(Path::new(&f).exists(), "{f} not installed");
    }
    for (section, page) in [("1", "sio"), ("1", "sioctl"), ("5", "sio.json")] {
        let text = man(section, page);
        assert!(text.contains("NAME") && text.contains("SEE ALSO"), "man {section} {page}: {text}");
    }
    // Every page the pages name exists (sioctl(1) names sioctl-status(1)…).
    for top in ["sio", "sioctl"] {
        let text = man("1", top);
        let named: BTreeSet<&str> =
            text.split_whitespace().filter_map(|w| w.strip_suffix("(1)")).filter(|w| w.starts_with("sio")).collect();
        assert!(named.len() >= 3, "{text}");
        for page in named {
            man("1", page);
        }
    }
    let fields = man("5", "sio.json");
    assert!(fields.contains("timeouts.handoff_ms") && fields.contains("limits.bus_queue_bytes"), "{fields}");
    let completion = run(Command::new("bash").args([
        "-c",
        ". /usr/share/bash-completion/completions/sioctl; COMP_WORDS=(sioctl s); COMP_CWORD=1; \
         _sioctl sioctl s sioctl; echo ${COMPREPLY[@]}",
    ]));
    assert_eq!(completion.split_whitespace().collect::<BTreeSet<_>>(), BTreeSet::from(["scale", "status"]));
    // `FILE:NAME` verifies a template file as an instance; with the man
    // pages checked, so `Documentation=` must resolve. The worker's
    // template is what the installed generator writes for an app.
    let generated = std::env::temp_dir().join(format!("sio-generated-{app}"));
    let _ = std::fs::remove_dir_all(&generated);
    std::fs::create_dir_all(generated.join("etc")).unwrap();
    std::fs::write(generated.join("etc/chat.json"), r#"{"command": ["node", "worker.js"]}"#).unwrap();
    run(Command::new("/usr/lib/systemd/system-generators/sio-generator")
        .arg(&generated)
        .env("SIO_CONFIG_DIR", generated.join("etc")));
    let units = Path::new("/usr/lib/systemd/system");
    let mut systemd_analyze = Command::new("systemd-analyze");
    systemd_analyze.args(["verify", "--man=yes"]);
    for (unit, instance) in [
        (units.join("sio@.socket"), "sio@chat.socket"),
        (units.join("sio-bus@.socket"), "sio-bus@chat.socket"),
        (units.join("sio@.service"), "sio@chat.service"),
        (generated.join("sio-worker-chat@.service"), "sio-worker-chat@1.service"),
    ] {
        systemd_analyze.arg(format!("{}:{instance}", unit.display()));
    }
    let verified = systemd_analyze.output().unwrap();
    let _ = std::fs::remove_dir_all(&generated);
    let complaints = String::from_utf8_lossy(&verified.stderr);
    assert!(verified.status.success() && !complaints.contains("sio"), "systemd-analyze verify: {complaints}");

    // An app from /etc/sio, living in /srv (the units hide /home and /tmp),
    // enabled as the README says.
    let srv = PathBuf::from("/srv").join(&app);
    run(Command::new("cp").arg("-a").arg(node_dir()).arg(&srv));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // On the Node the tests run on: the pinned one (tests/run puts it first
    // in PATH), copied to /srv with the app since the units hide /tmp and
    // /home, or else the system's.
    let node = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("node")).find(|n| n.is_file()))
        .and_then(|n| n.canonicalize().ok())
        .and_then(|n| Some(srv.join(n.strip_prefix(node_dir().canonicalize().ok()?).ok()?)))
        .map_or_else(|| "node".to_owned(), |n| n.display().to_string());
    let cfg =
        json!({"command": [node, "worker.js"], "cwd": srv, "instances": 2, "listen": format!("127.0.0.1:{port}")});
    std::fs::write(format!("/etc/sio/{app}.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let sb = Sandbox::boot_installed(&app);
    sb.systemctl(&["enable", "--now", &format!("sio@{app}.socket")]);
    let link = PathBuf::from(format!("/etc/systemd/system/sockets.target.wants/sio@{app}.socket"));
    assert!(link.is_symlink(), "enabled");
    let mut holder = Holder::start(port, 40, "polling,websocket");
    sb.wait_status(&app, "2 workers", Duration::from_secs(30), ready(2));
    let scaled = sb.sioctl(&["scale", &app, "3"], None);
    assert!(scaled.status.success(), "{}", String::from_utf8_lossy(&scaled.stderr));
    let before = sb.wait_status(&app, "3 workers", Duration::from_secs(30), ready(3));
    sb.systemctl(&["restart", &format!("sio@{app}.service")]);
    let restarted = sb
        .wait_status(&app, "a restarted master", Duration::from_secs(30), |s| s["pid"] != before["pid"] && ready(3)(s));

    // An upgrade with clients connected and new ones coming: the master
    // restarts, the workers and every connection stay.
    holder.probe();
    let (newer, _) = build("2");
    let upgraded = sb.exec(&["dpkg", "-i", newer.to_str().unwrap()]);
    assert!(upgraded.status.success(), "{}", String::from_utf8_lossy(&upgraded.stderr));
    let version = run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "sio"]));
    assert_eq!(version, "0.1.0-2");
    let upgraded = sb.wait_status(&app, "the upgraded master", Duration::from_secs(30), |s| {
        s["pid"] != restarted["pid"] && ready(3)(s)
    });
    assert_eq!(agent_pids(&before), agent_pids(&upgraded), "the workers were kept through restart and upgrade");
    let r = holder.report();
    assert_eq!(total_disconnects(&r), 0, "{r}");
    assert_eq!(r["probes"]["failed"], 0, "no new connection refused: {r}");
    assert!(r["probes"]["ok"].as_u64().unwrap() >= 10, "{r}");

    // The new master runs the new binary; the kept workers' agents still
    // run the old one until `sioctl reload` replaces them, as the README says.
    let exe = |pid: &serde_json::Value| {
        let out = sb.exec(&["readlink", &format!("/proc/{pid}/exe")]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(exe(&upgraded["pid"]), "/usr/bin/sio");
    for agent in agent_pids(&upgraded) {
        assert_eq!(exe(&agent), "/usr/bin/sio (deleted)", "an agent of before the upgrade");
    }
    let reloaded = sb.sioctl(&["reload", &app], None);
    assert!(reloaded.status.success(), "{}", String::from_utf8_lossy(&reloaded.stderr));
    let reloaded = sb.wait_status(&app, "reloaded workers", Duration::from_secs(60), |s| {
        ready(3)(s) && agent_pids(s).iter().all(|p| !agent_pids(&upgraded).contains(p))
    });
    for agent in agent_pids(&reloaded) {
        assert_eq!(exe(&agent), "/usr/bin/sio", "a new agent after the reload");
    }

    // Removal stops everything of sio; purge leaves only the admin's config.
    let removed = sb.exec(&["dpkg", "--remove", "sio"]);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let active = sb.systemctl(&["list-units", "--state=active", "--no-legend", "--plain", "sio*"]);
    assert_eq!(active.trim(), "", "still active after removal");
    // A drop-in the admin wrote, as the README says to, is theirs.
    let admin = Path::new("/etc/systemd/system/sio-worker-.service.d/sio-test-admin.conf");
    let admin_made_dir = !admin.parent().unwrap().exists();
    std::fs::create_dir_all(admin.parent().unwrap()).unwrap();
    std::fs::write(admin, "[Service]\nReadWritePaths=/srv\n").unwrap();
    let purged = sb.exec(&["dpkg", "--purge", "sio"]);
    let kept = admin.exists();
    let _ = std::fs::remove_file(admin);
    if admin_made_dir {
        let _ = std::fs::remove_dir(admin.parent().unwrap());
    }
    assert!(purged.status.success(), "{}", String::from_utf8_lossy(&purged.stderr));
    assert!(kept, "the admin's drop-in is kept on purge");
    for f in deb_files(&newer) {
        assert!(!Path::new(&f).exists(), "{f} left after purge");
    }
    assert!(!Path::new("/var/lib/sio").exists(), "state left after purge");
    assert!(!link.is_symlink(), "enable link left after purge");
    assert!(Path::new(&format!("/etc/sio/{app}.json")).exists(), "the admin's config is kept");
}
