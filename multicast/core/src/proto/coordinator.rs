//! The coordinator role of one ring (docs/ARCHITECTURE.md, "The atomic multicast").
//!
//! ```text
//!   start ──Prepare(ballot, from)──> Preparing ──f+1 Promises──> Leading
//!                                        │                         │ propose / tick
//!                                        └──── retry Prepare       ├─ batches (size, time) within the window
//!                                                                  ├─ retransmit Accepts that got no decision
//!                                                                  └─ rate leveling every Δ
//! ```
//!
//! Phase 1 runs once per term, for every instance from the first one the
//! coordinator does not know to be decided. The coordinator's own acceptor
//! promises last, once the others' promises make a quorum with it: a
//! candidate whose Prepares are refused (a live leader is heard elsewhere)
//! leaves no higher promise behind at its own acceptor, which would
//! otherwise refuse the live leader's Accepts and end its term. From the promises it re-proposes,
//! per instance, a value reported decided, else the value of the highest
//! ballot, and fills holes with a skip of one; new proposals follow.
//!
//! Accepts go to the coordinator's own acceptor first (through the node's
//! loopback), which votes and passes them on along the ring.
//!
//! A batch of a ring that is behind its busy partners spans the positions
//! up to theirs (the position their coordinators propose next, when they
//! are led from this node): it carries the skip a leveling tick would
//! otherwise add as an instance of its own, so that skips are left only for
//! spells with nothing queued (docs/journal.md, "Spanning batches").
//!
//! Rate leveling: every Δ, a ring with no client traffic (idle) advances its
//! merge position to λ·Δ beyond the busy rings it is merged with (as this
//! node observes them); a busy ring only catches up with them. Rings that no
//! learner merges together ignore each other (in P-SMR, the threads' rings
//! follow `g_all` and `g_all` follows them, but two threads' rings never
//! chase each other, which would ratchet positions up for nothing). An idle
//! ring re-leads only when its margin has shrunk to λ·Δ/2. Every ring, busy
//! or idle, reaches the position just past its partners' last batches (which
//! only grows with real batches, so it cannot ratchet): a partner's batch
//! never waits on it for long, even when its busy spell went unobserved (a
//! new coordinator, a crash). A ring with no busy partner stays where it is,
//! unless some partner is hosted on other nodes and cannot be observed: then
//! it advances λ·Δ every Δ (the design's deficit rule). Idle rings thus lead, so a
//! learner merging a busy ring with idle ones never waits on them, and no
//! global start time or rate needs to be agreed: a ring that falls behind
//! jumps to the others. When no ring is busy, no learner waits on anything,
//! and an idle cluster stays quiet.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::config::old_hint_rule;
use super::context::{Ctx, Membership};
use super::messages::{Accept, Message, Prepare, Promise};
use super::types::{Ballot, Batch, Command, Instance, NodeId, Value, VoteSet};

struct InFlight {
    value: Value,
    sent_at: Instant,
}

enum Phase {
    Preparing {
        from: Instance,
        promises: BTreeMap<NodeId, Promise>,
        sent_at: Instant,
    },
    Leading,
}

/// What this node sees of the rings merged with this one, for rate leveling.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LevelView {
    /// Highest merge position among the busy rings merged with this one.
    pub(crate) busy_max: Option<u64>,
    /// Highest position just past a batch among the rings merged with this
    /// one: this ring must reach it, or that batch waits.
    pub(crate) content_max: u64,
    /// Some ring merged with this one is not hosted at this node.
    pub(crate) unobserved: bool,
}

/// Coordinator state of one ring at the node that leads it.
pub(crate) struct Coordinator {
    ballot: Ballot,
    phase: Phase,
    pending: VecDeque<Command>,
    pending_bytes: usize,
    pending_since: Option<Instant>,
    in_flight: BTreeMap<Instance, InFlight>,
    /// Values Phase 1 found for instances from the base on, re-proposed in
    /// order as the window allows.
    backlog: VecDeque<Value>,
    next_instance: Instance,
    next_position: u64,
    next_level: Instant,
    next_idle_skip: Instant,
    last_batch_at: Option<Instant>,
    /// The highest ballot of a decision this coordinator learned that is
    /// above its own: its term is over, and it sends nothing more.
    superseded: Option<Ballot>,
    /// Instances up to which the ring must decide even when idle, so that
    /// acceptors that restarted without their votes leave amnesia.
    skip_to: Instance,
}

