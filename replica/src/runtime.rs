//! The replica process (docs/ARCHITECTURE.md, "Processes").
//!
//! ```text
//!  replica:   QUIC ──decisions──> Learner ──deliveries──> Engine ──replies──> client connections
//!                        client hello ──> a reply stream opened on the client's connection
//! ```
//!
//! It runs the sans-IO learner on one tokio task ([`psmr_multicast::net::drive`]);
//! the engine's workers are OS threads, and a cheap batch for a parked
//! worker runs on this task's thread instead (`engine::worker`). The acceptor
//! process is `psmr_multicast::process`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use psmr_core::cluster::ClusterConfig;
use psmr_core::proto::{Learner, NodeId, RingId, Value};
use psmr_core::{ClientId, ConflictModel, Reply, Request, RequestId};
use psmr_multicast::net::{self, Hooks, Inbound, Network, Purpose};
use psmr_multicast::process::{ProcessError, Reporter, net_config, node_tls};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::checkpointing::Checkpointing;
use crate::engine::{Engine, EngineConfig, EngineError, ReplySink, Start};
use crate::store::{Loaded, Store, StoreError};
use crate::transfer::{self, Fetcher};

/// Why the replica process could not run.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// What every process can fail on: the cluster file, certificates, the
    /// network, the protocol core.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A checkpoint could not be read, or the data directory is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint writer thread could not be started.
    #[error("cannot start the checkpoint writer: {0}")]
    Writer(std::io::Error),
    /// A checkpoint's learner image does not fit the cluster's rings.
    #[error("checkpoint does not fit this cluster: {0}")]
    Image(String),
    /// A checkpoint fetched from another replica could not be loaded.
    #[error(
        "the checkpoint fetched from another replica could not be loaded (see the warnings above)"
    )]
    NoState,
    /// The acceptors no longer have decisions this replica needs.
    #[error(
        "ring {ring}: decisions {from}..{below} were trimmed before this replica got them, its checkpoints (in {dir}) do not reach past them, and no other replica could send one that does; start another replica (or wait until one has checkpointed past {below}), or copy the newest checkpoint-*.psmr file from another replica's data_dir into {dir}, and start this replica again"
    )]
    Trimmed {
        /// The ring.
        ring: RingId,
        /// The first instance missing.
        from: u64,
        /// The first instance the acceptors have.
        below: u64,
        /// This replica's data directory.
        dir: String,
    },
}

/// A client's reply stream, and the connection it is on.
struct Route {
    connection: usize,
    sender: mpsc::Sender<Vec<u8>>,
}

/// Replies routed to the clients that announced themselves.
///
/// Clients greet every replica periodically; a greeting on the connection a
/// client is already answered on changes nothing, one on a new connection
/// (the client reconnected) moves its replies there. A reply whose request
/// asked another replica to answer is not sent.
pub struct ReplyRouter {
    /// This replica's node id.
    replica: u32,
    clients: RwLock<HashMap<ClientId, Route>>,
    /// Whether this replica answers at all: not while it catches up, when
    /// its answers would come late and clients do better asking another.
    serving: AtomicBool,
    /// Replies to clients without a reply stream (they resend and get the
    /// answer from the table of executed requests), or not sent while the
    /// replica caught up.
    pub undeliverable: AtomicU64,
    /// Commands executed, per worker thread (their replies pass here,
    /// sent or not); threads beyond the last share its counter.
    executed: [AtomicU64; WORKER_COUNTERS],
    /// Sampled requests and when their instance reached the engine: the
    /// reply latency histogram records, for each, the time until its reply
    /// is ready (queueing and execution on this replica).
    stamps: Mutex<HashMap<(ClientId, RequestId), Instant>>,
    /// Whether `stamps` holds any (so replies skip the lock when not).
    stamped: AtomicBool,
}

/// One delivered batch in this many has its first request timed.
const SAMPLE_EVERY: u64 = 16;
/// The most requests timed at once (a request whose reply never comes, a
/// marker, leaves its stamp until this clears them).
const MAX_STAMPS: usize = 1024;

/// Worker threads counted apart in [`ReplyRouter`]'s executed commands.
const WORKER_COUNTERS: usize = 64;

