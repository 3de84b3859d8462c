//! A real systemd per test: PID 1 of its own PID + mount + cgroup
//! namespaces, with only journald, D-Bus, polkit (with the repo's rule in
//! place of the host's /etc/polkit-1/rules.d) and the repo's units (their
//! `/usr/bin/sio*` paths pointed at the fresh build), run as the users of
//! the repo's sysusers.d entry; or ([`Sandbox::boot_installed`]) the units,
//! generator and rule an installed package put in place, unmodified. The network namespace
//! is shared, so its sockets are reachable on 127.0.0.1 directly.
//!
//! Pitfalls avoided (see the design notes): the unit path never ends with
//! `:` (that would pull in the host's units, and systemd-tmpfiles would wipe
//! the host's /tmp); the sandbox gets a cgroup of its own in every hierarchy
//! and unmounts the host's cgroup tree, so sandboxes never see each other.
//! The unit path keeps systemd's `/run/systemd/system.control`, where
//! `SetUnitProperties` (the master applying an app's limits) writes its
//! drop-ins: without it they would be lost whenever the unit is reloaded.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const STUB_TARGETS: &[&str] = &[
    "sysinit",
    "basic",
    "sockets",
    "shutdown",
    "timers",
    "paths",
    "slices",
    "network",
    "network-online",
    "multi-user",
    "default",
];
const HOST_UNITS: &[&str] = &[
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
    "dbus.service",
    "dbus.socket",
    // The unprivileged master starts and stops its workers through polkit.
    "polkit.service",
];

/// The masters' user, from the repo's sysusers.d entry (on the host: the
/// sandbox shares its /etc/passwd; each app's user is made by its bus
/// socket, `sio provision`). Also checks that other users can reach the
/// build and the test fixtures.
fn ensure_users() {
    let sysusers = super::repo().join("systemd/sio.sysusers");
    let out = Command::new("systemd-sysusers").arg(&sysusers).output().unwrap();
    assert!(out.status.success(), "systemd-sysusers: {}", String::from_utf8_lossy(&out.stderr));
    for (user, group) in [("sio", "sio"), ("nobody", "nogroup")] {
        let path = env!("CARGO_BIN_EXE_sio");
        let ok = Command::new("setpriv")
            .args([&format!("--reuid={user}"), &format!("--regid={group}"), "--clear-groups", "test", "-x", path])
            .status()
            .unwrap()
            .success();
        assert!(ok, "user {user} cannot run {path}: the checkout's folders must be open to other users (chmod o+x)");
    }
    let worker = super::node_dir().join("worker.js");
    let ok = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "test", "-r"])
        .arg(&worker)
        .status()
        .unwrap()
        .success();
    assert!(ok, "user nobody cannot read {}: the checkout must be readable by other users", worker.display());
}

pub struct Sandbox {
    pub dir: PathBuf,
    pub config_dir: PathBuf,
    /// The `sioctl` the tests run: the build's, or the installed one.
    sioctl: PathBuf,
    /// `unshare`, the parent of the sandbox's PID 1.
    enter: std::process::Child,
    /// The sandbox's PID 1 (0 until it is found).
    pid: u32,
}

fn sh(script: &str) -> Output {
    Command::new("sh").arg("-c").arg(script).output().unwrap()
}

/// Where a sandbox's sio units come from.
#[derive(Clone, Copy)]
enum Units<'a> {
    /// This checkout's units, pointed at the fresh build, with its apps
    /// `configs` in a folder of the sandbox's own.
    Build { configs: &'a [(&'a str, serde_json::Value)] },
    /// What the package installed, copied unmodified (apps in /etc/sio).
    Installed,
}

impl Sandbox {
    /// Boots a sandbox whose /etc/sio is `configs` (name, JSON).
    pub fn boot(name: &str, configs: &[(&str, serde_json::Value)]) -> Sandbox {
        Sandbox::boot_with(name, Units::Build { configs })
    }

