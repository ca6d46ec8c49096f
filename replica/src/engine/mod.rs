//! The execution engines of DESIGN.md section 5: `smr`, `psmr`, `opt-psmr`.
//!
//! ```text
//!  deliver(ring, instance, value) ──> worker t_i's queue (g_i: t_i only; g_all: every worker)
//!  worker t_i: Merger{g_i, g_all} ──> batch from g_i:   execute in parallel mode (&State)
//!                                 └─> batch from g_all: synchronous mode — t_0 executes (&mut State)
//!                                                        while the others wait at the rendezvous
//!  every reply ──> ReplySink
//! ```
//!
//! The state sits behind a read-write lock. In parallel mode each worker
//! holds a read guard across many commands; at a synchronization every
//! worker drops it before it arrives, so the leader can take the write guard
//! without contention. An engine with one worker holds the write guard for
//! good.
//!
//! `smr` is one worker that merges only `g_all`; `psmr` and `opt-psmr` have K
//! workers; they differ in what the clients send (CC-G or OC-G), and the
//! engine treats a command by its mode and the group that delivered it.

pub(crate) mod execute;
mod worker;

use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use psmr_multicast::proto::{Instance, RingId, Value};
use thiserror::Error;

pub use execute::ExecMetrics;

use crate::rendezvous::{Rendezvous, WaitPolicy};
use crate::service::Service;
use crate::table::ExecutedTable;
use crate::wire::Reply;

/// Which execution model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// One thread, one ring (`g_all`): the sequential baseline.
    Smr,
    /// K threads; clients map with CC-G.
    Psmr,
    /// K threads; clients map with OC-G and optimistic commands are safety-checked.
    OptPsmr,
}

impl EngineKind {
    /// The name used in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Smr => "smr",
            EngineKind::Psmr => "psmr",
            EngineKind::OptPsmr => "opt-psmr",
        }
    }
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
}

impl EngineConfig {
    /// An engine of `kind` with `threads` workers on rings `1..=threads`,
    /// and `g_all` on ring 0 (`smr` ignores `threads`).
    pub fn new(kind: EngineKind, threads: usize) -> EngineConfig {
        let thread_rings = match kind {
            EngineKind::Smr => Vec::new(),
            _ => (1..=threads as u16).map(RingId).collect(),
        };
        EngineConfig {
            kind,
            thread_rings,
            all_ring: RingId(0),
            merge_m: 1,
            batch_sync: true,
            wait: WaitPolicy::Auto,
            jitter: None,
        }
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.thread_rings.len().max(1)
    }

    /// Checks the configuration; the error names the field.
    pub fn validate(&self) -> Result<(), EngineError> {
        let parallel = self.kind != EngineKind::Smr;
        if parallel == self.thread_rings.is_empty() {
            return Err(EngineError::Config {
                field: "thread_rings",
                problem: "smr has no thread rings; psmr and opt-psmr need at least one",
            });
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
}

pub(crate) struct Shared<S: Service> {
    pub(crate) service: Arc<S>,
    pub(crate) state: RwLock<EngineState<S::State>>,
    pub(crate) rendezvous: Rendezvous,
    pub(crate) sink: Arc<dyn ReplySink>,
    pub(crate) config: EngineConfig,
}

pub(crate) enum Input {
    Deliver {
        ring: RingId,
        instance: Instance,
        value: Value,
    },
}

/// An engine: its workers, their input queues, the shared state.
pub struct Engine<S: Service> {
    shared: Arc<Shared<S>>,
    inputs: Vec<mpsc::Sender<Input>>,
    /// Queues not yet handed to a worker (before [`Engine::spawn`]).
    queued: Vec<mpsc::Receiver<Input>>,
    workers: Vec<JoinHandle<ExecMetrics>>,
}

/// What a finished engine leaves.
pub struct Finished<T> {
    /// The final service state.
    pub state: T,
    /// Per-worker counters.
    pub metrics: Vec<ExecMetrics>,
}

impl<S: Service> Engine<S> {
    /// Starts the workers.
    pub fn start(
        service: Arc<S>,
        state: S::State,
        config: EngineConfig,
        sink: Arc<dyn ReplySink>,
    ) -> Result<Engine<S>, EngineError> {
        let mut engine = Engine::new(service, state, config, sink)?;
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
        config.validate()?;
        let threads = config.threads();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shared = Arc::new(Shared {
            service,
            state: RwLock::new(EngineState::new(state, threads)),
            rendezvous: Rendezvous::new(threads, config.wait.patience(threads, cores)),
            sink,
            config,
        });
        let (inputs, queued) = (0..threads).map(|_| mpsc::channel()).unzip();
        Ok(Engine {
            shared,
            inputs,
            queued,
            workers: Vec::new(),
        })
    }

    /// Starts the worker threads (once).
    pub fn spawn(&mut self) -> Result<(), EngineError> {
        for (thread, rx) in std::mem::take(&mut self.queued).into_iter().enumerate() {
            let shared = self.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("psmr-worker-{thread}"))
                .spawn(move || worker::run(&shared, thread, rx))
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
        let config = &self.shared.config;
        let send = |thread: usize, value: Value| {
            let input = Input::Deliver {
                ring,
                instance,
                value,
            };
            self.inputs[thread]
                .send(input)
                .map_err(|_| EngineError::Stopped)
        };
        if ring == config.all_ring {
            for thread in 0..self.inputs.len() {
                send(thread, value.clone())?;
            }
            return Ok(());
        }
        let thread = config
            .thread_rings
            .iter()
            .position(|&r| r == ring)
            .ok_or(EngineError::UnknownRing { ring })?;
        send(thread, value)
    }

    /// Waits until every delivered command that can be merged is executed,
    /// stops the workers and returns the state.
    pub fn finish(mut self) -> Result<Finished<S::State>, EngineError> {
        self.spawn()?;
        drop(self.inputs);
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
        })
    }
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
