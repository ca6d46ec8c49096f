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
}

/// A multicast destination of an operation in a deployment of K threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// `g_i`: the group of thread `i` alone.
    Thread(usize),
    /// `g_all`: every thread.
    All,
}

/// The command-to-groups functions of a service (DESIGN.md section 1).
pub trait GroupMapping {
    /// A decoded operation.
    type Op;

    /// CC-G: covers static and possible dynamic dependencies.
    fn conservative(&self, op: &Self::Op, threads: usize) -> Group;

    /// OC-G: covers static dependencies only.
    fn optimistic(&self, op: &Self::Op, threads: usize) -> Group;
}

/// How a client sends `op` to an engine of `kind` with `threads` threads:
/// smr, cbase, classes: everything to `g_all`; psmr: CC-G; opt-psmr: OC-G, optimistically,
/// where it differs from CC-G (Algorithm 1, lines 1–3).
pub fn route<M: GroupMapping>(
    kind: EngineKind,
    mapping: &M,
    op: &M::Op,
    threads: usize,
) -> (Mode, Group) {
    match kind {
        EngineKind::Smr | EngineKind::Cbase | EngineKind::Classes => {
            (Mode::Conservative, Group::All)
        }
        EngineKind::Psmr => (Mode::Conservative, mapping.conservative(op, threads)),
        EngineKind::OptPsmr => {
            let conservative = mapping.conservative(op, threads);
            let optimistic = mapping.optimistic(op, threads);
            if optimistic == conservative {
                (Mode::Conservative, conservative)
            } else {
                (Mode::Optimistic, optimistic)
            }
        }
    }
}
