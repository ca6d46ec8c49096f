//! Heartbeat failure detection.
//!
//! A peer is suspected when nothing was heard from it for `suspect_timeout`
//! (any message counts as a sign of life), or when its latest heartbeat says
//! that it does not hear this node. The second rule makes one-way loss
//! symmetric: a coordinator whose inbound traffic is cut still reaches its
//! peers, but they learn from its heartbeats that it cannot hear their votes
//! and replace it, instead of waiting for the transport to time out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::types::NodeId;

/// What a peer said in its latest heartbeat about whom it hears.
#[derive(Clone, Debug)]
struct Report {
    at: Instant,
    hears: BTreeSet<NodeId>,
}

/// Last time each peer was heard from, and whom each peer hears.
#[derive(Clone, Debug)]
pub(crate) struct FailureDetector {
    me: NodeId,
    last_heard: BTreeMap<NodeId, Instant>,
    reports: BTreeMap<NodeId, Report>,
    timeout: Duration,
    /// Whether reports count (always, unless the old rules are planted).
    mutual: bool,
}

impl FailureDetector {
    /// Every peer starts as heard at `now`: a grace period of one timeout.
    pub(crate) fn new(
        me: NodeId,
        peers: impl IntoIterator<Item = NodeId>,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        FailureDetector {
            me,
            last_heard: peers.into_iter().map(|p| (p, now)).collect(),
            reports: BTreeMap::new(),
            timeout,
            mutual: true,
        }
    }

    /// Suspects on silence only, as before reports existed (a planted bug).
    pub(crate) fn one_way(self) -> Self {
        FailureDetector {
            mutual: false,
            ..self
        }
    }

    /// Records a sign of life; returns false if `from` is not a known peer.
    pub(crate) fn heard(&mut self, from: NodeId, now: Instant) -> bool {
        match self.last_heard.get_mut(&from) {
            Some(t) => {
                *t = (*t).max(now);
                true
            }
            None => false,
        }
    }

    /// Records whom `from` says it hears (its heartbeat).
    pub(crate) fn reported(&mut self, from: NodeId, hears: &[NodeId], now: Instant) {
        if self.mutual && self.last_heard.contains_key(&from) {
            let hears = hears.iter().copied().collect();
            self.reports.insert(from, Report { at: now, hears });
        }
    }

    /// Whether `node` is suspected: silent for the timeout, or its fresh
    /// report says it does not hear this node. Unknown nodes (this node
    /// itself) are not.
    pub(crate) fn suspects(&self, node: NodeId, now: Instant) -> bool {
        let Some(&heard) = self.last_heard.get(&node) else {
            return false;
        };
        now.duration_since(heard) > self.timeout || !self.hears_me(node, now)
    }

    /// Whether nothing was heard from `node` for the timeout (whatever it
    /// reports hearing). Unknown nodes (this node itself) are not silent.
    pub(crate) fn silent(&self, node: NodeId, now: Instant) -> bool {
        self.last_heard
            .get(&node)
            .is_some_and(|&t| now.duration_since(t) > self.timeout)
    }

    /// Whether `node`'s latest report (if fresh) lists this node.
    fn hears_me(&self, node: NodeId, now: Instant) -> bool {
        self.reports
            .get(&node)
            .filter(|r| now.duration_since(r.at) <= self.timeout)
            .is_none_or(|r| r.hears.contains(&self.me))
    }

    /// Whether `node` (a peer, or this node) hears at least `quorum` of
    /// `members`, itself included. For this node: the members it does not
    /// suspect; for a peer: its latest fresh report (a peer that has not
    /// reported is assumed to hear everyone).
    pub(crate) fn hears_quorum(
        &self,
        node: NodeId,
        members: &[NodeId],
        quorum: usize,
        now: Instant,
    ) -> bool {
        let heard = if node == self.me {
            members
                .iter()
                .filter(|&&m| m == self.me || !self.suspects(m, now))
                .count()
        } else {
            match self
                .reports
                .get(&node)
                .filter(|r| now.duration_since(r.at) <= self.timeout)
            {
                Some(r) => members
                    .iter()
                    .filter(|&&m| m == node || r.hears.contains(&m))
                    .count(),
                None => members.len(),
            }
        };
        heard >= quorum
    }

    /// The peers this node does not suspect, for its heartbeats.
    pub(crate) fn heard_peers(&self, now: Instant) -> Vec<NodeId> {
        self.last_heard
            .iter()
            .filter(|&(_, &t)| now.duration_since(t) <= self.timeout)
            .map(|(&p, _)| p)
            .collect()
    }

    /// Whether `node` is a known peer.
    pub(crate) fn knows(&self, node: NodeId) -> bool {
        self.last_heard.contains_key(&node)
    }

    /// The known peers.
    pub(crate) fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.last_heard.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeId = NodeId(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn suspects_after_silence_only() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::new(ME, [NodeId(2)], MS * 100, t0);
        assert!(!fd.suspects(NodeId(2), t0 + MS * 100));
        assert!(fd.suspects(NodeId(2), t0 + MS * 101));
        assert!(fd.heard(NodeId(2), t0 + MS * 150));
        assert!(!fd.suspects(NodeId(2), t0 + MS * 200));
        assert!(!fd.suspects(NodeId(9), t0 + Duration::from_secs(10)));
        assert!(!fd.heard(NodeId(9), t0));
    }

    // A peer whose heartbeats arrive but that does not hear this node is
    // suspected as if it were silent; once its reports list this node again,
    // or go stale, it is not.
    #[test]
    fn a_peer_that_cannot_hear_this_node_is_suspected() {
        let t0 = Instant::now();
        let (a, b) = (NodeId(2), NodeId(3));
        let mut fd = FailureDetector::new(ME, [a, b], MS * 100, t0);
        fd.heard(a, t0 + MS * 10);
        fd.reported(a, &[b], t0 + MS * 10);
        assert!(fd.suspects(a, t0 + MS * 20), "a does not hear me");
        assert!(!fd.suspects(b, t0 + MS * 20));
        fd.reported(a, &[ME, b], t0 + MS * 30);
        assert!(!fd.suspects(a, t0 + MS * 40));
        assert_eq!(fd.heard_peers(t0 + MS * 105), vec![a]);
    }

    #[test]
    fn quorum_hearing_counts_the_node_itself_and_its_reports() {
        let t0 = Instant::now();
        let members = [ME, NodeId(2), NodeId(3)];
        let mut fd = FailureDetector::new(ME, [NodeId(2), NodeId(3)], MS * 100, t0);
        assert!(fd.hears_quorum(ME, &members, 2, t0));
        let later = t0 + MS * 150;
        assert!(!fd.hears_quorum(ME, &members, 2, later), "both silent");
        fd.heard(NodeId(2), later);
        assert!(fd.hears_quorum(ME, &members, 2, later));
        fd.reported(NodeId(3), &[], later);
        assert!(!fd.hears_quorum(NodeId(3), &members, 2, later));
        fd.reported(NodeId(3), &[ME], later);
        assert!(fd.hears_quorum(NodeId(3), &members, 2, later));
        assert!(fd.hears_quorum(NodeId(2), &members, 3, later), "no report");
    }
}
