//! The execution models of CBASE and the reconfiguration paper, with no
//! network: delivered streams are queued, then the engine's workers run them.
//!
//! ```text
//! cargo bench -p psmr-replica --bench models                 # everything
//! cargo bench -p psmr-replica --bench models -- tuple        # Figure 1
//! cargo bench -p psmr-replica --bench models -- list         # Figures 2 and 4
//! cargo bench -p psmr-replica --bench models -- cbase        # CBASE micro-benchmark
//! cargo bench -p psmr-replica --bench models -- graph        # dependency-graph cost
//! ```
//!
//! Tables go to standard output; CSV files and the list's throughput-over-time
//! plot (SVG) to `target/psmr-bench/models/`. Every row names the execution
//! cost added per command ("none" if none). `PSMR_BENCH_SCALE=0.2` shrinks
//! every workload (for a quick look).

// A benchmark program reports on standard output.
#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use plotters::prelude::*;
use psmr_core::proto::{Command, CommandId, ProposerId};
use psmr_core::{
    Answerers, ClientId, ConflictModel, EngineKind, ExecCost, GroupMapping, Mode, Reply, Request,
    RequestId, Service, ServiceId,
};
use psmr_replica::engine::cbase::Parallelizer;
use psmr_replica::engine::classes::Reconfiguration;
use psmr_replica::workload::{self, Streams, Submission, WorkloadOptions};
use psmr_replica::{EngineConfig, Policy, ReplySink};
use psmr_services::{
    LinkedList, ListOp, ListService, MAX_FIELDS, NullOp, NullService, TupleModel, TupleOp,
    TupleService, TupleSpace,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CLIENTS: u64 = 8;

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("PSMR_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(1)
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/psmr-bench/models");
    std::fs::create_dir_all(&dir).expect("create the output directory");
    dir
}

fn write(name: &str, text: &str) {
    let path = out_dir().join(name);
    std::fs::write(&path, text).expect("write a result file");
    println!("wrote {}", path.display());
}

/// A sink that stamps every reply with the time since `start`, by the index
/// of the submission it answers.
struct TimedSink {
    start: Instant,
    stamps: Mutex<Vec<(u64, Duration)>>,
}

impl ReplySink for TimedSink {
    fn replies(&self, _thread: usize, replies: &mut Vec<Reply>) {
        let now = self.start.elapsed();
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        for r in replies.drain(..) {
            if let Some(id) = r.request {
                stamps.push((id.0 * CLIENTS + r.client.0, now));
            }
        }
    }
}

fn submissions(ops: impl IntoIterator<Item = Bytes>) -> Vec<Submission> {
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| Submission {
            client: ClientId(i as u64 % CLIENTS),
            op,
        })
        .collect()
}

fn streams<S>(service: &S, state: S::State, subs: &[Submission]) -> Streams<S::State>
where
    S: ConflictModel + GroupMapping<Op = <S as Service>::Op>,
{
    let config = EngineConfig::new(EngineKind::Smr, 1);
    let options = WorkloadOptions {
        round: 64,
        ..WorkloadOptions::default()
    };
    workload::build(service, service, &config, state, subs, options)
}

/// What one engine run measured.
struct Run {
    elapsed: Duration,
    stamps: Vec<(u64, Duration)>,
    reconfigurations: Vec<Reconfiguration>,
}

fn run<S: ConflictModel>(
    service: &Arc<S>,
    config: EngineConfig,
    state: S::State,
    streams: &Streams<S::State>,
) -> Run {
    let sink = Arc::new(TimedSink {
        start: Instant::now(),
        stamps: Mutex::default(),
    });
    let mut engine = psmr_replica::Engine::new(service.clone(), state, config, sink.clone())
        .expect("a valid engine");
    workload::feed(&engine, streams, 1).expect("the engine takes the streams");
    let start = Instant::now();
    let sink_start = sink.start;
    engine.spawn().expect("workers start");
    let finished = engine.finish().expect("the engine runs");
    let elapsed = start.elapsed();
    let offset = start - sink_start;
    let mut stamps = std::mem::take(&mut *sink.stamps.lock().expect("not poisoned"));
    for s in &mut stamps {
        s.1 = s.1.saturating_sub(offset);
    }
    stamps.sort_by_key(|s| s.1);
    Run {
        elapsed,
        stamps,
        reconfigurations: finished.reconfigurations,
    }
}

