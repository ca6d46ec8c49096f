//! The synchronous-mode handoff (DESIGN.md section 5; opt-PSMR paper,
//! Algorithm 1 lines 18–29): every thread stops at a `g_all` command, the
//! lowest thread executes it once all others have arrived, then releases
//! them.
//!
//! ```text
//!  follower t_k:  arrive ──────────────── wait(released > round) ──> resume
//!  leader   t_0:  wait(arrived = K-1) ─ execute ─ release(round) ──> resume
//! ```
//!
//! Waiting spins first, then parks on a condition variable. Spinning costs
//! about 0.1 µs per handoff when every thread has a core, but with more
//! threads than cores a spinning thread steals the core of the thread it
//! waits for; parking costs about 25 µs. So the default spins only when the
//! threads fit on the cores, and parks at once otherwise.
//!
//! Every thread counts its synchronizations (`round`); all threads see the
//! same sequence of `g_all` commands, so their counts agree. A follower can
//! arrive for round r+1 only after the leader released round r, which is
//! after the leader reset the arrival count: one counter serves every round.
//!
//! If a thread dies, [`Rendezvous::abort`] wakes every waiter, who then gets
//! `Err(Aborted)` instead of waiting forever.

use crate::shim::{AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering, spin_loop};

/// How a thread waits at a synchronization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Spin up to 16,384 times when the threads fit on the machine's cores,
    /// park at once otherwise.
    Auto,
    /// Spin up to this many times, then park.
    Spin(u32),
    /// Park at once.
    Park,
}

impl WaitPolicy {
    /// Spin iterations for `threads` threads on `cores` cores.
    pub fn spin_limit(self, threads: usize, cores: usize) -> u32 {
        match self {
            WaitPolicy::Auto if threads <= cores => 1 << 14,
            WaitPolicy::Auto | WaitPolicy::Park => 0,
            WaitPolicy::Spin(n) => n,
        }
    }
}

/// Another thread died; the engine is shutting down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aborted;

/// The meeting point of K threads at each synchronous-mode command.
#[derive(Debug)]
pub struct Rendezvous {
    threads: usize,
    spin_limit: u32,
    arrived: AtomicUsize,
    released: AtomicU64,
    aborted: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Rendezvous {
    /// A rendezvous of `threads` threads that spin up to `spin_limit` times.
    pub fn new(threads: usize, spin_limit: u32) -> Rendezvous {
        assert!(threads >= 1);
        Rendezvous {
            threads,
            spin_limit,
            arrived: AtomicUsize::new(0),
            released: AtomicU64::new(0),
            aborted: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// A follower's part of synchronization `round`: announce arrival, then
    /// wait until the leader has executed and released it.
    pub fn follow(&self, round: u64) -> Result<(), Aborted> {
        debug_assert!(self.threads > 1, "a single thread has no followers");
        let before = self.arrived.fetch_add(1, Ordering::SeqCst);
        debug_assert!(before < self.threads - 1, "more arrivals than followers");
        if before + 1 == self.threads - 1 {
            self.notify();
        }
        self.wait_until(|| self.released.load(Ordering::SeqCst) > round)
    }

    /// The leader's first part of synchronization `round`: wait until every
    /// follower has arrived. The leader then has the state to itself.
    pub fn gather(&self, round: u64) -> Result<(), Aborted> {
        debug_assert_eq!(
            self.released.load(Ordering::SeqCst),
            round,
            "rounds out of step"
        );
        self.wait_until(|| self.arrived.load(Ordering::SeqCst) == self.threads - 1)?;
        self.arrived.store(0, Ordering::SeqCst);
        Ok(())
    }

    /// The leader's second part: let the followers go.
    pub fn release(&self, round: u64) {
        self.released.store(round + 1, Ordering::SeqCst);
        self.notify();
    }

    /// Wakes every waiter for good: a thread died.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    fn notify(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }

    fn wait_until(&self, done: impl Fn() -> bool) -> Result<(), Aborted> {
        let ready = || done() || self.aborted.load(Ordering::SeqCst);
        for _ in 0..self.spin_limit {
            if ready() {
                break;
            }
            spin_loop();
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
