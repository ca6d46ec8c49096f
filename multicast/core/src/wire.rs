//! What clients send to replicas through the multicast, and what replicas
//! answer.
//!
//! A [`Request`] travels as the payload of a multicast command; the command's
//! proposer id is the client id. A request keeps its [`RequestId`] when the
//! client sends it again (after a timeout, or conservatively after a
//! `Retry`), which is what lets a replica answer a repeat from its table of
//! executed requests instead of executing it twice.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A client, identified like its multicast proposer.
///
/// The id a client uses on the wire carries, in its top [`ClientTag::BITS`]
/// bits, the tag of the certificate it authenticated with
/// ([`ClientId::tagged`]): acceptors take a client's proposals, and replicas
/// its hello, only for ids of its own tag, so no client can act under the id
/// of a client with another certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u64);

impl ClientId {
    /// The id whose top bits are `tag` and whose other bits are those of `bits`.
    pub fn tagged(tag: ClientTag, bits: u64) -> ClientId {
        let low = bits & ((1u64 << ClientTag::SHIFT) - 1);
        ClientId(u64::from(tag.0) << ClientTag::SHIFT | low)
    }

    /// The tag in the id's top bits.
    pub fn tag(self) -> ClientTag {
        ClientTag((self.0 >> ClientTag::SHIFT) as u32)
    }
}

/// A short digest of the certificate a client authenticated with (or
/// [`ClientTag::ANONYMOUS`] without one), carried in the top bits of its
/// wire id. Two certificates share a tag by a 2^-24 chance; certificates are
/// issued by the cluster's CA, so a client cannot search for one that
/// collides with another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientTag(pub u32);

impl ClientTag {
    /// Bits of a wire id the tag takes; the other 40 are the connection's
    /// random incarnation.
    pub const BITS: u32 = 24;
    const SHIFT: u32 = 64 - Self::BITS;
    /// The tag of a client that presented no certificate (clusters with
    /// `require_client_certificates = false`): such clients are not told apart.
    pub const ANONYMOUS: ClientTag = ClientTag(0);

    /// The tag of the certificate `der` (its DER bytes): FNV-1a, folded to
    /// 24 bits, never [`ClientTag::ANONYMOUS`]. Stable across builds, since
    /// a client and the servers may run different ones.
    pub fn of_certificate(der: &[u8]) -> ClientTag {
        let hash = der.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let folded = (hash ^ (hash >> 24) ^ (hash >> 48)) as u32 & ((1 << Self::BITS) - 1);
        ClientTag(folded.max(1))
    }
}

/// A request of one client; increasing per client, kept across resends.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct RequestId(pub u64);

/// Which service a request is for; a replica refuses requests for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceId(pub u16);

/// How the client chose the request's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// CC-G: the group covers every possible dependency; execute as delivered.
    Conservative,
    /// OC-G: only static dependencies are covered; run the safety check first.
    Optimistic,
}

/// Which replicas send the reply to a request. Every replica executes every
/// request and records its response; sending it is what costs (a packet, a
/// wake-up of the client), so a client normally asks one replica and all of
/// them only when that one has not answered in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Answerers {
    /// Every replica; the client takes the first reply.
    #[default]
    All,
    /// Only the replica with this node id; the others stay silent.
    One(u32),
    /// No replica: the command was not a client's (a checkpoint [`Marker`]).
    Nobody,
}

impl Answerers {
    /// Whether replica `replica` (a node id) sends the reply.
    pub fn include(self, replica: u32) -> bool {
        match self {
            Answerers::All => true,
            Answerers::One(one) => one == replica,
            Answerers::Nobody => false,
        }
    }
}

/// A checkpoint marker: a command a replica multicasts on `g_all` so that
/// every replica takes checkpoint `number` at the end of the instance that
/// carries it, a point every worker of every replica passes alike
/// (docs/ARCHITECTURE.md, "Checkpoints"). Markers numbered at or below a
/// replica's last checkpoint change nothing, so that every replica may
/// propose the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The checkpoint's number.
    pub number: u64,
}

impl Marker {
    /// How a marker's payload starts. No [`Request`] can: its third field,
    /// the mode, would decode from `b'M'` as variant 77 of two.
    const MAGIC: &'static [u8; 8] = b"PSMRCKPT";

    /// The multicast payload.
    pub fn encode(&self) -> Bytes {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(Self::MAGIC);
        bytes.extend_from_slice(&self.number.to_le_bytes());
        Bytes::from(bytes)
    }

    /// The marker a payload is, if it is one.
    pub fn decode(payload: &[u8]) -> Option<Marker> {
        let number = payload.strip_prefix(Self::MAGIC)?;
        Some(Marker {
            number: u64::from_le_bytes(number.try_into().ok()?),
        })
    }
}

/// A client request, as multicast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Its id.
    pub id: RequestId,
    /// Every request of this client below this id was answered: replicas may
    /// forget their responses.
    pub low_water: RequestId,
    /// Group choice.
    pub mode: Mode,
    /// The service the operation is for.
    pub service: ServiceId,
    /// The service's encoding of the operation.
    pub op: Bytes,
    /// Who answers.
    pub answerers: Answerers,
}

