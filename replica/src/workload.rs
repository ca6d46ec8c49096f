//! Delivered streams for a workload, and their sequential execution: the
//! reference every engine is compared with (docs/testing.md), and the
//! input of the engine benchmarks.
//!
//! Streams are built in rounds, the way a saturated multicast layer would
//! deliver them: in each round every ring decides one instance, a batch of
//! the round's commands mapped to it or a skip of one. Each round is then
//! executed sequentially, in merge order, with the same per-command code as
//! the engines; a `Retry` answer makes the client send the request again,
//! conservatively, in the next round; and now and then a client resends a
//! request as if its reply had timed out, which the replicas must answer from
//! their table of executed requests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use psmr_core::proto::{Command, CommandId, Instance, Merger, ProposerId, RingId, Value};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;

use crate::engine::execute::{Access, ExecMetrics, Run, execute_command};
use crate::engine::{
    Engine, EngineConfig, EngineError, EngineKind, EngineState, Finished, Policy, ReplySink,
};
use psmr_core::model::ConflictModel;
use psmr_core::service::{Group, GroupMapping, Lane, Service, route};
use psmr_core::wire::{Answerers, ClientId, Mode, Outcome, Reply, Request, RequestId};

/// An operation a client submits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    /// The client.
    pub client: ClientId,
    /// The service's encoding of the operation.
    pub op: Bytes,
}

/// How streams are built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkloadOptions {
    /// New commands per round. Default 64.
    pub round: usize,
    /// Probability that a request is resent, unchanged, in the next round. Default 0.
    pub resend: f64,
    /// Seed of the resend and `to_all` choices.
    pub seed: u64,
    /// Probability that a command its mapping sends to one thread goes to
    /// `g_all`, conservatively, instead: what a client in its sequential
    /// fallback does (psmr-client). Default 0.
    pub to_all: f64,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            round: 64,
            resend: 0.0,
            seed: 0,
            to_all: 0.0,
        }
    }
}

/// The streams of a workload and the outcome of executing them sequentially.
pub struct Streams<T> {
    /// Per ring, its decided instances in order.
    pub rings: BTreeMap<RingId, Vec<(Instance, Value)>>,
    /// The replies of the sequential execution, in execution order.
    pub reference: Vec<Reply>,
    /// The final state of the sequential execution.
    pub state: T,
    /// Counters of the sequential execution.
    pub metrics: ExecMetrics,
}

impl<T> Streams<T> {
    /// Commands in all streams.
    pub fn commands(&self) -> usize {
        self.rings
            .values()
            .flatten()
            .map(|(_, v)| v.commands().len())
            .sum()
    }
}

#[derive(Default)]
struct ClientModel {
    next_request: u64,
    next_seq: u64,
    outstanding: BTreeSet<RequestId>,
}

struct Builder<'a, S: Service, M> {
    service: &'a S,
    mapping: &'a M,
    config: &'a EngineConfig,
    state: EngineState<S::State>,
    merger: Merger,
    clients: FxHashMap<ClientId, ClientModel>,
    rings: BTreeMap<RingId, Vec<(Instance, Value)>>,
    reference: Vec<Reply>,
    metrics: ExecMetrics,
    /// Requests to send in the next round: (client, request, group).
    again: Vec<(ClientId, Request, Group)>,
    rng: ChaCha8Rng,
    resend: f64,
    to_all: f64,
}

/// Builds the streams of `submissions` for an engine configured as `config`,
/// executing them sequentially from `state`.
pub fn build<S, M>(
    service: &S,
    mapping: &M,
    config: &EngineConfig,
    state: S::State,
    submissions: &[Submission],
    options: WorkloadOptions,
) -> Streams<S::State>
where
    S: Service,
    M: GroupMapping<Op = S::Op>,
{
    config.validate().expect("a valid engine configuration");
    let mut all: Vec<RingId> = config.thread_rings.clone();
    all.push(config.all_ring);
    let mut builder = Builder {
        service,
        mapping,
        config,
        state: EngineState::new(state, config.threads()),
        merger: Merger::new(&all, config.merge_m).expect("validated"),
        clients: FxHashMap::default(),
        rings: all.iter().map(|&r| (r, Vec::new())).collect(),
        reference: Vec::new(),
        metrics: ExecMetrics::default(),
        again: Vec::new(),
        rng: ChaCha8Rng::seed_from_u64(options.seed),
        resend: options.resend,
        to_all: options.to_all,
    };
    for chunk in submissions.chunks(options.round.max(1)) {
        builder.round(chunk);
    }
    while !builder.again.is_empty() {
        builder.round(&[]);
    }
    builder.close();
    Streams {
        rings: builder.rings,
        reference: builder.reference,
        state: builder.state.service,
        metrics: builder.metrics,
    }
}

