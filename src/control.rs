//! Operator requests (`sioctl` -> master) and their answers, as JSON inside
//! [`crate::wire::ToMaster::Control`] / [`crate::wire::ToAgent::ControlReply`].

use crate::master::router::WorkerView;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// Run this many workers (kept across master restarts under systemd).
    Scale {
        instances: u16,
    },
    /// Replace every worker, one at a time.
    Reload,
}

impl Request {
    /// Whether only privileged peers may ask (root, the master's own user,
    /// or members of the app's `control_group`).
    pub fn changes_things(&self) -> bool {
        !matches!(self, Request::Status)
    }
}

/// A worker's state, as the master's router keeps it and `sioctl` shows it
/// (an enum end to end: counting ready workers never compares strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Expected: started, or restarting, with no agent connected yet.
    Starting,
    /// Agent connected; its Node worker is not ready for new sessions yet.
    Connected,
    Ready,
    /// Keeps its sessions, takes no new ones; removed when its agent leaves.
    Draining,
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that `sioctl status` can align it in columns.
        f.pad(match self {
            WorkerState::Starting => "starting",
            WorkerState::Connected => "connected",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
        })
    }
}

/// Resource use: of a worker, from systemd's accounting of its unit (its
/// cgroup), or under `sio up` from `/proc` (its agent and every process
/// below it, see [`crate::procfs`]); of the master or an agent alone, from
/// `/proc`. `None` where a figure is not known.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Resident memory of the processes (what `ps` and PM2 show), from
    /// `/proc`; systemd's figure where `/proc` cannot be read.
    pub memory_bytes: Option<u64>,
    /// Under systemd: the memory charged to the worker's cgroup, what
    /// `limits.memory_max` bounds there (pages shared with other cgroups,
    /// such as Node's own code, are charged to whoever read them first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_memory_bytes: Option<u64>,
    pub cpu_ns: Option<u64>,
    pub restarts: Option<u32>,
}

/// A worker in a status report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub slot: u16,
    pub state: WorkerState,
    pub sessions: u32,
    pub pid: Option<u32>,
    /// Bytes queued to this worker's agent.
    pub queued_bytes: usize,
    /// Memory, CPU and restarts of the whole worker (agent, Node, and what
    /// Node started).
    pub usage: Option<Usage>,
    /// The agent alone (part of `usage`).
    #[serde(default)]
    pub agent: Option<Usage>,
}

impl WorkerStatus {
    pub fn new(view: &WorkerView, pid: Option<u32>, queued_bytes: usize) -> Self {
        WorkerStatus {
            slot: view.slot,
            state: view.state,
            sessions: view.sessions,
            pid,
            queued_bytes,
            usage: None,
            agent: None,
        }
    }
}

/// Counters since the master started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub accepted: u64,
    pub handed_off: u64,
    /// Handoffs that did not reach a worker and were routed again.
    pub rerouted: u64,
    pub answered_400: u64,
    pub answered_408: u64,
    pub answered_431: u64,
    pub answered_503: u64,
    /// Clients that closed before their head was complete.
    pub closed_early: u64,
    /// Connections closed without an answer after `timeouts.head_ms`
    /// because they never sent a byte.
    #[serde(default)]
    pub closed_idle: u64,
    pub relayed_frames: u64,
    /// Adapter frames dropped because a worker's queue was full.
    pub dropped_frames: u64,
    pub refused_peers: u64,
    /// Messages for the other hosts dropped because Redis was away and the
    /// bridge's queue was full.
    #[serde(default)]
    pub bridge_dropped: u64,
    /// Messages from Redis the bridge refused (malformed, unknown, or past
    /// a bound): none reached a worker.
    #[serde(default)]
    pub bridge_rejected: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub app: String,
    /// The app's config file.
    #[serde(default)]
    pub config: Option<std::path::PathBuf>,
    pub pid: u32,
    /// Memory and CPU of the master process.
    #[serde(default)]
    pub master: Option<Usage>,
    pub listen: Vec<SocketAddr>,
    /// Where the Prometheus metrics are served.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    pub activated: bool,
    /// Whether the workers accept connections themselves (websocket alone):
    /// then the master's connection figures stay at 0.
    #[serde(default)]
    pub workers_accept: bool,
    pub workers: Vec<WorkerStatus>,
    pub sessions: u64,
    /// Connections accepted whose head is not complete yet.
    pub reading_heads: usize,
    /// Connections waiting for a worker.
    pub waiting: usize,
    /// Connections handed to an agent and not yet confirmed by Node.
    pub in_flight: usize,
    /// Connections the master answered itself (400, 408, 431, 503), read
    /// out for a moment before closing.
    #[serde(default)]
    pub lingering: usize,
    /// Heap bytes the master has in use (counted by its allocator).
    #[serde(default)]
    pub heap_bytes: Option<u64>,
    /// Workers whose units failed for good (systemd gave up restarting them).
    #[serde(default)]
    pub failed: Vec<u16>,
    pub counters: Counters,
}

impl Status {
    pub fn ready_workers(&self) -> usize {
        self.workers.iter().filter(|w| w.state == WorkerState::Ready).count()
    }

    /// The one line systemd shows (`STATUS=`) and `sioctl status` starts with.
    pub fn summary(&self) -> String {
        let draining = self.workers.iter().filter(|w| w.state == WorkerState::Draining).count();
        let mut line =
            format!("{} workers ready, {} sessions, {} draining", self.ready_workers(), self.sessions, draining);
        if !self.failed.is_empty() {
            line.push_str(&format!(", {} failed", self.failed.len()));
        }
        line
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Answers to a request: any number of `Progress`, then one of the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Status(Box<Status>),
    Progress(String),
    Done(String),
    Error(String),
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1234), "1,234");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }
}
