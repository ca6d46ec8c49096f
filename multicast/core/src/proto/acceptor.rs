//! The acceptor role of one ring (docs/ARCHITECTURE.md, "The atomic multicast").
//!
//! An acceptor keeps the highest ballot it promised and, per instance, the
//! value it accepted and whether it knows that value to be decided. It
//! answers Prepares with Promises (or Nacks), votes on Accepts and passes
//! them on along the ring, decides when its vote is the `f+1`-th, relays
//! decisions around the ring, serves learn requests, catches up on gaps,
//! and trims what is decided and older than the retention.
//!
//! Invariants (asserted in debug builds):
//! - `trimmed_below <= frontier`; every instance below `frontier` is decided;
//! - `promised` never decreases;
//! - a vote counts towards a quorum only once its record is durable: the
//!   node syncs before it releases any message, except a coordinator's
//!   Accept under durable storage, whose vote counts once its `Durable`
//!   notice says so (see [`super::overlap`]).

use std::collections::BTreeMap;
use std::time::Instant;

use super::catchup::Catchup;
use super::config::old_hint_rule;
use super::context::{Ctx, Membership};
use super::messages::{
    Accept, Checkpointed, Chosen, Decide, Durable, LearnRequest, Message, Nack, Prepare, Promise,
    PromisedSlot, Trimmed,
};
use super::outbox::Decided;
use super::overlap::Overlap;
use super::types::{Ballot, Instance, NodeId, RingId, Value};
use crate::storage::{Record, RecoveredRing, StorageError};

/// How far beyond what it knows to be decided an acceptor votes, in windows.
const ACCEPT_AHEAD_WINDOWS: u64 = 4;

#[derive(Clone, Debug)]
struct Slot {
    ballot: Ballot,
    value: Value,
    decided: bool,
}

/// Acceptor state of one ring at one node.
pub(crate) struct AcceptorRing {
    pub(crate) members: Membership,
    promised: Ballot,
    log: BTreeMap<Instance, Slot>,
    frontier: Instance,
    frontier_position: u64,
    /// Merge position just past the last batch below the frontier: what
    /// merged rings must reach so that no learner waits on this one.
    content_position: u64,
    trimmed_below: Instance,
    trim_position: u64,
    vote_bound: Instance,
    /// Set after a restart that lost accepted values: Phase 1 abstention
    /// until `frontier` reaches it.
    amnesiac_until: Option<Instance>,
    horizon: Instance,
    /// Progress of applying `decided_below` hints: (ballot, scanned up to).
    hint: (Ballot, Instance),
    catchup: Catchup,
    last_batch_at: Option<Instant>,
    /// Frontier last written to storage.
    persisted_frontier: Instance,
    /// What the instances kept below the frontier count against
    /// `retention_bytes`.
    decided_bytes: u64,
    /// Per replica, the first instance its newest durable checkpoint does
    /// not hold.
    checkpointed: BTreeMap<NodeId, Instance>,
    /// The coordinator's write overlapping its successor's.
    overlap: Overlap,
}

/// What a decided instance counts against `retention_bytes`.
fn slot_bytes(value: &Value) -> u64 {
    let value = match value {
        Value::Batch(batch) => batch.encoded().len() as u64,
        Value::Skip(_) => 0,
    };
    value + super::config::SLOT_BYTES
}

/// The recovered frontier: the highest one written, cut at the first
/// instance whose value is missing (never the case for a log written by
/// this code, but recovery does not trust it blindly).
fn recovered_frontier(r: &RecoveredRing) -> (Instance, u64) {
    if r.frontier <= r.trimmed_below {
        return (r.trimmed_below, r.trim_position);
    }
    let mut position = r.trim_position;
    for instance in r.trimmed_below..r.frontier {
        match r.accepted.get(&instance) {
            Some((_, value)) => position = position.saturating_add(value.positions()),
            None => return (instance, position),
        }
    }
    debug_assert_eq!(position, r.frontier_position);
    (r.frontier, r.frontier_position)
}

