//! End-to-end tests over real processes on loopback: 3 `psmr acceptor`s and
//! 2 `psmr replica`s per test, driven through the client SDK.
//!
//! Randomized workloads print `seed=N`; `PSMR_E2E_SEED=N` replays one.

// Tests report seeds and progress on standard output.
#![allow(clippy::print_stdout)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Spec, TestCluster, numbers, preloaded, runtime, scan_all, v};
use psmr_btree::BTreeClient;
use psmr_btree::value_id;
use psmr_client::ClientOptions;
use psmr_core::EngineKind;
use psmr_core::cluster::{PolicyName, RingEntry, StorageKind};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn seed() -> u64 {
    let seed = std::env::var("PSMR_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed={seed} (replay with PSMR_E2E_SEED={seed})");
    seed
}

/// One random operation on `key`, checked against `model`.
async fn checked_op(
    tree: &BTreeClient,
    model: &mut BTreeMap<u64, u64>,
    rng: &mut ChaCha8Rng,
    key: u64,
) {
    let value = rng.random_range(0..1_000_000u64);
    match rng.random_range(0..100u32) {
        0..30 => assert_eq!(
            tree.get(key).await.unwrap(),
            model.get(&key).copied().map(v)
        ),
        30..45 => {
            let previous = tree.put(key, v(value)).await.unwrap();
            assert_eq!(previous, model.get(&key).copied().map(v), "put {key}");
            if let Some(v) = model.get_mut(&key) {
                *v = value;
            }
        }
        45..75 => {
            let previous = tree.insert(key, v(value)).await.unwrap();
            assert_eq!(previous, model.insert(key, value).map(v), "insert {key}");
        }
        _ => assert_eq!(
            tree.delete(key).await.unwrap(),
            model.remove(&key).map(v),
            "delete {key}"
        ),
    }
}

/// Concurrent clients on disjoint keys, then one client with scans, then a
/// full comparison: every response equals the model's.
async fn model_workload(cluster: &TestCluster, seed: u64, fallback: bool) {
    const TASKS: u64 = 4;
    const OPS: usize = 150;
    let preload = cluster.cluster.service.preload;
    let space = 2 * preload;
    let tree = cluster.client().await;
    if fallback {
        enter_the_sequential_fallback(&tree, space).await;
    }
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let tree = tree.clone();
        let mut model: BTreeMap<u64, u64> = preloaded(preload)
            .into_iter()
            .filter(|(k, _)| k % TASKS == task)
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ task);
            for _ in 0..OPS {
                let key = rng.random_range(0..space / TASKS) * TASKS + task;
                checked_op(&tree, &mut model, &mut rng, key).await;
            }
            model
        }));
    }
    let mut model = BTreeMap::new();
    for task in tasks {
        model.extend(task.await.expect("a workload task"));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1));
    for _ in 0..100 {
        let key = rng.random_range(0..space);
        if rng.random_range(0..4) == 0 {
            let count = rng.random_range(1..40);
            let expected: Vec<(u64, u64)> = model
                .range(key..)
                .take(count as usize)
                .map(|(&k, &v)| (k, v))
                .collect();
            assert_eq!(
                numbers(&tree.scan(key, count).await.unwrap().entries),
                expected
            );
        } else {
            checked_op(&tree, &mut model, &mut rng, key).await;
        }
    }
    assert_eq!(scan_all(&tree).await, model, "the final contents");
    let sequential = tree.inner().stats().sequential.load(Ordering::Relaxed);
    assert_eq!(
        sequential > 0,
        fallback,
        "{sequential} commands sent to g_all by the sequential fallback"
    );
    println!(
        "retries after failed safety checks: {}",
        tree.inner().stats().retries.load(Ordering::Relaxed)
    );
}