impl<S: Service, M: GroupMapping<Op = S::Op>> Builder<'_, S, M> {
    fn round(&mut self, submissions: &[Submission]) {
        let mut commands: Vec<(Group, Command)> = std::mem::take(&mut self.again)
            .into_iter()
            .map(|(client, request, group)| (group, self.command(client, &request)))
            .collect();
        for submission in submissions {
            let (group, request) = self.request(submission);
            if self.rng.random_bool(self.resend) {
                self.again.push((submission.client, request.clone(), group));
            }
            commands.push((group, self.command(submission.client, &request)));
        }
        self.decide(commands);
    }

    /// The mode and group the client chooses, and the request it sends.
    fn request(&mut self, submission: &Submission) -> (Group, Request) {
        let threads = self.config.threads();
        let op = self.service.decode(&submission.op);
        let (mode, group) = match op {
            Some(_) if self.to_all > 0.0 && self.rng.random_bool(self.to_all) => {
                (Mode::Conservative, Group::All)
            }
            Some(op) => route(self.config.kind, self.mapping, &op, threads)
                .expect("the workload's services keep the mapping contract"),
            None => (Mode::Conservative, Group::All),
        };
        let client = self.clients.entry(submission.client).or_default();
        let id = RequestId(client.next_request);
        client.next_request += 1;
        client.outstanding.insert(id);
        let low_water = *client.outstanding.first().expect("just inserted");
        let request = Request {
            id,
            low_water,
            mode,
            service: self.service.id(),
            op: submission.op.clone(),
            answerers: Answerers::All,
        };
        (group, request)
    }

    fn command(&mut self, client: ClientId, request: &Request) -> Command {
        let model = self.clients.entry(client).or_default();
        let seq = model.next_seq;
        model.next_seq += 1;
        Command {
            id: CommandId {
                proposer: ProposerId(client.0),
                seq,
            },
            low_water: 0,
            payload: request.encode(),
        }
    }

    fn ring(&self, group: Group) -> RingId {
        match group {
            Group::All => self.config.all_ring,
            Group::Thread(i) => self.config.thread_rings[i % self.config.thread_rings.len().max(1)],
        }
    }

    /// Every ring decides one instance of the round; then it is executed.
    fn decide(&mut self, commands: Vec<(Group, Command)>) {
        let mut batches: BTreeMap<RingId, Vec<Command>> = BTreeMap::new();
        for (group, command) in commands {
            batches.entry(self.ring(group)).or_default().push(command);
        }
        let rings: Vec<RingId> = self.rings.keys().copied().collect();
        for ring in rings {
            let value = match batches.remove(&ring) {
                Some(batch) => Value::batch(batch),
                None => Value::Skip(1),
            };
            self.append(ring, value);
        }
        self.execute();
    }

    fn append(&mut self, ring: RingId, value: Value) {
        let stream = self.rings.get_mut(&ring).expect("known ring");
        let instance = stream.len() as Instance;
        stream.push((instance, value.clone()));
        self.merger
            .push(ring, instance, value)
            .expect("merged ring");
    }

    /// Executes what the merge releases, in order, and plays the clients'
    /// part: answered requests leave the outstanding set, retries go out again.
    fn execute(&mut self) {
        while let Some(batch) = self.merger.poll() {
            let lane = self
                .config
                .thread_rings
                .iter()
                .position(|&r| r == batch.ring)
                .map(|thread| Lane {
                    thread,
                    threads: self.config.threads(),
                });
            for command in batch.commands.iter() {
                let access = Access::Exclusive {
                    state: &mut self.state,
                    lane,
                };
                let reply = execute_command(
                    self.service,
                    access,
                    command,
                    Run::default(),
                    &mut self.metrics,
                );
                self.observe(command, &reply);
                self.reference.push(reply);
            }
        }
    }

    fn observe(&mut self, command: &Command, reply: &Reply) {
        let Some(id) = reply.request else { return };
        let client = self.clients.entry(reply.client).or_default();
        match &reply.outcome {
            Outcome::Retry => {
                let mut request = Request::decode(&command.payload).expect("built here");
                request.mode = Mode::Conservative;
                let op = self.service.decode(&request.op).expect("decoded before");
                let group = self.mapping.conservative(&op, self.config.threads());
                self.again.push((reply.client, request, group));
            }
            Outcome::Done(_) | Outcome::Refused(_) => {
                client.outstanding.remove(&id);
            }
        }
    }

    /// A final skip on every ring, so that every merge can release its last turn.
    fn close(&mut self) {
        let rings: Vec<RingId> = self.rings.keys().copied().collect();
        for ring in rings {
            self.append(ring, Value::Skip(u64::from(self.config.merge_m)));
        }
        self.execute();
    }
}

/// Delivers `streams` to `engine`, interleaving the rings in an order drawn
/// from `seed` (each ring in its own order).
pub fn feed<S: ConflictModel, T>(
    engine: &Engine<S>,
    streams: &Streams<T>,
    seed: u64,
) -> Result<(), EngineError> {
    feed_rings(engine, &streams.rings, seed)
}

