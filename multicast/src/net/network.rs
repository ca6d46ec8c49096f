//! A process's QUIC endpoint: connections to the nodes it sends to, and the
//! streams others open to it.
//!
//! ```text
//!  send(to, purpose, frame) ──> per (peer, purpose) queue ──> writer task
//!        one long-lived unidirectional stream; each write carries every frame queued
//!        since the last (batching); reconnects with backoff when the stream breaks
//!
//!  accept ──> per stream: hello (identity checked) ──> frames ──> Inbound channel
//! ```
//!
//! A process that sends to node `n` dials `n` itself, so each direction
//! between two nodes has its own connection and its own reconnection. A
//! client cannot be dialed: a replica answers it on the connection the
//! client opened ([`Network::open`]).
//!
//! Bad input closes the stream and is counted in [`NetStats`]: a garbage or
//! oversized frame (the length is checked before allocation), another wire
//! version, a peer claiming a node identity without that node's certificate.
//! The endpoint keeps serving everybody else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::socket::{self, Cids, Filtered, endpoint_config, kernel_filter};
use super::stream::{FrameReader, Hello, Purpose, StreamError, push_frame, read_hello};
use super::tls::{Tls, TlsError, node_name, peer_client_tag, peer_is_node};
use psmr_core::ClientTag;
use psmr_core::proto::NodeId;
use psmr_core::proto::codec::DEFAULT_MAX_FRAME;

/// Node ids at and above this are given to clients, one per connection.
pub const ANONYMOUS_BASE: u32 = 1 << 31;

/// Frames queued for one peer and purpose before new ones are dropped (the
/// protocol retransmits what matters).
const QUEUE: usize = 16_384;

/// How a process takes part in the network.
#[derive(Clone)]
pub struct NetConfig {
    /// This node, or `None` for a client.
    pub me: Option<NodeId>,
    /// Where to listen (nodes), or `None` (clients).
    pub listen: Option<SocketAddr>,
    /// Addresses of the nodes this process may send to.
    pub peers: HashMap<NodeId, SocketAddr>,
    /// Certificates.
    pub tls: Tls,
    /// Whether clients must present a certificate of the cluster CA.
    pub require_client_certificates: bool,
    /// Largest frame accepted. Default 16 MiB.
    pub max_frame: usize,
    /// Frames of these purposes go to their own receiver, not the inbox
    /// ([`NetConfig::route`]).
    pub routes: HashMap<Purpose, mpsc::Sender<Inbound>>,
}

impl NetConfig {
    /// A configuration with the default frame limit.
    pub fn new(
        me: Option<NodeId>,
        listen: Option<SocketAddr>,
        peers: HashMap<NodeId, SocketAddr>,
        tls: Tls,
    ) -> NetConfig {
        NetConfig {
            me,
            listen,
            peers,
            tls,
            require_client_certificates: false,
            max_frame: DEFAULT_MAX_FRAME,
            routes: HashMap::new(),
        }
    }

    /// Sends the frames of `purpose` to the returned receiver, which holds
    /// up to `capacity` of them before their streams wait: a side protocol
    /// (state transfer) is served beside the main loop, whatever it is doing.
    pub fn route(&mut self, purpose: Purpose, capacity: usize) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(capacity);
        self.routes.insert(purpose, tx);
        rx
    }
}

/// Why the network could not start.
#[derive(Debug, Error)]
pub enum NetError {
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The endpoint could not bind.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The destination is not in the address book.
    #[error("no address for {0}")]
    UnknownPeer(NodeId),
    /// Connecting failed.
    #[error("cannot connect to {peer} at {addr}: {reason}")]
    Connect {
        /// The peer.
        peer: NodeId,
        /// Its address.
        addr: SocketAddr,
        /// What quinn reported.
        reason: String,
    },
    /// The peer's TLS refused this process's certificate, or this process
    /// refused the peer's: trying again will not help.
    #[error(
        "{peer} at {addr} refused the TLS handshake: {reason} (check tls.dir, the CA and the client certificate)"
    )]
    Refused {
        /// The peer.
        peer: NodeId,
        /// Its address.
        addr: SocketAddr,
        /// What quinn reported.
        reason: String,
    },
    /// The connection closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
}

