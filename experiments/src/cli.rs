//! The command line: arguments and the subcommands' entry points.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use psmr_btree::{BTreeClient, BTreeError};
use psmr_client::{ClientError, ClientOptions};
use psmr_core::cluster::{ClusterConfig, ClusterError, ServiceKind, StorageKind};
use psmr_core::proto::NodeId;
use psmr_core::{EngineKind, ExecCost};
use psmr_multicast::net::{TlsError, generate_dev_certs, issue_client_cert};
use psmr_multicast::process::{ProcessError, load_cluster, run_acceptor};
use psmr_multicast::storage::OpenMode;
use psmr_replica::runtime::RuntimeError;
use thiserror::Error;

use crate::load::{LoadError, LoadOptions};
use crate::local::{ClusterSpec, LocalError, LocalOptions};

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(
    name = "psmr",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("PSMR_COMMIT"), ")"),
    about = "Parallel state-machine replication over Multi-Ring Paxos"
)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole cluster (3 acceptors, 2 replicas) on loopback, with a
    /// built-in configuration and development certificates.
    Local(LocalArgs),
    /// Write a development CA and certificates for every node of a cluster.
    Certs {
        /// The cluster file.
        #[arg(long)]
        config: PathBuf,
        /// Where to write them; default: the file's `tls.dir`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace an existing CA (every process holding the old
        /// certificates is locked out), or an existing client certificate.
        #[arg(long)]
        force: bool,
        /// Issue a certificate for a client named NAME (NAME.pem, NAME.key)
        /// with the existing CA instead; each client with its own
        /// certificate has ids no other client can use. Repeatable.
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
    },
    /// Run one acceptor.
    Acceptor(AcceptorArgs),
    /// Run one replica.
    Replica(NodeArgs),
    /// Run an experiment file: a local cluster per configuration, load,
    /// then data.csv, summary.md and plots in OUT/EXPERIMENT/TIMESTAMP/.
    Sweep(crate::sweep::SweepArgs),
    /// Redraw the plots of a results directory written by `psmr sweep`.
    Plot {
        /// The results directory (holds experiment.toml and data.csv).
        dir: PathBuf,
    },
    /// Print a completion script for SHELL (e.g. `psmr completions bash >
    /// /etc/bash_completion.d/psmr`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Inject faults (kill -9, pauses, partitions, delay and loss, kill-all)
    /// into a local cluster under load, per engine, then check that what
    /// the clients saw is linearizable; exit 1 if it is not, if the cluster
    /// did not recover, or if a process died on its own.
    Chaos(ChaosArgs),
    /// Show every node of a cluster (up or down, rings, positions, lag)
    /// from their metrics; exit 1 when the cluster cannot serve.
    Status {
        /// The cluster file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Send commands to a cluster running the B+-tree.
    Client {
        /// The cluster file.
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        command: ClientCommand,
    },
}

