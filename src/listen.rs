//! Where the master's listening sockets come from: systemd socket
//! activation (`LISTEN_FDS`, from `sio@APP.socket` and `sio-bus@APP.socket`:
//! TCP for clients, the app's Unix sockets for agents and operators) or,
//! when not activated, the addresses in the app's config.

use crate::config::AppConfig;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

/// Backlog of sockets the master binds itself, as `Backlog=` in
/// `sio@.socket` (the kernel caps it at `net.core.somaxconn`). std's 128 is
/// too short: a burst overflows it, and a client whose connection was
/// dropped from a full queue only learns of it when it speaks.
const BACKLOG: i32 = 4096;

/// How long the kernel keeps a new connection that has sent nothing from
/// `accept` (`TCP_DEFER_ACCEPT`, in seconds; it is let through after that,
/// and `timeouts.head_ms` runs from then). HTTP clients speak first, so the
/// master is woken once per connection, with the head already there: no
/// peek that finds nothing, no reactor registration, no second wake-up.
/// That was the path of most connections without it (the handshake's last
/// ACK comes before the request), and it cost the master about a fifth of
/// its CPU per session.
const DEFER_ACCEPT_SECS: i32 = 1;

/// The master's listening sockets, non-blocking.
pub struct Listeners {
    pub sockets: Vec<TcpListener>,
    /// The `metrics` socket: systemd's (told apart from the app's by its
    /// address), or bound here.
    pub metrics: Option<TcpListener>,
    /// Unix sockets systemd passed, with their paths (the bus and control
    /// sockets, see [`crate::endpoints`]).
    pub unix: Vec<(PathBuf, UnixListener)>,
    /// Whether systemd passed them (then systemd, not the config, decides
    /// the addresses, and the sockets outlive the master).
    pub activated: bool,
}

/// Of the TCP sockets systemd passed (the metrics socket taken out), keeps
/// those at one of the config's `listen` addresses: a socket the unit still
/// holds from an earlier config (a changed `metrics` or `listen` before
/// `systemctl restart sio@APP.socket`) is never served as the app's, nor
/// handed to its workers. If none is at a `listen` address the unit is
/// stale as a whole, and serving what it holds beats serving nothing.
fn keep_the_apps_own(cfg: &AppConfig, sockets: &mut Vec<TcpListener>) {
    let at_listen = |l: &TcpListener| l.local_addr().is_ok_and(|a| cfg.listen.contains(&a));
    if !sockets.iter().any(at_listen) {
        if !sockets.is_empty() {
            tracing::warn!(app = %cfg.app, "none of the sockets systemd passed is at a `listen` address of {}: serving them all the same (systemctl daemon-reload, then restart sio@{}.socket)", cfg.path.display(), cfg.app);
        }
        return;
    }
    sockets.retain(|l| {
        let keep = at_listen(l);
        if !keep {
            let addr = l.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
            tracing::warn!(app = %cfg.app, "systemd passed a socket at {addr}, neither `listen` nor `metrics` of {}: not served (systemctl daemon-reload, then restart sio@{}.socket)", cfg.path.display(), cfg.app);
        }
        keep
    });
}

