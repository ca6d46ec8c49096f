//! The proposer: gives commands their identity, sends them to a ring's
//! acceptors, and sends them again until told they are done.
//!
//! A first attempt goes to the ring's preferred acceptor, at first its
//! initial coordinator; each retry goes to the next acceptor in ring order,
//! which forwards it to the coordinator it believes in. A retry that finds
//! the preferred acceptor silent moves the preference to the next one, so
//! that after a crash new commands stop paying a retry timeout each. Every command carries the
//! proposer's low-water mark (its oldest unfinished `seq`), which bounds what
//! learners must remember to deliver each command at most once.
//!
//! How a proposer learns that a command is done is up to its user: a client
//! learns it from a replica's reply; the simulator from any learner.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use super::config::MulticastConfig;
use super::messages::{Message, Propose, Transmit};
use super::seqmap::SeqMap;
use super::types::{Command, CommandId, NodeId, ProposerId, RingId};

/// Why a proposal was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProposeError {
    /// The ring does not exist.
    #[error("unknown ring {ring}")]
    UnknownRing {
        /// The ring.
        ring: RingId,
    },
}

struct Outstanding {
    ring: RingId,
    payload: Bytes,
    attempt: usize,
    deadline: Instant,
}

struct Ring {
    acceptors: Vec<NodeId>,
    /// Index of the acceptor that first attempts go to (never wrapped).
    preferred: usize,
}

/// A source of commands for the rings of a cluster.
pub struct Proposer {
    id: ProposerId,
    rings: BTreeMap<RingId, Ring>,
    retry_timeout: Duration,
    next_seq: u64,
    outstanding: SeqMap<Outstanding>,
    /// (deadline, seq) in deadline order; entries of finished commands are skipped.
    deadlines: VecDeque<(Instant, u64)>,
    staged: BTreeMap<(NodeId, RingId), Vec<Command>>,
}

impl Proposer {
    /// A proposer `id` for the rings of `config`, resending after `retry_timeout`.
    pub fn new(id: ProposerId, config: &MulticastConfig, retry_timeout: Duration) -> Proposer {
        Proposer {
            id,
            rings: config
                .rings
                .iter()
                .map(|r| {
                    let ring = Ring {
                        acceptors: r.acceptors.clone(),
                        preferred: 0,
                    };
                    (r.id, ring)
                })
                .collect(),
            retry_timeout,
            next_seq: 0,
            outstanding: SeqMap::default(),
            deadlines: VecDeque::new(),
            staged: BTreeMap::new(),
        }
    }

    /// This proposer's id.
    pub fn id(&self) -> ProposerId {
        self.id
    }

    /// Proposes `payload` to `ring`.
    pub fn propose(
        &mut self,
        now: Instant,
        ring: RingId,
        payload: Bytes,
    ) -> Result<CommandId, ProposeError> {
        let Some(preferred) = self.rings.get(&ring).map(|r| r.preferred) else {
            return Err(ProposeError::UnknownRing { ring });
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = now + self.retry_timeout;
        self.outstanding.insert(
            seq,
            Outstanding {
                ring,
                payload,
                attempt: preferred,
                deadline,
            },
        );
        self.deadlines.push_back((deadline, seq));
        self.stage(seq);
        Ok(CommandId {
            proposer: self.id,
            seq,
        })
    }

    /// The command is delivered (or abandoned): stop sending it.
    pub fn done(&mut self, id: CommandId) {
        if id.proposer == self.id {
            self.outstanding.remove(id.seq);
        }
        self.prune();
    }

    /// Drops finished or superseded deadlines from the front.
    fn prune(&mut self) {
        while let Some(&(deadline, seq)) = self.deadlines.front() {
            if self
                .outstanding
                .get(seq)
                .is_some_and(|o| o.deadline == deadline)
            {
                break;
            }
            self.deadlines.pop_front();
        }
    }

    /// Commands not done yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    fn low_water(&self) -> u64 {
        self.outstanding.first().unwrap_or(self.next_seq)
    }

