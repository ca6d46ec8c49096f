//! An acceptor process as a sans-IO state machine: its acceptor role in every
//! ring it belongs to, the coordinator role of the rings it leads, the
//! failure detector. It does no I/O: what must be durable before a message
//! leaves comes out with that message in one [`Ready`], and the driver (the
//! QUIC process, the simulator, a test) persists it first, e.g. through
//! [`crate::storage::Persister`].
//!
//! ```text
//!  driver                              AcceptorNode
//!  ------                              ------------
//!  handle_message(now, from, msg) ---> dispatch by ring and message kind
//!  handle_frame(now, from, bytes) ---> decode, count bad frames, dispatch
//!  handle_timeout(now)             ---> heartbeats, elections, catch-up, retries, leveling
//!  poll_ready()                   <--- records to make durable, and the messages that may
//!                                       leave once they are (the raft-rs `Ready` shape)
//!  poll_timeout()                 <--- when to call handle_timeout next
//! ```
//!
//! Who coordinates a ring is decided by [`Leadership`]: the live leader
//! with the highest ballot, else the first viable node in ring order, which
//! then runs Phase 1 with a ballot above any it has seen. A coordinator steps
//! down when it hears a leader with a higher ballot, learns of a higher
//! ballot (a refusal, a decision), or stops hearing a quorum, handing its
//! queued commands to the node it believes in.
//!
//! The rings' timers tick every Δ (rate leveling) while messages other than
//! heartbeats arrive, a ring has a gap, or a coordinator has work; otherwise
//! at the pace of the slower timers (retries, recovery, heartbeats: 10 ms by
//! default), so an idle cluster does not wake a thousand times a second.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::acceptor::AcceptorRing;
use super::codec;
use super::config::{ConfigError, MulticastConfig, Params, old_hint_rule, old_leadership};
use super::context::{Ctx, Membership};
use super::coordinator::{Coordinator, LevelView};
use super::failure::FailureDetector;
use super::leadership::Leadership;
use super::messages::{Heartbeat, Message, Prepare, Propose, RingBeat, Transmit};
use super::metrics::NodeMetrics;
use super::outbox::Outbox;
use super::types::{Ballot, Command, Instance, NodeId, RingId, Value};
use crate::storage::{Record, Recovered, StorageError};
use crate::wire::{ClientId, ClientTag, Marker};

/// Why a node could not be created.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The node is not an acceptor of any ring.
    #[error("{node} is not an acceptor of any ring")]
    NotAnAcceptor {
        /// The node.
        node: NodeId,
    },
}

/// What an [`AcceptorNode`] hands its driver: `records` to make durable (in
/// order, then synced), and the `messages` that may leave once they are.
/// Sending a message before its records are durable can break agreement (a
/// vote the acceptor forgets at restart).
#[derive(Debug, Default)]
pub struct Ready {
    /// Promises and votes appended since the last `Ready`.
    pub records: Vec<Record>,
    /// Messages that may leave before `records` are durable: a
    /// coordinator's Accepts under durable storage, whose votes count once
    /// the node's `Durable` notice follows the sync (see
    /// [`AcceptorNode::synced`]).
    pub early: VecDeque<Transmit>,
    /// Messages to other nodes, in order, once `records` (and every
    /// earlier `Ready`'s) are durable.
    pub messages: VecDeque<Transmit>,
}

/// Where a ring stands at a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPositions {
    /// First instance not known decided.
    pub frontier: Instance,
    /// Merge position of the frontier.
    pub frontier_position: u64,
    /// Merge position just past the last batch below the frontier.
    pub content_position: u64,
    /// If this node coordinates the ring: the instance and position of its next proposal.
    pub next_proposal: Option<(Instance, u64)>,
    /// The ballot this node's acceptor promised.
    pub promised: Ballot,
    /// The highest ballot this node heard of.
    pub seen: Ballot,
    /// The ballot of this node's term, if it has one (leading or preparing).
    pub term: Option<Ballot>,
    /// Every instance below this was trimmed from this node's storage.
    pub trimmed_below: Instance,
}

