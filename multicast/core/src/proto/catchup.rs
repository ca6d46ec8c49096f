//! Gap recovery, shared by learners and acceptors: when a decision is known
//! to exist beyond the next instance one has (`horizon > frontier`) and the
//! gap persists for `recovery_timeout`, ask an acceptor for the missing
//! instances, rotating through acceptors on every ask. When nothing at all
//! has arrived for ten timeouts, ask anyway, in case the tail was lost.
//!
//! An answer that moves the frontier while a gap remains starts a
//! *pipeline*: asks of `recovery_batch` instances each, to the same
//! acceptor, keeping up to `window` batches asked beyond the frontier, so a
//! node that is far behind (a replica restarted from a checkpoint, a node
//! cut off for seconds) fetches at the rate of the link and of its own
//! execution, not one batch per round trip or per tick. The pipeline stops
//! when the gap is closed, or when the frontier stops moving for a
//! `recovery_timeout` (an answer was lost: the timed path asks again from
//! the frontier, of the next acceptor). Learners, which replicas wait on,
//! pipeline deep and ask as fast as answers come; acceptors, which the ring
//! does not wait on, one batch ahead at a pace that leaves the live traffic
//! most of the machine.

use std::time::{Duration, Instant};

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
    /// Answers to our asks are coming: keep asking ahead of the frontier.
    pipelining: bool,
    /// The end of the last range asked for.
    asked_to: Instance,
    /// When the last request left.
    last_ask: Option<Instant>,
    /// Least time between two asks of a pipeline.
    pace: Duration,
    /// Most batches asked for beyond the frontier.
    window: u64,
}

impl Catchup {
    /// Gap recovery from `frontier`, pipelining up to `window` batches
    /// ahead, at most one ask per `pace`.
    pub(crate) fn new(frontier: Instance, now: Instant, pace: Duration, window: u64) -> Self {
        assert!(window >= 1, "a pipeline asks for at least one batch");
        Catchup {
            gap_since: None,
            last_request: None,
            last_frontier: frontier,
            last_progress: now,
            next_peer: 0,
            pipelining: false,
            asked_to: frontier,
            last_ask: None,
            pace,
            window,
        }
    }

    /// How long the frontier has not moved.
    pub(crate) fn stalled_for(&self, now: Instant) -> Duration {
        now.duration_since(self.last_progress)
    }

    /// Whether a pipeline is running (asks follow answers at once).
    #[cfg(test)]
    fn pipelining(&self) -> bool {
        self.pipelining
    }

    /// Whether answers to an ask are expected: then progress of the
    /// frontier should be followed by [`Catchup::poll`] at once.
    pub(crate) fn asking(&self) -> bool {
        self.pipelining || self.last_request.is_some()
    }

