//! `psmr local`: a whole cluster on loopback, from a built-in configuration.
//!
//! ```text
//! <dir>/cluster.toml    the configuration (3 acceptors, 2 replicas)
//! <dir>/certs/          development CA and certificates, regenerated each run
//! <dir>/data/           acceptor storage and replica checkpoints, wiped each run
//! ```
//!
//! The acceptors and replicas are child processes of this one (`psmr
//! acceptor` and `psmr replica`). Each reads its standard input and exits
//! when it closes, so the cluster stops when this process stops, however it
//! stops; on Ctrl-C, `--stop-after`, or the death of a child, this process
//! also kills every child and waits for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use psmr_btree::{BTreeClient, BTreeError};
use psmr_client::{ClientError, ClientOptions};
use psmr_core::EngineKind;
use psmr_core::ExecCost;
use psmr_core::cluster::{ClusterConfig, ServiceKind, StorageKind};
use psmr_multicast::net::{TlsError, generate_dev_certs};
use thiserror::Error;

use crate::load::{LoadError, LoadOptions};

/// What a local cluster runs and where (also what `psmr sweep` starts per point).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClusterSpec {
    pub(crate) engine: EngineKind,
    pub(crate) threads: usize,
    pub(crate) storage: StorageKind,
    pub(crate) service: ServiceKind,
    pub(crate) preload: u64,
    /// Execution cost added to every command.
    pub(crate) cost: ExecCost,
    /// Acceptors listen on `port..port+2`, replicas on `port+100..port+101`.
    pub(crate) port: u16,
    /// Configuration, certificates and data (data is wiped at start).
    pub(crate) dir: PathBuf,
}

/// Options of `psmr local`.
pub(crate) struct LocalOptions {
    pub(crate) cluster: ClusterSpec,
    pub(crate) load: Option<Duration>,
    pub(crate) stop_after: Option<Duration>,
}