impl ReplyRouter {
    /// The router of replica `replica`, not answering until told to
    /// (the replica starts answering once caught up).
    pub fn new(replica: NodeId) -> ReplyRouter {
        ReplyRouter {
            replica: replica.0,
            clients: RwLock::default(),
            serving: AtomicBool::new(false),
            undeliverable: AtomicU64::new(0),
            executed: std::array::from_fn(|_| AtomicU64::new(0)),
            stamps: Mutex::default(),
            stamped: AtomicBool::new(false),
        }
    }

    /// Times the first request of `value`, delivered now (one batch in
    /// [`SAMPLE_EVERY`], by `count`).
    fn sample(&self, count: u64, value: &Value) {
        if !count.is_multiple_of(SAMPLE_EVERY) {
            return;
        }
        let Value::Batch(batch) = value else {
            return;
        };
        let Some(command) = batch.commands().first() else {
            return;
        };
        let Ok(request) = Request::decode(&command.payload) else {
            return;
        };
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if stamps.len() >= MAX_STAMPS {
            stamps.clear();
        }
        stamps.insert(
            (ClientId(command.id.proposer.0), request.id),
            Instant::now(),
        );
        self.stamped.store(true, Ordering::Relaxed);
    }

    /// Records the reply latency of the sampled requests among `replies`.
    fn time(&self, replies: &[Reply]) {
        if !self.stamped.load(Ordering::Relaxed) {
            return;
        }
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        for reply in replies {
            let Some(request) = reply.request else {
                continue;
            };
            if let Some(at) = stamps.remove(&(reply.client, request)) {
                metrics::histogram!("psmr_replica_reply_seconds")
                    .record(at.elapsed().as_secs_f64());
            }
        }
        self.stamped.store(!stamps.is_empty(), Ordering::Relaxed);
    }

    /// Starts or stops answering; says whether that changed anything.
    fn serve(&self, serving: bool) -> bool {
        self.serving.swap(serving, Ordering::Relaxed) != serving
    }

    /// Whether `client` is answered on `connection` (a stable id) already.
    fn answers(&self, client: ClientId, connection: usize) -> bool {
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        clients
            .get(&client)
            .is_some_and(|r| r.connection == connection && !r.sender.is_closed())
    }

    fn register(&self, client: ClientId, connection: usize, sender: mpsc::Sender<Vec<u8>>) {
        self.clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client, Route { connection, sender });
    }
}

impl ReplySink for ReplyRouter {
    /// One frame per client of the batch, holding every reply this replica
    /// sends it (`Reply::encode_all`): one write, one decode, one wake-up.
    fn replies(&self, thread: usize, replies: &mut Vec<Reply>) {
        self.executed[thread.min(WORKER_COUNTERS - 1)]
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        self.time(replies);
        if !self.serving.load(Ordering::Relaxed) {
            let sent = replies
                .drain(..)
                .filter(|r| r.answerers.include(self.replica));
            self.undeliverable
                .fetch_add(sent.count() as u64, Ordering::Relaxed);
            return;
        }
        let mut batches: Vec<(ClientId, Vec<Reply>)> = Vec::new();
        for reply in replies.drain(..) {
            if !reply.answerers.include(self.replica) {
                continue;
            }
            match batches.iter_mut().find(|(c, _)| *c == reply.client) {
                Some((_, mine)) => mine.push(reply),
                None => batches.push((reply.client, vec![reply])),
            }
        }
        let mut closed = Vec::new();
        {
            let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
            for (client, mine) in batches {
                let count = mine.len() as u64;
                let frame = net::frame_of(&Reply::encode_all(&mine));
                let sent = clients.get(&client).map(|r| r.sender.try_send(frame));
                if !matches!(sent, Some(Ok(()))) {
                    self.undeliverable.fetch_add(count, Ordering::Relaxed);
                }
                if let Some(Err(mpsc::error::TrySendError::Closed(_))) = sent {
                    closed.push(client);
                }
            }
        }
        if !closed.is_empty() {
            let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
            // Only if still closed: the client may have greeted us anew meanwhile.
            clients.retain(|c, r| !closed.contains(c) || !r.sender.is_closed());
        }
    }
}

