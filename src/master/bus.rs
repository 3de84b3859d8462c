//! The master's side of the bus: admitting peers, serving agents (handoff
//! confirmations, session announcements, adapter frames to relay) and
//! operators (`sioctl`).
//!
//! Abstract sockets have no file permissions, and any process in the
//! network namespace can connect, so every peer is checked with
//! `SO_PEERCRED` before it may say anything: same uid as the master, or
//! root. Anything else is refused with a log line.

use super::{Master, Peer};
use crate::control::{Request, Response};
use crate::handoff::{is_disconnect, Bytes, FrameReader, Link, Prefix};
use crate::wire::{self, Role, ToAgent, ToMaster, PROTOCOL_VERSION};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials, UnixCredentials};
use std::collections::HashMap;
use std::os::linux::net::SocketAddrExt;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

/// A peer must introduce itself within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted before a peer is admitted.
const MAX_HELLO: usize = 4096;
/// Dropped-frame warnings per worker are rate-limited to one per this.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Binds the app's abstract bus socket. Failing to bind means another
/// master of the same app runs in this network namespace.
pub(super) fn listen(app: &str) -> std::io::Result<UnixListener> {
    let name = wire::bus_address(app);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let l = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(e.kind(), format!("another master of {app:?} is running (bus @{name} is taken)"))
        } else {
            std::io::Error::new(e.kind(), format!("cannot bind bus @{name}: {e}"))
        }
    })?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}

/// Connects to an app's bus (agents and `sioctl`).
pub fn connect(app: &str) -> std::io::Result<UnixStream> {
    let name = wire::bus_address(app);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
    s.set_nonblocking(true)?;
    UnixStream::from_std(s)
}

impl Master {
    /// Admits peers until the master is dropped (it keeps serving handoff
    /// confirmations while it stops).
    pub(super) async fn bus_loop(self: Rc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::task::spawn_local(self.clone().admit(stream));
                }
                Err(e) => {
                    warn!(app = %self.cfg.app, "bus accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn admit(self: Rc<Self>, stream: UnixStream) {
        let creds = match getsockopt(&stream, PeerCredentials) {
            Ok(c) => c,
            Err(e) => return warn!(app = %self.cfg.app, "bus peer without credentials: {e}"),
        };
        let link = Link::new(stream);
        tokio::task::spawn_local({
            let link = link.clone();
            async move {
                let _ = link.write_loop().await;
            }
        });
        let mut reader = FrameReader::new(Prefix::Bus, MAX_HELLO);
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, reader.next(&link)).await {
            Ok(Ok(Some(body))) => ToMaster::decode(body),
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return debug!(app = %self.cfg.app, "bus peer failed before hello: {e}"),
            Err(_) => return warn!(app = %self.cfg.app, peer_pid = creds.pid(), "bus peer said nothing: dropped"),
        };
        let role = match hello {
            Ok(ToMaster::Hello { version: PROTOCOL_VERSION, role }) => role,
            Ok(ToMaster::Hello { version, .. }) => {
                warn!(app = %self.cfg.app, version, "bus peer speaks another protocol version");
                return refuse(
                    &link,
                    &format!("protocol version {version} not supported (this master speaks {PROTOCOL_VERSION})"),
                );
            }
            Ok(_) | Err(_) => {
                warn!(app = %self.cfg.app, peer_pid = creds.pid(), "bus peer did not start with hello: dropped");
                return refuse(&link, "expected hello");
            }
        };
        reader.set_max(wire::MAX_FRAME);
        match role {
            Role::Agent { app, slot, pid } => {
                let me = nix::unistd::geteuid().as_raw();
                if creds.uid() != me && creds.uid() != 0 {
                    self.st.borrow_mut().counters.refused_peers += 1;
                    warn!(app = %self.cfg.app, peer_uid = creds.uid(), peer_pid = creds.pid(), master_uid = me, "refused bus peer: its uid is neither the master's nor root's");
                    return refuse(&link, "permission denied: uid not allowed to serve this app");
                }
                if app != self.cfg.app {
                    return refuse(&link, &format!("this bus belongs to app {:?}, not {app:?}", self.cfg.app));
                }
                if !self.st.borrow_mut().router.connected(slot) {
                    warn!(app = %self.cfg.app, worker = slot, pid, "second agent for one slot refused");
                    return refuse(&link, &format!("slot {slot} already has an agent"));
                }
                self.st.borrow_mut().peers.insert(slot, Peer { link: link.clone(), pid, in_flight: HashMap::new() });
                welcome(&link);
                info!(app = %self.cfg.app, worker = slot, pid, "worker connected");
                self.worker_changed();
                self.serve_agent(slot, &link, reader).await;
                self.agent_gone(slot);
            }
            Role::Control => {
                welcome(&link);
                self.serve_control(&link, reader, creds).await;
                link.close();
            }
        }
    }

