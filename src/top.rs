//! `sioctl top APP` (PM2's `monit`): what is shown, computed from two
//! status samples taken an interval apart. Pure: the terminal view and the
//! plain-text one (when the output is not a terminal) both render these.

use crate::control::{thousands, Status};

/// A status and when it was taken (seconds on a monotonic clock).
pub struct Sample {
    pub at: f64,
    pub status: Status,
}

/// One worker's line.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub slot: u16,
    pub state: String,
    pub pid: String,
    pub sessions: String,
    /// Share of one CPU over the interval, `-` when not known.
    pub cpu: String,
    pub memory: String,
    pub restarts: String,
}

/// The master's figures per second over the interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    pub handoffs: f64,
    pub relayed: f64,
    pub dropped: f64,
    /// 400, 408 and 431 answers.
    pub client_errors: f64,
    pub unavailable: f64,
}

pub fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}M", b as f64 / 1048576.0))
}

/// Rates between `before` and `now` (zero on the first sample or if the
/// master restarted in between: its counters started again).
pub fn rates(before: Option<&Sample>, now: &Sample) -> Rates {
    let zero = Rates { handoffs: 0.0, relayed: 0.0, dropped: 0.0, client_errors: 0.0, unavailable: 0.0 };
    let Some(b) = before.filter(|b| b.status.pid == now.status.pid && now.at > b.at) else {
        return zero;
    };
    let dt = now.at - b.at;
    let (c0, c1) = (&b.status.counters, &now.status.counters);
    let per_s = |x0: u64, x1: u64| x1.saturating_sub(x0) as f64 / dt;
    let errors = |c: &crate::control::Counters| c.answered_400 + c.answered_408 + c.answered_431;
    Rates {
        handoffs: per_s(c0.handed_off, c1.handed_off),
        relayed: per_s(c0.relayed_frames, c1.relayed_frames),
        dropped: per_s(c0.dropped_frames, c1.dropped_frames),
        client_errors: per_s(errors(c0), errors(c1)),
        unavailable: per_s(c0.answered_503, c1.answered_503),
    }
}

/// The workers' lines; CPU is the share over the interval of the same
/// worker process (a restarted worker shows `-` once).
pub fn worker_rows(before: Option<&Sample>, now: &Sample) -> Vec<WorkerRow> {
    now.status
        .workers
        .iter()
        .map(|w| {
            let usage = w.usage.clone().unwrap_or_default();
            let earlier = before.and_then(|b| b.status.workers.iter().find(|p| p.slot == w.slot && p.pid == w.pid));
            let cpu = match (earlier.and_then(|p| p.usage.as_ref()?.cpu_ns), usage.cpu_ns, before) {
                (Some(c0), Some(c1), Some(b)) if now.at > b.at => {
                    format!("{:.1}%", c1.saturating_sub(c0) as f64 / 1e9 / (now.at - b.at) * 100.0)
                }
                _ => "-".into(),
            };
            WorkerRow {
                slot: w.slot,
                state: w.state.to_string(),
                pid: w.pid.map_or("-".into(), |p| p.to_string()),
                sessions: thousands(u64::from(w.sessions)),
                cpu,
                memory: mib(usage.memory_bytes),
                restarts: usage.restarts.map_or("-".into(), |r| r.to_string()),
            }
        })
        .collect()
}

/// The master's lines.
pub fn master_lines(now: &Sample, r: &Rates) -> Vec<String> {
    let s = &now.status;
    let m = s.master.clone().unwrap_or_default();
    vec![
        format!("{}: {}", s.app, s.summary()),
        format!(
            "master pid {}  memory {}  waiting {}  reading heads {}  unconfirmed {}",
            s.pid,
            mib(m.memory_bytes),
            s.waiting,
            s.reading_heads,
            s.in_flight
        ),
        format!(
            "handoffs/s {:.1}  relayed/s {:.1}  dropped/s {:.1}  4xx/s {:.1}  503/s {:.1}",
            r.handoffs, r.relayed, r.dropped, r.client_errors, r.unavailable
        ),
    ]
}

pub const HEADER: [&str; 7] = ["WORKER", "STATE", "PID", "SESSIONS", "CPU", "MEMORY", "RESTARTS"];

/// Everything as plain text (the view when the output is not a terminal).
pub fn plain(before: Option<&Sample>, now: &Sample) -> String {
    let mut out = master_lines(now, &rates(before, now)).join("\n");
    out.push('\n');
    let line = |c: [&str; 7]| {
        format!("{:<6} {:<10} {:>8} {:>9} {:>7} {:>9} {:>8}\n", c[0], c[1], c[2], c[3], c[4], c[5], c[6])
    };
    out.push_str(&line(HEADER));
    for w in worker_rows(before, now) {
        out.push_str(&line([&w.slot.to_string(), &w.state, &w.pid, &w.sessions, &w.cpu, &w.memory, &w.restarts]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Counters, Usage, WorkerState, WorkerStatus};

    fn sample(at: f64, pid: u32, handed_off: u64, cpu_ns: u64) -> Sample {
        let worker = WorkerStatus {
            slot: 1,
            state: WorkerState::Ready,
            sessions: 1234,
            pid: Some(7),
            queued_bytes: 0,
            usage: Some(Usage {
                memory_bytes: Some(50 << 20),
                cpu_ns: Some(cpu_ns),
                restarts: Some(2),
                ..Usage::default()
            }),
            agent: None,
        };
        Sample {
            at,
            status: Status {
                app: "chat".into(),
                config: None,
                pid,
                master: None,
                listen: Vec::new(),
                metrics: None,
                activated: false,
                workers_accept: false,
                workers: vec![worker],
                sessions: 1234,
                reading_heads: 0,
                waiting: 0,
                in_flight: 0,
                lingering: 0,
                heap_bytes: None,
                failed: Vec::new(),
                counters: Counters { handed_off, answered_503: handed_off / 10, ..Counters::default() },
            },
        }
    }

    #[test]
    fn rates_and_cpu_come_from_the_interval() {
        let (a, b) = (sample(10.0, 1, 100, 1_000_000_000), sample(12.0, 1, 300, 1_500_000_000));
        let r = rates(Some(&a), &b);
        assert_eq!((r.handoffs, r.unavailable), (100.0, 10.0));
        let rows = worker_rows(Some(&a), &b);
        assert_eq!(
            (rows[0].cpu.as_str(), rows[0].memory.as_str(), rows[0].sessions.as_str()),
            ("25.0%", "50.0M", "1,234")
        );
    }

    #[test]
    fn a_first_sample_or_a_restarted_master_shows_no_rates() {
        let b = sample(12.0, 1, 300, 0);
        assert_eq!(rates(None, &b).handoffs, 0.0);
        assert_eq!(rates(Some(&sample(10.0, 2, 100, 0)), &b).handoffs, 0.0, "another master's counters");
        assert_eq!(worker_rows(None, &b)[0].cpu, "-");
        assert!(plain(None, &b).contains("WORKER") && plain(None, &b).contains("1,234"));
    }
}
