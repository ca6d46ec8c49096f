//! Services beside the reference B+-tree, behind the same traits: a null
//! service (no state, every command independent: CBASE's micro-benchmark), a
//! linked list (the reconfiguration paper, section IV-B3) and a tuple space
//! (sections IV-B1 and 2).

mod list;
mod null;
mod tuple;

use bytes::Bytes;
use psmr_core::{Service, ServiceClient, ServiceId};
use serde::Serialize;

pub use list::{LinkedList, ListOp, ListService, ListState};
pub use null::{NullOp, NullService};
pub use tuple::{
    MAX_FIELDS, Template, Tuple, TupleModel, TupleOp, TupleService, TupleSpace, TupleViolation,
};

/// An operation or a response as these services encode it (postcard).
fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(postcard::to_allocvec(value).expect("operations and responses serialize"))
}

/// FNV-1a over `values`: a digest that depends on the values and their order only.
fn fnv(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, v| {
        (h ^ v).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl ServiceClient for ListService {
    fn service_id(&self) -> ServiceId {
        Service::id(self)
    }
    fn encode_op(&self, op: &ListOp) -> Bytes {
        op.encode()
    }
}

impl ServiceClient for NullService {
    fn service_id(&self) -> ServiceId {
        Service::id(self)
    }
    fn encode_op(&self, op: &NullOp) -> Bytes {
        op.encode()
    }
}
