//! The acceptor storage interface: what an acceptor makes durable ([`Record`]),
//! what it gets back at restart ([`Recovered`]), and the [`Storage`] trait that
//! the implementations in `psmr-multicast` (durable log, memory) provide.
//!
//! An acceptor writes a [`Record`] for every promise and vote before the
//! message that carries it leaves: the node collects the records of what it
//! handles and hands them to its driver with the messages, in one
//! `proto::Ready`; the driver appends them and calls [`Storage::sync`] once
//! for all of them (grouped fsync) before it releases any of the messages
//! (`crate::persist::Persister`).
//!
//! Two modes:
//! - `DurableStorage`: a segmented append-only log of every record; a
//!   restarted acceptor recovers its promises and accepted values.
//! - `MemoryStorage`: accepted values live only in the acceptor's memory.
//!   Promises and a *vote bound* (an upper bound on the instances the acceptor
//!   may have voted for, reserved ahead in chunks) still go to a small durable
//!   metadata log, so that a restarted acceptor knows what it promised and
//!   which instances it may have forgotten votes for. It abstains from Phase 1
//!   until it has learned every decision below that bound. Without this, a
//!   restarted in-memory acceptor would rejoin as if it had promised nothing,
//!   which lets two different values be decided for one instance (the
//!   simulator's broken-acceptor test shows it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::proto::{Ballot, Instance, RingId, Value};

/// One entry of an acceptor's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The acceptor promised `ballot` for every instance of the ring.
    Promise {
        /// Ring.
        ring: RingId,
        /// Ballot promised.
        ballot: Ballot,
    },
    /// The acceptor voted for `value` in `instance` at `ballot` (this also
    /// promises `ballot`).
    Accept {
        /// Ring.
        ring: RingId,
        /// Instance.
        instance: Instance,
        /// Ballot.
        ballot: Ballot,
        /// Value voted for.
        value: Value,
    },
    /// The acceptor learned that `value` was decided in `instance`. Replay
    /// keeps it whatever ballots the acceptor voted at for that instance:
    /// the label of a decision may be below a vote of another value that was
    /// never chosen, so "highest ballot wins" would bring that vote back.
    Decided {
        /// Ring.
        ring: RingId,
        /// Instance.
        instance: Instance,
        /// The ballot the decision came labelled with.
        ballot: Ballot,
        /// The decided value.
        value: Value,
    },
    /// The acceptor will not vote for an instance at or above `bound` before
    /// writing a higher bound.
    VoteBound {
        /// Ring.
        ring: RingId,
        /// Exclusive upper bound on instances voted.
        bound: Instance,
    },
    /// Every instance below `below` is decided, and the acceptor's log holds
    /// the decided values (durable storage only).
    Frontier {
        /// Ring.
        ring: RingId,
        /// First instance not known decided.
        below: Instance,
        /// Merge position of `below`.
        position: u64,
    },
    /// Every instance below `below` is decided and discarded.
    Trim {
        /// Ring.
        ring: RingId,
        /// First instance kept.
        below: Instance,
        /// Merge position of `below`.
        position: u64,
    },
}

impl Record {
    /// The ring the record is about.
    pub fn ring(&self) -> RingId {
        match self {
            Record::Promise { ring, .. }
            | Record::Accept { ring, .. }
            | Record::Decided { ring, .. }
            | Record::VoteBound { ring, .. }
            | Record::Frontier { ring, .. }
            | Record::Trim { ring, .. } => *ring,
        }
    }

    /// Whether the record is metadata (kept by memory storage too). Accepted
    /// values and frontiers, which describe values, are not.
    pub fn is_metadata(&self) -> bool {
        !matches!(
            self,
            Record::Accept { .. } | Record::Decided { .. } | Record::Frontier { .. }
        )
    }
}

/// What storage gives back to an acceptor that starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Per ring.
    pub rings: BTreeMap<RingId, RecoveredRing>,
    /// True if accepted values were not kept (memory storage): votes below
    /// each ring's vote bound may have been forgotten.
    pub values_lost: bool,
}