struct RingState {
    acceptor: AcceptorRing,
    /// Rings merged with this one by some learner (rate leveling looks at those).
    partners: Vec<RingId>,
    coordinator: Option<Coordinator>,
    lead: Leadership,
    /// The highest content position peers reported for this ring (see
    /// [`RingBeat::content_position`]).
    reported_content: u64,
    /// Commands that arrived while this node was to start a term but had
    /// to wait (terms start at most once per retry timeout).
    parked: Vec<Command>,
}

impl RingState {
    fn members(&self) -> &Membership {
        &self.acceptor.members
    }

    /// The ballot at which this node leads the ring, if it does (Phase 1
    /// done and no decision at a higher ballot learned since).
    fn leading(&self) -> Option<Ballot> {
        self.coordinator
            .as_ref()
            .filter(|c| c.is_leading() && c.superseded().is_none())
            .map(Coordinator::ballot)
    }

    /// Who this node believes coordinates the ring.
    fn believed(&self, ctx: &Ctx<'_>) -> Option<NodeId> {
        self.lead.believed(ctx, self.members(), self.leading())
    }
}

/// An acceptor process: the protocol core of all its rings.
pub struct AcceptorNode {
    id: NodeId,
    params: Params,
    rings: BTreeMap<RingId, RingState>,
    /// The keys of `rings` (fixed at start), to visit them in turn while
    /// each needs a look at the others.
    ring_ids: Vec<RingId>,
    detector: FailureDetector,
    /// Records appended since the last [`Ready`].
    records: Vec<Record>,
    outbox: Outbox,
    metrics: NodeMetrics,
    next_heartbeat: Instant,
    next_tick: Instant,
    /// When the rings last ticked.
    last_tick: Instant,
    /// A message other than a heartbeat arrived since the last tick: the
    /// rings tick every Δ while there is traffic, and at the slower timers'
    /// pace when there is none (an idle cluster does not wake every Δ).
    active: bool,
    /// Some ring has partners this node does not host: their progress cannot
    /// be observed, so the idle floor of leveling needs a tick every Δ.
    always_fast: bool,
    halted: Option<StorageError>,
    /// Input arrived since the coordinators last formed batches.
    flush_due: bool,
    /// The latest `now` the driver gave.
    last_now: Instant,
}