fn classes(threads: usize, cost: ExecCost) -> EngineConfig {
    let mut config = EngineConfig::new(EngineKind::Classes, threads);
    config.cost = cost;
    config
}

fn sequential(cost: ExecCost) -> EngineConfig {
    let mut config = EngineConfig::new(EngineKind::Smr, 1);
    config.cost = cost;
    config
}

// ---------------------------------------------------------------- tuple space

fn tuple_op(rng: &mut ChaCha8Rng) -> TupleOp {
    let fields = rng.random_range(1..=MAX_FIELDS);
    let template = (0..fields)
        .map(|_| rng.random_bool(0.5).then(|| rng.random_range(0..4)))
        .collect();
    let tuple = |rng: &mut ChaCha8Rng, n| (0..n).map(|_| rng.random_range(0..4)).collect();
    match rng.random_range(0..4) {
        0 => TupleOp::Out(tuple(rng, fields)),
        1 => TupleOp::Rdp(template),
        2 => TupleOp::Inp(template),
        _ => {
            let n = rng.random_range(1..=MAX_FIELDS);
            TupleOp::Cas(template, tuple(rng, n))
        }
    }
}

fn tuple_space() {
    println!(
        "\n== tuple space (reconfiguration paper, Figure 1): 100k tuples, rdp/inp/out/cas, \
         1-10 fields; {ROUNDS} rounds, each running every configuration once; a ratio is to \
         the sequential run of its own round, the median of the rounds and their range shown"
    );
    let tuples = scale(100_000);
    let space = || {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        TupleSpace::from_tuples((0..tuples).map(|_| {
            let n = rng.random_range(1..=MAX_FIELDS);
            (0..n).map(|_| rng.random_range(0..1000)).collect()
        }))
    };
    let mut csv = String::from(
        "model,engine,threads,cost,commands_per_s,ratio_to_sequential,ratio_min,ratio_max\n",
    );
    println!(
        "{:<9} {:<11} {:>7} {:<32} {:>12} {:>9} {:>13}",
        "model", "engine", "threads", "cost", "cmds/s", "vs seq", "range"
    );
    let wait = |us| ExecCost {
        busy: Duration::ZERO,
        wait: Duration::from_micros(us),
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for (cost, commands) in [
        (ExecCost::default(), 20_000),
        (wait(20), 6_000),
        (wait(30), 6_000),
        (wait(50), 6_000),
        (wait(200), 3_000),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let subs = submissions((0..scale(commands)).map(|_| tuple_op(&mut rng).encode()));
        // The sequential engine ignores the model: one baseline serves both,
        // measured in the same rounds as the four parallel configurations.
        let configs = [
            (TupleModel::Simple, "sequential", sequential(cost)),
            (TupleModel::Simple, "classes", classes(cores, cost)),
            (TupleModel::Simple, "classes", classes(10, cost)),
            (TupleModel::Extended, "classes", classes(cores, cost)),
            (TupleModel::Extended, "classes", classes(10, cost)),
        ];
        // Services and streams once per model, not once per configuration.
        let prepared = [TupleModel::Simple, TupleModel::Extended].map(|model| {
            let service = TupleService { model };
            let streams = streams(&service, space(), &subs);
            (model, Arc::new(service), streams)
        });
        let prepared_for = |model: TupleModel| {
            let (_, service, streams) = prepared
                .iter()
                .find(|(m, _, _)| *m == model)
                .expect("every model is prepared");
            (service, streams)
        };
        // rounds[r][c]: configuration c's time in round r.
        let rounds: Vec<Vec<f64>> = (0..ROUNDS)
            .map(|_| {
                configs
                    .iter()
                    .map(|(model, _, config)| {
                        let (service, streams) = prepared_for(*model);
                        let run = run(service, config.clone(), space(), streams);
                        run.elapsed.as_secs_f64()
                    })
                    .collect()
            })
            .collect();
        for (c, (model, engine, config)) in configs.iter().enumerate() {
            let elapsed = median(rounds.iter().map(|r| r[c]).collect());
            let rate = subs.len() as f64 / elapsed;
            let ratios: Vec<f64> = rounds.iter().map(|r| r[0] / r[c]).collect();
            let (low, high) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
            let ratio = median(ratios);
            let threads = config.threads();
            let model = if threads == 1 {
                "any".to_string()
            } else {
                format!("{model:?}")
            };
            println!(
                "{model:<9} {engine:<11} {threads:>7} {:<32} {rate:>12.0} {ratio:>9.2} {:>13}",
                cost.to_string(),
                format!("{low:.2}-{high:.2}"),
            );
            let _ = writeln!(
                csv,
                "{model},{engine},{threads},{cost},{rate:.0},{ratio:.3},{low:.3},{high:.3}"
            );
        }
    }
    write("tuple_space.csv", &csv);
}

/// Rounds of the tuple-space bench. The machine is shared: identical
/// sequential runs differed by up to 40 %, so each ratio pairs runs of the
/// same round and the median of the rounds is reported, with the range.
const ROUNDS: usize = 11;

/// The median of `xs` (the mean of the middle two for an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    assert!(!xs.is_empty(), "the median of nothing");
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

// ---------------------------------------------------------------- linked list

struct ListPlan {
    phases: usize,
    per_phase: usize,
}

fn linked_list() {
    let size = scale(20_000) as u64;
    let plan = ListPlan {
        phases: 6,
        per_phase: scale(12_000),
    };
    println!(
        "\n== linked list (reconfiguration paper, Figures 2 and 4): {size} elements, \
         contains(last) and add(last) phases of {} commands",
        plan.per_phase
    );
    let list = || LinkedList::from_values(0..size);
    let last = size - 1;
    let contains = || ListOp::Contains(last).encode();
    let add = || ListOp::Add(last).encode();
    let workloads: [(&str, Vec<Bytes>); 3] = [
        (
            "contains",
            (0..plan.per_phase * 2).map(|_| contains()).collect(),
        ),
        ("add", (0..plan.per_phase * 2).map(|_| add()).collect()),
        (
            "mixed",
            (0..plan.phases * plan.per_phase)
                .map(|i| match (i / plan.per_phase) % 2 {
                    0 => contains(),
                    _ => add(),
                })
                .collect(),
        ),
    ];
    let mut paper = classes(10, ExecCost::default());
    (paper.min_threads, paper.initial_threads, paper.policy) = (1, 1, Policy::paper());
    let mut jump = paper.clone();
    jump.policy = Policy::jump();
    let configs = [
        ("static-1", classes(1, ExecCost::default())),
        ("static-10", classes(10, ExecCost::default())),
        ("rec-paper", paper),
        ("rec-jump", jump),
    ];
    let service = Arc::new(ListService);
    let mut csv = String::from("workload,config,commands_per_s\n");
    let mut phase_csv = String::from("config,phase,kind,steady_commands_per_s\n");
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut reaction = String::new();
    println!("{:<9} {:<10} {:>12}", "workload", "config", "cmds/s");
    for (name, ops) in &workloads {
        let subs = submissions(ops.iter().cloned());
        let streams = streams(&*service, list(), &subs);
        for (label, config) in &configs {
            let r = run(&service, config.clone(), list(), &streams);
            let rate = subs.len() as f64 / r.elapsed.as_secs_f64();
            println!("{name:<9} {label:<10} {rate:>12.0}");
            let _ = writeln!(csv, "{name},{label},{rate:.0}");
            if *name == "mixed" {
                let allowance = match config.policy {
                    Policy::Jump { period, .. } => period as usize * 2,
                    _ => plan.per_phase / 4,
                };
                for (phase, steady) in phase_rates(&r, &plan, allowance).into_iter().enumerate() {
                    let kind = ["contains", "add"][phase % 2];
                    let _ = writeln!(phase_csv, "{label},{phase},{kind},{steady:.0}");
                }
                series.push((label.to_string(), over_time(&r, Duration::from_millis(50))));
                let _ = writeln!(reaction, "{label}: {:?}", summarize(&r.reconfigurations));
            }
        }
    }
    println!(
        "\nmixed workload, steady throughput per phase (commands/s, first quarter of each phase skipped; rec-jump: its first 2 periods)"
    );
    print!("{phase_csv}");
    println!("reconfigurations (after request: from -> to):\n{reaction}");
    write("list.csv", &csv);
    write("list_phases.csv", &phase_csv);
    plot_over_time(&series, &out_dir().join("list_mixed_over_time.svg"));
}

/// Throughput of each phase from `allowance` commands after its start to its end.
fn phase_rates(r: &Run, plan: &ListPlan, allowance: usize) -> Vec<f64> {
    let mut done: Vec<Duration> = vec![Duration::ZERO; plan.phases * plan.per_phase];
    for &(i, t) in &r.stamps {
        if let Some(slot) = done.get_mut(i as usize) {
            *slot = t;
        }
    }
    (0..plan.phases)
        .map(|p| {
            let from = p * plan.per_phase + allowance.min(plan.per_phase - 1);
            let to = (p + 1) * plan.per_phase;
            let mut window: Vec<Duration> = done[from..to].to_vec();
            window.sort();
            let span = window.last().copied().unwrap_or_default() - window[0];
            (to - from) as f64 / span.as_secs_f64().max(1e-9)
        })
        .collect()
}

fn summarize(history: &[Reconfiguration]) -> Vec<String> {
    history
        .iter()
        .map(|r| format!("{}: {}->{}", r.after, r.from, r.to))
        .collect()
}

fn over_time(r: &Run, bucket: Duration) -> Vec<(f64, f64)> {
    let buckets = (r.elapsed.as_secs_f64() / bucket.as_secs_f64()).ceil() as usize + 1;
    let mut counts = vec![0u64; buckets];
    for &(_, t) in &r.stamps {
        counts[(t.as_secs_f64() / bucket.as_secs_f64()) as usize] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            (
                i as f64 * bucket.as_secs_f64(),
                c as f64 / bucket.as_secs_f64(),
            )
        })
        .collect()
}