impl Coordinator {
    /// Starts a term with `ballot`: Phase 1 for every instance from `from`.
    pub(crate) fn start(
        ctx: &mut Ctx<'_>,
        members: &Membership,
        ballot: Ballot,
        from: Instance,
    ) -> Coordinator {
        ctx.metrics.elections += 1;
        let mut c = Coordinator {
            ballot,
            phase: Phase::Preparing {
                from,
                promises: BTreeMap::new(),
                sent_at: ctx.now,
            },
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_since: None,
            in_flight: BTreeMap::new(),
            backlog: VecDeque::new(),
            next_instance: from,
            next_position: 0,
            next_level: ctx.now,
            next_idle_skip: ctx.now,
            last_batch_at: None,
            superseded: None,
            skip_to: 0,
        };
        let me = ctx.me();
        c.send_prepare(ctx, members, |a| a != me);
        c.ask_self_when_due(ctx, members);
        c
    }

    /// Sends the Prepare to this node's own acceptor once the promises of the
    /// others make a quorum with it (again at every retry while it has not
    /// promised: it may have refused while it still heard the old leader).
    fn ask_self_when_due(&mut self, ctx: &mut Ctx<'_>, members: &Membership) {
        let me = ctx.me();
        let Phase::Preparing { promises, .. } = &self.phase else {
            return;
        };
        let others = promises.keys().filter(|&&n| n != me).count();
        if !promises.contains_key(&me) && others + 1 >= members.quorum() {
            self.send_prepare(ctx, members, |a| a == me);
        }
    }

    pub(crate) fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// The instance and merge position of the next proposal.
    pub(crate) fn next(&self) -> (Instance, u64) {
        (self.next_instance, self.next_position)
    }

