//! `sio provision APP`: what `sio-bus@APP.socket` runs, as root, before it
//! binds the app's bus. It makes the app's own user and group
//! ([`crate::systemd::app_user`], with systemd-sysusers, the master's user
//! a member so that it reads what the app reads), before the socket is
//! given to that group; and it lets that group read the app's config,
//! which the worker's agent reads as that user.
//!
//! After an upgrade from a release where every app's workers ran as
//! `sio-app`, the package runs it for every app once the masters have
//! adopted the old workers: the app's bus, bound back then for `sio-app`,
//! becomes its own group's, and a reload moves the workers over.

use crate::systemd::app_user;
use nix::unistd::{Gid, Group};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// The group every app shared before one user per app: a config of that
/// group was made readable by all apps, as the README said then.
const LEGACY_GROUP: &str = "sio-app";

/// What becomes of a config file's group and mode: `Some` if it changes.
/// A config of root's group, or of the group all apps once shared, is
/// given to the app's group, which may read it; one an admin gave another
/// group is left as it is.
pub fn config_access(gid: u32, mode: u32, app_gid: u32, legacy_gid: Option<u32>) -> Option<(u32, u32)> {
    if gid == app_gid && mode & 0o040 != 0 {
        return None;
    }
    let ours = gid == 0 || gid == app_gid || Some(gid) == legacy_gid;
    ours.then_some((app_gid, (mode & 0o7777) | 0o040))
}

/// Makes the user and group of `app` and lets them read its config in
/// `config_dir`. Returns what it did and what the admin should know.
pub fn provision(app: &str, config_dir: &Path) -> Result<Vec<String>, String> {
    if !crate::config::valid_app_name(app) {
        return Err(format!("app name {app:?} must be 1-64 of A-Z a-z 0-9 _ -"));
    }
    let user = app_user(app);
    let lines = [format!("u {user} - \"sio workers of {app}\" / -"), format!("m sio {user}")];
    let out = Command::new("systemd-sysusers")
        .arg("--inline")
        .args(&lines)
        .output()
        .map_err(|e| format!("cannot run systemd-sysusers: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemd-sysusers cannot make user {user}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let group = |name: &str| Group::from_name(name).ok().flatten().map(|g| g.gid);
    let app_gid = group(&user).ok_or_else(|| format!("systemd-sysusers made no group {user}"))?;
    let mut notes = vec![];
    let path = config_dir.join(format!("{app}.json"));
    // Not through a link: root changes only the file that is there.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(&path)
    {
        Ok(f) => f,
        // The master says what is wrong with a missing config.
        Err(e) => {
            notes.push(format!("{}: {e}; left as it is", path.display()));
            return Ok(notes);
        }
    };
    let meta = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if let Some((gid, mode)) =
        config_access(meta.gid(), meta.mode(), app_gid.as_raw(), group(LEGACY_GROUP).map(Gid::as_raw))
    {
        std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(|e| format!("{}: chgrp: {e}", path.display()))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: chmod: {e}", path.display()))?;
        notes.push(format!("{} is now of group {user}, mode {mode:04o}: the app's workers read it", path.display()));
    }
    let bus = Path::new(crate::endpoints::SYSTEM_DIR).join(format!("{app}.bus"));
    if let Ok(socket) = std::fs::symlink_metadata(&bus) {
        let legacy = group(LEGACY_GROUP).map(Gid::as_raw);
        if socket.file_type().is_socket() && Some(socket.gid()) == legacy {
            nix::unistd::fchownat(None, &bus, None, Some(app_gid), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| format!("{}: chgrp: {e}", bus.display()))?;
            notes.push(format!(
                "{} is now of group {user}: `systemctl reload sio@{app}.service` moves the workers to it",
                bus.display()
            ));
        }
    }
    if meta.mode() & 0o004 != 0 {
        notes.push(format!(
            "{} is readable by every local user, other apps' code included: `chmod o-rwx` it if it holds secrets",
            path.display()
        ));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_of_root_or_of_the_old_shared_group_becomes_the_apps_and_another_group_stays() {
        let (app, legacy) = (990, Some(980));
        assert_eq!(config_access(0, 0o100600, app, legacy), Some((app, 0o640)), "root's: the app may read it");
        assert_eq!(config_access(0, 0o100644, app, legacy), Some((app, 0o644)));
        assert_eq!(config_access(980, 0o100640, app, legacy), Some((app, 0o640)), "the group all apps shared");
        assert_eq!(config_access(app, 0o100600, app, legacy), Some((app, 0o640)), "the app's, not readable");
        assert_eq!(config_access(app, 0o100640, app, legacy), None, "already right");
        assert_eq!(config_access(1234, 0o100640, app, legacy), None, "an admin's choice");
        assert_eq!(config_access(1234, 0o100640, app, None), None);
        assert_eq!(config_access(0, 0o104600, app, None), Some((app, 0o4640)), "only the group's read bit changes");
    }
}