/// A frame that arrived.
#[derive(Debug)]
pub struct Inbound {
    /// The sender: a node, or an anonymous id (at or above [`ANONYMOUS_BASE`]) of a client connection.
    pub from: NodeId,
    /// What the stream carries.
    pub purpose: Purpose,
    /// The frame body.
    pub body: Bytes,
    /// The connection it came on (to answer a client on it).
    pub connection: quinn::Connection,
    /// The tag of the certificate the connection's peer presented
    /// ([`ClientTag::ANONYMOUS`] without one): a client may use wire ids of
    /// this tag only.
    pub tag: ClientTag,
}

/// Counters of bad input and dropped output.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Streams closed for a malformed, oversized or out-of-version frame.
    pub bad_frames: AtomicU64,
    /// Streams closed because the peer claimed an identity it does not have.
    pub bad_identity: AtomicU64,
    /// Frames dropped because a peer's queue was full.
    pub dropped: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Frames for a destination not in the address book (an anonymous
    /// client asking an acceptor for something), dropped.
    pub unknown_destination: AtomicU64,
    /// Dialed connections replaced because nothing arrived on them for a second.
    pub stalled: AtomicU64,
    /// Datagrams that could not be QUIC for this endpoint (another
    /// version, a connection id it never issued, random bytes), dropped
    /// before quinn decoded them (by the socket filter under the endpoint).
    pub bad_datagrams: Arc<AtomicU64>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    me: Option<NodeId>,
    peers: HashMap<NodeId, SocketAddr>,
    max_frame: usize,
    connections: Mutex<HashMap<NodeId, quinn::Connection>>,
    outbound: Mutex<HashMap<(NodeId, Purpose), FrameQueue>>,
    next_anonymous: AtomicU32,
    stats: NetStats,
    inbox: mpsc::Sender<Inbound>,
    routes: HashMap<Purpose, mpsc::Sender<Inbound>>,
}

/// The queue of frames of one writer task.
type FrameQueue = mpsc::Sender<Vec<u8>>;

/// A process's endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl Network {
    /// Binds the endpoint and, for nodes, starts accepting. Frames that
    /// arrive come out of the returned receiver.
    pub fn start(config: NetConfig) -> Result<(Network, mpsc::Receiver<Inbound>), NetError> {
        let client_config = transport(config.tls.client_config()?);
        let stats = NetStats::default();
        let server = match config.listen {
            Some(_) => {
                let mut server = config
                    .tls
                    .server_config(config.require_client_certificates)?;
                server.transport_config(Arc::new(transport_config()));
                Some(server)
            }
            None => None,
        };
        let addr = config.listen.unwrap_or_else(|| {
            // A client binds where it can reach every peer from.
            match config.peers.values().any(|a| !a.ip().is_loopback()) {
                true => ([0, 0, 0, 0], 0).into(),
                false => ([127, 0, 0, 1], 0).into(),
            }
        });
        let endpoint = endpoint(addr, server, stats.bad_datagrams.clone())
            .map_err(|source| NetError::Bind { addr, source })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            inbox: tx.clone(),
            endpoint,
            client_config,
            me: config.me,
            peers: config.peers,
            max_frame: config.max_frame,
            connections: Mutex::new(HashMap::new()),
            outbound: Mutex::new(HashMap::new()),
            next_anonymous: AtomicU32::new(ANONYMOUS_BASE),
            stats,
            routes: config.routes,
        });
        if config.listen.is_some() {
            tokio::spawn(accept_loop(inner.clone(), tx));
        }
        Ok((Network { inner }, rx))
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Datagrams the kernel dropped at this endpoint's socket: what its
    /// filter found could not be QUIC for it ([`NetStats::bad_datagrams`]
    /// counts what got past the kernel), and receive-buffer overflows.
    /// `None` where the kernel does not tell (no `/proc/net/udp`).
    pub fn kernel_drops(&self) -> Option<u64> {
        socket::kernel_drops(self.local_addr().ok()?.port())
    }

    /// Counters.
    pub fn stats(&self) -> &NetStats {
        &self.inner.stats
    }

    /// Queues a frame for `to` on the stream of `purpose`; never blocks.
    /// The frame is dropped (and counted) if the peer's queue is full or
    /// `to` is not in the address book.
    pub fn send(&self, to: NodeId, purpose: Purpose, frame: Vec<u8>) {
        if !self.inner.peers.contains_key(&to) {
            self.inner
                .stats
                .unknown_destination
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sender = {
            let mut outbound = self
                .inner
                .outbound
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            outbound
                .entry((to, purpose))
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(writer(self.inner.clone(), to, purpose, rx));
                    tx
                })
                .clone()
        };
        if sender.try_send(frame).is_err() {
            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Opens a stream of `purpose` on an existing connection (a replica
    /// answering a client). Frames pushed into the returned sender go out
    /// batched; the task ends when the sender is dropped or the connection closes.
    pub fn open(&self, connection: quinn::Connection, purpose: Purpose) -> mpsc::Sender<Vec<u8>> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let hello = Hello::new(self.inner.me, purpose);
        tokio::spawn(async move {
            let Ok(mut stream) = connection.open_uni().await else {
                return;
            };
            let mut batch = hello.frame();
            let mut frames = Vec::new();
            while rx.recv_many(&mut frames, 1024).await > 0 {
                frames.drain(..).for_each(|f| batch.extend_from_slice(&f));
                if stream.write_all(&batch).await.is_err() {
                    return;
                }
                batch.clear();
            }
        });
        tx
    }

    /// The statistics of the connection this process dialed to `to` (packets,
    /// frames, acknowledgements), if it is up: for diagnostics and tests.
    pub fn link_stats(&self, to: NodeId) -> Option<quinn::ConnectionStats> {
        let connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        connections.get(&to).map(quinn::Connection::stats)
    }

    /// A new stream of `purpose` to `to`, its hello sent, for a caller that
    /// writes frames itself and waits on flow control (a large transfer
    /// that [`Network::send`]'s queue would drop from).
    pub async fn stream(
        &self,
        to: NodeId,
        purpose: Purpose,
    ) -> Result<quinn::SendStream, NetError> {
        if !self.inner.peers.contains_key(&to) {
            return Err(NetError::UnknownPeer(to));
        }
        open_stream(&self.inner, to, purpose).await
    }

    /// Connects to `to` now (or checks the existing connection) and waits
    /// until `to` has accepted this process's certificate; other sends
    /// connect lazily.
    pub async fn connect(&self, to: NodeId) -> Result<(), NetError> {
        let c = connection(&self.inner, to).await?;
        accepted(&c).await.map_err(|e| {
            let addr = c.remote_address();
            match tls_refusal(&e) {
                true => NetError::Refused {
                    peer: to,
                    addr,
                    reason: e.to_string(),
                },
                false => NetError::Connection(e),
            }
        })
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.inner.endpoint.close(0u32.into(), b"shutdown");
    }
}

