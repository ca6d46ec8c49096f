//! Frames on QUIC streams.
//!
//! Every unidirectional stream opens with a [`Hello`] frame that says who
//! sends and what the stream carries; the frames that follow use the same
//! framing as protocol messages ([`psmr_core::proto::codec`]): a length prefix
//! checked against the maximum before anything is allocated.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use psmr_core::proto::NodeId;
use psmr_core::proto::codec::{FrameError, WIRE_VERSION};

/// What a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Purpose {
    /// Multicast protocol messages between cluster nodes.
    Protocol,
    /// A client's proposals to an acceptor.
    Propose,
    /// A client announcing itself to a replica; replies come back on the connection.
    ClientHello,
    /// A replica's replies to a client.
    Replies,
    /// A replica asking another for its newest checkpoint (state transfer).
    TransferRequest,
    /// The answer: what checkpoint a replica has, and the file in chunks.
    Transfer,
}

impl Purpose {
    /// Whether only a cluster node (with its certificate) may open a stream
    /// of this purpose.
    pub fn needs_node(self) -> bool {
        matches!(
            self,
            Purpose::Protocol | Purpose::TransferRequest | Purpose::Transfer
        )
    }
}

/// The first frame of every stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Wire version; must be [`WIRE_VERSION`].
    pub version: u8,
    /// The sending node, or `None` for a client. A node's claim is checked
    /// against its certificate.
    pub node: Option<NodeId>,
    /// What the stream carries.
    pub purpose: Purpose,
}

impl Hello {
    /// A hello of this build's wire version.
    pub fn new(node: Option<NodeId>, purpose: Purpose) -> Hello {
        Hello {
            version: WIRE_VERSION,
            node,
            purpose,
        }
    }

    /// The hello as a frame.
    pub fn frame(&self) -> Vec<u8> {
        let body = postcard::to_allocvec(self).expect("a hello serializes");
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        frame
    }
}

/// Why a stream was closed.
#[derive(Debug, Error)]
pub enum StreamError {
    /// A frame was malformed or too large.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The hello was not a hello.
    #[error("malformed hello")]
    Hello,
    /// The peer speaks another wire version.
    #[error("peer speaks wire version {0}, this build {WIRE_VERSION}")]
    Version(u8),
    /// The peer claims a node identity its certificate does not have.
    #[error("peer claims to be {0} without that node's certificate")]
    Identity(NodeId),
    /// The stream's purpose needs a node, and the peer is a client.
    #[error("stream purpose {0:?} needs a cluster node")]
    NotANode(Purpose),
    /// Reading failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadExactError),
}

/// Reads a stream chunk by chunk and splits out whole frames without
/// copying them again; the length of each frame is checked against the
/// maximum before its bytes are waited for.
pub struct FrameReader {
    buf: bytes::BytesMut,
    max: usize,
}

impl FrameReader {
    /// A reader of frames up to `max` bytes.
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            buf: bytes::BytesMut::with_capacity(64 * 1024),
            max,
        }
    }

    /// Waits for more bytes and appends every complete frame body to `out`.
    /// Returns false at the end of the stream.
    pub async fn read(
        &mut self,
        stream: &mut quinn::RecvStream,
        out: &mut Vec<bytes::Bytes>,
    ) -> Result<bool, StreamError> {
        let Some(chunk) = stream
            .read_chunk(256 * 1024, true)
            .await
            .map_err(read_error)?
        else {
            return Ok(false);
        };
        self.buf.extend_from_slice(&chunk.bytes);
        while let Some(len) = psmr_core::proto::codec::frame_len(&self.buf, self.max)? {
            if self.buf.len() < 4 + len {
                self.buf.reserve(4 + len - self.buf.len());
                break;
            }
            let _ = self.buf.split_to(4);
            out.push(self.buf.split_to(len).freeze());
        }
        Ok(true)
    }
}

fn read_error(e: quinn::ReadError) -> StreamError {
    StreamError::Read(quinn::ReadExactError::ReadError(e))
}

/// Reads one frame body; `Ok(None)` at the end of the stream.
pub async fn read_frame(
    stream: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<Vec<u8>>, StreamError> {
    let mut prefix = [0u8; 4];
    match stream.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = psmr_core::proto::codec::frame_len(&prefix, max)?.expect("four bytes read");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Reads and checks the hello of a stream.
pub async fn read_hello(stream: &mut quinn::RecvStream) -> Result<Hello, StreamError> {
    let body = read_frame(stream, 1024).await?.ok_or(StreamError::Hello)?;
    let hello: Hello = postcard::from_bytes(&body).map_err(|_| StreamError::Hello)?;
    if hello.version != WIRE_VERSION {
        return Err(StreamError::Version(hello.version));
    }
    Ok(hello)
}

/// Appends `body` as a frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}