impl AcceptorNode {
    /// Creates the node `id` of `config` from what its storage recovered
    /// (`Recovered::default()` for a new member).
    pub fn new(
        id: NodeId,
        config: &MulticastConfig,
        mut recovered: Recovered,
        now: Instant,
    ) -> Result<AcceptorNode, NodeError> {
        config.validate()?;
        let mut rings = BTreeMap::new();
        let mut peers = Vec::new();
        for ring in &config.rings {
            let Some(me) = ring.position(id) else {
                continue;
            };
            peers.extend(ring.acceptors.iter().copied().filter(|&a| a != id));
            let members = Membership {
                config: Arc::new(ring.clone()),
                me,
            };
            let state = recovered.rings.remove(&ring.id).unwrap_or_default();
            let acceptor =
                AcceptorRing::new(members, state, recovered.values_lost, &config.params, now);
            let state = RingState {
                acceptor,
                partners: config.partners(ring.id),
                coordinator: None,
                lead: Leadership::default(),
                reported_content: 0,
                parked: Vec::new(),
            };
            rings.insert(ring.id, state);
        }
        if rings.is_empty() {
            return Err(NodeError::NotAnAcceptor { node: id });
        }
        let always_fast = rings
            .values()
            .any(|s| s.partners.iter().any(|p| !rings.contains_key(p)));
        peers.sort_unstable();
        peers.dedup();
        let mut detector = FailureDetector::new(id, peers, config.params.suspect_timeout, now);
        if old_leadership(&config.params) {
            detector = detector.one_way();
        }
        let mut node = AcceptorNode {
            id,
            params: config.params.clone(),
            ring_ids: rings.keys().copied().collect(),
            rings,
            detector,
            records: Vec::new(),
            outbox: Outbox::new(id),
            metrics: NodeMetrics::default(),
            next_heartbeat: now,
            next_tick: now,
            last_tick: now,
            active: false,
            always_fast,
            halted: None,
            flush_due: false,
            last_now: now,
        };
        node.handle_timeout(now);
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Counters.
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// The storage error that stopped this node, if any. A halted node sends
    /// nothing more: its driver should report the error and exit.
    pub fn halted(&self) -> Option<&StorageError> {
        self.halted.as_ref()
    }

    /// Takes the storage error that stopped this node, if any.
    pub fn take_halted(&mut self) -> Option<StorageError> {
        self.halted.take()
    }

    /// Whether this node currently leads `ring` (Phase 1 done).
    pub fn is_coordinator(&self, ring: RingId) -> bool {
        self.rings
            .get(&ring)
            .and_then(|r| r.coordinator.as_ref())
            .is_some_and(Coordinator::is_leading)
    }

    /// Whether this node lost accepted values of `ring` in a restart and has
    /// not caught up yet (it does not take part in Phase 1 meanwhile).
    pub fn is_amnesiac(&self, ring: RingId) -> bool {
        self.rings
            .get(&ring)
            .is_some_and(|r| r.acceptor.is_amnesiac())
    }

    /// How many rings this node is amnesiac in (see [`AcceptorNode::is_amnesiac`]).
    pub fn amnesiac_rings(&self) -> usize {
        self.rings
            .values()
            .filter(|r| r.acceptor.is_amnesiac())
            .count()
    }

    /// The rings this node serves.
    pub fn rings(&self) -> Vec<RingId> {
        self.rings.keys().copied().collect()
    }

    /// Where `ring` stands at this node (for diagnostics and tests).
    pub fn positions(&self, ring: RingId) -> Option<RingPositions> {
        let state = self.rings.get(&ring)?;
        Some(RingPositions {
            frontier: state.acceptor.frontier(),
            frontier_position: state.acceptor.frontier_position(),
            content_position: state.acceptor.content_position(),
            next_proposal: state.coordinator.as_ref().map(Coordinator::next),
            promised: state.acceptor.promised(),
            seen: state.lead.seen,
            term: state.coordinator.as_ref().map(Coordinator::ballot),
            trimmed_below: state.acceptor.trimmed_below(),
        })
    }

    /// Every value of `ring` this node holds as decided, in instance order
    /// (for checkers: every acceptor must agree with every learner).
    pub fn decided_values(&self, ring: RingId) -> Vec<(Instance, &Value)> {
        self.rings
            .get(&ring)
            .map(|r| r.acceptor.decided_values().collect())
            .unwrap_or_default()
    }

    /// The first instance of `ring` this node does not know to be decided.
    pub fn frontier(&self, ring: RingId) -> Option<Instance> {
        self.rings.get(&ring).map(|r| r.acceptor.frontier())
    }

    /// Handles one encoded frame body (the bytes after the length prefix).
    pub fn handle_frame(&mut self, now: Instant, from: NodeId, body: &[u8]) {
        match codec::decode_body(body) {
            Ok(message) => self.handle_message(now, from, message),
            Err(_) => self.metrics.bad_frames += 1,
        }
    }

    /// Handles one frame body a client sent on a proposal stream: a
    /// proposal whose every command carries a wire id of `tag` (the tag of
    /// the client's certificate) and no checkpoint marker, which only
    /// replicas propose. Anything else is refused whole and counted in
    /// [`NodeMetrics::refused_proposals`].
    pub fn handle_client_frame(&mut self, now: Instant, from: NodeId, tag: ClientTag, body: &[u8]) {
        let message = match codec::decode_body(body) {
            Ok(message) => message,
            Err(_) => {
                self.metrics.bad_frames += 1;
                return;
            }
        };
        let own = |c: &Command| {
            ClientId(c.id.proposer.0).tag() == tag && Marker::decode(&c.payload).is_none()
        };
        match message {
            Message::Propose(p) if !p.forwarded && p.commands.iter().all(own) => {
                self.handle_message(now, from, Message::Propose(p))
            }
            _ => self.metrics.refused_proposals += 1,
        }
    }

    /// Handles one message from `from`.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, message: Message) {
        if self.halted.is_some() {
            return;
        }
        self.detector.heard(from, now);
        self.last_now = self.last_now.max(now);
        self.flush_due = true;
        if !self.active && !matches!(message, Message::Heartbeat(_)) {
            // Traffic after a quiet spell: tick as soon as the Δ pace allows
            // (once per tick; later messages find the tick pulled in already).
            self.active = true;
            self.next_tick = self
                .next_tick
                .min(self.last_tick + self.tick_interval(true));
        }
        self.dispatch(now, from, message);
        self.drain_local(now);
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.halted.is_some() {
            return;
        }
        self.last_now = self.last_now.max(now);
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.params.heartbeat_interval;
            let heartbeat = Message::Heartbeat(self.heartbeat(now));
            let peers: Vec<NodeId> = self.detector.peers().collect();
            for peer in peers {
                self.outbox.send(peer, heartbeat.clone());
            }
        }
        if now >= self.next_tick {
            let fast = self.active || self.always_fast || self.has_work();
            self.active = false;
            self.last_tick = now;
            self.next_tick = now + self.tick_interval(fast);
            for i in 0..self.ring_ids.len() {
                self.tick_ring(now, self.ring_ids[i]);
            }
        }
        self.drain_local(now);
    }

    /// What may leave now, with the records that must be durable first;
    /// `None` while no message is queued (records then wait for the next
    /// messages, so that a sync is spent only where something leaves). First,
    /// the coordinators turn the commands that arrived since the last call
    /// into batches (one batch per ring for all of them, as the window
    /// allows).
    pub fn poll_ready(&mut self) -> Option<Ready> {
        if self.halted.is_some() {
            return None;
        }
        if self.flush_due {
            self.flush_due = false;
            self.flush_coordinators();
        }
        if self.outbox.remote.is_empty() && self.outbox.early.is_empty() {
            return None;
        }
        for state in self.rings.values_mut() {
            state.acceptor.taken();
        }
        Some(Ready {
            records: std::mem::take(&mut self.records),
            early: std::mem::take(&mut self.outbox.early),
            messages: std::mem::take(&mut self.outbox.remote),
        })
    }

    /// The driver made the records of every [`Ready`] it took durable:
    /// the coordinators tell their rings which early votes that covered
    /// (messages of the next `Ready`).
    pub fn synced(&mut self) {
        if self.halted.is_some() {
            return;
        }
        let now = self.last_now;
        for i in 0..self.ring_ids.len() {
            let ring = self.ring_ids[i];
            self.with_ring(now, ring, |ctx, state| state.acceptor.synced(ctx));
        }
    }

    /// The driver could not make a [`Ready`]'s records durable: the node
    /// stops (its messages must not leave, and it must not vote on).
    pub fn storage_failed(&mut self, error: StorageError) {
        self.halt(error);
    }

    fn halt(&mut self, error: StorageError) {
        self.halted = Some(error);
        self.outbox.remote.clear();
        self.outbox.early.clear();
        self.records.clear();
    }

    /// When [`AcceptorNode::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.halted.is_some() {
            return None;
        }
        Some(self.next_tick.min(self.next_heartbeat))
    }

    fn flush_coordinators(&mut self) {
        let now = self.last_now;
        let AcceptorNode {
            params,
            rings,
            ring_ids,
            detector,
            records,
            outbox,
            metrics,
            ..
        } = self;
        for id in ring_ids.iter() {
            if rings[id].coordinator.is_none() {
                continue;
            }
            // Seen afresh per ring: a batch spans the positions its partners
            // proposed in this very flush.
            let view = level_view(rings, now, params, *id);
            let state = rings.get_mut(id).expect("ring exists");
            let c = state.coordinator.as_mut().expect("checked above");
            let mut ctx = Ctx {
                now,
                params,
                detector,
                out: outbox,
                records,
                metrics,
            };
            c.flush(&mut ctx, &state.acceptor.members, view);
        }
        self.drain_local(now);
    }

    /// The pace of the rings' timers: Δ (leveling) while `fast`, else that
    /// of retries, recovery and heartbeats.
    fn tick_interval(&self, fast: bool) -> Duration {
        let p = &self.params;
        let slow = p
            .heartbeat_interval
            .min(p.retry_timeout / 2)
            .min(p.recovery_timeout / 2);
        let interval = if fast { slow.min(p.delta) } else { slow };
        interval.max(Duration::from_micros(100))
    }

    /// Whether some ring has work beyond leveling: a gap, or a coordinator
    /// with commands or instances waiting.
    fn has_work(&self) -> bool {
        self.rings.values().any(|s| {
            s.acceptor.has_gap() || s.coordinator.as_ref().is_some_and(Coordinator::has_work)
        })
    }

    /// What this node tells its peers every heartbeat interval.
    fn heartbeat(&self, now: Instant) -> Heartbeat {
        let rings = self
            .rings
            .iter()
            .map(|(&ring, state)| RingBeat {
                ring,
                leading: state.leading(),
                frontier: state.acceptor.frontier(),
                content_position: state.acceptor.content_position(),
                amnesiac_until: state.acceptor.amnesiac_until(),
            })
            .collect();
        Heartbeat {
            hears: self.detector.heard_peers(now),
            rings,
        }
    }

    /// A peer's heartbeat: whom it hears, what it leads, where it stands.
    /// Views change, so every ring it speaks of settles its role.
    fn on_heartbeat(&mut self, now: Instant, from: NodeId, heartbeat: Heartbeat) {
        self.detector.reported(from, &heartbeat.hears, now);
        for beat in heartbeat.rings {
            let Some(state) = self.rings.get_mut(&beat.ring) else {
                continue;
            };
            if !state.members().is_member(from) {
                continue;
            }
            state.acceptor.note_horizon(beat.frontier);
            state.reported_content = state.reported_content.max(beat.content_position);
            if !old_leadership(&self.params) {
                state.lead.heard_leader(from, beat.leading, now);
            }
            state.lead.heard_amnesia(from, beat.amnesiac_until);
        }
        for i in 0..self.ring_ids.len() {
            let ring = self.ring_ids[i];
            self.with_ring(now, ring, settle);
        }
    }

    /// Runs `f` on `ring`'s state with a context of this node.
    fn with_ring<R>(
        &mut self,
        now: Instant,
        ring: RingId,
        f: impl FnOnce(&mut Ctx<'_>, &mut RingState) -> R,
    ) -> R {
        let AcceptorNode {
            params,
            rings,
            detector,
            records,
            outbox,
            metrics,
            ..
        } = self;
        let state = rings.get_mut(&ring).expect("ring exists");
        let mut ctx = Ctx {
            now,
            params,
            detector,
            out: outbox,
            records,
            metrics,
        };
        f(&mut ctx, state)
    }

    fn drain_local(&mut self, now: Instant) {
        while let Some(message) = self.outbox.local.pop_front() {
            if self.halted.is_some() {
                return;
            }
            self.dispatch(now, self.id, message);
        }
    }

    fn dispatch(&mut self, now: Instant, from: NodeId, message: Message) {
        let Some(ring) = message.ring() else {
            if !self.detector.knows(from) {
                self.metrics.unknown_peer += 1;
            } else if let Message::Heartbeat(heartbeat) = message {
                self.on_heartbeat(now, from, heartbeat);
            }
            return;
        };
        if !self.rings.contains_key(&ring) {
            self.metrics.unknown_ring += 1;
            return;
        }
        if let Err(e) = self.dispatch_ring(now, from, ring, message) {
            self.halt(e);
        }
    }

    fn dispatch_ring(
        &mut self,
        now: Instant,
        from: NodeId,
        ring: RingId,
        message: Message,
    ) -> Result<(), StorageError> {
        self.with_ring(now, ring, |ctx, state| {
            on_ring_message(ctx, state, from, message)
        })
    }

    fn tick_ring(&mut self, now: Instant, ring: RingId) {
        let view = level_view(&self.rings, now, &self.params, ring);
        if let Err(e) = self.with_ring(now, ring, |ctx, state| tick(ctx, state, view)) {
            self.halt(e);
        }
    }
}

