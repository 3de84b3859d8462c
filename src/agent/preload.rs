//! Puts `preload.js` where Node can `--require` it.
//!
//! The script is compiled into the binary, so an agent never runs a preload
//! from another version. It is written into a folder only this user can
//! write: systemd's `RuntimeDirectory=` when there is one, else the user's
//! private runtime folder ([`crate::endpoints::private_dir`]). The file name carries a hash of the
//! content, so versions side by side never overwrite each other.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const SOURCE: &str = include_str!("preload.js");

fn content_hash() -> u64 {
    crate::stable_hash(SOURCE.as_bytes())
}

fn private_dir() -> io::Result<PathBuf> {
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may pass several, colon-separated: the first is ours.
        let first = d.to_string_lossy().split(':').next().unwrap_or_default().to_owned();
        return Ok(PathBuf::from(first));
    }
    crate::endpoints::private_dir()
}

/// Writes the preload if needed; returns its path.
pub fn install() -> io::Result<PathBuf> {
    let dir = private_dir()?;
    let path = dir.join(format!("preload-{:016x}.cjs", content_hash()));
    if fs::read(&path).is_ok_and(|b| b == SOURCE.as_bytes()) {
        return Ok(path);
    }
    write_atomically(&dir, &path)?;
    Ok(path)
}

fn write_atomically(dir: &Path, path: &Path) -> io::Result<()> {
    let tmp = dir.join(format!(".preload-{}.tmp", std::process::id()));
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        f.write_all(SOURCE.as_bytes())?;
    }
    fs::rename(&tmp, path)
}
