//! The synchronous-mode handoff (docs/ARCHITECTURE.md, "Execution models"; opt-PSMR paper,
//! Algorithm 1 lines 18–29): every thread stops at a `g_all` command, one
//! thread executes it once all have arrived, then releases the others.
//!
//! ```text
//!  early t_j:  arrive ─> Wait ─── (own work? wait(released > round)) ──> resume
//!  last  t_k:  arrive ─> Execute ─ execute ─ release(round) ────────────> resume
//! ```
//!
//! The thread that arrives last executes the round (the paper has the
//! lowest thread do it). Nobody waits to start the work: the last thread
//! finds everyone stopped and goes on at once, where a fixed executor that
//! arrived first would have parked and then waited for a wake-up while every
//! other thread waited on it in turn. Two threads that
//! arrive together may both see the round complete; a compare-and-swap on
//! the next round to claim picks one.
//!
//! Every thread counts its synchronizations (`round`); all threads see the
//! same sequence of `g_all` commands, so their counts agree. Each thread
//! publishes how many rounds it has arrived at. The executor of round r+1
//! runs after round r is released: it needs every thread at r+1, the
//! executor of r among them, which arrives there only after releasing r.
//!
//! A thread that arrives early need not wait for the release at once: only
//! before it executes something of its own ([`Rendezvous::arrive`] now,
//! [`Rendezvous::await_release`] later). Between two `g_all` commands with
//! nothing of its own in between it has nothing to execute, so it arrives
//! at the next round at once: at 100 % dependent commands the faster
//! threads run ahead and the slowest executes every round without waiting
//! (no wake-up per command).
//!
//! Waiting busy-waits first, then parks on a condition variable. Spinning
//! is the cheapest handoff when every thread has a core, but with more
//! threads than cores a spinning thread steals the core of the thread it
//! waits for, and parking costs a wake-up per thread (`cargo bench -p
//! psmr-replica --bench handoff` measures both). So the default
//! spins when the threads fit on the cores, and otherwise yields the core a
//! bounded number of times, which hands it to a thread that still has to
//! arrive, before parking. The spin is short, near the cost of parking: a
//! replica shares its machine with other processes (acceptors, clients),
//! and a long spin took so much of it that psmr at 100 % dependent fell far
//! behind smr over the network (docs/journal.md).
//!
//! If a thread dies, [`Rendezvous::abort`] wakes every waiter, who then gets
//! `Err(Aborted)` instead of waiting forever.

use crate::shim::{
    AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering, spin_loop, yield_now,
};

/// Spins of [`WaitPolicy::Auto`] when the threads fit on the cores.
const AUTO_SPINS: u32 = 1 << 10;

/// How a thread waits at a synchronization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Spin up to 1,024 times when the threads fit on the machine's cores;
    /// with more threads than cores, yield the core up to 256 times (a
    /// waiting thread then hands its core to one that still has to
    /// arrive); then park.
    Auto,
    /// Spin up to this many times, then park.
    Spin(u32),
    /// Yield up to this many times, then park.
    Yield(u32),
    /// Park at once.
    Park,
}

/// How long to busy-wait, and how, before parking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patience {
    /// Busy-wait iterations before parking.
    pub iterations: u32,
    /// Whether each iteration yields the core (else it is a spin hint).
    pub yields: bool,
}

impl WaitPolicy {
    /// How `threads` threads on `cores` cores wait.
    pub fn patience(self, threads: usize, cores: usize) -> Patience {
        let (iterations, yields) = match self {
            WaitPolicy::Auto if threads <= cores => (AUTO_SPINS, false),
            WaitPolicy::Auto => (256, true),
            WaitPolicy::Spin(n) => (n, false),
            WaitPolicy::Yield(n) => (n, true),
            WaitPolicy::Park => (0, false),
        };
        Patience { iterations, yields }
    }
}

/// Another thread died; the engine is shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aborted;

