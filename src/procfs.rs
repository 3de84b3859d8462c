//! Memory and CPU of processes, read from `/proc`: what `sio up` reports
//! where systemd's cgroup accounting is not there, and what the master
//! reports of itself and of each agent alone.
//!
//! A worker is its agent and everything below it (Node, and whatever Node
//! spawns): its memory is the sum of their resident sets (as `ps` and PM2
//! count it: pages shared between them count once per process), its CPU the
//! time of the live processes plus what their reaped children used.

use crate::control::Usage;
use std::collections::HashMap;

/// The fields of `/proc/PID/stat` that sio uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// cutime + cstime: reaped children, in clock ticks.
    pub children_cpu_ticks: u64,
    /// Resident set, in pages.
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses: fields are counted from the
/// last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // From field 3 (state) on: index = field number - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(num(4)?).ok()?,
        cpu_ticks: num(14)? + num(15)?,
        children_cpu_ticks: num(16)? + num(17)?,
        rss_pages: num(24)?,
    })
}

/// The processes of this machine at one moment (those this user may see).
pub struct Table {
    stats: HashMap<u32, Stat>,
    children: HashMap<u32, Vec<u32>>,
    tick_ns: u64,
    page_bytes: u64,
}

impl Table {
    pub fn read() -> Table {
        let mut stats = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                // A process may end between listing and reading: skipped.
                if let Some(stat) =
                    std::fs::read_to_string(entry.path().join("stat")).ok().as_deref().and_then(parse_stat)
                {
                    stats.insert(pid, stat);
                }
            }
        }
        Table::from_stats(
            stats,
            sysconf(nix::unistd::SysconfVar::CLK_TCK, 100),
            sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096),
        )
    }

    /// A table of given processes (`ticks_per_s`: `CLK_TCK`).
    pub fn from_stats(stats: HashMap<u32, Stat>, ticks_per_s: u64, page_bytes: u64) -> Table {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (&pid, s) in &stats {
            children.entry(s.ppid).or_default().push(pid);
        }
        Table { stats, children, tick_ns: 1_000_000_000 / ticks_per_s.max(1), page_bytes }
    }

    /// The processes whose parent is `pid`, in pid order.
    pub fn children(&self, pid: u32) -> Vec<u32> {
        let mut children = self.children.get(&pid).cloned().unwrap_or_default();
        children.retain(|&c| c != pid);
        children.sort_unstable();
        children
    }

    /// Process `pid` alone.
    pub fn process(&self, pid: u32) -> Option<Usage> {
        let s = self.stats.get(&pid)?;
        Some(self.usage(s.rss_pages, s.cpu_ticks + s.children_cpu_ticks))
    }

    /// Process `pid` and all its descendants.
    pub fn tree(&self, pid: u32) -> Option<Usage> {
        self.stats.get(&pid)?;
        let (mut pages, mut ticks) = (0, 0);
        let mut todo = vec![pid];
        while let Some(p) = todo.pop() {
            if let Some(s) = self.stats.get(&p) {
                pages += s.rss_pages;
                ticks += s.cpu_ticks + s.children_cpu_ticks;
            }
            // A pid is its own parent only for the kernel's 0: no loop.
            todo.extend(self.children.get(&p).into_iter().flatten().filter(|&&c| c != p));
        }
        Some(self.usage(pages, ticks))
    }

    fn usage(&self, pages: u64, ticks: u64) -> Usage {
        Usage { memory_bytes: Some(pages * self.page_bytes), cpu_ns: Some(ticks * self.tick_ns), ..Usage::default() }
    }
}

fn sysconf(var: nix::unistd::SysconfVar, default: u64) -> u64 {
    nix::unistd::sysconf(var).ok().flatten().and_then(|v| u64::try_from(v).ok()).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(pid: u32, comm: &str, ppid: u32, utime: u64, stime: u64, cutime: u64, rss: u64) -> String {
        format!(
            "{pid} ({comm}) S {ppid} 1 1 0 -1 4194304 100 0 0 0 {utime} {stime} {cutime} 0 20 0 1 0 12345 1000000 {rss} 18446744073709551615 0 0 0"
        )
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let s = parse_stat(&stat_line(42, "node (worker) x", 7, 10, 5, 3, 250)).unwrap();
        assert_eq!(s, Stat { ppid: 7, cpu_ticks: 15, children_cpu_ticks: 3, rss_pages: 250 });
        assert_eq!(parse_stat("42 (truncated"), None);
        assert_eq!(parse_stat("42 (x) S 1 2"), None);
    }

    #[test]
    fn a_tree_sums_a_process_and_all_its_descendants() {
        let stats: HashMap<u32, Stat> = [
            (10, "sio", 1, 1, 1, 0, 100),
            (11, "node", 10, 50, 10, 0, 1000),
            (12, "child", 11, 5, 0, 0, 10),
            (20, "other", 1, 99, 99, 0, 5000),
        ]
        .into_iter()
        .map(|(pid, comm, ppid, u, s, c, rss)| (pid, parse_stat(&stat_line(pid, comm, ppid, u, s, c, rss)).unwrap()))
        .collect();
        let t = Table::from_stats(stats, 100, 4096);
        let tree = t.tree(10).unwrap();
        assert_eq!(tree.memory_bytes, Some(1110 * 4096));
        assert_eq!(tree.cpu_ns, Some(67 * 10_000_000));
        assert_eq!(t.process(10).unwrap().memory_bytes, Some(100 * 4096));
        assert!(t.tree(99).is_none());
        assert_eq!(t.children(1), [10, 20]);
        assert_eq!(t.children(11), [12]);
        assert!(t.children(12).is_empty());
    }

    #[test]
    fn this_process_is_in_the_table() {
        let t = Table::read();
        let me = t.process(std::process::id()).unwrap();
        assert!(me.memory_bytes.unwrap() > 0);
    }
}
