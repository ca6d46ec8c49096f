//! Configuration of the multicast: the rings, their acceptors and learners,
//! and the protocol parameters (docs/ARCHITECTURE.md, "The cluster file").
//!
//! Every parameter has a documented unit and default; [`MulticastConfig::validate`]
//! rejects what cannot work with an error that names the field.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::types::{NodeId, RingId};

/// Largest ring: votes are a 64-bit mask over ring positions.
pub const MAX_RING_ACCEPTORS: usize = 63;

/// One multicast group and the acceptors that order it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// The ring's identity.
    pub id: RingId,
    /// Acceptors in ring order; an odd number `2f + 1`. The first is the
    /// initial coordinator.
    pub acceptors: Vec<NodeId>,
    /// Learners subscribed to the ring: the decider sends them every decision.
    pub learners: Vec<NodeId>,
}

impl RingConfig {
    /// `f`: how many acceptors of the ring may fail.
    pub fn faults(&self) -> usize {
        self.acceptors.len() / 2
    }

    /// Votes needed for a decision, and promises needed for Phase 1: `f + 1`.
    pub fn quorum(&self) -> usize {
        self.faults() + 1
    }

    /// Position of `node` in the ring order.
    pub fn position(&self, node: NodeId) -> Option<usize> {
        self.acceptors.iter().position(|&a| a == node)
    }
}

/// Protocol parameters shared by every node of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Instances a coordinator may have proposed and not yet seen decided.
    /// Under load, commands wait while the window is full and go out in
    /// bigger batches: a small window batches more. Default 16.
    pub window: u64,
    /// Most commands in one batch (one instance). Default 64.
    pub batch_max_commands: usize,
    /// Most payload bytes in one batch. Default 256 KiB.
    pub batch_max_bytes: usize,
    /// How long a coordinator may hold a partial batch, waiting for more
    /// commands, when the window has room. Default 0: propose at once; batches
    /// then form naturally while the window is full.
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
    /// Commands a coordinator queues before it drops new proposals (the
    /// proposer retries). Default 100,000.
    pub max_pending_commands: usize,
    /// Interval between heartbeats from an acceptor to its peers. Default 20 ms.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Silence after which an acceptor suspects a peer. Default 150 ms.
    #[serde(with = "humantime_serde")]
    pub suspect_timeout: Duration,
    /// Time after which a coordinator resends a Prepare or an Accept that got
    /// no answer. Default 50 ms.
    #[serde(with = "humantime_serde")]
    pub retry_timeout: Duration,
    /// Δ of rate leveling: how often a coordinator levels its ring. Default 1 ms.
    #[serde(with = "humantime_serde")]
    pub delta: Duration,
    /// λ of rate leveling, in merge positions per second: an idle ring advances
    /// at least λ·Δ positions every Δ, and leads the busiest ring it sees by
    /// λ·Δ. A skip of any size is one instance, so a large λ costs nothing.
    /// Default 1,000,000.
    pub lambda: u64,
    /// M of the deterministic merge: instances taken from each ring per turn. Default 1.
    pub merge_m: u32,
    /// The most decided instances an acceptor keeps per ring. Default 10,000,000.
    pub retention: u64,
    /// The most bytes of decided values an acceptor keeps per ring (each
    /// instance counts its encoded value and [`SLOT_BYTES`] of bookkeeping),
    /// so that memory stays bounded when a replica is down for good.
    /// Default 256 MiB.
    pub retention_bytes: u64,
    /// An acceptor trims the decided instances below what this many of the
    /// ring's replicas have made durable in a checkpoint (reported with
    /// `Checkpointed`); 0: every replica listed as the ring's learner.
    /// Default 0.
    pub trim_replicas: usize,
    /// Memory storage: how far ahead of the highest instance voted the durable
    /// vote bound is reserved (one metadata sync per this many instances). A
    /// restarted acceptor stays out of elections until its ring has decided
    /// past the bound, so a small reserve shortens that. Default 256.
    pub vote_bound_reserve: u64,
    /// How long a learner or acceptor waits on a gap before asking an acceptor,
    /// and between asks. Default 20 ms.
    #[serde(with = "humantime_serde")]
    pub recovery_timeout: Duration,
    /// Most instances in one answer to a learn request. Default 256.
    pub recovery_batch: u64,
    /// Instances a learner buffers beyond the next one it delivers; later
    /// ones are dropped and fetched again. Default 65,536.
    pub learner_buffer: u64,
    /// A learner forgets a proposer it has not seen for this many instances
    /// of a ring (at-most-once delivery holds within that horizon). Default 10,000,000.
    pub dedupe_horizon: u64,
    /// A bug planted on purpose, for tests that show the simulator catches it.
    #[cfg(feature = "planted-bugs")]
    #[serde(skip)]
    pub planted: Option<PlantedBug>,
}

