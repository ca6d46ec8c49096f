//! The services a replica process can run, chosen by the cluster file.

use std::future::Future;
use std::sync::Arc;

use psmr_btree::{BTreeService, KvStore, value_of};
use psmr_core::cluster::{ClusterConfig, ServiceKind};
use psmr_core::proto::NodeId;
use psmr_replica::runtime::{RuntimeError, run_replica as run};
use psmr_services::{LinkedList, ListService, NullService};
use tracing::info;

/// Runs replica `id` with the service of the cluster file, preloaded.
pub(crate) async fn run_replica(
    cluster: &ClusterConfig,
    id: NodeId,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let s = &cluster.service;
    match s.kind {
        ServiceKind::Btree => {
            let preload = || {
                let start = std::time::Instant::now();
                let entries = (0..s.preload).map(|i| (2 * i, value_of(i, s.value_size)));
                let tree = KvStore::bulk_load(s.fanout, 0.7, entries);
                info!(keys = s.preload, elapsed = ?start.elapsed(), "B+-tree preloaded");
                tree
            };
            let service = Arc::new(BTreeService::new(s.key_space()));
            run(cluster, id, service, preload, shutdown).await
        }
        ServiceKind::Null => run(cluster, id, Arc::new(NullService), || (), shutdown).await,
        ServiceKind::List => {
            let list = || LinkedList::from_values(0..s.preload);
            run(cluster, id, Arc::new(ListService), list, shutdown).await
        }
    }
}
