//! Bad input to the `psmr` processes: wrong command lines and cluster files
//! get a clear error; a serving cluster hit by garbage, oversized frames,
//! another wire version, strangers and forged protocol messages keeps
//! serving.

mod common;

use std::time::Duration;

use common::{Spec, TestCluster, numbers, run_psmr, v};
use psmr_core::cluster::ClusterConfig;
use psmr_core::proto::codec::{self, DEFAULT_MAX_FRAME};
use psmr_core::proto::{
    Ballot, Command, CommandId, Decide, Message, NodeId, Propose, ProposerId, RingId, Value,
};
use psmr_multicast::net::{Hello, Purpose, Tls, frame_of, node_name};

const QUICK: Duration = Duration::from_secs(30);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    let out = run_psmr(&["local", "--no-such-flag"], QUICK);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("--no-such-flag"), "{}", stderr(&out));
    let out = run_psmr(&["acceptor"], QUICK);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("--config"), "{}", stderr(&out));
}

/// Counts of zero, ports out of range and shares beyond 1 are usage
/// errors naming the flag; completions and the version work.
#[test]
fn nonsense_on_the_command_line_is_refused_naming_the_flag() {
    let cases: [(&[&str], &str); 8] = [
        (
            &["local", "--value-size", "2000000"],
            "must be at most 1048576 bytes",
        ),
        (
            &[
                "client",
                "--config",
                "c.toml",
                "load",
                "--value-size",
                "1048577",
            ],
            "must be at most 1048576 bytes",
        ),
        (&["local", "--port", "65500"], "65500 is not in 1..=65434"),
        (&["local", "--threads", "0"], "must be at least 1"),
        (
            &["client", "--config", "c.toml", "load", "--clients", "0"],
            "must be at least 1",
        ),
        (
            &["client", "--config", "c.toml", "load", "--in-flight", "0"],
            "must be at least 1",
        ),
        (
            &["client", "--config", "c.toml", "load", "--rate", "0"],
            "--rate",
        ),
        (
            &["client", "--config", "c.toml", "load", "--dependent", "1.5"],
            "between 0 and 1",
        ),
    ];
    for (args, expected) in cases {
        let out = run_psmr(args, QUICK);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = run_psmr(&["completions", "bash"], QUICK);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("_psmr()"));
    let out = run_psmr(&["--version"], QUICK);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.contains("(commit "), "{version}");
}

/// A CA file without a certificate is named as such, not found out later
/// as a failed handshake.
#[test]
fn a_ca_file_without_a_certificate_is_named() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("a directory");
    std::fs::write(certs.join("ca.pem"), "garbage\n").expect("write");
    let mut cluster = ClusterConfig::local(7100, psmr_core::EngineKind::Psmr, 2);
    cluster.tls.dir = "certs".into();
    cluster.tls.require_client_certificates = false;
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, cluster.to_toml()).expect("write");
    let config = path.to_str().expect("utf-8");
    // From another working directory: tls.dir is relative to the file.
    let out = run_psmr(&["client", "--config", config, "get", "1"], QUICK);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let message = stderr(&out);
    let ca = certs.join("ca.pem");
    assert!(message.contains("no CA certificate in it"), "{message}");
    assert!(message.contains(ca.to_str().expect("utf-8")), "{message}");
}

/// Writes `text` as a cluster file and runs `psmr acceptor` on it.
fn acceptor_on(text: &str) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, text).expect("write");
    let out = run_psmr(
        &[
            "acceptor",
            "--config",
            path.to_str().expect("utf-8"),
            "--id",
            "1",
        ],
        QUICK,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    stderr(&out)
}

/// An acceptor without its storage would have forgotten its promises: it
/// refuses to start unless told it is a new member.
#[test]
fn an_acceptor_refuses_a_missing_data_directory_without_init() {
    let good = ClusterConfig::local(7100, psmr_core::EngineKind::Psmr, 2).to_toml();
    let message = acceptor_on(&good);
    assert!(
        message.contains("missing or empty") && message.contains("--init"),
        "{message}"
    );
}

