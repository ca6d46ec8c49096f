//! What a replicated service implements: [`Service`] for execution and
//! [`GroupMapping`] for the clients' choice of groups (CC-G and OC-G).
//!
//! The engines give a service two kinds of access to its state, and the
//! types say which:
//! - `&mut State` in sequential or synchronous mode: one thread, the others
//!   stopped; anything goes, including changes of shape;
//! - `&State` plus a [`Lane`] in parallel mode: the thread `lane.thread`
//!   executes an operation that the group mapping sent to it alone; every
//!   other thread may be executing its own operations at the same time. The
//!   service must touch only what the mapping gives that thread, and should
//!   detect and report (as `Self::Violation`) anything else.
//!
//! The opt-PSMR safety check runs in parallel mode too, and must look only at
//! state that no other thread can change meanwhile, so that every replica
//! reaches the same verdict.

use bytes::Bytes;

use crate::engine::EngineKind;
use crate::wire::{Mode, ServiceId};

/// The thread executing in parallel mode, among `threads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lane {
    /// This thread's index, `0..threads`.
    pub thread: usize,
    /// The number of worker threads (K).
    pub threads: usize,
}

/// A replicated, deterministic service.
pub trait Service: Send + Sync + 'static {
    /// The replicated state.
    type State: Send + Sync + 'static;
    /// A decoded operation.
    type Op: Send + Sync + 'static;
    /// What parallel execution reports when the concurrency contract is broken.
    type Violation: std::error::Error + Send + Sync + 'static;

    /// Identifies the service in requests.
    fn id(&self) -> ServiceId;

    /// Decodes an operation sent by a client.
    fn decode(&self, op: &[u8]) -> Option<Self::Op>;

    /// Executes with exclusive access; returns the encoded response.
    fn execute(&self, state: &mut Self::State, op: &Self::Op) -> Bytes;

    /// Executes in parallel mode on `lane`.
    fn execute_shared(
        &self,
        state: &Self::State,
        lane: Lane,
        op: &Self::Op,
    ) -> Result<Bytes, Self::Violation>;

    /// The opt-PSMR safety check of an optimistically mapped operation:
    /// true if executing it now on `lane` cannot interfere with any other
    /// thread. Deterministic: it may only read state `lane` owns.
    fn safety_check(&self, state: &Self::State, lane: Lane, op: &Self::Op) -> bool;

    /// A digest of the state that does not depend on thread timing, to
    /// compare replicas.
    fn digest(&self, state: &Self::State) -> u64;

    /// What a replica checkpoint holds of the state. It is captured at the
    /// checkpoint's cut, while no command runs, so it should be a copy that
    /// is quick to take; it is written while execution goes on.
    type Image: Send + 'static;

    /// Copies `state` at a checkpoint's cut.
    fn capture(&self, state: &Self::State) -> Self::Image;

    /// Writes `image`; [`Service::read_image`] reads it back.
    fn write_image(&self, image: &Self::Image, out: &mut dyn std::io::Write)
    -> std::io::Result<()>;

    /// The state as it was captured, exactly: whatever the service's
    /// execution or safety check looks at must be as it was (a replica
    /// restored from it must reach the verdicts of one that never stopped).
    /// Damaged bytes are an `InvalidData` error, never a panic.
    fn read_image(&self, input: &mut dyn std::io::Read) -> std::io::Result<Self::State>;
}

/// A multicast destination of an operation in a deployment of K threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// `g_i`: the group of thread `i` alone.
    Thread(usize),
    /// `g_all`: every thread.
    All,
}

/// Why a mapping's groups for an operation cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// A thread group that does not exist in a deployment of `threads`.
    #[error("the group mapping chose thread group {group} in a deployment of {threads} threads")]
    OutOfRange {
        /// The group's thread.
        group: usize,
        /// Threads of the deployment.
        threads: usize,
    },
    /// The optimistic group is neither the conservative one nor paired with
    /// a conservative `g_all`.
    #[error(
        "the group mapping chose optimistic group {optimistic:?} with conservative group {conservative:?}: a request and its conservative retry must travel on one thread's group and g_all (the conservative group must be the optimistic one, or g_all)"
    )]
    Split {
        /// OC-G's group.
        optimistic: Group,
        /// CC-G's group.
        conservative: Group,
    },
}