fn plot_over_time(series: &[(String, Vec<(f64, f64)>)], path: &Path) {
    let x_max = series
        .iter()
        .flat_map(|(_, s)| s.last().map(|p| p.0))
        .fold(0.1, f64::max);
    let y_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).expect("draw");
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "linked list, mixed contains/add phases (classes engine, no network)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.1)
        .expect("draw");
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("throughput (commands/s)")
        .draw()
        .expect("draw");
    let colors = [RED, BLUE, GREEN, MAGENTA];
    for ((label, points), color) in series.iter().zip(colors) {
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color))
            .expect("draw")
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .expect("draw");
    root.present().expect("write the plot");
    println!("wrote {}", path.display());
}

// ---------------------------------------------------------------- CBASE

fn cbase_micro() {
    let wait = Duration::from_millis(1);
    let commands = scale(3_200);
    println!(
        "\n== CBASE micro-benchmark: {commands} null commands, each waiting {wait:?} (simulated resources)"
    );
    let subs = submissions((0..commands).map(|i| NullOp { tag: i as u64 }.encode()));
    let streams = streams(&NullService, (), &subs);
    let service = Arc::new(NullService);
    let cost = ExecCost {
        busy: Duration::ZERO,
        wait,
    };
    let mut csv = String::from("workers,cost,commands_per_s,speedup,efficiency\n");
    println!(
        "{:>7} {:>12} {:>8} {:>10}",
        "workers", "cmds/s", "speedup", "efficiency"
    );
    let mut base = 0.0;
    for workers in [1, 2, 4, 8, 16] {
        let mut config = EngineConfig::new(EngineKind::Cbase, workers);
        config.cost = cost;
        let r = run(&service, config, (), &streams);
        let rate = commands as f64 / r.elapsed.as_secs_f64();
        if workers == 1 {
            base = rate;
        }
        let speedup = rate / base;
        let efficiency = speedup / workers as f64;
        println!("{workers:>7} {rate:>12.0} {speedup:>8.2} {efficiency:>10.2}");
        let _ = writeln!(
            csv,
            "{workers},{cost},{rate:.0},{speedup:.3},{efficiency:.3}"
        );
    }
    write("cbase_null.csv", &csv);
}