#[test]
fn bad_cluster_files_are_refused_naming_the_problem() {
    let good = ClusterConfig::local(7100, psmr_core::EngineKind::Psmr, 2).to_toml();
    // Four acceptors: the rings derived from them have an even size.
    let fourth = "[[acceptor]]\nid = 4\naddress = \"127.0.0.1:7103\"\n";
    let even = format!("{fourth}{good}");
    let message = acceptor_on(&even);
    assert!(
        message.contains("4 acceptors") && message.contains("odd"),
        "{message}"
    );
    // Two acceptors on one address.
    let twice = good.replacen("127.0.0.1:7101", "127.0.0.1:7100", 1);
    let message = acceptor_on(&twice);
    assert!(message.contains("127.0.0.1:7100"), "{message}");
    assert!(message.contains("address"), "{message}");
    // Port 0, and a host that does not resolve.
    let message = acceptor_on(&good.replacen("127.0.0.1:7101", "127.0.0.1:0", 1));
    assert!(message.contains("acceptor[1].address: port 0"), "{message}");
    let message = acceptor_on(&good.replacen("127.0.0.1:7101", "no-such-host.invalid:7101", 1));
    assert!(
        message.contains("cannot resolve \"no-such-host.invalid:7101\""),
        "{message}"
    );
    let message = acceptor_on(&good.replacen("127.0.0.1:7101", "localhost", 1));
    assert!(message.contains("has no port"), "{message}");
    // A host name that resolves is taken: what stops this acceptor is its data directory.
    let message = acceptor_on(&good.replacen("127.0.0.1:7101", "localhost:7101", 1));
    assert!(message.contains("--init"), "{message}");
    // A field that does not exist.
    let message = acceptor_on(&format!("{good}\nbogus = 1\n"));
    assert!(message.contains("bogus"), "{message}");
    // No file at all.
    let out = run_psmr(
        &[
            "replica",
            "--config",
            "/nonexistent/cluster.toml",
            "--id",
            "101",
        ],
        QUICK,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("/nonexistent/cluster.toml"),
        "{}",
        stderr(&out)
    );
}

/// A raw connection to `to`, presenting `identity` (a node id) or nothing.
async fn raw(
    cluster: &TestCluster,
    to: NodeId,
    identity: Option<NodeId>,
) -> Option<quinn::Connection> {
    let paths = psmr_multicast::net::CertPaths {
        dir: cluster.cluster.tls.dir.clone(),
    };
    let identity = identity.map(|id| {
        let (cert, key) = paths.node(id);
        psmr_multicast::net::Identity::load(&cert, &key).expect("an identity")
    });
    let tls = Tls::load(&paths.ca(), identity).expect("the CA");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address"))
        .expect("a client endpoint");
    endpoint.set_default_client_config(tls.client_config().expect("a client config"));
    let addr = cluster.cluster.addresses()[&to];
    endpoint
        .connect(addr, &node_name(to))
        .expect("connect starts")
        .await
        .ok()
}

async fn send_stream(connection: &quinn::Connection, bytes: &[u8]) {
    if let Ok(mut stream) = connection.open_uni().await {
        let _ = stream.write_all(bytes).await;
        let _ = stream.finish();
    }
}

fn hello(node: Option<NodeId>, purpose: Purpose) -> Vec<u8> {
    Hello::new(node, purpose).frame()
}

fn message(m: &Message) -> Vec<u8> {
    codec::frame(m, DEFAULT_MAX_FRAME).expect("a frame")
}

/// A decision nobody made, for ring 0, instance 0.
fn forged_decide() -> Message {
    let command = Command {
        id: CommandId {
            proposer: ProposerId(666),
            seq: 0,
        },
        low_water: 0,
        payload: bytes::Bytes::from_static(b"forged"),
    };
    Message::Decide(Decide {
        ring: RingId(0),
        instance: 0,
        ballot: Ballot {
            round: u64::MAX,
            node: NodeId(1),
        },
        value: Value::batch(vec![command]),
        relay: true,
        hops: 0,
    })
}

/// Everything a hostile or broken peer might send to `to`.
async fn attack(cluster: &TestCluster, to: NodeId) {
    let anonymous = raw(cluster, to, None).await.expect("clients may connect");
    // Garbage; a 1 GiB length prefix; another wire version.
    send_stream(&anonymous, b"\xde\xad\xbe\xef garbage").await;
    let mut huge = hello(None, Purpose::Propose);
    huge.extend_from_slice(&(1u32 << 30).to_le_bytes());
    send_stream(&anonymous, &huge).await;
    let mut other = Hello::new(None, Purpose::Propose);
    other.version = 99;
    send_stream(&anonymous, &other.frame()).await;
    // A client posing as a node; a client speaking the protocol.
    send_stream(&anonymous, &hello(Some(NodeId(2)), Purpose::Protocol)).await;
    let mut protocol = hello(None, Purpose::Protocol);
    protocol.extend_from_slice(&message(&forged_decide()));
    send_stream(&anonymous, &protocol).await;
    // Protocol messages and proposals for rings the client has no right to,
    // on the stream a client may use.
    let mut forged = hello(None, Purpose::Propose);
    forged.extend_from_slice(&message(&forged_decide()));
    forged.extend_from_slice(&message(&Message::Propose(Propose {
        ring: RingId(99),
        commands: Vec::new(),
        forwarded: true,
    })));
    forged.extend_from_slice(&frame_of(&[1, 255, 255, 255]));
    send_stream(&anonymous, &forged).await;
    // A wrong client hello at a replica.
    let mut bad_hello = hello(None, Purpose::ClientHello);
    bad_hello.extend_from_slice(&frame_of(&[0xff; 12]));
    send_stream(&anonymous, &bad_hello).await;
    anonymous.close(0u32.into(), b"done");
}

