//! The execution engines of docs/ARCHITECTURE.md, "Execution models": `smr`, `psmr`, `opt-psmr`
//! (this module and `worker`), `cbase` ([`cbase`]) and `classes`
//! ([`classes`]).
//!
//! ```text
//!  deliver(ring, instance, value) ──> worker t_i's queue (g_i: t_i only; g_all: every worker)
//!  worker t_i: Merger{g_i, g_all} ──> batch from g_i:   execute in parallel mode (&State)
//!                                 └─> batch from g_all: synchronous mode — the last worker to
//!                                                        arrive executes (&mut State) while the
//!                                                        others wait at the rendezvous
//!  every reply ──> ReplySink
//! ```
//!
//! The state sits behind a read-write lock. In parallel mode each worker
//! holds a read guard across the batches it runs in a row; at a
//! synchronization every worker drops it before it arrives, so the executor
//! can take the write guard without contention. An engine with one worker
//! takes the write guard instead.
//!
//! A worker whose thread is parked may be run by the thread that delivers
//! to it (the replica's network thread), for a batch cheaper than the two
//! wake-ups a handoff costs ([`EngineConfig::inline_budget`], `worker`):
//! at one call in flight that is every batch, and the replica answers with
//! one thread wake-up fewer on each side.
//!
//! `smr` is one worker that merges only `g_all`; `psmr` and `opt-psmr` have K
//! workers; they differ in what the clients send (CC-G or OC-G), and the
//! engine treats a command by its mode and the group that delivered it.
//!
//! `cbase` and `classes` merge one ring, `g_all`, and find the parallelism
//! in the stream itself through the service's [`ConflictModel`]; they take
//! the same read or write guard on the state, per command.

pub mod cbase;
pub mod checkpoint;
pub mod classes;
pub(crate) mod execute;
mod intake;
mod pause;
mod worker;

use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use psmr_core::cluster::{ClusterConfig, PolicyName};
use psmr_core::proto::{Instance, Merger, RingId, Value};
use psmr_core::{
    Answerers, ClientId, ConflictModel, Lane, Layout, Marker, Outcome, Placement, Reply, Service,
};
use thiserror::Error;

pub use checkpoint::{Captured, EngineImage, Resume};
pub use classes::Policy;
pub use execute::ExecMetrics;
pub use psmr_core::{EngineKind, ExecCost};

use crate::rendezvous::{Rendezvous, WaitPolicy};
use crate::table::ExecutedTable;
use checkpoint::Assembly;

/// Spends `cost` on the calling thread: busy work, then the wait.
pub fn spend(cost: &ExecCost) {
    if !cost.busy.is_zero() {
        let start = Instant::now();
        while start.elapsed() < cost.busy {
            std::hint::spin_loop();
        }
    }
    if !cost.wait.is_zero() {
        precise_sleeps();
        std::thread::sleep(cost.wait);
    }
}

/// Makes the calling thread's sleeps end when asked rather than up to the
/// default 50 µs timer slack later (Linux), once per thread: a wait of 20 µs
/// then costs about 20 µs, not 70, and varies less with the machine's load.
fn precise_sleeps() {
    thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if DONE.replace(true) {
        return;
    }
    // Best effort: where it fails, sleeps are only longer than asked.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_timerslack(1_000);
}

/// Random pauses between commands, to vary thread timing in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jitter {
    /// Seed of the pauses; each worker mixes in its index.
    pub seed: u64,
    /// Longest pause.
    pub max_pause: Duration,
}

