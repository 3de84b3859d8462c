//! Where an app's two Unix sockets live, and who may be on their other end.
//!
//! * The **bus** (`APP.bus`) carries agents: only the master's user, the
//!   app's group and root can connect (mode 0660).
//! * The **control** socket (`APP.control`) carries operators: any local
//!   user may connect and read the status; the master checks who asks
//!   before it changes anything.
//!
//! Under systemd both are path sockets in `/run/sio`, created and held by
//! systemd (`sio-bus@APP.socket`, `sio@APP.socket`): they exist before the
//! master and outlive its restarts, so an agent never reconnects to a
//! stranger and nobody can take the names first. Under `sio up` the master
//! binds them in a private folder of its user (mode 0700):
//! `$SIO_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/sio`, else `/tmp/sio-UID`.
//! Clients (agents, `sioctl`) look in `$SIO_RUNTIME_DIR`, then `/run/sio`,
//! then the private folder, and talk only to a server that runs as root,
//! as the `sio` user, or as themselves.

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where systemd's socket units put the sockets (`sio@.socket`, `sio-bus@.socket`).
pub const SYSTEM_DIR: &str = "/run/sio";

/// The system user the master runs as under systemd (see `systemd/sio.sysusers`).
pub const MASTER_USER: &str = "sio";

/// An app's sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub bus: PathBuf,
    pub control: PathBuf,
}

impl Endpoints {
    pub fn in_dir(dir: &Path, app: &str) -> Endpoints {
        Endpoints { bus: dir.join(format!("{app}.bus")), control: dir.join(format!("{app}.control")) }
    }

    /// Where the systemd units put them.
    pub fn system(app: &str) -> Endpoints {
        Endpoints::in_dir(Path::new(SYSTEM_DIR), app)
    }

    /// Where a client finds them: `$SIO_RUNTIME_DIR`, else systemd's
    /// folder if the app has sockets there, else this user's private folder.
    pub fn find(app: &str) -> Endpoints {
        if let Some(dir) = std::env::var_os("SIO_RUNTIME_DIR") {
            return Endpoints::in_dir(Path::new(&dir), app);
        }
        let system = Endpoints::system(app);
        if system.control.exists() || system.bus.exists() {
            return system;
        }
        Endpoints::in_dir(&private_dir_path(), app)
    }
}

/// The apps whose masters have a control socket where this user's clients
/// look (`$SIO_RUNTIME_DIR`, else systemd's folder and this user's private
/// one), whatever folder their config is in: name and socket, sorted.
/// A socket whose master is gone is listed too; asking it tells.
pub fn running_apps() -> Vec<(String, PathBuf)> {
    let dirs = match std::env::var_os("SIO_RUNTIME_DIR") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![PathBuf::from(SYSTEM_DIR), private_dir_path()],
    };
    let mut apps = Vec::new();
    for dir in dirs {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let is_socket = entry.file_type().is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_socket(&t));
            let name = path.file_stem().and_then(|n| n.to_str()).filter(|n| crate::config::valid_app_name(n));
            if let (true, Some(name), Some("control")) = (is_socket, name, path.extension().and_then(|e| e.to_str())) {
                if !apps.iter().any(|(n, _)| n == name) {
                    apps.push((name.to_owned(), path.clone()));
                }
            }
        }
    }
    apps.sort();
    apps
}

/// This user's private runtime folder (not created).
fn private_dir_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("SIO_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(x) => PathBuf::from(x).join("sio"),
        None => std::env::temp_dir().join(format!("sio-{}", nix::unistd::geteuid().as_raw())),
    }
}

/// Creates (if needed) and checks this user's private runtime folder: a
/// directory of this uid that nobody else may enter (as ssh-agent does
/// for its socket folder), so that nobody else can bind or replace what
/// is in it.
pub fn private_dir() -> io::Result<PathBuf> {
    let dir = private_dir_path();
    let uid = nix::unistd::geteuid().as_raw();
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))),
    }
    let meta = fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} must be a folder of uid {uid} that nobody else may enter (mode 0700)",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The uid of the `sio` system user, if it exists.
pub fn master_user_uid() -> Option<u32> {
    nix::unistd::User::from_name(MASTER_USER).ok().flatten().map(|u| u.uid.as_raw())
}

/// Whether a server with this uid may be trusted by a client of `own` uid:
/// root (systemd holds the sockets of the units, so the kernel names PID 1
/// as their peer), the `sio` user, or the client itself (`sio up`).
pub fn trusted_server_uid(uid: u32, own: u32, master_user: Option<u32>) -> bool {
    uid == 0 || uid == own || Some(uid) == master_user
}

/// Checks the server on the other end of a connected socket (see
/// [`trusted_server_uid`]); the error names it by the kernel's pid and uid.
pub fn check_server(stream: &impl AsFd, path: &Path) -> Result<(), String> {
    let creds =
        getsockopt(stream, PeerCredentials).map_err(|e| format!("{}: no peer credentials: {e}", path.display()))?;
    let own = nix::unistd::geteuid().as_raw();
    if trusted_server_uid(creds.uid(), own, master_user_uid()) {
        return Ok(());
    }
    Err(format!(
        "{} is served by pid {} of uid {}, neither root, the {MASTER_USER} user nor this user: not talking to it",
        path.display(),
        creds.pid(),
        creds.uid()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_named_after_the_app_in_their_folder() {
        let e = Endpoints::system("chat");
        assert_eq!(e.bus, Path::new("/run/sio/chat.bus"));
        assert_eq!(e.control, Path::new("/run/sio/chat.control"));
    }

    #[test]
    fn only_root_the_master_user_or_oneself_serve() {
        assert!(trusted_server_uid(0, 1000, Some(990)));
        assert!(trusted_server_uid(990, 1000, Some(990)));
        assert!(trusted_server_uid(1000, 1000, Some(990)));
        assert!(!trusted_server_uid(65534, 1000, Some(990)));
        assert!(!trusted_server_uid(65534, 0, None));
    }
}