/// A replica's metrics: the learner's, the engine's queues, the commands
/// each worker executed, what the router could not deliver, the newest
/// durable checkpoint.
fn publish<S: ConflictModel>(
    learner: &Learner,
    engine: &Engine<S>,
    router: &ReplyRouter,
    checkpoint: u64,
) {
    use metrics::{counter, gauge};
    psmr_multicast::metrics::publish_learner(learner);
    for (worker, queued) in engine.queued().into_iter().enumerate() {
        gauge!("psmr_replica_queued", "worker" => worker.to_string()).set(queued as f64);
    }
    let threads = engine.threads().min(WORKER_COUNTERS);
    for (worker, executed) in router.executed[..threads].iter().enumerate() {
        counter!("psmr_replica_executed_total", "worker" => worker.to_string())
            .absolute(executed.load(Ordering::Relaxed));
    }
    counter!("psmr_replica_undeliverable_replies_total")
        .absolute(router.undeliverable.load(Ordering::Relaxed));
    gauge!("psmr_replica_serving").set(f64::from(u8::from(router.serving.load(Ordering::Relaxed))));
    gauge!("psmr_replica_checkpoint").set(checkpoint as f64);
}

struct ReplicaHooks<S: ConflictModel> {
    engine: Engine<S>,
    router: Arc<ReplyRouter>,
    net: Network,
    failed: Option<RuntimeError>,
    reporter: Reporter,
    checkpoints: Option<Checkpointing<S>>,
    data_dir: String,
    /// Since when, and from how many delivered commands, it catches up.
    behind_since: Option<(Instant, u64)>,
    /// Whether rings may be held ([`Learner::hold`]) from the last pace.
    holding: bool,
    /// Instances delivered to the engine (for sampling reply latency).
    delivered: u64,
}

/// Instances a replica may trail the newest decision it heard of and still
/// count as caught up (live deliveries wait on gaps of a few instances).
const SLACK: u64 = 1024;

impl<S: ConflictModel> ReplicaHooks<S> {
    /// While catching up: holds the learner back when the engine has a
    /// backlog, and answers clients only once caught up.
    fn pace(&mut self, learner: &mut Learner) {
        let caught_up = learner.caught_up(SLACK);
        let serving_now = self.router.serving.load(Ordering::Relaxed);
        let mut behind = false;
        if !(caught_up && serving_now && !self.holding) {
            // Catching up (or just caught up: release what was held).
            self.engine.behind(|ring, backlog| {
                behind |= backlog;
                learner.hold(ring, backlog && !caught_up);
            });
            self.holding = !caught_up;
        }
        let serving = caught_up && (serving_now || !behind);
        if !self.router.serve(serving) {
            return;
        }
        let commands = learner.metrics().delivered_commands;
        if serving {
            let (since, from) = self
                .behind_since
                .take()
                .unwrap_or((Instant::now(), commands));
            let ms = since.elapsed().as_millis() as u64;
            info!(
                commands = commands - from,
                ms, "caught up: answering clients"
            );
        } else {
            self.behind_since = Some((Instant::now(), commands));
            info!("behind the rings: not answering clients until caught up");
        }
    }
}

impl<S: ConflictModel> Hooks<Learner> for ReplicaHooks<S> {
    fn other(&mut self, _learner: &mut Learner, inbound: Inbound) {
        if inbound.purpose != Purpose::ClientHello {
            return;
        }
        match postcard::from_bytes::<u64>(&inbound.body) {
            Ok(client) if ClientId(client).tag() != inbound.tag => {
                // Another certificate's id: answering it would hand that
                // client's replies to this one.
                self.net
                    .stats()
                    .bad_identity
                    .fetch_add(1, Ordering::Relaxed);
                warn!(from = %inbound.from, "a client hello for the id of another certificate; refused");
            }
            Ok(client) => {
                let (client, connection) = (ClientId(client), inbound.connection.stable_id());
                if !self.router.answers(client, connection) {
                    let sender = self.net.open(inbound.connection, Purpose::Replies);
                    self.router.register(client, connection, sender);
                }
            }
            Err(_) => warn!(from = %inbound.from, "malformed client hello"),
        }
    }

