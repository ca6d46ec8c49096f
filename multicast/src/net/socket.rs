//! The UDP socket under a process's QUIC endpoint, with a filter that drops
//! datagrams that cannot be QUIC for this endpoint before quinn looks at
//! them, and counts them ([`NetStats::bad_datagrams`](super::NetStats)).
//!
//! ```text
//!  kernel ──recvmmsg──> Filtered::poll_recv ──plausible?──> quinn endpoint
//!                                 └── no: counted, dropped (no decode, no answer)
//! ```
//!
//! A datagram is kept if it is a long-header packet of QUIC version 1 (the
//! only version psmr speaks; a client's first Initial carries a connection
//! id of its own choosing, so nothing more can be checked), or a
//! short-header packet whose destination connection id this endpoint could
//! have issued ([`Cids`]: the second half of an id is a keyed function of
//! the first). Everything else (scans, misdirected traffic, random bytes)
//! is dropped without quinn decoding it or answering it (version
//! negotiation, stateless resets).
//!
//! The same test runs first in the kernel, as a classic BPF program on the
//! socket ([`kernel_filter`]): under a flood, receiving each datagram
//! (system call, copy, wake-up) cost more than quinn's look at it, so what
//! the kernel drops never reaches the process. The kernel counts those
//! drops with the socket's ([`kernel_drops`]); the filter in
//! [`Filtered::poll_recv`] remains for the kernels that refuse the program.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, ConnectionId, ConnectionIdGenerator, EndpointConfig, UdpPoller};
use quinn_proto::InvalidCid;
use socket2::SockFilter;

/// Length of the connection ids [`Cids`] makes.
const CID_LEN: usize = 8;

/// The connection ids of one endpoint: 4 random bytes `n`, then
/// `n * k1 + k2` (big-endian, 32-bit), with a random odd `k1` and random
/// `k2` per endpoint. Random datagrams pass the check by a 2^-32 chance;
/// it is not a MAC (an observer of ids can forge more), which is fine for
/// its purpose: cheap rejection of what is not for us, in the kernel too.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cids {
    k1: u32,
    k2: u32,
}

impl Cids {
    /// The ids of a key (an endpoint's random number).
    pub(crate) fn new(key: u64) -> Cids {
        Cids {
            k1: (key as u32) | 1,
            k2: (key >> 32) as u32,
        }
    }

    fn tag(self, nonce: u32) -> u32 {
        nonce.wrapping_mul(self.k1).wrapping_add(self.k2)
    }

    fn valid(self, cid: &[u8]) -> bool {
        let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        cid.len() == CID_LEN && self.tag(word(&cid[..4])) == word(&cid[4..])
    }
}

impl ConnectionIdGenerator for Cids {
    fn generate_cid(&mut self) -> ConnectionId {
        let nonce: u32 = rand::random();
        let mut bytes = [0u8; CID_LEN];
        bytes[..4].copy_from_slice(&nonce.to_be_bytes());
        bytes[4..].copy_from_slice(&self.tag(nonce).to_be_bytes());
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        match self.valid(cid) {
            true => Ok(()),
            false => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The check of [`Filtered::plausible`] as a classic BPF program. A UDP
/// socket's filter sees the datagram from its UDP header on: the payload
/// starts at byte 8. A load beyond the end drops the datagram.
fn program(cids: Cids) -> [SockFilter; 12] {
    const LDB_ABS: u16 = 0x30;
    const LDW_ABS: u16 = 0x20;
    const JSET_K: u16 = 0x45;
    const JEQ_K: u16 = 0x15;
    const JEQ_X: u16 = 0x1d;
    const MUL_K: u16 = 0x24;
    const ADD_K: u16 = 0x04;
    const TAX: u16 = 0x07;
    const RET_K: u16 = 0x06;
    let op = SockFilter::new;
    [
        op(LDB_ABS, 0, 0, 8),      // 0: first byte
        op(JSET_K, 0, 2, 0x80),    // 1: long header? 2 : 4
        op(LDW_ABS, 0, 0, 9),      // 2: version
        op(JEQ_K, 6, 7, QUIC_V1),  // 3: v1? accept : drop
        op(LDW_ABS, 0, 0, 9),      // 4: id, first half
        op(MUL_K, 0, 0, cids.k1),  // 5
        op(ADD_K, 0, 0, cids.k2),  // 6
        op(TAX, 0, 0, 0),          // 7: X = the tag it must carry
        op(LDW_ABS, 0, 0, 13),     // 8: id, second half
        op(JEQ_X, 0, 1, 0),        // 9: tag? accept : drop
        op(RET_K, 0, 0, u32::MAX), // 10: accept
        op(RET_K, 0, 0, 0),        // 11: drop
    ]
}

/// Attaches the filter of `cids` to `socket`; a kernel that refuses it
/// leaves the filtering to [`Filtered`].
pub(crate) fn kernel_filter(socket: &std::net::UdpSocket, cids: Cids) -> io::Result<()> {
    socket2::SockRef::from(socket).attach_filter(&program(cids))
}

/// Datagrams the kernel dropped at the UDP socket bound to `port` (its
/// filter's drops and receive-buffer overflows), from `/proc/net/udp`.
pub(crate) fn kernel_drops(port: u16) -> Option<u64> {
    let port = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local = fields.get(1)?;
                local
                    .ends_with(&port)
                    .then(|| fields.last()?.parse().ok())?
            })
        })
}