/// How an engine is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Execution model.
    pub kind: EngineKind,
    /// The group of each worker thread, `g_1..g_K` (empty for `smr`).
    pub thread_rings: Vec<RingId>,
    /// `g_all`.
    pub all_ring: RingId,
    /// M of the merge. Default 1.
    pub merge_m: u32,
    /// Consecutive `g_all` commands of one batch share one synchronization.
    /// Default true.
    pub batch_sync: bool,
    /// How threads wait at a synchronization. Default [`WaitPolicy::Auto`].
    pub wait: WaitPolicy,
    /// Random pauses between commands (tests only). Default none.
    pub jitter: Option<Jitter>,
    /// `cbase` workers; `classes`: the most threads that can be active.
    /// For the other engines, the length of `thread_rings`.
    pub workers: usize,
    /// `cbase`: the most commands in the dependency graph at once; later
    /// ones wait, in order, outside it. Default 256.
    pub window: usize,
    /// `classes`: the fewest active threads. Default `workers`.
    pub min_threads: usize,
    /// `classes`: the active threads at start. Default `workers`.
    pub initial_threads: usize,
    /// `classes`: when to change the number of active threads. Default fixed.
    pub policy: Policy,
    /// Added to every executed command. Default none.
    pub cost: ExecCost,
    /// smr, psmr, opt-psmr: a batch for a worker whose thread is parked
    /// runs on the delivering thread (the replica's network thread) when it
    /// is expected to take at most this long (the worker's measured time per
    /// command, at first the configured `cost`, times the batch's commands);
    /// it saves the two thread wake-ups of a handoff. Zero: every batch runs
    /// on its worker's thread. Default [`DEFAULT_INLINE_BUDGET`].
    pub inline_budget: Duration,
    /// A bug planted on purpose, for the tests that show the whole-stack
    /// simulator catches it. Default none.
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<PlantedBug>,
}

/// Bugs planted on purpose in the replica layer (feature `planted-bugs`,
/// for tests only).
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The table of executed requests is not consulted: a request proposed
    /// again (a re-proposal, a failover) is executed again.
    ExecuteResent,
}

/// How long a batch may run on the delivering thread: a full batch of 64
/// cheap commands fits, so that under load a batch does not cost the
/// wake-ups of a handoff and the replies go out with the network thread's
/// next writes; a command with the experiments' blocking wait does not, so
/// those still run on the workers. What it saves: docs/benchmarks.md, "The
/// running system".
pub const DEFAULT_INLINE_BUDGET: Duration = Duration::from_micros(150);