/// A message about one ring, from `from`.
fn on_ring_message(
    ctx: &mut Ctx<'_>,
    state: &mut RingState,
    from: NodeId,
    message: Message,
) -> Result<(), StorageError> {
    let member = state.members().is_member(from);
    let peer_only = !matches!(
        message,
        Message::Propose(_) | Message::LearnRequest(_) | Message::Checkpointed(_)
    );
    if peer_only && !member {
        ctx.metrics.unknown_peer += 1;
        return Ok(());
    }
    match message {
        Message::Propose(p) => on_propose(ctx, state, p),
        Message::Prepare(p) => on_prepare(ctx, state, from, p)?,
        Message::Promise(p) => {
            // The promiser knows every instance below its frontier to be
            // decided: a gap this node's acceptor must fill.
            state.acceptor.note_horizon(p.frontier);
            let members = state.acceptor.members.clone();
            if let Some(c) = state.coordinator.as_mut() {
                c.on_promise(ctx, &members, from, p);
            }
        }
        Message::Nack(n) => state.lead.seen = state.lead.seen.max(n.promised),
        Message::Accept(a) => state.acceptor.on_accept(ctx, a)?,
        Message::Decide(d) => state.acceptor.on_decide(ctx, d)?,
        Message::Chosen(c) => state.acceptor.on_chosen(ctx, c)?,
        Message::Durable(d) => state.acceptor.on_durable(ctx, from, d)?,
        Message::LearnRequest(r) => state.acceptor.on_learn_request(ctx, from, r),
        Message::Trimmed(t) => state.acceptor.on_trimmed(ctx, t)?,
        Message::Checkpointed(c) => state.acceptor.on_checkpointed(ctx, from, c),
        Message::Heartbeat(_) => {}
    }
    settle(ctx, state);
    Ok(())
}

