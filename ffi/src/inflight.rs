//! A value shared with every C thread that a close may take away: calls in flight are
//! waited for without a shared write on each call.
//!
//! `capvault_close` must not drop a vault while a call on another thread is using it. A
//! reader-writer lock does that at the price of two atomic read-modify-writes on one
//! shared cache line per call, a tenth of a small append. Instead each thread owns a
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
//! thread already inside a call (a call from a signal handler), a call takes the value's
//! read lock instead, which close takes for writing.

use std::cell::Cell;
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
}

impl<T> Shared<T> {
    pub(crate) fn new(value: T) -> Self {
        Shared {
            value: AtomicPtr::new(Box::into_raw(Box::new(value))),
            lock: RwLock::new(()),
            fast: barrier::register(),
            released: AtomicBool::new(false),
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
            if let Some(slot) = mine.filter(|slot| slot.busy.load(Ordering::Relaxed) == 0) {
                slot.busy.store(self.key(), Ordering::Relaxed);
                let _leave = InSlot(slot);
                // Ordered against the close by the barrier it runs on this thread.
                compiler_fence(Ordering::SeqCst);
                let value = self.value.load(Ordering::Acquire);
                // SAFETY: not null, so the close has not taken it yet, and it waits for
                // this slot (which holds our key until `_leave` drops) before dropping.
                return unsafe { value.as_ref() }.map(f);
            }
        }
        // Recursive: a call from a signal handler on a thread inside a call must not
        // queue behind a waiting close that waits for that call.
        let _read = self.lock.read_recursive();
        let value = self.value.load(Ordering::Acquire);
        // SAFETY: the close takes the value only under the write lock.
        unsafe { value.as_ref() }.map(f)
    }

    /// Runs `f` while the value is there (not yet taken by a close). Off the hot path:
    /// takes the read lock, so a close in progress finishes before `f` runs (and `f`
    /// then does not run).
    pub(crate) fn while_there(&self, f: impl FnOnce()) {
        let _read = self.lock.read();
        if !self.value.load(Ordering::Acquire).is_null() {
            f();
        }
    }

