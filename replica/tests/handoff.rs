//! The synchronous-mode handoff under shuttle's randomized scheduler: the
//! rendezvous source is compiled here against shuttle's primitives, and
//! shuttle explores thread interleavings (and reports deadlocks).
//!
//! Checked, for K = 2..4 threads, spinning or parking:
//! - exactly one thread executes each round, and only when every other
//!   thread has arrived and stopped its parallel work (Algorithm 1, lines
//!   20–22), whichever order they arrive in;
//! - a thread that arrived early resumes its own work only after the round
//!   was executed (line 29);
//! - threads that arrive at later rounds before earlier ones are released
//!   (they wait only before work of their own) never overlap an executor,
//!   and rounds are executed in order;
//! - a dying thread does not leave the others waiting forever.

mod shim {
    pub(crate) use shuttle::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use shuttle::sync::{Condvar, Mutex};

    pub(crate) fn spin_loop() {
        shuttle::thread::yield_now();
    }

    pub(crate) fn yield_now() {
        shuttle::thread::yield_now();
    }
}

#[allow(dead_code, unreachable_pub)]
#[path = "../src/rendezvous.rs"]
mod rendezvous;

use rendezvous::{Patience, Rendezvous, Turn};
use shuttle::sync::Arc;
use shuttle::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const ROUNDS: u64 = 3;

/// K threads meet `ROUNDS` times. Eager threads work before every round and
/// wait for its release right after arriving ([`Rendezvous::meet`]); lazy
/// ones work before some rounds only and wait for the release only before
/// that work.
fn handoff(threads: usize, patience: Patience, lazy: bool) {
    let rv = Arc::new(Rendezvous::new(threads, patience));
    let working = Arc::new(AtomicUsize::new(0));
    let executed = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (rv, working, executed) = (rv.clone(), working.clone(), executed.clone());
            shuttle::thread::spawn(move || {
                let execute = |round: u64| {
                    assert_eq!(
                        working.load(Ordering::SeqCst),
                        0,
                        "a thread is still working"
                    );
                    let before = executed.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(before, round, "rounds executed out of order or twice");
                    shuttle::thread::yield_now();
                    assert_eq!(working.load(Ordering::SeqCst), 0, "a thread resumed early");
                };
                let mut unreleased = None;
                for round in 0..ROUNDS {
                    if !lazy || (t as u64 + round).is_multiple_of(2) {
                        if let Some(r) = unreleased.take() {
                            rv.await_release(r).unwrap();
                            let done = executed.load(Ordering::SeqCst);
                            assert!(done > r, "worked before round {r} was executed");
                        }
                        working.fetch_add(1, Ordering::SeqCst);
                        shuttle::thread::yield_now();
                        working.fetch_sub(1, Ordering::SeqCst);
                    }
                    if lazy {
                        match rv.arrive(t, round) {
                            Turn::Execute => {
                                execute(round);
                                rv.release(round);
                                unreleased = None;
                            }
                            Turn::Wait => unreleased = Some(round),
                        }
                    } else {
                        rv.meet(t, round, || execute(round)).unwrap();
                        let done = executed.load(Ordering::SeqCst);
                        assert!(done > round, "resumed before round {round} was executed");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(executed.load(Ordering::SeqCst), ROUNDS);
}

#[test]
fn one_thread_runs_each_round_alone_and_the_others_resume_after_it() {
    for threads in 2..=4 {
        for (iterations, yields) in [(0, false), (3, false), (3, true)] {
            let patience = Patience { iterations, yields };
            shuttle::check_random(move || handoff(threads, patience, false), 300);
        }
    }
}

#[test]
fn threads_that_arrive_early_never_overlap_the_executor() {
    for threads in 2..=4 {
        for (iterations, yields) in [(0, false), (3, true)] {
            let patience = Patience { iterations, yields };
            shuttle::check_random(move || handoff(threads, patience, true), 300);
        }
    }
}

#[test]
fn an_aborted_rendezvous_releases_every_waiter() {
    shuttle::check_random(
        || {
            let patience = Patience {
                iterations: 0,
                yields: false,
            };
            let rv = Arc::new(Rendezvous::new(3, patience));
            let waiters: Vec<_> = (0..2)
                .map(|t| {
                    let rv = rv.clone();
                    shuttle::thread::spawn(move || rv.meet(t, 0, || panic!("round executed")))
                })
                .collect();
            // The third thread dies instead of arriving.
            rv.abort();
            for w in waiters {
                assert!(w.join().unwrap().is_err());
            }
        },
        300,
    );
}