impl EngineConfig {
    /// An engine of `kind` with `threads` workers: for psmr and opt-psmr on
    /// rings `1..=threads`; `g_all` is ring 0 (`smr` ignores `threads`;
    /// `classes` keeps all `threads` active).
    pub fn new(kind: EngineKind, threads: usize) -> EngineConfig {
        let layout = Layout::new(kind, threads);
        let workers = match kind {
            EngineKind::Smr => 1,
            _ => threads,
        };
        EngineConfig {
            kind,
            thread_rings: layout.thread_rings(),
            all_ring: Layout::ALL_RING,
            merge_m: 1,
            batch_sync: true,
            wait: WaitPolicy::Auto,
            jitter: None,
            workers,
            window: 256,
            min_threads: workers,
            initial_threads: workers,
            policy: Policy::Fixed,
            cost: ExecCost::default(),
            inline_budget: DEFAULT_INLINE_BUDGET,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    /// Whether a request is looked up in the table of executed requests
    /// before it runs (always, unless a bug is planted).
    pub(crate) fn looks_up_executed(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted != Some(PlantedBug::ExecuteResent)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            true
        }
    }

    /// The engine configuration of a cluster file's replicas: its engine,
    /// K, merge M, execution cost and (for `classes`) reconfiguration policy.
    pub fn of_cluster(cluster: &ClusterConfig) -> EngineConfig {
        let mut config = EngineConfig::new(cluster.engine(), cluster.threads());
        config.merge_m = cluster.multicast.merge_m;
        config.cost = cluster.service.cost();
        let policy = cluster.policy();
        if config.kind == EngineKind::Classes && policy != PolicyName::Fixed {
            config.policy = Policy::from(policy);
            config.min_threads = 1;
            config.initial_threads = 1;
        }
        config
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        match self.kind {
            EngineKind::Cbase | EngineKind::Classes => self.workers.max(1),
            _ => self.thread_rings.len().max(1),
        }
    }

    /// Checks the configuration; the error names the field.
    pub fn validate(&self) -> Result<(), EngineError> {
        let config = |field, problem| Err(EngineError::Config { field, problem });
        if self.kind.has_thread_rings() == self.thread_rings.is_empty() {
            return config(
                "thread_rings",
                "psmr and opt-psmr need at least one thread ring; smr, cbase and classes have none",
            );
        }
        if matches!(self.kind, EngineKind::Cbase | EngineKind::Classes) {
            if !(1..=Layout::MAX_THREADS).contains(&self.workers) {
                return config("workers", "must be between 1 and 64");
            }
            if self.window == 0 {
                return config("window", "must be at least 1");
            }
        }
        if self.kind == EngineKind::Classes
            && !(1 <= self.min_threads
                && self.min_threads <= self.initial_threads
                && self.initial_threads <= self.workers)
        {
            return config(
                "min_threads",
                "need 1 <= min_threads <= initial_threads <= workers",
            );
        }
        let mut rings = self.thread_rings.clone();
        rings.push(self.all_ring);
        rings.sort_unstable();
        rings.dedup();
        if rings.len() != self.thread_rings.len() + 1 {
            return Err(EngineError::Config {
                field: "thread_rings",
                problem: "every thread needs its own ring, distinct from all_ring",
            });
        }
        if self.merge_m == 0 {
            return Err(EngineError::Config {
                field: "merge_m",
                problem: "must be at least 1",
            });
        }
        Ok(())
    }
}

/// Where replies go. Called from worker threads.
///
/// A worker hands over the replies of a whole merged batch at once, so that
/// a sink that wakes another thread does so once per batch, not per command.
pub trait ReplySink: Send + Sync + 'static {
    /// The replies of one batch from worker `thread`; the sink takes them all
    /// and leaves `replies` empty (its capacity is reused).
    fn replies(&self, thread: usize, replies: &mut Vec<Reply>);
}

/// Why the engine failed.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The configuration cannot work.
    #[error("engine configuration: {field}: {problem}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
    /// A delivered ring is not one of the engine's.
    #[error("ring {ring} is not merged by this engine")]
    UnknownRing {
        /// The ring.
        ring: RingId,
    },
    /// A worker thread could not be started.
    #[error("cannot start worker thread {thread}: {source}")]
    Spawn {
        /// The worker.
        thread: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread panicked; the engine stopped.
    #[error("worker thread {thread} panicked: {message}")]
    WorkerPanicked {
        /// The worker.
        thread: usize,
        /// The panic message.
        message: String,
    },
    /// The engine already stopped (a worker died).
    #[error("the engine has stopped")]
    Stopped,
    /// A checkpoint does not fit this engine's configuration.
    #[error("cannot resume from checkpoint {number}: {problem}")]
    Resume {
        /// The checkpoint.
        number: u64,
        /// What does not fit.
        problem: String,
    },
}

/// The state the workers share: the service's, and the tables of executed requests.
pub(crate) struct EngineState<T> {
    pub(crate) service: T,
    /// Requests executed in synchronous mode (written only then).
    pub(crate) sync_table: ExecutedTable,
    /// Requests executed by each worker in parallel mode, each on its own
    /// cache lines (the owner locks its table for every command).
    pub(crate) thread_tables: Vec<Padded<Mutex<ExecutedTable>>>,
}

