//! psmr-client: the client SDK (docs/ARCHITECTURE.md, "Client").
//!
//! ```text
//!  call(op) ──> request id, mode and group (smr: g_all; psmr: CC-G; opt-psmr: OC-G;
//!               g_all for every command while most of the recent ones need it)
//!           ──> Propose to the ring's acceptors ──(multicast)──> replicas
//!  answered by one replica (by all: a call alone in flight, or `every_replica_answers`)
//!  first reply wins:  Done ──> the response
//!                     Retry ──> once: the same request, conservatively (CC-G)
//!                     no reply in `resend_after` ──> the same multicast command again
//!                     no reply in `repropose_after` ──> the same request as a new
//!                         command: replicas answer it from their table of executed
//!                         requests (a reply lost with a crashed replica comes back);
//!                         every replica answers it, and the next replica answers
//!                         the client's later requests
//!                     nothing by the deadline ──> ClientError::Timeout
//! ```
//!
//! A [`Client`] is cheap to clone and serves any number of concurrent
//! calls. Services describe themselves to clients through [`ServiceClient`];
//! the B+-tree has a typed client on top (`psmr_btree::BTreeClient`).
//!
//! ```no_run
//! use psmr_client::{Client, ClientOptions};
//! use psmr_core::cluster::ClusterConfig;
//! use psmr_services::{ListOp, ListService};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = psmr_multicast::process::load_cluster("cluster.toml".as_ref())?;
//! let client = Client::connect(&cluster, ListService, ClientOptions::default()).await?;
//! let response = client.call(ListOp::Add(42)).await?;
//! let added: bool = postcard::from_bytes(&response)?;
//! println!("added: {added}");
//! # Ok(())
//! # }
//! ```