    /// Whether commands or instances wait here (queued, in flight, or in the
    /// Phase-1 backlog).
    pub(crate) fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.in_flight.is_empty() || !self.backlog.is_empty()
    }

    pub(crate) fn is_leading(&self) -> bool {
        matches!(self.phase, Phase::Leading)
    }

    /// Takes the queued commands (when the role ends, they go to the next coordinator).
    pub(crate) fn take_pending(&mut self) -> Vec<Command> {
        self.pending_bytes = 0;
        self.pending_since = None;
        self.pending.drain(..).collect()
    }

    fn send_prepare(&self, ctx: &mut Ctx<'_>, members: &Membership, to: impl Fn(NodeId) -> bool) {
        let Phase::Preparing { from, .. } = self.phase else {
            return;
        };
        for &acceptor in members.config.acceptors.iter().filter(|&&a| to(a)) {
            let prepare = Prepare {
                ring: members.config.id,
                ballot: self.ballot,
                from,
            };
            ctx.send(acceptor, Message::Prepare(prepare));
        }
    }

    /// Queues commands; the next [`Coordinator::flush`] proposes them, in
    /// batches, as the window allows. The node flushes once per round of
    /// input, so that every command that arrived in the round shares a batch.
    pub(crate) fn propose(&mut self, ctx: &mut Ctx<'_>, commands: Vec<Command>) {
        for command in commands {
            if self.pending.len() >= ctx.params.max_pending_commands {
                ctx.metrics.commands_dropped += 1;
                continue;
            }
            self.pending_bytes += command.payload.len();
            self.pending.push_back(command);
        }
        if !self.pending.is_empty() {
            self.pending_since.get_or_insert(ctx.now);
        }
    }

    /// A Phase 1b answer.
    pub(crate) fn on_promise(
        &mut self,
        ctx: &mut Ctx<'_>,
        members: &Membership,
        from: NodeId,
        p: Promise,
    ) {
        let Phase::Preparing { promises, .. } = &mut self.phase else {
            return;
        };
        if p.ballot != self.ballot {
            return;
        }
        promises.insert(from, p);
        if promises.len() >= members.quorum() {
            self.finish_phase1(ctx, members);
        } else {
            self.ask_self_when_due(ctx, members);
        }
    }

    fn finish_phase1(&mut self, ctx: &mut Ctx<'_>, members: &Membership) {
        let Phase::Preparing { promises, .. } = std::mem::replace(&mut self.phase, Phase::Leading)
        else {
            return;
        };
        let (base, base_position) = promises
            .values()
            .map(|p| (p.frontier, p.frontier_position))
            .max()
            .expect("a quorum is never empty");
        let chosen = choose_values(promises.into_values(), base);
        let end = chosen.keys().next_back().map_or(base, |&last| last + 1);
        self.next_instance = base;
        self.next_position = base_position;
        self.backlog = (base..end)
            .map(|instance| chosen.get(&instance).cloned().unwrap_or(Value::Skip(1)))
            .collect();
        self.next_level = ctx.now;
        self.flush(ctx, members, LevelView::default());
    }

    /// Gives `value` the next instance and sends its Accept.
    fn assign(&mut self, ctx: &mut Ctx<'_>, members: &Membership, value: Value) {
        let instance = self.next_instance;
        self.next_instance += 1;
        self.next_position = self.next_position.saturating_add(value.positions());
        let counters = ctx.metrics.rings.entry(members.config.id).or_default();
        match &value {
            Value::Batch(batch) => {
                counters.batches += 1;
                counters.commands += batch.commands().len() as u64;
            }
            Value::Skip(n) => counters.skipped += n,
        }
        if matches!(value, Value::Batch(_)) {
            self.last_batch_at = Some(ctx.now);
        }
        self.in_flight.insert(
            instance,
            InFlight {
                value,
                sent_at: ctx.now,
            },
        );
        self.send_accept(ctx, members, instance);
    }

    fn send_accept(&mut self, ctx: &mut Ctx<'_>, members: &Membership, instance: Instance) {
        if self.superseded.is_some() {
            return;
        }
        let decided_below = self.decided_below();
        let Some(flight) = self.in_flight.get_mut(&instance) else {
            return;
        };
        flight.sent_at = ctx.now;
        let accept = Accept {
            ring: members.config.id,
            instance,
            ballot: self.ballot,
            value: flight.value.clone(),
            votes: VoteSet::default(),
            coordinator_pending: false,
            decided_below,
        };
        ctx.send(ctx.me(), Message::Accept(accept));
    }

    /// Every instance below this is decided.
    fn decided_below(&self) -> Instance {
        self.in_flight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_instance)
    }

    /// An instance this coordinator may have proposed is decided with
    /// `value`, labelled with `ballot` (a ballot it was proposed at).
    ///
    /// Only a decision of the very value this coordinator proposed for the
    /// instance counts towards `decided_below`: acceptors then mark their
    /// votes of this ballot decided, and those hold that value. Ballot labels
    /// cannot decide it: an acceptor reports a decided value with the ballot
    /// it accepted it at, which may be below this term's although the value
    /// was chosen above it (the simulator found that: standard seeds 33095
    /// and 67922). A decision of another value, or one labelled above this
    /// term's ballot, means somebody led after this term: it is over.
    pub(crate) fn on_decided(
        &mut self,
        ctx: &Ctx<'_>,
        instance: Instance,
        ballot: Ballot,
        value: &Value,
    ) {
        if old_hint_rule(ctx.params) {
            self.in_flight.remove(&instance);
            return;
        }
        let mine = self.in_flight.get(&instance).map(|f| f.value == *value);
        if ballot > self.ballot || mine == Some(false) {
            self.superseded = self.superseded.max(Some(ballot.max(self.ballot)));
        }
        if mine == Some(true) {
            self.in_flight.remove(&instance);
        }
    }

    /// The ballot of a decision above this term's, if one was learned.
    pub(crate) fn superseded(&self) -> Option<Ballot> {
        self.superseded
    }

    /// Makes the ring decide every instance below `instance`, with skips if
    /// nothing else comes (acceptors that lost their votes wait for that).
    pub(crate) fn skip_to(&mut self, instance: Instance) {
        self.skip_to = self.skip_to.max(instance);
    }

    /// Re-proposes the Phase 1 backlog, then proposes batches, while the
    /// window has room; a batch spans up to the busy partners' position in
    /// `view`.
    pub(crate) fn flush(&mut self, ctx: &mut Ctx<'_>, members: &Membership, view: LevelView) {
        if !self.is_leading() || self.superseded.is_some() {
            return;
        }
        while self.window_open(ctx) {
            let Some(value) = self.backlog.pop_front() else {
                break;
            };
            self.assign(ctx, members, value);
        }
        while self.backlog.is_empty() && self.window_open(ctx) && self.batch_due(ctx) {
            let batch = self.take_batch(ctx, view.busy_max.unwrap_or(0));
            self.assign(ctx, members, Value::Batch(batch));
        }
        while self.backlog.is_empty() && self.window_open(ctx) && self.next_instance < self.skip_to
        {
            self.assign(ctx, members, Value::Skip(1));
        }
    }

    fn window_open(&self, ctx: &Ctx<'_>) -> bool {
        (self.in_flight.len() as u64) < ctx.params.window
    }

    fn batch_due(&self, ctx: &Ctx<'_>) -> bool {
        let params = ctx.params;
        let Some(since) = self.pending_since else {
            return false;
        };
        self.pending.len() >= params.batch_max_commands
            || self.pending_bytes >= params.batch_max_bytes
            || ctx.now.duration_since(since) >= params.batch_delay
    }

    /// The next batch from the queue, spanning up to position `up_to` when
    /// this ring is behind it (else one position).
    fn take_batch(&mut self, ctx: &Ctx<'_>, up_to: u64) -> Batch {
        let params = ctx.params;
        let mut batch = Vec::with_capacity(self.pending.len().min(params.batch_max_commands));
        let mut bytes = 0;
        while let Some(next) = self.pending.front() {
            let full = batch.len() >= params.batch_max_commands
                || (!batch.is_empty() && bytes + next.payload.len() > params.batch_max_bytes);
            if full {
                break;
            }
            bytes += next.payload.len();
            batch.push(self.pending.pop_front().expect("front exists"));
        }
        self.pending_bytes -= bytes;
        self.pending_since = if self.pending.is_empty() {
            None
        } else {
            Some(ctx.now)
        };
        let span = up_to.saturating_sub(self.next_position).max(1);
        Batch::new(&batch).spanning(span)
    }

    /// Timers: Phase 1 and Accept retransmission, batch delay, rate leveling.
    pub(crate) fn tick(&mut self, ctx: &mut Ctx<'_>, members: &Membership, view: LevelView) {
        let retry = ctx.params.retry_timeout;
        if let Phase::Preparing {
            promises, sent_at, ..
        } = &mut self.phase
        {
            if ctx.now.duration_since(*sent_at) >= retry {
                *sent_at = ctx.now;
                let me = ctx.me();
                let answered: Vec<NodeId> = promises.keys().copied().collect();
                self.send_prepare(ctx, members, |a| a != me && !answered.contains(&a));
                self.ask_self_when_due(ctx, members);
            }
            return;
        }
        let stale: Vec<Instance> = self
            .in_flight
            .iter()
            .filter(|(_, f)| ctx.now.duration_since(f.sent_at) >= retry)
            .map(|(&i, _)| i)
            .collect();
        for instance in stale {
            self.send_accept(ctx, members, instance);
        }
        self.flush(ctx, members, view);
        self.level(ctx, members, view);
    }

    /// Whether the ring has client traffic: commands queued, or a batch
    /// proposed within the last 2Δ.
    pub(crate) fn is_busy(&self, now: Instant, delta: Duration) -> bool {
        !self.pending.is_empty()
            || !self.backlog.is_empty()
            || self
                .last_batch_at
                .is_some_and(|t| now.duration_since(t) < delta * 2)
    }

    fn level(&mut self, ctx: &mut Ctx<'_>, members: &Membership, view: LevelView) {
        if ctx.now < self.next_level {
            return;
        }
        let delta = ctx.params.delta;
        self.next_level = ctx.now + delta;
        let lead = ctx.params.lead();
        let lead_target = if self.is_busy(ctx.now, delta) {
            view.busy_max
        } else if let Some(max) = view.busy_max {
            // Re-lead only when the margin has shrunk to half: one skip per
            // λ·Δ/2 positions the busy rings advance, not one per tick.
            (self.next_position < max.saturating_add(lead / 2)).then(|| max.saturating_add(lead))
        } else if view.unobserved && ctx.now >= self.next_idle_skip {
            // Rings merged with this one that this node does not host cannot
            // be observed: advance at λ so that their learners never wait long.
            Some(self.next_position.saturating_add(lead))
        } else {
            None
        };
        // Whatever else: never leave a partner's batch waiting on this ring.
        // The merge releases a batch once every ring has finished its turn of
        // M positions: reach the end of that turn.
        let m = u64::from(ctx.params.merge_m.max(1));
        let content = view.content_max.div_ceil(m).saturating_mul(m);
        let target = lead_target.max((content > 0).then_some(content));
        if let Some(target) = target.filter(|&t| t > self.next_position)
            && self.window_open(ctx)
            && self.backlog.is_empty()
        {
            tracing::debug!(
                ring = %members.config.id,
                from = self.next_position,
                to = target,
                busy = self.is_busy(ctx.now, delta),
                busy_max = ?view.busy_max,
                "leveling"
            );
            // Commands held back (window full, `batch_delay`) go now,
            // spanning the gap, rather than behind a skip of their own.
            let value = if self.pending.is_empty() {
                Value::Skip(target - self.next_position)
            } else {
                Value::Batch(self.take_batch(ctx, target))
            };
            self.assign(ctx, members, value);
            self.next_idle_skip = ctx.now + delta * IDLE_FLOOR_TICKS;
        }
    }
}

