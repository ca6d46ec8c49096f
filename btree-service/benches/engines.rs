//! Engine benchmark with no network (issue: "An engine benchmark").
//!
//! ```sh
//! cargo bench -p psmr-btree                      # 1,000,000 keys
//! cargo bench -p psmr-btree -- --big             # 10,000,000 keys
//! cargo bench -p psmr-btree -- --csv out.csv --commands 200000 --fanout 64 --repeat 3 --shares 0,100 --threads 2 --engines smr,opt-psmr
//! ```
//!
//! Every engine point is the best of `--repeat` runs (default 5): on a
//! shared machine interference only slows a run down.
//!
//! Part 1 compares the B+-tree with `std::collections::BTreeMap`, single
//! threaded, on the same operations. Part 2 runs smr, psmr and opt-psmr on
//! the B+-tree preloaded with every even key of `[0, 2N)`, with uniform keys
//! and a share of dependent commands (inserts and deletes, half each; the
//! rest reads) of 0, 10, 25, 50, 75 and 100 %, for K = 1, 2, 4, 8; and the
//! same op mix on `BTreeMap` single-threaded as a reference. Commands/s
//! count commands answered (a retried command counts once). The table is
//! printed and the CSV written (default `target/engines.csv` in the workspace).

// A benchmark program reports on standard output.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use psmr_btree::{BTree, BTreeService, KvStore, Op, value_id, value_of};
use psmr_core::{ClientId, EngineKind, Outcome, Reply};
use psmr_replica::workload::{self, Feed, Submission, WorkloadOptions};
use psmr_replica::{EngineConfig, ReplySink, WaitPolicy};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Args {
    keys: u64,
    commands: usize,
    fanout: usize,
    csv: String,
    repeat: usize,
    shares: Vec<u32>,
    threads: Vec<usize>,
    engines: Vec<String>,
    batch_compare: bool,
    wait: WaitPolicy,
    run_engines: bool,
}

fn args() -> Args {
    let mut args = Args {
        keys: 1_000_000,
        commands: 600_000,
        fanout: 64,
        csv: concat!(env!("CARGO_MANIFEST_DIR"), "/../target/engines.csv").into(),
        repeat: 5,
        shares: vec![0, 10, 25, 50, 75, 100],
        threads: vec![1, 2, 4, 8],
        engines: vec!["smr".into(), "psmr".into(), "opt-psmr".into()],
        batch_compare: true,
        wait: WaitPolicy::Auto,
        run_engines: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--big" => args.keys = 10_000_000,
            "--keys" => args.keys = value().parse().expect("--keys N"),
            "--commands" => args.commands = value().parse().expect("--commands N"),
            "--fanout" => args.fanout = value().parse().expect("--fanout N"),
            "--csv" => args.csv = value(),
            "--repeat" => args.repeat = value().parse::<usize>().expect("--repeat N").max(1),
            "--no-batch-compare" => args.batch_compare = false,
            "--no-engines" => args.run_engines = false,
            "--wait" => {
                args.wait = match value().as_str() {
                    "auto" => WaitPolicy::Auto,
                    "spin" => WaitPolicy::Spin(1 << 14),
                    "yield" => WaitPolicy::Yield(256),
                    "park" => WaitPolicy::Park,
                    other => panic!("--wait auto|spin|yield|park, not {other}"),
                }
            }
            "--engines" => args.engines = value().split(',').map(String::from).collect(),
            "--threads" => {
                args.threads = value()
                    .split(',')
                    .map(|s| s.parse().expect("--threads 1,2,4,8"))
                    .collect();
            }
            "--shares" => {
                args.shares = value()
                    .split(',')
                    .map(|s| s.parse().expect("--shares 0,50,100"))
                    .collect();
            }
            "--bench" => {}
            other => panic!("unknown argument {other}; see the module docs of benches/engines.rs"),
        }
    }
    args
}

fn main() {
    let args = args();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "machine cores={cores} cpu={cpu:?} keys={} commands={} fanout={}",
        args.keys, args.commands, args.fanout
    );
    tree_against_std(&args);
    if args.run_engines {
        engines(&args);
    }
}

/// Preloaded entries: every even key of `[0, 2N)`.
fn preload(keys: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..keys).map(|i| (2 * i, i))
}

fn random_op(rng: &mut ChaCha8Rng, keys: u64, dependent: f64) -> Op {
    let k = rng.random_range(0..2 * keys);
    if rng.random_bool(dependent) {
        if rng.random_bool(0.5) {
            Op::Insert(k, value_of(k, 8))
        } else {
            Op::Delete(k)
        }
    } else {
        Op::Read(k)
    }
}

