//! `psmr local`: a whole cluster on loopback, from a built-in configuration.
//!
//! ```text
//! <dir>/psmr-local.lock  held while the cluster runs: a second `psmr local` on it refuses
//! <dir>/cluster.toml     the configuration (3 acceptors, 2 replicas)
//! <dir>/certs/           development CA and certificates, made once and kept
//! <dir>/data/            acceptor storage and replica checkpoints: wiped at each start
//!                        with memory storage or --fresh, kept with durable storage
//! ```
//!
//! Nothing is written before the directory's lock is taken and every port
//! the cluster needs is found free, so a second `psmr local` never harms a
//! running cluster. The acceptors and replicas are child processes of this
//! one (`psmr acceptor` and `psmr replica`). Each reads its standard input
//! and exits when it closes, so the cluster stops when this process stops,
//! however it stops. A child that dies once the cluster served is reported
//! and started again (with a growing delay), or left down with
//! `--no-restart`; the others keep serving.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use psmr_btree::{BTreeClient, BTreeError};
use psmr_client::{ClientError, ClientOptions};
use psmr_core::EngineKind;
use psmr_core::ExecCost;
use psmr_core::cluster::{ClusterConfig, ServiceKind, StorageKind};
use psmr_multicast::net::{TlsError, generate_dev_certs};
use thiserror::Error;

use crate::cli::show_value;
use crate::load::{LoadError, LoadOptions};

/// What a local cluster runs and where (also what `psmr sweep` starts per point).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClusterSpec {
    pub(crate) engine: EngineKind,
    pub(crate) threads: usize,
    pub(crate) storage: StorageKind,
    pub(crate) service: ServiceKind,
    pub(crate) preload: u64,
    /// The B+-tree's fanout.
    pub(crate) fanout: usize,
    /// The B+-tree's bytes per preloaded value.
    pub(crate) value_size: usize,
    /// Execution cost added to every command.
    pub(crate) cost: ExecCost,
    /// Acceptors listen on `port..port+2`, replicas on `port+100..port+101`.
    pub(crate) port: u16,
    /// Configuration, certificates and data.
    pub(crate) dir: PathBuf,
    /// Wipes the data at start even with durable storage (memory storage
    /// always starts fresh: its acceptors keep nothing worth resuming).
    pub(crate) fresh: bool,
}

/// Options of `psmr local`.
pub(crate) struct LocalOptions {
    pub(crate) cluster: ClusterSpec,
    pub(crate) load: Option<Duration>,
    pub(crate) stop_after: Option<Duration>,
    /// Leaves a child that died down instead of starting it again.
    pub(crate) no_restart: bool,
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
    /// Another `psmr local` holds the directory.
    #[error(
        "{dir} is in use by another psmr local ({holder}); stop it first or pass another --dir"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// What the lock file says of its holder.
        holder: String,
    },
    /// A port the cluster needs is taken.
    #[error(
        "{role} n{id}: {proto} {addr} is already in use ({source}); is another cluster running? Pass another --port"
    )]
    PortInUse {
        /// `acceptor` or `replica`.
        role: &'static str,
        /// Its node id.
        id: u32,
        /// `UDP` (QUIC) or `TCP` (metrics).
        proto: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Kept data was written by a cluster with another configuration.
    #[error(
        "{path} describes another cluster than these options (engine, threads, storage or service differ); its data in {data} cannot be resumed: pass --fresh to wipe it, or the options it was made with"
    )]
    OtherCluster {
        /// The old cluster file.
        path: PathBuf,
        /// The data directory.
        data: PathBuf,
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

/// One child process of a local cluster.
struct Child {
    role: &'static str,
    id: u32,
    process: std::process::Child,
    /// Times it was started again.
    restarts: u32,
    /// When it died and is due to be started again, if it is down.
    down_since: Option<(Instant, Duration)>,
    /// Kept down on purpose ([`Children::kill`]): not started again by
    /// [`Children::supervise`].
    held: bool,
}

/// The child processes of a local cluster; dropping it kills and reaps them.
pub(crate) struct Children {
    exe: PathBuf,
    config: PathBuf,
    children: Vec<Child>,
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.process.kill();
            let _ = child.process.wait();
        }
    }
}