/// Delivers every ring's instances of `rings` to `engine`, interleaved as
/// [`feed`] does.
pub fn feed_rings<S: ConflictModel>(
    engine: &Engine<S>,
    rings: &BTreeMap<RingId, Vec<(Instance, Value)>>,
    seed: u64,
) -> Result<(), EngineError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cursors: Vec<(RingId, &[(Instance, Value)])> =
        rings.iter().map(|(&r, s)| (r, s.as_slice())).collect();
    while !cursors.is_empty() {
        let pick = rng.random_range(0..cursors.len());
        let (ring, rest) = &mut cursors[pick];
        let take = rng.random_range(1..=8).min(rest.len());
        for (instance, value) in &rest[..take] {
            engine.deliver(*ring, *instance, value.clone())?;
        }
        *rest = &rest[take..];
        if rest.is_empty() {
            cursors.swap_remove(pick);
        }
    }
    Ok(())
}

/// When [`run`] delivers the streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// All of them before the workers start (to time execution alone).
    Queued,
    /// While the workers run, as a replica's network thread does: batches
    /// for parked workers may run on the feeding thread (inline).
    Live,
}

/// Builds an engine of `config` from `state`, delivers `streams`
/// (interleaved by `feed_seed`) as `how` says, and waits until every
/// command is executed. Returns what the engine left and how long execution
/// took (from the start of the workers to the end of the last one).
pub fn run<S: ConflictModel, T>(
    service: &Arc<S>,
    config: EngineConfig,
    state: S::State,
    streams: &Streams<T>,
    how: Feed,
    feed_seed: u64,
    sink: Arc<dyn ReplySink>,
) -> Result<(Finished<S::State>, Duration), EngineError> {
    let mut engine = Engine::new(service.clone(), state, config, sink)?;
    if how == Feed::Queued {
        feed(&engine, streams, feed_seed)?;
    }
    let start = Instant::now();
    engine.spawn()?;
    if how == Feed::Live {
        feed(&engine, streams, feed_seed)?;
    }
    let finished = engine.finish()?;
    Ok((finished, start.elapsed()))
}

/// A sink that keeps every reply.
#[derive(Default)]
pub struct CollectSink {
    replies: Mutex<Vec<Reply>>,
}

impl CollectSink {
    /// The replies so far.
    pub fn take(&self) -> Vec<Reply> {
        std::mem::take(&mut *self.replies.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ReplySink for CollectSink {
    fn replies(&self, _thread: usize, replies: &mut Vec<Reply>) {
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(replies);
    }
}

/// Replies as a sorted list of (client, request, outcome), to compare two
/// executions whatever the order in which threads replied.
pub fn canonical(replies: &[Reply]) -> Vec<(ClientId, Option<RequestId>, Outcome)> {
    let mut all: Vec<_> = replies
        .iter()
        .map(|r| (r.client, r.request, r.outcome.clone()))
        .collect();
    all.sort();
    all
}

/// A random configuration of an engine of `kind` for the equivalence tests:
/// K in {1, 2, 3, 4, 8}, the merge's M, batch synchronization, the inline
/// budget (never, the default, or always), cbase's window, and for classes
/// the thread bounds and a reconfiguration policy (often one that changes
/// the number of threads at random points).
pub fn draw_config(rng: &mut impl RngExt, kind: EngineKind) -> EngineConfig {
    let threads = [1, 2, 3, 4, 8][rng.random_range(0..5)];
    let mut config = EngineConfig::new(kind, threads);
    config.merge_m = rng.random_range(1..=3);
    config.batch_sync = rng.random_bool(0.5);
    config.inline_budget =
        [Duration::ZERO, config.inline_budget, Duration::from_secs(1)][rng.random_range(0..3)];
    config.window = [1, 4, 64, 256][rng.random_range(0..4)];
    config.min_threads = rng.random_range(1..=threads);
    config.initial_threads = rng.random_range(config.min_threads..=threads);
    config.policy = match rng.random_range(0..4) {
        0 => Policy::Fixed,
        1 => Policy::Paper {
            period: rng.random_range(1..40),
            threshold: 20,
        },
        2 => Policy::Jump {
            period: rng.random_range(1..40),
            low: 5,
            high: 20,
        },
        _ => Policy::Random {
            seed: rng.random(),
            period: rng.random_range(1..30),
        },
    };
    config
}

/// The configuration of another replica running `config`: the same, but a
/// random reconfiguration policy draws its own points from `seed`.
pub fn replica_of(config: &EngineConfig, seed: u64) -> EngineConfig {
    let mut config = config.clone();
    if let Policy::Random { period, .. } = config.policy {
        config.policy = Policy::Random { seed, period };
    }
    config
}

/// The seeds a randomized test runs: `$PREFIX_SEED=S` replays seed S alone,
/// `$PREFIX_SEEDS=N` runs seeds `0..N`, else `0..default`.
pub fn seeds_from_env(prefix: &str, default: u64) -> Vec<u64> {
    let var = |suffix: &str| {
        std::env::var(format!("{prefix}_{suffix}"))
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    };
    if let Some(seed) = var("SEED") {
        return vec![seed];
    }
    (0..var("SEEDS").unwrap_or(default)).collect()
}