/// A ring's timers: catch-up and trim, the role, a ring stuck in amnesia,
/// a stalled leader, the coordinator's retries, batches and leveling.
fn tick(ctx: &mut Ctx<'_>, state: &mut RingState, view: LevelView) -> Result<(), StorageError> {
    state.acceptor.tick(ctx)?;
    settle(ctx, state);
    let members = state.acceptor.members.clone();
    let (mine, me_amnesiac) = (state.leading(), state.acceptor.is_amnesiac());
    if state
        .lead
        .stuck_in_amnesia(ctx, &members, mine, me_amnesiac)
    {
        return Err(StorageError::AllAmnesiac {
            ring: members.config.id,
        });
    }
    if stalled_leader(ctx, state) {
        park_pending(state);
        new_term(ctx, state, &members);
    }
    let amnesia_end = state
        .lead
        .amnesia_end()
        .max(state.acceptor.amnesiac_until().unwrap_or(0));
    if let Some(c) = state.coordinator.as_mut() {
        c.skip_to(amnesia_end);
        c.tick(ctx, &members, view);
    }
    Ok(())
}

/// What this node sees of the rings merged with `ring`. A busy partner's
/// position is the one its coordinator proposes next when this node leads
/// it, else the one its acceptor here has seen decided.
fn level_view(
    rings: &BTreeMap<RingId, RingState>,
    now: Instant,
    params: &Params,
    ring: RingId,
) -> LevelView {
    let window = params.delta * 2;
    let partners = &rings[&ring].partners;
    let busy_max = rings
        .iter()
        .filter(|(id, _)| partners.contains(id))
        .filter_map(|(_, r)| {
            let leading = r.coordinator.as_ref();
            let busy = r.acceptor.busy_since(now, window)
                || leading.is_some_and(|c| c.is_busy(now, params.delta));
            let proposed = leading.map_or(0, |c| c.next().1);
            busy.then(|| r.acceptor.frontier_position().max(proposed))
        })
        .max();
    // Peers' reports count too: this node's acceptor of a partner may lag
    // (it was cut off), and a ring that levels only to what a lagging
    // acceptor knows leaves the partner's batches waiting.
    let content_max = partners
        .iter()
        .filter_map(|p| rings.get(p))
        .map(|r| r.acceptor.content_position().max(r.reported_content))
        .max()
        .unwrap_or(0);
    let unobserved = partners.iter().any(|p| !rings.contains_key(p));
    LevelView {
        busy_max,
        content_max,
        unobserved,
    }
}