/// A value alone on its cache lines: two threads writing two neighbouring
/// values would otherwise bounce one line between their cores.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> EngineState<T> {
    pub(crate) fn new(service: T, threads: usize) -> Self {
        EngineState {
            service,
            sync_table: ExecutedTable::default(),
            thread_tables: (0..threads).map(|_| Padded::default()).collect(),
        }
    }

    /// With the tables of a checkpoint (sync first, then one per thread);
    /// taken with another number of threads, they all go to the shared one.
    fn resumed(service: T, threads: usize, tables: Vec<ExecutedTable>) -> Self {
        let mut state = EngineState::new(service, threads);
        if tables.len() == threads + 1 {
            let mut tables = tables.into_iter();
            state.sync_table = tables.next().expect("one more than threads");
            for (mine, table) in state.thread_tables.iter_mut().zip(tables) {
                mine.0 = Mutex::new(table);
            }
        } else {
            tables.into_iter().for_each(|t| state.sync_table.absorb(t));
        }
        state
    }
}

pub(crate) struct Shared<S: Service> {
    pub(crate) service: Arc<S>,
    pub(crate) state: RwLock<EngineState<S::State>>,
    pub(crate) rendezvous: Rendezvous,
    pub(crate) sink: Arc<dyn ReplySink>,
    pub(crate) config: EngineConfig,
    pub(crate) checkpoints: Mutex<Assembly<S::Image>>,
}

impl<S: Service> Shared<S> {
    /// Executes `command` with `access`, spending the configured cost. A
    /// checkpoint marker run with the whole state completes its checkpoint
    /// (`checkpoint`); it is answered to nobody.
    pub(crate) fn execute(
        &self,
        access: execute::Access<'_, S::State>,
        command: &psmr_core::proto::Command,
        metrics: &mut ExecMetrics,
    ) -> Reply {
        let Some(marker) = Marker::decode(&command.payload) else {
            return execute::execute_command(
                &*self.service,
                access,
                command,
                execute::Run {
                    cost: self.config.cost,
                    look_up: self.config.looks_up_executed(),
                },
                metrics,
            );
        };
        if let execute::Access::Exclusive { state, .. } = access {
            lock(&self.checkpoints).complete(marker.number, || self.capture(state));
        }
        Reply {
            client: ClientId(command.id.proposer.0),
            request: None,
            outcome: Outcome::Done(bytes::Bytes::new()),
            execution_ns: 0,
            answerers: Answerers::Nobody,
        }
    }

    /// Copies the service state and the tables at a checkpoint's cut.
    fn capture(&self, state: &mut EngineState<S::State>) -> (S::Image, Vec<ExecutedTable>) {
        let mut tables = vec![state.sync_table.clone()];
        tables.extend(
            state
                .thread_tables
                .iter_mut()
                .map(|t| t.0.get_mut().unwrap_or_else(|e| e.into_inner()).clone()),
        );
        (self.service.capture(&state.service), tables)
    }

    /// Executes a command that `cbase` or `classes` placed, on worker
    /// `thread`: a stale one is answered at once; one that runs alone takes
    /// the write guard; any other takes the read guard, on the lane its
    /// placement names (else the worker's own), recording in `placed.table`.
    pub(crate) fn execute_placed(
        &self,
        placed: Placed<'_>,
        thread: usize,
        metrics: &mut ExecMetrics,
    ) -> Reply {
        if placed.stale {
            return execute::stale(placed.command, metrics);
        }
        if placed.alone {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let access = execute::Access::Exclusive {
                state: &mut state,
                lane: None,
            };
            return self.execute(access, placed.command, metrics);
        }
        let threads = self.config.threads();
        let lane = match placed.placement {
            Placement::Lane(l) if l < threads => Lane { thread: l, threads },
            _ => Lane { thread, threads },
        };
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let access = execute::Access::Shared {
            state: &state,
            lane,
            table: placed.table,
        };
        self.execute(access, placed.command, metrics)
    }
}

/// A command as `cbase` or `classes` hands it to a worker.
pub(crate) struct Placed<'a> {
    pub(crate) command: &'a psmr_core::proto::Command,
    pub(crate) placement: Placement,
    /// Runs with the whole state.
    pub(crate) alone: bool,
    /// Answered `Stale` at once (see [`intake`]).
    pub(crate) stale: bool,
    /// The table of executed requests it is recorded in.
    pub(crate) table: usize,
}

