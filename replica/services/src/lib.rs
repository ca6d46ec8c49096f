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
use serde::de::DeserializeOwned;

pub use list::{LinkedList, ListOp, ListService, ListState};
pub use null::{NullOp, NullService};
pub use tuple::{
    MAX_FIELDS, Template, Tuple, TupleModel, TupleOp, TupleService, TupleSpace, TupleViolation,
};

/// An operation or a response as these services encode it (postcard).
fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(postcard::to_allocvec(value).expect("operations and responses serialize"))
}

/// Writes a checkpoint image as postcard.
fn write_postcard<T: Serialize>(image: &T, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let bytes = postcard::to_allocvec(image).map_err(std::io::Error::other)?;
    out.write_all(&bytes)
}

/// Reads a checkpoint image written by [`write_postcard`]; bytes that do
/// not decode, or trail it, are `InvalidData`.
fn read_postcard<T: DeserializeOwned>(input: &mut dyn std::io::Read) -> std::io::Result<T> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    let (image, rest) = postcard::take_from_bytes(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if !rest.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes after the image", rest.len()),
        ));
    }
    Ok(image)
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
