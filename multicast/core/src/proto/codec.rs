//! Wire framing of protocol messages (docs/ARCHITECTURE.md, "Processes and data flow").
//!
//! ```text
//! +----------------+---------+------------------------------+
//! | length: u32 LE | version | postcard(Message)            |
//! +----------------+---------+------------------------------+
//!                  |<------------- length bytes ----------->|
//! ```
//!
//! The length is checked against the maximum frame size before anything is
//! allocated, so a peer announcing a 1 GiB frame costs nothing. Decoding is
//! sans-IO: feed bytes, take messages; a bad frame is an error the driver
//! counts, after which it closes the stream.

use thiserror::Error;

use super::messages::Message;

/// The only wire version this build speaks (10: a coordinator's Accept
/// may leave before its vote is durable, `Accept::coordinator_pending`
/// and `Durable`; 9: the decider tells the
/// coordinator a decision without its value, `Chosen`; 8: a replica's
/// replies to one client travel as one frame per batch).
pub const WIRE_VERSION: u8 = 10;

/// Default upper bound on one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

const HEADER: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length prefix exceeds the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced or actual length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame must hold at least the version byte.
    #[error("empty frame")]
    Empty,
    /// The peer speaks a wire version this build does not.
    #[error("unknown wire version {version} (this build speaks {WIRE_VERSION})")]
    UnknownVersion {
        /// The version byte received.
        version: u8,
    },
    /// The payload is not a valid message.
    #[error("malformed message: {source}")]
    Malformed {
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
    /// The payload is a valid message followed by extra bytes.
    #[error("{extra} trailing bytes after the message")]
    Trailing {
        /// Bytes left over.
        extra: usize,
    },
}

/// Appends one frame holding `message` to `out`.
pub fn encode_frame(
    message: &Message,
    out: &mut Vec<u8>,
    max_frame: usize,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(WIRE_VERSION);
    let encoded = postcard::to_extend(message, std::mem::take(out));
    *out = encoded.map_err(|source| FrameError::Malformed { source })?;
    let len = out.len() - start - HEADER;
    if len > max_frame {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: max_frame,
    })?;
    out[start..start + HEADER].copy_from_slice(&prefix.to_le_bytes());
    Ok(())
}

/// Encodes one message as a standalone frame.
pub fn frame(message: &Message, max_frame: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame(message, &mut out, max_frame)?;
    Ok(out)
}

/// Reads the length prefix at the start of `buf`: `Ok(None)` until four bytes
/// are there; an error if the announced frame is too large.
pub fn frame_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(prefix.try_into().expect("four bytes")) as usize;
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(Some(len))
}

/// Decodes the body of one frame (everything after the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    let (&version, payload) = body.split_first().ok_or(FrameError::Empty)?;
    if version != WIRE_VERSION {
        return Err(FrameError::UnknownVersion { version });
    }
    let (message, rest) = postcard::take_from_bytes::<Message>(payload)
        .map_err(|source| FrameError::Malformed { source })?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing { extra: rest.len() });
    }
    Ok(message)
}

/// Decodes the first frame of `buf`: `Ok(None)` if it is not complete yet,
/// else the message and the bytes consumed.
pub fn decode_frame(buf: &[u8], max_frame: usize) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(len) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(HEADER..HEADER + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER + len)))
}

#[cfg(test)]
mod tests {

    use bytes::Bytes;

    use super::*;
    use crate::proto::messages::{Accept, Propose};
    use crate::proto::types::*;

    fn accept() -> Message {
        let cmd = Command {
            id: CommandId {
                proposer: ProposerId(7),
                seq: 3,
            },
            low_water: 1,
            payload: Bytes::from_static(b"hello"),
        };
        Message::Accept(Accept {
            ring: RingId(2),
            instance: 42,
            ballot: Ballot {
                round: 1,
                node: NodeId(1),
            },
            value: Value::batch(vec![cmd]),
            votes: VoteSet(1),
            coordinator_pending: false,
            decided_below: 40,
        })
    }

    #[test]
    fn frames_round_trip_and_stream() {
        let mut buf = Vec::new();
        encode_frame(&accept(), &mut buf, DEFAULT_MAX_FRAME).unwrap();
        encode_frame(
            &Message::Heartbeat(Default::default()),
            &mut buf,
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let (first, used) = decode_frame(&buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(first, accept());
        let (second, used2) = decode_frame(&buf[used..], DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(second, Message::Heartbeat(Default::default()));
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let buf = frame(&accept(), DEFAULT_MAX_FRAME).unwrap();
        for cut in 0..buf.len() {
            assert!(
                decode_frame(&buf[..cut], DEFAULT_MAX_FRAME)
                    .unwrap()
                    .is_none(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_huge_length_prefix_is_refused_before_allocation() {
        let buf = (1u32 << 30).to_le_bytes();
        let err = decode_frame(&buf, DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == 1 << 30));
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        let mut buf = frame(&Message::Heartbeat(Default::default()), DEFAULT_MAX_FRAME).unwrap();
        buf[4] = WIRE_VERSION + 1;
        assert!(matches!(
            decode_frame(&buf, DEFAULT_MAX_FRAME),
            Err(FrameError::UnknownVersion { version }) if version == WIRE_VERSION + 1
        ));
        let garbage = [5u8, 0, 0, 0, WIRE_VERSION, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_frame(&garbage, DEFAULT_MAX_FRAME),
            Err(FrameError::Malformed { .. })
        ));
        let empty = [0u8, 0, 0, 0];
        assert!(matches!(
            decode_frame(&empty, DEFAULT_MAX_FRAME),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn truncated_payloads_are_malformed_not_panics() {
        let whole = frame(&accept(), DEFAULT_MAX_FRAME).unwrap();
        for cut in 5..whole.len() {
            let body = &whole[4..cut];
            assert!(decode_body(body).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn a_vector_length_bomb_does_not_allocate_it() {
        // A Propose claiming 2^62 commands in a 20-byte frame.
        let mut body = vec![WIRE_VERSION, 0 /* Propose */, 1 /* ring */];
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
        assert!(matches!(
            decode_body(&body),
            Err(FrameError::Malformed { .. })
        ));
        let _ = Propose {
            ring: RingId(1),
            commands: vec![],
            forwarded: false,
        };
    }

    #[test]
    fn oversized_messages_are_not_encoded() {
        let mut buf = vec![1, 2, 3];
        let err = encode_frame(&accept(), &mut buf, 8).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(buf, vec![1, 2, 3]);
    }
}
