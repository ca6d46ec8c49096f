//! Who coordinates a ring, as one acceptor node sees it (docs/ARCHITECTURE.md, "The atomic multicast",
//! failure detection and coordinator terms).
//!
//! ```text
//!  heartbeat: "I lead r at b" ──> announcement (the highest-ballot live one wins)
//!  believed coordinator = the live announced leader (or this node, if it leads)
//!                       else the first node in ring order that is viable
//!  live leader: its announcements arrive, and it hears a quorum (its heartbeats say whom it hears)
//!  viable = not suspected (silent, or not hearing this node), and hears a quorum of the ring
//! ```
//!
//! Rules that keep a ring live after partitions heal, without election storms:
//! - A node follows the live leader it hears announce the highest ballot; a
//!   coordinator that hears a higher-ballot leader, or learns a higher ballot
//!   from a refusal or a decision, ends its term. A superseded coordinator thus
//!   steps down as soon as it hears the ring again, without a new election.
//! - Only when no live leader is heard does the first viable node in ring
//!   order start a term; a node that does not hear a quorum never does (it
//!   could not win, and its ballot would only disturb the others later).
//! - An acceptor does not promise a new ballot to anybody while it hears a
//!   live leader other than the candidate (leader stickiness): a node cut off
//!   from the leader alone (a non-transitive partition) cannot take over and
//!   be taken over in turn.
//! - A node starts terms at most once per `retry_timeout`.
//!
//! Refusing a promise is always safe in Paxos, so none of this bears on
//! agreement; it bears on liveness only.

use std::collections::BTreeMap;
use std::time::Instant;

use super::config::{Params, old_leadership};
use super::context::{Ctx, Membership};
use super::types::{Ballot, Instance, NodeId};

/// A peer's latest "I lead this ring at `ballot`".
#[derive(Clone, Copy, Debug)]
struct Announcement {
    node: NodeId,
    ballot: Ballot,
    at: Instant,
}

/// One ring's view of its leadership at one node.
#[derive(Debug, Default)]
pub(crate) struct Leadership {
    /// Highest ballot heard of in refusals, decisions and announcements: a
    /// new term must exceed it, and a coordinator below it is superseded.
    pub(crate) seen: Ballot,
    announced: Option<Announcement>,
    /// Peers that restarted without their votes, and the instance below
    /// which they may have forgotten some.
    amnesia: BTreeMap<NodeId, Instance>,
    /// When this node last started a term.
    pub(crate) term_started: Option<Instant>,
    /// Since when too many members are amnesiac for any Phase 1, with
    /// everyone heard and nobody leading.
    stuck_since: Option<Instant>,
}

/// How long a ring may be seen stuck in amnesia, in suspect timeouts,
/// before the node gives up on it (long enough for every member to have
/// caught up on whatever the others still knew).
pub(crate) const AMNESIA_PATIENCE: u32 = 40;

impl Leadership {
    /// A heartbeat of `from` says whether it leads the ring, and at which ballot.
    pub(crate) fn heard_leader(&mut self, from: NodeId, leading: Option<Ballot>, now: Instant) {
        match leading {
            Some(ballot) => {
                self.seen = self.seen.max(ballot);
                let replace = self
                    .announced
                    .is_none_or(|a| a.node == from || ballot >= a.ballot);
                if replace {
                    self.announced = Some(Announcement {
                        node: from,
                        ballot,
                        at: now,
                    });
                }
            }
            None => {
                if self.announced.is_some_and(|a| a.node == from) {
                    self.announced = None;
                }
            }
        }
    }

    /// A heartbeat of `from` says whether it is amnesiac, and up to where.
    pub(crate) fn heard_amnesia(&mut self, from: NodeId, until: Option<Instance>) {
        match until {
            Some(until) => self.amnesia.insert(from, until),
            None => self.amnesia.remove(&from),
        };
    }

    /// The instance every peer's amnesia ends at (0 if none is amnesiac).
    pub(crate) fn amnesia_end(&self) -> Instance {
        self.amnesia.values().copied().max().unwrap_or(0)
    }

