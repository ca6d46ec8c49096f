//! Operating a cluster: every process serves Prometheus metrics, and `psmr
//! status` shows every node and says whether the cluster can serve.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Spec, TestCluster, run_psmr};

const QUICK: Duration = Duration::from_secs(30);

/// The metrics page at `addr`.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("the metrics port answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("a request");
    let mut page = String::new();
    stream.read_to_string(&mut page).expect("a page");
    assert!(
        page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200"),
        "{page}"
    );
    page
}

/// The value of the sample `key` (name and labels as printed) in `page`.
fn sample(page: &str, key: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn status(cluster: &TestCluster) -> (Option<i32>, String) {
    let config = cluster.config.to_str().expect("utf-8");
    let out = run_psmr(&["status", "--config", config], QUICK);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn metrics_and_status_show_the_cluster_and_say_when_it_cannot_serve() {
    let mut cluster = TestCluster::start(&Spec::default());
    let rt = common::runtime();
    rt.block_on(async {
        let tree = cluster.client().await;
        for key in 0..100 {
            tree.insert(2 * key + 1, common::v(key))
                .await
                .expect("a write");
        }
    });
    // Each process's page, scraped over HTTP: the acceptors' rings moved,
    // the replicas executed the writes.
    let deadline = Instant::now() + QUICK;
    loop {
        let acceptor = scrape(cluster.cluster.acceptors[0].metrics_address());
        let replica = scrape(cluster.cluster.replicas[0].metrics_address());
        let decided: f64 = (0..=2)
            .filter_map(|r| sample(&acceptor, &format!("psmr_ring_decided{{ring=\"{r}\"}}")))
            .sum();
        let executed: f64 = (0..2)
            .filter_map(|w| {
                sample(
                    &replica,
                    &format!("psmr_replica_executed_total{{worker=\"{w}\"}}"),
                )
            })
            .sum();
        if decided > 0.0 && executed >= 100.0 {
            assert_eq!(sample(&replica, "psmr_replica_serving"), Some(1.0));
            let timed = sample(&replica, "psmr_replica_reply_seconds_count").unwrap_or(0.0);
            assert!(timed >= 1.0, "no reply latency recorded:\n{replica}");
            assert!(acceptor.contains("psmr_bad_datagrams_total"), "{acceptor}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress in the metrics:\n{acceptor}\n{replica}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Garbage at an acceptor's port is dropped and counted, and it serves on.
    let acceptor = &cluster.cluster.acceptors[0];
    let flooder = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for i in 0..200u32 {
        let garbage: Vec<u8> = (0..100 + i).map(|b| (b * 7 + i) as u8).collect();
        let _ = flooder.send_to(&garbage, acceptor.address);
    }
    let deadline = Instant::now() + QUICK;
    loop {
        let page = scrape(acceptor.metrics_address());
        let dropped = sample(&page, "psmr_udp_kernel_drops_total").unwrap_or(0.0)
            + sample(&page, "psmr_bad_datagrams_total").unwrap_or(0.0);
        if dropped >= 200.0 {
            break;
        }
        assert!(Instant::now() < deadline, "garbage not counted:\n{page}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, text) = status(&cluster);
    assert_eq!(code, Some(0), "{text}");
    for node in cluster.nodes() {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("n{node} ")))
            .unwrap_or_else(|| panic!("no line for n{node}: {text}"));
        assert!(line.contains(" up "), "{line}");
    }
    assert!(text.contains("serving") && text.contains("lag"), "{text}");
    assert!(text.contains("(leading)"), "{text}");
    // `put` of a key that does not exist stores nothing, and says so.
    let config = cluster.config.to_str().expect("utf-8");
    let out = run_psmr(&["client", "--config", config, "put", "999999", "1"], QUICK);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("nothing was stored"), "{message}");
    // One acceptor down: still a majority everywhere.
    cluster.kill(3);
    let (code, text) = status(&cluster);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("n3 ") && l.contains("down")),
        "{text}"
    );
    // Two down: no ring has a majority.
    cluster.kill(2);
    let (code, text) = status(&cluster);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("has 1 of 3 acceptors up"), "{text}");
}