    fn after(&mut self, learner: &mut Learner) -> bool {
        while let Some(d) = learner.poll_delivery() {
            self.delivered += 1;
            self.router.sample(self.delivered, &d.value);
            if let Err(e) = self.engine.deliver(d.ring, d.instance, d.value) {
                self.failed = Some(e.into());
                return false;
            }
        }
        if let Some(c) = &mut self.checkpoints {
            c.after(learner, &self.net);
        }
        self.pace(learner);
        let router = &self.router;
        let checkpoint = self
            .checkpoints
            .as_ref()
            .map_or(0, |c| c.durable.load(Ordering::Acquire));
        let engine = &self.engine;
        self.reporter.report(
            || publish(learner, engine, router, checkpoint),
            || {
                let m = learner.metrics();
                info!(
                    instances = m.delivered_instances,
                    commands = m.delivered_commands,
                    skips = m.delivered_skips,
                    duplicate_commands = m.duplicate_commands,
                    recovery_requests = m.recovery_requests,
                    unknown_peer = m.unknown_peer,
                    bad_frames = m.bad_frames,
                    undeliverable_replies = router.undeliverable.load(Ordering::Relaxed),
                    checkpoint,
                    "replica counters"
                );
            },
        );
        if let Some(lost) = learner.lost().next() {
            self.failed = Some(RuntimeError::Trimmed {
                ring: lost.ring,
                from: lost.from,
                below: lost.below,
                dir: self.data_dir.clone(),
            });
            return false;
        }
        true
    }
}

/// Runs replica `id` of `service` until `shutdown` resolves: from its
/// newest intact checkpoint if it has one, else from `initial()` at the
/// start of every ring while it asks the other replicas for theirs. If the
/// acceptors trimmed what it needs, it fetches a newer checkpoint from
/// another replica and starts again from there.
pub async fn run_replica<S: ConflictModel>(
    cluster: &ClusterConfig,
    id: NodeId,
    service: Arc<S>,
    initial: impl FnOnce() -> S::State,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let entry = cluster.replica(id).ok_or(ProcessError::NotInCluster {
        id: id.0,
        role: "a replica",
    })?;
    let data_dir = entry.data_dir();
    let store = Store::open(&data_dir, cluster.checkpoint.keep)?;
    let config = EngineConfig::of_cluster(cluster);
    let loaded = store.load(&*service, config.kind, config.threads())?;
    // The state is built before the network starts: a client that reaches
    // this replica finds it executing.
    let first = match loaded {
        Some(loaded) => resume(cluster, id, loaded)?,
        None => fresh(cluster, id, initial())?,
    };
    let tls = node_tls(cluster, id).map_err(ProcessError::from)?;
    let mut config = net_config(cluster, id, tls);
    let asks = config.route(Purpose::TransferRequest, transfer::QUEUED);
    let answers = config.route(Purpose::Transfer, transfer::QUEUED);
    let (net, mut inbox) = Network::start(config).map_err(ProcessError::from)?;
    info!(node = %id, address = %entry.address, engine = %entry.engine, threads = entry.threads, "replica listening");
    let others: Vec<NodeId> = cluster
        .replicas
        .iter()
        .map(|r| NodeId(r.id))
        .filter(|&r| r != id)
        .collect();
    tokio::spawn(transfer::serve(
        net.clone(),
        store.clone(),
        others.clone(),
        asks,
    ));
    let mut p = Process {
        store: &store,
        net: &net,
        inbox: &mut inbox,
        fetcher: Some(Fetcher::new(net.clone(), answers, others)),
        router: Arc::new(ReplyRouter::new(id)),
    };
    let outcome = serve(cluster, id, &service, first, shutdown, &mut p).await;
    net.close();
    outcome
}

/// What a replica needs besides its cluster and service while it runs.
struct Process<'a> {
    store: &'a Store,
    net: &'a Network,
    inbox: &'a mut mpsc::Receiver<Inbound>,
    /// `None` while it fetches beside the engine ([`Background`]).
    fetcher: Option<Fetcher>,
    router: Arc<ReplyRouter>,
}

/// Where a run of the engine starts.
struct Resumed<T> {
    learner: Learner,
    start: Start<T>,
    /// The checkpoint it resumes from (0: none).
    checkpoint: u64,
}

/// A fetch of the other replicas' newest checkpoint running beside the
/// engine; the fetcher comes back with the number it got, if any.
type Background = tokio::task::JoinHandle<(Fetcher, Option<u64>)>;

/// How a run of the engine ended.
enum Ended {
    /// Shut down.
    Shutdown,
    /// The driver stopped (a failure in `hooks.failed`, or the network closed).
    Driver,
    /// A checkpoint fetched in the background is far ahead: start from it.
    Fetched,
}