    /// The live leader: this node if it leads at `mine` (and hears a
    /// quorum), or the peer whose fresh announcement has a higher ballot and
    /// that is viable.
    pub(crate) fn live_leader(
        &self,
        ctx: &Ctx<'_>,
        members: &Membership,
        mine: Option<Ballot>,
    ) -> Option<NodeId> {
        let me = ctx.me();
        if old_leadership(ctx.params) {
            return None;
        }
        let mine = mine.filter(|_| viable(ctx, members, me));
        // A leader whose announcements arrive is alive, and leads if it hears
        // a quorum, whether or not it hears this node: this node must not
        // challenge it (it would only be refused, or disturb it).
        let theirs = self.announced.filter(|a| {
            a.node != me
                && ctx.now.duration_since(a.at) <= ctx.params.suspect_timeout
                && members.is_member(a.node)
                && !ctx.detector.silent(a.node, ctx.now)
                && hears_quorum(ctx, members, a.node)
        });
        match (mine, theirs) {
            (Some(b), Some(a)) if a.ballot > b => Some(a.node),
            (Some(_), _) => Some(me),
            (None, a) => a.map(|a| a.node),
        }
    }

    /// The node this one believes coordinates the ring: the live leader, else
    /// the first viable acceptor in ring order (none if it hears too few).
    pub(crate) fn believed(
        &self,
        ctx: &Ctx<'_>,
        members: &Membership,
        mine: Option<Ballot>,
    ) -> Option<NodeId> {
        self.live_leader(ctx, members, mine).or_else(|| {
            members
                .config
                .acceptors
                .iter()
                .copied()
                .find(|&a| viable(ctx, members, a))
        })
    }

    /// Whether this node's acceptor refuses a Prepare from `from`: it hears
    /// a live leader that is not the candidate.
    pub(crate) fn refuses(
        &self,
        ctx: &Ctx<'_>,
        members: &Membership,
        mine: Option<Ballot>,
        from: NodeId,
    ) -> bool {
        self.live_leader(ctx, members, mine)
            .is_some_and(|leader| leader != from)
    }

    /// Whether the ring can never decide again: every member is heard, no
    /// leader is live, and fewer than a quorum of members kept their votes
    /// (memory storage, all restarted): no Phase 1 can succeed, so nothing
    /// new is decided, so no amnesiac ever catches up. True once that has
    /// held for [`AMNESIA_PATIENCE`] suspect timeouts in a row.
    pub(crate) fn stuck_in_amnesia(
        &mut self,
        ctx: &Ctx<'_>,
        members: &Membership,
        mine: Option<Ballot>,
        me_amnesiac: bool,
    ) -> bool {
        let me = ctx.me();
        let acceptors = &members.config.acceptors;
        let all_heard = acceptors
            .iter()
            .all(|&a| a == me || !ctx.detector.silent(a, ctx.now));
        let kept = acceptors
            .iter()
            .filter(|&&a| {
                if a == me {
                    !me_amnesiac
                } else {
                    !self.amnesia.contains_key(&a)
                }
            })
            .count();
        let stuck =
            all_heard && kept < members.quorum() && self.live_leader(ctx, members, mine).is_none();
        if !stuck {
            self.stuck_since = None;
            return false;
        }
        let since = *self.stuck_since.get_or_insert(ctx.now);
        ctx.now.duration_since(since) >= ctx.params.suspect_timeout * AMNESIA_PATIENCE
    }

    /// Whether a new term may start now (at most one per `retry_timeout`).
    pub(crate) fn may_start_term(&self, now: Instant, params: &Params) -> bool {
        old_leadership(params)
            || self
                .term_started
                .is_none_or(|t| now.duration_since(t) >= params.retry_timeout)
    }
}

/// Whether `node` could coordinate the ring as this node sees it: this node
/// if it hears a quorum; a peer if it is not suspected and, by its reports,
/// hears a quorum.
fn viable(ctx: &Ctx<'_>, members: &Membership, node: NodeId) -> bool {
    if old_leadership(ctx.params) {
        return node == ctx.me() || !ctx.detector.suspects(node, ctx.now);
    }
    (node == ctx.me() || !ctx.detector.suspects(node, ctx.now)) && hears_quorum(ctx, members, node)
}

/// Whether `node` hears a quorum of the ring (by its reports, for a peer).
fn hears_quorum(ctx: &Ctx<'_>, members: &Membership, node: NodeId) -> bool {
    let acceptors = &members.config.acceptors;
    ctx.detector
        .hears_quorum(node, acceptors, members.quorum(), ctx.now)
}