impl AcceptorRing {
    pub(crate) fn new(
        members: Membership,
        recovered: RecoveredRing,
        values_lost: bool,
        params: &super::config::Params,
        now: Instant,
    ) -> Self {
        let trimmed = recovered.trimmed_below;
        let (frontier, frontier_position) = recovered_frontier(&recovered);
        let amnesiac_until =
            (values_lost && recovered.vote_bound > frontier).then_some(recovered.vote_bound);
        let recorded = recovered.decided;
        let log = recovered
            .accepted
            .into_iter()
            .map(|(i, (ballot, value))| {
                let decided = i < frontier || recorded.contains(&i);
                (
                    i,
                    Slot {
                        ballot,
                        value,
                        decided,
                    },
                )
            })
            .collect::<BTreeMap<Instance, Slot>>();
        let overlap = Overlap::new(!values_lost, recovered.promised);
        let decided_bytes = log
            .range(..frontier)
            .map(|(_, s)| slot_bytes(&s.value))
            .sum();
        AcceptorRing {
            members,
            promised: recovered.promised,
            log,
            frontier,
            frontier_position,
            content_position: frontier_position,
            trimmed_below: trimmed,
            trim_position: recovered.trim_position,
            vote_bound: recovered.vote_bound,
            amnesiac_until,
            horizon: frontier,
            hint: (Ballot::ZERO, frontier),
            // The ring does not wait on an acceptor that catches up: it does
            // so at a pace that leaves the live traffic most of the machine.
            catchup: Catchup::new(frontier, now, params.recovery_timeout / 2, 1),
            last_batch_at: None,
            persisted_frontier: frontier,
            decided_bytes,
            checkpointed: BTreeMap::new(),
            overlap,
        }
    }

    fn ring(&self) -> RingId {
        self.members.config.id
    }

    pub(crate) fn promised(&self) -> Ballot {
        self.promised
    }

    pub(crate) fn trimmed_below(&self) -> Instance {
        self.trimmed_below
    }

    pub(crate) fn frontier(&self) -> Instance {
        self.frontier
    }

    pub(crate) fn frontier_position(&self) -> u64 {
        self.frontier_position
    }

    pub(crate) fn content_position(&self) -> u64 {
        self.content_position
    }

    pub(crate) fn is_amnesiac(&self) -> bool {
        self.amnesiac_until.is_some()
    }