/// The QUIC version psmr speaks.
const QUIC_V1: u32 = 1;

/// An endpoint configuration whose connection ids [`Filtered`] with the
/// same `cids` recognizes.
pub(crate) fn endpoint_config(cids: Cids) -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config.cid_generator(move || Box::new(cids));
    config
}

/// A UDP socket that drops what cannot be QUIC for its endpoint.
pub(crate) struct Filtered {
    inner: Arc<dyn AsyncUdpSocket>,
    cids: Cids,
    dropped: Arc<AtomicU64>,
}

impl Filtered {
    /// Wraps `inner`; ids are those of [`endpoint_config`] with `cids`;
    /// every datagram dropped is counted in `dropped`.
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, cids: Cids, dropped: Arc<AtomicU64>) -> Self {
        Filtered {
            inner,
            cids,
            dropped,
        }
    }

    /// Whether `datagram` may be a QUIC packet for this endpoint.
    fn plausible(&self, datagram: &[u8]) -> bool {
        let Some(&first) = datagram.first() else {
            return false;
        };
        if first & 0x80 != 0 {
            return datagram
                .get(1..5)
                .is_some_and(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]) == QUIC_V1);
        }
        datagram
            .get(1..1 + CID_LEN)
            .is_some_and(|cid| self.cids.valid(cid))
    }

    /// Whether any datagram of a (possibly coalesced, GRO) buffer is plausible.
    fn keep(&self, buffer: &[u8], meta: &RecvMeta) -> bool {
        let stride = meta.stride.max(1);
        buffer[..meta.len.min(buffer.len())]
            .chunks(stride)
            .any(|datagram| self.plausible(datagram))
    }
}

impl fmt::Debug for Filtered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filtered")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncUdpSocket for Filtered {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    /// Receives from the socket and moves the buffers kept to the front;
    /// when every one was dropped, receives again (until the socket has
    /// nothing, which registers the waker).
    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let received = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut kept = 0;
            for i in 0..received {
                if !self.keep(&bufs[i], &meta[i]) {
                    let datagrams = meta[i].len.div_ceil(meta[i].stride.max(1)).max(1);
                    self.dropped.fetch_add(datagrams as u64, Ordering::Relaxed);
                    continue;
                }
                if kept != i {
                    let len = meta[i].len;
                    let (front, back) = bufs.split_at_mut(i);
                    front[kept][..len].copy_from_slice(&back[0][..len]);
                    meta[kept] = meta[i];
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn filter(cids: Cids) -> Filtered {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let runtime = quinn::TokioRuntime;
        let inner = quinn::Runtime::wrap_udp_socket(&runtime, socket).expect("wrap");
        Filtered::new(inner, cids, Arc::new(AtomicU64::new(0)))
    }

    /// A short-header packet for `cid`.
    fn short(cid: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x40];
        packet.extend_from_slice(cid);
        packet.extend_from_slice(&[0; 20]);
        packet
    }

    const V1: &[u8] = &[0xc0, 0, 0, 0, 1, 8, 1, 2, 3];
    const V_OTHER: &[u8] = &[0xc0, 0xde, 0xad, 0xbe, 0xef, 8];

    #[tokio::test]
    async fn only_version_1_long_headers_and_our_connection_ids_pass() {
        let mut ours = Cids::new(7);
        let f = filter(ours);
        assert!(f.plausible(&short(&ours.generate_cid())), "one of our ids");
        let mut theirs = Cids::new(8 << 32 | 9);
        assert!(
            !f.plausible(&short(&theirs.generate_cid())),
            "an id never issued here"
        );
        assert!(f.plausible(V1), "a version 1 long header");
        assert!(!f.plausible(V_OTHER), "another version");
        assert!(
            !f.plausible(&[]) && !f.plausible(&[0x40, 1, 2]),
            "too short"
        );
    }

    /// The kernel runs the same test: what passes arrives, the rest is
    /// dropped (and counted) before the process sees it.
    #[test]
    fn the_kernel_filter_passes_what_the_process_filter_passes() {
        let mut ours = Cids::new(0x1234_5678_9abc_def1);
        let mut theirs = Cids::new(42);
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        kernel_filter(&receiver, ours).expect("the kernel takes the program");
        receiver
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("a timeout");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = receiver.local_addr().expect("bound");
        let good = [short(&ours.generate_cid()), V1.to_vec()];
        let bad = [
            short(&theirs.generate_cid()),
            V_OTHER.to_vec(),
            vec![0x40, 1, 2],
            vec![],
        ];
        for packet in bad.iter().chain(&good) {
            sender.send_to(packet, to).expect("sent");
        }
        let mut buf = [0u8; 2048];
        let mut arrived = Vec::new();
        while let Ok(n) = receiver.recv(&mut buf) {
            arrived.push(buf[..n].to_vec());
        }
        assert_eq!(
            arrived,
            good.to_vec(),
            "exactly the plausible datagrams arrive"
        );
        let port = to.port();
        assert_eq!(
            kernel_drops(port),
            Some(bad.len() as u64),
            "the kernel counted its drops"
        );
    }
}