/// The dependency graph alone: insert, take and remove every command on one
/// thread, for several windows, with independent and with conflicting commands.
fn graph_cost() {
    let commands = scale(200_000);
    println!("\n== cbase dependency graph: cost per command against the window (pending commands)");
    println!(
        "{:<12} {:>7} {:>12} {:>14} {:>12}",
        "commands", "window", "ns/command", "checks/command", "max pending"
    );
    let mut csv = String::from("commands,window,ns_per_command,checks_per_command\n");
    let null: Vec<Command> = (0..commands as u64)
        .map(|i| command(i, NullService.id(), NullOp { tag: i }.encode()))
        .collect();
    let writes: Vec<Command> = (0..commands as u64)
        .map(|i| command(i, ListService.id(), ListOp::Add(i).encode()))
        .collect();
    for window in [16, 64, 256, 1024] {
        let (ns, stats) = drain(Arc::new(NullService), &null, window);
        report(&mut csv, "independent", window, ns, stats, commands);
        let (ns, stats) = drain(Arc::new(ListService), &writes, window);
        report(&mut csv, "conflicting", window, ns, stats, commands);
    }
    write("cbase_graph.csv", &csv);
}

fn command(i: u64, service: ServiceId, op: Bytes) -> Command {
    let request = Request {
        id: RequestId(i / CLIENTS),
        low_water: RequestId(0),
        mode: Mode::Conservative,
        service,
        op,
        answerers: Answerers::All,
    };
    Command {
        id: CommandId {
            proposer: ProposerId(i % CLIENTS),
            seq: i / CLIENTS,
        },
        low_water: 0,
        payload: request.encode(),
    }
}