/// Runs the engine from `first` until `shutdown`; each time the acceptors
/// turn out to have trimmed what it needs, fetches a newer checkpoint from
/// another replica and runs again from there. A replica that starts with
/// no checkpoint asks the others for theirs beside the engine, and moves to
/// the one it gets if it has not caught up by then.
async fn serve<S: ConflictModel>(
    cluster: &ClusterConfig,
    id: NodeId,
    service: &Arc<S>,
    first: Resumed<S::State>,
    shutdown: impl Future<Output = ()>,
    p: &mut Process<'_>,
) -> Result<(), RuntimeError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let fresh = first.checkpoint == 0 && cluster.checkpoint.enabled();
    let mut background = match p.fetcher.take() {
        Some(mut fetcher) if fresh && fetcher.has_peers() => {
            info!(node = %id, "no checkpoint here; asking the other replicas for theirs beside the engine");
            let store = p.store.clone();
            Some(tokio::spawn(async move {
                let number = fetcher.newest(&store, 0, Duration::ZERO).await;
                (fetcher, number)
            }))
        }
        fetcher => {
            p.fetcher = fetcher;
            None
        }
    };
    let mut next = first;
    loop {
        let Resumed {
            mut learner,
            start,
            checkpoint: last,
        } = next;
        let mut hooks = start_engine(cluster, id, service, p, start, last)?;
        if hooks.checkpoints.is_some() {
            learner.keep_images();
        }
        let ended = run(&mut learner, &mut hooks, p, &mut shutdown, &mut background).await;
        if let Some(c) = &mut hooks.checkpoints {
            c.finish();
        }
        let failed = match ended {
            Ended::Shutdown => {
                info!(node = %id, "replica shutting down");
                return Ok(());
            }
            Ended::Driver => match hooks.failed.take() {
                None => return Ok(()),
                Some(failed) => Some(failed),
            },
            Ended::Fetched => None,
        };
        // Its workers stop (at the gap); the state is rebuilt from a checkpoint.
        let engine = hooks.engine;
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || engine.finish()).await {
            warn!(node = %id, error = %e, "the engine stopped with an error");
        }
        if let Some(failed) = failed {
            fetch_past_trim(cluster, id, failed, last, p, &mut background).await?;
        }
        let config = EngineConfig::of_cluster(cluster);
        let loaded = p.store.load(&**service, config.kind, config.threads())?;
        let Some(loaded) = loaded else {
            return Err(RuntimeError::NoState);
        };
        next = resume(cluster, id, loaded)?;
    }
}

/// Drives the learner until shutdown, the driver stops, or a checkpoint
/// fetched in the background should replace the state (this replica has not
/// caught up by then; one that has keeps running).
async fn run<S: ConflictModel>(
    learner: &mut Learner,
    hooks: &mut ReplicaHooks<S>,
    p: &mut Process<'_>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    background: &mut Option<Background>,
) -> Ended {
    loop {
        tokio::select! {
            () = net::drive(learner, p.net, p.inbox, hooks) => return Ended::Driver,
            () = shutdown.as_mut() => return Ended::Shutdown,
            joined = async { background.as_mut().expect("guarded").await }, if background.is_some() => {
                *background = None;
                let Ok((fetcher, number)) = joined else { continue };
                p.fetcher = Some(fetcher);
                if number.is_some() && !learner.caught_up(SLACK) {
                    info!(checkpoint = number, "moving to the checkpoint fetched from another replica");
                    return Ended::Fetched;
                }
            }
        }
    }
}

/// After the learner found decisions trimmed: fetches a checkpoint newer
/// than `last` from another replica, or gives back `failed`.
async fn fetch_past_trim(
    cluster: &ClusterConfig,
    id: NodeId,
    failed: RuntimeError,
    last: u64,
    p: &mut Process<'_>,
    background: &mut Option<Background>,
) -> Result<(), RuntimeError> {
    let RuntimeError::Trimmed {
        ring, from, below, ..
    } = &failed
    else {
        return Err(failed);
    };
    warn!(node = %id, %ring, from, below, "decisions this replica needs were trimmed; fetching a newer checkpoint from another replica");
    if let Some(task) = background.take()
        && let Ok((fetcher, fetched)) = task.await
    {
        p.fetcher = Some(fetcher);
        if fetched.is_some_and(|n| n > last) {
            return Ok(());
        }
    }
    let Some(fetcher) = p.fetcher.as_mut() else {
        return Err(failed);
    };
    if !fetcher.has_peers() || !cluster.checkpoint.enabled() {
        return Err(failed);
    }
    let patience = transfer_patience(&cluster.checkpoint);
    match drained(fetcher.newest(p.store, last, patience), p.inbox).await {
        Some(_) => Ok(()),
        None => Err(failed),
    }
}

