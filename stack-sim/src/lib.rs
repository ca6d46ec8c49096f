//! A deterministic simulator of the whole psmr stack (docs/testing.md,
//! "The whole-stack simulator").
//!
//! The multicast simulator (`psmr-sim`) checks the ordering layer alone.
//! This one runs what a client observes end to end: the acceptors'
//! sans-IO cores on simulated disks, replicas whose learners feed the real
//! engines (worker threads, the table of executed requests, the opt-PSMR
//! safety check), and the SDK's sans-IO [`Session`]s (request ids,
//! proposals, resends, `Retry` answers re-proposed conservatively,
//! re-proposals and failovers after silence, the sequential fallback,
//! greetings), all on one virtual clock that each node reads through its
//! own skewed, drifting [`Clock`]:
//!
//! ```text
//!  sessions ──Propose──> acceptors ──Accept/Decide──> learners ──> engines
//!     ^                                                              │
//!     └────────────────────── Reply (if greeted and asked) ──────────┘
//!  network: delay, reordering, loss, duplication; faults: acceptor crashes
//!  (a minority, durable disks), replica pauses, nodes isolated, links cut
//!  one way; then healing, every call answered, every key read through each
//!  replica alone, and the client-visible history checked for linearizability
//! ```
//!
//! One seed draws the [`Scenario`] and every random choice; [`run`] with it
//! replays the run (the engines' threads answer exactly what they were
//! delivered before the simulator goes on, see `replica`).

mod clock;
mod replica;
mod scenario;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use psmr_btree::{BTreeService, KvStore, Op, Response, value_id, value_of};
use psmr_client::linearizability::{KeyValue, KvOp, Operation, Verdict, check};
use psmr_client::session::{Session, Transmit};
use psmr_client::{ClientError, ClientStats};
use psmr_core::persist::Persister;
use psmr_core::proto::{Learner, Message, NodeId};
use psmr_core::{ClientId, EngineKind, Reply, Service};
use psmr_sim::{Agenda, Due, SimDisk};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use clock::Clock;
pub use replica::ReplicaFault;
pub use scenario::{Fault, FaultAt, Network, Scenario, StackOptions};

use replica::SimReplica;

/// What a run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The engine.
    pub engine: EngineKind,
    /// Calls answered (the final reads included).
    pub ok: usize,
    /// Calls whose outcome is unknown (they timed out).
    pub unknown: usize,
    /// Mean virtual time from call to answer.
    pub mean_call: Duration,
    /// The longest a call waited.
    pub slowest_call: Duration,
    /// `Retry` answers re-proposed conservatively.
    pub retries: u64,
    /// Requests proposed again after `repropose_after` of silence.
    pub reproposals: u64,
    /// Requests proposed again when their answerer fell silent.
    pub failovers: u64,
    /// Commands the sequential fallback sent to `g_all`.
    pub sequential: u64,
    /// opt-psmr commands sent conservatively by adaptive optimism.
    pub cautious: u64,
    /// Messages sent, lost, duplicated.
    pub messages: u64,
    /// Messages lost (network loss, cuts, crashed receivers).
    pub lost: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Faults injected.
    pub faults: usize,
    /// Virtual time at the end.
    pub finished_at: Duration,
    /// Hash of every answer, in order: equal for two runs of one seed.
    pub trace: u64,
}

/// What went wrong in a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Violation {
    /// The client-visible history has no linearization.
    NotLinearizable(String),
    /// The checker ran out of time.
    Undecided(String),
    /// The replicas' final states differ.
    Diverged {
        /// Each replica's digest.
        digests: Vec<(NodeId, u64)>,
    },
    /// Calls still unanswered long after healing.
    Stalled {
        /// Calls in flight.
        pending: usize,
    },
    /// A call failed with an error a correct cluster does not give.
    ClientError(String),
    /// A replica's engine failed.
    Replica(NodeId, ReplicaFault),
    /// An acceptor saw two values decided for one instance.
    AcceptorConflict(NodeId),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable(why) => write!(f, "not linearizable: {why}"),
            Violation::Undecided(why) => write!(f, "the checker ran out of time: {why}"),
            Violation::Diverged { digests } => write!(f, "replicas diverged: {digests:?}"),
            Violation::Stalled { pending } => {
                write!(f, "{pending} calls unanswered long after healing")
            }
            Violation::ClientError(e) => write!(f, "a call failed: {e}"),
            Violation::Replica(id, fault) => write!(f, "replica {id}: {fault:?}"),
            Violation::AcceptorConflict(id) => write!(f, "acceptor {id}: conflicting decisions"),
        }
    }
}