/// A QUIC endpoint bound at `addr` whose socket drops (and counts in
/// `dropped`) what cannot be QUIC for it ([`super::socket`]).
fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    dropped: Arc<AtomicU64>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let cids = Cids::new(rand::random());
    if let Err(e) = kernel_filter(&socket, cids) {
        debug!(error = %e, "the kernel refused the datagram filter; the process filters alone");
    }
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let socket = Arc::new(Filtered::new(
        runtime.wrap_udp_socket(socket)?,
        cids,
        dropped,
    ));
    quinn::Endpoint::new_with_abstract_socket(endpoint_config(cids), server, socket, runtime)
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // The links of a cluster are fast: a first estimate of a third of a
    // second (QUIC's default, for the internet) makes a handshake whose first
    // packets were lost wait a second before it tries again.
    t.initial_rtt(Duration::from_millis(10));
    t.max_idle_timeout(Some(
        Duration::from_secs(5).try_into().expect("a valid timeout"),
    ));
    t.max_concurrent_uni_streams(64u32.into());
    t.max_concurrent_bidi_streams(0u32.into());
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((32u32 << 20).into());
    t.send_window(32 << 20);
    t.ack_frequency_config(Some(ack_frequency()));
    t
}

/// How often an idle connection pings its peer (which acknowledges it).
const KEEP_ALIVE: Duration = Duration::from_millis(250);

/// A dialed connection on which nothing at all arrived for this long (no
/// acknowledgement of a ping, no data) is dead to us and is replaced. QUIC
/// would wait for its idle timeout, and while a path is cut its probes back
/// off exponentially, so after a cut of seconds the connection woke up
/// seconds after the path healed, delivering everything queued meanwhile at
/// once (stale heartbeats and proposals). A fresh connection carries only
/// what the protocol sends from then on.
const STALLED_AFTER: Duration = Duration::from_secs(1);

/// A handshake that has not completed in this long is abandoned and started
/// again, so that the first attempt after a partition heals is not stuck in
/// the backoff of one begun during it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Packets a peer may take in before it must acknowledge them (it acknowledges
/// after one more, or after [`ACK_DELAY`]).
const ACK_THRESHOLD: u32 = 15;

