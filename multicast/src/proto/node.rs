//! An acceptor process as a sans-IO state machine: its acceptor role in every
//! ring it belongs to, the coordinator role of the rings it leads, the
//! failure detector, and its storage.
//!
//! ```text
//!  driver                              AcceptorNode
//!  ------                              ------------
//!  handle_message(now, from, msg) ---> dispatch by ring and message kind
//!  handle_frame(now, from, bytes) ---> decode, count bad frames, dispatch
//!  handle_timeout(now)             ---> heartbeats, elections, catch-up, retries, leveling
//!  poll_transmit()                <--- sync storage once for all new records, then messages
//!  poll_timeout()                 <--- when to call handle_timeout next
//! ```
//!
//! A node is coordinator of a ring when every acceptor before it in the
//! ring order is suspected; it then runs Phase 1 with a ballot above any it
//! has seen. It steps down when an earlier acceptor is heard from again or a
//! higher ballot shows up, handing its queued commands to the new coordinator.
//!
//! The rings' timers tick every Δ (rate leveling) while messages other than
//! heartbeats arrive, a ring has a gap, or a coordinator has work; otherwise
//! at the pace of the slower timers (retries, recovery, heartbeats: 10 ms by
//! default), so an idle cluster does not wake a thousand times a second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::acceptor::AcceptorRing;
use super::codec;
use super::config::{ConfigError, MulticastConfig, Params};
use super::context::{Ctx, Membership};
use super::coordinator::{Coordinator, LevelView};
use super::failure::FailureDetector;
use super::messages::{Message, Propose, Transmit};
use super::metrics::NodeMetrics;
use super::outbox::Outbox;
use super::types::{Ballot, Command, Instance, NodeId, RingId};
use crate::storage::{Storage, StorageError};

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
    /// Recovery from storage failed.
    #[error("storage recovery failed: {0}")]
    Storage(#[from] StorageError),
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
}

struct RingState {
    acceptor: AcceptorRing,
    /// Rings merged with this one by some learner (rate leveling looks at those).
    partners: Vec<RingId>,
    coordinator: Option<Coordinator>,
    /// Highest ballot heard of in a Nack; a new term must exceed it.
    seen: Ballot,
    /// When this node last started a term.
    term_started: Option<Instant>,
}