#[derive(clap::Args, Debug)]
struct AcceptorArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Initialize this acceptor's data directory as a new member, then run.
    /// Without it the directory must hold the acceptor's storage: an acceptor
    /// that starts empty has forgotten its promises and can break agreement.
    #[arg(long)]
    init: bool,
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// The cluster file.
    #[arg(long)]
    config: PathBuf,
    /// This node's id in the file.
    #[arg(long)]
    id: u32,
    /// Exit when standard input closes (how `psmr local` makes its children
    /// stop with it).
    #[arg(long)]
    exit_with_parent: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct LocalArgs {
    /// Execution engine.
    #[arg(long, value_enum, default_value = "opt-psmr")]
    pub(crate) engine: EngineArg,
    /// Worker threads per replica (K); smr uses 1.
    #[arg(long, default_value_t = 2, value_parser = crate::load::at_least_one)]
    pub(crate) threads: usize,
    /// Acceptor storage.
    #[arg(long, value_enum, default_value = "memory")]
    pub(crate) storage: StorageArg,
    /// The replicated service.
    #[arg(long, value_enum, default_value = "btree")]
    pub(crate) service: ServiceArg,
    /// Keys (B+-tree) or elements (list) preloaded.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) preload: u64,
    /// B+-tree: bytes per preloaded value (load generators write values of
    /// this size too unless told otherwise).
    #[arg(long, default_value_t = psmr_core::cluster::ServiceSection::default().value_size,
          value_parser = crate::load::value_size)]
    pub(crate) value_size: usize,
    /// First port: acceptors listen on PORT..PORT+2, replicas on
    /// PORT+100..PORT+101 (QUIC over UDP; metrics over TCP on the same numbers).
    #[arg(long, default_value_t = 7100, value_parser = clap::value_parser!(u16).range(1..=65535 - 101))]
    pub(crate) port: u16,
    /// Directory for the configuration, certificates and data; one `psmr
    /// local` at a time uses it.
    #[arg(long, default_value = "psmr-local")]
    pub(crate) dir: PathBuf,
    /// Wipe the data at start. Memory storage always starts fresh; durable
    /// storage keeps the acceptors' logs and the replicas' checkpoints
    /// across runs unless this is given.
    #[arg(long)]
    pub(crate) fresh: bool,
    /// Leave a child process that dies down (reported) instead of starting
    /// it again.
    #[arg(long)]
    pub(crate) no_restart: bool,
    /// Busy work added to every executed command (a costlier service), e.g. `20us`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) exec_busy: Duration,
    /// A blocking wait added to every executed command, standing for I/O, e.g. `100us`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) exec_wait: Duration,
    /// Also run a load generator for this long, then keep serving.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) load: Option<Duration>,
    /// Stop after this long instead of waiting for Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) stop_after: Option<Duration>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ChaosArgs {
    /// Engines to run, one cluster after the other (comma-separated); default all five.
    #[arg(long = "engine", value_enum, value_delimiter = ',')]
    pub(crate) engines: Vec<EngineArg>,
    /// Worker threads per replica (K); smr uses 1.
    #[arg(long, default_value_t = 2, value_parser = crate::load::at_least_one)]
    pub(crate) threads: usize,
    /// Acceptors, every ring's (3, 5, 7 or 9), at PORT, PORT+1, ...
    #[arg(long, default_value_t = 3, value_parser = odd_acceptors)]
    pub(crate) acceptors: usize,
    /// Acceptor storage; kill-all needs durable.
    #[arg(long, value_enum, default_value = "durable")]
    pub(crate) storage: StorageArg,
    /// Fault classes (comma-separated), each once per round in an order
    /// drawn from the seed; default all (without kill-all on memory storage).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) faults: Vec<crate::chaos::FaultKind>,
    /// Rounds of the fault classes.
    #[arg(long, default_value_t = 1, value_parser = crate::load::at_least_one)]
    pub(crate) rounds: usize,
    /// Seed of the schedule, the targets and the workload; default random
    /// (printed, so that a run can be replayed).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// How long each fault lasts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) fault_for: Duration,
    /// Quiet time before each fault (its "before" throughput).
    #[arg(long, default_value = "1s", value_parser = positive_duration)]
    pub(crate) calm: Duration,
    /// Fail when throughput is not back to half of its "before" this long after a heal.
    #[arg(long, default_value = "20s", value_parser = positive_duration)]
    pub(crate) recover_within: Duration,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4, value_parser = crate::load::at_least_one)]
    pub(crate) clients: usize,
    /// Calls in flight per client: with more than one, one replica answers
    /// each call, and a fault of it is felt until the client fails over.
    #[arg(long, default_value_t = 2, value_parser = crate::load::at_least_one)]
    pub(crate) in_flight: usize,
    /// Keys the clients contend on.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) keys: u64,
    /// First port: relays at PORT.. (acceptors) and PORT+100..PORT+101, the nodes
    /// behind them 50 ports higher (QUIC over UDP; metrics over TCP at the relays' numbers).
    #[arg(long, default_value_t = 7300, value_parser = clap::value_parser!(u16).range(1..=65535 - 151))]
    pub(crate) port: u16,
    /// Directory for each engine's configuration, certificates and data.
    #[arg(long, default_value = "psmr-chaos")]
    pub(crate) dir: PathBuf,
}