#[derive(Clone)]
pub(crate) enum Input {
    Deliver {
        ring: RingId,
        instance: Instance,
        value: Value,
    },
}

/// How delivered instances reach the workers.
enum Front<S: ConflictModel> {
    /// smr, psmr, opt-psmr: one slot per worker, merged by the worker.
    Rings(Slots),
    /// cbase and classes: `g_all` alone, ordered here, then handed to the
    /// parallelizer or the scheduler.
    Single {
        merger: Mutex<SingleMerge>,
        stage: Stage<S>,
    },
}

/// The merge of `g_all` of a single-ring engine, and the last checkpoint
/// marker it passed.
struct SingleMerge {
    merger: Merger,
    last_marker: u64,
}

enum Stage<S: ConflictModel> {
    Cbase(Arc<cbase::Parallelizer<S>>),
    Classes(Mutex<classes::Scheduler<S>>),
}

/// Inputs queued for the workers beyond which [`Engine::behind`] says so:
/// enough to keep every worker busy for a while, little memory.
const BEHIND: usize = 1024;

/// An engine: its workers, their inputs, the shared state.
pub struct Engine<S: ConflictModel> {
    shared: Arc<Shared<S>>,
    front: Front<S>,
    workers: Vec<JoinHandle<ExecMetrics>>,
}

/// What a finished engine leaves.
pub struct Finished<T> {
    /// The final service state.
    pub state: T,
    /// Per-worker counters.
    pub metrics: Vec<ExecMetrics>,
    /// `classes`: the changes of the number of active threads, in order.
    pub reconfigurations: Vec<classes::Reconfiguration>,
}

impl<S: ConflictModel> Engine<S> {
    /// Starts the workers.
    pub fn start(
        service: Arc<S>,
        state: S::State,
        config: EngineConfig,
        sink: Arc<dyn ReplySink>,
    ) -> Result<Engine<S>, EngineError> {
        Engine::start_with(service, Start::Fresh(state), config, sink, None)
    }

    /// Starts the workers from `start`; completed checkpoints go to
    /// `checkpoints` (none are taken without).
    pub fn start_with(
        service: Arc<S>,
        start: Start<S::State>,
        config: EngineConfig,
        sink: Arc<dyn ReplySink>,
        checkpoints: Option<std::sync::mpsc::Sender<Captured<S::Image>>>,
    ) -> Result<Engine<S>, EngineError> {
        let mut engine = Engine::build(service, start, config, sink, checkpoints)?;
        engine.spawn()?;
        Ok(engine)
    }

    /// An engine whose workers do not run yet: deliveries queue up until
    /// [`Engine::spawn`] (benchmarks measure execution alone this way).
    pub fn new(
        service: Arc<S>,
        state: S::State,
        config: EngineConfig,
        sink: Arc<dyn ReplySink>,
    ) -> Result<Engine<S>, EngineError> {
        Engine::build(service, Start::Fresh(state), config, sink, None)
    }

    fn build(
        service: Arc<S>,
        start: Start<S::State>,
        config: EngineConfig,
        sink: Arc<dyn ReplySink>,
        checkpoints: Option<std::sync::mpsc::Sender<Captured<S::Image>>>,
    ) -> Result<Engine<S>, EngineError> {
        config.validate()?;
        let threads = config.threads();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let merges = if merges_per_worker(config.kind) {
            threads
        } else {
            1
        };
        let (state, resume) = match start {
            Start::Fresh(state) => (EngineState::new(state, threads), None),
            Start::Resume(Resume { mut engine, state }) => {
                if engine.merges.len() != merges {
                    return Err(EngineError::Resume {
                        number: engine.number,
                        problem: format!(
                            "it has {} merges, this engine {merges}",
                            engine.merges.len()
                        ),
                    });
                }
                let tables = std::mem::take(&mut engine.tables);
                (EngineState::resumed(state, threads, tables), Some(engine))
            }
        };
        let shared = Arc::new(Shared {
            service,
            state: RwLock::new(state),
            rendezvous: Rendezvous::new(threads, config.wait.patience(threads, cores)),
            sink,
            config,
            checkpoints: Mutex::new(Assembly::new(merges, checkpoints)),
        });
        let front = Front::build(&shared, resume.as_ref())?;
        Ok(Engine {
            shared,
            front,
            workers: Vec::new(),
        })
    }

