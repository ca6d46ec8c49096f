//! A replica in the simulator: the sans-IO learner feeding a real
//! [`Engine`] (its worker threads, its table of executed requests), whose
//! replies are collected, not sent.
//!
//! ```text
//!  Learner ──deliveries──> Engine::deliver ──(worker threads)──> CollectSink
//!         └──> Expected (the engine's merges, replayed) ──> how many replies to wait for
//! ```
//!
//! The engine runs on threads, so the simulator waits after each delivery
//! until every reply the engine owes for what it has been given has come:
//! the merges are replayed beside it ([`Expected`]), each executable command
//! owes exactly one reply (done, retry or refused), and replies are sorted
//! before they leave. What the engine answers is then a function of what it
//! was delivered, whichever thread ran it, and the run replays by seed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use psmr_core::proto::{Delivery, Instance, Learner, Merger, RingId, Value};
use psmr_core::{ConflictModel, EngineKind, Reply};
use psmr_replica::workload::CollectSink;
use psmr_replica::{Engine, EngineConfig, EngineError};

/// How long (real time) the engine may take to owe nothing before the
/// simulator calls it stalled.
const PATIENCE: Duration = Duration::from_secs(30);

/// Why a replica failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaFault {
    /// The engine refused a delivery or stopped.
    Engine(String),
    /// The engine did not answer what it was given within 30 s (real time).
    Stalled {
        /// Replies owed.
        owed: usize,
        /// Replies given.
        given: usize,
    },
    /// More replies than executable commands.
    Surplus {
        /// Replies owed.
        owed: usize,
        /// Replies given.
        given: usize,
    },
}

/// One simulated replica.
pub(crate) struct SimReplica<S: ConflictModel> {
    pub(crate) learner: Learner,
    engine: Option<Engine<S>>,
    sink: Arc<CollectSink>,
    expected: Expected,
    /// Replies owed so far, and given so far.
    owed: usize,
    given: usize,
}

impl<S: ConflictModel> SimReplica<S> {
    /// A replica of `learner` (subscribed to every ring) running an engine
    /// of `config` on `state`.
    pub(crate) fn new(
        learner: Learner,
        service: Arc<S>,
        state: S::State,
        config: EngineConfig,
    ) -> Result<SimReplica<S>, EngineError> {
        let sink = Arc::new(CollectSink::default());
        let expected = Expected::new(&config);
        let engine = Engine::start(service, state, config, sink.clone())?;
        Ok(SimReplica {
            learner,
            engine: Some(engine),
            sink,
            expected,
            owed: 0,
            given: 0,
        })
    }

    /// Hands the learner's deliveries to the engine and returns the replies
    /// they led to, in a deterministic order.
    pub(crate) fn execute(&mut self) -> Result<Vec<Reply>, ReplicaFault> {
        let engine = self.engine.as_ref().expect("running");
        while let Some(Delivery {
            ring,
            instance,
            value,
        }) = self.learner.poll_delivery()
        {
            self.owed += self.expected.deliver(ring, instance, &value);
            engine
                .deliver(ring, instance, value)
                .map_err(|e| ReplicaFault::Engine(e.to_string()))?;
        }
        self.collect()
    }

    fn collect(&mut self) -> Result<Vec<Reply>, ReplicaFault> {
        let start = Instant::now();
        let mut out = Vec::new();
        loop {
            out.append(&mut self.sink.take());
            let given = self.given + out.len();
            if given > self.owed {
                return Err(ReplicaFault::Surplus {
                    owed: self.owed,
                    given,
                });
            }
            if given == self.owed {
                self.given = given;
                break;
            }
            if start.elapsed() > PATIENCE {
                return Err(ReplicaFault::Stalled {
                    owed: self.owed,
                    given,
                });
            }
            std::thread::yield_now();
        }
        out.sort_by_cached_key(|r| (r.client, r.request, r.encode()));
        Ok(out)
    }

    /// Stops the engine; returns the service's final state.
    pub(crate) fn finish(&mut self) -> Result<S::State, ReplicaFault> {
        let engine = self.engine.take().expect("running");
        engine
            .finish()
            .map(|f| f.state)
            .map_err(|e| ReplicaFault::Engine(e.to_string()))
    }
}

/// The engine's merges, replayed: which delivered commands can execute.
///
/// smr, psmr, opt-psmr: worker `t` merges `g_all` and its own ring, runs
/// what comes out in order, and stops at each `g_all` batch until every
/// worker has reached it (then it runs once). cbase and classes: one merge
/// of `g_all`, every command of which runs.
struct Expected {
    mergers: Vec<Merger>,
    /// Per worker, merged batches not yet counted: (of `g_all`, commands).
    waiting: Vec<VecDeque<(bool, usize)>>,
    all_ring: RingId,
}

impl Expected {
    fn new(config: &EngineConfig) -> Expected {
        let per_worker = matches!(
            config.kind,
            EngineKind::Smr | EngineKind::Psmr | EngineKind::OptPsmr
        );
        let merges = if per_worker { config.threads() } else { 1 };
        let mergers = (0..merges)
            .map(|t| {
                let mut rings = vec![config.all_ring];
                rings.extend(config.thread_rings.get(t).copied().filter(|_| per_worker));
                Merger::new(&rings, config.merge_m).expect("the engine's own rings")
            })
            .collect();
        Expected {
            mergers,
            waiting: vec![VecDeque::new(); merges],
            all_ring: config.all_ring,
        }
    }

    /// Takes one delivered instance; returns how many more replies the
    /// engine owes.
    fn deliver(&mut self, ring: RingId, instance: Instance, value: &Value) -> usize {
        for (merger, waiting) in self.mergers.iter_mut().zip(&mut self.waiting) {
            if !merger.rings().contains(&ring) {
                continue;
            }
            // A ring this merge does not know is the engine's to refuse.
            if merger.push(ring, instance, value.clone()).is_err() {
                continue;
            }
            while let Some(batch) = merger.poll() {
                waiting.push_back((batch.ring == self.all_ring, batch.commands.len()));
            }
        }
        self.release()
    }

    fn release(&mut self) -> usize {
        let mut owed = 0;
        loop {
            for waiting in &mut self.waiting {
                while let Some(&(false, n)) = waiting.front() {
                    owed += n;
                    waiting.pop_front();
                }
            }
            let all_there = self
                .waiting
                .iter()
                .all(|w| matches!(w.front(), Some(&(true, _))));
            if !all_there {
                return owed;
            }
            let mut batch = 0;
            for waiting in &mut self.waiting {
                batch = waiting.pop_front().map_or(0, |(_, n)| n);
            }
            owed += batch;
        }
    }
}
