//! Gap recovery, shared by learners and acceptors: when a decision is known
//! to exist beyond the next instance one has (`horizon > frontier`) and the
//! gap persists for `recovery_timeout`, ask an acceptor for the missing
//! instances, rotating through acceptors on every ask. When nothing at all
//! has arrived for ten timeouts, ask anyway, in case the tail was lost.
//!
//! An answer that moves the frontier while a gap remains is followed by the
//! next ask at once (at most one per `pace`), to the same acceptor: a node
//! that was cut off for a long time catches up at one `recovery_batch` per
//! round trip, not per `recovery_timeout` (after a partition of seconds, the
//! rings may have decided many thousands of instances). Learners, which
//! replicas wait on, ask as fast as answers come; acceptors, which the ring
//! does not wait on, at a pace that leaves the live traffic most of the
//! machine.

use std::time::Instant;

use super::config::Params;
use super::messages::LearnRequest;
use super::types::{Instance, NodeId, RingId};

#[derive(Clone, Debug)]
pub(crate) struct Catchup {
    gap_since: Option<Instant>,
    last_request: Option<Instant>,
    last_frontier: Instance,
    last_progress: Instant,
    next_peer: usize,
    /// An answer moved the frontier: ask for the rest now, of the same peer.
    follow_up: bool,
    /// When the last request left.
    last_ask: Option<Instant>,
    /// Least time between a request and the follow-up of its answer.
    pace: std::time::Duration,
}

impl Catchup {
    /// Gap recovery from `frontier`, following answers up at most once per `pace`.
    pub(crate) fn new(frontier: Instance, now: Instant, pace: std::time::Duration) -> Self {
        Catchup {
            gap_since: None,
            last_request: None,
            last_frontier: frontier,
            last_progress: now,
            next_peer: 0,
            follow_up: false,
            last_ask: None,
            pace,
        }
    }

    /// How long the frontier has not moved.
    pub(crate) fn stalled_for(&self, now: Instant) -> std::time::Duration {
        now.duration_since(self.last_progress)
    }

    /// A request to send now, if one is due.
    pub(crate) fn poll(
        &mut self,
        now: Instant,
        ring: RingId,
        frontier: Instance,
        horizon: Instance,
        peers: &[NodeId],
        params: &Params,
    ) -> Option<(NodeId, LearnRequest)> {
        if frontier != self.last_frontier {
            self.follow_up = self.last_request.is_some();
            self.last_frontier = frontier;
            self.last_progress = now;
            self.gap_since = None;
            self.last_request = None;
        }
        let wait = params.recovery_timeout;
        if self.follow_up && horizon > frontier && !peers.is_empty() {
            if self
                .last_ask
                .is_some_and(|t| now.duration_since(t) < self.pace)
            {
                return None;
            }
            self.follow_up = false;
            self.last_request = Some(now);
            self.last_ask = Some(now);
            let peer = peers[self.next_peer.wrapping_sub(1) % peers.len()];
            return Some((peer, request(ring, frontier, horizon, params)));
        }
        self.follow_up = false;
        let due_after = if horizon > frontier {
            let since = *self.gap_since.get_or_insert(now);
            if now.duration_since(since) < wait {
                return None;
            }
            wait
        } else {
            self.gap_since = None;
            if now.duration_since(self.last_progress) < wait * 10 {
                return None;
            }
            wait * 10
        };
        if self
            .last_request
            .is_some_and(|t| now.duration_since(t) < due_after)
            || peers.is_empty()
        {
            return None;
        }
        self.last_request = Some(now);
        self.last_ask = Some(now);
        let peer = peers[self.next_peer % peers.len()];
        self.next_peer = self.next_peer.wrapping_add(1);
        Some((peer, request(ring, frontier, horizon, params)))
    }
}