/// How long a child that died waits before it is started again, at first;
/// the delay doubles with each death, up to [`MAX_RESTART_DELAY`].
const RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

impl Children {
    /// The process ids of the replicas.
    pub(crate) fn replica_pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .filter(|c| c.role == "replica")
            .map(|c| c.process.id())
            .collect()
    }

    /// The process id of node `id`'s child.
    pub(crate) fn pid(&self, id: u32) -> Option<u32> {
        self.children
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.process.id())
    }

    /// The first child that exited, if any (a sweep's measurement is void then).
    pub(crate) fn exited(&mut self) -> Option<LocalError> {
        self.children
            .iter_mut()
            .find_map(|c| match c.process.try_wait() {
                Ok(Some(status)) => Some(LocalError::ChildExited {
                    role: c.role,
                    id: c.id,
                    status,
                }),
                _ => None,
            })
    }

    fn child(&mut self, id: u32) -> &mut Child {
        let child = self.children.iter_mut().find(|c| c.id == id);
        child.unwrap_or_else(|| panic!("n{id} is not a node of this cluster"))
    }

    /// Kills node `id`'s process at once (SIGKILL) and keeps it down until
    /// [`Children::start_again`].
    pub(crate) fn kill(&mut self, id: u32) {
        let child = self.child(id);
        let _ = child.process.kill();
        let _ = child.process.wait();
        child.held = true;
    }

    /// Sends `signal` to node `id`'s process (SIGSTOP, SIGCONT).
    pub(crate) fn signal(&mut self, id: u32, signal: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.child(id).process.id()).expect("a pid fits an i32");
        // It may have died meanwhile: then supervise reports it.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }

    /// Starts node `id` again after [`Children::kill`].
    pub(crate) fn start_again(&mut self, id: u32) -> Result<(), LocalError> {
        let (exe, config) = (self.exe.clone(), self.config.clone());
        let child = self.child(id);
        child.process = start_child(&exe, &config, child.role, id, false)?;
        child.held = false;
        child.down_since = None;
        Ok(())
    }

    /// How many times children were started again after dying on their own.
    pub(crate) fn restarts(&self) -> u32 {
        self.children.iter().map(|c| c.restarts).sum()
    }

    /// Reports children that died and starts again those whose delay has
    /// passed (unless `restart` is false: then they stay down); children
    /// killed on purpose are left to whoever killed them.
    pub(crate) fn supervise(&mut self, restart: bool) {
        let now = Instant::now();
        for c in self.children.iter_mut().filter(|c| !c.held) {
            match c.down_since {
                None => {
                    if let Ok(Some(status)) = c.process.try_wait() {
                        let delay = RESTART_DELAY
                            .saturating_mul(1 << c.restarts.min(5))
                            .min(MAX_RESTART_DELAY);
                        if restart {
                            println!(
                                "{} n{} exited ({status}); starting it again in {delay:?}",
                                c.role, c.id
                            );
                        } else {
                            println!(
                                "{} n{} exited ({status}); left down (--no-restart)",
                                c.role, c.id
                            );
                        }
                        c.down_since = Some((now, delay));
                    }
                }
                Some((since, delay)) if restart && now >= since + delay => {
                    // Its data directory exists now: a restart, not a new member.
                    match start_child(&self.exe, &self.config, c.role, c.id, false) {
                        Ok(process) => {
                            c.process = process;
                            c.restarts += 1;
                            c.down_since = None;
                            println!(
                                "{} n{} started again (pid {}, restart {})",
                                c.role,
                                c.id,
                                c.process.id(),
                                c.restarts
                            );
                        }
                        Err(e) => {
                            println!("{} n{} could not be started again: {e}", c.role, c.id);
                            c.down_since = Some((now, delay));
                        }
                    }
                }
                Some(_) => {}
            }
        }
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
    /// The directory's lock, held while the cluster runs.
    _lock: File,
}