    /// Starts the worker threads (once).
    pub fn spawn(&mut self) -> Result<(), EngineError> {
        if !self.workers.is_empty() {
            return Ok(());
        }
        for thread in 0..self.shared.config.threads() {
            let shared = self.shared.clone();
            let body: Box<dyn FnOnce() -> ExecMetrics + Send> = match &mut self.front {
                Front::Rings(slots) => {
                    let slot = slots.0[thread].clone();
                    Box::new(move || worker::run(&shared, &slot))
                }
                Front::Single { stage, .. } => match stage {
                    Stage::Cbase(parallelizer) => {
                        let parallelizer = parallelizer.clone();
                        Box::new(move || cbase::run(&shared, &parallelizer, thread))
                    }
                    Stage::Classes(scheduler) => {
                        let queue = lock(scheduler).take_queue(thread);
                        Box::new(move || classes::run(&shared, thread, queue))
                    }
                },
            };
            let handle = std::thread::Builder::new()
                .name(format!("psmr-worker-{thread}"))
                .spawn(body)
                .map_err(|source| EngineError::Spawn { thread, source })?;
            self.workers.push(handle);
        }
        Ok(())
    }

    /// Hands a delivered instance to the workers that merge its ring.
    pub fn deliver(
        &self,
        ring: RingId,
        instance: Instance,
        value: Value,
    ) -> Result<(), EngineError> {
        match &self.front {
            Front::Rings(slots) => self.deliver_to_rings(&slots.0, ring, instance, value),
            Front::Single { merger, stage } => {
                let mut merge = lock(merger);
                merge
                    .merger
                    .push(ring, instance, value)
                    .map_err(|_| EngineError::UnknownRing { ring })?;
                while let Some(batch) = merge.merger.poll() {
                    let Some(number) = checkpoint::new_marker(&batch.commands, merge.last_marker)
                    else {
                        stage.deliver(&batch.commands)?;
                        continue;
                    };
                    // The cut is the end of the instance: its markers go
                    // last, after the front has recorded where it stands.
                    merge.last_marker = number;
                    let commands = checkpoint::markers_last(&batch.commands);
                    let split = commands
                        .iter()
                        .position(|c| Marker::decode(&c.payload).is_some())
                        .unwrap_or(commands.len());
                    stage.deliver(&commands[..split])?;
                    let front = stage.cut();
                    lock(&self.shared.checkpoints).cut(number, 0, merge.merger.cut(), Some(front));
                    stage.deliver(&commands[split..])?;
                }
                Ok(())
            }
        }
    }

    fn deliver_to_rings(
        &self,
        slots: &[Arc<worker::Slot>],
        ring: RingId,
        instance: Instance,
        value: Value,
    ) -> Result<(), EngineError> {
        let config = &self.shared.config;
        let input = Input::Deliver {
            ring,
            instance,
            value,
        };
        if ring == config.all_ring {
            return self.deliver_to_all(slots, &input);
        }
        let thread = config
            .thread_rings
            .iter()
            .position(|&r| r == ring)
            .ok_or(EngineError::UnknownRing { ring })?;
        slots[thread].deliver(&self.shared, input)
    }

