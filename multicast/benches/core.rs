//! Benchmarks of the multicast core with no network (issue: "A benchmark of
//! the core"). Run with `cargo bench -p psmr-multicast`, optionally followed
//! by `-- <name>` to run the benchmarks whose name contains `<name>`.
//!
//! Each configuration ends with one line `bench=<name> cmds_per_s=<N>`.
//!
//! - `one_ring_batch{1,64}`: three acceptor nodes and a learner of one ring,
//!   in one thread, messages handed from node to node in memory; 64-byte
//!   commands, memory storage; decided commands per second at the learner.
//! - `learner_merge_{1,9}ring(s)`: a learner and a merger fed decisions of 1
//!   or 9 rings (batches of 64), the same total; delivered commands per
//!   second, best of seven interleaved runs each.
//! - `durable_log_fsync`: accept records of 64 commands of 64 bytes appended
//!   to the durable log, one fdatasync per 16 records; durable commands per second.

// A benchmark program reports on standard output.
#![allow(clippy::print_stdout)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use psmr_core::persist::Persister;
use psmr_core::proto::{
    Ballot, Batch, Command, CommandId, Decide, Learner, Merged, Merger, Message, MulticastConfig,
    NodeId, Params, Propose, ProposerId, RingConfig, RingId, Transmit, Value,
};
use psmr_multicast::storage::{DurableLog, LogOptions, MemoryStorage, OpenMode, Record};

const PAYLOAD: [u8; 64] = [0x5a; 64];
const LEARNER: NodeId = NodeId(100);

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    print_machine();
    let wanted = |name: &str| filter.as_ref().is_none_or(|f| name.contains(f.as_str()));
    for (name, batch, total) in [
        ("one_ring_batch1", 1, 400_000),
        ("one_ring_batch64", 64, 4_000_000),
    ] {
        if wanted(name) {
            println!("bench={name} cmds_per_s={:.0}", one_ring(batch, total));
        }
    }
    let reps: usize = std::env::var("PSMR_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    match filter.as_deref() {
        Some("learner_merge_1ring") => println!(
            "bench=learner_merge_1ring cmds_per_s={:.0}",
            learner_merge(1)
        ),
        Some("learner_merge_9rings") => println!(
            "bench=learner_merge_9rings cmds_per_s={:.0}",
            learner_merge(9)
        ),
        _ if wanted("learner_merge") => {
            let (one, nine) = merge_side_by_side(reps);
            let cost = |a: f64, b: f64| (1.0 - b / a) * 100.0;
            println!(
                "learner_merge: 9 rings cost {:.1}% against 1 ring (best of {reps}; medians: {:.1}%)",
                cost(best(&one), best(&nine)),
                cost(median(&one), median(&nine))
            );
            println!("bench=learner_merge_1ring cmds_per_s={:.0}", best(&one));
            println!("bench=learner_merge_9rings cmds_per_s={:.0}", best(&nine));
        }
        _ => {}
    }
    if wanted("durable_log_fsync") {
        println!("bench=durable_log_fsync cmds_per_s={:.0}", durable_log());
    }
}

/// Rates of 1 and 9 rings, seven runs each, interleaved so that both see
/// the same machine. On a shared machine interference only slows a run
/// down, so the best run is the estimate least disturbed by it.
fn merge_side_by_side(reps: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut one, mut nine) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        one.push(learner_merge(1));
        nine.push(learner_merge(9));
    }
    (one, nine)
}

fn best(rates: &[f64]) -> f64 {
    rates.iter().copied().fold(0.0, f64::max)
}

fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn print_machine() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine cores={cores} cpu={model:?}");
}

fn command(proposer: u64, seq: u64) -> Command {
    Command {
        id: CommandId {
            proposer: ProposerId(proposer),
            seq,
        },
        low_water: seq.saturating_sub(10_000),
        payload: Bytes::from_static(&PAYLOAD),
    }
}

fn ring(id: u16, acceptors: &[u32]) -> RingConfig {
    RingConfig {
        id: RingId(id),
        acceptors: acceptors.iter().map(|&a| NodeId(a)).collect(),
        learners: vec![LEARNER],
    }
}