/// The command-to-groups functions of a service (docs/ARCHITECTURE.md, "Vocabulary").
///
/// Contract, checked by [`route`] for every operation: groups exist in the
/// deployment, and the conservative group is the optimistic one or `g_all`.
/// The replicas' table of executed requests relies on it: every copy of a
/// request (the optimistic one and its retry) is ordered in the streams of
/// one thread's group and `g_all`, so every thread that could see it sees
/// them in the same order on every replica.
pub trait GroupMapping {
    /// A decoded operation.
    type Op;

    /// CC-G: covers static and possible dynamic dependencies.
    fn conservative(&self, op: &Self::Op, threads: usize) -> Group;

    /// OC-G: covers static dependencies only.
    fn optimistic(&self, op: &Self::Op, threads: usize) -> Group;
}

/// What a client needs to know of a service: its id, its group mapping and
/// how to encode its operations.
pub trait ServiceClient: GroupMapping + Send + Sync + 'static
where
    Self::Op: Send + 'static,
{
    /// The service's id in requests.
    fn service_id(&self) -> ServiceId;
    /// Encodes an operation.
    fn encode_op(&self, op: &Self::Op) -> Bytes;
}

/// How a client sends `op` to an engine of `kind` with `threads` threads:
/// smr, cbase, classes: everything to `g_all`; psmr: CC-G; opt-psmr: OC-G, optimistically,
/// where it differs from CC-G (Algorithm 1, lines 1–3). Refuses groups that
/// break the [`GroupMapping`] contract.
pub fn route<M: GroupMapping>(
    kind: EngineKind,
    mapping: &M,
    op: &M::Op,
    threads: usize,
) -> Result<(Mode, Group), MappingError> {
    let in_range = |group: Group| match group {
        Group::Thread(t) if t >= threads => Err(MappingError::OutOfRange { group: t, threads }),
        _ => Ok(group),
    };
    Ok(match kind {
        EngineKind::Smr | EngineKind::Cbase | EngineKind::Classes => {
            (Mode::Conservative, Group::All)
        }
        EngineKind::Psmr => (
            Mode::Conservative,
            in_range(mapping.conservative(op, threads))?,
        ),
        EngineKind::OptPsmr => {
            let conservative = in_range(mapping.conservative(op, threads))?;
            let optimistic = in_range(mapping.optimistic(op, threads))?;
            if optimistic == conservative {
                (Mode::Conservative, conservative)
            } else if conservative == Group::All {
                (Mode::Optimistic, optimistic)
            } else {
                return Err(MappingError::Split {
                    optimistic,
                    conservative,
                });
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapping that answers what it is told to.
    struct Fixed(Group, Group);

    impl GroupMapping for Fixed {
        type Op = ();
        fn conservative(&self, _: &(), _: usize) -> Group {
            self.0
        }
        fn optimistic(&self, _: &(), _: usize) -> Group {
            self.1
        }
    }

    #[test]
    fn route_checks_the_mapping_contract() {
        let (t0, t1, all) = (Group::Thread(0), Group::Thread(1), Group::All);
        let opt = EngineKind::OptPsmr;
        assert_eq!(
            route(opt, &Fixed(all, t1), &(), 2),
            Ok((Mode::Optimistic, t1))
        );
        assert_eq!(
            route(opt, &Fixed(t1, t1), &(), 2),
            Ok((Mode::Conservative, t1))
        );
        assert_eq!(
            route(opt, &Fixed(t0, t1), &(), 2),
            Err(MappingError::Split {
                optimistic: t1,
                conservative: t0
            })
        );
        assert_eq!(
            route(EngineKind::Psmr, &Fixed(Group::Thread(2), all), &(), 2),
            Err(MappingError::OutOfRange {
                group: 2,
                threads: 2
            })
        );
        assert_eq!(
            route(EngineKind::Smr, &Fixed(t0, t1), &(), 2),
            Ok((Mode::Conservative, all))
        );
    }
}