/// A learner of every ring from instance 0.
fn learner(cluster: &ClusterConfig, id: NodeId, now: Instant) -> Result<Learner, RuntimeError> {
    let multicast = cluster.multicast();
    let rings: Vec<RingId> = multicast.rings.iter().map(|r| r.id).collect();
    Learner::new(id, &multicast, &rings, now).map_err(|e| ProcessError::from(e).into())
}

/// A start at instance 0 of every ring, from `state`.
fn fresh<T>(cluster: &ClusterConfig, id: NodeId, state: T) -> Result<Resumed<T>, RuntimeError> {
    Ok(Resumed {
        learner: learner(cluster, id, Instant::now())?,
        start: Start::Fresh(state),
        checkpoint: 0,
    })
}

/// A start from checkpoint `loaded`: the learner resumed at its cut.
fn resume<T>(
    cluster: &ClusterConfig,
    id: NodeId,
    loaded: Loaded<T>,
) -> Result<Resumed<T>, RuntimeError> {
    let now = Instant::now();
    let mut learner = learner(cluster, id, now)?;
    for (ring, image) in loaded.dedupe {
        learner
            .resume(ring, image, now)
            .map_err(|e| RuntimeError::Image(e.to_string()))?;
    }
    let number = loaded.resume.engine.number;
    info!(node = %id, checkpoint = number, "resuming from a checkpoint");
    Ok(Resumed {
        learner,
        start: Start::Resume(loaded.resume),
        checkpoint: number,
    })
}

/// Starts the engine, and the checkpoint writer if checkpoints are on.
fn start_engine<S: ConflictModel>(
    cluster: &ClusterConfig,
    id: NodeId,
    service: &Arc<S>,
    p: &Process<'_>,
    start: Start<S::State>,
    last: u64,
) -> Result<ReplicaHooks<S>, RuntimeError> {
    let config = EngineConfig::of_cluster(cluster);
    let section = cluster.checkpoint.clone();
    let router = p.router.clone();
    let (engine, checkpoints) = if section.enabled() {
        let (tx, rx) = std::sync::mpsc::channel();
        let engine = Engine::start_with(
            service.clone(),
            start,
            config.clone(),
            router.clone(),
            Some(tx),
        )?;
        let acceptors = cluster
            .multicast()
            .rings
            .iter()
            .map(|r| (r.id, r.acceptors.clone()))
            .collect();
        let kind = (config.kind, config.threads());
        let store = p.store.clone();
        let c = Checkpointing::start(service.clone(), store, section, kind, acceptors, rx, last)
            .map_err(RuntimeError::Writer)?;
        (engine, Some(c))
    } else {
        let engine = Engine::start_with(service.clone(), start, config, router.clone(), None)?;
        (engine, None)
    };
    let data_dir = cluster
        .replica(id)
        .map(|e| e.data_dir())
        .unwrap_or_default();
    Ok(ReplicaHooks {
        engine,
        router,
        net: p.net.clone(),
        failed: None,
        reporter: Reporter::new(p.net),
        checkpoints,
        data_dir: data_dir.display().to_string(),
        behind_since: Some((Instant::now(), 0)),
        holding: false,
        delivered: 0,
    })
}

/// How long a replica behind the trim point waits for another replica to
/// take a checkpoint that reaches past it: two checkpoint intervals, and
/// at least a minute.
fn transfer_patience(section: &psmr_core::cluster::CheckpointSection) -> Duration {
    (section.every * 2).max(Duration::from_secs(60))
}