mod driver;
pub mod history;
pub mod linearizability;
mod optimism;
mod sequential;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use psmr_core::cluster::ClusterConfig;
use psmr_core::proto::NodeId;
use psmr_core::{ClientId, MappingError, Refusal};
use psmr_multicast::net::{
    CLIENT, CertPaths, Identity, NetConfig, NetError, Network, Tls, TlsError,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// What a client needs to know of a service (defined in `psmr-core`, beside
/// `Service`, so that a service crate implements it without linking the SDK).
pub use psmr_core::ServiceClient;

/// How a client behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientOptions {
    /// Sends a request's multicast command again when no reply came after
    /// this long (the multicast delivers it at most once). Default 300 ms.
    pub resend_after: Duration,
    /// Proposes a request again as a new multicast command (same request id)
    /// when no reply came after this long: the replicas answer it from their
    /// table of executed requests, so a reply lost on the way (a replica that
    /// crashed after executing, a reply stream not yet open) is recovered.
    /// Default 1 s.
    pub repropose_after: Duration,
    /// Asks every replica to answer every request, instead of one replica
    /// (chosen by the client id among those it reaches, replaced by the next
    /// when it leaves a request unanswered for `repropose_after`) whenever the
    /// client has other calls in flight (a call alone is always answered by
    /// every replica: the first reply comes soonest). Every
    /// replica answering masks a slow or crashed replica at once, at the price
    /// of one reply per replica: more packets, and more CPU at the replicas
    /// and the client. Default false.
    pub every_replica_answers: bool,
    /// Replaces the answering replica when it has sent no reply for this
    /// long while requests wait on its answer (a replica down, paused or cut
    /// off): those requests go out again as new commands that every replica
    /// answers, and the next replica answers later ones. Each replacement
    /// without a reply in between doubles the wait, up to `repropose_after`,
    /// so a cluster that stalls as a whole is not flooded with proposals.
    /// Default 150 ms: far above a reply's latency under load, far below a
    /// second of silence.
    pub failover_after: Duration,
    /// Gives up on a request after this long. Default 10 s.
    pub deadline: Duration,
    /// How long [`Client::connect`] waits for a replica. Default 5 s.
    pub connect_timeout: Duration,
    /// The client's identity; random by default. It chooses the replica that
    /// answers first (clients spread over the replicas by id). On the wire
    /// every connection mixes a fresh random incarnation into it, so that a
    /// client restarted with the same id is never taken for its earlier
    /// self: its request ids start at 0 again, and the replicas' tables of
    /// executed requests would answer them with the old responses, and the
    /// acceptors' learners would drop them as already delivered.
    pub id: Option<u64>,
    /// The certificate the client presents. Its id on the wire carries the
    /// certificate's tag, so that no client with another certificate can
    /// act under it. Default [`Certificate::Cluster`].
    pub certificate: Certificate,
    /// The sequential fallback (psmr, opt-psmr): while at least this share
    /// of the client's last 1,024 commands are mapped to `g_all`, every
    /// command goes to `g_all`, and the replicas run them in one synchronized
    /// sequence as smr would, on one ring; the fallback ends when the share
    /// falls 0.1 below this. Where most commands stop every thread anyway,
    /// the few left for the threads cost more (thread rings that decide small
    /// instances at `g_all`'s pace, a merge of every ring) than their
    /// parallelism gains. Sending a command to `g_all` is always safe.
    /// 1 turns it off: every command goes where its mapping says (the
    /// papers' P-SMR). Default 0.4: below it the mapping's parallelism pays
    /// for its rings when commands cost more than ordering them, above it the
    /// fallback is ahead (docs/benchmarks.md, "Results").
    ///
    /// While the replicas report commands that execute in under 10 µs
    /// ([`ClientStats::execution_ns`]: cheaper than ordering them, so threads
    /// cannot raise throughput), the fallback starts from 0.05 instead (or
    /// from this share if lower) and ends below half of that, since such
    /// commands gain nothing from the threads.
    pub sequential_above: f64,
    /// opt-psmr: while at least this share of the client's recent optimistic
    /// guesses failed the replicas' safety check (each failure costs a
    /// second ordering round), commands go conservatively, as under psmr,
    /// with one in eight still guessing to learn when guesses pass again;
    /// optimism returns 0.05 below the share. 1 turns it off: always guess
    /// (the paper's opt-PSMR). Default 0.15.
    pub optimism_below: f64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            resend_after: Duration::from_millis(300),
            repropose_after: Duration::from_secs(1),
            every_replica_answers: false,
            failover_after: Duration::from_millis(150),
            deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            id: None,
            certificate: Certificate::Cluster,
            sequential_above: 0.4,
            optimism_below: 0.15,
        }
    }
}

/// Which certificate a client presents to the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Certificate {
    /// `client.pem` of the certificate directory if the cluster requires
    /// client certificates or the file is there; none otherwise.
    #[default]
    Cluster,
    /// `<name>.pem` of the certificate directory (`psmr certs --client NAME`).
    Named(String),
    /// None: only a cluster with `require_client_certificates = false`
    /// admits the client, and such clients are not told apart.
    None,
}

/// Why a call or a connection failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] NetError),
    /// No replica answered the connection attempt.
    #[error("no replica reachable within {timeout:?} ({errors})")]
    Unreachable {
        /// How long the client tried.
        timeout: Duration,
        /// What each replica's last attempt met.
        errors: String,
    },
    /// No reply by the deadline; the request may or may not have run.
    #[error("no reply within {deadline:?}; the outcome is unknown")]
    Timeout {
        /// The deadline.
        deadline: Duration,
    },
    /// A replica refused the request.
    #[error("refused by the replicas: {0}")]
    Refused(Refusal),
    /// The client was shut down.
    #[error("the client is closed")]
    Closed,
    /// The service's group mapping broke its contract for this operation
    /// (nothing was sent).
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// An option is out of its range.
    #[error("ClientOptions::{field}: {reason}")]
    Option {
        /// The option.
        field: &'static str,
        /// What it must be.
        reason: &'static str,
    },
}

/// A call's response and how it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The encoded response.
    pub response: Bytes,
    /// The optimistic guess failed its safety check (`Retry`): the request
    /// was re-proposed conservatively before this answer came.
    pub retried: bool,
}