    /// Every value this acceptor holds as decided, in instance order.
    pub(crate) fn decided_values(&self) -> impl Iterator<Item = (Instance, &Value)> + '_ {
        self.log
            .iter()
            .filter(|&(&i, s)| s.decided || i < self.frontier)
            .map(|(&i, s)| (i, &s.value))
    }

    /// The instance below which this node may have forgotten votes, while it does.
    pub(crate) fn amnesiac_until(&self) -> Option<Instance> {
        self.amnesiac_until
    }

    /// Whether a batch was decided here within `window` before `now`.
    pub(crate) fn busy_since(&self, now: Instant, window: std::time::Duration) -> bool {
        self.last_batch_at
            .is_some_and(|t| now.duration_since(t) < window)
    }

    /// Whether decisions beyond the frontier are known (a gap to fill).
    pub(crate) fn has_gap(&self) -> bool {
        self.horizon > self.frontier
    }

    /// Whether a gap has blocked the frontier for `timeout` although
    /// decisions beyond it are known.
    pub(crate) fn stalled(&self, now: Instant, timeout: std::time::Duration) -> bool {
        self.has_gap() && self.catchup.stalled_for(now) >= timeout
    }

    fn is_decided(&self, instance: Instance) -> bool {
        instance < self.frontier || self.log.get(&instance).is_some_and(|s| s.decided)
    }

    /// Some instance below `decided_below` is known to be decided elsewhere:
    /// a gap up to it is filled by catch-up.
    pub(crate) fn note_horizon(&mut self, decided_below: Instance) {
        self.horizon = self.horizon.max(decided_below);
    }

    fn raise_promise(&mut self, ballot: Ballot) {
        debug_assert!(ballot >= self.promised, "promises never go backwards");
        self.promised = ballot;
    }

    /// Phase 1b.
    pub(crate) fn on_prepare(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: super::types::NodeId,
        p: Prepare,
    ) -> Result<(), StorageError> {
        if p.ballot < self.promised {
            ctx.metrics.stale_ballot += 1;
            let nack = Nack {
                ring: p.ring,
                promised: self.promised,
            };
            ctx.send(from, Message::Nack(nack));
            return Ok(());
        }
        if p.ballot > self.promised {
            self.raise_promise(p.ballot);
            ctx.append(Record::Promise {
                ring: p.ring,
                ballot: p.ballot,
            })?;
        }
        if self.is_amnesiac() {
            ctx.metrics.amnesiac_abstentions += 1;
            return Ok(());
        }
        let start = p.from.max(self.frontier);
        let slots = self
            .log
            .range(start..)
            .map(|(&instance, s)| PromisedSlot {
                instance,
                ballot: s.ballot,
                value: s.value.clone(),
                decided: s.decided,
            })
            .collect();
        let promise = Promise {
            ring: p.ring,
            ballot: p.ballot,
            frontier: self.frontier,
            frontier_position: self.frontier_position,
            slots,
        };
        ctx.send(from, Message::Promise(promise));
        Ok(())
    }

    /// Phase 2: vote, then forward along the ring or decide.
    ///
    /// A ballot below the promise is refused first, even for an instance
    /// already decided: the refusal carries the higher ballot, and that is
    /// how a coordinator cut off from its ring learns that it was replaced.
    /// The coordinator's `decided_below` hint is applied only after that check.
    pub(crate) fn on_accept(&mut self, ctx: &mut Ctx<'_>, a: Accept) -> Result<(), StorageError> {
        self.note_horizon(a.decided_below);
        if a.ballot < self.promised && !old_hint_rule(ctx.params) {
            self.refuse(ctx, &a);
            return Ok(());
        }
        self.apply_hint(ctx, a.ballot, a.decided_below)?;
        if self.is_decided(a.instance) {
            ctx.metrics.duplicates += 1;
            // The coordinator may be re-proposing something decided long
            // ago: release its window slot, locally or with a Decide.
            if a.ballot.node == ctx.me() {
                if let Some(slot) = self.log.get(&a.instance).filter(|s| s.decided) {
                    ctx.out.decided.push(Decided {
                        ring: a.ring,
                        instance: a.instance,
                        ballot: slot.ballot,
                        value: slot.value.clone(),
                    });
                }
            } else {
                self.answer_decided(ctx, a.instance, a.ballot.node);
            }
            return Ok(());
        }
        if a.ballot < self.promised {
            self.refuse(ctx, &a);
            return Ok(());
        }
        let known = self.frontier.max(self.horizon);
        let limit = known.saturating_add(ctx.params.window.saturating_mul(ACCEPT_AHEAD_WINDOWS));
        if a.instance >= limit {
            ctx.metrics.beyond_window += 1;
            return Ok(());
        }
        self.vote(ctx, a)
    }

    /// Refuses an Accept below the promise, naming the promised ballot.
    fn refuse(&self, ctx: &mut Ctx<'_>, a: &Accept) {
        ctx.metrics.stale_ballot += 1;
        let nack = Nack {
            ring: a.ring,
            promised: self.promised,
        };
        ctx.send(a.ballot.node, Message::Nack(nack));
    }

    fn vote(&mut self, ctx: &mut Ctx<'_>, a: Accept) -> Result<(), StorageError> {
        self.raise_promise(a.ballot);
        if a.instance >= self.vote_bound {
            self.vote_bound = a.instance.saturating_add(ctx.params.vote_bound_reserve);
            ctx.append(Record::VoteBound {
                ring: a.ring,
                bound: self.vote_bound,
            })?;
        }
        ctx.append(Record::Accept {
            ring: a.ring,
            instance: a.instance,
            ballot: a.ballot,
            value: a.value.clone(),
        })?;
        let slot = Slot {
            ballot: a.ballot,
            value: a.value.clone(),
            decided: false,
        };
        self.log.insert(a.instance, slot);
        let mut votes = a.votes;
        votes.insert(self.members.me);
        let cast = votes.count(self.members.n());
        let pending = a.coordinator_pending && !self.overlap.covers(a.ballot, a.instance);
        if cast - usize::from(pending) >= self.members.quorum() {
            ctx.metrics.decided += 1;
            let coordinator_voted = self
                .members
                .config
                .position(a.ballot.node)
                .is_some_and(|pos| votes.contains(pos));
            self.decide_here(ctx, a.instance, a.ballot, a.value, coordinator_voted)?;
        } else if cast >= self.members.quorum() {
            // A quorum once the coordinator's vote is on its disk.
            self.overlap.wait(a.ballot, a.instance);
        } else if let Some(next) = self.members.successor(ctx, |pos| !votes.contains(pos)) {
            self.pass_on(ctx, next, Accept { votes, ..a });
        }
        // Otherwise too few live acceptors remain: the coordinator retries.
        Ok(())
    }

    /// Sends an Accept with this node's vote to `next`: at once if this
    /// node coordinates it and its storage keeps votes (the vote pending
    /// until its [`Durable`]), else after this node's sync.
    fn pass_on(&mut self, ctx: &mut Ctx<'_>, next: NodeId, a: Accept) {
        if a.ballot.node == ctx.me() && self.overlap.may_send_early(a.ballot) {
            ctx.metrics.early_accepts += 1;
            self.overlap.sent_early(a.ballot, a.instance);
            let early = Accept {
                coordinator_pending: true,
                ..a
            };
            ctx.send_early(next, Message::Accept(early));
        } else {
            ctx.send(next, Message::Accept(a));
        }
    }

    /// The driver took every record appended so far (see [`Overlap::taken`]).
    pub(crate) fn taken(&mut self) {
        self.overlap.taken(self.promised);
    }

    /// The driver synced every record it took: tell the ring's other
    /// acceptors which of this coordinator's early votes are durable.
    pub(crate) fn synced(&mut self, ctx: &mut Ctx<'_>) {
        for (ballot, ranges) in self.overlap.synced() {
            let durable = Message::Durable(Durable {
                ring: self.ring(),
                ballot,
                ranges,
            });
            let me = ctx.me();
            for &peer in self.members.config.acceptors.iter().filter(|&&a| a != me) {
                ctx.send(peer, durable.clone());
            }
        }
    }

    /// The coordinator `from` says its votes in `d.ranges` are durable:
    /// decide the instances that waited for that.
    pub(crate) fn on_durable(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        d: Durable,
    ) -> Result<(), StorageError> {
        if d.ballot.node != from {
            ctx.metrics.unknown_peer += 1;
            return Ok(());
        }
        for instance in self.overlap.noticed(d.ballot, &d.ranges) {
            let Some(slot) = self.log.get(&instance) else {
                continue;
            };
            if slot.ballot != d.ballot || slot.decided {
                continue;
            }
            let value = slot.value.clone();
            ctx.metrics.decided += 1;
            ctx.metrics.durable_waits += 1;
            self.decide_here(ctx, instance, d.ballot, value, true)?;
        }
        Ok(())
    }

    /// This node cast the deciding vote: tell the learners and relay the
    /// decision around the ring towards the coordinator, which gets it
    /// without the value if it voted for it (see [`Chosen`]).
    fn decide_here(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: Instance,
        ballot: Ballot,
        value: Value,
        coordinator_voted: bool,
    ) -> Result<(), StorageError> {
        self.mark_decided(ctx, instance, ballot, value.clone())?;
        let decide = Decide {
            ring: self.ring(),
            instance,
            ballot,
            value,
            relay: false,
            hops: 0,
        };
        for &learner in &self.members.config.learners {
            ctx.send(learner, Message::Decide(decide.clone()));
        }
        if ballot.node != ctx.me() {
            // The coordinator hears it directly: its window must not depend on
            // every link of the ring (a relay through a node whose links are
            // half back after a partition left the coordinator waiting for
            // retransmissions, one retry timeout per window).
            let direct = match coordinator_voted {
                true => Message::Chosen(Chosen {
                    ring: decide.ring,
                    instance,
                    ballot,
                }),
                false => Message::Decide(decide.clone()),
            };
            ctx.send(ballot.node, direct);
            self.relay(
                ctx,
                Decide {
                    relay: true,
                    hops: 0,
                    ..decide
                },
            );
        }
        Ok(())
    }

    /// Passes a decision on to the next acceptor in ring order that is not
    /// suspected and not its coordinator (which the decider told directly),
    /// until it has visited the other acceptors once.
    fn relay(&self, ctx: &mut Ctx<'_>, d: Decide) {
        let others = self.members.n().saturating_sub(2);
        if usize::from(d.hops) >= others {
            return;
        }
        let coordinator = self.members.config.position(d.ballot.node);
        let next = self.members.successor(ctx, |pos| Some(pos) != coordinator);
        if let Some(next) = next {
            let relay = Decide {
                hops: d.hops.saturating_add(1),
                ..d
            };
            ctx.send(next, Message::Decide(relay));
        }
    }

    /// A decision, relayed around the ring or answering a learn request.
    pub(crate) fn on_decide(&mut self, ctx: &mut Ctx<'_>, d: Decide) -> Result<(), StorageError> {
        self.note_horizon(d.instance.saturating_add(1));
        if self.is_decided(d.instance) {
            ctx.metrics.duplicates += 1;
            ctx.out.decided.push(Decided {
                ring: d.ring,
                instance: d.instance,
                ballot: d.ballot,
                value: d.value.clone(),
            });
        } else {
            self.mark_decided(ctx, d.instance, d.ballot, d.value.clone())?;
        }
        if d.relay && d.ballot.node != ctx.me() {
            self.relay(ctx, d);
        }
        Ok(())
    }

    /// A decision without its value: taken from this acceptor's vote at
    /// the same ballot, else left to gap recovery (the horizon moves past it).
    pub(crate) fn on_chosen(&mut self, ctx: &mut Ctx<'_>, c: Chosen) -> Result<(), StorageError> {
        self.note_horizon(c.instance.saturating_add(1));
        let held = self.log.get(&c.instance).filter(|s| s.ballot == c.ballot);
        let Some(value) = held.map(|s| s.value.clone()) else {
            ctx.metrics.chosen_unknown += 1;
            return Ok(());
        };
        let decide = Decide {
            ring: c.ring,
            instance: c.instance,
            ballot: c.ballot,
            value,
            relay: false,
            hops: 0,
        };
        self.on_decide(ctx, decide)
    }

    fn answer_decided(&self, ctx: &mut Ctx<'_>, instance: Instance, to: super::types::NodeId) {
        if let Some(slot) = self.log.get(&instance).filter(|s| s.decided) {
            let decide = Decide {
                ring: self.ring(),
                instance,
                ballot: slot.ballot,
                value: slot.value.clone(),
                relay: false,
                hops: 0,
            };
            ctx.send(to, Message::Decide(decide));
        }
    }

    /// Records that `value` was decided in `instance` (at `ballot`). A value
    /// this node did not accept is logged, so that a durable acceptor keeps
    /// every decided value it knows across a restart.
    fn mark_decided(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: Instance,
        ballot: Ballot,
        value: Value,
    ) -> Result<(), StorageError> {
        if instance < self.frontier {
            return Ok(());
        }
        if matches!(value, Value::Batch(_)) {
            self.last_batch_at = Some(ctx.now);
        }
        self.overlap.decided(instance);
        let known = self.log.get(&instance).is_some_and(|s| s.value == value);
        if !known {
            let record = Record::Decided {
                ring: self.ring(),
                instance,
                ballot,
                value: value.clone(),
            };
            ctx.append(record)?;
        }
        let ring = self.ring();
        let slot = self.log.entry(instance).or_insert_with(|| Slot {
            ballot,
            value: value.clone(),
            decided: true,
        });
        let same = slot.value == value;
        if slot.decided && !same {
            ctx.metrics.conflicting_decisions += 1;
        }
        if !same {
            slot.ballot = ballot;
            slot.value = value;
        }
        slot.decided = true;
        let decided = Decided {
            ring,
            instance,
            ballot: slot.ballot,
            value: slot.value.clone(),
        };
        ctx.out.decided.push(decided);
        self.advance_frontier(ctx)
    }

    /// Marks decided the slots below `decided_below` that were accepted in
    /// `ballot`: one ballot proposes one value per instance.
    fn apply_hint(
        &mut self,
        ctx: &mut Ctx<'_>,
        ballot: Ballot,
        decided_below: Instance,
    ) -> Result<(), StorageError> {
        if self.hint.0 != ballot {
            self.hint = (ballot, self.frontier);
        }
        let start = self.hint.1.max(self.frontier);
        if decided_below <= start {
            return Ok(());
        }
        let ring = self.ring();
        for (&instance, slot) in self.log.range_mut(start..decided_below) {
            if slot.ballot == ballot && !slot.decided {
                slot.decided = true;
                if matches!(slot.value, Value::Batch(_)) {
                    self.last_batch_at = Some(ctx.now);
                }
                ctx.out.decided.push(Decided {
                    ring,
                    instance,
                    ballot,
                    value: slot.value.clone(),
                });
            }
        }
        self.hint.1 = decided_below;
        self.advance_frontier(ctx)
    }

    /// Moves the frontier over decided instances; every `window` instances
    /// the frontier is written to storage.
    fn advance_frontier(&mut self, ctx: &mut Ctx<'_>) -> Result<(), StorageError> {
        let from = self.frontier;
        while let Some(slot) = self.log.get(&self.frontier).filter(|s| s.decided) {
            if matches!(slot.value, Value::Batch(_)) {
                // Just past the batch's commands, which come at its first position.
                self.content_position = self.frontier_position.saturating_add(1);
            }
            self.frontier_position = self
                .frontier_position
                .saturating_add(slot.value.positions());
            self.decided_bytes += slot_bytes(&slot.value);
            self.frontier += 1;
        }
        if self.frontier > from {
            self.overlap.forget_below(self.frontier);
        }
        if self
            .amnesiac_until
            .is_some_and(|until| self.frontier >= until)
        {
            self.amnesiac_until = None;
        }
        debug_assert!(self.trimmed_below <= self.frontier);
        if self.frontier >= self.persisted_frontier.saturating_add(ctx.params.window) {
            self.persisted_frontier = self.frontier;
            ctx.append(Record::Frontier {
                ring: self.ring(),
                below: self.frontier,
                position: self.frontier_position,
            })?;
        }
        Ok(())
    }

    /// Serves decided instances to a learner or a lagging acceptor.
    pub(crate) fn on_learn_request(
        &self,
        ctx: &mut Ctx<'_>,
        from: super::types::NodeId,
        r: LearnRequest,
    ) {
        ctx.metrics.learn_requests += 1;
        let mut start = r.from;
        if start < self.trimmed_below {
            let trimmed = Trimmed {
                ring: r.ring,
                below: self.trimmed_below,
                position: self.trim_position,
            };
            ctx.send(from, Message::Trimmed(trimmed));
            start = self.trimmed_below;
        }
        let end = r.to.min(start.saturating_add(ctx.params.recovery_batch));
        if end <= start {
            return;
        }
        for (&instance, slot) in self.log.range(start..end).filter(|(_, s)| s.decided) {
            let decide = Decide {
                ring: r.ring,
                instance,
                ballot: slot.ballot,
                value: slot.value.clone(),
                relay: false,
                hops: 0,
            };
            ctx.send(from, Message::Decide(decide));
        }
    }

    /// A peer no longer keeps what this node misses: everything below
    /// `below` is decided, so jump there.
    pub(crate) fn on_trimmed(&mut self, ctx: &mut Ctx<'_>, t: Trimmed) -> Result<(), StorageError> {
        if t.below <= self.frontier {
            return Ok(());
        }
        self.log = self.log.split_off(&t.below);
        self.decided_bytes = 0;
        self.frontier = t.below;
        self.frontier_position = t.position;
        self.content_position = self.content_position.max(t.position);
        self.trimmed_below = t.below;
        self.trim_position = t.position;
        self.note_horizon(t.below);
        self.overlap.forget_below(t.below);
        ctx.append(Record::Trim {
            ring: t.ring,
            below: t.below,
            position: t.position,
        })?;
        self.advance_frontier(ctx)
    }

    /// Periodic work: ask for missing decisions, trim old ones.
    pub(crate) fn tick(&mut self, ctx: &mut Ctx<'_>) -> Result<(), StorageError> {
        let peers = self.members.live_peers(ctx);
        let ring = self.ring();
        if let Some((peer, request)) = self.catchup.poll(
            ctx.now,
            ring,
            self.frontier,
            self.horizon,
            &peers,
            ctx.params,
        ) {
            ctx.send(peer, Message::LearnRequest(request));
        }
        self.trim(ctx)
    }

    /// A replica's durable checkpoint holds every instance below `c.below`.
    pub(crate) fn on_checkpointed(&mut self, ctx: &mut Ctx<'_>, from: NodeId, c: Checkpointed) {
        if !self.members.config.learners.contains(&from) {
            ctx.metrics.unknown_peer += 1;
            return;
        }
        let reported = self.checkpointed.entry(from).or_default();
        *reported = (*reported).max(c.below);
    }

    /// Where to trim: below what enough replicas have checkpointed, and
    /// in any case within `retention` instances and `retention_bytes`;
    /// never past the frontier (what is not known decided stays).
    fn trim_point(&self, params: &super::config::Params) -> Instance {
        let learners = self.members.config.learners.len();
        let needed = match params.trim_replicas {
            0 => learners,
            n => n.min(learners),
        };
        let mut reports: Vec<Instance> = self.checkpointed.values().copied().collect();
        reports.sort_unstable_by_key(|&r| std::cmp::Reverse(r));
        let by_replicas = match needed {
            0 => 0,
            n => reports.get(n - 1).copied().unwrap_or(0),
        };
        // Hysteresis: trim by count once half a retention more is kept.
        let retention = params.retention;
        let kept = self.frontier - self.trimmed_below;
        let by_count = if kept > retention.saturating_add(retention / 2) {
            self.frontier - retention
        } else {
            0
        };
        let mut by_bytes = 0;
        if self.decided_bytes > params.retention_bytes {
            // Down to three quarters of the bound, not one trim per instance.
            let mut left = self.decided_bytes;
            let target = params.retention_bytes / 4 * 3;
            for (&instance, slot) in self.log.range(..self.frontier) {
                if left <= target {
                    break;
                }
                left -= slot_bytes(&slot.value);
                by_bytes = instance + 1;
            }
        }
        by_replicas.max(by_count).max(by_bytes).min(self.frontier)
    }

    fn trim(&mut self, ctx: &mut Ctx<'_>) -> Result<(), StorageError> {
        let below = self.trim_point(ctx.params);
        if below <= self.trimmed_below {
            return Ok(());
        }
        debug_assert!(
            below <= self.frontier && below >= self.trimmed_below,
            "trim never passes what is decided, and never goes back"
        );
        let kept_log = self.log.split_off(&below);
        let removed = std::mem::replace(&mut self.log, kept_log);
        let (positions, bytes) = removed.values().fold((0u64, 0u64), |(p, b), s| {
            (
                p.saturating_add(s.value.positions()),
                b + slot_bytes(&s.value),
            )
        });
        self.decided_bytes = self.decided_bytes.saturating_sub(bytes);
        self.trimmed_below = below;
        self.trim_position = self.trim_position.saturating_add(positions);
        ctx.append(Record::Trim {
            ring: self.ring(),
            below,
            position: self.trim_position,
        })
    }
}