/// After any input: hand new decisions to the coordinator (a decision at a
/// higher ballot supersedes it), then make sure the right node coordinates.
fn settle(ctx: &mut Ctx<'_>, state: &mut RingState) {
    let members = state.acceptor.members.clone();
    let ring = members.config.id;
    let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut ctx.out.decided)
        .into_iter()
        .partition(|d| d.ring == ring);
    ctx.out.decided = others;
    for d in mine {
        if !old_hint_rule(ctx.params) {
            state.lead.seen = state.lead.seen.max(d.ballot);
        }
        if let Some(c) = state.coordinator.as_mut() {
            c.on_decided(ctx, d.instance, d.ballot, &d.value);
        }
    }
    reconcile_role(ctx, state, &members);
}

/// A leader whose own acceptor cannot fill a gap for a long time: no live
/// acceptor knows those instances to be decided any more (they restarted),
/// so a new term re-proposes them from the acceptors' accepted values.
fn stalled_leader(ctx: &Ctx<'_>, state: &RingState) -> bool {
    let timeout = ctx.params.recovery_timeout * 10;
    let leading = state
        .coordinator
        .as_ref()
        .is_some_and(Coordinator::is_leading);
    let quiet = state
        .lead
        .term_started
        .is_none_or(|t| ctx.now.duration_since(t) >= timeout);
    leading && quiet && state.acceptor.stalled(ctx.now, timeout)
}

