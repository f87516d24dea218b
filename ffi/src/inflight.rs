//! A value shared with every C thread that a close may take away: calls in flight are
//! waited for without a shared write on each call.
//!
//! `capvault_close` must not drop a vault while a call on another thread is using it. A
//! reader-writer lock does that at the price of two atomic read-modify-writes per call on
//! one cache line that every calling thread writes. Instead each thread owns a
//! slot, on a cache line of its own, holding the address of the `Shared` it is calling
//! on (0 when none). A call stores that address into its slot with a plain store, then
//! reads the value's pointer; a close clears the pointer, makes every thread of the
//! process run a full memory barrier (Linux `membarrier(2)`,
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED`), then waits until no slot holds the address. The
//! barrier makes the pair a Dekker handshake: either the call reads the cleared pointer
//! and backs out, or its slot store is visible to the close, which waits for it (the
//! asymmetric fences of liburcu and folly's hazard pointers).
//!
//! Where that barrier is not available (another OS, a seccomp filter), on a thread whose
//! slot is gone (it is exiting: a call from another thread-local's destructor) and on a
//! thread inside a call on another value (a call from a signal handler), a call takes
//! the value's read lock instead, which close takes for writing. A call inside a call on
//! the same value uses it through the interrupted call's slot (the lock may be held by a
//! close waiting for that call), and a close there refuses rather than wait for itself.
//! Should the barrier fail at close (a seccomp filter installed after the open), the
//! value is never freed: calls in flight might still hold it.
//!
//! A thread whose first call comes from a POSIX thread-specific-data destructor (after
//! its thread-locals were destroyed) keeps its slot for the life of the process: 128
//! bytes, not a hazard.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

/// One thread's slot. Slots are never freed: a thread that exits gives its slot back
/// for the next thread to take. 128 bytes: x86 prefetches cache lines in pairs, so two
/// threads' slots on adjacent 64-byte lines would still contend.
#[repr(align(128))]
pub(crate) struct Slot {
    /// The address of the `Shared` this thread is calling on, 0 when none.
    busy: AtomicUsize,
    /// A word the caller keeps per thread (see `memo`).
    memo: AtomicUsize,
    /// Whether a live thread owns the slot.
    owned: AtomicBool,
    /// The slot pushed before this one (fixed once the slot is published).
    next: AtomicPtr<Slot>,
}

/// Every slot ever made, newest first. Lock-free, so a child process after `fork()`
/// never finds it locked by a thread that does not exist there.
static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(ptr::null_mut());

fn slots() -> impl Iterator<Item = &'static Slot> {
    let mut next = SLOTS.load(Ordering::Acquire);
    std::iter::from_fn(move || {
        // SAFETY: every pointer in the list is a leaked `Slot`, never freed.
        let slot = unsafe { next.as_ref() }?;
        next = slot.next.load(Ordering::Acquire);
        Some(slot)
    })
}

/// A slot for this thread: one given back by an exited thread, or a new one.
fn take_slot() -> &'static Slot {
    for slot in slots() {
        if !slot.owned.load(Ordering::Relaxed)
            && slot
                .owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return slot;
        }
    }
    let slot: &'static Slot = Box::leak(Box::new(Slot {
        busy: AtomicUsize::new(0),
        memo: AtomicUsize::new(0),
        owned: AtomicBool::new(true),
        next: AtomicPtr::new(ptr::null_mut()),
    }));
    let mut head = SLOTS.load(Ordering::Relaxed);
    loop {
        slot.next.store(head, Ordering::Relaxed);
        match SLOTS.compare_exchange_weak(
            head,
            ptr::from_ref(slot).cast_mut(),
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => return slot,
            Err(now) => head = now,
        }
    }
}

impl Slot {
    /// The word last stored with `set_memo` on this slot: by this thread, or by a thread
    /// that had the slot before (so only for what holds for every thread; the handle
    /// registry keeps the last handle address it checked, valid forever).
    #[inline]
    pub(crate) fn memo(&self) -> usize {
        self.memo.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn set_memo(&self, word: usize) {
        self.memo.store(word, Ordering::Relaxed);
    }
}

thread_local! {
    /// This thread's slot, taken on its first call. No destructor: reading it is one
    /// load with no state to check, and it stays readable while the thread exits
    /// (`GIVE_BACK` empties it then).
    static MINE: Cell<Option<&'static Slot>> = const { Cell::new(None) };
    /// Gives this thread's slot back when the thread exits.
    static GIVE_BACK: GiveBack = const { GiveBack };
}

struct GiveBack;

impl Drop for GiveBack {
    fn drop(&mut self) {
        if let Some(slot) = MINE.replace(None) {
            // A thread that ended inside a call (`pthread_exit` from a signal handler)
            // keeps its slot: a close of that value could never finish either way.
            if slot.busy.load(Ordering::Relaxed) == 0 {
                slot.owned.store(false, Ordering::Release);
            }
        }
    }
}

/// This thread's slot (one thread-local access per call: in a shared library each costs
/// a call into the dynamic linker). `None` while the thread exits.
#[inline]
pub(crate) fn this_thread() -> Option<&'static Slot> {
    MINE.get().or_else(claim)
}

/// Takes a slot for this thread, unless the thread is exiting.
#[cold]
#[inline(never)]
fn claim() -> Option<&'static Slot> {
    // Registers `GIVE_BACK`'s destructor; fails once it has run.
    GIVE_BACK.try_with(|_| ()).ok()?;
    let slot = take_slot();
    MINE.set(Some(slot));
    Some(slot)
}

/// Marks a close finished, by return or by panic.
struct Released<'a>(&'a AtomicBool);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Leaves the slot when the call ends, by return or by panic.
struct InSlot(&'static Slot);

impl Drop for InSlot {
    fn drop(&mut self) {
        self.0.busy.store(0, Ordering::Release);
    }
}

/// A value that calls on many threads use and one close takes away.
pub(crate) struct Shared<T> {
    /// The value (boxed), null once taken.
    value: AtomicPtr<T>,
    /// Held for reading by calls that cannot use a slot, for writing by the close.
    lock: RwLock<()>,
    /// Whether calls may use their slots (the process-wide barrier is available).
    fast: bool,
    /// Set once the close has finished with the value.
    released: AtomicBool,
    /// `AtomicPtr` is `Send + Sync` whatever it points to; this keeps `Shared` from
    /// being either on its own (see the impls below).
    _value: PhantomData<*const T>,
    #[cfg(test)]
    refuse_barrier: AtomicBool,
}

// SAFETY: calls on many threads get `&T` (so `T: Sync`), and the close may drop or
// move `T` on any thread (so `T: Send`).
unsafe impl<T: Send + Sync> Sync for Shared<T> {}
// SAFETY: moving a `Shared` moves the `T` it owns.
unsafe impl<T: Send> Send for Shared<T> {}

/// What `Shared::close` hands over.
pub(crate) enum Taken<T: 'static> {
    /// The value; no call uses it any more.
    Value(T),
    /// Nothing: an earlier close took it.
    Gone,
    /// The value, which calls in flight might still be using: the barrier that would
    /// tell failed. It is left allocated for the life of the process, new calls find it
    /// gone, and only what may run beside those calls may be done with it.
    Stuck(&'static T),
    /// Nothing done: the close was called from inside a call on the same value on this
    /// thread (a signal handler), which it would wait for forever.
    Inside,
}

impl<T> Shared<T> {
    pub(crate) fn new(value: T) -> Self {
        Shared {
            value: AtomicPtr::new(Box::into_raw(Box::new(value))),
            lock: RwLock::new(()),
            fast: barrier::register(),
            released: AtomicBool::new(false),
            _value: PhantomData,
            #[cfg(test)]
            refuse_barrier: AtomicBool::new(false),
        }
    }

    fn key(&self) -> usize {
        ptr::from_ref(self) as usize
    }

    /// Runs `f` on the value, or returns `None` when it was taken. `mine` is
    /// `this_thread()`.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        mine: Option<&'static Slot>,
        f: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        if self.fast {
            // No slot while the thread exits; a busy one means a call from a signal
            // handler that interrupted a call on this thread.
            if let Some(slot) = mine {
                let busy = slot.busy.load(Ordering::Relaxed);
                if busy == 0 {
                    // Release: a store after the last call's release of the slot must
                    // not let a close see this one without that release.
                    slot.busy.store(self.key(), Ordering::Release);
                    let _leave = InSlot(slot);
                    // Ordered against the close by the barrier it runs on this thread.
                    compiler_fence(Ordering::SeqCst);
                    let value = self.value.load(Ordering::Acquire);
                    // SAFETY: not null, so the close has not taken it yet, and it waits
                    // for this slot (our key until `_leave` drops) before dropping it.
                    return unsafe { value.as_ref() }.map(f);
                }
                if busy == self.key() {
                    // Inside a call on this value, interrupted: that call's slot keeps
                    // the value from being dropped, and the lock could be held by a
                    // close waiting for that call.
                    let value = self.value.load(Ordering::Acquire);
                    // SAFETY: as above, through the interrupted call's slot.
                    return unsafe { value.as_ref() }.map(f);
                }
            }
        }
        // Recursive: never queued behind a waiting close while this thread (in a call it
        // interrupted) holds the read lock already.
        let _read = self.lock.read_recursive();
        let value = self.value.load(Ordering::Acquire);
        // SAFETY: the close takes the value only under the write lock.
        unsafe { value.as_ref() }.map(f)
    }

    /// Runs `f` while the value is there (not yet taken by a close). Off the hot path:
    /// takes the read lock, so a close in progress finishes before `f` runs (and `f`
    /// then does not run).
    pub(crate) fn while_there(&self, f: impl FnOnce()) {
        let _read = self.lock.read_recursive();
        if !self.value.load(Ordering::Acquire).is_null() {
            f();
        }
    }

    /// Takes the value once every call in flight has left it, and runs `f` on what it
    /// took while calls wait: a call that starts meanwhile finds the value gone, and
    /// `while_there` runs after `f` (and skips its closure).
    pub(crate) fn close<R>(&self, f: impl FnOnce(Taken<T>) -> R) -> R
    where
        T: 'static,
    {
        if this_thread().is_some_and(|slot| slot.busy.load(Ordering::Relaxed) == self.key()) {
            return f(Taken::Inside);
        }
        let _write = self.lock.write();
        // Set however `f` ends, a panic included: the value is not held any more.
        let _released = Released(&self.released);
        let value = self.value.swap(ptr::null_mut(), Ordering::SeqCst);
        if value.is_null() {
            return f(Taken::Gone);
        }
        if self.fast {
            let proven = barrier::everywhere() && !self.barrier_refused_in_test();
            self.wait_for_calls();
            if !proven {
                // SAFETY: from `Box::into_raw`, never freed from here on.
                return f(Taken::Stuck(unsafe { &*value }));
            }
        }
        // SAFETY: the pointer came from `Box::into_raw` and is null in `self.value` now;
        // no call holds it (slots checked above, read lock held by none).
        let value = unsafe { Box::from_raw(value) };
        f(Taken::Value(*value))
    }

    /// A refused barrier, injected by a test (no kernel refuses it here).
    #[cfg(test)]
    fn barrier_refused_in_test(&self) -> bool {
        self.refuse_barrier.load(Ordering::SeqCst)
    }

    #[cfg(not(test))]
    fn barrier_refused_in_test(&self) -> bool {
        false
    }

    /// Whether the value is there or its close has not finished.
    pub(crate) fn holds(&self) -> bool {
        !self.released.load(Ordering::Acquire)
    }

    fn wait_for_calls(&self) {
        let key = self.key();
        let mut rounds = 0u32;
        while slots().any(|slot| slot.busy.load(Ordering::Acquire) == key) {
            rounds += 1;
            if rounds < 64 {
                std::thread::yield_now();
            } else {
                // A call may run for a while (a screenshot, a flush).
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        let value = *self.value.get_mut();
        if !value.is_null() {
            // SAFETY: from `Box::into_raw`; `&mut self`, so no call holds it.
            drop(unsafe { Box::from_raw(value) });
        }
    }
}

/// The process-wide memory barrier.
#[cfg(target_os = "linux")]
mod barrier {
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    /// Registers this process for the barrier; false when the kernel (or a seccomp
    /// filter) refuses it. Idempotent and cheap once registered.
    pub(super) fn register() -> bool {
        // SAFETY: membarrier(2) takes no pointers.
        unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 }
    }

    /// Runs a full memory barrier on every running thread of this process; false when
    /// the kernel refused (a seccomp filter installed after the registration).
    pub(super) fn everywhere() -> bool {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0, 0) == 0 }
    }
}

/// Without the barrier every call takes the read lock.
#[cfg(not(target_os = "linux"))]
mod barrier {
    pub(super) fn register() -> bool {
        false
    }

    pub(super) fn everywhere() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use super::*;

    /// What a probe's users and its drop write: outside the probe, so a use after the
    /// drop reads `alive` false instead of freed memory.
    #[derive(Default)]
    struct State {
        uses: AtomicU64,
        alive: AtomicBool,
    }

    /// A value that counts its uses and notices being used after it was dropped.
    struct Probe(Arc<State>);

    impl Probe {
        fn new() -> (Self, Arc<State>) {
            let state = Arc::new(State::default());
            state.alive.store(true, Ordering::SeqCst);
            (Probe(state.clone()), state)
        }

        fn use_it(&self) {
            assert!(self.0.alive.load(Ordering::SeqCst), "used after drop");
            self.0.uses.fetch_add(1, Ordering::SeqCst);
            std::hint::spin_loop();
            assert!(self.0.alive.load(Ordering::SeqCst), "dropped while in use");
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.alive.store(false, Ordering::SeqCst);
        }
    }

    fn leaked() -> (&'static Shared<Probe>, Arc<State>) {
        let (probe, state) = Probe::new();
        (Box::leak(Box::new(Shared::new(probe))), state)
    }

    /// The uses counted in the value a close took (which it then drops).
    fn uses_of(taken: Taken<Probe>) -> u64 {
        match taken {
            Taken::Value(p) => p.0.uses.load(Ordering::SeqCst),
            _ => panic!("the close did not get the value"),
        }
    }

    #[test]
    fn this_machine_has_the_barrier() {
        // The suite runs on Linux, where membarrier(2) is there since 4.14: without it
        // the fast path would go untested.
        assert!(barrier::register());
        fn send_and_sync<T: Send + Sync>() {}
        send_and_sync::<Shared<capvault_core::Vault>>();
    }

    /// Calls on 4 threads while a close takes the value: every call either used the
    /// value before the close took it (its use counted in the value the close got) or
    /// found it gone; none uses it after. (A close that skips the wait fails this; one
    /// that skips the barrier cannot be caught by a test on x86, where the window it
    /// closes is a store-buffer drain: that part rests on membarrier(2)'s contract.)
    #[test]
    fn a_close_waits_for_calls_in_flight_and_later_calls_find_the_value_gone() {
        for round in 0..50 {
            let (shared, state) = leaked();
            assert!(shared.fast);
            let ok = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let ok = ok.clone();
                    std::thread::spawn(move || loop {
                        match shared.with(this_thread(), |p| p.use_it()) {
                            Some(()) => ok.fetch_add(1, Ordering::SeqCst),
                            None => return,
                        };
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_micros(200 * (round % 5)));
            let uses = shared.close(uses_of);
            assert!(!state.alive.load(Ordering::SeqCst));
            for t in threads {
                t.join().expect("no call saw the value dropped");
            }
            assert_eq!(uses, ok.load(Ordering::SeqCst), "round {round}");
            assert!(shared.with(this_thread(), |_| ()).is_none());
            assert!(!shared.holds());
            assert!(shared.close(|t| matches!(t, Taken::Gone)));
        }
    }

    /// A call from a thread-local destructor that runs after this thread's slot was
    /// given back takes the lock, and works.
    #[test]
    fn a_call_from_an_exiting_thread_uses_the_lock() {
        struct CallsAtExit(&'static Shared<Probe>, Arc<AtomicU64>);
        impl Drop for CallsAtExit {
            fn drop(&mut self) {
                assert!(
                    this_thread().is_none(),
                    "the slot outlived its thread-local"
                );
                if self.0.with(this_thread(), |p| p.use_it()).is_some() {
                    self.1.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        thread_local! {
            static AT_EXIT: Cell<Option<CallsAtExit>> = const { Cell::new(None) };
        }
        let (shared, _) = leaked();
        let done = Arc::new(AtomicU64::new(0));
        let d = done.clone();
        std::thread::spawn(move || {
            // Registered first, so destroyed after this thread's slot.
            AT_EXIT.set(Some(CallsAtExit(shared, d)));
            shared.with(this_thread(), |p| p.use_it()).unwrap();
        })
        .join()
        .unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(shared.close(uses_of), 2);
    }

    /// Threads that come and go reuse the slots of threads that are gone.
    #[test]
    fn exited_threads_give_their_slots_back() {
        let (shared, _) = leaked();
        for _ in 0..20 {
            std::thread::spawn(move || shared.with(this_thread(), |p| p.use_it()).unwrap())
                .join()
                .unwrap();
        }
        let before = slots().count();
        for _ in 0..200 {
            std::thread::spawn(move || shared.with(this_thread(), |p| p.use_it()).unwrap())
                .join()
                .unwrap();
        }
        // Other tests of this process run threads meanwhile; 200 one after another
        // would have added 200.
        assert!(slots().count() < before + 20, "{} slots", slots().count());
    }

    /// A close waits for a long call, and `while_there` runs only before the close.
    #[test]
    fn a_close_waits_for_a_long_call_and_while_there_skips_after_it() {
        let (shared, state) = leaked();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let call = std::thread::spawn(move || {
            shared.with(this_thread(), |p| {
                entered_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                p.use_it();
                f.store(true, Ordering::SeqCst);
            })
        });
        entered_rx.recv().unwrap();
        let ran = Cell::new(false);
        shared.while_there(|| ran.set(true));
        assert!(ran.get());
        shared.close(|t| {
            assert!(matches!(t, Taken::Value(_)));
            assert!(finished.load(Ordering::SeqCst), "closed during the call");
        });
        assert!(call.join().unwrap().is_some());
        assert!(!state.alive.load(Ordering::SeqCst));
        let ran = Cell::new(false);
        shared.while_there(|| ran.set(true));
        assert!(!ran.get());
    }

    /// A call made inside a call on the same thread (as from a signal handler) works,
    /// and a close there refuses instead of waiting for the call it interrupted.
    #[test]
    fn calls_and_a_close_inside_a_call_on_the_same_thread_never_wait_for_it() {
        let (shared, _) = leaked();
        let inner = shared.with(this_thread(), |p| {
            p.use_it();
            assert!(shared.close(|t| matches!(t, Taken::Inside)));
            shared.with(this_thread(), |p| p.use_it())
        });
        assert_eq!(inner, Some(Some(())));
        assert_eq!(shared.close(uses_of), 2);
    }

    /// A call inside a call on the same thread while a close on another thread holds
    /// the lock and waits for the outer call: it finds the value gone at once (it must
    /// not wait for the lock, which waits for it).
    #[test]
    fn a_call_inside_a_call_does_not_wait_for_a_close_that_waits_for_it() {
        let (shared, state) = leaked();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let call = std::thread::spawn(move || {
            shared.with(this_thread(), |p| {
                p.use_it();
                entered_tx.send(()).unwrap();
                // Until the close on the main thread has taken the value.
                while !shared.value.load(Ordering::SeqCst).is_null() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                shared.with(this_thread(), |p| p.use_it())
            })
        });
        entered_rx.recv().unwrap();
        assert_eq!(shared.close(uses_of), 1);
        assert_eq!(call.join().unwrap(), Some(None));
        assert!(!state.alive.load(Ordering::SeqCst));
    }

    /// A refused barrier: the close gets the value only to share (it stays allocated,
    /// never dropped), and calls after the close find it gone.
    #[test]
    fn a_refused_barrier_leaves_the_value_allocated_and_closed_to_calls() {
        let (shared, state) = leaked();
        shared.refuse_barrier.store(true, Ordering::SeqCst);
        shared.with(this_thread(), |p| p.use_it()).unwrap();
        shared.close(|t| match t {
            Taken::Stuck(p) => p.use_it(),
            _ => panic!("the close got the value to own"),
        });
        assert!(state.alive.load(Ordering::SeqCst), "dropped without proof");
        assert_eq!(state.uses.load(Ordering::SeqCst), 2);
        assert!(shared.with(this_thread(), |_| ()).is_none());
        assert!(!shared.holds());
    }

    /// Without the barrier (`fast` false) the lock alone keeps the same rules.
    #[test]
    fn the_lock_alone_keeps_the_rules() {
        let (probe, _) = Probe::new();
        let mut slow = Shared::new(probe);
        slow.fast = false;
        let shared: &'static Shared<Probe> = Box::leak(Box::new(slow));
        let ok = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ok = ok.clone();
                std::thread::spawn(move || {
                    while shared.with(this_thread(), |p| p.use_it()).is_some() {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2));
        let uses = shared.close(uses_of);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(uses, ok.load(Ordering::SeqCst));
    }
}