fn odd_acceptors(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n % 2 == 1 && (3..=9).contains(&n) => Ok(n),
        Ok(_) => Err("must be 3, 5, 7 or 9 (2f+1 acceptors)".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be greater than zero".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl From<ChaosArgs> for crate::chaos::ChaosOptions {
    fn from(a: ChaosArgs) -> Self {
        use crate::chaos::FaultKind;
        let storage = a.storage.kind();
        let engines = match a.engines.is_empty() {
            true => EngineKind::ALL.to_vec(),
            false => a.engines.iter().map(|e| e.name()).collect(),
        };
        let faults = match a.faults.is_empty() {
            true => FaultKind::ALL
                .into_iter()
                .filter(|f| *f != FaultKind::KillAll || storage == StorageKind::Durable)
                .collect(),
            false => a.faults,
        };
        crate::chaos::ChaosOptions {
            engines,
            threads: a.threads,
            acceptors: a.acceptors,
            storage,
            faults,
            rounds: a.rounds,
            seed: a.seed.unwrap_or_else(rand::random),
            fault_for: a.fault_for,
            calm: a.calm,
            recover_within: a.recover_within,
            clients: a.clients,
            in_flight: a.in_flight,
            keys: a.keys,
            port: a.port,
            dir: a.dir,
        }
    }
}

/// Engines, as the command line names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EngineArg {
    Smr,
    Psmr,
    OptPsmr,
    Cbase,
    Classes,
}

impl EngineArg {
    pub(crate) fn name(self) -> EngineKind {
        match self {
            EngineArg::Smr => EngineKind::Smr,
            EngineArg::Psmr => EngineKind::Psmr,
            EngineArg::OptPsmr => EngineKind::OptPsmr,
            EngineArg::Cbase => EngineKind::Cbase,
            EngineArg::Classes => EngineKind::Classes,
        }
    }
}

/// Storage modes, as the command line names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageArg {
    Memory,
    Durable,
}

impl StorageArg {
    pub(crate) fn kind(self) -> StorageKind {
        match self {
            StorageArg::Memory => StorageKind::Memory,
            StorageArg::Durable => StorageKind::Durable,
        }
    }
}

/// Services, as the command line names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServiceArg {
    Btree,
    Null,
    List,
}

impl ServiceArg {
    pub(crate) fn kind(self) -> ServiceKind {
        match self {
            ServiceArg::Btree => ServiceKind::Btree,
            ServiceArg::Null => ServiceKind::Null,
            ServiceArg::List => ServiceKind::List,
        }
    }
}

#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Print the value of KEY.
    Get { key: u64 },
    /// Set the value of an existing KEY. A VALUE that is a number is stored
    /// as 8 bytes little-endian (as the preload stores its values), any
    /// other as its UTF-8 bytes.
    Put {
        key: u64,
        #[arg(value_parser = parse_value)]
        value: Bytes,
    },
    /// Insert KEY (or replace its value); VALUE as for `put`.
    Insert {
        key: u64,
        #[arg(value_parser = parse_value)]
        value: Bytes,
    },
    /// Remove KEY.
    Delete { key: u64 },
    /// Print up to COUNT entries from KEY on.
    Scan { key: u64, count: u32 },
    /// Generate load and report throughput and latency.
    Load(LoadOptions),
}