impl Request {
    /// Encodes the request as a multicast payload.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("a request always serializes"))
    }

    /// Decodes a multicast payload.
    pub fn decode(bytes: &[u8]) -> Result<Request, WireError> {
        postcard::from_bytes(bytes).map_err(WireError::Request)
    }
}

/// A replica's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The client.
    pub client: ClientId,
    /// The request; `None` if the request could not even be decoded.
    pub request: Option<RequestId>,
    /// What happened.
    pub outcome: Outcome,
    /// How long the replica's worker took to execute a command lately, in
    /// nanoseconds (a moving mean over its batches; 0: not measured). A
    /// client of psmr or opt-psmr falls back to sequential execution sooner
    /// when commands are cheap (see `psmr-client`'s `sequential_above`).
    pub execution_ns: u64,
    /// Which replicas send this reply: the request's choice, kept here for the
    /// replica's reply router; not on the wire (a client gets it as `All`).
    #[serde(skip)]
    pub answerers: Answerers,
}

impl Reply {
    /// Encodes the reply for the wire.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("a reply always serializes"))
    }

    /// Decodes a reply.
    pub fn decode(bytes: &[u8]) -> Result<Reply, WireError> {
        postcard::from_bytes(bytes).map_err(WireError::Reply)
    }

    /// Encodes replies to one client as one frame's body: a replica sends
    /// the replies of a batch so, and the client decodes them at once.
    pub fn encode_all(replies: &[Reply]) -> Vec<u8> {
        postcard::to_allocvec(replies).expect("replies always serialize")
    }

    /// Decodes a frame of replies written by [`Reply::encode_all`].
    pub fn decode_all(bytes: &[u8]) -> Result<Vec<Reply>, WireError> {
        postcard::from_bytes(bytes).map_err(WireError::Reply)
    }
}

/// The outcome of a request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Outcome {
    /// Executed (now or earlier); the service's encoded response.
    Done(Bytes),
    /// Not executed: the optimistic safety check failed. Send the request
    /// again, conservatively (CC-G), with the same id.
    Retry,
    /// Not executed, and sending it again will not help.
    Refused(Refusal),
}

/// Why a replica refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Error)]
pub enum Refusal {
    /// The multicast payload is not a request.
    #[error("the request could not be decoded")]
    MalformedRequest,
    /// The request is for a service this replica does not run.
    #[error("request for service {requested}, but this replica runs service {served}")]
    WrongService {
        /// The service named by the request.
        requested: u16,
        /// The service this replica runs.
        served: u16,
    },
    /// The service could not decode the operation.
    #[error("the operation could not be decoded by the service")]
    MalformedOperation,
    /// The request is below the client's own low-water mark: it was
    /// answered long ago and its response forgotten.
    #[error("the request was answered before and its response is forgotten")]
    Stale,
    /// Executing the operation in parallel broke the service's concurrency
    /// contract; the replica reported it (a bug in the mapping or the service).
    #[error("the operation violated the service's concurrency contract")]
    ContractViolation,
}

/// Why bytes could not be decoded.
#[derive(Debug, Error)]
pub enum WireError {
    /// Not a request.
    #[error("malformed request: {0}")]
    Request(#[source] postcard::Error),
    /// Not a reply.
    #[error("malformed reply: {0}")]
    Reply(#[source] postcard::Error),
}

#[cfg(test)]
mod marker_tests {
    use super::*;

    #[test]
    fn a_marker_is_never_a_request_and_a_request_never_a_marker() {
        for number in [0, 1, 77, u64::MAX] {
            let payload = Marker { number }.encode();
            assert_eq!(Marker::decode(&payload), Some(Marker { number }));
            assert!(Request::decode(&payload).is_err());
        }
        let request = Request {
            id: RequestId(80),
            low_water: RequestId(83),
            mode: Mode::Optimistic,
            service: ServiceId(1),
            op: Bytes::from_static(b"PSMRCKPT"),
            answerers: Answerers::All,
        };
        assert_eq!(Marker::decode(&request.encode()), None);
        assert_eq!(Marker::decode(b"PSMRCKPT\x01"), None, "short number");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let request = Request {
            id: RequestId(9),
            low_water: RequestId(3),
            mode: Mode::Optimistic,
            service: ServiceId(2),
            op: Bytes::from_static(b"op"),
            answerers: Answerers::One(102),
        };
        assert_eq!(Request::decode(&request.encode()).unwrap(), request);
        let reply = Reply {
            client: ClientId(4),
            request: Some(RequestId(9)),
            outcome: Outcome::Refused(Refusal::WrongService {
                requested: 2,
                served: 1,
            }),
            execution_ns: 1_500,
            answerers: Answerers::All,
        };
        assert_eq!(Reply::decode(&reply.encode()).unwrap(), reply);
        let two = [reply.clone(), reply.clone()];
        assert_eq!(Reply::decode_all(&Reply::encode_all(&two)).unwrap(), two);
        assert!(Reply::decode_all(&Reply::encode_all(&two)[..5]).is_err());
        let for_one = Reply {
            answerers: Answerers::One(101),
            ..reply.clone()
        };
        assert_eq!(
            for_one.encode(),
            reply.encode(),
            "the choice is not on the wire"
        );
        assert!(Answerers::One(101).include(101) && !Answerers::One(101).include(102));
        assert!(Answerers::All.include(101) && Answerers::All.include(102));
        assert!(Request::decode(&[0xff; 3]).is_err());
    }
}
