//! The QUIC transport: frames flow between nodes, and bad input (garbage,
//! a 1 GiB length prefix, another wire version, a peer without the cluster
//! certificate, a client posing as a node) closes a stream or a handshake,
//! is counted, allocates nothing large, and leaves the endpoint serving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use peak_alloc::PeakAlloc;
use psmr_core::proto::NodeId;
use psmr_multicast::net::{
    CertPaths, Hello, Identity, Inbound, NetConfig, Network, Purpose, Tls, frame_of,
    generate_dev_certs, node_name,
};
use tokio::sync::mpsc;

/// Counts live heap bytes, so a test can show nothing large was allocated.
#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    _dir: tempfile::TempDir,
    certs: CertPaths,
    /// Certificates of another cluster, with the same node names.
    foreign: CertPaths,
    /// Node 1, listening.
    n1: Network,
    inbox: mpsc::Receiver<Inbound>,
    addr: SocketAddr,
}

fn tls(certs: &CertPaths, node: Option<NodeId>) -> Tls {
    let identity = node.map(|n| {
        let (cert, key) = certs.node(n);
        Identity::load(&cert, &key).expect("a node identity")
    });
    Tls::load(&certs.ca(), identity).expect("the CA")
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let certs =
        generate_dev_certs(&dir.path().join("ours"), &[N1, N2], false).expect("certificates");
    let foreign =
        generate_dev_certs(&dir.path().join("theirs"), &[N1, N2], false).expect("certificates");
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let config = NetConfig::new(
        Some(N1),
        Some(listen),
        HashMap::new(),
        tls(&certs, Some(N1)),
    );
    let (n1, inbox) = Network::start(config).expect("node 1 starts");
    let addr = n1.local_addr().expect("bound");
    Setup {
        _dir: dir,
        certs,
        foreign,
        n1,
        inbox,
        addr,
    }
}

/// A network of `me` (or a client) that knows node 1 at `addr`.
fn peer(certs: &CertPaths, me: Option<NodeId>, addr: SocketAddr) -> Network {
    let peers = HashMap::from([(N1, addr)]);
    let config = NetConfig::new(me, None, peers, tls(certs, me));
    Network::start(config).expect("a peer starts").0
}

/// A raw QUIC connection to node 1 presenting `me`'s certificate from `certs`.
async fn raw(certs: &CertPaths, me: Option<NodeId>, addr: SocketAddr) -> quinn::Connection {
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")).expect("bind");
    endpoint.set_default_client_config(tls(certs, me).client_config().expect("a client config"));
    endpoint
        .connect(addr, &node_name(N1))
        .expect("connect starts")
        .await
        .expect("handshake")
}

/// Opens a stream and writes `bytes` on it.
async fn write_stream(connection: &quinn::Connection, bytes: &[u8]) {
    let mut stream = connection.open_uni().await.expect("a stream");
    stream.write_all(bytes).await.expect("write");
    let _ = stream.finish();
}