/// One ring's recovered acceptor state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredRing {
    /// Highest ballot promised (or accepted).
    pub promised: Ballot,
    /// Accepted values at or above `trimmed_below`, highest ballot per
    /// instance, or the decided value where the acceptor recorded one.
    pub accepted: BTreeMap<Instance, (Ballot, Value)>,
    /// The instances of `accepted` recorded as decided.
    pub decided: std::collections::BTreeSet<Instance>,
    /// Highest vote bound written.
    pub vote_bound: Instance,
    /// First instance not trimmed.
    pub trimmed_below: Instance,
    /// Merge position of `trimmed_below`.
    pub trim_position: u64,
    /// Highest frontier written: every instance below is decided, with its
    /// decided value in `accepted` (or trimmed).
    pub frontier: Instance,
    /// Merge position of `frontier`.
    pub frontier_position: u64,
}

impl Recovered {
    /// Folds one record into the recovered state.
    pub fn apply(&mut self, record: Record) {
        let ring = self.rings.entry(record.ring()).or_default();
        match record {
            Record::Promise { ballot, .. } => ring.promised = ring.promised.max(ballot),
            Record::Accept {
                instance,
                ballot,
                value,
                ..
            } => {
                ring.promised = ring.promised.max(ballot);
                if instance >= ring.trimmed_below && !ring.decided.contains(&instance) {
                    let newer = ring
                        .accepted
                        .get(&instance)
                        .is_none_or(|(b, _)| *b <= ballot);
                    if newer {
                        ring.accepted.insert(instance, (ballot, value));
                    }
                }
            }
            Record::Decided {
                instance,
                ballot,
                value,
                ..
            } => {
                if instance >= ring.trimmed_below {
                    ring.accepted.insert(instance, (ballot, value));
                    ring.decided.insert(instance);
                }
            }
            Record::VoteBound { bound, .. } => ring.vote_bound = ring.vote_bound.max(bound),
            Record::Frontier {
                below, position, ..
            } => {
                if below > ring.frontier {
                    ring.frontier = below;
                    ring.frontier_position = position;
                }
            }
            Record::Trim {
                below, position, ..
            } => {
                if below > ring.trimmed_below {
                    ring.trimmed_below = below;
                    ring.trim_position = position;
                    ring.accepted = ring.accepted.split_off(&below);
                    ring.decided = ring.decided.split_off(&below);
                }
            }
        }
    }
}

/// Where an acceptor's records go.
pub trait Storage: Send {
    /// Reads back what a previous run of this acceptor made durable.
    fn recover(&mut self) -> Result<Recovered, StorageError>;
    /// Buffers a record; it is durable after the next [`Storage::sync`].
    fn append(&mut self, record: &Record) -> Result<(), StorageError>;
    /// Makes every appended record durable (one fdatasync for the group).
    fn sync(&mut self) -> Result<(), StorageError>;
}

/// Why storage failed. An acceptor whose storage fails stops voting.
#[derive(Debug, Error)]
pub enum StorageError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A record before the end of the log is damaged: not a torn write, so
    /// recovery refuses to guess.
    #[error("corrupt log {path} at byte {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Offset of the damaged record.
        offset: u64,
        /// What is wrong with it.
        reason: Corruption,
    },
    /// The directory holds no initialized acceptor storage.
    #[error("{} is {}: an acceptor that starts without its storage forgets its promises and can break agreement. If this is a new acceptor, start it once with --init; if it held this acceptor's data, restore that (data_dir resolves relative to the cluster file)", dir.display(), if *empty { "missing or empty" } else { "not an acceptor's data directory (no ACCEPTOR marker)" })]
    NotInitialized {
        /// The directory.
        dir: PathBuf,
        /// Whether it is missing or empty (rather than holding something else).
        empty: bool,
    },
    /// `--init` on a directory that already holds something.
    #[error("{} is not empty: --init creates a new acceptor's storage and never overwrites one", dir.display())]
    AlreadyInitialized {
        /// The directory.
        dir: PathBuf,
    },
    /// Too many acceptors of a ring restarted without their accepted values
    /// (memory storage) for the ring ever to decide again.
    #[error(
        "fewer than a quorum of ring {ring}'s acceptors kept their accepted values (memory storage, restarted), and none leads: the ring cannot decide again without risking agreement. Decisions only they held are lost. Start a new cluster (wipe every acceptor's data directory, start each with --init), and use durable storage where a whole-cluster restart must keep the log"
    )]
    AllAmnesiac {
        /// The ring.
        ring: RingId,
    },
    /// A record could not be encoded.
    #[error("cannot encode a log record: {0}")]
    Encode(#[source] postcard::Error),
}