/// How long a peer may hold an acknowledgement back.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// Asks every peer to acknowledge every 16th packet (or after 5 ms) instead
/// of every second one (QUIC's default): at one command in flight an
/// acknowledgement was a third of the datagrams, and each one wakes a
/// process. Loss detection waits the longer delay, which on the links of a
/// cluster, where loss is rare, costs nothing in the common case.
fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut config = quinn::AckFrequencyConfig::default();
    config
        .ack_eliciting_threshold(ACK_THRESHOLD.into())
        .max_ack_delay(Some(ACK_DELAY));
    config
}

fn transport(mut config: quinn::ClientConfig) -> quinn::ClientConfig {
    config.transport_config(Arc::new(transport_config()));
    config
}

/// The connection to `to`: the cached one, or a new one. Streams the peer
/// opens on a connection dialed here (a replica's replies to a client) are
/// read like those of accepted connections.
async fn connection(inner: &Arc<Inner>, to: NodeId) -> Result<quinn::Connection, NetError> {
    let cached = inner
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&to)
        .cloned();
    if let Some(c) = cached.filter(|c| c.close_reason().is_none()) {
        return Ok(c);
    }
    let addr = *inner.peers.get(&to).ok_or(NetError::UnknownPeer(to))?;
    let failed = |reason: String| NetError::Connect {
        peer: to,
        addr,
        reason,
    };
    let connecting = inner
        .endpoint
        .connect_with(inner.client_config.clone(), addr, &node_name(to))
        .map_err(|e| failed(e.to_string()))?;
    let c = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| failed(format!("no handshake within {HANDSHAKE_TIMEOUT:?}")))?
        .map_err(|e| match tls_refusal(&e) {
            true => NetError::Refused {
                peer: to,
                addr,
                reason: e.to_string(),
            },
            false => failed(e.to_string()),
        })?;
    inner
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(to, c.clone());
    tokio::spawn(serve_connection(
        inner.clone(),
        c.clone(),
        inner.inbox.clone(),
    ));
    tokio::spawn(watch(inner.clone(), to, c.clone()));
    Ok(c)
}

