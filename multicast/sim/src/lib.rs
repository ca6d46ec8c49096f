//! A deterministic simulator of Multi-Ring Paxos (docs/testing.md).
//!
//! One thread, one seed. The seed draws the [`Scenario`] (rings of 3, 5 or 7
//! acceptors, P-SMR-shaped learners, protocol parameters, fault rates) and
//! every random choice of the run. A run has two phases:
//!
//! 1. safety: proposers propose while the network delays, loses, duplicates
//!    and reorders messages and acceptors crash and restart (never more than
//!    a minority of any ring at once, counting memory-mode acceptors that
//!    have not caught up since their restart), coordinators included; in the
//!    partition regime ([`SimOptions::partitions`]) the network also splits,
//!    cuts single directions, and processes pause ([`faults`]);
//! 2. liveness: every acceptor is restarted, the network heals, and the run
//!    continues until every proposal is delivered everywhere it should be,
//!    or the deadline passes (a validity violation).
//!
//! The [`Checker`] checks agreement, integrity and order on every delivery,
//! and merge order and validity at the end. A failure prints `seed=N`;
//! [`run`] with that seed replays the run exactly.

mod agenda;
mod checker;
mod disk;
pub mod faults;
mod scenario;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use agenda::{Agenda, Due};
pub use checker::{Checker, Violation};
pub use disk::{DiskMode, SimDisk};
pub use scenario::{G_ALL, LearnerSpec, NetworkFaults, Scenario, SimOptions};

use psmr_core::persist::Persister;
use psmr_core::proto::{Learner, Message, NodeId, Proposer, ProposerId, RingId, Transmit};

/// What a successful run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages lost by the network (or sent to a crashed node).
    pub lost: u64,
    /// Acceptor crashes.
    pub crashes: u32,
    /// Terms started (Phase 1 runs), over every acceptor and ring.
    pub elections: u64,
    /// Value-less decisions (`Chosen`) an acceptor could not use, not
    /// holding the vote at that ballot (left to gap recovery).
    pub chosen_unknown: u64,
    /// Decisions that waited for the coordinator's notice that its early
    /// vote is durable (durable storage with a disk latency).
    pub durable_waits: u64,
    /// Virtual time from healing to the moment every proposal was delivered.
    pub recovered_after: Duration,
    /// Commands proposed.
    pub commands: usize,
    /// Virtual time when every proposal was delivered.
    pub finished_at: Duration,
    /// Hash of every delivery, in order: equal for two runs of one seed.
    pub trace: u64,
}

/// A run in which a property did not hold.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed: [`run`] with it replays the run.
    pub seed: u64,
    /// What went wrong.
    pub violation: Violation,
    /// Virtual time of the violation.
    pub at: Duration,
    /// A summary of the scenario.
    pub scenario: String,
    /// The state of every node when the run stopped.
    pub state: String,
    /// Environment settings, besides the seed, that replay this run.
    pub replay_flags: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} at {:?}: {} [{}] (replay: PSMR_SIM_SEED={}{} cargo test -p psmr-sim --test sim replay -- --nocapture)",
            self.seed, self.at, self.violation, self.scenario, self.seed, self.replay_flags
        )
    }
}

/// Runs the scenario drawn from `seed` and `options`.
pub fn run(seed: u64, options: SimOptions) -> Result<Report, Box<Failure>> {
    let scenario = Scenario::from_seed(seed, options);
    let summary = summarize(&scenario);
    let mut world = World::new(scenario);
    match world.run() {
        Ok(()) => Ok(world.report()),
        Err(violation) => Err(Box::new(Failure {
            seed,
            violation,
            at: Duration::from_nanos(world.now),
            scenario: summary,
            state: world.describe(),
            replay_flags: options.replay_flags(),
        })),
    }
}