/// What is wrong with a damaged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Corruption {
    /// The checksum does not match the payload.
    #[error("checksum mismatch")]
    Checksum,
    /// The entry's header does not match its own checksum.
    #[error("damaged entry header")]
    Header,
    /// The segment does not start with this build's format header (a log of
    /// an older psmr, or not a log).
    #[error("not a log of format 2 (written by an older psmr, or not a log)")]
    Format,
    /// The length prefix is impossible.
    #[error("record length {0} is out of range")]
    Length(u32),
    /// The checksum matches but the payload is not a record.
    #[error("undecodable record")]
    Decode,
    /// A segment other than the last one ends in the middle of a record.
    #[error("segment ends inside a record")]
    Truncated,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::NodeId;

    fn b(round: u64) -> Ballot {
        Ballot {
            round,
            node: NodeId(1),
        }
    }

    #[test]
    fn replay_keeps_highest_ballots_and_applies_trims() {
        let r = RingId(0);
        let mut rec = Recovered::default();
        rec.apply(Record::Promise {
            ring: r,
            ballot: b(2),
        });
        rec.apply(Record::Accept {
            ring: r,
            instance: 5,
            ballot: b(3),
            value: Value::Skip(1),
        });
        rec.apply(Record::Accept {
            ring: r,
            instance: 5,
            ballot: b(1),
            value: Value::Skip(9),
        });
        rec.apply(Record::Accept {
            ring: r,
            instance: 2,
            ballot: b(3),
            value: Value::Skip(2),
        });
        rec.apply(Record::VoteBound {
            ring: r,
            bound: 100,
        });
        rec.apply(Record::VoteBound { ring: r, bound: 50 });
        rec.apply(Record::Trim {
            ring: r,
            below: 3,
            position: 7,
        });
        let ring = &rec.rings[&r];
        assert_eq!(ring.promised, b(3));
        assert_eq!(ring.vote_bound, 100);
        assert_eq!(ring.trimmed_below, 3);
        assert_eq!(ring.trim_position, 7);
        assert_eq!(ring.accepted.len(), 1);
        assert_eq!(ring.accepted[&5], (b(3), Value::Skip(1)));
    }

    // A decision may come labelled with a ballot below a vote of another
    // value this acceptor cast for the same instance (that vote was never
    // chosen): replay keeps the decided value, never the higher vote.
    #[test]
    fn a_recorded_decision_outlives_a_higher_vote_of_another_value() {
        let r = RingId(1);
        let mut rec = Recovered::default();
        rec.apply(Record::Accept {
            ring: r,
            instance: 22,
            ballot: b(4),
            value: Value::Skip(1),
        });
        rec.apply(Record::Decided {
            ring: r,
            instance: 22,
            ballot: b(3),
            value: Value::Skip(170),
        });
        rec.apply(Record::Accept {
            ring: r,
            instance: 22,
            ballot: b(5),
            value: Value::Skip(9),
        });
        let ring = &rec.rings[&r];
        assert_eq!(ring.accepted[&22], (b(3), Value::Skip(170)));
        assert!(ring.decided.contains(&22));
    }
}
