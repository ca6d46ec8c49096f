//! The properties of docs/ARCHITECTURE.md, "The atomic multicast", checked on every delivery and at
//! the end of every simulated run.
//!
//! - uniform agreement: every learner delivers the same value for an instance
//!   (and no acceptor sees two different decisions for one instance);
//! - integrity: a learner delivers each command at most once per ring, and
//!   only commands that were proposed to that ring, with their payload;
//! - per-ring order: each learner delivers a ring's instances 0, 1, 2, ...;
//! - merge order: merges of the same rings produce the same sequence; merges
//!   sharing rings A and B order A's and B's commands the same way;
//! - validity (after healing): every proposed command is delivered by every
//!   learner subscribed to its ring, and comes out of every merge of its ring.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;

use super::scenario::LearnerSpec;
use psmr_core::proto::{CommandId, Delivery, Instance, Merger, NodeId, RingId, Value};

/// A property that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two learners delivered different values for one instance.
    Agreement {
        /// Ring.
        ring: RingId,
        /// Instance.
        instance: Instance,
        /// The learner that disagreed with an earlier delivery.
        learner: NodeId,
    },
    /// An acceptor learned two different decisions for one instance.
    AcceptorConflict {
        /// The acceptor.
        acceptor: NodeId,
    },
    /// An acceptor holds as decided a value other than the one decided.
    AcceptorAgreement {
        /// The acceptor.
        acceptor: NodeId,
        /// Ring.
        ring: RingId,
        /// Instance.
        instance: Instance,
    },
    /// A learner delivered a command twice on one ring.
    Duplicate {
        /// Learner.
        learner: NodeId,
        /// Ring.
        ring: RingId,
        /// Command.
        command: CommandId,
    },
    /// A learner delivered a command that was not proposed to that ring with that payload.
    Invented {
        /// Learner.
        learner: NodeId,
        /// Ring.
        ring: RingId,
        /// Command.
        command: CommandId,
    },
    /// A learner skipped or repeated an instance.
    Order {
        /// Learner.
        learner: NodeId,
        /// Ring.
        ring: RingId,
        /// Expected instance.
        expected: Instance,
        /// Delivered instance.
        got: Instance,
    },
    /// Two merges disagree on the relative order of commands of shared rings.
    MergeOrder {
        /// One merge (learner, rings).
        a: (NodeId, Vec<RingId>),
        /// The other.
        b: (NodeId, Vec<RingId>),
    },
    /// After healing, a proposed command never reached a subscribed learner or merge.
    Validity {
        /// Learner.
        learner: NodeId,
        /// Command.
        command: CommandId,
        /// Its ring.
        ring: RingId,
        /// The merge (its rings) that never released it; `None`: the learner never delivered it.
        merge: Option<Vec<RingId>>,
    },
}

impl Violation {
    /// Whether this is a safety violation (as opposed to validity, a liveness property).
    pub fn is_safety(&self) -> bool {
        !matches!(self, Violation::Validity { .. })
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Agreement {
                ring,
                instance,
                learner,
            } => {
                write!(
                    f,
                    "agreement: {learner} delivered a different value for {ring} instance {instance}"
                )
            }
            Violation::AcceptorConflict { acceptor } => {
                write!(
                    f,
                    "agreement: acceptor {acceptor} learned two decisions for one instance"
                )
            }
            Violation::AcceptorAgreement {
                acceptor,
                ring,
                instance,
            } => {
                write!(
                    f,
                    "agreement: acceptor {acceptor} holds a different value as decided for {ring} instance {instance}"
                )
            }
            Violation::Duplicate {
                learner,
                ring,
                command,
            } => {
                write!(
                    f,
                    "integrity: {learner} delivered {command:?} twice on {ring}"
                )
            }
            Violation::Invented {
                learner,
                ring,
                command,
            } => {
                write!(
                    f,
                    "integrity: {learner} delivered {command:?} on {ring}, which was not proposed there"
                )
            }
            Violation::Order {
                learner,
                ring,
                expected,
                got,
            } => {
                write!(
                    f,
                    "order: {learner} delivered {ring} instance {got}, expected {expected}"
                )
            }
            Violation::MergeOrder { a, b } => {
                write!(
                    f,
                    "merge order: {} {:?} and {} {:?} disagree",
                    a.0, a.1, b.0, b.1
                )
            }
            Violation::Validity {
                learner,
                command,
                ring,
                merge: None,
            } => {
                write!(
                    f,
                    "validity: {learner} never delivered {command:?} of {ring} after healing"
                )
            }
            Violation::Validity {
                learner,
                command,
                ring,
                merge: Some(rings),
            } => {
                write!(
                    f,
                    "validity: {learner}'s merge of {rings:?} never released {command:?} of {ring} after healing"
                )
            }
        }
    }
}