/// Why a subcommand failed.
#[derive(Debug, Error)]
pub(crate) enum CliError {
    /// The cluster file is unusable.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Certificates could not be written.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A process failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The acceptor process failed.
    #[error(transparent)]
    Acceptor(#[from] ProcessError),
    /// A client call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A B+-tree call failed.
    #[error(transparent)]
    BTree(#[from] BTreeError),
    /// The load generator failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The local cluster failed.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// An experiment failed.
    #[error(transparent)]
    Sweep(#[from] crate::sweep::SweepError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] psmr_multicast::metrics::MetricsError),
    /// `put` found no such key.
    #[error("key {0} does not exist: nothing was stored (`insert` adds a key)")]
    NotStored(u64),
    /// `psmr chaos` failed or found a problem.
    #[error(transparent)]
    Chaos(#[from] crate::chaos::ChaosError),
    /// `psmr status` found a cluster that cannot serve.
    #[error("the cluster cannot serve: {0}")]
    CannotServe(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    AsyncRuntime(#[source] std::io::Error),
    /// The client subcommand needs the B+-tree.
    #[error("`psmr client` speaks to the B+-tree; this cluster runs {0:?}")]
    NotBTree(ServiceKind),
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::AsyncRuntime)
}

/// Runs the parsed command line.
pub(crate) fn run(args: Args) -> Result<(), CliError> {
    match args.command {
        Command::Local(local) => Ok(crate::local::run(LocalOptions::from(local))?),
        Command::Chaos(chaos) => Ok(crate::chaos::run(&chaos.into())?),
        Command::Sweep(sweep) => {
            crate::sweep::run(sweep)?;
            Ok(())
        }
        Command::Plot { dir } => {
            for file in crate::sweep::replot(&dir)? {
                println!("wrote {}", file.display());
            }
            Ok(())
        }
        Command::Certs {
            config,
            dir,
            force,
            clients,
        } => {
            let cluster = load_cluster(&config)?;
            let dir = dir.unwrap_or_else(|| cluster.tls.dir.clone());
            if clients.is_empty() {
                generate_dev_certs(&dir, &cluster.nodes(), force)?;
                println!(
                    "a CA and certificates for {} nodes and a client written to {} (private keys mode 0600)",
                    cluster.nodes().len(),
                    dir.display()
                );
            }
            for name in clients {
                let cert = issue_client_cert(&dir, &name, force)?;
                println!("client certificate {name} written to {}", cert.display());
            }
            Ok(())
        }
        Command::Acceptor(AcceptorArgs { node, init }) => {
            let cluster = load_cluster(&node.config)?;
            let mode = if init {
                OpenMode::Init
            } else {
                OpenMode::Existing
            };
            let rt = runtime()?;
            rt.block_on(async {
                serve_metrics(&cluster, NodeId(node.id))?;
                run_acceptor(
                    &cluster,
                    NodeId(node.id),
                    mode,
                    shutdown(node.exit_with_parent),
                )
                .await?;
                Ok(())
            })
        }
        Command::Replica(node) => {
            let cluster = load_cluster(&node.config)?;
            let id = NodeId(node.id);
            runtime()?.block_on(async {
                serve_metrics(&cluster, id)?;
                crate::services::run_replica(&cluster, id, shutdown(node.exit_with_parent)).await?;
                Ok(())
            })
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Args::command(), "psmr", &mut std::io::stdout());
            Ok(())
        }
        Command::Status { config } => {
            let cluster = load_cluster(&config)?;
            let status = runtime()?.block_on(crate::status::status(&cluster));
            print!("{}", status.text);
            match status.problem {
                None => Ok(()),
                Some(problem) => Err(CliError::CannotServe(problem)),
            }
        }
        Command::Client { config, command } => {
            let cluster = load_cluster(&config)?;
            if cluster.service.kind != ServiceKind::Btree {
                return Err(CliError::NotBTree(cluster.service.kind));
            }
            runtime()?.block_on(client(&cluster, command))
        }
    }
}

/// Serves node `id`'s metrics at its `metrics` address (nothing if `id` is
/// not in the file: running it reports that).
fn serve_metrics(cluster: &ClusterConfig, id: NodeId) -> Result<(), CliError> {
    let address = match (cluster.acceptor(id), cluster.replica(id)) {
        (Some(a), _) => a.metrics_address(),
        (None, Some(r)) => r.metrics_address(),
        (None, None) => return Ok(()),
    };
    psmr_multicast::metrics::serve(address)?;
    tracing::info!(node = %id, "metrics at http://{address}/metrics");
    Ok(())
}

/// Resolves on Ctrl-C, or when standard input closes if `with_parent`.
async fn shutdown(with_parent: bool) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    if with_parent {
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = rx, if with_parent => {}
    }
}

/// A value from the command line: a number as 8 bytes little-endian (the
/// preload's encoding), anything else as its UTF-8 bytes.
fn parse_value(text: &str) -> Result<Bytes, String> {
    let value = match text.parse::<u64>() {
        Ok(n) => psmr_btree::value_of(n, 8),
        Err(_) => Bytes::copy_from_slice(text.as_bytes()),
    };
    match value.len() <= psmr_btree::MAX_VALUE {
        true => Ok(value),
        false => Err(format!("at most {} bytes", psmr_btree::MAX_VALUE)),
    }
}

/// A value for people: 8 bytes as the number they encode (see
/// [`parse_value`]), printable UTF-8 as quoted text, anything else as its
/// length and first bytes in hex.
pub(crate) fn show_value(value: &[u8]) -> String {
    if value.len() == 8 {
        return psmr_btree::value_id(value).to_string();
    }
    match std::str::from_utf8(value) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
        _ => {
            let head: String = value.iter().take(16).map(|b| format!("{b:02x}")).collect();
            let more = if value.len() > 16 { "…" } else { "" };
            format!("{} bytes 0x{head}{more}", value.len())
        }
    }
}

async fn client(cluster: &ClusterConfig, command: ClientCommand) -> Result<(), CliError> {
    if let ClientCommand::Load(options) = command {
        let report = crate::load::run(cluster, &options).await?;
        println!("{report}");
        return Ok(());
    }
    let tree = BTreeClient::connect(cluster, ClientOptions::default()).await?;
    let show = |v: Option<Bytes>| v.map_or_else(|| "(none)".to_string(), |v| show_value(&v));
    match command {
        ClientCommand::Get { key } => println!("{}", show(tree.get(key).await?)),
        ClientCommand::Put { key, value } => match tree.put(key, value).await? {
            Some(previous) => println!("previous: {}", show_value(&previous)),
            None => return Err(CliError::NotStored(key)),
        },
        ClientCommand::Insert { key, value } => {
            println!("previous: {}", show(tree.insert(key, value).await?))
        }
        ClientCommand::Delete { key } => println!("removed: {}", show(tree.delete(key).await?)),
        ClientCommand::Scan { key, count } => {
            let scan = tree.scan(key, count).await?;
            for (k, v) in &scan.entries {
                println!("{k} {}", show_value(v));
            }
            if scan.capped {
                println!("(capped at {} entries)", scan.entries.len());
            }
        }
        ClientCommand::Load(_) => unreachable!("handled above"),
    }
    Ok(())
}

impl From<LocalArgs> for LocalOptions {
    fn from(a: LocalArgs) -> Self {
        LocalOptions {
            cluster: ClusterSpec {
                engine: a.engine.name(),
                threads: a.threads,
                storage: a.storage.kind(),
                service: a.service.kind(),
                preload: a.preload,
                fanout: psmr_core::cluster::ServiceSection::default().fanout,
                value_size: a.value_size,
                cost: ExecCost {
                    busy: a.exec_busy,
                    wait: a.exec_wait,
                },
                port: a.port,
                dir: a.dir,
                fresh: a.fresh,
            },
            load: a.load,
            stop_after: a.stop_after,
            no_restart: a.no_restart,
        }
    }
}