/// Bugs planted on purpose (feature `planted-bugs`, for tests only): the
/// simulator must catch them within the seeds CI runs.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The `decided_below` hint as it was before the five-acceptor agreement
    /// bug was fixed: a coordinator counts a decision at any ballot towards
    /// the hint and keeps leading, and an acceptor applies the hint before it
    /// checks the Accept's ballot. Alone it is out of reach: the leadership
    /// rules end a stale coordinator's term before it can advertise a hint.
    OldHintRule,
    /// Who coordinates, as before partitions were handled: the first
    /// acceptor in ring order that is not suspected, no announcements, no
    /// leader stickiness, no quorum hearing, one-way suspicion, no pacing of
    /// terms. Rings stall after partitions heal.
    OldLeadership,
    /// Both: the coordinator as it was, which broke agreement on rings of five.
    OldCoordinator,
}

/// Whether the old hint rule is planted (never, without the feature).
pub(crate) fn old_hint_rule(params: &Params) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        matches!(
            params.planted,
            Some(PlantedBug::OldHintRule | PlantedBug::OldCoordinator)
        )
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = params;
        false
    }
}

/// Whether the old leadership rules are planted (never, without the feature).
pub(crate) fn old_leadership(params: &Params) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        matches!(
            params.planted,
            Some(PlantedBug::OldLeadership | PlantedBug::OldCoordinator)
        )
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = params;
        false
    }
}

impl Default for Params {
    fn default() -> Self {
        Params {
            window: 16,
            batch_max_commands: 64,
            batch_max_bytes: 256 * 1024,
            batch_delay: Duration::ZERO,
            max_pending_commands: 100_000,
            heartbeat_interval: Duration::from_millis(20),
            suspect_timeout: Duration::from_millis(150),
            retry_timeout: Duration::from_millis(50),
            delta: Duration::from_millis(1),
            lambda: 1_000_000,
            merge_m: 1,
            retention: 10_000_000,
            retention_bytes: 256 << 20,
            trim_replicas: 0,
            vote_bound_reserve: 256,
            recovery_timeout: Duration::from_millis(20),
            recovery_batch: 256,
            learner_buffer: 65_536,
            dedupe_horizon: 10_000_000,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }
}

/// What an acceptor counts per decided instance kept, besides its value.
pub const SLOT_BYTES: u64 = 96;

impl Params {
    /// λ·Δ: the positions an idle ring advances per leveling tick.
    pub fn lead(&self) -> u64 {
        let per_sec = u128::from(self.lambda);
        let positions = per_sec * self.delta.as_nanos() / 1_000_000_000;
        u64::try_from(positions).unwrap_or(u64::MAX).max(1)
    }