/// Runs `work` while dropping what arrives in `inbox` meanwhile (the
/// learner is not running; the rings resend what it will need).
async fn drained<T>(work: impl Future<Output = T>, inbox: &mut mpsc::Receiver<Inbound>) -> T {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            Some(_) = inbox.recv() => {}
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use psmr_core::{Answerers, Outcome, RequestId};

    fn reply(client: u64, request: u64, answerers: Answerers) -> Reply {
        Reply {
            client: ClientId(client),
            request: Some(RequestId(request)),
            outcome: Outcome::Done(bytes::Bytes::from_static(b"ok")),
            execution_ns: 0,
            answerers,
        }
    }

    /// The requests of one batch, as the client reads them from its
    /// stream: one frame of replies.
    fn received(frame: &[u8]) -> Vec<u64> {
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(frame.len(), 4 + len, "one frame per batch");
        let replies = Reply::decode_all(&frame[4..]).unwrap();
        replies.iter().map(|r| r.request.unwrap().0).collect()
    }

    #[test]
    fn a_replica_sends_only_the_replies_it_is_asked_for() {
        let router = ReplyRouter::new(NodeId(101));
        router.serve(true);
        let (tx, mut rx) = mpsc::channel(4);
        router.register(ClientId(7), 1, tx);
        let mut replies = vec![
            reply(7, 1, Answerers::One(101)),
            reply(7, 2, Answerers::One(102)),
            reply(7, 3, Answerers::All),
        ];
        router.replies(0, &mut replies);
        assert!(replies.is_empty());
        assert_eq!(received(&rx.try_recv().unwrap()), [1, 3]);
        let mut others = vec![reply(7, 4, Answerers::One(102))];
        router.replies(1, &mut others);
        assert!(rx.try_recv().is_err(), "nothing to send, no write");
        assert_eq!(router.undeliverable.load(Ordering::Relaxed), 0);
    }

    /// A replica that is catching up answers nobody (its answers would come
    /// late; the client's call falls over to another replica), and counts
    /// what it did not send; once caught up it answers again.
    #[test]
    fn a_replica_that_catches_up_answers_nobody() {
        let router = ReplyRouter::new(NodeId(101));
        let (tx, mut rx) = mpsc::channel(4);
        router.register(ClientId(7), 1, tx);
        let mut replies = vec![
            reply(7, 1, Answerers::All),
            reply(7, 2, Answerers::One(102)),
        ];
        router.replies(0, &mut replies);
        assert!(rx.try_recv().is_err(), "not serving yet: nothing sent");
        assert_eq!(router.undeliverable.load(Ordering::Relaxed), 1);
        assert!(router.serve(true) && !router.serve(true));
        router.replies(0, &mut vec![reply(7, 3, Answerers::All)]);
        assert_eq!(received(&rx.try_recv().unwrap()), [3]);
    }

    /// One delivered batch in 16 has its first request timed until its
    /// reply is ready; the stamp goes with the reply, also one this replica
    /// does not send, and a batch that is not a request is not timed.
    #[test]
    fn a_sampled_request_is_timed_until_its_reply() {
        use psmr_core::proto::{Batch, Command, CommandId, ProposerId};
        use psmr_core::{Mode, ServiceId};
        let router = ReplyRouter::new(NodeId(101));
        let command = |payload: bytes::Bytes| Command {
            id: CommandId {
                proposer: ProposerId(7),
                seq: 0,
            },
            low_water: 0,
            payload,
        };
        let request = Request {
            id: RequestId(3),
            low_water: RequestId(0),
            mode: Mode::Conservative,
            service: ServiceId(1),
            op: bytes::Bytes::new(),
            answerers: Answerers::One(102),
        };
        let batch = Value::Batch(Batch::new(&[command(request.encode())]));
        router.sample(SAMPLE_EVERY + 1, &batch);
        assert!(
            !router.stamped.load(Ordering::Relaxed),
            "not a sampled batch"
        );
        router.sample(
            SAMPLE_EVERY,
            &Value::Batch(Batch::new(&[command(bytes::Bytes::from_static(b"??"))])),
        );
        router.sample(SAMPLE_EVERY, &Value::Skip(3));
        assert!(!router.stamped.load(Ordering::Relaxed), "nothing to time");
        router.sample(SAMPLE_EVERY, &batch);
        assert!(router.stamped.load(Ordering::Relaxed));
        router.replies(0, &mut vec![reply(7, 2, Answerers::All)]);
        assert!(
            router.stamped.load(Ordering::Relaxed),
            "another request's reply"
        );
        router.replies(0, &mut vec![reply(7, 3, Answerers::One(102))]);
        assert!(
            !router.stamped.load(Ordering::Relaxed),
            "timed and forgotten"
        );
    }
}