/// Counters of a client.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Calls made.
    pub calls: AtomicU64,
    /// `Retry` answers (failed safety checks) re-proposed conservatively.
    pub retries: AtomicU64,
    /// Requests that reached their deadline.
    pub timeouts: AtomicU64,
    /// Requests proposed again as new commands after `repropose_after` of silence.
    pub reproposals: AtomicU64,
    /// Times the replica asked to answer was replaced by the next one.
    pub answerer_changes: AtomicU64,
    /// Requests proposed again, answered by every replica, when their
    /// answerer fell silent for `failover_after` (not counted in `reproposals`).
    pub failovers: AtomicU64,
    /// Commands sent to `g_all` by the sequential fallback that their
    /// mapping sent to one thread ([`ClientOptions::sequential_above`]).
    pub sequential: AtomicU64,
    /// opt-psmr: commands sent conservatively, not guessing, while the
    /// client's guesses failed often ([`ClientOptions::optimism_below`]).
    pub cautious: AtomicU64,
    /// The answering replica's latest execution time per command, in
    /// nanoseconds, as its replies report it (0 before the first).
    pub execution_ns: AtomicU64,
}

pub(crate) struct Call<Op> {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<Answer, ClientError>>,
}

/// A connection to a psmr cluster running the service `M`.
pub struct Client<M: ServiceClient>
where
    M::Op: Send + 'static,
{
    calls: mpsc::Sender<Call<M::Op>>,
    id: ClientId,
    wire: ClientId,
    stats: Arc<ClientStats>,
}

impl<M: ServiceClient> Clone for Client<M>
where
    M::Op: Send + 'static,
{
    fn clone(&self) -> Self {
        Client {
            calls: self.calls.clone(),
            id: self.id,
            wire: self.wire,
            stats: self.stats.clone(),
        }
    }
}

impl<M: ServiceClient> Client<M>
where
    M::Op: Send + 'static,
{
    /// Connects to the cluster described by `cluster`; returns once a
    /// replica is reachable.
    pub async fn connect(
        cluster: &ClusterConfig,
        service: M,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        for (field, share) in [
            ("sequential_above", options.sequential_above),
            ("optimism_below", options.optimism_below),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(ClientError::Option {
                    field,
                    reason: "must be between 0 and 1",
                });
            }
        }
        let id = ClientId(options.id.unwrap_or_else(rand::random));
        let paths = CertPaths {
            dir: cluster.tls.dir.clone(),
        };
        let name = match &options.certificate {
            Certificate::Cluster
                if cluster.tls.require_client_certificates || paths.client().0.exists() =>
            {
                Some(CLIENT)
            }
            Certificate::Named(name) => Some(name.as_str()),
            Certificate::Cluster | Certificate::None => None,
        };
        let identity = match name {
            Some(name) => {
                let (cert, key) = paths.named_client(name);
                Some(Identity::load(&cert, &key)?)
            }
            None => None,
        };
        let tls = Tls::load(&paths.ca(), identity)?;
        let tag = tls.client_tag();
        let (net, inbox) = Network::start(NetConfig::new(None, None, cluster.addresses(), tls))?;
        let replicas: Vec<NodeId> = cluster.replicas.iter().map(|r| NodeId(r.id)).collect();
        // Clients spread over the replicas by id; the first one reached answers.
        let first = (id.0 % replicas.len().max(1) as u64) as usize;
        let answerer = reach_a_replica(&net, &replicas, first, options.connect_timeout).await?;
        let stats = Arc::new(ClientStats::default());
        let (calls, rx) = mpsc::channel(4096);
        let wire = ClientId::tagged(tag, incarnate(id.0, rand::random()));
        let session = session::Session::new(
            std::time::Instant::now(),
            cluster,
            service,
            options,
            wire,
            stats.clone(),
            answerer,
        );
        let driver = driver::Driver::new(session, wire, net);
        tokio::spawn(driver.run(rx, inbox));
        Ok(Client {
            calls,
            id,
            wire,
            stats,
        })
    }

    /// The id this connection has on the wire: the client's id with this
    /// connection's incarnation mixed in (see [`ClientOptions::id`]).
    pub fn wire_id(&self) -> ClientId {
        self.wire
    }

    /// Runs `op` on the replicated service; returns its encoded response.
    pub async fn call(&self, op: M::Op) -> Result<Bytes, ClientError> {
        Ok(self.call_answer(op).await?.response)
    }

    /// Like [`Client::call`], and also tells how the answer came: whether
    /// the optimistic guess failed its safety check and the request was
    /// re-proposed conservatively (what experiments measure as opt-psmr's
    /// failed commands).
    pub async fn call_answer(&self, op: M::Op) -> Result<Answer, ClientError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let (reply, response) = oneshot::channel();
        self.calls
            .send(Call { op, reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        response.await.map_err(|_| ClientError::Closed)?
    }

    /// This client's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Counters.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }
}

