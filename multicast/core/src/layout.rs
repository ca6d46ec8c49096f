//! The deployment layout: which ring carries which group, which rings each
//! replica thread merges, and how many threads a deployment may have. This is
//! the one place that knows it; the cluster file, the engines and the client
//! ask [`Layout`].
//!
//! - `g_all`, the group of every thread, is ring 0 ([`Layout::ALL_RING`]);
//! - psmr and opt-psmr give thread `i` (`0..K`) its own group `g_i`, ring
//!   `i + 1`; thread `i` merges its ring with `g_all`, in that order;
//! - the other engines (smr, cbase, classes) order everything on `g_all`
//!   and have one merge of that ring alone;
//! - at most [`Layout::MAX_THREADS`] threads: thread sets are 64-bit masks.

use crate::engine::EngineKind;
use crate::proto::RingId;
use crate::service::Group;

/// The rings and merges of a deployment of `threads` threads of one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    kind: EngineKind,
    threads: usize,
}

/// Why a layout cannot be deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Threads out of `1..=MAX_THREADS`, or not 1 for smr.
    #[error("{engine} cannot run {threads} threads (1 to 64; smr runs exactly 1)")]
    Threads {
        /// The engine.
        engine: EngineKind,
        /// The threads asked for.
        threads: usize,
    },
}

impl Layout {
    /// The most worker threads of a deployment.
    pub const MAX_THREADS: usize = 64;

    /// The ring of `g_all`.
    pub const ALL_RING: RingId = RingId(0);

    /// The layout of `kind` with `threads` threads, unchecked: see
    /// [`Layout::validate`].
    pub fn new(kind: EngineKind, threads: usize) -> Layout {
        Layout { kind, threads }
    }

    /// Refuses a thread count the engines cannot run.
    pub fn validate(&self) -> Result<(), LayoutError> {
        let smr = self.kind == EngineKind::Smr;
        if self.threads == 0 || self.threads > Self::MAX_THREADS || (smr && self.threads != 1) {
            return Err(LayoutError::Threads {
                engine: self.kind,
                threads: self.threads,
            });
        }
        Ok(())
    }

    /// The engine.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// K, the threads of the deployment.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The ring of thread `thread`'s own group `g_thread`.
    pub fn thread_ring(thread: usize) -> RingId {
        let ring = u16::try_from(thread + 1).expect("thread index fits a ring id");
        RingId(ring)
    }

    /// The ring that carries `group`.
    pub fn ring_of(group: Group) -> RingId {
        match group {
            Group::All => Self::ALL_RING,
            Group::Thread(thread) => Self::thread_ring(thread),
        }
    }

    /// The threads' own rings `g_1..g_K` (none unless psmr or opt-psmr).
    pub fn thread_rings(&self) -> Vec<RingId> {
        match self.kind.has_thread_rings() {
            true => (0..self.threads).map(Self::thread_ring).collect(),
            false => Vec::new(),
        }
    }

    /// Every ring of the deployment: `g_all` first, then the thread rings.
    pub fn rings(&self) -> Vec<RingId> {
        let mut rings = vec![Self::ALL_RING];
        rings.extend(self.thread_rings());
        rings
    }

    /// The merges of the replicas' threads, one per merging thread: thread
    /// `i`'s ring then `g_all`; or `g_all` alone.
    pub fn merges(&self) -> Vec<Vec<RingId>> {
        match self.kind.has_thread_rings() {
            true => self
                .thread_rings()
                .into_iter()
                .map(|ring| vec![ring, Self::ALL_RING])
                .collect(),
            false => vec![vec![Self::ALL_RING]],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psmr_gives_each_thread_its_ring_after_g_all() {
        let layout = Layout::new(EngineKind::Psmr, 3);
        assert_eq!(
            layout.rings(),
            vec![RingId(0), RingId(1), RingId(2), RingId(3)]
        );
        assert_eq!(
            layout.merges(),
            vec![
                vec![RingId(1), RingId(0)],
                vec![RingId(2), RingId(0)],
                vec![RingId(3), RingId(0)]
            ]
        );
        assert_eq!(Layout::ring_of(Group::Thread(2)), RingId(3));
        assert_eq!(Layout::ring_of(Group::All), RingId(0));
    }

    #[test]
    fn one_ring_engines_have_one_merge_of_g_all() {
        for kind in [EngineKind::Smr, EngineKind::Cbase, EngineKind::Classes] {
            let layout = Layout::new(kind, 4);
            assert_eq!(layout.rings(), vec![RingId(0)], "{kind}");
            assert_eq!(layout.merges(), vec![vec![RingId(0)]], "{kind}");
        }
    }

    #[test]
    fn the_thread_cap_and_smr_are_checked() {
        assert!(Layout::new(EngineKind::Psmr, 64).validate().is_ok());
        for (kind, threads) in [
            (EngineKind::Psmr, 65),
            (EngineKind::Cbase, 0),
            (EngineKind::Smr, 2),
        ] {
            assert_eq!(
                Layout::new(kind, threads).validate(),
                Err(LayoutError::Threads {
                    engine: kind,
                    threads
                })
            );
        }
    }
}
