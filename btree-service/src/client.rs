//! A typed client of the replicated B+-tree, on the SDK (feature `client`).
//!
//! ```no_run
//! use psmr_btree::BTreeClient;
//! use psmr_client::ClientOptions;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = psmr_multicast::process::load_cluster("cluster.toml".as_ref())?;
//! let tree = BTreeClient::connect(&cluster, ClientOptions::default()).await?;
//! tree.insert(7, "seven").await?;
//! assert_eq!(tree.get(7).await?.as_deref(), Some(&b"seven"[..]));
//! let scan = tree.scan(0, 10).await?;
//! println!("{} entries from 0", scan.entries.len());
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;
use psmr_client::linearizability::KvOp;
use psmr_client::{Client, ClientError, ClientOptions};
use psmr_core::cluster::ClusterConfig;
use thiserror::Error;

use crate::op::{Invalid, Op, Response};
use crate::service::BTreeService;
use crate::store::{value_id, value_of};

/// Why a B+-tree call failed.
#[derive(Debug, Error)]
pub enum BTreeError {
    /// The call itself failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The operation was not valid.
    #[error("invalid operation: {0:?}")]
    Invalid(Invalid),
    /// The replica answered something that is not a B+-tree response to this operation.
    #[error("unexpected response to {op:?}")]
    Unexpected {
        /// The operation.
        op: Op,
    },
}

/// The result of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Entries in key order.
    pub entries: Vec<(u64, Bytes)>,
    /// The scan asked for more than the replicas return at once.
    pub capped: bool,
}

/// A client of the replicated B+-tree.
#[derive(Clone)]
pub struct BTreeClient {
    client: Client<BTreeService>,
}

impl BTreeClient {
    /// Connects to the cluster.
    pub async fn connect(
        cluster: &ClusterConfig,
        options: ClientOptions,
    ) -> Result<BTreeClient, ClientError> {
        let service = BTreeService::new(cluster.service.key_space());
        Ok(BTreeClient {
            client: Client::connect(cluster, service, options).await?,
        })
    }

    /// The SDK client underneath.
    pub fn inner(&self) -> &Client<BTreeService> {
        &self.client
    }

    async fn value(&self, op: Op) -> Result<Option<Bytes>, BTreeError> {
        match self.run(&op).await? {
            Response::Value(v) => Ok(v),
            _ => Err(BTreeError::Unexpected { op }),
        }
    }

    /// Runs `op`; an operation the service would refuse is refused here,
    /// before it is sent.
    async fn run(&self, op: &Op) -> Result<Response, BTreeError> {
        if let Some(invalid) = op.invalid() {
            return Err(BTreeError::Invalid(invalid));
        }
        let bytes = self.client.call(op.clone()).await?;
        let unexpected = || BTreeError::Unexpected { op: op.clone() };
        match Response::decode(&bytes).ok_or_else(unexpected)? {
            Response::Invalid(invalid) => Err(BTreeError::Invalid(invalid)),
            response => Ok(response),
        }
    }

    /// The value of `key`.
    pub async fn get(&self, key: u64) -> Result<Option<Bytes>, BTreeError> {
        self.value(Op::Read(key)).await
    }

    /// Sets the value of an existing key; returns the previous value (`None`: absent, nothing set).
    pub async fn put(
        &self,
        key: u64,
        value: impl Into<Bytes>,
    ) -> Result<Option<Bytes>, BTreeError> {
        self.value(Op::Update(key, value.into())).await
    }

    /// Inserts or replaces; returns the previous value.
    pub async fn insert(
        &self,
        key: u64,
        value: impl Into<Bytes>,
    ) -> Result<Option<Bytes>, BTreeError> {
        self.value(Op::Insert(key, value.into())).await
    }

    /// Removes `key`; returns its value.
    pub async fn delete(&self, key: u64) -> Result<Option<Bytes>, BTreeError> {
        self.value(Op::Delete(key)).await
    }

    /// Runs an operation of the checker's key-value model, whose values are
    /// numbers: a value `v` is written as [`value_of`]`(v, size)` and read
    /// back with [`value_id`] (so `size` must be at least 8 for every value
    /// to survive the round trip).
    pub async fn call_kv(&self, op: KvOp, size: usize) -> Result<Option<u64>, BTreeError> {
        let answer = match op {
            KvOp::Get(k) => self.get(k).await,
            KvOp::Put(k, v) => self.put(k, value_of(v, size)).await,
            KvOp::Insert(k, v) => self.insert(k, value_of(v, size)).await,
            KvOp::Delete(k) => self.delete(k).await,
        };
        Ok(answer?.map(|v| value_id(&v)))
    }

    /// Up to `count` entries from `from` on.
    pub async fn scan(&self, from: u64, count: u32) -> Result<Scan, BTreeError> {
        let op = Op::Scan(from, count);
        match self.run(&op).await? {
            Response::Entries { entries, capped } => Ok(Scan { entries, capped }),
            _ => Err(BTreeError::Unexpected { op }),
        }
    }
}