#[test]
fn a_serving_cluster_shrugs_off_bad_input() {
    let mut cluster = TestCluster::start(&Spec {
        preload: 1_000,
        ..Spec::default()
    });
    let rt = common::runtime();
    rt.block_on(async {
        let tree = cluster.client().await;
        assert_eq!(tree.insert(1, v(10)).await.unwrap(), None);
        for node in cluster.cluster.nodes() {
            attack(&cluster, node).await;
        }
        // Another cluster's certificates: the handshake fails.
        let foreign = cluster.dir().join("foreign");
        psmr_multicast::net::generate_dev_certs(&foreign, &cluster.cluster.nodes(), false)
            .expect("certificates");
        let mut stranger = cluster.cluster.clone();
        stranger.tls.dir = foreign;
        let options = psmr_client::ClientOptions {
            connect_timeout: Duration::from_secs(1),
            certificate: psmr_client::Certificate::Cluster,
            ..psmr_client::ClientOptions::default()
        };
        assert!(
            psmr_btree::BTreeClient::connect(&stranger, options)
                .await
                .is_err(),
            "a client of another CA reached the cluster"
        );
        // The cluster still serves, with the right answers.
        assert_eq!(tree.insert(3, v(30)).await.unwrap(), None);
        assert_eq!(tree.get(1).await.unwrap(), Some(v(10)));
        assert_eq!(tree.get(3).await.unwrap(), Some(v(30)));
        let scan = tree.scan(0, 4).await.unwrap().entries;
        assert_eq!(numbers(&scan), vec![(0, 0), (1, 10), (2, 1), (3, 30)]);
    });
    cluster.assert_running();
}

/// A client with its own certificate cannot act under the id of a client
/// with another: the replicas refuse its hello for that id (which would have
/// taken over the victim's replies) and the acceptors its proposals under
/// it; a client without a certificate is refused at once. The victim is
/// served throughout, fast.
#[test]
fn a_client_cannot_take_over_another_certificates_id() {
    use psmr_client::{Certificate, ClientOptions};
    use psmr_multicast::net::{Identity, NetConfig, Network, issue_client_cert};
    let mut cluster = TestCluster::start(&Spec {
        preload: 1_000,
        ..Spec::default()
    });
    let certs = cluster.cluster.tls.dir.clone();
    issue_client_cert(&certs, "mallory", false).expect("a certificate for mallory");
    let rt = common::runtime();
    rt.block_on(async {
        let victim = cluster.client().await;
        assert_eq!(victim.insert(1, v(10)).await.unwrap(), None);
        let wire = victim.inner().wire_id();
        // Mallory, with a certificate of the cluster's CA, says hello as
        // the victim to every replica and proposes under its id.
        let identity = Identity::load(&certs.join("mallory.pem"), &certs.join("mallory.key"))
            .expect("mallory's identity");
        let tls = Tls::load(&certs.join("ca.pem"), Some(identity)).expect("the CA");
        let (mallory, _inbox) =
            Network::start(NetConfig::new(None, None, cluster.cluster.addresses(), tls))
                .expect("mallory's network");
        let hello = postcard::to_allocvec(&wire.0).expect("a hello");
        for replica in &cluster.cluster.replicas {
            mallory.send(NodeId(replica.id), Purpose::ClientHello, frame_of(&hello));
        }
        let forged = Message::Propose(Propose {
            ring: RingId(0),
            commands: vec![Command {
                id: CommandId {
                    proposer: ProposerId(wire.0),
                    seq: 1_000_000,
                },
                low_water: 0,
                payload: bytes::Bytes::from_static(b"forged"),
            }],
            forwarded: false,
        });
        let frame = codec::frame(&forged, DEFAULT_MAX_FRAME).expect("a frame");
        for acceptor in &cluster.cluster.acceptors {
            mallory.send(NodeId(acceptor.id), Purpose::Propose, frame.clone());
        }
        for replica in &cluster.cluster.replicas {
            cluster
                .wait_for_log(replica.id, "id of another certificate; refused", QUICK)
                .await;
        }
        // The victim still gets its own replies, none of them late.
        let started = std::time::Instant::now();
        for i in 0..200 {
            victim
                .insert(2 + 2 * i, v(i))
                .await
                .expect("the victim is served");
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the victim's replies went elsewhere: {:?}",
            started.elapsed()
        );
        mallory.close();
        // No certificate: refused by the handshake, well before the deadline.
        let options = ClientOptions {
            certificate: Certificate::None,
            connect_timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        };
        let started = std::time::Instant::now();
        let refused = psmr_btree::BTreeClient::connect(&cluster.cluster, options).await;
        assert!(
            refused.is_err(),
            "a client without a certificate was admitted"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused only after {:?}",
            started.elapsed()
        );
    });
    cluster.assert_running();
}