    /// A `g_all` instance goes to every worker. A worker run here that stops
    /// at this synchronization, unreleased, is tried again once every worker
    /// has it: the last one to arrive may have executed and released it
    /// meanwhile, which saves waking the first one's thread.
    fn deliver_to_all(
        &self,
        slots: &[Arc<worker::Slot>],
        input: &Input,
    ) -> Result<(), EngineError> {
        let mut handed_back = Vec::new();
        for slot in slots {
            match slot.offer(&self.shared, input.clone()) {
                Ok(worker::Offer::HandedBack) => handed_back.push(slot),
                Ok(worker::Offer::Settled) => {}
                Err(e) => {
                    // Their threads take what was handed back.
                    handed_back.iter().for_each(|s| s.wake());
                    return Err(e);
                }
            }
        }
        let mut outcome = Ok(());
        for slot in handed_back {
            outcome = outcome.and(slot.retry(&self.shared));
        }
        outcome
    }

    /// Calls `ring(r, backlog)` for every ring the workers consume, with
    /// whether its consumers have a backlog: more than 1,024 inputs
    /// (instances for the merging engines, batches for classes,
    /// commands beyond the graph's window for cbase) delivered to them and
    /// not yet taken. A worker's own ring, when its queue is long; `g_all`,
    /// when any queue is. A replica catching up holds these rings' recovery
    /// back meanwhile, so that fetching faster than executing does not pile
    /// decisions up in memory, while the other rings (which a worker
    /// waiting at a synchronization may need) go on.
    pub fn behind(&self, mut ring: impl FnMut(RingId, bool)) {
        let config = &self.shared.config;
        let queues = self.queued();
        for (t, &queued) in queues.iter().enumerate() {
            if let Some(&own) = config.thread_rings.get(t).filter(|_| self.merges_rings()) {
                ring(own, queued > BEHIND);
            }
        }
        ring(config.all_ring, queues.iter().any(|&q| q > BEHIND));
    }

    /// The inputs delivered to the workers and not yet taken, as
    /// [`Engine::behind`] counts them: per worker for the merging engines,
    /// one queue for cbase and classes.
    pub fn queued(&self) -> Vec<usize> {
        match &self.front {
            Front::Rings(slots) => slots.0.iter().map(|slot| slot.queued()).collect(),
            Front::Single { stage, .. } => vec![match stage {
                Stage::Cbase(parallelizer) => parallelizer.queued(),
                Stage::Classes(scheduler) => lock(scheduler).queued(),
            }],
        }
    }

    /// Its worker threads.
    pub fn threads(&self) -> usize {
        self.shared.config.threads()
    }

    fn merges_rings(&self) -> bool {
        matches!(self.front, Front::Rings(_))
    }