/// A run that broke a property.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed: [`run`] with it and the same options replays the run.
    pub seed: u64,
    /// The options.
    pub options: StackOptions,
    /// What went wrong.
    pub violation: Violation,
    /// Virtual time.
    pub at: Duration,
    /// The scenario, summarized.
    pub scenario: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} engine={} at {:?}: {} [{}] (replay: PSMR_STACK_SEED={} PSMR_STACK_ENGINE={}{} cargo test -p psmr-stack-sim --test stack replay -- --nocapture)",
            self.seed,
            self.options.engine,
            self.at,
            self.violation,
            self.scenario,
            self.seed,
            self.options.engine,
            self.options.replay_flags(),
        )
    }
}

/// Runs the scenario drawn from `seed` and `options`.
pub fn run(seed: u64, options: StackOptions) -> Result<Report, Box<Failure>> {
    let scenario = Scenario::from_seed(seed, options);
    let summary = scenario.summary();
    let mut world = World::new(scenario);
    let outcome = world.run();
    let finished = world.finish_replicas();
    match outcome.and(finished).and_then(|()| world.verdict()) {
        Ok(()) => Ok(world.report()),
        Err(violation) => Err(Box::new(Failure {
            seed,
            options,
            violation,
            at: Duration::from_nanos(world.now),
            scenario: summary,
        })),
    }
}

/// What travels between nodes.
#[derive(Clone, Debug)]
enum Payload {
    Protocol(Message),
    Hello,
    Reply(Bytes),
}

enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        payload: Payload,
    },
    /// Lane `lane` of client `client` makes its next call.
    Call {
        client: usize,
        lane: usize,
    },
    FaultStart(usize),
    FaultEnd(usize),
    Heal,
}

struct AcceptorSlot {
    node: Option<Persister>,
    disk: SimDisk,
    clock: Clock,
}

struct ReplicaSlot {
    replica: SimReplica<BTreeService>,
    clock: Clock,
    /// Clients that greeted it: it answers only those.
    greeted: BTreeSet<NodeId>,
}

/// A client: a session and its lanes of calls, one call in flight each.
struct ClientSlot {
    id: NodeId,
    session: Session<BTreeService, usize>,
    stats: Arc<ClientStats>,
    clock: Clock,
    /// A final reader takes replies from this replica only.
    only_from: Option<NodeId>,
    /// Keys a final reader has still to read.
    to_read: Vec<u64>,
}

/// A call of the history and the lane that made it.
struct Made {
    op: Operation<KvOp, Option<u64>>,
    client: usize,
    lane: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Acceptor(NodeId),
    Replica(NodeId),
    Client(usize),
}

struct World {
    scenario: Scenario,
    rng: ChaCha8Rng,
    base: Instant,
    now: u64,
    agenda: Agenda<Event>,
    acceptors: BTreeMap<NodeId, AcceptorSlot>,
    replicas: BTreeMap<NodeId, ReplicaSlot>,
    clients: Vec<ClientSlot>,
    /// Client node ids by wire id, for routing replies.
    by_wire: BTreeMap<ClientId, usize>,
    history: Vec<Made>,
    /// Faults under way (indices into the scenario's faults).
    active: Vec<usize>,
    held: Vec<(NodeId, NodeId, Payload)>,
    healed: bool,
    healed_at: u64,
    readers_started: bool,
    errors: Vec<String>,
    states: Vec<(NodeId, u64)>,
    messages: u64,
    lost: u64,
    duplicated: u64,
    trace: u64,
}

/// The virtual nanoseconds of `d`.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How long after healing every call must be answered.
const LIVENESS: Duration = Duration::from_secs(60);

/// Node ids of the final readers: one per replica, from this on.
const READERS: u32 = 2_001;

