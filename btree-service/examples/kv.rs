//! A program to copy: talk to a replicated B+-tree.
//!
//! ```text
//! cargo run --release -p psmr-experiments --bin psmr -- local    # in one terminal
//! cargo run --release -p psmr-client --example kv -- psmr-local/cluster.toml
//! ```
//!
//! It writes a few keys, reads them back, runs many calls at once (the
//! client pipelines them), and scans.

// An example program reports on standard output.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::time::Instant;

use psmr_btree::BTreeClient;
use psmr_client::ClientOptions;
use psmr_multicast::process::load_cluster;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "psmr-local/cluster.toml".to_string());
    let cluster = load_cluster(path.as_ref())?;
    let tree = BTreeClient::connect(&cluster, ClientOptions::default()).await?;

    // One call at a time.
    let previous = tree.insert(1_000_001, "forty-two").await?;
    println!("insert 1000001 \"forty-two\": previous value {previous:?}");
    println!("get 1000001: {:?}", tree.get(1_000_001).await?);

    // Many calls in flight: clone the client into tasks.
    let start = Instant::now();
    let tasks: Vec<_> = (0..1_000u64)
        .map(|i| {
            let tree = tree.clone();
            tokio::spawn(async move { tree.put(2 * i, (i * 10).to_le_bytes().to_vec()).await })
        })
        .collect();
    let mut updated = 0;
    for task in tasks {
        if task.await??.is_some() {
            updated += 1;
        }
    }
    println!(
        "1000 concurrent puts ({updated} keys existed) in {:?}",
        start.elapsed()
    );

    let scan = tree.scan(0, 5).await?;
    println!("scan from 0: {:?}", scan.entries);
    println!(
        "optimistic guesses retried conservatively: {}",
        tree.inner()
            .stats()
            .retries
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