    async fn serve_agent(self: &Rc<Self>, slot: u16, link: &Link, mut reader: FrameReader) {
        let mut last_drop_warning: Option<Instant> = None;
        loop {
            // Agents never send fds; close any that arrive.
            reader.fds.clear();
            let body = match reader.next(link).await {
                Ok(Some(body)) => body,
                Ok(None) => return,
                Err(e) if is_disconnect(&e) => return,
                Err(e) => return warn!(app = %self.cfg.app, worker = slot, "agent link failed: {e}"),
            };
            let msg = match ToMaster::decode(body) {
                Ok(m) => m,
                Err(e) => return warn!(app = %self.cfg.app, worker = slot, "agent sent a bad frame ({e}): dropped"),
            };
            let now = Instant::now();
            match msg {
                ToMaster::Ready => {
                    self.st.borrow_mut().router.ready(slot);
                    info!(app = %self.cfg.app, worker = slot, "worker ready");
                    self.worker_changed();
                }
                ToMaster::SessionOpened(sid) => {
                    debug!(app = %self.cfg.app, worker = slot, sid = %sid, "session opened");
                    self.st.borrow_mut().router.session_opened(slot, &sid, now);
                    // A request may be waiting for exactly this announcement.
                    if !self.st.borrow().waiting.is_empty() {
                        self.retry_waiting();
                    }
                }
                ToMaster::SessionClosed(sid) => self.st.borrow_mut().router.session_closed(slot, &sid),
                ToMaster::HandoffDone(id) => {
                    let mut st = self.st.borrow_mut();
                    st.peers.get_mut(&slot).and_then(|p| p.in_flight.remove(&id));
                }
                ToMaster::HandoffFailed(id) => {
                    let flight = self.st.borrow_mut().peers.get_mut(&slot).and_then(|p| p.in_flight.remove(&id));
                    if let Some(flight) = flight {
                        self.reroute(flight);
                    }
                }
                ToMaster::AdapterSeen { uid, nsp } => self.st.borrow_mut().router.adapter_seen(slot, &uid, &nsp),
                ToMaster::Adapter { header, frame } => {
                    let mut st = self.st.borrow_mut();
                    let st = &mut *st;
                    st.router.adapter_seen(slot, &header.uid, &header.nsp);
                    let out: Bytes = ToAgent::Adapter(frame).to_frame().into();
                    for target in st.router.relay_targets(slot, &header) {
                        let Some(peer) = st.peers.get(&target) else {
                            continue;
                        };
                        if peer.link.queued_bytes() + out.len() > self.cfg.limits.bus_queue_bytes {
                            st.counters.dropped_frames += 1;
                            if last_drop_warning.is_none_or(|t| now.duration_since(t) > DROP_WARNING_EVERY) {
                                last_drop_warning = Some(now);
                                warn!(app = %self.cfg.app, worker = target, queued = peer.link.queued_bytes(), "worker reads the bus too slowly: dropping adapter frames for it");
                            }
                            continue;
                        }
                        peer.link.send(out.clone(), None);
                        st.counters.relayed_frames += 1;
                    }
                }
                ToMaster::Hello { .. } | ToMaster::Control(_) => {
                    return warn!(app = %self.cfg.app, worker = slot, "agent sent an unexpected frame: dropped");
                }
            }
        }
    }

    /// Operators: anyone may read the status; scaling and reloading need
    /// root, the master's own user, or the app's `control_group`.
    async fn serve_control(self: &Rc<Self>, link: &Link, mut reader: FrameReader, creds: UnixCredentials) {
        let reply = |r: &Response| {
            link.send(
                ToAgent::ControlReply(serde_json::to_vec(r).expect("responses serialize")).to_frame().into(),
                None,
            )
        };
        while let Ok(Some(body)) = reader.next(link).await {
            let request = match ToMaster::decode(body) {
                Ok(ToMaster::Control(json)) => serde_json::from_slice::<Request>(&json),
                _ => return,
            };
            let progress = |line: String| reply(&Response::Progress(line));
            let response = match request {
                Err(e) => Response::Error(format!("bad request: {e}")),
                Ok(r) if r.changes_things() && !self.privileged(&creds) => {
                    warn!(app = %self.cfg.app, peer_uid = creds.uid(), peer_pid = creds.pid(), request = ?r, "permission denied");
                    Response::Error(format!(
                        "permission denied: changing {} needs root, the master's user{}",
                        self.cfg.app,
                        match &self.cfg.control_group {
                            Some(g) => format!(" or group {g}"),
                            None => String::new(),
                        }
                    ))
                }
                Ok(Request::Status) => Response::Status(Box::new(self.status_with_usage().await)),
                Ok(Request::Scale { instances }) if !(1..=crate::sid::MAX_SLOT).contains(&instances) => {
                    Response::Error(format!("cannot scale to {instances}: from 1 to {} workers", crate::sid::MAX_SLOT))
                }
                Ok(Request::Scale { instances }) => match self.scale(instances, &progress).await {
                    Ok(done) => Response::Done(done),
                    Err(e) => Response::Error(e),
                },
                Ok(Request::Reload) => match self.reload(&progress).await {
                    Ok(done) => Response::Done(done),
                    Err(e) => Response::Error(e),
                },
            };
            reply(&response);
        }
    }

    fn privileged(&self, creds: &UnixCredentials) -> bool {
        if creds.uid() == 0 || creds.uid() == nix::unistd::geteuid().as_raw() {
            return true;
        }
        let Some(group) =
            self.cfg.control_group.as_deref().and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
        else {
            return false;
        };
        let gid = group.gid.as_raw();
        creds.gid() == gid || supplementary_groups(creds.pid()).contains(&gid)
    }
}

/// A process's supplementary groups (SO_PEERCRED carries only the primary one).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:")).unwrap_or("");
    line.split_whitespace().filter_map(|g| g.parse().ok()).collect()
}

fn welcome(link: &Link) {
    link.send(ToAgent::Welcome { version: PROTOCOL_VERSION }.to_frame().into(), None);
}

/// Says why, then hangs up.
fn refuse(link: &Link, reason: &str) {
    link.send(ToAgent::Refused(reason.to_owned()).to_frame().into(), None);
    link.close();
}