    /// Validates the parameters; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("window", self.window),
            ("batch_max_commands", self.batch_max_commands as u64),
            ("batch_max_bytes", self.batch_max_bytes as u64),
            ("max_pending_commands", self.max_pending_commands as u64),
            ("lambda", self.lambda),
            ("merge_m", u64::from(self.merge_m)),
            ("retention", self.retention),
            ("retention_bytes", self.retention_bytes),
            ("vote_bound_reserve", self.vote_bound_reserve),
            ("recovery_batch", self.recovery_batch),
            ("learner_buffer", self.learner_buffer),
            ("dedupe_horizon", self.dedupe_horizon),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        let durations = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("suspect_timeout", self.suspect_timeout),
            ("retry_timeout", self.retry_timeout),
            ("delta", self.delta),
            ("recovery_timeout", self.recovery_timeout),
        ];
        for (field, value) in durations {
            if value.is_zero() {
                return Err(ConfigError::Zero { field });
            }
        }
        if self.suspect_timeout <= self.heartbeat_interval {
            return Err(ConfigError::SuspectBeforeHeartbeat {
                suspect: self.suspect_timeout,
                heartbeat: self.heartbeat_interval,
            });
        }
        if self.retention < self.window {
            return Err(ConfigError::RetentionBelowWindow {
                retention: self.retention,
                window: self.window,
            });
        }
        Ok(())
    }
}

/// The rings of a cluster and the protocol parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MulticastConfig {
    /// Every ring of the cluster.
    pub rings: Vec<RingConfig>,
    /// The sets of rings that learners merge together (P-SMR: `{g_i, g_all}`
    /// per thread). Rate leveling keeps each ring ahead of the busy rings it
    /// is merged with, and only of those. Empty: every ring is merged with
    /// every other.
    pub merges: Vec<Vec<RingId>>,
    /// Protocol parameters.
    pub params: Params,
}

impl MulticastConfig {
    /// The ring with id `ring`.
    pub fn ring(&self, ring: RingId) -> Option<&RingConfig> {
        self.rings.iter().find(|r| r.id == ring)
    }

    /// Checks what cannot work: no rings, a ring id used twice, an even or
    /// empty acceptor set, an acceptor or learner listed twice in a ring.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.params.validate()?;
        if self.rings.is_empty() {
            return Err(ConfigError::NoRings);
        }
        let mut ids = BTreeSet::new();
        for ring in &self.rings {
            if !ids.insert(ring.id) {
                return Err(ConfigError::DuplicateRing { ring: ring.id });
            }
            validate_ring(ring)?;
        }
        for (index, merge) in self.merges.iter().enumerate() {
            if let Some(&ring) = merge.iter().find(|r| !ids.contains(r)) {
                return Err(ConfigError::UnknownMergedRing { index, ring });
            }
        }
        Ok(())
    }

    /// The rings merged with `ring` by some learner.
    pub fn partners(&self, ring: RingId) -> Vec<RingId> {
        let mut partners: Vec<RingId> = if self.merges.is_empty() {
            self.rings.iter().map(|r| r.id).collect()
        } else {
            self.merges
                .iter()
                .filter(|m| m.contains(&ring))
                .flatten()
                .copied()
                .collect()
        };
        partners.sort_unstable();
        partners.dedup();
        partners.retain(|&r| r != ring);
        partners
    }
}

fn validate_ring(ring: &RingConfig) -> Result<(), ConfigError> {
    let n = ring.acceptors.len();
    if n == 0 || n.is_multiple_of(2) || n > MAX_RING_ACCEPTORS {
        return Err(ConfigError::AcceptorCount { ring: ring.id, n });
    }
    let mut seen = BTreeSet::new();
    for &a in &ring.acceptors {
        if !seen.insert(a) {
            return Err(ConfigError::DuplicateMember {
                ring: ring.id,
                node: a,
                field: "acceptors",
            });
        }
    }
    let mut seen = BTreeSet::new();
    for &l in &ring.learners {
        if !seen.insert(l) {
            return Err(ConfigError::DuplicateMember {
                ring: ring.id,
                node: l,
                field: "learners",
            });
        }
    }
    Ok(())
}