    /// A request to send now, if one is due. Call again until `None`: a
    /// pipeline may have several asks due at once.
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
            self.pipelining |= self.last_request.is_some();
            self.last_frontier = frontier;
            self.last_progress = now;
            self.gap_since = None;
            self.last_request = None;
        }
        let wait = params.recovery_timeout;
        if self.pipelining {
            if horizon <= frontier || peers.is_empty() || self.stalled_for(now) >= wait {
                self.pipelining = false;
            } else {
                return self.ahead(now, ring, frontier, horizon, peers, params);
            }
        }
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
        let peer = peers[self.next_peer % peers.len()];
        self.next_peer = self.next_peer.wrapping_add(1);
        Some(self.sent(now, peer, request(ring, frontier, horizon, params)))
    }

    /// Records an ask that leaves now.
    fn sent(
        &mut self,
        now: Instant,
        peer: NodeId,
        request: LearnRequest,
    ) -> (NodeId, LearnRequest) {
        self.last_request = Some(now);
        self.last_ask = Some(now);
        self.asked_to = request.to;
        (peer, request)
    }

    /// The next ask of a pipeline, if the window and the pace allow it.
    fn ahead(
        &mut self,
        now: Instant,
        ring: RingId,
        frontier: Instance,
        horizon: Instance,
        peers: &[NodeId],
        params: &Params,
    ) -> Option<(NodeId, LearnRequest)> {
        let from = self.asked_to.max(frontier);
        let window_end = frontier.saturating_add(self.window.saturating_mul(params.recovery_batch));
        if from >= horizon || from >= window_end {
            return None;
        }
        if self
            .last_ask
            .is_some_and(|t| now.duration_since(t) < self.pace)
        {
            return None;
        }
        let peer = peers[self.next_peer.wrapping_sub(1) % peers.len()];
        Some(self.sent(now, peer, request(ring, from, horizon, params)))
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
        let mut c = Catchup::new(5, t0, Duration::ZERO, 1);
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
        let mut c = Catchup::new(0, t0, Duration::ZERO, 1);
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
        let mut quiet = Catchup::new(0, t0, Duration::ZERO, 1);
        assert!(quiet.poll(t0, RingId(0), 5, 9, &peers, &params).is_none());
    }

    // A replica restarted far behind: once answers come, asks keep `window`
    // batches in flight ahead of the frontier, never overlapping; a lost
    // answer (no progress for a timeout) falls back to the timed ask from
    // the frontier, of the next acceptor; a closed gap ends the pipeline.
    #[test]
    fn a_pipeline_keeps_its_window_of_batches_in_flight() {
        let params = Params::default();
        let b = params.recovery_batch;
        let t0 = Instant::now();
        let peers = [NodeId(1), NodeId(2)];
        let mut c = Catchup::new(0, t0, Duration::ZERO, 4);
        let ring = RingId(0);
        assert!(c.poll(t0, ring, 0, 100 * b, &peers, &params).is_none());
        let t1 = t0 + params.recovery_timeout;
        let (_, first) = c.poll(t1, ring, 0, 100 * b, &peers, &params).unwrap();
        assert_eq!((first.from, first.to), (0, b));
        let t2 = t1 + Duration::from_micros(100);
        let asks: Vec<_> = std::iter::from_fn(|| c.poll(t2, ring, 1, 100 * b, &peers, &params))
            .map(|(to, r)| (to, r.from, r.to))
            .collect();
        assert_eq!(
            asks,
            [
                (NodeId(1), b, 2 * b),
                (NodeId(1), 2 * b, 3 * b),
                (NodeId(1), 3 * b, 4 * b),
                (NodeId(1), 4 * b, 5 * b)
            ],
            "asks start below frontier 1 + 4 batches, each where the last ended"
        );
        let (_, next) = c.poll(t2, ring, b + 1, 100 * b, &peers, &params).unwrap();
        assert_eq!(
            (next.from, next.to),
            (5 * b, 6 * b),
            "the window slid by a batch"
        );
        assert!(c.poll(t2, ring, b + 1, 100 * b, &peers, &params).is_none());
        let stalled = t2 + params.recovery_timeout;
        assert!(
            c.poll(stalled, ring, b + 1, 100 * b, &peers, &params)
                .is_none()
        );
        let (to, again) = c
            .poll(
                stalled + params.recovery_timeout,
                ring,
                b + 1,
                100 * b,
                &peers,
                &params,
            )
            .expect("the timed ask, after the gap persisted");
        assert_eq!((to, again.from), (NodeId(2), b + 1));
        let t3 = stalled + params.recovery_timeout * 2;
        let near_end = 100 * b - 10;
        let (_, tail) = c
            .poll(t3, ring, near_end, 100 * b, &peers, &params)
            .unwrap();
        assert_eq!(
            (tail.from, tail.to),
            (near_end, 100 * b),
            "asks stop at the horizon"
        );
        assert!(
            c.poll(t3, ring, 100 * b - 5, 100 * b, &peers, &params)
                .is_none()
        );
        assert!(
            c.poll(t3, ring, 100 * b, 100 * b, &peers, &params)
                .is_none()
        );
        assert!(!c.pipelining(), "a closed gap ends the pipeline");
    }

    // An acceptor's follow-ups wait for their pace; a learner's do not.
    #[test]
    fn a_paced_follow_up_waits_for_its_pace() {
        let params = Params::default();
        let t0 = Instant::now();
        let pace = Duration::from_millis(10);
        let peers = [NodeId(1)];
        let mut c = Catchup::new(0, t0, pace, 1);
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
        let mut c = Catchup::new(5, t0, Duration::ZERO, 1);
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
