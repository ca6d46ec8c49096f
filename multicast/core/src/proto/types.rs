//! Identifiers and values shared by every role of the protocol.
//!
//! A *command* is what a proposer multicasts: opaque bytes plus an identity
//! `(proposer, seq)` that lets learners deliver it at most once per ring even
//! when the proposer had to send it again. An *instance* of a ring decides a
//! [`Value`]: a batch of commands, or a skip of `n` instances that the merge
//! counts as `n` (docs/ARCHITECTURE.md, "Vocabulary"). A batch may also span more than one
//! position: its commands come at the first, and the rest are skipped, so a
//! ring with less traffic than the rings it is merged with keeps pace with
//! them without an instance of its own per position.
//!
//! A batch travels as the bytes its coordinator encoded ([`Batch`]):
//! acceptors store, compare and forward them without looking inside, and a
//! learner decodes them once, with the commands' payloads left in place.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A process of the cluster: an acceptor, a learner, or a proposer endpoint.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A multicast group, ordered by its own ring of acceptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RingId(pub u16);

impl fmt::Display for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// The index of one consensus decision in a ring. The first instance is 0.
pub type Instance = u64;

/// A Paxos ballot. Ordered by round, then by the node that owns it, so two
/// coordinators never use the same ballot. The default is [`Ballot::ZERO`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// Incremented by a node that takes over as coordinator.
    pub round: u64,
    /// The coordinator that owns this ballot.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot every acceptor has promised before hearing from anyone.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node: NodeId(0),
    };

    /// The smallest ballot of `node` that is higher than `self`, if any (a
    /// peer can exhaust the ballot space only by sending a round of `u64::MAX`).
    pub fn next_for(self, node: NodeId) -> Option<Ballot> {
        let round = if node > self.node {
            self.round.max(1)
        } else {
            self.round.checked_add(1)?
        };
        Some(Ballot { round, node })
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node.0)
    }
}

/// The identity of a proposer (a client process). Chosen by the proposer; it
/// must be unique among the proposers of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposerId(pub u64);

/// The identity of one command: its proposer and the proposer's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId {
    /// Who proposed it.
    pub proposer: ProposerId,
    /// Increasing per proposer, starting at 0.
    pub seq: u64,
}

/// A multicast command as it travels through a ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Identity, used by learners to deliver each command at most once per ring.
    pub id: CommandId,
    /// The proposer's low-water mark: every command of this proposer with a
    /// lower `seq` was delivered or abandoned, so learners may forget them.
    pub low_water: u64,
    /// The application's bytes.
    pub payload: Bytes,
}

/// The borrowed form of a [`Command`] a batch is decoded through: the payload
/// is a slice of the batch's bytes (same encoding as `Command`'s).
#[derive(Deserialize)]
struct CommandRef<'a> {
    id: CommandId,
    low_water: u64,
    payload: &'a [u8],
}

/// Why a batch's bytes are not a list of commands (only a faulty peer sends such a batch).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BatchError {
    /// The bytes do not decode.
    #[error("malformed batch: {0}")]
    Malformed(#[from] postcard::Error),
    /// The commands are followed by extra bytes.
    #[error("{0} trailing bytes after the batch's commands")]
    Trailing(usize),
}

/// The commands one instance decides, as the coordinator encoded them.
///
/// Encoded once ([`Batch::new`]); acceptors keep and forward the bytes, and
/// [`PartialEq`] compares them (and the span). The commands are decoded on first use
/// ([`Batch::decode`], [`Batch::commands`]), once per copy of the batch, and
/// their payloads are slices of the batch's bytes, not copies.
#[derive(Clone)]
pub struct Batch {
    encoded: Bytes,
    commands: OnceLock<Arc<[Command]>>,
    /// Merge positions the batch occupies (at least 1); see [`Batch::span`].
    span: u64,
}

impl Batch {
    /// Encodes `commands` as one batch.
    pub fn new(commands: &[Command]) -> Batch {
        let encoded = postcard::to_allocvec(commands).expect("commands serialize");
        Batch::from_encoded(Bytes::from(encoded))
    }

    fn from_encoded(encoded: Bytes) -> Batch {
        Batch {
            encoded,
            commands: OnceLock::new(),
            span: 1,
        }
    }

    /// The same batch spanning `span` merge positions: its commands at the
    /// first, then `span - 1` skipped, as if a skip followed it in the same
    /// instance.
    ///
    /// # Panics
    /// If `span` is 0.
    pub fn spanning(self, span: u64) -> Batch {
        assert!(span >= 1, "a batch spans at least one position");
        Batch { span, ..self }
    }

    /// Merge positions the batch occupies: 1 unless built with [`Batch::spanning`].
    pub fn span(&self) -> u64 {
        self.span
    }