    /// Waits until every delivered command that can be merged is executed,
    /// stops the workers and returns the state.
    pub fn finish(mut self) -> Result<Finished<S::State>, EngineError> {
        self.spawn()?;
        let mut reconfigurations = Vec::new();
        match self.front {
            Front::Rings(slots) => drop(slots),
            Front::Single { stage, .. } => match stage {
                Stage::Cbase(parallelizer) => parallelizer.close(),
                Stage::Classes(scheduler) => {
                    let scheduler = scheduler.into_inner().unwrap_or_else(|e| e.into_inner());
                    reconfigurations = scheduler.history().to_vec();
                }
            },
        }
        let mut metrics = Vec::new();
        let mut failure = None;
        for (thread, handle) in self.workers.into_iter().enumerate() {
            match handle.join() {
                Ok(m) => metrics.push(m),
                Err(panic) => {
                    let message = panic_message(&panic);
                    failure.get_or_insert(EngineError::WorkerPanicked { thread, message });
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let shared = Arc::try_unwrap(self.shared).map_err(|_| EngineError::Stopped)?;
        let state = shared
            .state
            .into_inner()
            .map_err(|_| EngineError::Stopped)?;
        Ok(Finished {
            state: state.service,
            metrics,
            reconfigurations,
        })
    }
}

impl<S: ConflictModel> Front<S> {
    /// The front of a new engine, or of one resumed from `resume`.
    fn build(
        shared: &Arc<Shared<S>>,
        resume: Option<&EngineImage>,
    ) -> Result<Front<S>, EngineError> {
        let config = &shared.config;
        let number = resume.map_or(0, |r| r.number);
        if merges_per_worker(config.kind) {
            let mut slots = Vec::with_capacity(config.threads());
            for t in 0..config.threads() {
                let mut rings = vec![config.all_ring];
                rings.extend(config.thread_rings.get(t).copied());
                let merger = merger_of(config, resume, t, &rings)?;
                slots.push(Arc::new(worker::Slot::new(shared, t, merger, number)));
            }
            return Ok(Front::Rings(Slots(slots)));
        }
        let merger = merger_of(config, resume, 0, &[config.all_ring])?;
        let intake = resume.map(|r| intake::Intake::from_image(&r.intake));
        let stage = if config.kind == EngineKind::Cbase {
            Stage::Cbase(Arc::new(cbase::Parallelizer::new(shared, intake)))
        } else {
            let active = resume.and_then(|r| r.active);
            Stage::Classes(Mutex::new(classes::Scheduler::new(shared, intake, active)?))
        };
        Ok(Front::Single {
            merger: Mutex::new(SingleMerge {
                merger,
                last_marker: number,
            }),
            stage,
        })
    }
}

/// smr, psmr and opt-psmr: each worker merges its rings itself; cbase and
/// classes merge `g_all` once, in front of their workers.
fn merges_per_worker(kind: EngineKind) -> bool {
    matches!(
        kind,
        EngineKind::Smr | EngineKind::Psmr | EngineKind::OptPsmr
    )
}

/// Merge `merge` of `rings`: new, or resumed from its cut in `resume`.
fn merger_of(
    config: &EngineConfig,
    resume: Option<&EngineImage>,
    merge: usize,
    rings: &[RingId],
) -> Result<Merger, EngineError> {
    let number = resume.map_or(0, |r| r.number);
    let merger = match resume {
        None => Merger::new(rings, config.merge_m),
        Some(r) => Merger::resume(&r.merges[merge], config.merge_m),
    };
    let merger = merger.map_err(|e| EngineError::Resume {
        number,
        problem: e.to_string(),
    })?;
    let mut expected = rings.to_vec();
    expected.sort_unstable();
    if merger.rings() != expected {
        return Err(EngineError::Resume {
            number,
            problem: format!("merge {merge} is of rings {:?}", merger.rings()),
        });
    }
    Ok(merger)
}

impl<S: ConflictModel> Stage<S> {
    fn deliver(&self, commands: &[psmr_core::proto::Command]) -> Result<(), EngineError> {
        match self {
            Stage::Cbase(parallelizer) => parallelizer.insert(commands),
            Stage::Classes(scheduler) => lock(scheduler).deliver(commands),
        }
    }

    /// What the front keeps in a checkpoint besides its merge.
    fn cut(&self) -> checkpoint::FrontCut {
        match self {
            Stage::Cbase(parallelizer) => checkpoint::FrontCut {
                intake: parallelizer.intake_image(),
                active: None,
            },
            Stage::Classes(scheduler) => lock(scheduler).cut(),
        }
    }
}

/// How an engine starts.
pub enum Start<T> {
    /// From this state, at the start of every ring.
    Fresh(T),
    /// From a checkpoint.
    Resume(Resume<T>),
}

/// The workers' slots; dropping them closes their inputs.
struct Slots(Vec<Arc<worker::Slot>>);

impl Drop for Slots {
    fn drop(&mut self) {
        for slot in &self.0 {
            slot.close();
        }
    }
}

/// Locks `mutex`, ignoring poisoning (a panicked worker is reported by `finish`).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