struct MergeLog {
    learner: NodeId,
    merger: Merger,
    sequence: Vec<(RingId, CommandId)>,
    merged: HashSet<CommandId>,
}

struct LearnerLog {
    rings: Vec<RingId>,
    next: BTreeMap<RingId, Instance>,
    delivered: BTreeMap<RingId, HashSet<CommandId>>,
}

/// Records what was proposed and delivered, and checks the properties.
pub struct Checker {
    proposed: HashMap<CommandId, (RingId, Bytes)>,
    decided: HashMap<(RingId, Instance), u64>,
    /// What acceptors hold as decided.
    held: HashMap<(RingId, Instance), u64>,
    learners: BTreeMap<NodeId, LearnerLog>,
    merges: Vec<MergeLog>,
    /// Hash of every delivery in order, to compare two runs of one seed.
    pub trace: u64,
    /// When each command first came out of a merge (virtual nanoseconds).
    merged_at: HashMap<CommandId, u64>,
}

impl Checker {
    /// A checker for these learners and merges.
    pub fn new(specs: &[LearnerSpec], m: u32) -> Checker {
        let mut learners = BTreeMap::new();
        let mut merges = Vec::new();
        for spec in specs {
            let log = LearnerLog {
                rings: spec.rings.clone(),
                next: spec.rings.iter().map(|&r| (r, 0)).collect(),
                delivered: spec.rings.iter().map(|&r| (r, HashSet::new())).collect(),
            };
            learners.insert(spec.id, log);
            for rings in &spec.merges {
                merges.push(MergeLog {
                    learner: spec.id,
                    merger: Merger::new(rings, m).expect("valid merge"),
                    sequence: Vec::new(),
                    merged: HashSet::new(),
                });
            }
        }
        Checker {
            proposed: HashMap::new(),
            decided: HashMap::new(),
            held: HashMap::new(),
            learners,
            merges,
            trace: 0,
            merged_at: HashMap::new(),
        }
    }

    /// A command was proposed.
    pub fn proposed(&mut self, id: CommandId, ring: RingId, payload: Bytes) {
        self.proposed.insert(id, (ring, payload));
    }

    /// Number of commands proposed.
    pub fn proposed_count(&self) -> usize {
        self.proposed.len()
    }

    /// A learner delivered an instance; checks agreement, integrity, order.
    pub fn delivered(&mut self, learner: NodeId, d: &Delivery, now: u64) -> Result<(), Violation> {
        let digest = digest(&d.value);
        self.trace = mix(self.trace, digest ^ u64::from(learner.0));
        let log = self.learners.get_mut(&learner).expect("known learner");
        let next = log.next.get_mut(&d.ring).expect("subscribed ring");
        if d.instance != *next {
            let (expected, got) = (*next, d.instance);
            return Err(Violation::Order {
                learner,
                ring: d.ring,
                expected,
                got,
            });
        }
        *next += 1;
        if *self.decided.entry((d.ring, d.instance)).or_insert(digest) != digest {
            return Err(Violation::Agreement {
                ring: d.ring,
                instance: d.instance,
                learner,
            });
        }
        let delivered = log.delivered.get_mut(&d.ring).expect("subscribed ring");
        for command in d.value.commands() {
            let proposed = self.proposed.get(&command.id);
            if proposed.is_none_or(|(ring, payload)| *ring != d.ring || *payload != command.payload)
            {
                return Err(Violation::Invented {
                    learner,
                    ring: d.ring,
                    command: command.id,
                });
            }
            if !delivered.insert(command.id) {
                return Err(Violation::Duplicate {
                    learner,
                    ring: d.ring,
                    command: command.id,
                });
            }
        }
        self.feed_merges(learner, d, now);
        Ok(())
    }