/// How long one connection attempt to one replica may take before the next
/// replica is tried (a stopped or cut-off replica never answers).
const ATTEMPT: Duration = Duration::from_secs(1);

/// Waits until one replica accepts a connection, trying them in order from
/// index `start`, each for at most [`ATTEMPT`], round after round until
/// `timeout`; returns the index of the one reached. A refusal on
/// certificates ends it at once; otherwise the error names what each
/// replica's last attempt met.
async fn reach_a_replica(
    net: &Network,
    replicas: &[NodeId],
    start: usize,
    timeout: Duration,
) -> Result<usize, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Vec<Option<String>> = vec![None; replicas.len()];
    while tokio::time::Instant::now() < deadline {
        for at in (start..start + replicas.len()).map(|i| i % replicas.len()) {
            let until = deadline.min(tokio::time::Instant::now() + ATTEMPT);
            match tokio::time::timeout_at(until, net.connect(replicas[at])).await {
                Ok(Ok(())) => return Ok(at),
                Ok(Err(e @ NetError::Refused { .. })) => return Err(ClientError::Net(e)),
                Ok(Err(e)) => last[at] = Some(e.to_string()),
                Err(_) => last[at] = Some(format!("no answer within {ATTEMPT:?}")),
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100).min(deadline - tokio::time::Instant::now()))
            .await;
    }
    let errors = replicas
        .iter()
        .zip(&last)
        .map(|(r, e)| format!("{r}: {}", e.as_deref().unwrap_or("not tried")))
        .collect::<Vec<_>>()
        .join("; ");
    Err(ClientError::Unreachable { timeout, errors })
}

/// The wire id of incarnation `incarnation` of client `id`: a bijective mix
/// (splitmix64's finalizer) of the two, so that two incarnations of one id,
/// or two ids, share a wire id only by a 2^-40 chance once the top bits
/// are taken by the certificate tag ([`ClientId::tagged`]).
fn incarnate(id: u64, incarnation: u64) -> u64 {
    let mut z = id ^ incarnation.rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use psmr_core::EngineKind;
    use psmr_services::NullService;

    #[tokio::test]
    async fn a_fallback_threshold_out_of_range_is_refused_before_connecting() {
        let cluster = ClusterConfig::local(7990, EngineKind::Psmr, 2);
        type WithShare = fn(f64) -> ClientOptions;
        let with: [(&str, WithShare); 2] = [
            ("sequential_above", |bad| ClientOptions {
                sequential_above: bad,
                ..ClientOptions::default()
            }),
            ("optimism_below", |bad| ClientOptions {
                optimism_below: bad,
                ..ClientOptions::default()
            }),
        ];
        for (field, options) in with {
            for bad in [-0.1, 1.5, f64::NAN] {
                let e = Client::connect(&cluster, NullService, options(bad))
                    .await
                    .err();
                assert_eq!(
                    e.map(|e| e.to_string()),
                    Some(format!("ClientOptions::{field}: must be between 0 and 1")),
                    "{bad}"
                );
            }
        }
    }
}
