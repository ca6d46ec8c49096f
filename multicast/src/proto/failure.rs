//! Heartbeat failure detection: a peer is suspected when nothing was heard
//! from it for `suspect_timeout`. Any message counts as a sign of life.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::types::NodeId;

/// Last time each peer was heard from.
#[derive(Clone, Debug)]
pub(crate) struct FailureDetector {
    last_heard: BTreeMap<NodeId, Instant>,
    timeout: Duration,
}

impl FailureDetector {
    /// Every peer starts as heard at `now`: a grace period of one timeout.
    pub(crate) fn new(
        peers: impl IntoIterator<Item = NodeId>,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        FailureDetector {
            last_heard: peers.into_iter().map(|p| (p, now)).collect(),
            timeout,
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

    /// Whether `node` is suspected. Unknown nodes (this node itself) are not.
    pub(crate) fn suspects(&self, node: NodeId, now: Instant) -> bool {
        self.last_heard
            .get(&node)
            .is_some_and(|&t| now.duration_since(t) > self.timeout)
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

    #[test]
    fn suspects_after_silence_only() {
        let t0 = Instant::now();
        let mut fd = FailureDetector::new([NodeId(2)], Duration::from_millis(100), t0);
        assert!(!fd.suspects(NodeId(2), t0 + Duration::from_millis(100)));
        assert!(fd.suspects(NodeId(2), t0 + Duration::from_millis(101)));
        assert!(fd.heard(NodeId(2), t0 + Duration::from_millis(150)));
        assert!(!fd.suspects(NodeId(2), t0 + Duration::from_millis(200)));
        assert!(!fd.suspects(NodeId(9), t0 + Duration::from_secs(10)));
        assert!(!fd.heard(NodeId(9), t0));
    }
}
