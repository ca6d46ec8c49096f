//! The SDK without a typed client: a generic [`psmr_client::Client`] for any
//! service that implements [`psmr_core::ServiceClient`], here the linked
//! list that ships with psmr.
//!
//! ```text
//! cargo run --release -p psmr-experiments --bin psmr -- local --service list --preload 100
//! cargo run --release -p psmr-client --example list -- psmr-local/cluster.toml
//! ```

// An example program reports on standard output.
#![allow(clippy::print_stdout)]

use std::error::Error;

use psmr_client::{Client, ClientOptions};
use psmr_multicast::process::load_cluster;
use psmr_services::{ListOp, ListService};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "psmr-local/cluster.toml".to_string());
    let cluster = load_cluster(path.as_ref())?;
    let list = Client::connect(&cluster, ListService, ClientOptions::default()).await?;
    // Responses are the service's encoded bytes; the list's are postcard.
    let added: bool = postcard::from_bytes(&list.call(ListOp::Add(1_000)).await?)?;
    let present: bool = postcard::from_bytes(&list.call(ListOp::Contains(1_000)).await?)?;
    let removed: bool = postcard::from_bytes(&list.call(ListOp::Remove(1_000)).await?)?;
    println!("add 1000: {added}; contains 1000: {present}; remove 1000: {removed}");
    Ok(())
}
