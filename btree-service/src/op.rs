//! The B+-tree's operations and responses, as clients send and receive them.
//! Keys are `u64`; values are bytes of any length up to [`MAX_VALUE`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::store::MAX_VALUE;

/// Most entries a scan returns; larger scans are capped and say so.
pub const MAX_SCAN: u32 = 1024;

/// An operation on the B+-tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The value of a key.
    Read(u64),
    /// Sets the value of an existing key.
    Update(u64, Bytes),
    /// Inserts a key, or replaces its value.
    Insert(u64, Bytes),
    /// Removes a key.
    Delete(u64),
    /// Up to `count` entries from a key on, in key order.
    Scan(u64, u32),
}

impl Op {
    /// Encodes the operation for a request.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("an op serializes"))
    }

    /// Decodes an operation.
    pub fn decode(bytes: &[u8]) -> Option<Op> {
        postcard::from_bytes(bytes).ok()
    }

    /// The key the operation is about (a scan's first key).
    pub fn key(&self) -> u64 {
        match *self {
            Op::Read(k) | Op::Update(k, _) | Op::Insert(k, _) | Op::Delete(k) | Op::Scan(k, _) => k,
        }
    }

    /// Why the operation is not valid, if it is not.
    pub fn invalid(&self) -> Option<Invalid> {
        match self {
            Op::Scan(_, 0) => Some(Invalid::EmptyScan),
            Op::Update(_, v) | Op::Insert(_, v) if v.len() > MAX_VALUE => {
                Some(Invalid::ValueTooLarge { len: v.len() })
            }
            _ => None,
        }
    }
}

/// A response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Read: the value. Update, Insert, Delete: the previous value.
    Value(Option<Bytes>),
    /// Scan: the entries.
    Entries {
        /// The entries, in key order.
        entries: Vec<(u64, Bytes)>,
        /// The scan asked for more than [`MAX_SCAN`] entries and was cut there.
        capped: bool,
    },
    /// The operation is not valid.
    Invalid(Invalid),
}

/// Why an operation is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Invalid {
    /// A scan of zero entries.
    EmptyScan,
    /// A value longer than [`MAX_VALUE`] bytes.
    ValueTooLarge {
        /// Its length.
        len: usize,
    },
}

impl Response {
    /// Encodes the response.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("a response serializes"))
    }

    /// Decodes a response.
    pub fn decode(bytes: &[u8]) -> Option<Response> {
        postcard::from_bytes(bytes).ok()
    }
}
