//! Cost of one synchronous-mode handoff (all K threads meet, the last to
//! arrive runs alone, all resume), with no work in between, for each wait policy.
//!
//! `cargo bench -p psmr-replica --bench handoff`

// A benchmark program reports on standard output.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use psmr_replica::WaitPolicy;
use psmr_replica::rendezvous::Rendezvous;

fn handoffs_per_second(threads: usize, policy: WaitPolicy, rounds: u64) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rv = Arc::new(Rendezvous::new(threads, policy.patience(threads, cores)));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let rv = rv.clone();
            std::thread::spawn(move || {
                for round in 0..rounds {
                    rv.meet(t, round, || ()).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    rounds as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine cores={cores}");
    println!("| K | policy | handoffs/s | µs per handoff |");
    println!("|---|---|---|---|");
    for threads in [2, 4, 8] {
        for (name, policy) in [
            ("auto", WaitPolicy::Auto),
            ("spin 16384", WaitPolicy::Spin(1 << 14)),
            ("yield 256", WaitPolicy::Yield(256)),
            ("park", WaitPolicy::Park),
        ] {
            let rounds = if threads > cores && matches!(policy, WaitPolicy::Spin(_)) {
                2_000
            } else {
                20_000
            };
            let rate = handoffs_per_second(threads, policy, rounds);
            println!("| {threads} | {name} | {rate:.0} | {:.2} |", 1e6 / rate);
        }
    }
}