/// Why a configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A count or duration that must be positive is zero.
    #[error("params.{field} must be greater than zero")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// Failure detection would suspect live peers between two heartbeats.
    #[error(
        "params.suspect_timeout ({suspect:?}) must exceed params.heartbeat_interval ({heartbeat:?})"
    )]
    SuspectBeforeHeartbeat {
        /// Configured suspect timeout.
        suspect: Duration,
        /// Configured heartbeat interval.
        heartbeat: Duration,
    },
    /// Acceptors would discard instances still in the window.
    #[error("params.retention ({retention}) must be at least params.window ({window})")]
    RetentionBelowWindow {
        /// Configured retention.
        retention: u64,
        /// Configured window.
        window: u64,
    },
    /// The configuration has no ring.
    #[error("rings: at least one ring is required")]
    NoRings,
    /// Two rings share an id.
    #[error("rings: ring id {ring} is used twice")]
    DuplicateRing {
        /// The id.
        ring: RingId,
    },
    /// A ring needs an odd number (2f+1) of acceptors, at most 63.
    #[error(
        "rings[{ring}].acceptors: {n} acceptors; a ring needs an odd number (2f+1) between 1 and 63"
    )]
    AcceptorCount {
        /// The ring.
        ring: RingId,
        /// Acceptors listed.
        n: usize,
    },
    /// A merge names a ring that does not exist.
    #[error("merges[{index}]: ring {ring} does not exist")]
    UnknownMergedRing {
        /// Position of the merge.
        index: usize,
        /// The ring.
        ring: RingId,
    },
    /// A node appears twice in one list of a ring.
    #[error("rings[{ring}].{field}: {node} is listed twice")]
    DuplicateMember {
        /// The ring.
        ring: RingId,
        /// The node.
        node: NodeId,
        /// `acceptors` or `learners`.
        field: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: u16, acceptors: &[u32]) -> RingConfig {
        RingConfig {
            id: RingId(id),
            acceptors: acceptors.iter().map(|&a| NodeId(a)).collect(),
            learners: vec![NodeId(100)],
        }
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = MulticastConfig {
            rings: vec![ring(0, &[1, 2, 3])],
            merges: Vec::new(),
            params: Params::default(),
        };
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.params.lead(), 1_000);
    }

    #[test]
    fn even_and_empty_acceptor_sets_are_rejected() {
        for acceptors in [&[][..], &[1, 2][..]] {
            let cfg = MulticastConfig {
                rings: vec![ring(4, acceptors)],
                merges: Vec::new(),
                params: Params::default(),
            };
            let err = cfg.validate().unwrap_err();
            assert!(matches!(err, ConfigError::AcceptorCount { .. }));
            assert!(err.to_string().starts_with("rings[r4].acceptors"), "{err}");
        }
    }

    #[test]
    fn duplicates_are_rejected_naming_the_field() {
        let cfg = MulticastConfig {
            rings: vec![ring(0, &[1, 2, 1])],
            merges: Vec::new(),
            params: Params::default(),
        };
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.to_string(), "rings[r0].acceptors: n1 is listed twice");
        let cfg = MulticastConfig {
            rings: vec![ring(0, &[1]), ring(0, &[2])],
            merges: Vec::new(),
            params: Params::default(),
        };
        assert_eq!(
            cfg.validate(),
            Err(ConfigError::DuplicateRing { ring: RingId(0) })
        );
    }

    #[test]
    fn partners_are_the_rings_merged_together() {
        let cfg = MulticastConfig {
            rings: vec![ring(0, &[1]), ring(1, &[1]), ring(2, &[1])],
            merges: vec![vec![RingId(1), RingId(0)], vec![RingId(2), RingId(0)]],
            params: Params::default(),
        };
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.partners(RingId(0)), vec![RingId(1), RingId(2)]);
        assert_eq!(cfg.partners(RingId(1)), vec![RingId(0)]);
        let bad = MulticastConfig {
            merges: vec![vec![RingId(7)]],
            ..cfg
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::UnknownMergedRing { index: 0, .. })
        ));
    }

    #[test]
    fn zero_parameters_are_rejected_by_name() {
        let params = Params {
            window: 0,
            ..Params::default()
        };
        assert_eq!(
            params.validate(),
            Err(ConfigError::Zero { field: "window" })
        );
        let params = Params {
            suspect_timeout: Duration::from_millis(10),
            ..Params::default()
        };
        assert!(matches!(
            params.validate(),
            Err(ConfigError::SuspectBeforeHeartbeat { .. })
        ));
    }
}
