//! The null service: no state, nothing to do, every command independent of
//! every other (CBASE, section 5: the throughput of the replication
//! machinery alone).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use psmr_core::model::{ClassId, ConflictModel, Placement, ThreadSet};
use psmr_core::service::{Group, GroupMapping, Lane, Service};
use psmr_core::wire::ServiceId;

/// A null operation; its tag only spreads commands over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NullOp {
    /// Any number; the group is `tag mod K`.
    pub tag: u64,
}

impl NullOp {
    /// Encodes the operation.
    pub fn encode(&self) -> Bytes {
        super::encode(self)
    }
}

/// The null service never breaks its (empty) contract.
#[derive(Debug, Error)]
#[error("unreachable")]
pub struct NoViolation;

/// The null service.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullService;

impl Service for NullService {
    type State = ();
    type Op = NullOp;
    type Violation = NoViolation;

    fn id(&self) -> ServiceId {
        ServiceId(0)
    }

    fn decode(&self, op: &[u8]) -> Option<NullOp> {
        postcard::from_bytes(op).ok()
    }

    fn execute(&self, _state: &mut (), _op: &NullOp) -> Bytes {
        Bytes::new()
    }

    fn execute_shared(&self, _state: &(), _lane: Lane, _op: &NullOp) -> Result<Bytes, NoViolation> {
        Ok(Bytes::new())
    }

    fn safety_check(&self, _state: &(), _lane: Lane, _op: &NullOp) -> bool {
        true
    }

    fn digest(&self, _state: &()) -> u64 {
        0
    }

    type Image = ();

    fn capture(&self, _state: &()) {}

    fn write_image(&self, _image: &(), _out: &mut dyn std::io::Write) -> std::io::Result<()> {
        Ok(())
    }

    fn read_image(&self, _input: &mut dyn std::io::Read) -> std::io::Result<()> {
        Ok(())
    }
}

impl GroupMapping for NullService {
    type Op = NullOp;

    fn conservative(&self, op: &NullOp, threads: usize) -> Group {
        Group::Thread((op.tag % threads.max(1) as u64) as usize)
    }

    fn optimistic(&self, op: &NullOp, threads: usize) -> Group {
        self.conservative(op, threads)
    }
}

/// Every null command is independent of every other.
impl ConflictModel for NullService {
    fn placement(&self, _op: &NullOp, _lanes: usize) -> Placement {
        Placement::Anywhere
    }

    fn ocm(&self, _a: usize, _b: usize) -> bool {
        false
    }

    fn related(&self, _a: &NullOp, _b: &NullOp) -> bool {
        false
    }

    fn class_conflicts(&self, _a: ClassId, _b: ClassId) -> bool {
        false
    }

    fn threads_of(&self, _class: ClassId, _threads: usize) -> ThreadSet {
        ThreadSet::Any
    }
}