/// Fills the client's window of recent commands with dependent ones (an
/// insert and a delete of keys beyond `space`, which leave no trace), so
/// that its later commands mapped to one thread go to `g_all`.
async fn enter_the_sequential_fallback(tree: &BTreeClient, space: u64) {
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let tree = tree.clone();
            tokio::spawn(async move {
                for i in 0..80 {
                    let key = space + task * 1_000 + i;
                    assert_eq!(tree.insert(key, v(1)).await.unwrap(), None);
                    assert_eq!(tree.delete(key).await.unwrap(), Some(v(1)));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a task of dependent commands");
    }
}

fn model_test(engine: EngineKind) {
    model_test_with(
        Spec {
            engine,
            ..Spec::default()
        },
        false,
    );
}

fn model_test_with(spec: Spec, fallback: bool) {
    let seed = seed();
    let mut cluster = TestCluster::start(&spec);
    runtime().block_on(async {
        let workload = model_workload(&cluster, seed, fallback);
        tokio::time::timeout(Duration::from_secs(120), workload)
            .await
            .expect("the workload finishes within 2 minutes");
    });
    cluster.assert_running();
}

#[test]
fn smr_answers_like_the_model() {
    model_test(EngineKind::Smr);
}

#[test]
fn psmr_answers_like_the_model() {
    model_test(EngineKind::Psmr);
}

/// psmr's client sends its read and update commands to `g_all` once most of
/// its commands are inserts and deletes: the answers stay the model's.
#[test]
fn psmr_answers_like_the_model_in_the_sequential_fallback() {
    model_test_with(
        Spec {
            engine: EngineKind::Psmr,
            ..Spec::default()
        },
        true,
    );
}

/// A tenth of a client's commands on `g_all` (inserts, among reads): what
/// the replicas report of their execution time, and how many thread
/// commands the client sent to `g_all` (its sequential fallback).
async fn a_tenth_on_g_all(cluster: &TestCluster) -> (u64, u64) {
    let tree = cluster.client().await;
    let fresh = 2 * cluster.cluster.service.preload;
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let tree = tree.clone();
            tokio::spawn(async move {
                for i in 0..200u64 {
                    let key = fresh + task * 1_000 + i;
                    if i % 10 == 0 {
                        assert_eq!(tree.insert(key, v(i)).await.unwrap(), None);
                    } else {
                        assert_eq!(tree.get(key - i % 10).await.unwrap(), Some(v(i - i % 10)));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a task of reads and inserts");
    }
    let stats = tree.inner().stats();
    (
        stats.execution_ns.load(Ordering::Relaxed),
        stats.sequential.load(Ordering::Relaxed),
    )
}

/// Replies say what commands cost to execute; with cheap ones (the
/// B+-tree's own work) a tenth on `g_all` is enough for the client to send
/// everything there, with costly ones (a wait of 1 ms) it is not.
#[test]
fn the_client_falls_back_sooner_when_the_replicas_report_cheap_commands() {
    let spec = Spec {
        engine: EngineKind::Psmr,
        ..Spec::default()
    };
    let rt = runtime();
    let mut cheap = TestCluster::start(&spec);
    let (ns, sequential) = rt.block_on(a_tenth_on_g_all(&cheap));
    assert!(ns > 0, "the replicas report their execution time");
    assert!(sequential > 0, "cheap commands ({ns} ns): no fallback");
    cheap.assert_running();
    drop(cheap);
    let mut costly = TestCluster::prepare(&spec, |c| {
        c.service.exec_wait = Some(Duration::from_millis(1));
    });
    costly.start_all();
    let (ns, sequential) = rt.block_on(a_tenth_on_g_all(&costly));
    assert!(ns >= 1_000_000, "a 1 ms wait reported as {ns} ns");
    assert_eq!(
        sequential, 0,
        "costly commands ({ns} ns) stay on their threads"
    );
    costly.assert_running();
}

#[test]
fn opt_psmr_answers_like_the_model() {
    model_test(EngineKind::OptPsmr);
}

#[test]
fn cbase_answers_like_the_model() {
    model_test(EngineKind::Cbase);
}

#[test]
fn classes_answers_like_the_model_while_it_reconfigures() {
    model_test_with(
        Spec {
            engine: EngineKind::Classes,
            policy: PolicyName::Jump,
            ..Spec::default()
        },
        false,
    );
}

/// Writers that insert fresh keys (odd ones, never preloaded) and remember
/// what was acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Written>>,
}

#[derive(Default)]
struct Written {
    acknowledged: BTreeMap<u64, u64>,
    failures: Vec<String>,
}

impl Writers {
    const COUNT: u64 = 4;

    fn start(tree: &BTreeClient, keys: u64) -> Writers {
        Writers::start_at(tree, keys, 0)
    }

    /// Writers whose `n`s start at `first` (keys another set of writers did
    /// not take if it stopped before `first`).
    fn start_at(tree: &BTreeClient, keys: u64, first: u64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let tasks = (0..Self::COUNT)
            .map(|w| {
                let (tree, stop, acked) = (tree.clone(), stop.clone(), acknowledged.clone());
                tokio::spawn(async move {
                    let mut written = Written::default();
                    let mut n = first;
                    while !stop.load(Ordering::Relaxed) && 2 * (w + Self::COUNT * n) + 1 < keys {
                        let key = 2 * (w + Self::COUNT * n) + 1;
                        match tree
                            .insert(key, v(n))
                            .await
                            .map(|old| old.map(|b| value_id(&b)))
                        {
                            Ok(None) => {
                                written.acknowledged.insert(key, n);
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Some(v)) => written.failures.push(format!("{key} held {v}")),
                            Err(e) => written.failures.push(e.to_string()),
                        }
                        n += 1;
                    }
                    written
                })
            })
            .collect();
        Writers {
            stop,
            acknowledged,
            tasks,
        }
    }

    /// Acknowledged writes so far.
    fn count(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Waits up to `within` for `more` acknowledgements; panics naming `what` if they do not come.
    async fn progress(&self, more: u64, within: Duration, what: &str) {
        let start = self.count();
        let enough = || self.count() >= start + more;
        let only = || format!("{what}: only {} writes acknowledged", self.count() - start);
        common::eventually(within, enough, only).await;
        println!("{what}: {more} writes acknowledged");
    }

    async fn stop(self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Written::default();
        for task in self.tasks {
            let written = task.await.expect("a writer");
            all.acknowledged.extend(written.acknowledged);
            all.failures.extend(written.failures);
        }
        all
    }
}

/// Every acknowledged write is in the tree with its value.
async fn assert_nothing_lost(tree: &BTreeClient, written: &Written) {
    let contents = scan_all(tree).await;
    let lost: Vec<_> = written
        .acknowledged
        .iter()
        .filter(|(k, v)| contents.get(k) != Some(v))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        written.failures.is_empty(),
        "calls failed: {:?}",
        written.failures
    );
    println!(
        "{} acknowledged writes all present",
        written.acknowledged.len()
    );
}

#[test]
fn acceptor_crashes_lose_no_acknowledged_write_durable() {
    acceptor_crashes(StorageKind::Durable);
}

#[test]
fn acceptor_crashes_lose_no_acknowledged_write_memory() {
    acceptor_crashes(StorageKind::Memory);
}

/// Kills a non-coordinator acceptor, restarts it, then kills the coordinator.
fn acceptor_crashes(storage: StorageKind) {
    // Every ring in the order 1, 2, 3: acceptor 1 coordinates them all, 3 coordinates none.
    let spec = Spec {
        storage,
        preload: 100_000,
        ..Spec::default()
    };
    let mut cluster = TestCluster::prepare(&spec, |c| {
        c.rings = (0..=c.threads() as u16)
            .map(|id| RingEntry {
                id,
                acceptors: vec![1, 2, 3],
            })
            .collect();
    });
    cluster.start_all();
    let rt = runtime();
    let written = rt.block_on(async {
        let tree = cluster.client().await;
        let writers = Writers::start(&tree, 2 * spec.preload);
        let minute = Duration::from_secs(60);
        writers.progress(200, minute, "before any crash").await;
        cluster.kill(3);
        writers
            .progress(200, minute, "after kill -9 of acceptor 3 (no coordinator)")
            .await;
        cluster.spawn(3);
        writers
            .progress(200, minute, "after acceptor 3 restarted")
            .await;
        let log = std::fs::read_to_string(cluster.log(3)).unwrap_or_default();
        if log.contains("restarted without its accepted values") {
            // It may have voted and forgotten: until it has caught up, a
            // second failure stalls its rings. As an operator would, wait.
            cluster
                .wait_for_log(3, "caught up after a restart", minute)
                .await;
        }
        cluster.kill(1);
        writers
            .progress(
                200,
                minute,
                "after kill -9 of acceptor 1 (every ring's coordinator)",
            )
            .await;
        let written = writers.stop().await;
        assert_nothing_lost(&tree, &written).await;
        written
    });
    assert!(!written.acknowledged.is_empty());
    cluster.assert_running();
}

/// A client whose answering replica is paused, then one whose answerer is
/// killed, is answered by the other replica after `failover_after` of
/// silence, not after the 1 s re-proposal: no request is re-proposed.
#[test]
fn a_replica_paused_or_crashed_is_replaced_as_answerer_within_the_failover_time() {
    let spec = Spec {
        preload: 10_000,
        ..Spec::default()
    };
    let mut cluster = TestCluster::start(&spec);
    runtime().block_on(async {
        // An even id: replica 101, the first of two, answers this client.
        let options = ClientOptions {
            id: Some(2 * rand::random::<u32>() as u64),
            ..ClientOptions::default()
        };
        let tree = cluster.client_with(options).await;
        let writers = Writers::start(&tree, 2 * spec.preload);
        let minute = Duration::from_secs(60);
        writers.progress(200, minute, "both replicas up").await;
        let stats = tree.inner().stats();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(load(&stats.answerer_changes), 0);
        let reproposed = load(&stats.reproposals);
        cluster.signal(101, "-STOP");
        writers
            .progress(200, minute, "with replica 101 paused")
            .await;
        assert!(
            load(&stats.failovers) >= 1,
            "the writers' calls failed over to 102"
        );
        assert_eq!(load(&stats.answerer_changes), 1);
        cluster.signal(101, "-CONT");
        let failed_over = load(&stats.failovers);
        cluster.kill(102);
        writers
            .progress(200, minute, "after kill -9 of replica 102")
            .await;
        assert!(load(&stats.failovers) > failed_over, "back to 101");
        assert_eq!(
            load(&stats.reproposals),
            reproposed,
            "no call waited for the 1 s re-proposal"
        );
        let written = writers.stop().await;
        assert_nothing_lost(&tree, &written).await;
    });
    cluster.assert_running();
}

/// A client restarted with the same id starts its request ids at 0 again.
/// Were its wire id the same, the replicas would answer its first request
/// from their table of executed requests with the earlier incarnation's
/// response (and the learners might drop its commands as delivered).
#[test]
fn a_restarted_client_is_never_answered_for_its_earlier_incarnation() {
    let spec = Spec {
        engine: EngineKind::Psmr,
        ..Spec::default()
    };
    let mut cluster = TestCluster::start(&spec);
    runtime().block_on(async {
        let options = ClientOptions {
            id: Some(77),
            ..ClientOptions::default()
        };
        let key = 2 * spec.preload + 1; // not preloaded
        let first = cluster.client_with(options.clone()).await;
        assert_eq!(first.insert(key, v(500)).await.expect("request 0"), None);
        let first_wire = first.inner().wire_id();
        drop(first);
        let second = cluster.client_with(options).await;
        assert_ne!(second.inner().wire_id(), first_wire);
        assert_eq!(
            second.get(key).await.expect("request 0 again"),
            Some(v(500))
        );
        assert_eq!(
            second.insert(key, v(600)).await.expect("request 1"),
            Some(v(500))
        );
    });
    cluster.assert_running();
}

/// A replica killed under load restarts from its newest checkpoint, catches
/// up, and alone serves every client once the other replica is killed;
/// nothing acknowledged is lost.
#[test]
fn a_replica_restarted_from_its_checkpoint_catches_up_and_serves_alone() {
    let spec = Spec {
        preload: 10_000,
        ..Spec::default()
    };
    let mut cluster = TestCluster::prepare(&spec, |c| {
        c.checkpoint.every = Duration::from_millis(300);
        c.checkpoint.every_commands = 500;
    });
    cluster.start_all();
    runtime().block_on(async {
        let tree = cluster.client().await;
        let writers = Writers::start(&tree, 2 * spec.preload);
        let minute = Duration::from_secs(60);
        writers.progress(300, minute, "both replicas up").await;
        for id in [101, 102] {
            cluster.wait_for_log(id, "checkpoint written", minute).await;
        }
        cluster.kill(101);
        writers.progress(300, minute, "replica 101 down").await;
        cluster.spawn(101);
        cluster
            .wait_for_log(101, "resuming from a checkpoint", minute)
            .await;
        writers.progress(300, minute, "replica 101 restarted").await;
        cluster.kill(102);
        writers
            .progress(300, minute, "replica 102 down, 101 serves alone")
            .await;
        let written = writers.stop().await;
        assert_nothing_lost(&tree, &written).await;
    });
    cluster.assert_running();
}

/// The newest checkpoint file in `dir`, and its number.
fn newest_checkpoint(dir: &std::path::Path) -> Option<(u64, std::path::PathBuf)> {
    let files = std::fs::read_dir(dir).ok()?;
    files
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let number = name.strip_prefix("checkpoint-")?.strip_suffix(".psmr")?;
            Some((number.parse().ok()?, p))
        })
        .max()
}

/// A replica whose decisions the acceptors trimmed while it was down (they
/// trim below what one replica checkpointed here), and then one whose data
/// directory was wiped (it asks the other replica for its checkpoint as it
/// starts from instance 0, long trimmed), each fetch the newest checkpoint of the other
/// replica over the cluster's QUIC (state transfer), resume from it, catch
/// up and serve alone, losing no acknowledged write.
#[test]
fn a_replica_behind_the_trim_point_or_wiped_fetches_another_replicas_checkpoint() {
    let spec = Spec {
        preload: 10_000,
        ..Spec::default()
    };
    let mut cluster = TestCluster::prepare(&spec, |c| {
        c.checkpoint.every = Duration::from_millis(300);
        c.checkpoint.every_commands = 2_000;
        c.multicast.trim_replicas = 1;
    });
    cluster.start_all();
    let dir = |id: u32| cluster.dir().join(format!("replica-{id}"));
    let (dir101, dir102) = (dir(101), dir(102));
    let number = |dir: &std::path::Path| newest_checkpoint(dir).map_or(0, |(n, _)| n);
    runtime().block_on(async {
        let tree = cluster.client().await;
        let minute = Duration::from_secs(60);
        let writers = Writers::start(&tree, 40 * spec.preload);
        writers.progress(1_000, minute, "both replicas up").await;
        let has_one = || number(&dir101) > 0;
        common::eventually(minute, has_one, || "101 took no checkpoint".into()).await;
        cluster.kill(101);
        // 102 checkpoints three times past 101's newest; the acceptors trim
        // below the older of the two it keeps.
        let past = number(&dir101) + 3;
        let further = || number(&dir102) >= past;
        common::eventually(minute, further, || format!("102 did not reach {past}")).await;
        writers.progress(300, minute, "101 down").await;
        cluster.spawn(101);
        cluster
            .wait_for_log(101, "fetching a newer checkpoint", minute)
            .await;
        cluster
            .wait_for_log(101, "checkpoint received", minute)
            .await;
        cluster
            .wait_for_logged(101, "resuming from a checkpoint", 2, minute)
            .await;
        writers.progress(300, minute, "101 rebuilt").await;
        cluster.kill(101);
        std::fs::remove_dir_all(&dir101).unwrap();
        cluster.spawn(101);
        cluster
            .wait_for_log(101, "no checkpoint here", minute)
            .await;
        cluster
            .wait_for_logged(101, "checkpoint received", 2, minute)
            .await;
        cluster
            .wait_for_logged(101, "resuming from a checkpoint", 3, minute)
            .await;
        cluster
            .wait_for_log(101, "caught up: answering", minute)
            .await;
        cluster.kill(102);
        writers
            .progress(300, minute, "102 down, 101 rebuilt serves alone")
            .await;
        let written = writers.stop().await;
        assert_nothing_lost(&tree, &written).await;
    });
}

/// kill -9 of every process at once, durable acceptors, after both replicas
/// reported checkpoints (the acceptors trim below them): every process restarts from its
/// own disk (acceptors from their logs, replicas from their newest
/// checkpoints, then the decisions after them), the calls in flight at the
/// crash are answered, and no acknowledged write is lost.
#[test]
fn a_whole_cluster_killed_at_once_restarts_from_its_disks_losing_nothing() {
    let spec = Spec {
        storage: StorageKind::Durable,
        preload: 10_000,
        ..Spec::default()
    };
    let mut cluster = TestCluster::prepare(&spec, |c| {
        c.checkpoint.every = Duration::from_millis(300);
        c.checkpoint.every_commands = 2_000;
    });
    cluster.start_all();
    let root = cluster.dir().to_path_buf();
    let number = |id: u32| {
        let dir = root.join(format!("replica-{id}"));
        newest_checkpoint(&dir).map_or(0, |(n, _)| n)
    };
    runtime().block_on(async {
        let tree = cluster.client().await;
        let minute = Duration::from_secs(60);
        let writers = Writers::start(&tree, 40 * spec.preload);
        writers.progress(1_000, minute, "before the crash").await;
        // Both replicas kept two checkpoints, so both reported one: the
        // acceptors trimmed below it.
        let reported = || number(101) >= 3 && number(102) >= 3;
        common::eventually(minute, reported, || "no checkpoints".into()).await;
        writers.progress(500, minute, "after the checkpoints").await;
        let ids: Vec<u32> = cluster.nodes();
        for &id in &ids {
            cluster.kill(id);
        }
        cluster.start_all();
        for id in [101, 102] {
            cluster
                .wait_for_log(id, "resuming from a checkpoint", minute)
                .await;
        }
        writers
            .progress(500, minute, "after the whole cluster restarted")
            .await;
        let written = writers.stop().await;
        assert_nothing_lost(&tree, &written).await;
    });
    cluster.assert_running();
}

/// A client whose first replica is paused (SIGSTOP: its sockets stay, it
/// answers nothing) reaches the other one within its deadline; with both
/// paused the error names what each replica's attempt met.
#[test]
fn a_client_connects_past_a_paused_replica() {
    let mut cluster = TestCluster::start(&Spec::default());
    runtime().block_on(async {
        // Make sure both replicas serve before one pauses.
        cluster.client().await.get(0).await.expect("served");
        cluster.signal(101, "-STOP");
        let options = |id| ClientOptions {
            id: Some(id),
            connect_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        };
        // Clients pick their first replica by id: even ids start at 101.
        for id in 0..4 {
            let tree = BTreeClient::connect(&cluster.cluster, options(id))
                .await
                .unwrap_or_else(|e| panic!("client {id}: {e}"));
            assert_eq!(
                tree.get(2).await.expect("served"),
                Some(v(1)),
                "client {id}"
            );
        }
        cluster.signal(102, "-STOP");
        let started = std::time::Instant::now();
        let e = BTreeClient::connect(
            &cluster.cluster,
            ClientOptions {
                connect_timeout: Duration::from_secs(3),
                ..ClientOptions::default()
            },
        )
        .await
        .err()
        .expect("no replica answers");
        let message = e.to_string();
        assert!(
            message.contains("n101: ") && message.contains("n102: "),
            "{message}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        cluster.signal(101, "-CONT");
        cluster.signal(102, "-CONT");
    });
    cluster.assert_running();
}

/// What concurrent clients observe on a small contended key space stays
/// linearizable while a replica and the coordinating acceptor are killed
/// with -9 and restarted: the history recorded through the SDK (calls that
/// failed have an unknown outcome) is checked with the project's checker.
#[test]
fn concurrent_clients_see_a_linearizable_history_across_crashes() {
    use psmr_client::history::History;
    use psmr_client::linearizability::{KeyValue, KvOp, Verdict, check};
    let seed = seed();
    let spec = Spec {
        engine: EngineKind::OptPsmr,
        ..Spec::default()
    };
    let mut cluster = TestCluster::start(&spec);
    let history = History::new();
    runtime().block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        // Odd keys above the preload: absent at the start, as the model says.
        let keys: Vec<u64> = (0..6).map(|i| 2 * spec.preload + 1 + 2 * i).collect();
        let mut tasks = Vec::new();
        for client in 0..4u64 {
            let tree = cluster
                .client_with(ClientOptions {
                    deadline: Duration::from_secs(3),
                    ..ClientOptions::default()
                })
                .await;
            let (history, stop, keys) = (history.clone(), stop.clone(), keys.clone());
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ client);
            tasks.push(tokio::spawn(async move {
                let mut unique = client * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let key = keys[rng.random_range(0..keys.len())];
                    unique += 1;
                    let op = match rng.random_range(0..4) {
                        0 => KvOp::Get(key),
                        1 => KvOp::Put(key, unique),
                        2 => KvOp::Insert(key, unique),
                        _ => KvOp::Delete(key),
                    };
                    let call = history.begin(client, op);
                    match tree.call_kv(op, 8).await {
                        Ok(answer) => call.ok(answer),
                        Err(_) => call.unknown(),
                    }
                }
            }));
        }
        // Each fault comes once the clients completed 2,000 more calls.
        let progress = || async {
            let before = history.counts();
            let done = || {
                let (calls, unknown) = history.counts();
                calls - unknown >= before.0 - before.1 + 2_000
            };
            common::eventually(Duration::from_secs(60), done, || {
                "2,000 more calls completed".to_string()
            })
            .await
        };
        progress().await;
        cluster.kill(101);
        progress().await;
        cluster.kill(1);
        progress().await;
        cluster.spawn(101);
        cluster.spawn(1);
        progress().await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("a client task");
        }
    });
    let ops = history.snapshot();
    let (calls, unknown) = history.counts();
    println!("{calls} calls, {unknown} with an unknown outcome");
    assert!(calls > 200, "too little happened: {calls} calls");
    match check(&KeyValue, &ops, Duration::from_secs(60)) {
        Verdict::Linearizable => {}
        Verdict::Violation(e) => panic!("seed {seed}: not linearizable: {e:#?}"),
        Verdict::Unknown { undecided } => panic!("seed {seed}: undecided keys {undecided:?}"),
    }
}