    /// Boots a sandbox that runs the units and generator the installed
    /// package put in place, unmodified, and the apps of /etc/sio.
    pub fn boot_installed(name: &str) -> Sandbox {
        Sandbox::boot_with(name, Units::Installed)
    }

    fn boot_with(name: &str, source: Units) -> Sandbox {
        if matches!(source, Units::Build { .. }) {
            ensure_users();
        }
        // Not under /tmp: the units run with PrivateTmp=yes.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sandbox-{name}"));
        let _ = fs::remove_dir_all(&dir);
        let units = dir.join("units");
        let config_dir = match source {
            Units::Installed => PathBuf::from("/etc/sio"),
            Units::Build { .. } => dir.join("etc-sio"),
        };
        let state_dir = dir.join("state");
        let generators = dir.join("generators");
        let polkit_rules = dir.join("polkit-rules");
        for d in [&units, &config_dir, &state_dir, &generators, &polkit_rules] {
            fs::create_dir_all(d).unwrap();
        }
        for t in STUB_TARGETS {
            fs::write(units.join(format!("{t}.target")), format!("[Unit]\nDescription=sandbox stub {t}\n")).unwrap();
        }
        for u in HOST_UNITS {
            fs::copy(Path::new("/lib/systemd/system").join(u), units.join(u)).unwrap();
        }
        // The workers' units are the generator's, one template per app.
        const SIO_UNITS: [&str; 3] = ["sio@.socket", "sio-bus@.socket", "sio@.service"];
        match source {
            Units::Installed => {
                for unit in SIO_UNITS {
                    fs::copy(Path::new("/usr/lib/systemd/system").join(unit), units.join(unit)).unwrap();
                }
                let generator = Path::new("/usr/lib/systemd/system-generators/sio-generator");
                fs::copy(generator, generators.join("sio-generator")).unwrap();
                // polkit reads the package's rule where it put it
                // (/usr/share/polkit-1/rules.d); /etc's stays hidden.
                // Docker images deny every start and stop of a maintainer
                // script (policy-rc.d exits 101); the sandbox stands for a
                // server, which has no such policy.
                fs::write(dir.join("policy-rc.d"), "#!/bin/sh\nexit 0\n").unwrap();
                sh(&format!("chmod +x {}", dir.join("policy-rc.d").display()));
            }
            Units::Build { configs } => {
                // The master's state directory is its user's (StateDirectory=
                // does that for /var/lib/sio).
                sh(&format!("chown sio:sio {}", state_dir.display()));
                fs::copy(super::repo().join("systemd/sio.rules"), polkit_rules.join("50-sio.rules")).unwrap();
                for (app, cfg) in configs {
                    let path = config_dir.join(format!("{app}.json"));
                    fs::write(path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
                }
                let sio = env!("CARGO_BIN_EXE_sio");
                let sioctl = env!("CARGO_BIN_EXE_sioctl");
                let repo_units = super::repo().join("systemd");
                for unit in SIO_UNITS {
                    let text = fs::read_to_string(repo_units.join(unit)).unwrap();
                    let text = text.replace("/usr/bin/sioctl", sioctl).replace("/usr/bin/sio ", &format!("{sio} "));
                    fs::write(units.join(unit), text).unwrap();
                }
                // The checkout (binaries, fixtures) may live under /tmp or a
                // home folder, which the units hide (PrivateTmp=,
                // ProtectHome=): lift that for tests. What the tests check
                // does not depend on it. The apps' `node` is the tests' own
                // (tests/run puts the pinned release first in PATH).
                let env = format!(
                    "[Service]\nEnvironment=SIO_CONFIG_DIR={} SIO_STATE_DIR={} SIO_LOG=info,sio=debug\nReadWritePaths={}\n\
                     PrivateTmp=no\nProtectHome=no\nEnvironment=\"PATH={}\"\n",
                    config_dir.display(),
                    state_dir.display(),
                    state_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                );
                // `sio-worker-.service.d`: every app's worker template.
                let provision = format!("[Socket]\nEnvironment=SIO_CONFIG_DIR={}\n", config_dir.display());
                for (unit, env) in
                    [("sio@.service", &env), ("sio-worker-.service", &env), ("sio-bus@.socket", &provision)]
                {
                    let d = units.join(format!("{unit}.d"));
                    fs::create_dir_all(&d).unwrap();
                    fs::write(d.join("50-test.conf"), env).unwrap();
                }
                let generator = format!(
                    "#!/bin/sh\nSIO_CONFIG_DIR={} SIO_BIN={sio} exec {} \"$@\"\n",
                    config_dir.display(),
                    env!("CARGO_BIN_EXE_sio-generator")
                );
                fs::write(generators.join("sio-generator"), generator).unwrap();
                sh(&format!("chmod +x {}", generators.join("sio-generator").display()));
            }
        }

        let boot = format!(
            "#!/bin/sh\nmount -t tmpfs tmpfs /run\nmkdir -p /run/systemd\numount -R /sys/fs/cgroup\n\
             mount --bind {polkit_rules} /etc/polkit-1/rules.d\n\
             [ -e {dir}/policy-rc.d ] && [ -e /usr/sbin/policy-rc.d ] && mount --bind {dir}/policy-rc.d /usr/sbin/policy-rc.d\n\
             export SYSTEMD_UNIT_PATH={units}:/run/systemd/system.control:/run/systemd/generator\nexport SYSTEMD_GENERATOR_PATH={generators}\n\
             export container=sio-test\nexec /lib/systemd/systemd --system --unit=default.target\n",
            units = units.display(),
            generators = generators.display(),
            polkit_rules = polkit_rules.display(),
            dir = dir.display()
        );
        let cg = format!("sio-test-{name}");
        let enter = format!(
            r#"#!/bin/sh
for h in /sys/fs/cgroup/*/; do
  h=${{h%/}}; name=${{h##*/}}
  case $name in unified) pat='^0::' ;; systemd) pat='^[0-9]+:name=systemd:' ;; *) pat="^[0-9]+:$name:" ;; esac
  here=$(grep -E "$pat" /proc/self/cgroup | head -1 | cut -d: -f3)
  [ "$here" = / ] && here=
  mkdir -p $h$here/{cg} 2>/dev/null && echo $h$here/{cg} >> {dir}/cgroups && echo $$ 2>/dev/null > $h$here/{cg}/cgroup.procs