/// Faults on an otherwise clean cluster, for [`fault_probe`].
#[derive(Clone, Debug)]
pub struct Probe {
    /// Seed of the run.
    pub seed: u64,
    /// The faults.
    pub episodes: Vec<faults::Episode>,
    /// One command per millisecond is proposed from 0 to this.
    pub load: Duration,
    /// Storage of the acceptors.
    pub disk: DiskMode,
    /// A planted bug, if any (the other options are ignored).
    pub options: SimOptions,
    /// Acceptors (3 or more, odd); ring `i` is led by acceptor `i + 1` at first.
    pub acceptors: u32,
    /// How long the run goes on after the last fault ends.
    pub tail: Duration,
}

/// Runs `probe`: its acceptors, one thread ring and `g_all`, default
/// parameters, 100 µs per message, the probe's faults and load, until `tail`
/// after the last fault ends. Shows what the faults cost: terms started, time
/// to deliver everything after them, whether restarted acceptors left
/// amnesia. A safety violation is an error; a stall (validity) is reported.
pub fn fault_probe(probe: Probe) -> Result<ProbeReport, Box<Failure>> {
    let mut scenario = Scenario::quiet_with(probe.seed, 1, probe.acceptors);
    scenario.config.params = scenario::plant(scenario.config.params, probe.options);
    scenario.disk = probe.disk;
    let start = probe
        .episodes
        .iter()
        .map(|e| e.at)
        .min()
        .unwrap_or_default();
    let end = probe
        .episodes
        .iter()
        .map(|e| e.at + e.duration)
        .max()
        .unwrap_or_default();
    scenario.safety = end + probe.tail;
    scenario.load_until = Some(probe.load);
    scenario.commands_per_proposer = u32::try_from(probe.load.as_millis()).unwrap_or(u32::MAX);
    scenario.retry = Duration::from_millis(200);
    scenario.episodes = probe.episodes;
    let summary = summarize(&scenario);
    let mut world = World::new(scenario);
    let violation = match world.run() {
        Ok(()) => None,
        Err(v) if !v.is_safety() => Some(v),
        Err(violation) => {
            return Err(Box::new(Failure {
                seed: probe.seed,
                violation,
                at: Duration::from_nanos(world.now),
                scenario: summary,
                state: world.describe(),
                replay_flags: probe.options.replay_flags(),
            }));
        }
    };
    Ok(world.probe_report(nanos(start), nanos(end), violation))
}

/// What one fault cost ([`fault_probe`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    /// Terms started, over every acceptor and ring.
    pub elections: u64,
    /// Share of the commands proposed during the fault that came out of a
    /// merge before it ended.
    pub served_during: f64,
    /// From the end of the fault to the first merged delivery of a command
    /// proposed after it.
    pub resumed_after: Duration,
    /// The longest a command proposed after the fault waited for its first
    /// merged delivery.
    pub worst_after: Duration,
    /// (acceptor, ring) pairs still amnesiac at the end.
    pub amnesiac_at_end: usize,
    /// Acceptors that stopped, with why.
    pub halted: Vec<(NodeId, String)>,
    /// A liveness violation (some proposal never delivered), if any.
    pub stalled: Option<Violation>,
    /// The state of every node at the end (as a failure prints it).
    pub state: String,
}