/// Why the local cluster failed.
#[derive(Debug, Error)]
pub(crate) enum LocalError {
    /// A file or directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The built-in configuration does not validate with these options.
    #[error(transparent)]
    Cluster(#[from] psmr_core::cluster::ClusterError),
    /// Certificates could not be generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A child process could not start.
    #[error("cannot start {role} {id}: {source}")]
    Spawn {
        /// `acceptor` or `replica`.
        role: &'static str,
        /// Its node id.
        id: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A child process died.
    #[error("{role} {id} exited ({status}); stopping the cluster")]
    ChildExited {
        /// `acceptor` or `replica`.
        role: &'static str,
        /// Its node id.
        id: u32,
        /// How it exited.
        status: ExitStatus,
    },
    /// The cluster did not answer.
    #[error("the cluster did not answer: {0}")]
    Client(#[from] ClientError),
    /// The demo failed.
    #[error("demo: {0}")]
    Demo(#[from] BTreeError),
    /// The load generator failed.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// The child processes of a local cluster; dropping it kills and reaps them.
pub(crate) struct Children(Vec<(&'static str, u32, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Children {
    /// The process ids of the replicas.
    pub(crate) fn replica_pids(&self) -> Vec<u32> {
        self.0
            .iter()
            .filter(|(role, _, _)| *role == "replica")
            .map(|(_, _, child)| child.id())
            .collect()
    }

    /// The first child that exited, if any.
    pub(crate) fn exited(&mut self) -> Option<LocalError> {
        self.0
            .iter_mut()
            .find_map(|(role, id, child)| match child.try_wait() {
                Ok(Some(status)) => Some(LocalError::ChildExited {
                    role,
                    id: *id,
                    status,
                }),
                _ => None,
            })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A running local cluster.
pub(crate) struct LocalCluster {
    /// Its configuration.
    pub(crate) config: ClusterConfig,
    /// Where the configuration was written.
    pub(crate) path: PathBuf,
    /// Its processes.
    pub(crate) children: Children,
}

impl LocalCluster {
    /// Writes the configuration and certificates, wipes the data and starts
    /// every process; returns without waiting for them to serve.
    pub(crate) fn start(spec: &ClusterSpec) -> Result<LocalCluster, LocalError> {
        let (config, path) = prepare(spec)?;
        let children = spawn(&path, &config)?;
        Ok(LocalCluster {
            config,
            path,
            children,
        })
    }

    /// Waits until the B+-tree answers a read (replicas preload before they serve).
    pub(crate) async fn ready(&self, timeout: Duration) -> Result<BTreeClient, LocalError> {
        let options = ClientOptions {
            connect_timeout: timeout,
            ..ClientOptions::default()
        };
        let tree = BTreeClient::connect(&self.config, options).await?;
        tree.get(0).await?;
        Ok(tree)
    }
}

/// Builds the configuration, the certificates and a clean data directory.
fn prepare(spec: &ClusterSpec) -> Result<(ClusterConfig, PathBuf), LocalError> {
    std::fs::create_dir_all(&spec.dir).map_err(io(&spec.dir))?;
    let dir = std::fs::canonicalize(&spec.dir).map_err(io(&spec.dir))?;
    let data = dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(io(&data))?;
    }
    let mut cluster = ClusterConfig::local(spec.port, spec.engine, spec.threads);
    cluster.tls.dir = dir.join("certs");
    for a in &mut cluster.acceptors {
        a.storage = spec.storage;
        a.data_dir = Some(data.join(format!("acceptor-{}", a.id)));
    }
    for r in &mut cluster.replicas {
        r.data_dir = Some(data.join(format!("replica-{}", r.id)));
    }
    cluster.service.kind = spec.service;
    cluster.service.preload = spec.preload;
    cluster.service.exec_busy = Some(spec.cost.busy).filter(|d| !d.is_zero());
    cluster.service.exec_wait = Some(spec.cost.wait).filter(|d| !d.is_zero());
    cluster.validate()?;
    if !cluster.tls.dir.join("ca.pem").exists() {
        generate_dev_certs(&cluster.tls.dir, &cluster.nodes(), false)?;
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, cluster.to_toml()).map_err(io(&path))?;
    Ok((cluster, path))
}

fn spawn(config: &Path, cluster: &ClusterConfig) -> Result<Children, LocalError> {
    let exe = std::env::current_exe().map_err(io(Path::new("psmr")))?;
    let mut children = Children(Vec::new());
    let nodes = cluster
        .acceptors
        .iter()
        .map(|a| ("acceptor", a.id))
        .chain(cluster.replicas.iter().map(|r| ("replica", r.id)));
    for (role, id) in nodes {
        // The data directory was wiped: every acceptor is a new member.
        let init: &[&str] = if role == "acceptor" { &["--init"] } else { &[] };
        let child = Command::new(&exe)
            .args([role, "--config"])
            .arg(config)
            .args(["--id", &id.to_string(), "--exit-with-parent"])
            .args(init)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|source| LocalError::Spawn { role, id, source })?;
        children.0.push((role, id, child));
    }
    Ok(children)
}

/// Runs the local cluster until Ctrl-C, `--stop-after`, or a child's death.
pub(crate) fn run(options: LocalOptions) -> Result<(), LocalError> {
    let mut cluster = LocalCluster::start(&options.cluster)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io(Path::new("tokio runtime")))?;
    rt.block_on(serve(&options, &mut cluster))
}

async fn serve(options: &LocalOptions, local: &mut LocalCluster) -> Result<(), LocalError> {
    banner(local);
    let cluster = &local.config;
    if cluster.service.kind == ServiceKind::Btree {
        let tree = local.ready(Duration::from_secs(30)).await?;
        demo(&tree).await?;
        if let Some(duration) = options.load {
            let load = LoadOptions {
                duration,
                warmup: Duration::from_secs(1),
                clients: 4,
                in_flight: 32,
                rate: None,
                dependent: 0.0,
                seed: 1,
                every_replica_answers: false,
                sequential_above: psmr_client::ClientOptions::default().sequential_above,
                timeline: None,
            };
            println!("  load       {}", crate::load::run(cluster, &load).await?);
        }
    }
    println!("serving; Ctrl-C stops the cluster");
    let deadline = options.stop_after.map(|d| tokio::time::Instant::now() + d);
    loop {
        if let Some(e) = local.children.exited() {
            return Err(e);
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    println!("stopping");
    Ok(())
}

fn banner(local: &LocalCluster) {
    let (cluster, config) = (&local.config, &local.path);
    let storage = cluster.acceptors[0].storage.name();
    println!(
        "psmr local: {} acceptors and {} replicas on loopback ({}, K={}, {storage} storage, {} with {} preloaded, execution cost {})",
        cluster.acceptors.len(),
        cluster.replicas.len(),
        cluster.engine().name(),
        cluster.threads(),
        cluster.service.kind.name(),
        cluster.service.preload,
        cluster.service.cost()
    );
    for a in &cluster.acceptors {
        println!("  acceptor   n{} {}", a.id, a.address);
    }
    for r in &cluster.replicas {
        println!("  replica    n{} {}", r.id, r.address);
    }
    println!("  config     {}", config.display());
    if cluster.service.kind == ServiceKind::Btree {
        let exe =
            std::env::current_exe().map_or_else(|_| "psmr".into(), |p| p.display().to_string());
        println!(
            "  try        {exe} client --config {} get 42",
            config.display()
        );
    }
}

async fn demo(tree: &BTreeClient) -> Result<(), BTreeError> {
    let show = |v: Option<u64>| v.map_or_else(|| "(none)".to_string(), |v| v.to_string());
    let previous = tree.insert(43, 4300).await?;
    let value = tree.get(43).await?;
    let scan = tree.scan(40, 3).await?;
    println!(
        "  demo       insert 43 4300 -> previous {}; get 43 -> {}; scan 40 3 -> {:?}",
        show(previous),
        show(value),
        scan.entries
    );
    Ok(())
}
