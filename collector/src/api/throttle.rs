//! Log lines that anyone on the network can cause (a refused enrollment needs no
//! credential) are written at most once a second; the next line says how many were
//! left out. The metrics count every one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Throttle {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
    /// A throttle that has let nothing through yet (usable in a `static`).
    pub const fn new() -> Throttle {
        Throttle {
            state: Mutex::new(State {
                last: None,
                skipped: 0,
            }),
        }
    }

    /// `Some(lines skipped since the last one)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.last {
            Some(t) if now.saturating_duration_since(t) < Duration::from_secs(1) => {
                st.skipped += 1;
                None
            }
            _ => {
                st.last = Some(now);
                Some(std::mem::take(&mut st.skipped))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_next_counts_the_rest() {
        let t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.allow_at(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.allow_at(t0 + Duration::from_millis(100 * i)), None);
        }
        assert_eq!(t.allow_at(t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(t.allow_at(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_millis(2100)), Some(1));
    }
}