/// Merge latency of a lone client: one command at a time, each to a random
/// thread ring of a P-SMR layout with `threads` thread rings, after a random
/// pause of up to `think` (so that rings go busy and idle in turn), on a
/// clean network (every message takes 100 µs). Returns each command's time
/// from proposal to its first merged delivery. Rate leveling must keep this
/// near the consensus latency; a ring that does not lead shows up here as
/// waits of many Δ.
pub fn latency_probe(seed: u64, threads: u16, commands: usize, think: Duration) -> Vec<Duration> {
    let scenario = Scenario::quiet(seed, threads);
    let mut world = World::new(scenario);
    world.healed = true;
    let proposer = world.scenario.proposers[0];
    let mut latencies = Vec::with_capacity(commands);
    let limit = nanos(Duration::from_secs(60));
    let first = RingId(1 + world.rng.random_range(0..threads));
    let mut current = world.propose_to(proposer, first);
    while latencies.len() < commands && world.now < limit {
        let (id, sent) = current;
        if let Some(merged) = world.checker.merged_at(id) {
            latencies.push(Duration::from_nanos(merged - sent));
            let pause = world.now + world.rng.random_range(0..=nanos(think));
            while world.now < pause {
                match world.step() {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            let ring = RingId(1 + world.rng.random_range(0..threads));
            current = world.propose_to(proposer, ring);
            continue;
        }
        if world
            .step()
            .expect("a clean run keeps every property")
            .is_none()
        {
            break;
        }
    }
    latencies
}

fn summarize(s: &Scenario) -> String {
    let rings: Vec<usize> = s.config.rings.iter().map(|r| r.acceptors.len()).collect();
    format!(
        "acceptors={} rings={:?} disk={:?} {:?} window={} m={} loss={:.3} dup={:.3} episodes={}",
        s.acceptors.len(),
        rings,
        s.disk,
        s.options,
        s.config.params.window,
        s.config.params.merge_m,
        s.network.loss,
        s.network.duplicate,
        s.episodes.len()
    )
}

enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    Propose {
        proposer: NodeId,
    },
    Crash,
    Restart {
        node: NodeId,
    },
    /// Acceptor `node`'s disk finished the sync it was given.
    Synced {
        node: NodeId,
    },
    /// Episode `i` of the scenario starts.
    EpisodeStart(usize),
    /// Episode `i` of the scenario ends.
    EpisodeEnd(usize),
    Heal,
}

struct AcceptorSlot {
    node: Option<Persister>,
    disk: SimDisk,
    /// A [`Event::Synced`] is scheduled.
    syncing: bool,
}

#[derive(Clone, Copy)]
enum Who {
    Acceptor(NodeId),
    Learner(NodeId),
    Proposer(NodeId),
}

impl Who {
    fn node(self) -> NodeId {
        match self {
            Who::Acceptor(id) | Who::Learner(id) | Who::Proposer(id) => id,
        }
    }
}

struct World {
    scenario: Scenario,
    rng: ChaCha8Rng,
    /// Disk latencies, drawn apart from `rng` so that a scenario without
    /// them replays as it did before they existed.
    disk_rng: ChaCha8Rng,
    base: Instant,
    now: u64,
    agenda: Agenda<Event>,
    acceptors: BTreeMap<NodeId, AcceptorSlot>,
    learners: BTreeMap<NodeId, Learner>,
    proposers: BTreeMap<NodeId, Proposer>,
    checker: Checker,
    healed: bool,
    /// Episodes under way (indices into the scenario's episodes).
    active: Vec<usize>,
    /// Messages that reached a paused process, in arrival order.
    held: Vec<(NodeId, NodeId, Message)>,
    messages: u64,
    lost: u64,
    crashes: u32,
    /// Every command proposed and when (virtual nanoseconds).
    proposals: Vec<(psmr_core::proto::CommandId, u64)>,
    /// The counters of acceptor incarnations that crashed.
    retired: Vec<psmr_core::proto::NodeMetrics>,
    /// When the run healed (virtual nanoseconds).
    healed_at: u64,
}

/// With `PSMR_SIM_TRACE=RING:INSTANCE` set, prints every message delivered
/// about that ring's instance, and its Phase 1 messages (for replays).
fn trace(now: u64, from: NodeId, to: NodeId, message: &Message) {
    thread_local! {
        static FILTER: Option<(u16, u64)> = std::env::var("PSMR_SIM_TRACE").ok().and_then(|v| {
            let (ring, instance) = v.split_once(':')?;
            Some((ring.parse().ok()?, instance.parse().ok()?))
        });
    }
    let Some((ring, instance)) = FILTER.with(|f| *f) else {
        return;
    };
    if message.ring() != Some(RingId(ring)) {
        return;
    }
    let shown = match message {
        Message::Accept(a) => a.instance == instance || a.decided_below > instance,
        Message::Decide(d) => d.instance == instance,
        Message::Chosen(c) => c.instance == instance,
        Message::Prepare(_) | Message::Promise(_) | Message::Nack(_) => true,
        Message::LearnRequest(_) | Message::Trimmed(_) => true,
        _ => false,
    };
    if shown {
        let brief = match message {
            Message::Promise(p) => format!(
                "Promise {} frontier {} slot {:?}",
                p.ballot,
                p.frontier,
                p.slots.iter().find(|s| s.instance == instance)
            ),
            other => format!("{other:?}"),
        };
        eprintln!("{:>12.6} {from}->{to} {brief}", now as f64 / 1e9);
    }
}

/// How often (virtual time) the acceptors' decided values are compared.
const ACCEPTOR_SCAN: u64 = 100_000_000;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl World {
    fn new(scenario: Scenario) -> World {
        let base = Instant::now();
        let config = &scenario.config;
        let acceptors = scenario
            .acceptors
            .iter()
            .map(|&id| {
                let disk = SimDisk::new(scenario.disk, scenario.options.broken);
                let node =
                    Persister::open(id, config, disk.storage(), base).expect("valid scenario");
                (
                    id,
                    AcceptorSlot {
                        node: Some(node),
                        disk,
                        syncing: false,
                    },
                )
            })
            .collect();
        let learners = scenario
            .learners
            .iter()
            .map(|spec| {
                (
                    spec.id,
                    Learner::new(spec.id, config, &spec.rings, base).expect("valid learner"),
                )
            })
            .collect();
        let proposers = scenario
            .proposers
            .iter()
            .map(|&id| {
                (
                    id,
                    Proposer::new(ProposerId(u64::from(id.0)), config, scenario.retry),
                )
            })
            .collect();
        let checker = Checker::new(&scenario.learners, config.params.merge_m);
        World {
            rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x5eed_0f5e_5510_11ff),
            disk_rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0xd15c_1a7e_0000_0001),
            scenario,
            base,
            now: 0,
            agenda: Agenda::default(),
            acceptors,
            learners,
            proposers,
            checker,
            healed: false,
            active: Vec::new(),
            held: Vec::new(),
            messages: 0,
            lost: 0,
            crashes: 0,
            retired: Vec::new(),
            healed_at: 0,
            proposals: Vec::new(),
        }
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.agenda.schedule(at, event);
    }

    fn run(&mut self) -> Result<(), Violation> {
        self.plan();
        let deadline = nanos(self.scenario.safety + self.scenario.liveness);
        let mut next_check = 0;
        let mut next_scan = 0;
        while let Some(at) = self.step()? {
            if at > deadline {
                break;
            }
            if at >= next_scan {
                next_scan = at + ACCEPTOR_SCAN;
                self.check_acceptors()?;
            }
            if self.healed && at >= next_check {
                next_check = at + 1_000_000;
                if self.checker.all_delivered() {
                    break;
                }
            }
        }
        self.check_acceptors()?;
        self.checker.finish(self.healed)
    }

    /// Every value an acceptor holds as decided agrees with every other
    /// acceptor's: a wrong decision that no learner happened to fetch is
    /// caught too.
    fn check_acceptors(&mut self) -> Result<(), Violation> {
        for (&id, slot) in &self.acceptors {
            let Some(node) = &slot.node else { continue };
            for ring in &self.scenario.config.rings {
                for (instance, value) in node.decided_values(ring.id) {
                    self.checker
                        .acceptor_decided(id, ring.id, instance, value)?;
                }
            }
        }
        Ok(())
    }

    /// Schedules the proposals, the crashes and the healing.
    fn plan(&mut self) {
        let safety = nanos(self.scenario.safety);
        let load = self.scenario.load_until.map_or(safety, nanos).max(1);
        for proposer in self.scenario.proposers.clone() {
            for _ in 0..self.scenario.commands_per_proposer {
                let at = self.rng.random_range(0..load);
                self.schedule(at, Event::Propose { proposer });
            }
        }
        let every = nanos(self.scenario.crash_every);
        let mut at = self.rng.random_range(every / 2..=every * 3 / 2);
        while at < safety {
            self.schedule(at, Event::Crash);
            at += self.rng.random_range(every / 2..=every * 3 / 2);
        }
        for (i, episode) in self.scenario.episodes.clone().into_iter().enumerate() {
            let start = nanos(episode.at);
            self.schedule(start, Event::EpisodeStart(i));
            self.schedule(start + nanos(episode.duration), Event::EpisodeEnd(i));
        }
        self.schedule(safety, Event::Heal);
    }

    /// Runs the earliest event or timer; returns its time, or `None` when idle.
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
        let since = |i: Instant| nanos(i.saturating_duration_since(self.base));
        let acceptors = self.acceptors.iter().filter_map(|(&id, s)| {
            let at = since(s.node.as_ref()?.poll_timeout()?);
            Some((at, Who::Acceptor(id)))
        });
        let learners = self
            .learners
            .iter()
            .filter_map(|(&id, l)| Some((since(l.poll_timeout()?), Who::Learner(id))));
        let proposers = self
            .proposers
            .iter()
            .filter_map(|(&id, p)| Some((since(p.poll_timeout()?), Who::Proposer(id))));
        // A paused process runs its timers when it resumes (its episode's end
        // is an event, so it is never later than that).
        let paused = |(_, who): &(u64, Who)| !self.is_paused(who.node());
        acceptors
            .chain(learners)
            .chain(proposers)
            .filter(paused)
            .fold(None, |best: Option<(u64, Who)>, (t, who)| match best {
                Some((b, _)) if b <= t => best,
                _ => Some((t, who)),
            })
    }

    fn fire(&mut self, who: Who) -> Result<(), Violation> {
        let now = self.instant();
        match who {
            Who::Acceptor(id) => {
                if let Some(node) = self.acceptors.get_mut(&id).and_then(|s| s.node.as_mut()) {
                    node.handle_timeout(now);
                }
                self.drain_acceptor(id)
            }
            Who::Learner(id) => {
                self.learners
                    .get_mut(&id)
                    .expect("learner")
                    .handle_timeout(now);
                self.drain_learner(id)
            }
            Who::Proposer(id) => {
                self.proposers
                    .get_mut(&id)
                    .expect("proposer")
                    .handle_timeout(now);
                self.drain_proposer(id);
                Ok(())
            }
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Deliver { from, to, message } => self.deliver(from, to, message),
            Event::Propose { proposer } => {
                self.propose(proposer);
                Ok(())
            }
            Event::Crash => {
                self.crash();
                Ok(())
            }
            Event::Restart { node } => {
                self.restart(node);
                self.drain_acceptor(node)
            }
            Event::Synced { node } => {
                let slot = self.acceptors.get_mut(&node).expect("an acceptor");
                slot.syncing = false;
                if let Some(n) = slot.node.as_mut() {
                    n.sync();
                }
                self.drain_acceptor(node)
            }
            Event::EpisodeStart(i) => {
                if !self.healed {
                    self.active.push(i);
                    if let Some(node) = self.scenario.episodes[i].crashed() {
                        self.crash_node(node);
                    }
                }
                Ok(())
            }
            Event::EpisodeEnd(i) => {
                self.active.retain(|&a| a != i);
                if let Some(node) = self.scenario.episodes[i].crashed() {
                    self.restart(node);
                    self.drain_acceptor(node)?;
                }
                self.resume_if_unpaused()
            }
            Event::Heal => self.heal(),
        }
    }

    /// Whether an active episode pauses `node`.
    fn is_paused(&self, node: NodeId) -> bool {
        self.active
            .iter()
            .any(|&i| self.scenario.episodes[i].paused() == Some(node))
    }

    /// Hands the messages held for processes that are no longer paused to them.
    fn resume_if_unpaused(&mut self) -> Result<(), Violation> {
        let held = std::mem::take(&mut self.held);
        for (from, to, message) in held {
            if self.is_paused(to) {
                self.held.push((from, to, message));
            } else {
                self.deliver(from, to, message)?;
            }
        }
        Ok(())
    }

    /// Whether the active episodes lose a message from `from` to `to`.
    fn cut(&mut self, from: NodeId, to: NodeId) -> bool {
        let mut kept = 1.0;
        for &i in &self.active {
            if let Some(loss) = self.scenario.episodes[i].loss(from, to) {
                kept *= 1.0 - loss;
            }
        }
        kept < 1.0 && !self.rng.random_bool(kept)
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, message: Message) -> Result<(), Violation> {
        if self.cut(from, to) {
            self.lost += 1;
            return Ok(());
        }
        trace(self.now, from, to, &message);
        if self.is_paused(to) {
            self.held.push((from, to, message));
            return Ok(());
        }
        let now = self.instant();
        if let Some(slot) = self.acceptors.get_mut(&to) {
            match slot.node.as_mut() {
                Some(node) => node.handle_message(now, from, message),
                None => self.lost += 1,
            }
            return self.drain_acceptor(to);
        }
        if let Some(learner) = self.learners.get_mut(&to) {
            learner.handle_message(now, from, message);
            return self.drain_learner(to);
        }
        Ok(())
    }

    fn propose(&mut self, proposer: NodeId) {
        let rings = self.scenario.config.rings.len() as u16;
        let ring = RingId(self.rng.random_range(0..rings));
        self.propose_to(proposer, ring);
    }

    /// Proposes a random command to `ring`; returns its id and when.
    fn propose_to(&mut self, proposer: NodeId, ring: RingId) -> (psmr_core::proto::CommandId, u64) {
        let now = self.instant();
        let mut payload = vec![0u8; self.rng.random_range(1..=24)];
        self.rng.fill(&mut payload[..]);
        let payload = Bytes::from(payload);
        let p = self.proposers.get_mut(&proposer).expect("proposer");
        let id = p
            .propose(now, ring, payload.clone())
            .expect("scenario rings exist");
        self.checker.proposed(id, ring, payload);
        self.proposals.push((id, self.now));
        self.drain_proposer(proposer);
        (id, self.now)
    }

    /// Sends what acceptor `id` lets out. With a disk latency, what waits
    /// for a sync waits for an [`Event::Synced`] (a crash before it loses
    /// the records, and the messages never leave); early messages go now.
    fn drain_acceptor(&mut self, id: NodeId) -> Result<(), Violation> {
        let latency = nanos(self.scenario.disk_latency);
        let mut out = Vec::new();
        let mut sync_at = None;
        let slot = self.acceptors.get_mut(&id).expect("an acceptor");
        if let Some(node) = slot.node.as_mut() {
            let next = |n: &mut Persister| match latency {
                0 => n.poll_transmit(),
                _ => n.poll_unsynced(),
            };
            while let Some(t) = next(node) {
                out.push(t);
            }
            if node.metrics().conflicting_decisions > 0 {
                return Err(Violation::AcceptorConflict { acceptor: id });
            }
            if node.needs_sync() && !slot.syncing {
                slot.syncing = true;
                sync_at = Some(self.now + self.disk_rng.random_range(0..=latency));
            }
        }
        if let Some(at) = sync_at {
            self.schedule(at, Event::Synced { node: id });
        }
        out.into_iter().for_each(|t| self.send(id, t));
        Ok(())
    }

    fn drain_learner(&mut self, id: NodeId) -> Result<(), Violation> {
        let learner = self.learners.get_mut(&id).expect("learner");
        let mut out = Vec::new();
        while let Some(t) = learner.poll_transmit() {
            out.push(t);
        }
        let mut deliveries = Vec::new();
        while let Some(d) = learner.poll_delivery() {
            deliveries.push(d);
        }
        for d in &deliveries {
            self.checker.delivered(id, d, self.now)?;
            for command in d.value.commands() {
                let owner = NodeId(command.id.proposer.0 as u32);
                if let Some(p) = self.proposers.get_mut(&owner) {
                    p.done(command.id);
                }
            }
        }
        out.into_iter().for_each(|t| self.send(id, t));
        Ok(())
    }

    fn drain_proposer(&mut self, id: NodeId) {
        let p = self.proposers.get_mut(&id).expect("proposer");
        let mut out = Vec::new();
        while let Some(t) = p.poll_transmit() {
            out.push(t);
        }
        out.into_iter().for_each(|t| self.send(id, t));
    }

    /// The network: delay, loss, duplication and reordering, then delivery.
    fn send(&mut self, from: NodeId, t: Transmit) {
        self.messages += 1;
        let net = self.scenario.network.clone();
        let faulty = !self.healed;
        if faulty && self.rng.random_bool(net.loss) {
            self.lost += 1;
            return;
        }
        let copies = if faulty && self.rng.random_bool(net.duplicate) {
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
                to: t.to,
                message: t.message.clone(),
            };
            self.schedule(self.now + delay, event);
        }
    }

    /// Whether `node` counts as failed in `ring`: crashed, or restarted in
    /// memory mode and not caught up.
    fn down_in(&self, node: NodeId, ring: RingId) -> bool {
        match &self.acceptors[&node].node {
            None => true,
            Some(n) => n.is_amnesiac(ring),
        }
    }

    /// Whether crashing `victim` keeps every ring within its `f` failures.
    fn may_crash(&self, victim: NodeId) -> bool {
        self.scenario.config.rings.iter().all(|ring| {
            if ring.position(victim).is_none() {
                return true;
            }
            let down = ring
                .acceptors
                .iter()
                .filter(|&&a| a == victim || self.down_in(a, ring.id))
                .count();
            down <= ring.faults()
        })
    }

    fn crash(&mut self) {
        let alive: Vec<NodeId> = self
            .acceptors
            .iter()
            .filter(|(_, s)| s.node.is_some())
            .map(|(&id, _)| id)
            .filter(|&id| self.may_crash(id))
            .collect();
        let coordinators: Vec<NodeId> = alive
            .iter()
            .copied()
            .filter(|&id| {
                let node = self.acceptors[&id].node.as_ref().expect("alive");
                self.scenario
                    .config
                    .rings
                    .iter()
                    .any(|r| node.is_coordinator(r.id))
            })
            .collect();
        let target_coordinator = self.rng.random_bool(self.scenario.coordinator_crash);
        let pool = if target_coordinator && !coordinators.is_empty() {
            coordinators
        } else {
            alive
        };
        if pool.is_empty() {
            return;
        }
        let victim = pool[self.rng.random_range(0..pool.len())];
        self.crash_node(victim);
        let downtime = self
            .rng
            .random_range(5_000_000..=nanos(self.scenario.max_downtime).max(5_000_001));
        self.schedule(self.now + downtime, Event::Restart { node: victim });
    }

    /// Takes acceptor `id` down: what it had not synced is lost.
    fn crash_node(&mut self, id: NodeId) {
        let slot = self.acceptors.get_mut(&id).expect("an acceptor");
        if let Some(node) = slot.node.take() {
            self.retired.push(node.metrics().clone());
        }
        slot.disk.crash();
        slot.syncing = false;
        self.crashes += 1;
    }

    fn restart(&mut self, id: NodeId) {
        let now = self.instant();
        let config = self.scenario.config.clone();
        let slot = self.acceptors.get_mut(&id).expect("acceptor");
        if slot.node.is_none() {
            let node = Persister::open(id, &config, slot.disk.storage(), now).expect("recovery");
            slot.node = Some(node);
        }
    }

    fn heal(&mut self) -> Result<(), Violation> {
        self.healed = true;
        self.healed_at = self.now;
        self.active.clear();
        self.resume_if_unpaused()?;
        let ids: Vec<NodeId> = self.acceptors.keys().copied().collect();
        for id in ids {
            self.restart(id);
            self.drain_acceptor(id)?;
        }
        Ok(())
    }

    /// Per acceptor and ring: frontier, coordinator, amnesia; per learner
    /// and ring: next instance.
    fn describe(&self) -> String {
        let mut out = String::new();
        for (id, slot) in &self.acceptors {
            let Some(node) = &slot.node else {
                out.push_str(&format!("{id}: down\n"));
                continue;
            };
            let rings: Vec<String> = self
                .scenario
                .config
                .rings
                .iter()
                .filter_map(|r| {
                    let p = node.positions(r.id)?;
                    let lead = if node.is_coordinator(r.id) { "*" } else { "" };
                    let amnesiac = if node.is_amnesiac(r.id) { "?" } else { "" };
                    let next = p
                        .next_proposal
                        .map(|(i, pos)| format!(" next={i}@{pos}"))
                        .unwrap_or_default();
                    let term = p.term.map(|b| format!(" term={b}")).unwrap_or_default();
                    Some(format!(
                        "{}{lead}{amnesiac}={}@{}(content {}){next}{term} promised={} seen={}",
                        r.id,
                        p.frontier,
                        p.frontier_position,
                        p.content_position,
                        p.promised,
                        p.seen
                    ))
                })
                .collect();
            out.push_str(&format!("{id}: {} {:?}\n", rings.join(" "), node.metrics()));
        }
        for (id, learner) in &self.learners {
            let rings: Vec<String> = self
                .scenario
                .config
                .rings
                .iter()
                .filter_map(|r| Some(format!("{}={}", r.id, learner.next_instance(r.id)?)))
                .collect();
            out.push_str(&format!(
                "{id}: {} {:?}\n",
                rings.join(" "),
                learner.metrics()
            ));
        }
        for (id, p) in &self.proposers {
            out.push_str(&format!("{id}: {} outstanding\n", p.outstanding()));
        }
        out.push_str(&self.checker.describe_merges());
        out
    }

    /// Costs of a fault active from `start` to `end` (virtual nanoseconds).
    fn probe_report(&self, start: u64, end: u64, stalled: Option<Violation>) -> ProbeReport {
        let report = self.report();
        let merged = |id| self.checker.merged_at(id).unwrap_or(self.now);
        let during: Vec<_> = self
            .proposals
            .iter()
            .filter(|&&(_, at)| (start..end).contains(&at))
            .collect();
        let served = during.iter().filter(|&&&(id, _)| merged(id) < end).count();
        let after = self.proposals.iter().filter(|&&(_, at)| at >= end);
        let resumed = after
            .clone()
            .map(|&(id, _)| merged(id))
            .min()
            .unwrap_or(end);
        let worst = after.map(|&(id, at)| merged(id).saturating_sub(at)).max();
        let nodes = || {
            self.acceptors
                .iter()
                .filter_map(|(&id, s)| Some((id, s.node.as_ref()?)))
        };
        ProbeReport {
            elections: report.elections,
            served_during: served as f64 / during.len().max(1) as f64,
            resumed_after: Duration::from_nanos(resumed.saturating_sub(end)),
            worst_after: Duration::from_nanos(worst.unwrap_or(0)),
            amnesiac_at_end: nodes().map(|(_, n)| n.amnesiac_rings()).sum(),
            halted: nodes()
                .filter_map(|(id, n)| Some((id, n.halted()?.to_string())))
                .collect(),
            stalled,
            state: self.describe(),
        }
    }

    /// A counter summed over every acceptor incarnation, crashed or live.
    fn total(&self, counter: fn(&psmr_core::proto::NodeMetrics) -> u64) -> u64 {
        let live = self.acceptors.values().filter_map(|s| s.node.as_ref());
        let live = live.map(|n| counter(n.metrics()));
        self.retired.iter().map(counter).chain(live).sum()
    }

    fn report(&self) -> Report {
        Report {
            seed: self.scenario.seed,
            messages: self.messages,
            lost: self.lost,
            crashes: self.crashes,
            elections: self.total(|m| m.elections),
            chosen_unknown: self.total(|m| m.chosen_unknown),
            durable_waits: self.total(|m| m.durable_waits),
            recovered_after: Duration::from_nanos(self.now.saturating_sub(self.healed_at)),
            commands: self.checker.proposed_count(),
            finished_at: Duration::from_nanos(self.now),
            trace: self.checker.trace,
        }
    }
}
