//! State transfer over the cluster's QUIC with mutual TLS
//! (`psmr_replica::transfer`): the newest checkpoint of a replica reaches
//! another in chunks, byte for byte; a damaged one is refused and leaves
//! nothing behind; a node that is not a replica of the cluster is not
//! answered; nothing newer than asked is nothing.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use psmr_core::proto::NodeId;
use psmr_multicast::net::{
    CertPaths, Identity, NetConfig, Network, Purpose, Tls, generate_dev_certs,
};
use psmr_replica::store::Store;
use psmr_replica::transfer::{self, Fetcher, QUEUED};

const R101: NodeId = NodeId(101);
const R102: NodeId = NodeId(102);
/// A node of the cluster (an acceptor's certificate) that is not a replica.
const A1: NodeId = NodeId(1);

fn free_address() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a free port");
    socket.local_addr().expect("bound")
}

/// Node `me`'s network, its fetcher of `from`, and its checkpoints in
/// `dir`, served to `replicas`.
fn node(
    certs: &CertPaths,
    me: NodeId,
    peers: &HashMap<NodeId, SocketAddr>,
    dir: &Path,
    replicas: Vec<NodeId>,
    from: Vec<NodeId>,
) -> (Network, Fetcher, Store) {
    let (cert, key) = certs.node(me);
    let identity = Identity::load(&cert, &key).expect("an identity");
    let tls = Tls::load(&certs.ca(), Some(identity)).expect("the CA");
    let mut config = NetConfig::new(Some(me), Some(peers[&me]), peers.clone(), tls);
    let asks = config.route(Purpose::TransferRequest, QUEUED);
    let answers = config.route(Purpose::Transfer, QUEUED);
    let (net, _inbox) = Network::start(config).expect("the node starts");
    let store = Store::open(dir, 2).expect("a store");
    tokio::spawn(transfer::serve(net.clone(), store.clone(), replicas, asks));
    (net.clone(), Fetcher::new(net, answers, from), store)
}

/// A file shaped like a checkpoint for the transfer: `len` bytes of body,
/// then its length and CRC-32 (the transfer checks the checksum; what the
/// body means is the loader's business).
fn checkpoint_file(len: usize, seed: u8) -> Vec<u8> {
    let mut body: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&(len as u64).to_le_bytes());
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

fn name(number: u64) -> String {
    format!("checkpoint-{number:020}.psmr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_travels_whole_and_checked_and_only_to_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_dev_certs(&dir.path().join("certs"), &[R101, R102, A1], false).unwrap();
    let peers: HashMap<NodeId, SocketAddr> = [R101, R102, A1]
        .into_iter()
        .map(|n| (n, free_address()))
        .collect();
    let dirs = |n: NodeId| dir.path().join(format!("node-{}", n.0));
    let replicas = vec![R101, R102];
    let (_n102, _, _) = node(&certs, R102, &peers, &dirs(R102), replicas.clone(), vec![]);
    let (_n101, mut fetcher, store) = node(&certs, R101, &peers, &dirs(R101), replicas, vec![R102]);
    let file = checkpoint_file(3 * transfer::CHUNK + 12_345, 7);
    std::fs::write(dirs(R102).join(name(7)), &file).unwrap();

    let fetched = fetcher.newest(&store, 0, Duration::ZERO).await;
    assert_eq!(fetched, Some(7));
    let received = std::fs::read(dirs(R101).join(name(7))).unwrap();
    assert!(received == file, "the file arrived byte for byte");
    assert_eq!(
        fetcher.newest(&store, 7, Duration::ZERO).await,
        None,
        "nothing newer than 7"
    );

    let mut damaged = checkpoint_file(transfer::CHUNK + 1, 8);
    damaged[100] ^= 1;
    std::fs::write(dirs(R102).join(name(8)), &damaged).unwrap();
    assert_eq!(fetcher.newest(&store, 7, Duration::ZERO).await, None);
    let left: Vec<_> = std::fs::read_dir(dirs(R101))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        left,
        [name(7)],
        "the damaged checkpoint left nothing behind"
    );
    std::fs::write(
        dirs(R102).join(name(8)),
        checkpoint_file(transfer::CHUNK + 1, 8),
    )
    .unwrap();
    assert_eq!(
        fetcher.newest(&store, 7, Duration::ZERO).await,
        Some(8),
        "the same checkpoint, intact, is taken"
    );

    let (_a1, mut stranger, theirs) = node(&certs, A1, &peers, &dirs(A1), vec![], vec![R102]);
    assert_eq!(
        stranger.newest(&theirs, 0, Duration::ZERO).await,
        None,
        "a node that is not a replica is not answered"
    );
}
