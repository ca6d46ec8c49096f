//! `psmr chaos`: faults against a live local cluster, and a linearizability
//! verdict on what its clients saw (docs/testing.md, "psmr chaos").
//!
//! ```text
//!  per engine:  local cluster (3 acceptors, 2 replicas), each node behind a relay (relay.rs)
//!               clients: get / put / insert / delete with unique values on a few keys,
//!                        every call recorded (psmr_client::history)
//!               per fault of the schedule (nemesis.rs, drawn from --seed):
//!                   calm ── inject ── --fault-for ── heal ── wait until throughput recovers
//!               stop the clients; every key read through each replica alone (the other paused)
//!               check the history (psmr_client::linearizability) ── table
//! ```
//!
//! The run passes when every engine's history is linearizable (the final
//! reads make an acknowledged write that was lost a violation), the
//! cluster recovered from every fault within `--recover-within`, the final
//! reads were answered, and no process died on its own.

mod nemesis;
mod relay;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use psmr_btree::BTreeClient;
use psmr_client::history::History;
use psmr_client::linearizability::{KeyValue, KvOp, Operation, Verdict, check};
use psmr_client::{ClientError, ClientOptions};
use psmr_core::cluster::{ClusterConfig, ServiceKind, StorageKind};
use psmr_core::proto::NodeId;
use psmr_core::{EngineKind, ExecCost};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

pub(crate) use nemesis::FaultKind;

use crate::local::{ClusterSpec, LocalCluster, LocalError};
use relay::{Hop, Network, Relays};

/// Options of `psmr chaos`.
#[derive(Clone, Debug)]
pub(crate) struct ChaosOptions {
    pub(crate) engines: Vec<EngineKind>,
    pub(crate) threads: usize,
    /// Acceptors in every ring (odd, 3 to 9).
    pub(crate) acceptors: usize,
    pub(crate) storage: StorageKind,
    /// The classes of fault; each comes once per round.
    pub(crate) faults: Vec<FaultKind>,
    pub(crate) rounds: usize,
    pub(crate) seed: u64,
    /// How long each fault lasts.
    pub(crate) fault_for: Duration,
    /// Quiet time before each fault (its "before" throughput) and after the
    /// last one.
    pub(crate) calm: Duration,
    /// A cluster whose throughput is not back to half of its "before" this
    /// long after a heal fails the run.
    pub(crate) recover_within: Duration,
    pub(crate) clients: usize,
    /// Calls in flight per client (more than one: a single replica answers
    /// each, so a fault of that replica is felt until the client fails over).
    pub(crate) in_flight: usize,
    pub(crate) keys: u64,
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
}

/// Why `psmr chaos` failed.
#[derive(Debug, Error)]
pub(crate) enum ChaosError {
    /// The cluster could not be started.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// kill-all asked for with memory storage.
    #[error(
        "--faults kill-all needs --storage durable: with memory storage the acceptors keep no votes, so killing all of them at once loses the data by design"
    )]
    KillAllInMemory,
    /// A relay could not bind.
    #[error("cannot start the relay at {addr}: {source}")]
    Relay {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A client could not connect before any fault.
    #[error("{engine}: the cluster did not serve before the faults: {source}")]
    NotServing {
        engine: &'static str,
        #[source]
        source: ClientError,
    },
    /// Some run found a problem (each is in its table).
    #[error("{0}")]
    Failed(String),
}

/// What one fault did, on the history's clock (nanoseconds).
struct Row {
    description: String,
    calm_from: u64,
    injected: u64,
    healed: u64,
    /// When throughput came back, if it did.
    recovered: Option<u64>,
    /// Where its window ends: the next fault's calm, or the end of the load.
    end: u64,
}

/// One engine's run.
struct Report {
    engine: EngineKind,
    table: String,
    problems: Vec<String>,
}

