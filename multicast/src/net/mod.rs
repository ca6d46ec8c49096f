//! The QUIC transport (quinn) that drives the sans-IO core (docs/ARCHITECTURE.md, "Processes and data flow").
//!
//! - [`tls`]: mutual TLS with a cluster CA; development certificates;
//! - [`stream`]: a hello, then length-prefixed frames, on each unidirectional stream;
//! - [`network`]: the endpoint, batched writers per (peer, purpose), reconnection;
//! - [`driver`]: the loop that runs an acceptor node or a learner over the network.

pub mod driver;
pub mod network;
mod socket;
pub mod stream;
pub mod tls;

pub use driver::{Core, Hooks, NoHooks, drive, flush};
pub use network::{ANONYMOUS_BASE, Inbound, NetConfig, NetError, NetStats, Network, frame_of};
pub use quinn::SendStream;
pub use stream::{FrameReader, Hello, Purpose, StreamError, push_frame, read_frame};
pub use tls::{
    CLIENT, CertPaths, Identity, Tls, TlsError, generate_dev_certs, issue_client_cert, node_name,
    peer_client_tag, peer_is_node,
};