/// A request for the next `recovery_batch` instances from `frontier`, up to
/// `horizon` if decisions beyond the frontier are known.
fn request(ring: RingId, frontier: Instance, horizon: Instance, params: &Params) -> LearnRequest {
    let batch_end = frontier.saturating_add(params.recovery_batch);
    let to = if horizon > frontier {
        horizon.min(batch_end)
    } else {
        batch_end
    };
    LearnRequest {
        ring,
        from: frontier,
        to,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn asks_after_the_gap_persists_and_rotates_peers() {
        let params = Params::default();
        let t0 = Instant::now();
        let peers = [NodeId(1), NodeId(2)];
        let mut c = Catchup::new(5, t0, Duration::ZERO);
        assert!(c.poll(t0, RingId(0), 5, 9, &peers, &params).is_none());
        let t1 = t0 + params.recovery_timeout;
        let (to, req) = c.poll(t1, RingId(0), 5, 9, &peers, &params).unwrap();
        assert_eq!((to, req.from, req.to), (NodeId(1), 5, 9));
        assert!(
            c.poll(
                t1 + Duration::from_millis(1),
                RingId(0),
                5,
                9,
                &peers,
                &params,
            )
            .is_none()
        );
        let (to, _) = c
            .poll(
                t1 + params.recovery_timeout,
                RingId(0),
                5,
                9,
                &peers,
                &params,
            )
            .unwrap();
        assert_eq!(to, NodeId(2));
    }

    // After a partition a node may be thousands of instances behind: each
    // answer that moves the frontier brings the next ask at once, of the
    // same peer, not a recovery timeout later.
    #[test]
    fn an_answer_that_leaves_a_gap_is_followed_up_at_once() {
        let params = Params::default();
        let t0 = Instant::now();
        let peers = [NodeId(1), NodeId(2)];
        let mut c = Catchup::new(0, t0, Duration::ZERO);
        assert!(c.poll(t0, RingId(0), 0, 10_000, &peers, &params).is_none());
        let t1 = t0 + params.recovery_timeout;
        let (to, req) = c.poll(t1, RingId(0), 0, 10_000, &peers, &params).unwrap();
        assert_eq!(
            (to, req.from, req.to),
            (NodeId(1), 0, params.recovery_batch)
        );
        let t2 = t1 + Duration::from_micros(300);
        let b = params.recovery_batch;
        let (to, req) = c.poll(t2, RingId(0), b, 10_000, &peers, &params).unwrap();
        assert_eq!((to, req.from, req.to), (NodeId(1), b, 2 * b));
        assert!(
            c.poll(t2, RingId(0), b, 10_000, &peers, &params).is_none(),
            "no progress, no follow-up"
        );
        // Progress without an ask of ours (ordinary decisions) waits as before.
        let mut quiet = Catchup::new(0, t0, Duration::ZERO);
        assert!(quiet.poll(t0, RingId(0), 5, 9, &peers, &params).is_none());
    }

    // An acceptor's follow-ups wait for their pace; a learner's do not.
    #[test]
    fn a_paced_follow_up_waits_for_its_pace() {
        let params = Params::default();
        let t0 = Instant::now();
        let pace = Duration::from_millis(10);
        let peers = [NodeId(1)];
        let mut c = Catchup::new(0, t0, pace);
        c.poll(t0, RingId(0), 0, 10_000, &peers, &params);
        let t1 = t0 + params.recovery_timeout;
        assert!(c.poll(t1, RingId(0), 0, 10_000, &peers, &params).is_some());
        let b = params.recovery_batch;
        let early = t1 + pace / 2;
        assert!(
            c.poll(early, RingId(0), b, 10_000, &peers, &params)
                .is_none()
        );
        let (_, req) = c
            .poll(t1 + pace, RingId(0), b, 10_000, &peers, &params)
            .expect("the follow-up, once the pace allows");
        assert_eq!(req.from, b);
    }

    #[test]
    fn polls_when_idle_for_long() {
        let params = Params::default();
        let t0 = Instant::now();
        let mut c = Catchup::new(5, t0, Duration::ZERO);
        assert!(
            c.poll(
                t0 + params.recovery_timeout * 9,
                RingId(0),
                5,
                5,
                &[NodeId(1)],
                &params,
            )
            .is_none()
        );
        let (_, req) = c
            .poll(
                t0 + params.recovery_timeout * 10,
                RingId(0),
                5,
                5,
                &[NodeId(1)],
                &params,
            )
            .unwrap();
        assert_eq!((req.from, req.to), (5, 5 + params.recovery_batch));
    }
}