impl RingState {
    fn members(&self) -> &Membership {
        &self.acceptor.members
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
    storage: Box<dyn Storage>,
    outbox: Outbox,
    dirty: bool,
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
    /// Creates the node `id` of `config`, recovering its state from `storage`.
    pub fn new(
        id: NodeId,
        config: &MulticastConfig,
        mut storage: Box<dyn Storage>,
        now: Instant,
    ) -> Result<AcceptorNode, NodeError> {
        config.validate()?;
        let mut recovered = storage.recover()?;
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
            let acceptor = AcceptorRing::new(members, state, recovered.values_lost, now);
            let seen = Ballot::ZERO;
            let state = RingState {
                acceptor,
                partners: config.partners(ring.id),
                coordinator: None,
                seen,
                term_started: None,
            };
            rings.insert(ring.id, state);
        }
        if rings.is_empty() {
            return Err(NodeError::NotAnAcceptor { node: id });
        }
        let always_fast = rings
            .values()
            .any(|s| s.partners.iter().any(|p| !rings.contains_key(p)));
        let detector = FailureDetector::new(peers, config.params.suspect_timeout, now);
        let mut node = AcceptorNode {
            id,
            params: config.params.clone(),
            ring_ids: rings.keys().copied().collect(),
            rings,
            detector,
            storage,
            outbox: Outbox::new(id),
            dirty: false,
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

    /// Where `ring` stands at this node (for diagnostics and tests).
    pub fn positions(&self, ring: RingId) -> Option<RingPositions> {
        let state = self.rings.get(&ring)?;
        Some(RingPositions {
            frontier: state.acceptor.frontier(),
            frontier_position: state.acceptor.frontier_position(),
            content_position: state.acceptor.content_position(),
            next_proposal: state.coordinator.as_ref().map(Coordinator::next),
        })
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

    /// Handles one message from `from`.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, message: Message) {
        if self.halted.is_some() {
            return;
        }
        self.detector.heard(from, now);
        self.last_now = self.last_now.max(now);
        self.flush_due = true;
        if !self.active && !matches!(message, Message::Heartbeat) {
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
            let peers: Vec<NodeId> = self.detector.peers().collect();
            for peer in peers {
                self.outbox.send(peer, Message::Heartbeat);
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

    /// The next message to send. First, the coordinators turn the commands
    /// that arrived since the last call into batches (one batch per ring for
    /// all of them, as the window allows); before the first message after
    /// new records, storage is synced once for all of them.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.halted.is_some() {
            return None;
        }
        if self.flush_due {
            self.flush_due = false;
            self.flush_coordinators();
        }
        if self.dirty && !self.outbox.remote.is_empty() {
            if let Err(e) = self.storage.sync() {
                self.halted = Some(e);
                self.outbox.remote.clear();
                return None;
            }
            self.dirty = false;
        }
        self.outbox.remote.pop_front()
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
            storage,
            outbox,
            dirty,
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
                storage: storage.as_mut(),
                dirty,
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
            }
            return;
        };
        if !self.rings.contains_key(&ring) {
            self.metrics.unknown_ring += 1;
            return;
        }
        if let Err(e) = self.dispatch_ring(now, from, ring, message) {
            self.halted = Some(e);
            self.outbox.remote.clear();
        }
    }

    fn dispatch_ring(
        &mut self,
        now: Instant,
        from: NodeId,
        ring: RingId,
        message: Message,
    ) -> Result<(), StorageError> {
        let AcceptorNode {
            params,
            rings,
            detector,
            storage,
            outbox,
            dirty,
            metrics,
            ..
        } = self;
        let state = rings.get_mut(&ring).expect("checked by dispatch");
        let mut ctx = Ctx {
            now,
            params,
            detector,
            out: outbox,
            storage: storage.as_mut(),
            dirty,
            metrics,
        };
        let member = state.members().is_member(from);
        let peer_only = !matches!(message, Message::Propose(_) | Message::LearnRequest(_));
        if peer_only && !member {
            ctx.metrics.unknown_peer += 1;
            return Ok(());
        }
        match message {
            Message::Propose(p) => on_propose(&mut ctx, state, p),
            Message::Prepare(p) => state.acceptor.on_prepare(&mut ctx, from, p)?,
            Message::Promise(p) => {
                // The promiser knows every instance below its frontier to be
                // decided: a gap this node's acceptor must fill.
                state.acceptor.note_horizon(p.frontier);
                let members = state.acceptor.members.clone();
                if let Some(c) = state.coordinator.as_mut() {
                    c.on_promise(&mut ctx, &members, from, p);
                }
            }
            Message::Nack(n) => state.seen = state.seen.max(n.promised),
            Message::Accept(a) => state.acceptor.on_accept(&mut ctx, a)?,
            Message::Decide(d) => state.acceptor.on_decide(&mut ctx, d)?,
            Message::LearnRequest(r) => state.acceptor.on_learn_request(&mut ctx, from, r),
            Message::Trimmed(t) => state.acceptor.on_trimmed(&mut ctx, t)?,
            Message::Heartbeat => {}
        }
        settle(&mut ctx, state);
        Ok(())
    }

    fn tick_ring(&mut self, now: Instant, ring: RingId) {
        let view = level_view(&self.rings, now, &self.params, ring);
        let AcceptorNode {
            params,
            rings,
            detector,
            storage,
            outbox,
            dirty,
            metrics,
            halted,
            ..
        } = self;
        let state = rings.get_mut(&ring).expect("ring exists");
        let mut ctx = Ctx {
            now,
            params,
            detector,
            out: outbox,
            storage: storage.as_mut(),
            dirty,
            metrics,
        };
        if let Err(e) = state.acceptor.tick(&mut ctx) {
            *halted = Some(e);
            return;
        }
        settle(&mut ctx, state);
        let members = state.acceptor.members.clone();
        if stalled_leader(&ctx, state) {
            new_term(&mut ctx, state, &members);
        }
        if let Some(c) = state.coordinator.as_mut() {
            c.tick(&mut ctx, &members, view);
        }
    }
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
    let content_max = partners
        .iter()
        .filter_map(|p| rings.get(p))
        .map(|r| r.acceptor.content_position())
        .max()
        .unwrap_or(0);
    let unobserved = partners.iter().any(|p| !rings.contains_key(p));
    LevelView {
        busy_max,
        content_max,
        unobserved,
    }
}

/// After any input: hand new decisions to the coordinator, then make sure
/// the right node coordinates.
fn settle(ctx: &mut Ctx<'_>, state: &mut RingState) {
    let members = state.acceptor.members.clone();
    let ring = members.config.id;
    if let Some(c) = state.coordinator.as_mut() {
        for &(r, instance) in &ctx.out.decided {
            if r == ring {
                c.on_decided(instance);
            }
        }
    }
    ctx.out.decided.clear();
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
        .term_started
        .is_none_or(|t| ctx.now.duration_since(t) >= timeout);
    leading && quiet && state.acceptor.stalled(ctx.now, timeout)
}

/// Starts a term with a ballot above any seen, from this node's frontier,
/// carrying over the commands queued in the previous term. If no higher
/// ballot exists (a peer sent the highest one), the node does not lead and
/// hands its queued commands on.
fn new_term(ctx: &mut Ctx<'_>, state: &mut RingState, members: &Membership) {
    let pending = state
        .coordinator
        .take()
        .map(|mut c| c.take_pending())
        .unwrap_or_default();
    let highest = state.acceptor.promised().max(state.seen);
    let Some(ballot) = highest.next_for(ctx.me()) else {
        ctx.metrics.ballots_exhausted += 1;
        forward(ctx, members, pending);
        return;
    };
    let from = state.acceptor.frontier();
    let mut next = Coordinator::start(ctx, members, ballot, from);
    next.propose(ctx, pending);
    state.coordinator = Some(next);
    state.term_started = Some(ctx.now);
}

/// Starts, restarts or ends this node's coordinator term for the ring.
fn reconcile_role(ctx: &mut Ctx<'_>, state: &mut RingState, members: &Membership) {
    let eligible = members.believed_coordinator(ctx.now, ctx.detector) == ctx.me();
    let highest = state.acceptor.promised().max(state.seen);
    let can_lead = highest.next_for(ctx.me()).is_some();
    match state.coordinator.as_mut() {
        None if eligible && can_lead => new_term(ctx, state, members),
        Some(c) if eligible && c.ballot() < highest => new_term(ctx, state, members),
        Some(c) if !eligible => {
            let pending = c.take_pending();
            state.coordinator = None;
            forward(ctx, members, pending);
        }
        _ => {}
    }
}

fn on_propose(ctx: &mut Ctx<'_>, state: &mut RingState, p: Propose) {
    ctx.metrics.commands_received += p.commands.len() as u64;
    let members = state.acceptor.members.clone();
    match state.coordinator.as_mut() {
        Some(c) => c.propose(ctx, p.commands),
        None if p.forwarded => ctx.metrics.commands_dropped += p.commands.len() as u64,
        None => forward(ctx, &members, p.commands),
    }
}

/// Sends commands to the coordinator this node believes in.
fn forward(ctx: &mut Ctx<'_>, members: &Membership, commands: Vec<Command>) {
    if commands.is_empty() {
        return;
    }
    let to = members.believed_coordinator(ctx.now, ctx.detector);
    if to == ctx.me() {
        ctx.metrics.commands_dropped += commands.len() as u64;
        return;
    }
    ctx.metrics.commands_forwarded += commands.len() as u64;
    let propose = Propose {
        ring: members.config.id,
        commands,
        forwarded: true,
    };
    ctx.send(to, Message::Propose(propose));
}