fn drain<S: ConflictModel>(
    service: Arc<S>,
    commands: &[Command],
    window: usize,
) -> (f64, psmr_replica::engine::cbase::DagStats) {
    let parallelizer = Parallelizer::standalone(service, 4, window);
    let start = Instant::now();
    // Everything waits from the start: the graph stays full (`window`
    // pending) until the backlog runs dry.
    for chunk in commands.chunks(64) {
        parallelizer.insert(chunk).expect("open");
    }
    parallelizer.close();
    while let Some(task) = parallelizer.next_request() {
        parallelizer.remove_request(task.slot);
    }
    let ns = start.elapsed().as_nanos() as f64 / commands.len() as f64;
    (ns, parallelizer.stats())
}

fn report(
    csv: &mut String,
    kind: &str,
    window: usize,
    ns: f64,
    stats: psmr_replica::engine::cbase::DagStats,
    commands: usize,
) {
    let checks = stats.checks as f64 / commands as f64;
    println!(
        "{kind:<12} {window:>7} {ns:>12.0} {checks:>14.1} {:>12}",
        stats.max_pending
    );
    let _ = writeln!(csv, "{kind},{window},{ns:.0},{checks:.1}");
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    println!(
        "machine: {} cores; results are ratios measured side by side in one run",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if wants("tuple") {
        tuple_space();
    }
    if wants("list") {
        linked_list();
    }
    if wants("cbase") {
        cbase_micro();
    }
    if wants("graph") {
        graph_cost();
    }
}
