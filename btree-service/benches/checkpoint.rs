//! What a checkpoint of the B+-tree costs (docs/ARCHITECTURE.md,
//! "Checkpoints"): the pause (workers are held only for
//! `BTree::capture`), then, beside execution, writing the image, and at a
//! restart reading it back.
//!
//! `cargo bench -p psmr-btree --bench checkpoint [-- KEYS [ROUNDS]]`
//! (default 1,000,000 keys, 50 rounds) prints p50 and p99 of each.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use psmr_btree::{KvStore, value_of};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let at = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[at]
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let keys = args.first().copied().unwrap_or(1_000_000);
    let rounds = args.get(1).copied().unwrap_or(50) as usize;
    // As a replica preloads it, then grown by inserts between the keys.
    let mut tree = KvStore::bulk_load(64, 0.7, (0..keys).map(|i| (2 * i, value_of(i, 8))));
    for i in (0..keys).step_by(7) {
        tree.insert(2 * i + 1, value_of(i, 8));
    }
    let (mut pauses, mut writes, mut reads) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let image = tree.capture();
        pauses.push(started.elapsed());
        let mut out = Vec::with_capacity(bytes);
        let started = Instant::now();
        image.write(&mut out).expect("writes to memory");
        writes.push(started.elapsed());
        bytes = out.len();
        let started = Instant::now();
        let back = KvStore::read_image(&mut out.as_slice()).expect("reads back");
        reads.push(started.elapsed());
        assert_eq!(back.len(), tree.len());
    }
    println!(
        "B+-tree of {} keys, image {} bytes, {rounds} rounds",
        tree.len(),
        bytes
    );
    for (what, samples) in [
        ("pause (capture)", &mut pauses),
        ("write image", &mut writes),
        ("read image", &mut reads),
    ] {
        let p50 = percentile(samples, 0.5);
        let p99 = percentile(samples, 0.99);
        println!("{what:>16}: p50 {p50:?}  p99 {p99:?}");
    }
}