    /// The encoded commands.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// The commands, decoded on the first call. A learner calls this when a
    /// batch arrives and refuses the message on an error.
    pub fn decode(&self) -> Result<&Arc<[Command]>, BatchError> {
        if let Some(commands) = self.commands.get() {
            return Ok(commands);
        }
        let (refs, rest) = postcard::take_from_bytes::<Vec<CommandRef<'_>>>(&self.encoded)?;
        if !rest.is_empty() {
            return Err(BatchError::Trailing(rest.len()));
        }
        let commands = refs
            .into_iter()
            .map(|c| Command {
                id: c.id,
                low_water: c.low_water,
                payload: self.encoded.slice_ref(c.payload),
            })
            .collect();
        Ok(self.commands.get_or_init(|| commands))
    }

    /// The commands; none if the bytes do not decode (see [`Batch::decode`]).
    pub fn commands(&self) -> &[Command] {
        self.decode().map_or(&[], |commands| &commands[..])
    }

    /// The commands as a shared slice (see [`Batch::commands`]).
    pub fn shared(&self) -> Arc<[Command]> {
        self.decode().map_or_else(|_| Arc::from([]), Arc::clone)
    }
}

/// Two batches are the same when their bytes are: one allocation handed from
/// node to node in memory compares by pointer, anything else byte by byte.
impl PartialEq for Batch {
    fn eq(&self, other: &Batch) -> bool {
        let (a, b) = (&self.encoded, &other.encoded);
        self.span == other.span && ((a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b)
    }
}

impl Eq for Batch {}

/// Shows the commands if the batch was decoded, else only its size: printing
/// a batch at an acceptor must not decode it and keep the commands there.
impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.commands.get() {
            Some(commands) => f.debug_list().entries(commands.iter()).finish()?,
            None => write!(f, "Batch({} bytes)", self.encoded.len())?,
        }
        if self.span > 1 {
            write!(f, " spanning {}", self.span)?;
        }
        Ok(())
    }
}