/// Decided commands per second through one ring of three acceptors.
fn one_ring(batch: usize, total: u64) -> f64 {
    let config = MulticastConfig {
        rings: vec![ring(0, &[1, 2, 3])],
        merges: Vec::new(),
        params: Params {
            batch_max_commands: batch,
            ..Params::default()
        },
    };
    let start = Instant::now();
    let mut nodes: Vec<Persister> = (1..=3)
        .map(|id| {
            Persister::open(
                NodeId(id),
                &config,
                Box::new(MemoryStorage::ephemeral()),
                start,
            )
            .unwrap()
        })
        .collect();
    let mut learner = Learner::new(LEARNER, &config, &[RingId(0)], start).unwrap();
    let mut queue: VecDeque<(NodeId, Transmit)> = VecDeque::new();
    let outstanding = (config.params.window as usize * batch.max(16)) as u64;
    let (mut sent, mut delivered, mut steps) = (0u64, 0u64, 0u64);
    while delivered < total {
        while sent < total && sent - delivered < outstanding {
            let commands: Vec<Command> = (sent..sent + 64).map(|seq| command(7, seq)).collect();
            sent += 64;
            let propose = Propose {
                ring: RingId(0),
                commands,
                forwarded: false,
            };
            let to = Transmit {
                to: NodeId(1),
                message: Message::Propose(propose),
            };
            queue.push_back((NodeId(500), to));
        }
        steps += 1;
        let now = if steps % 256 == 0 {
            Some(Instant::now())
        } else {
            None
        };
        let Some((from, t)) = queue.pop_front() else {
            let now = Instant::now();
            nodes.iter_mut().for_each(|n| n.handle_timeout(now));
            drain_nodes(&mut nodes, &mut queue);
            continue;
        };
        let now = now.unwrap_or(start);
        if t.to == LEARNER {
            learner.handle_message(now, from, t.message);
            while let Some(d) = learner.poll_delivery() {
                delivered += d.value.commands().len() as u64;
            }
        } else {
            let node = &mut nodes[t.to.0 as usize - 1];
            node.handle_message(now, from, t.message);
            if steps % 256 == 0 {
                node.handle_timeout(now);
            }
            while let Some(out) = node.poll_transmit() {
                queue.push_back((t.to, out));
            }
        }
    }
    delivered as f64 / start.elapsed().as_secs_f64()
}

fn drain_nodes(nodes: &mut [Persister], queue: &mut VecDeque<(NodeId, Transmit)>) {
    for node in nodes {
        let id = node.id();
        while let Some(out) = node.poll_transmit() {
            queue.push_back((id, out));
        }
    }
}

/// Delivered commands per second at a learner merging `rings` rings, for
/// the same total number of commands (batches of 64, M = 1).
fn learner_merge(rings: u16) -> f64 {
    let (config, ids, decisions) = merge_decisions(rings);
    let expected = decisions.len() as u64 * 64;
    let start = Instant::now();
    let (delivered, done) = merge_run(&config, &ids, decisions);
    let rate = delivered as f64 / start.elapsed().as_secs_f64();
    // Merged batches are freed after the clock stops: freeing half a
    // gigabyte makes the allocator return pages to the kernel at random
    // moments, which is noise, not merge cost.
    drop(done);
    assert_eq!(delivered, expected);
    rate
}

/// The decisions of `rings` rings, interleaved as they would arrive.
fn merge_decisions(rings: u16) -> (MulticastConfig, Vec<RingId>, Vec<Message>) {
    const TOTAL_INSTANCES: u64 = 180_000;
    let config = MulticastConfig {
        rings: (0..rings).map(|r| ring(r, &[1, 2, 3])).collect(),
        merges: Vec::new(),
        params: Params::default(),
    };
    let ids: Vec<RingId> = (0..rings).map(RingId).collect();
    let per_ring = TOTAL_INSTANCES / u64::from(rings);
    let mut decisions = Vec::with_capacity(TOTAL_INSTANCES as usize);
    for instance in 0..per_ring {
        for &ring in &ids {
            let first = instance * 64;
            let commands: Vec<Command> = (first..first + 64)
                .map(|s| command(u64::from(ring.0), s))
                .collect();
            let decide = Decide {
                ring,
                instance,
                ballot: Ballot {
                    round: 1,
                    node: NodeId(1),
                },
                value: Value::batch(commands),
                relay: false,
                hops: 0,
            };
            decisions.push(Message::Decide(decide));
        }
    }
    (config, ids, decisions)
}

/// The measured part: learner, then merger, then every command touched.
#[inline(never)]
fn merge_run(
    config: &MulticastConfig,
    ids: &[RingId],
    decisions: Vec<Message>,
) -> (u64, Vec<Merged>) {
    let now = Instant::now();
    let mut learner = Learner::new(LEARNER, config, ids, now).unwrap();
    let mut merger = Merger::new(ids, 1).unwrap();
    let mut done = Vec::with_capacity(decisions.len());
    let mut delivered = 0u64;
    for message in decisions {
        learner.handle_message(now, NodeId(2), message);
        while let Some(d) = learner.poll_delivery() {
            merger.push(d.ring, d.instance, d.value).unwrap();
        }
        while let Some(batch) = merger.poll() {
            delivered += batch
                .commands
                .iter()
                .filter(|c| c.id.seq != u64::MAX)
                .count() as u64;
            done.push(batch);
        }
    }
    (delivered, done)
}

/// Durable commands per second: batches of 64 commands, 16 batches per fdatasync.
fn durable_log() -> f64 {
    const RECORDS_PER_SYNC: u64 = 16;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut log, _) =
        DurableLog::open(dir.path(), LogOptions::default(), OpenMode::Init, |_| {}).unwrap();
    let batch = Batch::new(&(0..64).map(|s| command(1, s)).collect::<Vec<_>>());
    let start = Instant::now();
    let (mut instance, mut syncs) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(3) {
        for _ in 0..RECORDS_PER_SYNC {
            let record = Record::Accept {
                ring: RingId(0),
                instance,
                ballot: Ballot {
                    round: 1,
                    node: NodeId(1),
                },
                value: Value::Batch(batch.clone()),
            };
            log.append(&record).unwrap();
            instance += 1;
        }
        log.sync().unwrap();
        syncs += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "durable_log_fsync: {:.0} fdatasync/s, {} records of 64 commands",
        syncs as f64 / secs,
        instance
    );
    (instance * 64) as f64 / secs
}
