//! `psmr local`: a whole cluster on loopback, from a built-in configuration.
//!
//! ```text
//! <dir>/cluster.toml    the configuration (3 acceptors, 2 replicas)
//! <dir>/certs/          development CA and certificates, regenerated each run
//! <dir>/data/           acceptor storage, wiped each run
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
use psmr_multicast::net::{TlsError, generate_dev_certs};
use psmr_replica::cluster::{ClusterConfig, ServiceKind, StorageKind};
use thiserror::Error;

use crate::cli::{EngineArg, LocalArgs, ServiceArg, StorageArg};
use crate::load::{LoadError, LoadOptions};

/// Options of `psmr local`.
pub(crate) struct LocalOptions {
    engine: EngineArg,
    threads: usize,
    storage: StorageArg,
    service: ServiceArg,
    preload: u64,
    port: u16,
    dir: PathBuf,
    load: Option<Duration>,
    stop_after: Option<Duration>,
}

impl From<LocalArgs> for LocalOptions {
    fn from(a: LocalArgs) -> Self {
        LocalOptions {
            engine: a.engine,
            threads: a.threads,
            storage: a.storage,
            service: a.service,
            preload: a.preload,
            port: a.port,
            dir: a.dir,
            load: a.load,
            stop_after: a.stop_after,
        }
    }
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
    Cluster(#[from] psmr_replica::cluster::ClusterError),
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

struct Children(Vec<(&'static str, u32, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Children {
    /// The first child that exited, if any.
    fn exited(&mut self) -> Option<LocalError> {
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

/// Builds the configuration, the certificates and a clean data directory.
fn prepare(options: &LocalOptions) -> Result<(ClusterConfig, PathBuf), LocalError> {
    std::fs::create_dir_all(&options.dir).map_err(io(&options.dir))?;
    let dir = std::fs::canonicalize(&options.dir).map_err(io(&options.dir))?;
    let data = dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(io(&data))?;
    }
    let mut cluster = ClusterConfig::local(options.port, options.engine.name(), options.threads);
    cluster.tls.dir = dir.join("certs");
    for a in &mut cluster.acceptors {
        a.storage = options.storage.kind();
        a.data_dir = Some(data.join(format!("acceptor-{}", a.id)));
    }
    cluster.service.kind = options.service.kind();
    cluster.service.preload = options.preload;
    cluster.validate()?;
    generate_dev_certs(&cluster.tls.dir, &cluster.nodes())?;
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
        let child = Command::new(&exe)
            .args([role, "--config"])
            .arg(config)
            .args(["--id", &id.to_string(), "--exit-with-parent"])
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
    let (cluster, config) = prepare(&options)?;
    let mut children = spawn(&config, &cluster)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io(Path::new("tokio runtime")))?;
    rt.block_on(serve(&options, &cluster, &config, &mut children))
}

async fn serve(
    options: &LocalOptions,
    cluster: &ClusterConfig,
    config: &Path,
    children: &mut Children,
) -> Result<(), LocalError> {
    banner(options, cluster, config);
    if cluster.service.kind == ServiceKind::Btree {
        let client_options = ClientOptions {
            connect_timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        let tree = BTreeClient::connect(cluster, client_options).await?;
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
            };
            println!("  load       {}", crate::load::run(cluster, &load).await?);
        }
    }
    println!("serving; Ctrl-C stops the cluster");
    let deadline = options.stop_after.map(|d| tokio::time::Instant::now() + d);
    loop {
        if let Some(e) = children.exited() {
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

fn banner(options: &LocalOptions, cluster: &ClusterConfig, config: &Path) {
    let storage = match options.storage.kind() {
        StorageKind::Memory => "memory",
        StorageKind::Durable => "durable",
    };
    println!(
        "psmr local: {} acceptors and {} replicas on loopback ({}, K={}, {storage} storage, {} with {} preloaded)",
        cluster.acceptors.len(),
        cluster.replicas.len(),
        cluster.engine().name(),
        cluster.threads(),
        cluster.service.kind.name(),
        cluster.service.preload
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