/// Starts a term with a ballot above any seen, from this node's frontier,
/// carrying over the commands parked meanwhile. If no higher ballot exists
/// (a peer sent the highest one), the node does not lead and hands its
/// parked commands on.
fn new_term(ctx: &mut Ctx<'_>, state: &mut RingState, members: &Membership) {
    let pending = std::mem::take(&mut state.parked);
    let highest = state.acceptor.promised().max(state.lead.seen);
    let Some(ballot) = highest.next_for(ctx.me()) else {
        ctx.metrics.ballots_exhausted += 1;
        forward(ctx, members, state.believed(ctx), pending);
        return;
    };
    let from = state.acceptor.frontier();
    tracing::info!(ring = %members.config.id, node = %ctx.me(), %ballot, from, "starting a term");
    let mut next = Coordinator::start(ctx, members, ballot, from);
    next.propose(ctx, pending);
    state.coordinator = Some(next);
    state.lead.term_started = Some(ctx.now);
}

/// Ends this node's term, keeping its queued commands for whoever coordinates next.
fn park_pending(state: &mut RingState) {
    if let Some(mut c) = state.coordinator.take() {
        state.parked.extend(c.take_pending());
    }
}

/// Starts, restarts or ends this node's coordinator term for the ring: a
/// term ends when another node is believed to coordinate, or when its ballot
/// is below one heard of; a term starts when this node is believed to
/// coordinate and has none (at most once per retry timeout).
fn reconcile_role(ctx: &mut Ctx<'_>, state: &mut RingState, members: &Membership) {
    let highest = state.acceptor.promised().max(state.lead.seen);
    if let Some(c) = &state.coordinator {
        let outdated = c.ballot() < highest || c.superseded().is_some();
        let believed = state.believed(ctx);
        if outdated || believed != Some(ctx.me()) {
            if c.is_leading() {
                ctx.metrics.step_downs += 1;
                tracing::info!(ring = %members.config.id, node = %ctx.me(), ballot = %c.ballot(), %highest, ?believed, "ending a term");
            }
            park_pending(state);
        }
    }
    if state.coordinator.is_some() {
        return;
    }
    let believed = state.believed(ctx);
    if believed == Some(ctx.me()) {
        let can_lead = highest.next_for(ctx.me()).is_some();
        if can_lead && state.lead.may_start_term(ctx.now, ctx.params) {
            new_term(ctx, state, members);
        }
    } else {
        let parked = std::mem::take(&mut state.parked);
        forward(ctx, members, believed, parked);
    }
}

