//! The Prometheus text exposition (format 0.0.4) of a master's status, and
//! which request gets it: what the master serves at `metrics` (see the
//! config), pure so that it is tested without sockets.
//!
//! Names follow Prometheus' conventions: `_total` counters, `_bytes` and
//! `_seconds` units, one `app` label on everything, `worker` for a slot.

use crate::control::{Status, WorkerState};
use std::fmt::Write as _;

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    NotFound,
    /// Not a GET/HEAD request line: answered 400.
    Bad,
}

/// The route of a request head's first line (`GET /metrics HTTP/1.1`;
/// a query string is ignored).
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Route::Bad;
    };
    if !(method == b"GET" || method == b"HEAD") || !version.starts_with(b"HTTP/1.") {
        return Route::Bad;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path == b"/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// A label value, escaped as the format wants.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Page {
    text: String,
    app: String,
}

impl Page {
    /// `# HELP` and `# TYPE` of a metric, then its samples.
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let extra = if labels.is_empty() { String::new() } else { format!(",{labels}") };
            let _ = writeln!(self.text, "{name}{{app=\"{}\"{extra}}} {value}", self.app);
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.metric(name, kind, help, &[(String::new(), value)]);
    }
}

/// The exposition of `status` (taken with the resource use).
pub fn render(status: &Status) -> String {
    let mut p = Page { text: String::new(), app: label(&status.app) };
    let c = &status.counters;
    p.one("sio_sessions", "gauge", "Sessions the workers hold.", status.sessions as f64);
    let states = [WorkerState::Starting, WorkerState::Connected, WorkerState::Ready, WorkerState::Draining];
    let by_state: Vec<(String, f64)> = states
        .iter()
        .map(|&s| (format!("state=\"{s}\""), status.workers.iter().filter(|w| w.state == s).count() as f64))
        .collect();
    p.metric("sio_workers", "gauge", "Workers by state.", &by_state);
    p.one("sio_failed_workers", "gauge", "Workers systemd gave up restarting.", status.failed.len() as f64);
    let counters = [
        ("sio_accepted_connections_total", "Connections the master accepted.", c.accepted),
        ("sio_handoffs_total", "Connections handed to a worker.", c.handed_off),
        ("sio_rerouted_handoffs_total", "Handoffs that did not reach a worker and were routed again.", c.rerouted),
        ("sio_closed_early_total", "Clients that closed before their request head was complete.", c.closed_early),
        ("sio_closed_idle_total", "Connections closed because they sent nothing in time.", c.closed_idle),
        ("sio_relayed_frames_total", "Cluster-adapter frames relayed between workers.", c.relayed_frames),
        ("sio_dropped_frames_total", "Cluster-adapter frames dropped: a worker's queue was full.", c.dropped_frames),
        ("sio_refused_peers_total", "Bus and control peers refused.", c.refused_peers),
        (
            "sio_bridge_dropped_messages_total",
            "Messages for the other hosts the bridge dropped: Redis was away and its queue full.",
            c.bridge_dropped,
        ),
        (
            "sio_bridge_rejected_messages_total",
            "Messages from Redis the bridge refused: malformed, unknown, or past a bound; none reached a worker.",
            c.bridge_rejected,
        ),
    ];
    for (name, help, value) in counters {
        p.one(name, "counter", help, value as f64);
    }
    let answers: Vec<(String, f64)> =
        [("400", c.answered_400), ("408", c.answered_408), ("431", c.answered_431), ("503", c.answered_503)]
            .iter()
            .map(|(code, n)| (format!("code=\"{code}\""), *n as f64))
            .collect();
    p.metric("sio_answers_total", "counter", "Requests the master answered itself, by status code.", &answers);
    let gauges = [
        ("sio_waiting_connections", "Connections waiting for a ready worker.", status.waiting),
        ("sio_reading_heads", "Connections whose request head is being read.", status.reading_heads),
        ("sio_unconfirmed_handoffs", "Connections handed to a worker and not yet confirmed.", status.in_flight),
        (
            "sio_lingering_connections",
            "Connections the master answered itself, read out before closing.",
            status.lingering,
        ),
    ];
    for (name, help, value) in gauges {
        p.one(name, "gauge", help, value as f64);
    }
    let per_worker = |value: &dyn Fn(&crate::control::WorkerStatus) -> Option<f64>| -> Vec<(String, f64)> {
        status.workers.iter().filter_map(|w| Some((format!("worker=\"{}\"", w.slot), value(w)?))).collect()
    };
    p.metric("sio_worker_sessions", "gauge", "Sessions of each worker.", &per_worker(&|w| Some(f64::from(w.sessions))));
    p.metric(
        "sio_worker_memory_bytes",
        "gauge",
        "Resident memory of each worker (its agent, Node and what Node started).",
        &per_worker(&|w| Some(w.usage.as_ref()?.memory_bytes? as f64)),
    );
    p.metric(
        "sio_worker_cpu_seconds_total",
        "counter",
        "CPU time of each worker.",
        &per_worker(&|w| Some(w.usage.as_ref()?.cpu_ns? as f64 / 1e9)),
    );
    p.metric(
        "sio_worker_restarts_total",
        "counter",
        "Restarts of each worker.",
        &per_worker(&|w| Some(f64::from(w.usage.as_ref()?.restarts?))),
    );
    p.metric(
        "sio_worker_queued_bytes",
        "gauge",
        "Relayed frames queued for each worker.",
        &per_worker(&|w| Some(w.queued_bytes as f64)),
    );
    if let Some(m) = &status.master {
        if let Some(bytes) = m.memory_bytes {
            p.one("process_resident_memory_bytes", "gauge", "Resident memory of the master.", bytes as f64);
        }
        if let Some(ns) = m.cpu_ns {
            p.one("process_cpu_seconds_total", "counter", "CPU time of the master.", ns as f64 / 1e9);
        }
    }
    if let Some(heap) = status.heap_bytes {
        p.one("sio_master_heap_bytes", "gauge", "Heap the master has in use.", heap as f64);
    }
    p.text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Counters, Usage, WorkerStatus};

    #[test]
    fn only_get_or_head_of_metrics_gets_the_page() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::Bad);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::Bad);
        assert_eq!(route(b"\x16\x03\x01garbage"), Route::Bad);
        assert_eq!(route(b""), Route::Bad);
    }

    #[test]
    fn every_sample_is_typed_and_labelled_with_the_app() {
        let worker = WorkerStatus {
            slot: 2,
            state: WorkerState::Ready,
            sessions: 7,
            pid: Some(10),
            queued_bytes: 0,
            usage: Some(Usage {
                memory_bytes: Some(1 << 20),
                cpu_ns: Some(1_500_000_000),
                restarts: Some(3),
                ..Usage::default()
            }),
            agent: None,
        };
        let status = Status {
            app: "ch\"at".into(),
            config: None,
            pid: 1,
            master: Some(Usage { memory_bytes: Some(4096), cpu_ns: Some(0), ..Usage::default() }),
            listen: Vec::new(),
            metrics: None,
            activated: false,
            workers_accept: false,
            workers: vec![worker],
            sessions: 7,
            reading_heads: 0,
            waiting: 0,
            in_flight: 0,
            lingering: 0,
            heap_bytes: None,
            failed: Vec::new(),
            counters: Counters { handed_off: 42, answered_503: 1, ..Counters::default() },
        };
        let page = render(&status);
        assert!(page.contains("sio_handoffs_total{app=\"ch\\\"at\"} 42\n"), "{page}");
        assert!(page.contains("sio_answers_total{app=\"ch\\\"at\",code=\"503\"} 1\n"), "{page}");
        assert!(page.contains("sio_workers{app=\"ch\\\"at\",state=\"ready\"} 1\n"), "{page}");
        assert!(page.contains("sio_worker_cpu_seconds_total{app=\"ch\\\"at\",worker=\"2\"} 1.5\n"), "{page}");
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap();
            assert!(page.contains(&format!("# TYPE {name} ")), "{name} has no TYPE");
        }
    }
}
