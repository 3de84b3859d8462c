//! The router's processes run under `SCHED_BATCH`; Node under the normal
//! policy.
//!
//! The master and the agents wake for each connection and each relayed
//! frame, and do a few microseconds of work each time. Under the normal
//! policy a woken task may preempt the one on the CPU, and on a busy machine
//! it does: a Node worker under sio was preempted 1.47 times per websocket
//! session (`nonvoluntary_ctxt_switches`; 0.43 since this change), against
//! 0.18 for two workers with no router. Each time, a router ran for one
//! connection or one frame, and Node came back to colder caches. A `SCHED_BATCH` task never preempts on
//! wake-up. It runs when a CPU is free or at the end of the running task's
//! slice, and by then several connections or frames are usually waiting, so
//! one wake-up serves them all. Measured against the build before
//! (BENCHMARKS.md), this halved the router's CPU per session and raised
//! sessions/s, and the connect p99 at saturation fell. At a moderate rate a
//! core is usually free, and a woken router runs on it at once, as before.
//!
//! Only the default policy is changed: a policy the operator chose (a
//! unit's `CPUSchedulingPolicy=`, `chrt`) stays, and then Node keeps
//! whatever it inherits, as it would have. Under systemd the master's unit
//! sets `SCHED_BATCH` itself: its system call filter refuses the master the
//! call (`~@resources`), and the master starts no process there.

use nix::libc;
use std::sync::atomic::{AtomicBool, Ordering};

fn policy() -> std::io::Result<libc::c_int> {
    // SAFETY: no pointers; 0 is the calling thread.
    let p = unsafe { libc::sched_getscheduler(0) };
    if p < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(p)
    }
}

fn set_policy(policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call.
    let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether [`router_policy`] changed this process's policy.
static ROUTER_POLICY_SET: AtomicBool = AtomicBool::new(false);

/// Puts the calling thread, and the threads and processes it starts
/// afterwards, under `SCHED_BATCH` if it is under the default policy.
pub fn router_policy() {
    if let Ok(libc::SCHED_OTHER) = policy() {
        match set_policy(libc::SCHED_BATCH) {
            Ok(()) => ROUTER_POLICY_SET.store(true, Ordering::Relaxed),
            Err(e) => tracing::debug!("cannot set SCHED_BATCH: {e}"),
        }
    }
}

/// In a child about to `exec` (Node, or an agent that chooses its own):
/// the default policy back if [`router_policy`] changed it.
/// Async-signal-safe (an atomic load and one system call).
pub fn default_policy_in_child() -> std::io::Result<()> {
    if ROUTER_POLICY_SET.load(Ordering::Relaxed) {
        set_policy(libc::SCHED_OTHER)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_thread_goes_batch_and_its_children_get_the_default_back() {
        std::thread::spawn(|| {
            assert_eq!(policy().unwrap(), libc::SCHED_OTHER);
            router_policy();
            assert_eq!(policy().unwrap(), libc::SCHED_BATCH);
            default_policy_in_child().unwrap();
            assert_eq!(policy().unwrap(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_policy_chosen_by_the_operator_stays() {
        std::thread::spawn(|| {
            set_policy(libc::SCHED_IDLE).unwrap();
            router_policy();
            assert_eq!(policy().unwrap(), libc::SCHED_IDLE);
        })
        .join()
        .unwrap();
    }
}