impl LocalCluster {
    /// Takes the directory, checks the ports, writes the configuration and
    /// certificates, wipes the data unless it is kept, and starts every
    /// process; returns without waiting for them to serve.
    pub(crate) fn start(spec: &ClusterSpec) -> Result<LocalCluster, LocalError> {
        LocalCluster::start_edited(spec, |_| {})
    }

    /// As [`LocalCluster::start`], with the built-in configuration changed
    /// by `edit` before it is checked and written.
    pub(crate) fn start_edited(
        spec: &ClusterSpec,
        edit: impl FnOnce(&mut ClusterConfig),
    ) -> Result<LocalCluster, LocalError> {
        let (config, path, lock) = prepare(spec, edit)?;
        let children = spawn(&path, &config)?;
        Ok(LocalCluster {
            config,
            path,
            children,
            _lock: lock,
        })
    }

    /// Waits until the B+-tree answers a read (replicas preload before they serve).
    pub(crate) async fn ready(&self, timeout: Duration) -> Result<BTreeClient, LocalError> {
        ready(&self.config, timeout).await
    }
}

async fn ready(cluster: &ClusterConfig, timeout: Duration) -> Result<BTreeClient, LocalError> {
    let options = ClientOptions {
        connect_timeout: timeout,
        ..ClientOptions::default()
    };
    let tree = BTreeClient::connect(cluster, options).await?;
    tree.get(0).await?;
    Ok(tree)
}

