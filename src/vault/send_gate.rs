//! The gate bundles leave the device through. The uploader sends only while the gate
//! is open and asks it before handing over each piece of a body; an erase closes it and
//! waits for a send under way to stop, so no piece of the erased user's bundles is let
//! through after the erase returned. A send counts until its last piece is let
//! through: that piece may still be on its way when the erase returns (the body went
//! out before the erase, as an acknowledged bundle did), and the erase never waits for
//! the collector's reply. A piece whose socket write stalls holds the wait for the
//! write timeout (60 s).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The longest one piece may take to go out: the uploader's timeout for a socket write
/// that makes no progress, and so the longest [`SendGate::close_and_wait`] waits.
pub(crate) const PIECE_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct SendGate {
    state: Mutex<GateState>,
    idle: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    sending: usize,
}

/// A send under way; the gate counts it until this is dropped.
#[derive(Debug)]
#[cfg_attr(not(feature = "upload"), allow(dead_code))]
pub(crate) struct Sending<'a>(&'a SendGate);

#[cfg_attr(not(feature = "upload"), allow(dead_code))]
impl SendGate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a send; `None` once the gate is closed.
    pub(crate) fn enter(&self) -> Option<Sending<'_>> {
        let mut st = self.state();
        if st.closed {
            return None;
        }
        st.sending += 1;
        Some(Sending(self))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Closes the gate for good and waits until no send is under way: each stops at
    /// its next piece, or has handed over its last.
    pub(crate) fn close_and_wait(&self) {
        let mut st = self.state();
        st.closed = true;
        while st.sending > 0 {
            st = self.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.sending -= 1;
        if st.sending == 0 {
            self.0.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Closing waits for the send under way and refuses new ones from then on.
    #[test]
    fn close_waits_for_the_send_under_way_and_refuses_new_ones() {
        let gate = Arc::new(SendGate::default());
        let (entered, sender_in) = std::sync::mpsc::channel();
        let (saw_closed, closed_seen) = std::sync::mpsc::channel();
        let (finish, may_finish) = std::sync::mpsc::channel::<()>();
        let g = gate.clone();
        let sender = std::thread::spawn(move || {
            let sending = g.enter().expect("open");
            entered.send(()).unwrap();
            // A piece at a time, until the gate says stop.
            while !g.is_closed() {
                std::thread::sleep(Duration::from_millis(1));
            }
            saw_closed.send(()).unwrap();
            may_finish.recv().unwrap();
            drop(sending);
        });
        sender_in.recv().unwrap();
        let g = gate.clone();
        let closer = std::thread::spawn(move || g.close_and_wait());
        // The closer has closed the gate and is waiting: the send is still counted.
        closed_seen.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closer.is_finished(), "closed while a send was under way");
        finish.send(()).unwrap();
        closer.join().unwrap();
        sender.join().unwrap();
        assert!(gate.enter().is_none());
        // Closing again does not wait for anything.
        gate.close_and_wait();
    }
}