fn ops(keys: u64, count: usize, dependent: f64, seed: u64) -> Vec<Op> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| random_op(&mut rng, keys, dependent))
        .collect()
}

// ---- part 1: the tree against std ------------------------------------------

fn tree_against_std(args: &Args) {
    let start = Instant::now();
    let mut tree = BTree::bulk_load(args.fanout, 0.7, preload(args.keys));
    let load = start.elapsed();
    let mut std_map: BTreeMap<u64, u64> = preload(args.keys).collect();
    println!(
        "\npreload of {} keys into the B+-tree: {:.2} s",
        args.keys,
        load.as_secs_f64()
    );
    println!(
        "\n| operations (single thread, {} keys) | B+-tree ops/s | BTreeMap ops/s | B+-tree / BTreeMap |",
        args.keys
    );
    println!("|---|---|---|---|");
    for (name, dependent) in [
        ("read", 0.0),
        ("read 50 %, insert 25 %, delete 25 %", 0.5),
        ("insert 50 %, delete 50 %", 1.0),
    ] {
        let ops = ops(args.keys, 2_000_000, dependent, 7);
        let mut best = (0.0f64, 0.0f64);
        for _ in 0..3 {
            let ours = rate(ops.len(), || {
                ops.iter().for_each(|op| {
                    black_box(apply_tree(&mut tree, op));
                })
            });
            let theirs = rate(ops.len(), || {
                ops.iter().for_each(|op| {
                    black_box(apply_std(&mut std_map, op));
                })
            });
            best = (best.0.max(ours), best.1.max(theirs));
        }
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} |",
            best.0,
            best.1,
            best.0 / best.1
        );
    }
}

fn rate(n: usize, f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    n as f64 / start.elapsed().as_secs_f64()
}

/// Part 1 measures the tree of keys alone, with u64 values as `BTreeMap` has them.
fn apply_tree(tree: &mut BTree, op: &Op) -> Option<u64> {
    match *op {
        Op::Read(k) => tree.get(k),
        Op::Insert(k, ref v) => tree.insert(k, value_id(v)),
        Op::Delete(k) => tree.remove(k),
        Op::Update(k, ref v) => tree.update(k, value_id(v)),
        Op::Scan(..) => None,
    }
}

fn apply_std(map: &mut BTreeMap<u64, u64>, op: &Op) -> Option<u64> {
    match *op {
        Op::Read(k) => map.get(&k).copied(),
        Op::Insert(k, ref v) => map.insert(k, value_id(v)),
        Op::Delete(k) => map.remove(&k),
        Op::Update(k, ref v) => map
            .get_mut(&k)
            .map(|slot| std::mem::replace(slot, value_id(v))),
        Op::Scan(..) => None,
    }
}

// ---- part 2: the engines ------------------------------------------------------

/// Counts outcomes per worker thread, on separate cache lines.
#[derive(Default)]
struct CountSink {
    slots: [Slot; 16],
}

#[derive(Default)]
#[repr(align(128))]
struct Slot {
    done: AtomicU64,
    retry: AtomicU64,
}