    /// An acceptor holds `value` as decided for `instance` of `ring`: every
    /// acceptor must hold the same (learners deliver it without the commands
    /// they had delivered before, so they are checked among themselves).
    pub fn acceptor_decided(
        &mut self,
        acceptor: NodeId,
        ring: RingId,
        instance: Instance,
        value: &Value,
    ) -> Result<(), Violation> {
        let digest = digest(value);
        let first = *self.held.entry((ring, instance)).or_insert(digest);
        if first != digest {
            return Err(Violation::AcceptorAgreement {
                acceptor,
                ring,
                instance,
            });
        }
        Ok(())
    }

    /// The state of every merge, one line each.
    pub fn describe_merges(&self) -> String {
        self.merges
            .iter()
            .map(|m| format!("{} merge: {}\n", m.learner, m.merger.describe()))
            .collect()
    }

    /// When `command` first came out of a merge.
    pub fn merged_at(&self, command: CommandId) -> Option<u64> {
        self.merged_at.get(&command).copied()
    }

    fn feed_merges(&mut self, learner: NodeId, d: &Delivery, now: u64) {
        for log in self.merges.iter_mut().filter(|m| m.learner == learner) {
            if log.merger.rings().contains(&d.ring) {
                log.merger
                    .push(d.ring, d.instance, d.value.clone())
                    .expect("merged ring");
                while let Some(batch) = log.merger.poll() {
                    log.sequence
                        .extend(batch.commands.iter().map(|c| (batch.ring, c.id)));
                    log.merged.extend(batch.commands.iter().map(|c| c.id));
                    for c in batch.commands.iter() {
                        self.merged_at.entry(c.id).or_insert(now);
                    }
                }
            }
        }
    }

    /// Whether every proposed command reached every subscribed learner.
    pub fn all_delivered(&self) -> bool {
        self.first_undelivered().is_none()
    }

    fn first_undelivered(&self) -> Option<Violation> {
        let mut ids: Vec<(&CommandId, &(RingId, Bytes))> = self.proposed.iter().collect();
        ids.sort_by_key(|(id, _)| **id);
        for (&command, (ring, _)) in ids {
            for (&learner, log) in &self.learners {
                let missing = log.rings.contains(ring) && !log.delivered[ring].contains(&command);
                if missing {
                    return Some(Violation::Validity {
                        learner,
                        command,
                        ring: *ring,
                        merge: None,
                    });
                }
            }
            for merge in &self.merges {
                let merged = merge.merger.rings().contains(ring);
                if merged && !merge.merged.contains(&command) {
                    return Some(Violation::Validity {
                        learner: merge.learner,
                        command,
                        ring: *ring,
                        merge: Some(merge.merger.rings().to_vec()),
                    });
                }
            }
        }
        None
    }

    /// The merge-order checks, and validity if `healed`.
    pub fn finish(&self, healed: bool) -> Result<(), Violation> {
        for (i, a) in self.merges.iter().enumerate() {
            for b in &self.merges[i + 1..] {
                check_merge_pair(a, b)?;
            }
        }
        match self.first_undelivered() {
            Some(v) if healed => Err(v),
            _ => Ok(()),
        }
    }
}

/// Projects both merged sequences on the rings they share; with two or more
/// shared rings one projection must be a prefix of the other.
fn check_merge_pair(a: &MergeLog, b: &MergeLog) -> Result<(), Violation> {
    let rings_a: BTreeSet<RingId> = a.merger.rings().iter().copied().collect();
    let shared: BTreeSet<RingId> = b
        .merger
        .rings()
        .iter()
        .copied()
        .filter(|r| rings_a.contains(r))
        .collect();
    if shared.len() < 2 {
        return Ok(());
    }
    let project = |log: &MergeLog| -> Vec<(RingId, CommandId)> {
        log.sequence
            .iter()
            .copied()
            .filter(|(r, _)| shared.contains(r))
            .collect()
    };
    let (pa, pb) = (project(a), project(b));
    let n = pa.len().min(pb.len());
    if pa[..n] != pb[..n] {
        return Err(Violation::MergeOrder {
            a: (a.learner, a.merger.rings().to_vec()),
            b: (b.learner, b.merger.rings().to_vec()),
        });
    }
    Ok(())
}

fn digest(value: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    match value {
        Value::Skip(n) => (0u8, n).hash(&mut h),
        Value::Batch(batch) => {
            (1u8, batch.span()).hash(&mut h);
            for c in batch.commands() {
                (c.id, c.low_water, &c.payload[..]).hash(&mut h);
            }
        }
    }
    h.finish()
}

fn mix(a: u64, b: u64) -> u64 {
    (a ^ b).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
}
