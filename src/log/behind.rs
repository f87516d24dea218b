//! A helper thread that takes the writer's slow, order-free work off it: writing the
//! sealed pieces of a large append to the segment file while the next records are
//! sealed, and dropping a large batch once it is stored.
//!
//! With screenshots the writer thread is the bottleneck (docs/PERFORMANCE.md, P3): it
//! seals every record of a user one after another (each record's associated data holds
//! the tag before it), so only the work around the sealing can move elsewhere. The
//! helper is started on the first large append and lives as long as the segments; an
//! idle one sleeps in `recv` and never wakes up. Where it cannot be started (a thread
//! limit), the work runs on the calling thread as before.

use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;

type Task = Box<dyn FnOnce() + Send>;

/// The helper thread, started on first use.
#[derive(Default)]
pub(crate) struct Behind {
    thread: Mutex<Helper>,
}

#[derive(Default)]
enum Helper {
    #[default]
    NotStarted,
    Running(Running),
    /// It could not be started: the callers do the work (not tried again at each call).
    Unavailable,
}

struct Running {
    tx: Sender<Task>,
    handle: JoinHandle<()>,
}

impl Behind {
    /// Runs `task` on the helper thread, in the order given, or on this thread when
    /// there is no helper.
    pub(crate) fn run(&self, task: impl FnOnce() + Send + 'static) {
        let task: Task = Box::new(task);
        let mut slot = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*slot, Helper::NotStarted) {
            *slot = start().map_or(Helper::Unavailable, Helper::Running);
        }
        let task = match &*slot {
            Helper::Running(running) => match running.tx.send(task) {
                Ok(()) => return,
                // Only if the helper had exited, which its panic guard prevents.
                Err(mpsc::SendError(task)) => task,
            },
            _ => task,
        };
        drop(slot);
        task();
    }
}

fn start() -> Option<Running> {
    let (tx, rx) = mpsc::channel::<Task>();
    let handle = std::thread::Builder::new()
        .name("capvault-behind".into())
        .spawn(move || {
            crate::background::enter();
            for task in rx {
                // A task that panics loses only itself (a write's caller then finds its
                // answer missing); the helper goes on with the next.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
            }
        })
        .ok()?;
    Some(Running { tx, handle })
}

impl Drop for Behind {
    /// Lets the helper finish what it was given, so nothing is written after the
    /// segments are gone.
    fn drop(&mut self) {
        let helper = std::mem::take(self.thread.get_mut().unwrap_or_else(|p| p.into_inner()));
        if let Helper::Running(Running { tx, handle }) = helper {
            drop(tx);
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn tasks_run_in_order_on_one_other_thread() {
        let behind = Behind::default();
        let (tx, rx) = mpsc::channel();
        for i in 0..100 {
            let tx = tx.clone();
            behind.run(move || {
                let _ = tx.send((i, std::thread::current().id()));
            });
        }
        drop(tx);
        let got: Vec<_> = rx.iter().collect();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|g| g.1 == got[0].1));
        assert_ne!(got[0].1, std::thread::current().id());
    }

    #[test]
    fn dropping_it_waits_for_what_it_was_given() {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let behind = Behind::default();
        for _ in 0..10 {
            let done = done.clone();
            behind.run(move || {
                std::thread::sleep(std::time::Duration::from_millis(5));
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        drop(behind);
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 10);
    }

    #[test]
    fn a_task_that_panics_loses_only_itself() {
        let behind = Behind::default();
        let (tx, rx) = mpsc::channel::<u32>();
        let lost = tx.clone();
        behind.run(move || {
            let _keep = lost;
            panic!("a task failed");
        });
        behind.run(move || {
            let _ = tx.send(7);
        });
        // The panicking task's sender was dropped unused; the next one ran.
        assert_eq!(rx.iter().collect::<Vec<_>>(), vec![7]);
    }
}
