//! Network partitions and process pauses: the faults of the partition regime.
//!
//! An [`Episode`] starts at a time, lasts a while and then heals. While it is
//! active it blocks messages between sets of nodes (both ways, or one way),
//! loses a share of them in one direction, or pauses a process (it runs no
//! timer and handles no message until the pause ends; what was sent to it
//! waits, as in a socket buffer). Episodes may overlap; all of them end when
//! the run heals.
//!
//! The kinds are the faults an operator sees on real networks:
//!
//! | kind | what |
//! |---|---|
//! | split | two sides that do not hear each other (majority/minority) |
//! | inbound / outbound cut | one node hears nobody, or nobody hears it |
//! | pair cut | two nodes do not hear each other, both hear the rest (non-transitive) |
//! | lossy | one direction between two sets loses most messages |
//! | pause | a process stops (GC, SIGSTOP, a VM migration) and resumes |
//! | crash | an acceptor dies and restarts later (for probes; runs draw crashes apart) |

use std::collections::BTreeSet;
use std::time::Duration;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use psmr_core::proto::NodeId;

/// What an episode does while it is active.
#[derive(Clone, Debug, PartialEq)]
pub enum EpisodeKind {
    /// Messages between `side` and every other node are lost, both ways.
    Split {
        /// One side of the split.
        side: BTreeSet<NodeId>,
    },
    /// Messages from a node of `from` to a node of `to` are lost.
    Cut {
        /// Senders.
        from: BTreeSet<NodeId>,
        /// Receivers.
        to: BTreeSet<NodeId>,
    },
    /// Messages from a node of `from` to a node of `to` are lost with probability `loss`.
    Lossy {
        /// Senders.
        from: BTreeSet<NodeId>,
        /// Receivers.
        to: BTreeSet<NodeId>,
        /// Probability of loss.
        loss: f64,
    },
    /// The node runs nothing until the episode ends.
    Pause {
        /// The paused process.
        node: NodeId,
    },
    /// The acceptor crashes (what it did not sync is lost) and restarts
    /// when the episode ends.
    Crash {
        /// The acceptor.
        node: NodeId,
    },
}

/// One fault with a start and a duration.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// When it starts, from the start of the run.
    pub at: Duration,
    /// How long it lasts.
    pub duration: Duration,
    /// What it does.
    pub kind: EpisodeKind,
}

impl Episode {
    /// Whether this episode (active) blocks a message from `from` to `to`
    /// outright; `Some(p)`: lost with probability `p`.
    pub(super) fn loss(&self, from: NodeId, to: NodeId) -> Option<f64> {
        match &self.kind {
            EpisodeKind::Split { side } => {
                (side.contains(&from) != side.contains(&to)).then_some(1.0)
            }
            EpisodeKind::Cut { from: f, to: t } => {
                (f.contains(&from) && t.contains(&to)).then_some(1.0)
            }
            EpisodeKind::Lossy {
                from: f,
                to: t,
                loss,
            } => (f.contains(&from) && t.contains(&to)).then_some(*loss),
            EpisodeKind::Pause { .. } | EpisodeKind::Crash { .. } => None,
        }
    }

    /// The acceptor this episode crashes, if it is a crash.
    pub(super) fn crashed(&self) -> Option<NodeId> {
        match self.kind {
            EpisodeKind::Crash { node } => Some(node),
            _ => None,
        }
    }

    /// The node this episode pauses, if it is a pause.
    pub(super) fn paused(&self) -> Option<NodeId> {
        match self.kind {
            EpisodeKind::Pause { node } => Some(node),
            _ => None,
        }
    }
}

/// The nodes of a run, for drawing episodes.
pub(super) struct Cast<'a> {
    /// Acceptors, the first one being the initial coordinator of every ring
    /// that starts with it.
    pub(super) acceptors: &'a [NodeId],
    /// Learners and proposers.
    pub(super) others: Vec<NodeId>,
    /// The failure detector's timeout of the run.
    pub(super) suspect: Duration,
}

/// Draws the episodes of a safety phase of length `safety`.
pub(super) fn draw_episodes(
    rng: &mut ChaCha8Rng,
    cast: &Cast<'_>,
    safety: Duration,
) -> Vec<Episode> {
    let count = rng.random_range(1..=5);
    let safety_ms = safety.as_millis() as u64;
    let mut episodes: Vec<Episode> = (0..count)
        .map(|_| {
            let at = Duration::from_millis(rng.random_range(0..safety_ms * 4 / 5));
            let duration = draw_duration(rng, cast.suspect);
            let kind = draw_kind(rng, cast);
            Episode { at, duration, kind }
        })
        .collect();
    if rng.random_bool(0.4) {
        episodes.extend(flapping(rng, cast, safety));
    }
    episodes
}

/// The same split, again and again, each a little longer or shorter than
/// the suspect timeout: terms start and end on both sides while commands are
/// in flight (real networks flap like this; on rings of five it once broke
/// agreement).
fn flapping(rng: &mut ChaCha8Rng, cast: &Cast<'_>, safety: Duration) -> Vec<Episode> {
    let victim = cast.acceptors[0];
    let side = draw_side(rng, cast, victim);
    let suspect_ms = cast.suspect.as_millis() as u64;
    let mut at = rng.random_range(0..safety.as_millis() as u64 / 2);
    let mut episodes = Vec::new();
    for _ in 0..rng.random_range(3..=8) {
        let cut = rng.random_range(suspect_ms / 2..=suspect_ms * 3);
        episodes.push(Episode {
            at: Duration::from_millis(at),
            duration: Duration::from_millis(cut),
            kind: EpisodeKind::Split { side: side.clone() },
        });
        at += cut + rng.random_range(1..=suspect_ms * 2);
    }
    episodes
}