/// Where threads wait for a condition: busy-wait with patience, then park;
/// [`Parking::notify`] after changing a condition, [`Parking::abort`] to
/// wake everyone for good. Serves the rendezvous and the `classes`
/// engine's synchronizations alike.
#[derive(Debug)]
pub struct Parking {
    patience: Patience,
    aborted: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Parking {
    /// Waiters that busy-wait with `patience` before parking.
    pub fn new(patience: Patience) -> Parking {
        Parking {
            patience,
            aborted: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Wakes every waiter for good: a thread died.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// Wakes parked waiters to look at their conditions again.
    pub fn notify(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }

    /// Waits until `done()`; `Err(Aborted)` if aborted first.
    pub fn wait_until(&self, done: impl Fn() -> bool) -> Result<(), Aborted> {
        let ready = || done() || self.aborted.load(Ordering::SeqCst);
        for _ in 0..self.patience.iterations {
            if ready() {
                break;
            }
            if self.patience.yields {
                yield_now();
            } else {
                spin_loop();
            }
        }
        if !ready() {
            let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            while !ready() {
                guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        if self.aborted.load(Ordering::SeqCst) && !done() {
            return Err(Aborted);
        }
        Ok(())
    }
}

/// What a thread that arrived at a round does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Turn {
    /// It arrived last: every other thread has stopped. It executes the
    /// round, then calls [`Rendezvous::release`].
    Execute,
    /// Another thread executes the round: [`Rendezvous::await_release`]
    /// before any work of its own.
    Wait,
}

/// The meeting point of K threads at each synchronous-mode command.
#[derive(Debug)]
pub struct Rendezvous {
    /// Per thread: rounds arrived at.
    arrived: Vec<Padded>,
    /// Rounds whose executor has been chosen.
    claimed: AtomicU64,
    released: AtomicU64,
    parking: Parking,
}

/// A counter on its own cache line: threads do not slow each other down.
#[derive(Debug)]
#[repr(align(64))]
struct Padded(AtomicU64);

impl Rendezvous {
    /// A rendezvous of `threads` threads that busy-wait with `patience`.
    pub fn new(threads: usize, patience: Patience) -> Rendezvous {
        assert!(threads >= 1);
        Rendezvous {
            arrived: (0..threads).map(|_| Padded(AtomicU64::new(0))).collect(),
            claimed: AtomicU64::new(0),
            released: AtomicU64::new(0),
            parking: Parking::new(patience),
        }
    }

    /// Where the threads of this rendezvous wait (other synchronizations of
    /// the same threads may wait there too).
    pub fn parking(&self) -> &Parking {
        &self.parking
    }

    /// Thread `thread` has stopped its own work before round `round`, and
    /// arrived at every round before it. Exactly one thread of each round
    /// gets [`Turn::Execute`], once every thread has arrived.
    pub fn arrive(&self, thread: usize, round: u64) -> Turn {
        let before = self.arrived[thread].0.swap(round + 1, Ordering::SeqCst);
        assert_eq!(before, round, "thread {thread} skipped a round");
        let complete = self
            .arrived
            .iter()
            .all(|a| a.0.load(Ordering::SeqCst) > round);
        let claimed = complete
            && self
                .claimed
                .compare_exchange(round, round + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
        if claimed {
            debug_assert_eq!(
                self.released.load(Ordering::SeqCst),
                round,
                "rounds out of step"
            );
            Turn::Execute
        } else {
            Turn::Wait
        }
    }

    /// Waits until round `round` (and every one before it) is released: the
    /// thread then may execute its own commands. Two waits, each with the
    /// whole patience: for the last thread to arrive, then for it to
    /// execute the round (as long as a fixed executor's two waits were).
    /// A claim wakes nobody: a thread parked in the first wait wakes at the
    /// release, when both conditions hold.
    pub fn await_release(&self, round: u64) -> Result<(), Aborted> {
        self.parking
            .wait_until(|| self.claimed.load(Ordering::SeqCst) > round)?;
        self.parking
            .wait_until(|| self.released.load(Ordering::SeqCst) > round)
    }

    /// Whether round `round` (and every one before it) is released.
    pub fn is_released(&self, round: u64) -> bool {
        self.released.load(Ordering::SeqCst) > round
    }

    /// A thread's whole part of round `round`: arrive, execute it with
    /// `work` if it is the last, else wait until it is released.
    pub fn meet(&self, thread: usize, round: u64, work: impl FnOnce()) -> Result<(), Aborted> {
        match self.arrive(thread, round) {
            Turn::Execute => {
                work();
                self.release(round);
                Ok(())
            }
            Turn::Wait => self.await_release(round),
        }
    }

    /// The executor's last part of round `round`: let the others go.
    pub fn release(&self, round: u64) {
        self.released.store(round + 1, Ordering::SeqCst);
        self.parking.notify();
    }

    /// Wakes every waiter for good: a thread died.
    pub fn abort(&self) {
        self.parking.abort();
    }
}