/// Phase 1b at this node's acceptor, unless it hears a live leader other
/// than the candidate (see [`Leadership`]): then the Prepare is refused.
fn on_prepare(
    ctx: &mut Ctx<'_>,
    state: &mut RingState,
    from: NodeId,
    p: Prepare,
) -> Result<(), StorageError> {
    let fresh = p.ballot > state.acceptor.promised();
    if fresh
        && state
            .lead
            .refuses(ctx, state.members(), state.leading(), from)
    {
        ctx.metrics.prepares_refused += 1;
        let nack = super::messages::Nack {
            ring: p.ring,
            promised: state.acceptor.promised(),
        };
        ctx.send(from, Message::Nack(nack));
        return Ok(());
    }
    state.acceptor.on_prepare(ctx, from, p)
}

fn on_propose(ctx: &mut Ctx<'_>, state: &mut RingState, p: Propose) {
    ctx.metrics.commands_received += p.commands.len() as u64;
    let members = state.acceptor.members.clone();
    if let Some(c) = state.coordinator.as_mut() {
        c.propose(ctx, p.commands);
        return;
    }
    let believed = state.believed(ctx);
    if believed == Some(ctx.me()) {
        // A term starts soon (see `reconcile_role`): keep them for it.
        let room = ctx
            .params
            .max_pending_commands
            .saturating_sub(state.parked.len());
        let dropped = p.commands.len().saturating_sub(room);
        ctx.metrics.commands_dropped += dropped as u64;
        state.parked.extend(p.commands.into_iter().take(room));
    } else if p.forwarded {
        ctx.metrics.commands_dropped += p.commands.len() as u64;
    } else {
        forward(ctx, &members, believed, p.commands);
    }
}

/// Sends commands to `to`, the coordinator this node believes in; if it
/// believes in none (it hears too few), to the first peer it does not
/// suspect, which may know better.
fn forward(ctx: &mut Ctx<'_>, members: &Membership, to: Option<NodeId>, commands: Vec<Command>) {
    if commands.is_empty() {
        return;
    }
    let me = ctx.me();
    let to = to.filter(|&n| n != me).or_else(|| {
        members
            .config
            .acceptors
            .iter()
            .copied()
            .find(|&a| a != me && !ctx.detector.suspects(a, ctx.now))
    });
    let Some(to) = to else {
        ctx.metrics.commands_dropped += commands.len() as u64;
        return;
    };
    ctx.metrics.commands_forwarded += commands.len() as u64;
    let propose = Propose {
        ring: members.config.id,
        commands,
        forwarded: true,
    };
    ctx.send(to, Message::Propose(propose));
}