/// Mostly longer than the suspect timeout (an election happens), sometimes
/// shorter (it should not), sometimes long enough for much to be decided
/// without the cut-off nodes.
fn draw_duration(rng: &mut ChaCha8Rng, suspect: Duration) -> Duration {
    let suspect_ms = suspect.as_millis() as u64;
    let ms = match rng.random_range(0..10) {
        0..=1 => rng.random_range(5..=suspect_ms),
        2..=7 => rng.random_range(suspect_ms..=suspect_ms * 6),
        _ => rng.random_range(suspect_ms * 6..=1500),
    };
    Duration::from_millis(ms)
}

fn draw_kind(rng: &mut ChaCha8Rng, cast: &Cast<'_>) -> EpisodeKind {
    let acceptors = cast.acceptors;
    // The initial coordinator is the most interesting victim: favour it.
    let victim = if rng.random_bool(0.5) {
        acceptors[0]
    } else {
        acceptors[rng.random_range(0..acceptors.len())]
    };
    let everyone: BTreeSet<NodeId> = acceptors
        .iter()
        .chain(cast.others.iter())
        .copied()
        .collect();
    let all_but = |node: NodeId| -> BTreeSet<NodeId> {
        everyone.iter().copied().filter(|&n| n != node).collect()
    };
    match rng.random_range(0..8) {
        0 | 1 => EpisodeKind::Split {
            side: draw_side(rng, cast, victim),
        },
        2 => EpisodeKind::Cut {
            from: all_but(victim),
            to: BTreeSet::from([victim]),
        },
        3 => EpisodeKind::Cut {
            from: BTreeSet::from([victim]),
            to: all_but(victim),
        },
        4 => {
            let other = loop {
                let o = acceptors[rng.random_range(0..acceptors.len())];
                if o != victim || acceptors.len() == 1 {
                    break o;
                }
            };
            // Two one-way cuts make a symmetric cut of just the pair.
            let pair = BTreeSet::from([victim, other]);
            EpisodeKind::Cut {
                from: pair.clone(),
                to: pair,
            }
        }
        5 => {
            let inbound = rng.random_bool(0.5);
            let (from, to) = if inbound {
                (all_but(victim), BTreeSet::from([victim]))
            } else {
                (BTreeSet::from([victim]), all_but(victim))
            };
            EpisodeKind::Lossy {
                from,
                to,
                loss: rng.random_range(0.3..=0.95),
            }
        }
        _ => EpisodeKind::Pause { node: victim },
    }
}

/// A side of a split that holds `victim`: a minority or a majority of the
/// acceptors, and each learner or proposer with a coin flip.
fn draw_side(rng: &mut ChaCha8Rng, cast: &Cast<'_>, victim: NodeId) -> BTreeSet<NodeId> {
    let n = cast.acceptors.len();
    // Minorities of more than one acceptor are the interesting ones on rings of five and seven.
    let size = if n > 3 && rng.random_bool(0.5) {
        rng.random_range(2..=n / 2)
    } else {
        rng.random_range(1..n.max(2))
    };
    let mut side = BTreeSet::from([victim]);
    while side.len() < size {
        side.insert(cast.acceptors[rng.random_range(0..n)]);
    }
    for &other in &cast.others {
        if rng.random_bool(0.5) {
            side.insert(other);
        }
    }
    side
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nodes: &[u32]) -> BTreeSet<NodeId> {
        nodes.iter().map(|&n| NodeId(n)).collect()
    }

    #[test]
    fn a_split_blocks_both_ways_and_a_cut_one_way() {
        let ep = |kind| Episode {
            at: Duration::ZERO,
            duration: Duration::from_secs(1),
            kind,
        };
        let split = ep(EpisodeKind::Split { side: set(&[1, 2]) });
        assert_eq!(split.loss(NodeId(1), NodeId(3)), Some(1.0));
        assert_eq!(split.loss(NodeId(3), NodeId(2)), Some(1.0));
        assert_eq!(split.loss(NodeId(1), NodeId(2)), None);
        let cut = ep(EpisodeKind::Cut {
            from: set(&[2, 3]),
            to: set(&[1]),
        });
        assert_eq!(cut.loss(NodeId(2), NodeId(1)), Some(1.0));
        assert_eq!(cut.loss(NodeId(1), NodeId(2)), None);
        let pair = ep(EpisodeKind::Cut {
            from: set(&[1, 2]),
            to: set(&[1, 2]),
        });
        assert_eq!(pair.loss(NodeId(1), NodeId(2)), Some(1.0));
        assert_eq!(pair.loss(NodeId(2), NodeId(1)), Some(1.0));
        assert_eq!(pair.loss(NodeId(1), NodeId(3)), None);
        assert_eq!(pair.loss(NodeId(3), NodeId(2)), None);
    }
}
