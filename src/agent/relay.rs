//! Broadcasts that outlive the master (bus protocol 2), as pure state:
//! what an agent keeps until the master acknowledges it, and which
//! broadcasts it already gave its Node worker.
//!
//! A master that dies (SIGKILL, a watchdog kill) takes with it the frames
//! it had read and not relayed yet, and those still queued for other
//! workers. So an agent numbers its broadcasts and keeps each until the
//! master says that it reached the socket of every worker it was for
//! (from there the kernel delivers it, whatever becomes of the master); a
//! new master gets what was not acknowledged. Some of that may have
//! reached the other workers already: their agents drop a broadcast whose
//! number they have seen from the same origin.

use crate::handoff::Bytes;
use std::collections::{HashMap, VecDeque};

/// Numbered broadcasts not yet acknowledged, oldest first, within a byte
/// bound (the agent's `limits.bus_queue_bytes`).
pub struct Unacked {
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    last_seq: u64,
    limit: usize,
}

impl Unacked {
    pub fn new(limit: usize) -> Unacked {
        Unacked { frames: VecDeque::new(), bytes: 0, last_seq: 0, limit }
    }

    /// Numbers the next broadcast (from 1), keeps the frame `encode` makes
    /// of it, and returns the frame and how many old ones the bound evicted.
    pub fn push(&mut self, encode: impl FnOnce(u64) -> Vec<u8>) -> (Bytes, usize) {
        self.last_seq += 1;
        let frame: Bytes = encode(self.last_seq).into();
        self.bytes += frame.len();
        self.frames.push_back((self.last_seq, frame.clone()));
        let mut evicted = 0;
        while self.bytes > self.limit && self.frames.len() > 1 {
            let (_, old) = self.frames.pop_front().expect("not empty");
            self.bytes -= old.len();
            evicted += 1;
        }
        (frame, evicted)
    }

    /// The master acknowledged every broadcast up to `seq`.
    pub fn acked(&mut self, seq: u64) {
        while self.frames.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, f) = self.frames.pop_front().expect("not empty");
            self.bytes -= f.len();
        }
    }

    /// Takes every kept frame, oldest first (for a master that does not
    /// acknowledge: protocol 1).
    pub fn take_all(&mut self) -> Vec<Bytes> {
        self.bytes = 0;
        self.frames.drain(..).map(|(_, f)| f).collect()
    }

    /// The kept frames, oldest first, to send to a new master.
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter().map(|(_, f)| f)
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }
}

/// Origins remembered at most; past that, the one heard from least
/// recently is forgotten (by then a dead agent: a master sends a
/// broadcast again only moments after its predecessor died).
const MAX_ORIGINS: usize = 1024;

/// The highest broadcast number given to Node, per origin agent (its pid).
/// A master relays one origin's broadcasts in order, so a number not above
/// the highest seen is a repeat.
#[derive(Default)]
pub struct Delivered {
    /// origin -> (highest seq, when last heard of, as a tick).
    seen: HashMap<u32, (u64, u64)>,
    tick: u64,
}

impl Delivered {
    /// Whether this broadcast is new (and remembers it).
    pub fn first_time(&mut self, origin: u32, seq: u64) -> bool {
        self.tick += 1;
        if !self.seen.contains_key(&origin) && self.seen.len() >= MAX_ORIGINS {
            if let Some(&stalest) = self.seen.iter().min_by_key(|(_, (_, t))| *t).map(|(o, _)| o) {
                self.seen.remove(&stalest);
            }
        }
        let entry = self.seen.entry(origin).or_insert((0, 0));
        entry.1 = self.tick;
        if seq <= entry.0 {
            return false;
        }
        entry.0 = seq;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(seq: u64) -> Vec<u8> {
        vec![seq as u8; 10]
    }

    #[test]
    fn broadcasts_are_numbered_from_one_and_kept_until_acknowledged() {
        let mut u = Unacked::new(1000);
        for _ in 0..5 {
            u.push(frame);
        }
        u.acked(3);
        let kept: Vec<u8> = u.frames().map(|f| f[0]).collect();
        assert_eq!(kept, [4, 5]);
        u.acked(2); // an older acknowledgement changes nothing
        assert_eq!(u.len(), 2);
        u.acked(5);
        assert_eq!(u.len(), 0);
        assert_eq!(u.push(frame).0[0], 6, "numbers go on after acknowledgements");
    }

    #[test]
    fn the_bound_evicts_the_oldest_but_keeps_the_newest_frame() {
        let mut u = Unacked::new(25);
        assert_eq!(u.push(frame).1, 0);
        assert_eq!(u.push(frame).1, 0);
        assert_eq!(u.push(frame).1, 1);
        assert_eq!(u.frames().map(|f| f[0]).collect::<Vec<_>>(), [2, 3]);
        let mut tiny = Unacked::new(1);
        tiny.push(frame);
        assert_eq!(tiny.len(), 1, "a frame larger than the bound is still sent once");
    }

    #[test]
    fn take_all_empties_and_counts_restart_from_nothing() {
        let mut u = Unacked::new(100);
        u.push(frame);
        u.push(frame);
        assert_eq!(u.take_all().len(), 2);
        assert_eq!(u.len(), 0);
        u.push(frame);
        assert_eq!(u.len(), 1);
    }

    #[test]
    fn a_repeat_from_the_same_origin_is_dropped_and_origins_are_apart() {
        let mut d = Delivered::default();
        assert!(d.first_time(10, 1));
        assert!(d.first_time(10, 2));
        assert!(!d.first_time(10, 2));
        assert!(!d.first_time(10, 1));
        assert!(d.first_time(11, 1), "another agent's numbers are its own");
        assert!(d.first_time(10, 3));
    }

    #[test]
    fn the_least_recently_heard_origin_is_forgotten_first() {
        let mut d = Delivered::default();
        for origin in 0..MAX_ORIGINS as u32 {
            d.first_time(origin, 5);
        }
        d.first_time(0, 6); // origin 0 heard again: 1 is now the stalest
        d.first_time(5000, 1);
        assert_eq!(d.seen.len(), MAX_ORIGINS);
        assert!(!d.first_time(0, 6), "a recent origin is remembered");
        assert!(d.first_time(1, 5), "the stalest was forgotten");
    }

    proptest! {
        /// Whatever a master relays again after its predecessor died (any
        /// suffix of what one origin sent, in order), Node gets each
        /// broadcast exactly once and in order.
        #[test]
        fn resends_after_master_deaths_reach_node_once_in_order(
            cuts in proptest::collection::vec((0usize..50, 0usize..50), 0..6),
        ) {
            let sent: Vec<u64> = (1..=50).collect();
            let mut stream = Vec::new();
            // What reached this receiver: acknowledged broadcasts did.
            let mut reached = 0;
            for (from, to) in cuts {
                // A master got the frames from `from` on (at or before
                // what was acknowledged), relayed up to `to`, and died.
                let from = from.min(reached);
                let to = to.max(from);
                stream.extend_from_slice(&sent[from..to]);
                reached = reached.max(to);
            }
            stream.extend_from_slice(&sent[reached / 2..]);
            let mut d = Delivered::default();
            let got: Vec<u64> = stream.into_iter().filter(|&s| d.first_time(7, s)).collect();
            prop_assert_eq!(got, sent);
        }
    }
}