/// The bytes only: the span travels with the [`Value`] that holds the batch.
impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.encoded)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Batch, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Batch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the bytes of a batch")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Batch, E> {
                Ok(Batch::from_encoded(Bytes::copy_from_slice(bytes)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Batch, E> {
                Ok(Batch::from_encoded(Bytes::from(bytes)))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// What one instance decides.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WireValue")]
pub enum Value {
    /// A batch of commands; counts as [`Batch::span`] instances in the merge
    /// (usually one).
    Batch(Batch),
    /// `n` instances with nothing in them, decided as one (rate leveling and
    /// hole filling). Counts as `n` instances in the merge.
    Skip(u64),
}

impl Value {
    /// How many merge positions this value occupies (docs/ARCHITECTURE.md, "Vocabulary":
    /// a skip of n counts as n instances).
    pub fn positions(&self) -> u64 {
        match self {
            Value::Batch(batch) => batch.span(),
            Value::Skip(n) => *n,
        }
    }

    /// The commands of a batch (see [`Batch::commands`]); empty for a skip.
    pub fn commands(&self) -> &[Command] {
        match self {
            Value::Batch(batch) => batch.commands(),
            Value::Skip(_) => &[],
        }
    }

    /// A batch of `commands`.
    pub fn batch(commands: Vec<Command>) -> Value {
        Value::Batch(Batch::new(&commands))
    }
}

/// A [`Value`] as stored and sent. A batch spanning one position has the
/// encoding it had before spans existed, so that records written by an
/// earlier build still decode; a spanning batch is a variant of its own.
/// Generic over how the batch is held: decoded owned, encoded borrowed (no
/// copy of the value per message sent).
#[derive(Serialize, Deserialize)]
enum WireValue<B = Batch> {
    Batch(B),
    Skip(u64),
    Spanning(B, u64),
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = match self {
            Value::Batch(batch) if batch.span() > 1 => WireValue::Spanning(batch, batch.span()),
            Value::Batch(batch) => WireValue::Batch(batch),
            Value::Skip(n) => WireValue::Skip(*n),
        };
        wire.serialize(serializer)
    }
}

/// A spanning batch that spans less than two positions (only a faulty peer sends one).
#[derive(Debug, Error)]
#[error("a spanning batch spans {0} positions; it must span at least 2")]
struct BadSpan(u64);

impl TryFrom<WireValue> for Value {
    type Error = BadSpan;

    fn try_from(value: WireValue) -> Result<Value, BadSpan> {
        Ok(match value {
            WireValue::Batch(batch) => Value::Batch(batch),
            WireValue::Skip(n) => Value::Skip(n),
            WireValue::Spanning(_, span) if span < 2 => return Err(BadSpan(span)),
            WireValue::Spanning(batch, span) => Value::Batch(batch.spanning(span)),
        })
    }
}

/// A set of acceptors that voted, as a bitmask over positions in the ring order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteSet(pub u64);

impl VoteSet {
    /// Adds the acceptor at `position` in the ring order.
    pub fn insert(&mut self, position: usize) {
        debug_assert!(position < 64);
        self.0 |= 1 << position;
    }

    /// Whether the acceptor at `position` voted.
    pub fn contains(self, position: usize) -> bool {
        position < 64 && self.0 & (1 << position) != 0
    }

    /// Number of votes among the first `members` positions (bits beyond the
    /// ring size, which only a faulty peer would set, are not counted).
    pub fn count(self, members: usize) -> usize {
        let mask = if members >= 64 {
            u64::MAX
        } else {
            (1u64 << members) - 1
        };
        (self.0 & mask).count_ones() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        let a = Ballot {
            round: 1,
            node: NodeId(3),
        };
        let b = Ballot {
            round: 2,
            node: NodeId(1),
        };
        assert!(a < b);
        assert!(Ballot::ZERO < a);
        let next = a.next_for(NodeId(2)).unwrap();
        assert!(next > a);
        assert_eq!(next.node, NodeId(2));
        let same_round = Ballot {
            round: 1,
            node: NodeId(4),
        };
        assert_eq!(a.next_for(NodeId(4)), Some(same_round));
    }

    #[test]
    fn an_exhausted_ballot_space_has_no_next_ballot() {
        let top = Ballot {
            round: u64::MAX,
            node: NodeId(9),
        };
        assert_eq!(top.next_for(NodeId(1)), None);
        assert!(top.next_for(NodeId(10)).is_some_and(|b| b > top));
    }

    #[test]
    fn vote_set_counts_only_ring_members() {
        let mut v = VoteSet::default();
        v.insert(0);
        v.insert(2);
        assert_eq!(v.count(3), 2);
        assert!(v.contains(2) && !v.contains(1));
        assert_eq!(VoteSet(u64::MAX).count(3), 3);
        assert!(!VoteSet(u64::MAX).contains(64));
    }

    #[test]
    fn skip_counts_its_positions() {
        assert_eq!(Value::Skip(7).positions(), 7);
        assert_eq!(Value::batch(Vec::new()).positions(), 1);
        let spanning = Value::Batch(Batch::new(&[command(1, b"x")]).spanning(5));
        assert_eq!(spanning.positions(), 5);
    }

    #[test]
    fn a_spanning_batch_round_trips_and_a_plain_one_keeps_its_old_encoding() {
        let batch = Batch::new(&[command(1, b"put 7")]);
        // A plain batch is encoded as before spans existed: variant 0, the bytes.
        let old = [&[0u8][..], &postcard::to_allocvec(&batch).unwrap()].concat();
        let plain = Value::Batch(batch.clone());
        assert_eq!(postcard::to_allocvec(&plain).unwrap(), old);
        let spanning = Value::Batch(batch.clone().spanning(3));
        let wire = postcard::to_allocvec(&spanning).unwrap();
        let back: Value = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, spanning);
        assert_eq!(back.positions(), 3);
        assert_ne!(back, plain, "the span is part of the value");
        // A span below 2 in the spanning variant is refused, not wrapped.
        let bad = [
            &[2u8][..],
            &postcard::to_allocvec(&batch).unwrap(),
            &[1u8][..],
        ]
        .concat();
        assert!(postcard::from_bytes::<Value>(&bad).is_err());
    }

    fn command(seq: u64, payload: &'static [u8]) -> Command {
        Command {
            id: CommandId {
                proposer: ProposerId(3),
                seq,
            },
            low_water: seq / 2,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn a_batch_decodes_to_its_commands_with_payloads_in_its_bytes() {
        let commands = vec![command(1, b"put 7"), command(2, b""), command(3, b"get 9")];
        let wire = postcard::to_allocvec(&Batch::new(&commands)).unwrap();
        let batch: Batch = postcard::from_bytes(&wire).unwrap();
        assert_eq!(batch.commands(), &commands[..]);
        let range = batch.encoded().as_ptr_range();
        for c in batch.commands().iter().filter(|c| !c.payload.is_empty()) {
            assert!(range.contains(&c.payload.as_ptr()), "payload copied: {c:?}");
        }
        assert!(
            Arc::ptr_eq(&batch.shared(), &batch.shared()),
            "decoded once"
        );
    }

    #[test]
    fn a_batch_that_does_not_decode_is_an_error_and_has_no_commands() {
        let good = Batch::new(&[command(1, b"x")]);
        let mut trailing = good.encoded().to_vec();
        trailing.push(0);
        let cut = &good.encoded()[..good.encoded().len() - 1];
        for (bytes, name) in [(trailing.as_slice(), "trailing"), (cut, "cut")] {
            let wire = postcard::to_allocvec(&Bytes::copy_from_slice(bytes)).unwrap();
            let batch: Batch = postcard::from_bytes(&wire).unwrap();
            assert!(batch.decode().is_err(), "{name}");
            assert!(batch.commands().is_empty(), "{name}");
            assert_ne!(batch, good, "{name}");
        }
    }
}