/// A ring with unobservable partners skips once per this many Δ.
const IDLE_FLOOR_TICKS: u32 = 1;

/// Per instance at or above `base`: a value some promise reports decided,
/// else the value accepted at the highest ballot.
fn choose_values(
    promises: impl Iterator<Item = Promise>,
    base: Instance,
) -> BTreeMap<Instance, Value> {
    let mut best: BTreeMap<Instance, (bool, Ballot, Value)> = BTreeMap::new();
    for slot in promises
        .flat_map(|p| p.slots)
        .filter(|s| s.instance >= base)
    {
        let candidate = (slot.decided, slot.ballot, slot.value);
        match best.get(&slot.instance) {
            Some((decided, ballot, _)) if (*decided, *ballot) >= (candidate.0, candidate.1) => {}
            _ => {
                best.insert(slot.instance, candidate);
            }
        }
    }
    best.into_iter().map(|(i, (_, _, v))| (i, v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::messages::PromisedSlot;
    use crate::proto::types::RingId;

    fn slot(instance: Instance, round: u64, value: u64, decided: bool) -> PromisedSlot {
        PromisedSlot {
            instance,
            ballot: Ballot {
                round,
                node: NodeId(1),
            },
            value: Value::Skip(value),
            decided,
        }
    }

    fn promise(slots: Vec<PromisedSlot>) -> Promise {
        Promise {
            ring: RingId(0),
            ballot: Ballot::ZERO,
            frontier: 0,
            frontier_position: 0,
            slots,
        }
    }

    // Reference: Paxos Phase 2a rule — propose the value of the highest ballot reported.
    #[test]
    fn highest_ballot_wins_and_decided_beats_any_ballot() {
        let chosen = choose_values(
            vec![
                promise(vec![slot(5, 1, 10, false), slot(6, 3, 20, false)]),
                promise(vec![
                    slot(5, 2, 11, false),
                    slot(6, 1, 21, true),
                    slot(2, 9, 9, false),
                ]),
            ]
            .into_iter(),
            4,
        );
        assert_eq!(chosen.get(&5), Some(&Value::Skip(11)));
        assert_eq!(chosen.get(&6), Some(&Value::Skip(21)));
        assert_eq!(chosen.get(&2), None, "below the base is decided already");
    }
}