impl Children {
    /// Resolves when a child exits (checked every 100 ms).
    async fn first_exit(&mut self) -> LocalError {
        loop {
            if let Some(e) = self.exited() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The lock file of a local cluster's directory.
const LOCK: &str = "psmr-local.lock";

/// Takes the directory's lock (held until the returned file is dropped,
/// also when this process is killed: the lock is the kernel's).
fn lock(dir: &Path) -> Result<File, LocalError> {
    let path = dir.join(LOCK);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(LocalError::Locked {
                dir: dir.to_path_buf(),
                holder: holder.trim().to_string(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    file.set_len(0).map_err(io(&path))?;
    writeln!(file, "pid {}", std::process::id()).map_err(io(&path))?;
    Ok(file)
}

/// Checks that every address the cluster listens on is free: QUIC (UDP,
/// where the others reach a node and where it binds) and metrics (TCP).
fn check_ports(cluster: &ClusterConfig) -> Result<(), LocalError> {
    for (role, id, addr, metrics) in cluster.endpoints() {
        let listen = cluster.listen_address(psmr_core::proto::NodeId(id));
        let taken = |proto, addr| {
            move |source| LocalError::PortInUse {
                role,
                id,
                proto,
                addr,
                source,
            }
        };
        std::net::UdpSocket::bind(addr).map_err(taken("UDP", addr))?;
        if let Some(listen) = listen.filter(|l| *l != addr) {
            std::net::UdpSocket::bind(listen).map_err(taken("UDP", listen))?;
        }
        std::net::TcpListener::bind(metrics).map_err(taken("TCP", metrics))?;
    }
    Ok(())
}

/// The configuration of `spec` in `dir`.
fn configuration(spec: &ClusterSpec, dir: &Path) -> Result<ClusterConfig, LocalError> {
    let data = dir.join("data");
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
    cluster.service.fanout = spec.fanout;
    cluster.service.value_size = spec.value_size;
    cluster.service.exec_busy = Some(spec.cost.busy).filter(|d| !d.is_zero());
    cluster.service.exec_wait = Some(spec.cost.wait).filter(|d| !d.is_zero());
    cluster.validate()?;
    Ok(cluster)
}

/// Takes the directory, checks the ports, then writes the configuration and
/// (once) the certificates, and wipes the data unless it is kept (durable
/// storage without `fresh`, from a cluster of the same configuration).
fn prepare(
    spec: &ClusterSpec,
    edit: impl FnOnce(&mut ClusterConfig),
) -> Result<(ClusterConfig, PathBuf, File), LocalError> {
    std::fs::create_dir_all(&spec.dir).map_err(io(&spec.dir))?;
    let dir = std::fs::canonicalize(&spec.dir).map_err(io(&spec.dir))?;
    let lock = lock(&dir)?;
    let mut cluster = configuration(spec, &dir)?;
    edit(&mut cluster);
    cluster.validate()?;
    check_ports(&cluster)?;
    let path = dir.join("cluster.toml");
    let data = dir.join("data");
    let keep = spec.storage == StorageKind::Durable && !spec.fresh && data.exists();
    if keep {
        let same = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| ClusterConfig::parse(&text, &path).ok())
            .is_some_and(|old| old == cluster);
        if !same {
            return Err(LocalError::OtherCluster { path, data });
        }
    } else if data.exists() {
        std::fs::remove_dir_all(&data).map_err(io(&data))?;
    }
    if !cluster.tls.dir.join("ca.pem").exists() {
        generate_dev_certs(&cluster.tls.dir, &cluster.nodes(), false)?;
    }
    std::fs::write(&path, cluster.to_toml()).map_err(io(&path))?;
    Ok((cluster, path, lock))
}

/// Starts `psmr <role>` for node `id`; `init`: a new acceptor.
fn start_child(
    exe: &Path,
    config: &Path,
    role: &'static str,
    id: u32,
    init: bool,
) -> Result<std::process::Child, LocalError> {
    let init: &[&str] = if init { &["--init"] } else { &[] };
    Command::new(exe)
        .args([role, "--config"])
        .arg(config)
        .args(["--id", &id.to_string(), "--exit-with-parent"])
        .args(init)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|source| LocalError::Spawn { role, id, source })
}

fn spawn(config: &Path, cluster: &ClusterConfig) -> Result<Children, LocalError> {
    let exe = std::env::current_exe().map_err(io(Path::new("psmr")))?;
    let mut children = Children {
        exe: exe.clone(),
        config: config.to_path_buf(),
        children: Vec::new(),
    };
    let nodes = cluster
        .acceptors
        .iter()
        .map(|a| ("acceptor", a.id, Some(a.data_dir())))
        .chain(cluster.replicas.iter().map(|r| ("replica", r.id, None)));
    for (role, id, data) in nodes {
        // An acceptor whose directory is missing (wiped) is a new member.
        let init = data.is_some_and(|d| !d.exists());
        let process = start_child(&exe, config, role, id, init)?;
        children.children.push(Child {
            role,
            id,
            process,
            restarts: 0,
            down_since: None,
            held: false,
        });
    }
    Ok(children)
}

/// Runs the local cluster until Ctrl-C or `--stop-after`. A child that dies
/// before the cluster first served stops it (its error is on the terminal).
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
        let tree = tokio::select! {
            tree = ready(cluster, Duration::from_secs(30)) => tree?,
            e = local.children.first_exit() => return Err(e),
        };
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
                optimism_below: psmr_client::ClientOptions::default().optimism_below,
                value_size: None,
                timeline: None,
            };
            println!("  load       {}", crate::load::run(cluster, &load).await?);
        }
    }
    println!("serving; Ctrl-C stops the cluster");
    let deadline = options.stop_after.map(|d| tokio::time::Instant::now() + d);
    loop {
        local.children.supervise(!options.no_restart);
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
    for (role, id, addr, metrics) in cluster.endpoints() {
        let pid = local.children.pid(id).unwrap_or(0);
        println!("  {role:<10} n{id} {addr} pid {pid} metrics http://{metrics}/metrics");
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
    let show = |v: Option<Bytes>| v.map_or_else(|| "(none)".to_string(), |v| show_value(&v));
    let previous = tree.insert(43, psmr_btree::value_of(4300, 8)).await?;
    let value = tree.get(43).await?;
    let scan = tree.scan(40, 3).await?;
    let entries: Vec<String> = scan
        .entries
        .iter()
        .map(|(k, v)| format!("({k}, {})", show_value(v)))
        .collect();
    println!(
        "  demo       insert 43 4300 -> previous {}; get 43 -> {}; scan 40 3 -> [{}]",
        show(previous),
        show(value),
        entries.join(", ")
    );
    Ok(())
}