impl Listeners {
    /// Takes the activated sockets if there are any, else binds `listen`
    /// from the config.
    pub fn open(cfg: &AppConfig) -> io::Result<Listeners> {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::new();
        let mut unix = Vec::new();
        for i in 0..fds.len() {
            let fd = 3 + i as i32;
            let path = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd)
                .ok()
                .and_then(|a| a.as_unix_addr().and_then(|u| u.path().map(PathBuf::from)));
            match path {
                Some(path) => match fds.take_unix_listener(i)? {
                    Some(l) => unix.push((path, l)),
                    None => return Err(io::Error::other(format!("socket activation: fd {fd} is not listening"))),
                },
                None => match fds.take_tcp_listener(i)? {
                    Some(l) => sockets.push(l),
                    None => {
                        return Err(io::Error::other(format!(
                            "socket activation: fd {fd} is neither a TCP nor a Unix listening socket"
                        )))
                    }
                },
            }
        }
        let metrics_at = |l: &TcpListener| cfg.metrics.is_some_and(|m| l.local_addr().is_ok_and(|a| a == m));
        let mut metrics = sockets.iter().position(metrics_at).map(|i| sockets.remove(i));
        let activated = !sockets.is_empty();
        keep_the_apps_own(cfg, &mut sockets);
        if !activated {
            for addr in &cfg.listen {
                let l = TcpListener::bind(addr).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} (field `listen` of {}): {e}", cfg.path.display()),
                    )
                })?;
                // Listening again only changes the backlog. (nix's Backlog
                // refuses values above its compiled-in SOMAXCONN of 128.)
                // SAFETY: plain syscall on a socket we own.
                if unsafe { nix::libc::listen(l.as_raw_fd(), BACKLOG) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                sockets.push(l);
            }
        }
        if let (None, Some(addr), true) = (&metrics, cfg.metrics, activated) {
            // Under systemd the master may not open sockets to the network
            // itself (IPAddressDeny=): the socket unit must hold it.
            tracing::warn!(app = %cfg.app, "metrics {addr} is not among the sockets systemd passed: not served (systemctl daemon-reload, then restart sio@{}.socket)", cfg.app);
        } else if let (None, Some(addr)) = (&metrics, cfg.metrics) {
            let l = TcpListener::bind(addr).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} (field `metrics` of {}): {e}", cfg.path.display()),
                )
            })?;
            metrics = Some(l);
        }
        for s in &sockets {
            defer_accept(s)?;
            // As `NoDelay=yes` in `sio@.socket`, and as Node's own HTTP
            // server sets on each socket it accepts: accepted sockets
            // inherit it, so the worker's small writes (a polling answer
            // written in pieces, a websocket frame) do not wait for the
            // client's ACK of the last one.
            nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::TcpNoDelay, &true)?;
        }
        for s in sockets.iter().chain(&metrics) {
            s.set_nonblocking(true)?;
        }
        for (_, u) in &unix {
            u.set_nonblocking(true)?;
        }
        Ok(Listeners { sockets, metrics, unix, activated })
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.sockets.iter().filter_map(|s| s.local_addr().ok()).collect()
    }
}

/// Sets [`DEFER_ACCEPT_SECS`] on a client socket (systemd's or ours: the
/// option lives on the socket, so it holds for the masters after this one).
fn defer_accept(l: &TcpListener) -> io::Result<()> {
    use nix::libc::{c_int, c_void, setsockopt, socklen_t, IPPROTO_TCP, TCP_DEFER_ACCEPT};
    let secs: c_int = DEFER_ACCEPT_SECS;
    // SAFETY: the value points to a c_int that outlives the call, and its
    // size is passed with it. (nix has no TCP_DEFER_ACCEPT.)
    let r = unsafe {
        setsockopt(
            l.as_raw_fd(),
            IPPROTO_TCP,
            TCP_DEFER_ACCEPT,
            (&secs as *const c_int).cast::<c_void>(),
            std::mem::size_of::<c_int>() as socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{getsockopt, sockopt};

    #[test]
    fn a_passed_socket_at_no_listen_address_is_not_the_apps() {
        let (app, stale) = (TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap());
        let (at, stale_at) = (app.local_addr().unwrap(), stale.local_addr().unwrap());
        let cfg = |listen: std::net::SocketAddr| {
            let text = format!(r#"{{"command": ["n"], "listen": "{listen}"}}"#);
            AppConfig::parse(std::path::Path::new("/etc/sio/a.json"), &text).unwrap()
        };
        let mut passed = vec![app, stale];
        keep_the_apps_own(&cfg(at), &mut passed);
        assert_eq!(passed.iter().map(|l| l.local_addr().unwrap()).collect::<Vec<_>>(), [at], "{stale_at} left out");
        // A unit that holds nothing of this config: what it holds is served.
        keep_the_apps_own(&cfg("127.0.0.1:1".parse().unwrap()), &mut passed);
        assert_eq!(passed.len(), 1);
    }

    #[test]
    fn a_connection_accepted_from_a_socket_of_the_config_is_nodelay() {
        // Under `sio up` the master binds the config's addresses itself;
        // it must give them what `sio@.socket` gives systemd's.
        let dir = std::env::temp_dir().join(format!("sio-listen-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nodelay.json");
        std::fs::write(&path, r#"{"command": ["node", "worker.js"], "listen": ["127.0.0.1:0"]}"#).unwrap();
        let cfg = AppConfig::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let listeners = Listeners::open(&cfg).unwrap();
        let addr = listeners.addresses()[0];
        let client = std::net::TcpStream::connect(addr).unwrap();
        // TCP_DEFER_ACCEPT holds the connection until it speaks.
        std::io::Write::write_all(&mut &client, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let listener = &listeners.sockets[0];
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(getsockopt(&accepted, sockopt::TcpNoDelay).unwrap(), "the worker would get a socket with Nagle on");
    }
}