async fn counted(counter: &AtomicU64, at_least: u64) {
    tokio::time::timeout(WAIT, async {
        while counter.load(Ordering::Relaxed) < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the bad input is counted");
}

/// Node 2 can still reach node 1: the endpoint keeps serving.
async fn still_serves(s: &mut Setup) {
    let n2 = peer(&s.certs, Some(N2), s.addr);
    n2.send(N1, Purpose::Protocol, frame_of(b"\x01still here"));
    let inbound = tokio::time::timeout(WAIT, s.inbox.recv())
        .await
        .expect("a frame within the wait")
        .expect("the inbox is open");
    assert_eq!(inbound.from, N2);
    assert_eq!(&inbound.body[..], b"\x01still here");
    n2.close();
}

#[tokio::test]
async fn frames_from_a_node_arrive_in_order_and_batched() {
    let mut s = setup();
    let n2 = peer(&s.certs, Some(N2), s.addr);
    for i in 0..1000u32 {
        n2.send(N1, Purpose::Protocol, frame_of(&i.to_le_bytes()));
    }
    for i in 0..1000u32 {
        let inbound = tokio::time::timeout(WAIT, s.inbox.recv())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!((inbound.from, inbound.purpose), (N2, Purpose::Protocol));
        assert_eq!(&inbound.body[..], &i.to_le_bytes());
    }
}

/// Peers acknowledge every 16th packet or after 5 ms, not every second one:
/// one frame at a time (each its own packet, as at low load), the sender
/// gets about one acknowledgement per 16 packets, plus one per 5 ms elapsed.
#[tokio::test]
async fn peers_acknowledge_packets_in_groups() {
    let mut s = setup();
    let n2 = peer(&s.certs, Some(N2), s.addr);
    const ROUNDS: u64 = 320;
    let started = std::time::Instant::now();
    for i in 0..ROUNDS {
        n2.send(N1, Purpose::Protocol, frame_of(&i.to_le_bytes()));
        let inbound = tokio::time::timeout(WAIT, s.inbox.recv())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(&inbound.body[..], &i.to_le_bytes());
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let stats = n2.link_stats(N1).expect("node 2 dialed node 1");
    let (packets, acks) = (stats.udp_tx.datagrams, stats.frame_rx.acks);
    // QUIC's default would be one acknowledgement per two packets (160 here).
    let bound = ROUNDS / 16 + elapsed_ms / 5 + 10;
    assert!(packets >= ROUNDS, "one packet per frame");
    assert!(
        acks <= bound,
        "{acks} acknowledgements for {packets} packets in {elapsed_ms} ms (at most {bound})"
    );
    n2.close();
}

#[tokio::test]
async fn garbage_bytes_close_the_stream() {
    let mut s = setup();
    let connection = raw(&s.certs, Some(N2), s.addr).await;
    write_stream(&connection, b"\xde\xad\xbe\xef not a hello at all").await;
    counted(&s.n1.stats().bad_frames, 1).await;
    still_serves(&mut s).await;
}

#[tokio::test]
async fn a_1_gib_length_prefix_is_refused_before_allocation() {
    let mut s = setup();
    let connection = raw(&s.certs, Some(N2), s.addr).await;
    // A bad hello: its length alone says 1 GiB.
    write_stream(&connection, &(1u32 << 30).to_le_bytes()).await;
    // A good hello, then a frame that says 1 GiB.
    let mut bytes = Hello::new(Some(N2), Purpose::Protocol).frame();
    bytes.extend_from_slice(&(1u32 << 30).to_le_bytes());
    bytes.extend_from_slice(&[1; 64]);
    write_stream(&connection, &bytes).await;
    counted(&s.n1.stats().bad_frames, 2).await;
    still_serves(&mut s).await;
    // Every test of this binary together, at its peak, held less than a
    // tenth of what one frame asked for.
    let peak = ALLOC.peak_usage();
    assert!(peak < 100 << 20, "the heap peaked at {peak} bytes");
}

#[tokio::test]
async fn an_unknown_wire_version_closes_the_stream() {
    let mut s = setup();
    let connection = raw(&s.certs, Some(N2), s.addr).await;
    let mut hello = Hello::new(Some(N2), Purpose::Protocol);
    hello.version = 99;
    write_stream(&connection, &hello.frame()).await;
    counted(&s.n1.stats().bad_frames, 1).await;
    still_serves(&mut s).await;
}

#[tokio::test]
async fn a_peer_of_another_cluster_cannot_connect() {
    let mut s = setup();
    // Node 2's name, another CA: node 1 refuses the handshake.
    let stranger = peer(&s.foreign, Some(N2), s.addr);
    let refused = stranger.connect(N1).await;
    assert!(refused.is_err(), "a foreign certificate was accepted");
    // A client that trusts only another CA refuses node 1.
    let wary = peer(&s.foreign, None, s.addr);
    assert!(wary.connect(N1).await.is_err(), "node 1 passed for theirs");
    still_serves(&mut s).await;
}

#[tokio::test]
async fn claiming_another_nodes_identity_is_refused() {
    let mut s = setup();
    // Node 2's certificate, a hello that says node 1.
    let connection = raw(&s.certs, Some(N2), s.addr).await;
    write_stream(
        &connection,
        &Hello::new(Some(N1), Purpose::Protocol).frame(),
    )
    .await;
    // No certificate at all, a hello that says node 2.
    let anonymous = raw(&s.certs, None, s.addr).await;
    write_stream(&anonymous, &Hello::new(Some(N2), Purpose::Protocol).frame()).await;
    counted(&s.n1.stats().bad_identity, 2).await;
    still_serves(&mut s).await;
}

#[tokio::test]
async fn a_client_cannot_speak_the_protocol() {
    let mut s = setup();
    let anonymous = raw(&s.certs, None, s.addr).await;
    let mut bytes = Hello::new(None, Purpose::Protocol).frame();
    bytes.extend_from_slice(&frame_of(b"\x01forged"));
    write_stream(&anonymous, &bytes).await;
    counted(&s.n1.stats().bad_identity, 1).await;
    // Proposals are what a client may send; they arrive, anonymous.
    let client = peer(&s.certs, None, s.addr);
    client.send(N1, Purpose::Propose, frame_of(b"\x01proposal"));
    let inbound = tokio::time::timeout(WAIT, s.inbox.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(inbound.purpose, Purpose::Propose);
    assert!(inbound.from.0 >= psmr_multicast::net::ANONYMOUS_BASE);
    // Answers to an anonymous id are dropped, not dialed.
    s.n1.send(inbound.from, Purpose::Protocol, frame_of(b"\x01no"));
    assert_eq!(s.n1.stats().unknown_destination.load(Ordering::Relaxed), 1);
    still_serves(&mut s).await;
}

/// Each frame carries the tag of the certificate its connection presented:
/// two clients with their own certificates differ, one without has none.
#[tokio::test]
async fn frames_carry_the_tag_of_their_clients_certificate() {
    use psmr_core::ClientTag;
    let mut s = setup();
    psmr_multicast::net::issue_client_cert(&s.certs.dir, "alice", false).expect("alice");
    let named = |name: &str| {
        let (cert, key) = s.certs.named_client(name);
        Tls::load(
            &s.certs.ca(),
            Some(Identity::load(&cert, &key).expect("a client")),
        )
        .expect("CA")
    };
    let (client, alice) = (named(psmr_multicast::net::CLIENT), named("alice"));
    assert_ne!(client.client_tag(), alice.client_tag());
    assert_ne!(client.client_tag(), ClientTag::ANONYMOUS);
    for tls in [client, alice, tls(&s.certs, None)] {
        let expected = tls.client_tag();
        let config = NetConfig::new(None, None, HashMap::from([(N1, s.addr)]), tls);
        let (net, _) = Network::start(config).expect("a client starts");
        net.send(N1, Purpose::Propose, frame_of(b"\x01proposal"));
        let inbound = tokio::time::timeout(WAIT, s.inbox.recv())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(inbound.tag, expected);
        net.close();
    }
    // The same name again is refused, not silently replaced.
    let again = psmr_multicast::net::issue_client_cert(&s.certs.dir, "alice", false);
    assert!(again.is_err(), "a client certificate was replaced");
    still_serves(&mut s).await;
}

/// A certificate for a node's name that is only good for dialing (what
/// client certificates are) cannot serve as that node.
#[tokio::test]
async fn a_client_certificate_cannot_serve_as_a_node() {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    let s = setup();
    let ca = std::fs::read_to_string(s.certs.ca()).expect("ca.pem");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(s.certs.ca_key()).expect("ca.key"))
        .expect("the CA key");
    let issuer = Issuer::from_ca_cert_pem(&ca, ca_key).expect("the CA");
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(vec![node_name(N1)]).expect("params");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("signed");
    let dir = s.certs.dir.join("impostor");
    std::fs::create_dir_all(&dir).expect("a directory");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
    let identity = Identity::load(&dir.join("cert.pem"), &dir.join("key.pem")).expect("loads");
    let tls = Tls::load(&s.certs.ca(), Some(identity)).expect("the CA");
    let config = NetConfig::new(
        Some(N1),
        Some("127.0.0.1:0".parse().expect("an address")),
        HashMap::new(),
        tls,
    );
    let (impostor, _inbox) = Network::start(config).expect("it listens");
    let addr = impostor.local_addr().expect("bound");
    let n2 = peer(&s.certs, Some(N2), addr);
    assert!(
        n2.connect(N1).await.is_err(),
        "a client certificate served as node 1"
    );
}

/// Private keys are readable by their owner only, and a second run does
/// not replace the CA unless told to.
#[test]
fn keys_are_private_and_a_ca_is_not_replaced_silently() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let certs = generate_dev_certs(dir.path(), &[N1], false).expect("certificates");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    for key in [certs.ca_key(), certs.node(N1).1, certs.client().1] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    let ca = std::fs::read(certs.ca()).expect("ca.pem");
    let refused = generate_dev_certs(dir.path(), &[N1], false)
        .err()
        .map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("ca.pem exists") && e.contains("--force")),
        "{refused:?}"
    );
    assert_eq!(
        std::fs::read(certs.ca()).expect("ca.pem"),
        ca,
        "the CA changed"
    );
    generate_dev_certs(dir.path(), &[N1], true).expect("replaced when told");
    assert_ne!(std::fs::read(certs.ca()).expect("ca.pem"), ca);
}
