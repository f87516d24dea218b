//! How the vault's own threads (the writer, maintenance, the uploader) are scheduled.
//!
//! Each of them is woken by the capture thread's work (a frame to write, a bundle to
//! send). Under Linux's normal policy the woken thread may preempt the thread that woke
//! it, so an append that hands over a frame could wait for the writer's whole turn: one
//! append in a thousand took 110-210 µs in the soak (SPEC P5 asks ≤ 50 µs). As
//! `SCHED_BATCH` they keep the same share of the CPU but never preempt on wake-up
//! (16-19 µs in the same soak). Threads they start inherit the policy; the storage
//! engine's I/O pool, started when the vault opens, keeps the normal one.

/// Called first thing on each of the vault's background threads.
pub(crate) fn enter() {
    #[cfg(target_os = "linux")]
    batch();
}

#[cfg(target_os = "linux")]
fn batch() {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    use thread_priority::{ThreadPriority, ThreadPriorityOsValue};
    // The call sets the nice value too: only at the default one (0), so a process the
    // administrator started at another nice value keeps it (and a thread never gains
    // priority over its process).
    if rustix::process::getpriority_process(None) != Ok(0) {
        return;
    }
    // A hint: where it is refused, the thread runs under the normal policy, as before.
    let _ = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Os(ThreadPriorityOsValue::default()),
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
    );
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The policy is `SCHED_BATCH` (3) and the nice value unchanged.
    #[test]
    fn a_background_thread_runs_as_batch_at_the_same_nice_value() {
        let (policy, nice) = std::thread::spawn(|| {
            super::enter();
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            // Fields after the command name (which may hold spaces): state is field 3;
            // nice is field 19, policy field 41.
            let rest: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            (rest[41 - 3].to_string(), rest[19 - 3].to_string())
        })
        .join()
        .unwrap();
        assert_eq!(policy, "3");
        assert_eq!(nice, "0");
    }
}