    /// Takes the value once every call in flight has left it, and runs `f` on it (on
    /// `None` when it was taken before) while calls wait: a call that starts meanwhile
    /// finds it gone, and `while_there` runs after `f` (and skips its closure).
    pub(crate) fn close<R>(&self, f: impl FnOnce(Option<T>) -> R) -> R {
        let _write = self.lock.write();
        let value = self.value.swap(ptr::null_mut(), Ordering::SeqCst);
        if value.is_null() {
            return f(None);
        }
        if self.fast {
            barrier::everywhere();
            self.wait_for_calls();
        }
        // SAFETY: the pointer came from `Box::into_raw` and is null in `self.value` now;
        // no call holds it (slots checked above, read lock held by none).
        let value = unsafe { Box::from_raw(value) };
        let result = f(Some(*value));
        self.released.store(true, Ordering::Release);
        result
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

    /// Runs a full memory barrier on every running thread of this process.
    pub(super) fn everywhere() {
        // SAFETY: as above.
        let rc = unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0, 0) };
        if rc != 0 {
            // Only EPERM (not registered) is documented, and this process registered
            // before its first call used a slot. Should a kernel refuse anyway, the
            // close waits a scheduling period for stores in flight to drain and says so.
            let err = std::io::Error::last_os_error();
            eprintln!(
                "capvault: membarrier failed after registration ({err}); closing after a \
                 grace period"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Without the barrier every call takes the read lock.
#[cfg(not(target_os = "linux"))]
mod barrier {
    pub(super) fn register() -> bool {
        false
    }

    pub(super) fn everywhere() {}
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use super::*;

    /// A value that counts its uses and notices being used after it was dropped.
    struct Probe {
        uses: AtomicU64,
        dropped: Arc<AtomicBool>,
        alive: AtomicBool,
    }

    impl Probe {
        fn new(dropped: &Arc<AtomicBool>) -> Self {
            Probe {
                uses: AtomicU64::new(0),
                dropped: dropped.clone(),
                alive: AtomicBool::new(true),
            }
        }

        fn use_it(&self) {
            assert!(self.alive.load(Ordering::SeqCst), "used after drop");
            self.uses.fetch_add(1, Ordering::SeqCst);
            std::hint::spin_loop();
            assert!(self.alive.load(Ordering::SeqCst), "dropped while in use");
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.alive.store(false, Ordering::SeqCst);
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn leaked(shared: Shared<Probe>) -> &'static Shared<Probe> {
        Box::leak(Box::new(shared))
    }

    #[test]
    fn this_machine_has_the_barrier() {
        // The suite runs on Linux, where membarrier(2) is there since 4.14: without it
        // the fast path would go untested.
        assert!(barrier::register());
    }

    /// Calls on 4 threads while a close takes the value: every call either used the
    /// value before the close took it (its use counted in the value the close got) or
    /// found it gone; none uses it after.
    #[test]
    fn a_close_waits_for_calls_in_flight_and_later_calls_find_the_value_gone() {
        for round in 0..50 {
            let dropped = Arc::new(AtomicBool::new(false));
            let shared = leaked(Shared::new(Probe::new(&dropped)));
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
            let uses = shared.close(|p| {
                let p = p.expect("the value");
                p.uses.load(Ordering::SeqCst)
            });
            assert!(dropped.load(Ordering::SeqCst));
            for t in threads {
                t.join().expect("no call saw the value dropped");
            }
            assert_eq!(uses, ok.load(Ordering::SeqCst), "round {round}");
            assert!(shared.with(this_thread(), |_| ()).is_none());
            assert!(!shared.holds());
            assert!(shared.close(|p| p.is_none()));
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
        let dropped = Arc::new(AtomicBool::new(false));
        let shared = leaked(Shared::new(Probe::new(&dropped)));
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
        shared.close(|p| assert_eq!(p.unwrap().uses.load(Ordering::SeqCst), 2));
    }

    /// Threads that come and go reuse the slots of threads that are gone.
    #[test]
    fn exited_threads_give_their_slots_back() {
        let dropped = Arc::new(AtomicBool::new(false));
        let shared = leaked(Shared::new(Probe::new(&dropped)));
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
        let dropped = Arc::new(AtomicBool::new(false));
        let shared = leaked(Shared::new(Probe::new(&dropped)));
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
        shared.close(|p| {
            assert!(p.is_some());
            assert!(finished.load(Ordering::SeqCst), "closed during the call");
        });
        assert!(call.join().unwrap().is_some());
        assert!(dropped.load(Ordering::SeqCst));
        let ran = Cell::new(false);
        shared.while_there(|| ran.set(true));
        assert!(!ran.get());
    }

    /// A call made inside a call on the same thread (as from a signal handler) takes
    /// the lock instead of the busy slot, and both finish.
    #[test]
    fn a_call_inside_a_call_on_the_same_thread_works() {
        let dropped = Arc::new(AtomicBool::new(false));
        let shared = leaked(Shared::new(Probe::new(&dropped)));
        let inner = shared.with(this_thread(), |p| {
            p.use_it();
            shared.with(this_thread(), |p| p.use_it())
        });
        assert_eq!(inner, Some(Some(())));
        shared.close(|p| assert_eq!(p.unwrap().uses.load(Ordering::SeqCst), 2));
    }

    /// Without the barrier (`fast` false) the lock alone keeps the same rules.
    #[test]
    fn the_lock_alone_keeps_the_rules() {
        let dropped = Arc::new(AtomicBool::new(false));
        let mut slow = Shared::new(Probe::new(&dropped));
        slow.fast = false;
        let shared = leaked(slow);
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
        let uses = shared.close(|p| p.unwrap().uses.load(Ordering::SeqCst));
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(uses, ok.load(Ordering::SeqCst));
    }
}