done
exec unshare --pid --fork --mount --propagation private --mount-proc --cgroup {dir}/boot
"#,
            dir = dir.display()
        );
        fs::write(dir.join("boot"), boot).unwrap();
        fs::write(dir.join("enter"), enter).unwrap();
        sh(&format!("chmod +x {0}/boot {0}/enter", dir.display()));
        let console = fs::File::create(dir.join("console.log")).unwrap();
        let enter = Command::new("setsid")
            .arg(dir.join("enter"))
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .unwrap();
        // From here on, dropping the sandbox cleans up, whatever fails.
        let sioctl = match source {
            Units::Installed => PathBuf::from("/usr/bin/sioctl"),
            Units::Build { .. } => PathBuf::from(env!("CARGO_BIN_EXE_sioctl")),
        };
        let mut sandbox = Sandbox { dir, config_dir, sioctl, enter, pid: 0 };
        // PID 1 of the sandbox: the child of `unshare`, which `enter` became.
        let t0 = Instant::now();
        sandbox.pid = loop {
            if let Some(&p) = super::children_of(sandbox.enter.id()).first() {
                let cmdline = fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
                if cmdline.starts_with("/lib/systemd/systemd") {
                    break p;
                }
            }
            let console = fs::read_to_string(sandbox.dir.join("console.log")).unwrap_or_default();
            assert!(t0.elapsed() < Duration::from_secs(10), "sandbox systemd did not start: {console}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let t0 = Instant::now();
        loop {
            let state = sandbox.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout);
            if state.starts_with("running") || state.starts_with("degraded") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "sandbox not running: {state}");
            std::thread::sleep(Duration::from_millis(50));
        }
        sandbox.systemctl(&[
            "start",
            "systemd-journald.socket",
            "systemd-journald-dev-log.socket",
            "systemd-journald.service",
            "dbus.socket",
            "dbus.service",
            "polkit.service",
        ]);
        sandbox
    }

    /// Adds a drop-in to `unit` (a file in the sandbox's unit folder, so
    /// `daemon-reload` sees it).
    pub fn drop_in(&self, unit: &str, content: &str) {
        let d = self.dir.join("units").join(format!("{unit}.d"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("60-test.conf"), content).unwrap();
        self.systemctl(&["daemon-reload"]);
    }

    /// Runs a command inside the sandbox (its PID and mount namespaces).
    pub fn exec(&self, args: &[&str]) -> Output {
        self.command(None, args).output().unwrap()
    }

    /// A command to run inside the sandbox, as `user` if given.
    pub fn command(&self, user: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.pid.to_string()).args(["-p", "-m"]);
        if let Some(u) = user {
            let found = match u.parse::<u32>() {
                Ok(uid) => nix::unistd::User::from_uid(uid.into()),
                Err(_) => nix::unistd::User::from_name(u),
            };
            let found = found.unwrap().unwrap_or_else(|| panic!("no user {u}"));
            cmd.args([
                "setpriv",
                &format!("--reuid={}", found.uid),
                &format!("--regid={}", found.gid),
                "--init-groups",
            ]);
        }
        cmd.args(args);
        cmd
    }

    /// `systemctl ARGS`, which must succeed; returns its stdout.
    pub fn systemctl(&self, args: &[&str]) -> String {
        let out = self.exec(&[&["systemctl"], args].concat());
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal(&["-n", "60"])
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn journal(&self, args: &[&str]) -> String {
        let out = self.exec(&[&["journalctl", "--no-pager"], args].concat());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sioctl ARGS` inside the sandbox (as root unless `uid` is given).
    pub fn sioctl(&self, args: &[&str], uid: Option<u32>) -> Output {
        let mut full: Vec<String> = vec![self.sioctl.display().to_string()];
        full.extend(["--config-dir".into(), self.config_dir.display().to_string()]);
        full.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.command(uid.map(|u| u.to_string()).as_deref(), &refs).output().unwrap()
    }

    /// `sioctl status APP --json`.
    pub fn status(&self, app: &str) -> Option<serde_json::Value> {
        let out = self.sioctl(&["status", app, "--json"], None);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    pub fn wait_status(
        &self,
        app: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.status(app) {
                if ok(&s) {
                    return s;
                }
            }
            assert!(
                t0.elapsed() < timeout,
                "timed out waiting for {what}; status {:?}\n{}",
                self.status(app),
                self.journal(&["-n", "80"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Names of the loaded `sio-worker-APP@*` units that are active.
    pub fn active_workers(&self, app: &str) -> Vec<String> {
        let out =
            self.systemctl(&["list-units", "--state=active", "--no-legend", "--plain", &format!("sio-worker-{app}@*")]);
        let mut units: Vec<String> =
            out.lines().filter_map(|l| l.split_whitespace().next().map(str::to_owned)).collect();
        units.sort();
        units
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(300));
        for cg in fs::read_to_string(self.dir.join("cgroups")).unwrap_or_default().lines() {
            let _ = sh(&format!("[ -d '{cg}' ] && find '{cg}' -depth -type d -exec rmdir {{}} \\; 2>/dev/null"));
        }
        // The users `sio provision` made for the test's apps (system uids
        // are few: a machine that runs the tests often would run out).
        if self.config_dir != Path::new("/etc/sio") {
            for entry in fs::read_dir(&self.config_dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if let Some(app) =
                    path.file_stem().and_then(|s| s.to_str()).filter(|_| path.extension().is_some_and(|x| x == "json"))
                {
                    let user = sio::systemd::app_user(app);
                    let _ = sh(&format!("userdel {user} 2>/dev/null; groupdel {user} 2>/dev/null"));
                }
            }
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