impl ReplySink for CountSink {
    fn replies(&self, thread: usize, replies: &mut Vec<Reply>) {
        let slot = &self.slots[thread % 16];
        for reply in replies.drain(..) {
            let counter = match reply.outcome {
                Outcome::Done(_) => &slot.done,
                Outcome::Retry => &slot.retry,
                Outcome::Refused(_) => continue,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl CountSink {
    fn done(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.done.load(Ordering::Relaxed))
            .sum()
    }
}

struct Point {
    engine: &'static str,
    threads: usize,
    dependent: u32,
    batch_sync: bool,
    cmds_per_s: f64,
    fail_rate: f64,
    retries: u64,
}

fn engines(args: &Args) {
    let shares = args.shares.clone();
    let mut points = Vec::new();
    println!(
        "\n| dependent % | std BTreeMap | smr | psmr K=1 | psmr K=2 | psmr K=4 | psmr K=8 | opt-psmr K=1 | opt-psmr K=2 | opt-psmr K=4 | opt-psmr K=8 | opt fail % (K=2) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for share in shares {
        let submissions = submissions(args, f64::from(share) / 100.0);
        let reference = std_reference(args, &submissions);
        let mut row = vec![format!("{share}"), format!("{reference:.0}")];
        let mut configs = vec![EngineConfig::new(EngineKind::Smr, 1)];
        for kind in [EngineKind::Psmr, EngineKind::OptPsmr] {
            configs.extend([1, 2, 4, 8].map(|k| EngineConfig::new(kind, k)));
        }
        for config in configs {
            let wanted = args.engines.iter().any(|e| e == config.kind.name());
            if !wanted
                || (config.kind != EngineKind::Smr && !args.threads.contains(&config.threads()))
            {
                row.push("-".into());
                continue;
            }
            let point = measure(args, &submissions, config, share);
            row.push(format!("{:.0}", point.cmds_per_s));
            points.push(point);
        }
        let fail = points
            .iter()
            .find(|p| p.engine == "opt-psmr" && p.threads == 2 && p.dependent == share);
        row.push(format!("{:.2}", fail.map_or(0.0, |p| p.fail_rate * 100.0)));
        println!("| {} |", row.join(" | "));
    }
    if args.batch_compare && args.engines.iter().any(|e| e == "psmr") {
        batch_sync_comparison(args, &mut points);
    }
    write_csv(args, &points);
}

fn submissions(args: &Args, dependent: f64) -> Vec<Submission> {
    ops(args.keys, args.commands, dependent, 42)
        .into_iter()
        .enumerate()
        .map(|(i, op)| Submission {
            client: ClientId(i as u64 % 64),
            op: op.encode(),
        })
        .collect()
}

fn std_reference(args: &Args, submissions: &[Submission]) -> f64 {
    let mut map: BTreeMap<u64, u64> = preload(args.keys).collect();
    let ops: Vec<Op> = submissions
        .iter()
        .map(|s| Op::decode(&s.op).expect("encoded here"))
        .collect();
    rate(ops.len(), || {
        ops.iter().for_each(|op| {
            black_box(apply_std(&mut map, op));
        })
    })
}

fn measure(args: &Args, submissions: &[Submission], mut config: EngineConfig, share: u32) -> Point {
    config.wait = args.wait;
    let service = Arc::new(BTreeService::new(2 * args.keys));
    let tree = || {
        let entries = preload(args.keys).map(|(k, v)| (k, value_of(v, 8)));
        KvStore::bulk_load(args.fanout, 0.7, entries)
    };
    let options = WorkloadOptions {
        round: 64,
        ..WorkloadOptions::default()
    };
    let streams = workload::build(&*service, &*service, &config, tree(), submissions, options);
    let retries = streams.metrics.retries;
    let checked = retries + streams.metrics.passed;
    let mut best = 0.0f64;
    for run in 0..args.repeat {
        let sink = Arc::new(CountSink::default());
        let (_, elapsed) = workload::run(
            &service,
            config.clone(),
            tree(),
            &streams,
            Feed::Queued,
            run as u64,
            sink.clone(),
        )
        .expect("the engine runs");
        assert_eq!(
            sink.done(),
            submissions.len() as u64,
            "every command answered"
        );
        best = best.max(submissions.len() as f64 / seconds(elapsed));
    }
    Point {
        engine: config.kind.name(),
        threads: config.threads(),
        dependent: share,
        batch_sync: config.batch_sync,
        cmds_per_s: best,
        fail_rate: if checked == 0 {
            0.0
        } else {
            retries as f64 / checked as f64
        },
        retries,
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

/// psmr at 100 % dependent, with and without one synchronization per batch.
fn batch_sync_comparison(args: &Args, points: &mut Vec<Point>) {
    let submissions = submissions(args, 1.0);
    println!("\n| psmr, 100 % dependent | K=2 | K=8 |");
    println!("|---|---|---|");
    for batch_sync in [true, false] {
        let mut row = Vec::new();
        for k in [2, 8] {
            let mut config = EngineConfig::new(EngineKind::Psmr, k);
            config.batch_sync = batch_sync;
            let point = measure(args, &submissions, config, 100);
            row.push(format!("{:.0}", point.cmds_per_s));
            points.push(point);
        }
        let name = if batch_sync {
            "one synchronization per batch"
        } else {
            "one synchronization per command"
        };
        println!("| {name} | {} |", row.join(" | "));
    }
}

fn write_csv(args: &Args, points: &[Point]) {
    let mut csv =
        String::from("engine,threads,dependent_percent,batch_sync,cmds_per_s,fail_rate,retries\n");
    for p in points {
        csv.push_str(&format!(
            "{},{},{},{},{:.0},{:.4},{}\n",
            p.engine, p.threads, p.dependent, p.batch_sync, p.cmds_per_s, p.fail_rate, p.retries
        ));
    }
    if let Some(dir) = std::path::Path::new(&args.csv).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&args.csv, csv) {
        Ok(()) => println!("\ncsv written to {}", args.csv),
        Err(e) => println!("\ncould not write {}: {e}", args.csv),
    }
}
