//! Named failure points for crash-safety tests. With the `test-hooks` feature a test can
//! arm a point; the next time the code reaches it, the operation fails there as if the
//! process had died. Without the feature every point is a no-op.

use crate::error::Result;

#[cfg(feature = "test-hooks")]
static ARMED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// `CAPVAULT_CRASH_AT=<name>[:<n>]`: the process aborts (as if killed) the n-th time
/// (default first) it reaches point `name` (`segments:after-write` is the first time,
/// `segments:after-write:3` the third). For crash tests in a child process.
#[cfg(feature = "test-hooks")]
fn crash_here(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SPEC: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("CAPVAULT_CRASH_AT").ok()?;
        // Point names hold colons themselves: only a number after the last one is a count.
        Some(
            match v.rsplit_once(':').map(|(n, k)| (n, k.parse::<u64>())) {
                Some((n, Ok(k))) => (n.to_string(), k),
                _ => (v, 1),
            },
        )
    });
    if let Some((point, nth)) = spec {
        if point == name && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            std::process::abort();
        }
    }
}

/// `CAPVAULT_FAIL_ALWAYS=<name>`: point `name` fails every time it is reached (a
/// keychain that keeps refusing a write, for tests in a child process).
#[cfg(feature = "test-hooks")]
fn fails_always(name: &str) -> bool {
    static SPEC: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| std::env::var("CAPVAULT_FAIL_ALWAYS").ok())
        .as_deref()
        == Some(name)
}

/// Fails with a storage error if `name` is armed (and disarms it).
#[inline]
pub(crate) fn hit(name: &str) -> Result<()> {
    #[cfg(feature = "test-hooks")]
    {
        crash_here(name);
        if fails_always(name) {
            return Err(crate::error::Error::Storage(format!(
                "injected failure at {name}"
            )));
        }
        let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = armed.iter().position(|a| a == name) {
            armed.remove(i);
            return Err(crate::error::Error::Storage(format!(
                "injected failure at {name}"
            )));
        }
    }
    let _ = name;
    Ok(())
}

/// Arms failure point `name` (test builds only).
#[cfg(feature = "test-hooks")]
pub fn arm(name: &str) {
    ARMED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(name.to_string());
}

/// Holds of points armed by [`hold`]: a thread reaching one waits there until released.
#[cfg(feature = "test-hooks")]
static HELD: std::sync::Mutex<Vec<(String, std::sync::Arc<HoldState>)>> =
    std::sync::Mutex::new(Vec::new());

#[cfg(feature = "test-hooks")]
#[derive(Default)]
struct HoldState {
    /// (reached, released)
    at: std::sync::Mutex<(bool, bool)>,
    changed: std::sync::Condvar,
}

#[cfg(feature = "test-hooks")]
impl HoldState {
    fn set(&self, f: impl FnOnce(&mut (bool, bool))) {
        f(&mut self.at.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_all();
    }

    fn wait_for(&self, done: impl Fn(&(bool, bool)) -> bool) {
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        while !done(&at) {
            at = self.changed.wait(at).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Waits here while a test holds point `name` (the first thread to reach it, once);
/// otherwise a no-op. Unlike [`hit`] it never fails: it makes a point observably busy
/// (a sync in progress) so a test can show what does not wait for it.
#[inline]
pub(crate) fn pause(name: &str) {
    #[cfg(feature = "test-hooks")]
    {
        let held = {
            let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
            held.iter()
                .position(|(n, _)| n == name)
                .map(|i| held.remove(i).1)
        };
        if let Some(h) = held {
            h.set(|at| at.0 = true);
            h.wait_for(|at| at.1);
        }
    }
    let _ = name;
}

/// A point held by a test (test builds only): see [`hold`].
#[cfg(feature = "test-hooks")]
pub struct Hold(std::sync::Arc<HoldState>);

#[cfg(feature = "test-hooks")]
impl Hold {
    /// Returns once a thread is waiting at the point.
    pub fn reached(&self) {
        self.0.wait_for(|at| at.0);
    }

    /// Lets the waiting thread (or the next one to reach the point) go on.
    pub fn release(&self) {
        self.0.set(|at| at.1 = true);
    }
}

#[cfg(feature = "test-hooks")]
impl Drop for Hold {
    /// A test that fails while holding a point does not leave a thread waiting.
    fn drop(&mut self) {
        self.release();
    }
}

/// Holds point `name` (test builds only): the next thread to reach it waits there until
/// the returned [`Hold`] is released or dropped.
#[cfg(feature = "test-hooks")]
pub fn hold(name: &str) -> Hold {
    let h = std::sync::Arc::new(HoldState::default());
    HELD.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((name.to_string(), h.clone()));
    Hold(h)
}