/// Runs every engine of `options` in turn; prints each table as it
/// completes, then fails naming the problems found, if any.
pub(crate) fn run(options: &ChaosOptions) -> Result<(), ChaosError> {
    if options.storage == StorageKind::Memory && options.faults.contains(&FaultKind::KillAll) {
        return Err(ChaosError::KillAllInMemory);
    }
    let mut failed = Vec::new();
    for &engine in &options.engines {
        // A runtime per engine: dropping it drops every relay task and
        // socket at once, so the next cluster finds its ports free.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| LocalError::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        let report = rt.block_on(run_engine(options, engine))?;
        drop(rt);
        println!("{}", report.table);
        if !report.problems.is_empty() {
            failed.push(format!(
                "{}: {}",
                report.engine.name(),
                report.problems.join("; ")
            ));
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(ChaosError::Failed(failed.join(" | "))),
    }
}

/// The listen address of a node behind its relay: 50 ports above its address.
const LISTEN_OFFSET: u16 = 50;

/// Bytes per value written: more than one u64, so that a value is checked
/// as bytes on its way, not only as the number it stands for.
const VALUE_SIZE: usize = 24;

async fn run_engine(options: &ChaosOptions, engine: EngineKind) -> Result<Report, ChaosError> {
    let spec = ClusterSpec {
        engine,
        threads: options.threads,
        storage: options.storage,
        service: ServiceKind::Btree,
        preload: 1_000,
        fanout: psmr_core::cluster::ServiceSection::default().fanout,
        value_size: VALUE_SIZE,
        cost: ExecCost::default(),
        port: options.port,
        dir: options.dir.join(engine.name()),
        fresh: true,
    };
    let mut local = LocalCluster::start_edited(&spec, |cluster| {
        with_acceptors(cluster, options.acceptors);
        behind_relays(cluster);
    })?;
    let cluster = local.config.clone();
    let network = Network::default();
    let _relays = start_relays(&cluster, &network, options.seed).await?;
    println!(
        "psmr chaos: {} K={}, {} acceptors, {} storage, seed {}, {} clients x {} in flight on {} keys, faults of {:?}",
        engine.name(),
        cluster.threads(),
        cluster.acceptors.len(),
        options.storage.name(),
        options.seed,
        options.clients,
        options.in_flight,
        options.keys,
        options.fault_for
    );
    let keys: Vec<u64> = (0..options.keys)
        .map(|i| 2 * spec.preload + 1 + 2 * i)
        .collect();
    let workload = Workload::start(&cluster, options, &keys)
        .await
        .map_err(|source| ChaosError::NotServing {
            engine: engine.name(),
            source,
        })?;
    let schedule = nemesis::schedule(&options.faults, options.rounds, &cluster, options.seed);
    let mut rows: Vec<Row> = Vec::new();
    let mut problems = Vec::new();
    for fault in &schedule {
        let calm_from = workload.history.now();
        let before = workload.rate_over(options.calm, &mut local).await;
        let injected = workload.history.now();
        let fault = nemesis::inject(fault, &cluster, &mut local.children, &network).await;
        println!("  {} for {:?}", fault.description, options.fault_for);
        workload.wait(options.fault_for, &mut local).await;
        let healed = workload.history.now();
        nemesis::heal(&fault, &mut local.children, &network)?;
        let recovered = workload
            .recovery(before, options.recover_within, &mut local)
            .await;
        if recovered.is_none() {
            problems.push(format!(
                "no recovery within {:?} after {}",
                options.recover_within, fault.description
            ));
        }
        if let Some(last) = rows.last_mut() {
            last.end = calm_from;
        }
        rows.push(Row {
            description: fault.description,
            calm_from,
            injected,
            healed,
            recovered,
            end: u64::MAX,
        });
    }
    workload.wait(options.calm, &mut local).await;
    let workload_end = workload.history.now();
    if let Some(last) = rows.last_mut() {
        last.end = workload_end;
    }
    let history = workload.stop().await;
    final_reads(&cluster, &history, &keys, &mut local, &mut problems).await;
    if local.children.restarts() > 0 {
        problems.push(format!(
            "processes died on their own {} times (above)",
            local.children.restarts()
        ));
    }
    let ops = history.snapshot();
    let started = Instant::now();
    let verdict = check(&KeyValue, &ops, Duration::from_secs(60));
    let checked = started.elapsed();
    let mut table = table(&rows, &ops, &verdict, workload_end);
    let (calls, unknown) = history.counts();
    let verdict_line = match &verdict {
        Verdict::Linearizable => "linearizable".to_string(),
        Verdict::Violation(e) => {
            problems.push(format!("not linearizable on key {}", e.partition));
            format!("NOT LINEARIZABLE: {e:#?}")
        }
        Verdict::Unknown { undecided } => {
            problems.push(format!("the checker ran out of time on keys {undecided:?}"));
            format!("undecided within the checker's budget on keys {undecided:?}")
        }
    };
    let _ = writeln!(
        table,
        "\n{calls} calls, {unknown} with an unknown outcome; final reads through each replica alone; {verdict_line} (checked in {checked:.1?})"
    );
    if problems.is_empty() {
        let _ = writeln!(
            table,
            "{}: passed (no acknowledged write lost)",
            engine.name()
        );
    } else {
        let _ = writeln!(table, "{}: FAILED: {}", engine.name(), problems.join("; "));
    }
    Ok(Report {
        engine,
        table,
        problems,
    })
}

/// Gives the built-in cluster `count` acceptors (3 or more, odd), on the
/// ports after the first three; every derived ring takes them all.
fn with_acceptors(cluster: &mut ClusterConfig, count: usize) {
    let first = cluster.acceptors[0].clone();
    for i in cluster.acceptors.len()..count {
        let mut more = first.clone();
        more.id = first.id + i as u32;
        more.address.set_port(first.address.port() + i as u16);
        more.data_dir = first
            .data_dir
            .as_ref()
            .map(|d| d.with_file_name(format!("acceptor-{}", more.id)));
        cluster.acceptors.push(more);
    }
}

/// Puts every node behind a relay: it listens [`LISTEN_OFFSET`] ports above
/// the address the others reach it at, where its relay binds.
fn behind_relays(cluster: &mut ClusterConfig) {
    let shift = |a: SocketAddr| SocketAddr::new(a.ip(), a.port() + LISTEN_OFFSET);
    for a in &mut cluster.acceptors {
        a.listen = Some(shift(a.address));
    }
    for r in &mut cluster.replicas {
        r.listen = Some(shift(r.address));
    }
}

async fn start_relays(
    cluster: &ClusterConfig,
    network: &Network,
    seed: u64,
) -> Result<Relays, ChaosError> {
    let hops: Vec<Hop> = cluster
        .endpoints()
        .map(|(_, id, address, _)| Hop {
            id,
            address,
            listen: cluster.listen_address(NodeId(id)).unwrap_or(address),
        })
        .collect();
    Relays::start(&hops, network, seed)
        .await
        .map_err(|source| ChaosError::Relay {
            addr: hops[0].address,
            source,
        })
}

type KvHistory = History<KvOp, Option<u64>>;

/// The clients and what they saw.
struct Workload {
    history: Arc<KvHistory>,
    /// Calls completed with an answer.
    ok: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How long a workload call may take before its outcome is unknown.
const CALL_DEADLINE: Duration = Duration::from_secs(5);

impl Workload {
    async fn start(
        cluster: &ClusterConfig,
        options: &ChaosOptions,
        keys: &[u64],
    ) -> Result<Workload, ClientError> {
        let history = KvHistory::new();
        let ok = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for client in 0..options.clients as u64 {
            let tree = BTreeClient::connect(
                cluster,
                ClientOptions {
                    deadline: CALL_DEADLINE,
                    connect_timeout: Duration::from_secs(30),
                    ..ClientOptions::default()
                },
            )
            .await?;
            for lane in 0..options.in_flight as u64 {
                let caller = client * options.in_flight as u64 + lane;
                let rng = ChaCha8Rng::seed_from_u64(options.seed ^ (caller << 32));
                let calls = Calls {
                    caller,
                    tree: tree.clone(),
                    keys: keys.to_vec(),
                    history: history.clone(),
                    ok: ok.clone(),
                    stop: stop.clone(),
                };
                tasks.push(tokio::spawn(calls.run(rng)));
            }
        }
        Ok(Workload {
            history,
            ok,
            stop,
            tasks,
        })
    }

    /// Waits `duration`, supervising the cluster.
    async fn wait(&self, duration: Duration, local: &mut LocalCluster) {
        let until = tokio::time::Instant::now() + duration;
        while tokio::time::Instant::now() < until {
            local.children.supervise(true);
            tokio::time::sleep_until(until.min(tokio::time::Instant::now() + POLL)).await;
        }
    }

    /// Calls completed per second over the next `duration`.
    async fn rate_over(&self, duration: Duration, local: &mut LocalCluster) -> f64 {
        let before = self.ok.load(Ordering::Relaxed);
        self.wait(duration, local).await;
        (self.ok.load(Ordering::Relaxed) - before) as f64 / duration.as_secs_f64()
    }

    /// Waits until a [`RECOVERY_WINDOW`] completes at least half of
    /// `before`'s rate; returns when that window began (history clock), or
    /// `None` after `within`.
    async fn recovery(
        &self,
        before: f64,
        within: Duration,
        local: &mut LocalCluster,
    ) -> Option<u64> {
        let needed = (before / 2.0 * RECOVERY_WINDOW.as_secs_f64()).max(1.0) as u64;
        let mut samples = std::collections::VecDeque::new();
        let until = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < until {
            let (now, ok) = (self.history.now(), self.ok.load(Ordering::Relaxed));
            samples.push_back((now, ok));
            let window = RECOVERY_WINDOW.as_nanos() as u64;
            while samples.len() > 1 && samples[1].0 + window <= now {
                samples.pop_front();
            }
            let (first, first_ok) = samples[0];
            if now - first + POLL.as_nanos() as u64 >= window && ok - first_ok >= needed {
                return Some(first);
            }
            local.children.supervise(true);
            tokio::time::sleep(POLL).await;
        }
        None
    }

    /// Stops the clients after their calls in flight; the history.
    async fn stop(self) -> Arc<KvHistory> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        self.history
    }
}

const POLL: Duration = Duration::from_millis(50);
const RECOVERY_WINDOW: Duration = Duration::from_millis(250);

/// One loop of calls, one at a time, of a client (several share it).
struct Calls {
    /// Names the loop in the history (below 1,000).
    caller: u64,
    tree: BTreeClient,
    keys: Vec<u64>,
    history: Arc<KvHistory>,
    ok: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Calls {
    async fn run(self, mut rng: ChaCha8Rng) {
        // Values are unique over the run: client in the high bits.
        let mut unique = (self.caller + 1) << 40;
        while !self.stop.load(Ordering::Relaxed) {
            let key = self.keys[rng.random_range(0..self.keys.len())];
            unique += 1;
            let op = match rng.random_range(0..4) {
                0 => KvOp::Get(key),
                1 => KvOp::Put(key, unique),
                2 => KvOp::Insert(key, unique),
                _ => KvOp::Delete(key),
            };
            let call = self.history.begin(self.caller, op);
            match self.tree.call_kv(op, VALUE_SIZE).await {
                Ok(answer) => {
                    call.ok(answer);
                    self.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => call.unknown(),
            }
        }
    }
}

/// Reads every key through each replica alone (the others paused), into
/// the history as calls of clients 1000 + the replica's id.
async fn final_reads(
    cluster: &ClusterConfig,
    history: &Arc<KvHistory>,
    keys: &[u64],
    local: &mut LocalCluster,
    problems: &mut Vec<String>,
) {
    let replicas: Vec<u32> = cluster.replicas.iter().map(|r| r.id).collect();
    for &alone in &replicas {
        let others: Vec<u32> = replicas.iter().copied().filter(|&r| r != alone).collect();
        for &r in &others {
            local.children.signal(r, Signal::SIGSTOP);
        }
        if let Err(e) = read_all(cluster, history, keys, alone).await {
            problems.push(format!("final reads through n{alone}: {e}"));
        }
        for &r in &others {
            local.children.signal(r, Signal::SIGCONT);
        }
        local.children.supervise(true);
    }
}

async fn read_all(
    cluster: &ClusterConfig,
    history: &Arc<KvHistory>,
    keys: &[u64],
    replica: u32,
) -> Result<(), psmr_btree::BTreeError> {
    let options = ClientOptions {
        deadline: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    let tree = BTreeClient::connect(cluster, options).await?;
    for &key in keys {
        let op = KvOp::Get(key);
        let call = history.begin(1_000 + u64::from(replica), op);
        call.ok(tree.call_kv(op, VALUE_SIZE).await?);
    }
    Ok(())
}

/// The table of a run (Markdown), one row per fault.
fn table(
    rows: &[Row],
    ops: &[Operation<KvOp, Option<u64>>],
    verdict: &Verdict<KvOp, Option<u64>>,
    workload_end: u64,
) -> String {
    let rate = |from: u64, to: u64| -> String {
        if to <= from {
            return "-".into();
        }
        let done = ops
            .iter()
            .filter(|o| o.client < 1_000)
            .filter(|o| o.result.as_ref().is_some_and(|r| (from..to).contains(&r.0)))
            .count();
        format!("{:.0}", done as f64 / ((to - from) as f64 / 1e9))
    };
    let secs = |ns: u64| format!("{:.2}s", ns as f64 / 1e9);
    // The fault during whose window the violation's stuck calls were invoked.
    let stuck_at: Option<u64> = match verdict {
        Verdict::Violation(e) => e.stuck.iter().map(|o| o.call).min(),
        _ => None,
    };
    let mut out = String::from(
        "| fault | lasted | calls ok | unknown | slowest call | before /s | during /s | after /s | recovered in | verdict |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let end = row.end.min(workload_end);
        let window = ops
            .iter()
            .filter(|o| o.client < 1_000 && (row.injected..end).contains(&o.call));
        let (ok, unknown, slowest) =
            window.fold((0, 0, 0), |(ok, unknown, slowest), o| match o.result {
                Some((at, _)) => (ok + 1, unknown, slowest.max(at - o.call)),
                None => (ok, unknown + 1, slowest),
            });
        let recovered = row
            .recovered
            .map_or("NOT".into(), |t| secs(t.saturating_sub(row.healed)));
        let after = row.recovered.map_or("-".into(), |t| rate(t, end));
        let verdict = match (verdict, stuck_at) {
            (Verdict::Linearizable, _) => "ok",
            (Verdict::Violation(_), Some(t)) if (row.injected..end).contains(&t) => "VIOLATION",
            (Verdict::Violation(_), _) => "-",
            (Verdict::Unknown { .. }, _) => "undecided",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {ok} | {unknown} | {} | {} | {} | {after} | {recovered} | {verdict} |",
            row.description,
            secs(row.healed - row.injected),
            secs(slowest),
            rate(row.calm_from, row.injected),
            rate(row.injected, row.healed),
        );
    }
    out
}