/// Waits until the server of `c` has accepted its client certificate. In
/// TLS 1.3 a client's handshake completes before the server has checked the
/// client's certificate: a server that refuses it closes the connection
/// right after, and one that accepts it sends its first 1-RTT packet (QUIC's
/// HANDSHAKE_DONE). So the next datagram tells, or the close.
async fn accepted(c: &quinn::Connection) -> Result<(), quinn::ConnectionError> {
    let seen = c.stats().udp_rx.datagrams;
    let wait = async {
        loop {
            if let Some(e) = c.close_reason() {
                return Err(e);
            }
            if c.stats().udp_rx.datagrams > seen {
                return Ok(());
            }
            tokio::select! {
                e = c.closed() => return Err(e),
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    };
    // Keep-alives arrive every quarter second: a server that said nothing
    // for longer is checked again by the next call.
    tokio::time::timeout(HANDSHAKE_TIMEOUT, wait)
        .await
        .unwrap_or(Ok(()))
}

/// Whether a handshake failed on certificates (a TLS alert either way),
/// not on reachability.
fn tls_refusal(e: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::ConnectionClosed(close) => crypto(close.error_code),
        quinn::ConnectionError::TransportError(error) => crypto(error.code),
        _ => false,
    }
}

/// Closes the dialed connection `c` to `to` once nothing has arrived on it
/// for [`STALLED_AFTER`] (see there); its writers then dial again.
async fn watch(inner: Arc<Inner>, to: NodeId, c: quinn::Connection) {
    let mut ticks = tokio::time::interval(STALLED_AFTER / 4);
    let (mut received, mut since) = (c.stats().udp_rx.datagrams, tokio::time::Instant::now());
    loop {
        ticks.tick().await;
        if c.close_reason().is_some() {
            return;
        }
        let now = c.stats().udp_rx.datagrams;
        if now != received {
            (received, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= STALLED_AFTER {
            info!(me = ?inner.me, peer = %to, "nothing received for {STALLED_AFTER:?}; replacing the connection");
            inner.stats.stalled.fetch_add(1, Ordering::Relaxed);
            c.close(STALLED_CODE.into(), b"stalled");
            let mut connections = inner.connections.lock().unwrap_or_else(|e| e.into_inner());
            if connections
                .get(&to)
                .is_some_and(|k| k.stable_id() == c.stable_id())
            {
                connections.remove(&to);
            }
            return;
        }
    }
}

/// The application close code of a connection replaced for silence.
const STALLED_CODE: u32 = 2;

/// Opens a stream of `purpose` to `to` and sends the hello.
async fn open_stream(
    inner: &Arc<Inner>,
    to: NodeId,
    purpose: Purpose,
) -> Result<quinn::SendStream, NetError> {
    let mut stream = connection(inner, to).await?.open_uni().await?;
    stream
        .write_all(&Hello::new(inner.me, purpose).frame())
        .await?;
    Ok(stream)
}

/// The writer of one (peer, purpose): one stream, every queued frame per write.
async fn writer(inner: Arc<Inner>, to: NodeId, purpose: Purpose, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut backoff = Duration::from_millis(10);
    let mut frames = Vec::new();
    let mut batch = Vec::new();
    loop {
        let mut stream = match open_stream(&inner, to, purpose).await {
            Ok(stream) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                inner.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %to, error = %e, "connect failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                // What queued meanwhile is stale; the protocol resends what matters.
                while rx.try_recv().is_ok() {}
                if rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        loop {
            if rx.recv_many(&mut frames, 1024).await == 0 {
                let _ = stream.finish();
                return;
            }
            batch.clear();
            frames.drain(..).for_each(|f| batch.extend_from_slice(&f));
            if let Err(e) = stream.write_all(&batch).await {
                debug!(peer = %to, error = %e, "stream broke; reconnecting");
                inner
                    .connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&to);
                break;
            }
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, tx: mpsc::Sender<Inbound>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let (inner, tx) = (inner.clone(), tx.clone());
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => {
                    inner.stats.connections.fetch_add(1, Ordering::Relaxed);
                    serve_connection(inner, connection, tx).await;
                }
                Err(e) => debug!(error = %e, "handshake failed"),
            }
        });
    }
}

async fn serve_connection(
    inner: Arc<Inner>,
    connection: quinn::Connection,
    tx: mpsc::Sender<Inbound>,
) {
    let anonymous = NodeId(inner.next_anonymous.fetch_add(1, Ordering::Relaxed));
    let peer = Peer {
        anonymous,
        tag: peer_client_tag(&connection),
    };
    while let Ok(stream) = connection.accept_uni().await {
        let (inner, connection, tx) = (inner.clone(), connection.clone(), tx.clone());
        tokio::spawn(async move {
            if let Err(e) = read_stream(&inner, &connection, stream, &tx, peer).await {
                let counter = match e {
                    StreamError::Identity(_) | StreamError::NotANode(_) => {
                        &inner.stats.bad_identity
                    }
                    StreamError::Read(_) => return,
                    _ => &inner.stats.bad_frames,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %connection.remote_address(), error = %e, "closing stream");
            }
        });
    }
}

/// Who is at the other end of an accepted or dialed connection, as far as
/// the connection tells.
#[derive(Clone, Copy)]
struct Peer {
    /// The id its streams get when they name no node.
    anonymous: NodeId,
    /// The tag of its certificate.
    tag: ClientTag,
}

async fn read_stream(
    inner: &Inner,
    connection: &quinn::Connection,
    mut stream: quinn::RecvStream,
    tx: &mpsc::Sender<Inbound>,
    peer: Peer,
) -> Result<(), StreamError> {
    let result = relay(inner, connection, &mut stream, tx, peer).await;
    if result.is_err() {
        let _ = stream.stop(1u32.into());
    }
    result
}

async fn relay(
    inner: &Inner,
    connection: &quinn::Connection,
    stream: &mut quinn::RecvStream,
    tx: &mpsc::Sender<Inbound>,
    peer: Peer,
) -> Result<(), StreamError> {
    let hello = read_hello(stream).await?;
    let from = match hello.node {
        Some(node) if node.0 >= ANONYMOUS_BASE || !peer_is_node(connection, node) => {
            return Err(StreamError::Identity(node));
        }
        Some(node) => node,
        None if hello.purpose.needs_node() => {
            return Err(StreamError::NotANode(hello.purpose));
        }
        None => peer.anonymous,
    };
    let tx = inner.routes.get(&hello.purpose).unwrap_or(tx);
    let mut reader = FrameReader::new(inner.max_frame);
    let mut bodies = Vec::new();
    while reader.read(stream, &mut bodies).await? {
        for body in bodies.drain(..) {
            let inbound = Inbound {
                from,
                purpose: hello.purpose,
                body,
                connection: connection.clone(),
                tag: peer.tag,
            };
            if tx.send(inbound).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A frame with `body` (for callers building frames themselves).
pub fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    push_frame(&mut out, body);
    out
}