/// Byte values end to end: the replicas preload `service.value_size` bytes
/// per key, the SDK stores and returns values of any length (none, a few
/// bytes, more than a batch's usual command), the CLI prints them, and the
/// load generator writes values of `--value-size` bytes without errors.
#[test]
fn values_of_any_size_travel_through_the_cluster() {
    const QUICK: Duration = Duration::from_secs(30);
    let spec = Spec::default();
    let mut cluster = TestCluster::prepare(&spec, |c| c.service.value_size = 256);
    cluster.start_all();
    let rt = runtime();
    rt.block_on(async {
        let tree = cluster.client().await;
        assert_eq!(
            tree.get(2 * 5).await.unwrap(),
            Some(psmr_btree::value_of(5, 256)),
            "a preloaded value"
        );
        let key = 2 * spec.preload + 1;
        for len in [0, 3, 256, 70_000] {
            let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            tree.insert(key, value.clone()).await.unwrap();
            let back = tree.get(key).await.unwrap().expect("stored");
            assert_eq!(back.as_ref(), value.as_slice(), "a value of {len} bytes");
        }
        assert_eq!(
            tree.put(key, "text").await.unwrap().map(|v| v.len()),
            Some(70_000)
        );
        let too_large = vec![0u8; psmr_btree::MAX_VALUE + 1];
        match tree.insert(key + 2, too_large).await {
            Err(psmr_btree::BTreeError::Invalid(psmr_btree::Invalid::ValueTooLarge { .. })) => {}
            other => panic!("a value above MAX_VALUE: {other:?}"),
        }
    });
    let config = cluster.config.to_str().expect("utf-8").to_string();
    let key = (2 * spec.preload + 1).to_string();
    let out = common::run_psmr(&["client", "--config", &config, "get", &key], QUICK);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "\"text\"",
        "{out:?}"
    );
    let out = common::run_psmr(&["client", "--config", &config, "get", "10"], QUICK);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("256 bytes 0x0500"),
        "{out:?}"
    );
    let load = [
        "client",
        "--config",
        &config,
        "load",
        "--clients",
        "1",
        "--in-flight",
        "8",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--dependent",
        "0.5",
        "--value-size",
        "512",
    ];
    let out = common::run_psmr(&load, Duration::from_secs(30));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(report.contains(" 0 errors"), "{report}");
    cluster.assert_running();
}