    fn stage(&mut self, seq: u64) {
        let low_water = self.low_water();
        let o = self
            .outstanding
            .get(seq)
            .expect("staged commands are outstanding");
        let acceptors = &self.rings[&o.ring].acceptors;
        let to = acceptors[o.attempt % acceptors.len()];
        let command = Command {
            id: CommandId {
                proposer: self.id,
                seq,
            },
            low_water,
            payload: o.payload.clone(),
        };
        self.staged.entry((to, o.ring)).or_default().push(command);
    }

    /// Resends the commands whose retry timeout passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, seq)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(o) = self.outstanding.get_mut(seq) else {
                continue;
            };
            if o.deadline != deadline {
                continue;
            }
            let ring = self
                .rings
                .get_mut(&o.ring)
                .expect("proposed to a known ring");
            if o.attempt == ring.preferred {
                ring.preferred += 1;
            }
            o.attempt += 1;
            o.deadline = now + self.retry_timeout;
            self.deadlines.push_back((o.deadline, seq));
            self.stage(seq);
        }
        self.prune();
    }

    /// The next message: all commands staged for one acceptor and ring.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let ((to, ring), commands) = self.staged.pop_first()?;
        let message = Message::Propose(Propose {
            ring,
            commands,
            forwarded: false,
        });
        Some(Transmit { to, message })
    }

    /// When [`Proposer::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(deadline, _)| deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::config::RingConfig;

    fn config() -> MulticastConfig {
        MulticastConfig {
            rings: vec![RingConfig {
                id: RingId(0),
                acceptors: vec![NodeId(1), NodeId(2), NodeId(3)],
                learners: vec![],
            }],
            merges: Vec::new(),
            params: Default::default(),
        }
    }

    #[test]
    fn retries_rotate_through_acceptors_until_done() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(10);
        let mut p = Proposer::new(ProposerId(9), &config(), timeout);
        let id = p.propose(t0, RingId(0), Bytes::from_static(b"x")).unwrap();
        let first = p.poll_transmit().unwrap();
        assert_eq!(first.to, NodeId(1));
        assert!(p.poll_transmit().is_none());
        assert_eq!(p.poll_timeout(), Some(t0 + timeout));
        p.handle_timeout(t0 + timeout);
        assert_eq!(p.poll_transmit().unwrap().to, NodeId(2));
        p.done(id);
        p.handle_timeout(t0 + timeout * 5);
        assert!(p.poll_transmit().is_none());
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn a_silent_acceptor_loses_the_preference_once() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(10);
        let mut p = Proposer::new(ProposerId(9), &config(), timeout);
        for _ in 0..3 {
            p.propose(t0, RingId(0), Bytes::new()).unwrap();
        }
        assert_eq!(p.poll_transmit().unwrap().to, NodeId(1));
        // All three time out together: the preference moves one step, not three.
        p.handle_timeout(t0 + timeout);
        assert_eq!(p.poll_transmit().unwrap().to, NodeId(2));
        assert!(p.poll_transmit().is_none());
        p.propose(t0 + timeout, RingId(0), Bytes::new()).unwrap();
        assert_eq!(p.poll_transmit().unwrap().to, NodeId(2));
    }

    #[test]
    fn commands_carry_the_low_water_mark() {
        let t0 = Instant::now();
        let mut p = Proposer::new(ProposerId(1), &config(), Duration::from_secs(1));
        let a = p.propose(t0, RingId(0), Bytes::new()).unwrap();
        let _b = p.propose(t0, RingId(0), Bytes::new()).unwrap();
        p.done(a);
        let _c = p.propose(t0, RingId(0), Bytes::new()).unwrap();
        let Message::Propose(batch) = p.poll_transmit().unwrap().message else {
            panic!()
        };
        let marks: Vec<u64> = batch.commands.iter().map(|c| c.low_water).collect();
        assert_eq!(marks, vec![0, 0, 1]);
        assert_eq!(
            p.propose(t0, RingId(5), Bytes::new()),
            Err(ProposeError::UnknownRing { ring: RingId(5) })
        );
    }
}
