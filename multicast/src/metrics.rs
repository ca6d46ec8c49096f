//! Prometheus metrics of a process (docs/operating.md, "Metrics").
//!
//! ```text
//!  process loop ──every second──> publish_*(counters) ──> metrics recorder
//!  GET http://<metrics address>/metrics ──> metrics-exporter-prometheus renders it
//! ```
//!
//! The recorder is the `metrics` crate's, one per process: [`serve`]
//! installs it with its HTTP listener (the `psmr acceptor` and `psmr
//! replica` commands do, at the node's `metrics` address). Without it, every
//! `publish_*` call and histogram record is a no-op, which is what tests
//! that run nodes inside one process get. The protocol cores stay free of
//! it: they keep plain counters (`NodeMetrics`, `LearnerMetrics`) that
//! the process loop copies here, so a counter and its metric cannot differ.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use psmr_core::proto::{AcceptorNode, Learner};
use thiserror::Error;

use crate::net::Network;

/// Histogram of the durable log's `fdatasync` calls, in seconds.
pub const FSYNC_SECONDS: &str = "psmr_fsync_seconds";

/// Buckets of every `_seconds` histogram: 10 µs to 1 s.
const SECONDS_BUCKETS: [f64; 11] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1, 1.0,
];

/// Why metrics could not be served.
#[derive(Debug, Error)]
#[error("cannot serve metrics on {addr} (the node's `metrics` address): {reason}")]
pub struct MetricsError {
    /// The address.
    pub addr: SocketAddr,
    /// What the exporter reported.
    pub reason: String,
}

/// Installs this process's recorder and serves it over HTTP at `addr`
/// (`/metrics`, any path works). Fails at once if `addr` cannot be bound.
/// Call it once per process, inside its tokio runtime.
pub fn serve(addr: SocketAddr) -> Result<(), MetricsError> {
    let failed = |e: metrics_exporter_prometheus::BuildError| MetricsError {
        addr,
        reason: e.to_string(),
    };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &SECONDS_BUCKETS,
        )
        .map_err(failed)?
        .install()
        .map_err(failed)
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The network's counters.
pub fn publish_net(net: &Network) {
    let stats = net.stats();
    if let Some(drops) = net.kernel_drops() {
        counter!("psmr_udp_kernel_drops_total").absolute(drops);
    }
    counter!("psmr_connections_accepted_total").absolute(load(&stats.connections));
    counter!("psmr_bad_frames_total", "layer" => "stream").absolute(load(&stats.bad_frames));
    counter!("psmr_bad_identity_total").absolute(load(&stats.bad_identity));
    counter!("psmr_frames_dropped_total").absolute(load(&stats.dropped));
    counter!("psmr_connect_failures_total").absolute(load(&stats.connect_failures));
    counter!("psmr_unknown_destination_total").absolute(load(&stats.unknown_destination));
    counter!("psmr_reconnections_total").absolute(load(&stats.stalled));
    counter!("psmr_bad_datagrams_total").absolute(load(&stats.bad_datagrams));
}

/// An acceptor's counters and where each of its rings stands.
pub fn publish_acceptor(node: &AcceptorNode) {
    let m = node.metrics();
    counter!("psmr_decided_total").absolute(m.decided);
    counter!("psmr_commands_received_total").absolute(m.commands_received);
    counter!("psmr_commands_dropped_total").absolute(m.commands_dropped);
    counter!("psmr_commands_forwarded_total").absolute(m.commands_forwarded);
    counter!("psmr_elections_total").absolute(m.elections);
    counter!("psmr_step_downs_total").absolute(m.step_downs);
    counter!("psmr_unknown_peer_total").absolute(m.unknown_peer);
    counter!("psmr_bad_frames_total", "layer" => "protocol").absolute(m.bad_frames);
    counter!("psmr_refused_proposals_total").absolute(m.refused_proposals);
    gauge!("psmr_amnesiac_rings").set(node.amnesiac_rings() as f64);
    for ring in node.rings() {
        let Some(p) = node.positions(ring) else {
            continue;
        };
        let label = ring.0.to_string();
        // The instances decided are those below the frontier.
        gauge!("psmr_ring_decided", "ring" => label.clone()).set(p.frontier as f64);
        gauge!("psmr_ring_trimmed_below", "ring" => label.clone()).set(p.trimmed_below as f64);
        // The highest ballot this node knows of names the coordinator.
        let highest = p.seen.max(p.promised).max(p.term.unwrap_or(p.seen));
        gauge!("psmr_ring_term", "ring" => label.clone()).set(highest.round as f64);
        gauge!("psmr_ring_coordinator", "ring" => label.clone()).set(f64::from(highest.node.0));
        gauge!("psmr_ring_leading", "ring" => label.clone()).set(match p.term {
            Some(_) if node.is_coordinator(ring) => 1.0,
            _ => 0.0,
        });
        let window = p
            .next_proposal
            .map_or(0, |(next, _)| next.saturating_sub(p.frontier));
        gauge!("psmr_ring_window_in_use", "ring" => label.clone()).set(window as f64);
        let proposed = m.rings.get(&ring).copied().unwrap_or_default();
        counter!("psmr_ring_batches_total", "ring" => label.clone()).absolute(proposed.batches);
        counter!("psmr_ring_batch_commands_total", "ring" => label.clone())
            .absolute(proposed.commands);
        counter!("psmr_ring_skipped_total", "ring" => label).absolute(proposed.skipped);
    }
}

/// A learner's counters (a replica's multicast side) and, per ring, its
/// position and the newest decision it heard of.
pub fn publish_learner(learner: &Learner) {
    for (ring, next, heard) in learner.progress() {
        let label = ring.0.to_string();
        gauge!("psmr_learner_next", "ring" => label.clone()).set(next as f64);
        gauge!("psmr_learner_newest_heard", "ring" => label).set(heard as f64);
    }
    let m = learner.metrics();
    counter!("psmr_delivered_instances_total").absolute(m.delivered_instances);
    counter!("psmr_delivered_commands_total").absolute(m.delivered_commands);
    counter!("psmr_delivered_skips_total").absolute(m.delivered_skips);
    counter!("psmr_duplicate_commands_total").absolute(m.duplicate_commands);
    counter!("psmr_recovery_requests_total").absolute(m.recovery_requests);
    counter!("psmr_unknown_peer_total").absolute(m.unknown_peer);
    counter!("psmr_bad_frames_total", "layer" => "protocol").absolute(m.bad_frames);
}