impl World {
    fn new(scenario: Scenario) -> World {
        let base = Instant::now();
        let cluster = &scenario.cluster;
        let multicast = cluster.multicast();
        let acceptors = cluster
            .acceptors
            .iter()
            .map(|a| {
                let id = NodeId(a.id);
                let disk = SimDisk::new(psmr_sim::DiskMode::Durable, false);
                let clock = scenario.clocks[&id];
                let node = Persister::open(id, &multicast, disk.storage(), clock.local(base, 0))
                    .expect("a valid scenario");
                let slot = AcceptorSlot {
                    node: Some(node),
                    disk,
                    clock,
                };
                (id, slot)
            })
            .collect();
        let replicas = cluster
            .replicas
            .iter()
            .map(|r| {
                let id = NodeId(r.id);
                (id, Self::replica(&scenario, id, base))
            })
            .collect();
        let mut world = World {
            rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x57ac_c0de_5eed_0001),
            scenario,
            base,
            now: 0,
            agenda: Agenda::default(),
            acceptors,
            replicas,
            clients: Vec::new(),
            by_wire: BTreeMap::new(),
            history: Vec::new(),
            active: Vec::new(),
            held: Vec::new(),
            healed: false,
            healed_at: 0,
            readers_started: false,
            errors: Vec::new(),
            states: Vec::new(),
            messages: 0,
            lost: 0,
            duplicated: 0,
            trace: 0xcbf2_9ce4_8422_2325,
        };
        for i in 0..world.scenario.clients {
            world.add_client(NodeId(1_001 + i as u32), None);
        }
        world
    }

    fn replica(scenario: &Scenario, id: NodeId, base: Instant) -> ReplicaSlot {
        let multicast = scenario.cluster.multicast();
        let rings: Vec<_> = multicast.rings.iter().map(|r| r.id).collect();
        let clock = scenario.clocks[&id];
        let learner =
            Learner::new(id, &multicast, &rings, clock.local(base, 0)).expect("a valid learner");
        let service = Arc::new(BTreeService::new(scenario.keys));
        let state = KvStore::new(scenario.fanout);
        let replica = SimReplica::new(learner, service, state, scenario.engine_config())
            .expect("a valid engine");
        ReplicaSlot {
            replica,
            clock,
            greeted: BTreeSet::new(),
        }
    }

    /// A client session; `only_from`: a final reader of that replica.
    fn add_client(&mut self, id: NodeId, only_from: Option<NodeId>) -> usize {
        let index = self.clients.len();
        let clock = self.scenario.clocks.get(&id).copied().unwrap_or(Clock {
            offset: Duration::ZERO,
            ppm: 0,
        });
        let stats = Arc::new(ClientStats::default());
        let replicas: Vec<NodeId> = self.replicas.keys().copied().collect();
        let answerer = match only_from {
            Some(r) => replicas.iter().position(|&x| x == r).unwrap_or(0),
            None => index % replicas.len(),
        };
        let wire = ClientId(u64::from(id.0));
        let session = Session::new(
            clock.local(self.base, self.now),
            &self.scenario.cluster,
            BTreeService::new(self.scenario.keys),
            self.scenario.client_options(),
            wire,
            stats.clone(),
            answerer,
        );
        self.by_wire.insert(wire, index);
        self.clients.push(ClientSlot {
            id,
            session,
            stats,
            clock,
            only_from,
            to_read: Vec::new(),
        });
        self.drain_client(index);
        index
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.agenda.schedule(at, event);
    }

    fn run(&mut self) -> Result<(), Violation> {
        self.plan();
        let mut deadline = u64::MAX;
        while let Some(at) = self.step()? {
            if self.healed {
                deadline = deadline.min(self.healed_at + nanos(LIVENESS));
            }
            if at > deadline {
                let pending = self
                    .history
                    .iter()
                    .filter(|m| m.op.result.is_none())
                    .count();
                return Err(Violation::Stalled { pending });
            }
            if self.healed && self.load_done() {
                if !self.readers_started {
                    self.start_readers();
                } else if self.clients.iter().all(|c| c.to_read.is_empty())
                    && self.unanswered() == 0
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn plan(&mut self) {
        for client in 0..self.scenario.clients {
            for lane in 0..self.scenario.lanes {
                let at = self.rng.random_range(0..5_000_000);
                self.schedule(at, Event::Call { client, lane });
            }
        }
        for (i, fault) in self.scenario.faults.clone().iter().enumerate() {
            self.schedule(nanos(fault.at), Event::FaultStart(i));
            self.schedule(nanos(fault.at + fault.duration), Event::FaultEnd(i));
        }
        self.schedule(nanos(self.scenario.heal_at()), Event::Heal);
    }

    /// Calls made by the load (not the final reads) still unanswered.
    fn unanswered(&self) -> usize {
        self.clients
            .iter()
            .map(|c| c.session.in_flight())
            .sum::<usize>()
    }

    fn load_done(&self) -> bool {
        self.now >= nanos(self.scenario.load) && self.unanswered() == 0
    }

    /// Every key read through each replica alone, by a reader that takes
    /// replies from that replica only.
    fn start_readers(&mut self) {
        self.readers_started = true;
        let replicas: Vec<NodeId> = self.replicas.keys().copied().collect();
        for (i, replica) in replicas.into_iter().enumerate() {
            let index = self.add_client(NodeId(READERS + i as u32), Some(replica));
            self.clients[index].to_read = (0..self.scenario.keys).rev().collect();
            self.read_next(index);
        }
    }

    fn read_next(&mut self, index: usize) {
        if let Some(key) = self.clients[index].to_read.pop() {
            self.call(index, 0, KvOp::Get(key));
        }
    }

    /// Runs the earliest timer or event; returns its time, `None` when idle.
    fn step(&mut self) -> Result<Option<u64>, Violation> {
        let timer = self.earliest_timer();
        match self.agenda.next_with(timer) {
            None => return Ok(None),
            Some(Due::Timer(at, who)) => {
                self.now = self.now.max(at);
                self.fire(who)?;
            }
            Some(Due::Event(at, event)) => {
                self.now = self.now.max(at);
                self.handle(event)?;
            }
        }
        Ok(Some(self.now))
    }

    fn earliest_timer(&self) -> Option<(u64, Who)> {
        let base = self.base;
        let acceptors = self.acceptors.iter().filter_map(|(&id, s)| {
            let at = s.node.as_ref()?.poll_timeout()?;
            Some((s.clock.virtual_of(base, at), Who::Acceptor(id)))
        });
        let replicas = self.replicas.iter().filter_map(|(&id, s)| {
            let at = s.replica.learner.poll_timeout()?;
            Some((s.clock.virtual_of(base, at), Who::Replica(id)))
        });
        let clients = self.clients.iter().enumerate().map(|(i, c)| {
            let at = c.session.poll_timeout();
            (c.clock.virtual_of(base, at), Who::Client(i))
        });
        acceptors
            .chain(replicas)
            .chain(clients)
            .filter(|&(_, who)| !self.is_paused(self.node_of(who)))
            .min_by_key(|&(at, _)| at)
    }

    fn node_of(&self, who: Who) -> NodeId {
        match who {
            Who::Acceptor(id) | Who::Replica(id) => id,
            Who::Client(i) => self.clients[i].id,
        }
    }

    fn fire(&mut self, who: Who) -> Result<(), Violation> {
        match who {
            Who::Acceptor(id) => {
                let slot = self.acceptors.get_mut(&id).expect("an acceptor");
                let now = slot.clock.local(self.base, self.now);
                if let Some(node) = slot.node.as_mut() {
                    node.handle_timeout(now);
                }
                self.drain_acceptor(id)
            }
            Who::Replica(id) => {
                let slot = self.replicas.get_mut(&id).expect("a replica");
                let now = slot.clock.local(self.base, self.now);
                slot.replica.learner.handle_timeout(now);
                self.drain_replica(id)
            }
            Who::Client(i) => {
                let slot = &mut self.clients[i];
                let now = slot.clock.local(self.base, self.now);
                slot.session.handle_timeout(now);
                self.drain_client(i);
                Ok(())
            }
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Deliver { from, to, payload } => self.deliver(from, to, payload),
            Event::Call { client, lane } => {
                if self.now < nanos(self.scenario.load) {
                    let op = self
                        .scenario
                        .draw_op(&mut self.rng, self.history.len() as u64);
                    self.call(client, lane, op);
                }
                Ok(())
            }
            Event::FaultStart(i) => self.fault_start(i),
            Event::FaultEnd(i) => self.fault_end(i),
            Event::Heal => self.heal(),
        }
    }

    fn call(&mut self, client: usize, lane: usize, op: KvOp) {
        let token = self.history.len();
        let slot = &mut self.clients[client];
        self.history.push(Made {
            op: Operation {
                client: u64::from(slot.id.0),
                input: op,
                call: self.now,
                result: None,
            },
            client,
            lane,
        });
        let now = slot.clock.local(self.base, self.now);
        slot.session
            .call(now, to_tree(op, self.scenario.value_size), token);
        self.drain_client(client);
    }

    fn fault_start(&mut self, i: usize) -> Result<(), Violation> {
        if self.healed {
            return Ok(());
        }
        if let Fault::Crash(id) = self.scenario.faults[i].kind {
            if !self.may_crash(id) {
                return Ok(());
            }
            let slot = self.acceptors.get_mut(&id).expect("an acceptor");
            slot.node = None;
            slot.disk.crash();
        }
        self.active.push(i);
        Ok(())
    }

    fn fault_end(&mut self, i: usize) -> Result<(), Violation> {
        if !self.active.contains(&i) {
            return Ok(());
        }
        self.active.retain(|&a| a != i);
        if let Fault::Crash(id) = self.scenario.faults[i].kind {
            self.restart(id)?;
        }
        self.release_held()
    }

    /// Whether crashing `id` leaves a majority of acceptors up.
    fn may_crash(&self, id: NodeId) -> bool {
        let down = self.acceptors.values().filter(|s| s.node.is_none()).count();
        let f = (self.acceptors.len() - 1) / 2;
        self.acceptors[&id].node.is_some() && down < f
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        let multicast = self.scenario.cluster.multicast();
        let slot = self.acceptors.get_mut(&id).expect("an acceptor");
        if slot.node.is_none() {
            let now = slot.clock.local(self.base, self.now);
            let node = Persister::open(id, &multicast, slot.disk.storage(), now)
                .expect("recovery from a durable disk");
            slot.node = Some(node);
        }
        self.drain_acceptor(id)
    }

    fn heal(&mut self) -> Result<(), Violation> {
        self.healed = true;
        self.healed_at = self.now;
        self.active.clear();
        let ids: Vec<NodeId> = self.acceptors.keys().copied().collect();
        for id in ids {
            self.restart(id)?;
        }
        self.release_held()
    }

    fn is_paused(&self, node: NodeId) -> bool {
        self.active
            .iter()
            .any(|&i| self.scenario.faults[i].kind == Fault::Pause(node))
    }

    /// Whether the active faults drop a message from `from` to `to`.
    fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.active
            .iter()
            .any(|&i| match self.scenario.faults[i].kind {
                Fault::Isolate(node) => node == from || node == to,
                Fault::OneWay { from: f, to: t } => f == from && t == to,
                Fault::Crash(_) | Fault::Pause(_) => false,
            })
    }

    fn release_held(&mut self) -> Result<(), Violation> {
        for (from, to, payload) in std::mem::take(&mut self.held) {
            self.deliver(from, to, payload)?;
        }
        Ok(())
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, payload: Payload) -> Result<(), Violation> {
        if self.is_cut(from, to) {
            self.lost += 1;
            return Ok(());
        }
        if self.is_paused(to) {
            self.held.push((from, to, payload));
            return Ok(());
        }
        if let Some(slot) = self.acceptors.get_mut(&to) {
            let now = slot.clock.local(self.base, self.now);
            match (slot.node.as_mut(), payload) {
                (Some(node), Payload::Protocol(message)) => node.handle_message(now, from, message),
                _ => self.lost += 1,
            }
            return self.drain_acceptor(to);
        }
        if let Some(slot) = self.replicas.get_mut(&to) {
            let now = slot.clock.local(self.base, self.now);
            match payload {
                Payload::Protocol(message) => {
                    slot.replica.learner.handle_message(now, from, message)
                }
                Payload::Hello => {
                    slot.greeted.insert(from);
                }
                Payload::Reply(_) => {}
            }
            return self.drain_replica(to);
        }
        if let Some(index) = self.clients.iter().position(|c| c.id == to) {
            let slot = &mut self.clients[index];
            if let Payload::Reply(body) = payload
                && slot.only_from.is_none_or(|r| r == from)
            {
                let now = slot.clock.local(self.base, self.now);
                slot.session.handle_reply(now, from, &body);
                self.drain_client(index);
            }
        }
        Ok(())
    }

    fn drain_acceptor(&mut self, id: NodeId) -> Result<(), Violation> {
        let mut out = Vec::new();
        if let Some(node) = self.acceptors.get_mut(&id).and_then(|s| s.node.as_mut()) {
            while let Some(t) = node.poll_transmit() {
                out.push(t);
            }
            if node.metrics().conflicting_decisions > 0 {
                return Err(Violation::AcceptorConflict(id));
            }
        }
        for t in out {
            self.send(id, t.to, Payload::Protocol(t.message));
        }
        Ok(())
    }

    fn drain_replica(&mut self, id: NodeId) -> Result<(), Violation> {
        let slot = self.replicas.get_mut(&id).expect("a replica");
        let mut out = Vec::new();
        while let Some(t) = slot.replica.learner.poll_transmit() {
            out.push((t.to, Payload::Protocol(t.message)));
        }
        let replies = slot
            .replica
            .execute()
            .map_err(|fault| Violation::Replica(id, fault))?;
        // As the replica's router does: one message per client of the batch.
        let mut batches: Vec<(NodeId, Vec<Reply>)> = Vec::new();
        for mut reply in replies {
            if !reply.answerers.include(id.0) {
                continue;
            }
            let Some(&client) = self.by_wire.get(&reply.client) else {
                continue;
            };
            let to = self.clients[client].id;
            if !slot.greeted.contains(&to) {
                continue;
            }
            reply.execution_ns = self.scenario.execution_ns;
            match batches.iter_mut().find(|(c, _)| *c == to) {
                Some((_, mine)) => mine.push(reply),
                None => batches.push((to, vec![reply])),
            }
        }
        for (to, mine) in batches {
            out.push((to, Payload::Reply(Reply::encode_all(&mine).into())));
        }
        for (to, payload) in out {
            self.send(id, to, payload);
        }
        Ok(())
    }

    fn drain_client(&mut self, index: usize) {
        let slot = &mut self.clients[index];
        let from = slot.id;
        let mut out = Vec::new();
        while let Some(t) = slot.session.poll_transmit() {
            out.push(match t {
                Transmit::Propose { to, message } => (to, Payload::Protocol(message)),
                Transmit::Hello { to } => (to, Payload::Hello),
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = slot.session.poll_answer() {
            answers.push(answer);
        }
        for (to, payload) in out {
            self.send(from, to, payload);
        }
        for (token, answer) in answers {
            self.answered(token, answer);
        }
    }

    /// The unique write a value came from; a value that is not what some
    /// write sent (wrong length or bytes) is an error of the run.
    fn written(&mut self, token: usize, value: &[u8]) -> u64 {
        let id = value_id(value);
        if value != value_of(id, self.scenario.value_size) {
            let len = value.len();
            self.errors.push(format!(
                "call {token}: a value of {len} bytes no write sent"
            ));
        }
        id
    }

    fn answered(&mut self, token: usize, answer: Result<psmr_client::Answer, ClientError>) {
        let value = match answer {
            Ok(answer) => match Response::decode(&answer.response) {
                Some(Response::Value(value)) => Some(value.map(|v| self.written(token, &v))),
                other => {
                    self.errors
                        .push(format!("call {token}: response {other:?}"));
                    None
                }
            },
            Err(ClientError::Timeout { .. }) => None,
            Err(e) => {
                self.errors.push(format!("call {token}: {e}"));
                None
            }
        };
        let made = &mut self.history[token];
        if let Some(value) = value {
            made.op.result = Some((self.now, value));
        }
        self.trace = mix(mix(self.trace, token as u64), self.now);
        self.trace = mix(self.trace, value.flatten().map_or(u64::MAX, |v| v));
        let (client, lane) = (made.client, made.lane);
        if self.clients[client].only_from.is_some() {
            self.read_next(client);
            return;
        }
        let think = self.rng.random_range(0..=nanos(self.scenario.think));
        self.schedule(self.now + think, Event::Call { client, lane });
    }

    /// The network: loss, duplication, delay and reordering while faulty.
    fn send(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        self.messages += 1;
        let net = self.scenario.network;
        let faulty = !self.healed;
        if faulty && self.rng.random_bool(net.loss) {
            self.lost += 1;
            return;
        }
        let copies = if faulty && self.rng.random_bool(net.duplicate) {
            self.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self
                .rng
                .random_range(nanos(net.min_delay)..=nanos(net.max_delay));
            if faulty && self.rng.random_bool(net.slow) {
                delay += self.rng.random_range(0..=nanos(net.slow_extra));
            }
            let event = Event::Deliver {
                from,
                to,
                payload: payload.clone(),
            };
            self.schedule(self.now + delay, event);
        }
    }

    /// Stops every engine and keeps each replica's digest.
    fn finish_replicas(&mut self) -> Result<(), Violation> {
        let service = BTreeService::new(self.scenario.keys);
        let mut failure = None;
        for (&id, slot) in &mut self.replicas {
            match slot.replica.finish() {
                Ok(state) => self.states.push((id, service.digest(&state))),
                Err(fault) => {
                    failure.get_or_insert(Violation::Replica(id, fault));
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Every replica in the same state, no call failed, and the history
    /// (final reads included) linearizable.
    fn verdict(&self) -> Result<(), Violation> {
        if let Some(e) = self.errors.first() {
            return Err(Violation::ClientError(e.clone()));
        }
        if self.states.windows(2).any(|w| w[0].1 != w[1].1) {
            return Err(Violation::Diverged {
                digests: self.states.clone(),
            });
        }
        let history: Vec<_> = self.history.iter().map(|m| m.op.clone()).collect();
        match check(&KeyValue, &history, Duration::from_secs(60)) {
            Verdict::Linearizable => Ok(()),
            Verdict::Violation(why) => {
                let tail = why.longest.len().saturating_sub(3);
                Err(Violation::NotLinearizable(format!(
                    "key {}: after {} operations placed (the last: {:?}), none of {:?} can follow",
                    why.partition,
                    why.longest.len(),
                    &why.longest[tail..],
                    why.stuck
                )))
            }
            Verdict::Unknown { undecided } => {
                Err(Violation::Undecided(format!("keys {undecided:?}")))
            }
        }
    }

    fn report(&self) -> Report {
        let waits: Vec<u64> = self
            .history
            .iter()
            .filter_map(|m| Some(m.op.result?.0 - m.op.call))
            .collect();
        let mean = waits.iter().sum::<u64>() / (waits.len().max(1) as u64);
        let sum = |f: fn(&ClientStats) -> &std::sync::atomic::AtomicU64| {
            self.clients
                .iter()
                .map(|c| f(&c.stats).load(Ordering::Relaxed))
                .sum()
        };
        Report {
            seed: self.scenario.seed,
            engine: self.scenario.options.engine,
            ok: self
                .history
                .iter()
                .filter(|m| m.op.result.is_some())
                .count(),
            unknown: self
                .history
                .iter()
                .filter(|m| m.op.result.is_none())
                .count(),
            mean_call: Duration::from_nanos(mean),
            slowest_call: Duration::from_nanos(waits.iter().copied().max().unwrap_or(0)),
            retries: sum(|s| &s.retries),
            reproposals: sum(|s| &s.reproposals),
            failovers: sum(|s| &s.failovers),
            sequential: sum(|s| &s.sequential),
            cautious: sum(|s| &s.cautious),
            messages: self.messages,
            lost: self.lost,
            duplicated: self.duplicated,
            faults: self.scenario.faults.len(),
            finished_at: Duration::from_nanos(self.now),
            trace: self.trace,
        }
    }
}

/// The B+-tree operation of a history's operation, its value `size` bytes long.
fn to_tree(op: KvOp, size: usize) -> Op {
    match op {
        KvOp::Get(k) => Op::Read(k),
        KvOp::Put(k, v) => Op::Update(k, value_of(v, size)),
        KvOp::Insert(k, v) => Op::Insert(k, value_of(v, size)),
        KvOp::Delete(k) => Op::Delete(k),
    }
}

/// FNV-1a over the bytes of `v`, continuing from `hash`.
fn mix(hash: u64, v: u64) -> u64 {
    v.to_le_bytes().iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
