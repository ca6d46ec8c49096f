//! The synchronous-mode handoff under shuttle's randomized scheduler: the
//! rendezvous source is compiled here against shuttle's primitives, and
//! shuttle explores thread interleavings (and reports deadlocks).
//!
//! Checked, for K = 2..4 threads, spinning or parking:
//! - the leader runs only when every follower has arrived and stopped its
//!   parallel work (Algorithm 1, lines 20–22);
//! - a follower resumes only after the leader's exclusive work (line 29);
//! - followers that arrive at later rounds before earlier ones are released
//!   (they wait only before work of their own) never overlap the leader;
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

use rendezvous::{Patience, Rendezvous};
use shuttle::sync::Arc;
use shuttle::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const ROUNDS: u64 = 3;

/// K threads meet `ROUNDS` times. Eager followers work before every round and
/// wait for its release right after arriving (`follow`); lazy ones work
/// before some rounds only and wait for the release only before that work.
fn handoff(threads: usize, patience: Patience, lazy: bool) {
    let rv = Arc::new(Rendezvous::new(threads, patience));
    let working = Arc::new(AtomicUsize::new(0));
    let exclusive = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (rv, working, exclusive) = (rv.clone(), working.clone(), exclusive.clone());
            shuttle::thread::spawn(move || {
                let mut unreleased = None;
                for round in 0..ROUNDS {
                    if t == 0 {
                        rv.gather(round).unwrap();
                        let busy = working.load(Ordering::SeqCst);
                        assert_eq!(busy, 0, "a follower is still working");
                        exclusive.fetch_add(1, Ordering::SeqCst);
                        rv.release(round);
                        continue;
                    }
                    if !lazy || (t as u64 + round) % 2 == 0 {
                        if let Some(r) = unreleased.take() {
                            rv.await_release(r).unwrap();
                            let done = exclusive.load(Ordering::SeqCst);
                            assert!(done > r, "worked before the leader ran");
                        }
                        working.fetch_add(1, Ordering::SeqCst);
                        shuttle::thread::yield_now();
                        working.fetch_sub(1, Ordering::SeqCst);
                    }
                    if lazy {
                        rv.arrive(t, round);
                        unreleased = Some(round);
                    } else {
                        rv.follow(t, round).unwrap();
                        let done = exclusive.load(Ordering::SeqCst);
                        assert!(done > round, "resumed before the leader ran");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(exclusive.load(Ordering::SeqCst), ROUNDS);
}

#[test]
fn the_leader_runs_alone_and_followers_resume_after_it() {
    for threads in 2..=4 {
        for (iterations, yields) in [(0, false), (3, false), (3, true)] {
            let patience = Patience { iterations, yields };
            shuttle::check_random(move || handoff(threads, patience, false), 300);
        }
    }
}

#[test]
fn followers_that_arrive_early_never_overlap_the_leader() {
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
            let follower = {
                let rv = rv.clone();
                shuttle::thread::spawn(move || rv.follow(1, 0))
            };
            let leader = {
                let rv = rv.clone();
                shuttle::thread::spawn(move || rv.gather(0))
            };
            // The third thread dies instead of arriving.
            rv.abort();
            assert!(follower.join().unwrap().is_err());
            assert!(leader.join().unwrap().is_err());
        },
        300,
    );
}
