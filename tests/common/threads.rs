//! Counting the wake-ups of this process's threads (SPEC P7: no wake-ups when idle).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Context switches (voluntary + involuntary) of every thread of this process but the
/// calling one, by "tid name": capvault's and sled's I/O pool (whose seven `sled-io-N`
/// threads woke once a second each before vendor/sled's change).
pub fn switches() -> BTreeMap<String, u64> {
    // "<pid>/task/<tid>": the calling thread.
    let me = std::fs::read_link("/proc/thread-self").unwrap();
    let me = me.file_name().unwrap().to_string_lossy().to_string();
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let tid = task.file_name().to_string_lossy().to_string();
        if tid == me {
            continue;
        }
        let (Ok(status), Ok(name)) = (
            std::fs::read_to_string(task.path().join("status")),
            std::fs::read_to_string(task.path().join("comm")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let n: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.insert(format!("{tid} {}", name.trim()), n);
    }
    out
}

/// Voluntary context switches (sleeps) summed over the threads whose name `is_counted`:
/// a busy machine preempting a thread is not that thread's doing.
pub fn sleeps_of(is_counted: impl Fn(&str) -> bool) -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| is_counted(n.trim()))
        })
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Threads that switched between two readings, with how often.
pub fn woke(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(t, n)| {
            let d = n - before.get(t).copied().unwrap_or(0);
            (d > 0).then(|| (t.clone(), d))
        })
        .collect()
}

/// Waits until a second passes with no wake-up in any thread (the timers armed by the
/// work before run out), at most `limit`; returns the last reading.
pub fn settle(limit: Duration) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + limit;
    let mut last = switches();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = switches();
        let w = woke(&last, &now);
        if w.is_empty() {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the vault's threads never went quiet; still waking: {w:?}"
        );
        last = now;
    }
}
