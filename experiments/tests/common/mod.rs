//! A cluster of real `psmr` processes on loopback, for end-to-end tests.
//!
//! Every process is a child of the test; [`TestCluster`]'s `Drop` kills and
//! reaps them all, and prints the tail of each process's log when the test
//! is failing. Ports are chosen by the OS, so tests can run in parallel.

#![allow(dead_code, unreachable_pub, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use psmr_btree::{BTreeClient, value_id, value_of};
use psmr_client::ClientOptions;
use psmr_core::EngineKind;
use psmr_core::cluster::{ClusterConfig, PolicyName, StorageKind};

/// The `psmr` binary under test.
pub fn psmr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_psmr"))
}

/// A first port PORT with PORT+offset free for every offset (UDP and TCP),
/// a moment ago.
pub fn free_base(offsets: &[u16]) -> u16 {
    let free = |port: u16| {
        UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    };
    // Tests run in parallel: each call starts its search far from the
    // others' (and from other test processes').
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let spread = (std::process::id() % 1_000) * 37 + call * 1_009;
    let start = 20_000 + (spread % 38_000) as u16;
    (start..60_000)
        .step_by(7)
        .find(|&p| offsets.iter().all(|&o| free(p + o)))
        .expect("a free range of ports")
}

/// Runs `psmr` with `args` to completion (bounded by `timeout`).
///
/// A thread reads the child's output to its end (the child exited, or
/// closed its pipes); this thread waits for that with the deadline and
/// kills the child if it passes.
pub fn run_psmr(args: &[&str], timeout: Duration) -> Output {
    let mut child = psmr()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psmr starts");
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let read = |pipe: Option<&mut dyn std::io::Read>| {
            let mut bytes = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        };
        let err = std::thread::scope(|s| {
            let err = s.spawn(|| read(stderr.as_mut().map(|p| p as &mut dyn std::io::Read)));
            let out = read(stdout.as_mut().map(|p| p as &mut dyn std::io::Read));
            (out, err.join().unwrap_or_default())
        });
        let _ = done.send(err);
    });
    let (stdout, stderr) = match finished.recv_timeout(timeout) {
        Ok(output) => output,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = finished.recv().unwrap_or_default();
            panic!(
                "psmr {args:?} did not finish within {timeout:?}: {}{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
    };
    let status = child.wait().expect("reaped");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The runtime end-to-end tests drive their clients on (two workers, as
/// the machine has two cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Polls `done` until it holds; panics with `what()` if it does not within `within`.
pub async fn eventually(
    within: Duration,
    mut done: impl FnMut() -> bool,
    what: impl FnOnce() -> String,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} within {within:?}",
            what()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` distinct loopback addresses with ports free a moment ago, for UDP
/// (QUIC) and TCP (each node's metrics default to the same port).
pub fn free_addresses(n: usize) -> Vec<SocketAddr> {
    let mut held = Vec::new();
    while held.len() < n {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let addr = udp.local_addr().expect("local address");
        if let Ok(tcp) = std::net::TcpListener::bind(addr) {
            held.push((udp, tcp, addr));
        }
    }
    held.into_iter().map(|(_, _, addr)| addr).collect()
}

/// What kind of cluster to start.
pub struct Spec {
    pub engine: EngineKind,
    pub threads: usize,
    pub storage: StorageKind,
    /// Keys preloaded: every even key of `[0, 2 * preload)` with value `key / 2`.
    pub preload: u64,
    /// `classes`: the reconfiguration policy.
    pub policy: PolicyName,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            engine: EngineKind::OptPsmr,
            threads: 2,
            storage: StorageKind::Memory,
            preload: 1_000,
            policy: PolicyName::Fixed,
        }
    }
}

/// A running cluster of `psmr acceptor` and `psmr replica` processes.
pub struct TestCluster {
    pub cluster: ClusterConfig,
    pub config: PathBuf,
    dir: tempfile::TempDir,
    children: BTreeMap<u32, Child>,
    /// Acceptors started once already (later starts are restarts, not --init).
    initialized: std::collections::BTreeSet<u32>,
}

impl TestCluster {
    /// Writes the configuration and certificates; `edit` may change the
    /// configuration before it is written. Starts nothing.
    pub fn prepare(spec: &Spec, edit: impl FnOnce(&mut ClusterConfig)) -> TestCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut cluster = ClusterConfig::local(7100, spec.engine, spec.threads);
        let addresses = free_addresses(cluster.acceptors.len() + cluster.replicas.len());
        let mut next = addresses.into_iter();
        for a in &mut cluster.acceptors {
            a.address = next.next().expect("enough addresses");
            a.storage = spec.storage;
            a.data_dir = Some(dir.path().join(format!("acceptor-{}", a.id)));
        }
        for r in &mut cluster.replicas {
            r.address = next.next().expect("enough addresses");
            r.policy = spec.policy;
            r.data_dir = Some(dir.path().join(format!("replica-{}", r.id)));
        }
        cluster.tls.dir = dir.path().join("certs");
        cluster.service.preload = spec.preload;
        edit(&mut cluster);
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, cluster.to_toml()).expect("write the cluster file");
        let out = run_psmr(
            &["certs", "--config", path_str(&config)],
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "psmr certs failed: {out:?}");
        TestCluster {
            cluster,
            config,
            dir,
            children: BTreeMap::new(),
            initialized: Default::default(),
        }
    }

    /// Prepares and starts every node.
    pub fn start(spec: &Spec) -> TestCluster {
        let mut cluster = TestCluster::prepare(spec, |_| {});
        cluster.start_all();
        cluster
    }

    /// Starts every node that is not running.
    pub fn start_all(&mut self) {
        for id in self.nodes() {
            if !self.children.contains_key(&id) {
                self.spawn(id);
            }
        }
    }

    /// Every node of the cluster file.
    pub fn nodes(&self) -> Vec<u32> {
        self.cluster.nodes().iter().map(|n| n.0).collect()
    }

    /// Starts node `id` (an acceptor or a replica of the file).
    pub fn spawn(&mut self, id: u32) {
        assert!(!self.children.contains_key(&id), "node {id} already runs");
        let role = if self.cluster.acceptors.iter().any(|a| a.id == id) {
            "acceptor"
        } else {
            "replica"
        };
        let first = role == "acceptor" && self.initialized.insert(id);
        let init: &[&str] = if first { &["--init"] } else { &[] };
        let log = self.log(id);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the node's log");
        let child = psmr()
            .args([role, "--config", path_str(&self.config)])
            .args(["--id", &id.to_string(), "--exit-with-parent"])
            .args(init)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("psmr starts");
        self.children.insert(id, child);
    }

    /// Waits up to `within` for node `id` to exit by itself; its status.
    pub async fn wait_exit(&mut self, id: u32, within: Duration) -> std::process::ExitStatus {
        let mut child = self.children.remove(&id).expect("node runs");
        let mut status = None;
        let exited = || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        };
        eventually(within, exited, || format!("node {id} did not exit")).await;
        status.expect("it exited")
    }

    /// Kills node `id` with SIGKILL and reaps it.
    pub fn kill(&mut self, id: u32) {
        let mut child = self.children.remove(&id).expect("node runs");
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) node `id`: a paused process
    /// keeps its sockets but answers nothing.
    pub fn signal(&mut self, id: u32, signal: &str) {
        let pid = self.children.get(&id).expect("node runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Whether every started node still runs.
    pub fn assert_running(&mut self) {
        for (id, child) in &mut self.children {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("node {id} exited: {status}");
            }
        }
    }

    /// A B+-tree client with a patient connection timeout.
    pub async fn client(&self) -> BTreeClient {
        self.client_with(ClientOptions::default()).await
    }

    /// A B+-tree client with `options` and a patient connection timeout.
    pub async fn client_with(&self, options: ClientOptions) -> BTreeClient {
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(60),
            ..options
        };
        BTreeClient::connect(&self.cluster, options)
            .await
            .expect("the cluster answers")
    }

    /// The file node `id` logs to.
    pub fn log(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("n{id}.log"))
    }

    /// Waits up to `within` for node `id` to log a line containing `text`.
    pub async fn wait_for_log(&self, id: u32, text: &str, within: Duration) {
        self.wait_for_logged(id, text, 1, within).await;
    }

    /// How many lines of node `id`'s log (all its runs) contain `text`.
    pub fn logged(&self, id: u32, text: &str) -> usize {
        let log = std::fs::read_to_string(self.log(id)).unwrap_or_default();
        log.lines().filter(|l| l.contains(text)).count()
    }

    /// Waits until `times` lines of node `id`'s log contain `text`.
    pub async fn wait_for_logged(&self, id: u32, text: &str, times: usize, within: Duration) {
        let logged = || self.logged(id, text) >= times;
        let missing = || format!("node {id} did not log {text:?} {times} times");
        eventually(within, logged, missing).await;
    }

    /// The directory of the cluster's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for id in self.cluster.nodes() {
                let text = std::fs::read_to_string(self.log(id.0)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                eprintln!("--- last lines of node {} ---\n{}", id.0, tail.join("\n"));
            }
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// The preloaded contents of a B+-tree of `preload` keys.
pub fn preloaded(preload: u64) -> BTreeMap<u64, u64> {
    (0..preload).map(|i| (2 * i, i)).collect()
}

/// The value the tests write for `n`: 8 bytes, as the preload stores its values.
pub fn v(n: u64) -> Bytes {
    value_of(n, 8)
}

/// Entries with their values read back as the numbers [`v`] wrote.
pub fn numbers(entries: &[(u64, Bytes)]) -> Vec<(u64, u64)> {
    entries.iter().map(|(k, v)| (*k, value_id(v))).collect()
}

/// Reads the whole tree through scans, values as numbers.
pub async fn scan_all(tree: &BTreeClient) -> BTreeMap<u64, u64> {
    let mut all = BTreeMap::new();
    let mut from = 0;
    loop {
        let scan = tree.scan(from, 1024).await.expect("scan");
        let Some(&(last, _)) = scan.entries.last() else {
            return all;
        };
        all.extend(numbers(&scan.entries));
        match last.checked_add(1) {
            Some(next) => from = next,
            None => return all,
        }
    }
}
