//! `psmr local` as an operator meets it: a second one never harms the
//! first, a child that dies is started again while the others serve, and
//! durable storage keeps its data across runs unless `--fresh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{psmr, run_psmr};

const QUICK: Duration = Duration::from_secs(30);

/// A first port with every port `psmr local` needs free (UDP and TCP at
/// PORT..PORT+2 and PORT+100..PORT+101), a moment ago.
fn free_base() -> u16 {
    common::free_base(&[0, 1, 2, 100, 101])
}

/// A `psmr local` running in the background; its standard output goes to a
/// file. Dropping it kills it (its children exit with it).
struct Local {
    child: Child,
    out: PathBuf,
}

impl Local {
    fn start(dir: &Path, port: u16, extra: &[&str]) -> Local {
        let out = dir.with_extension(format!("{}.out", std::process::id()));
        let file = std::fs::File::create(&out).expect("an output file");
        let child = psmr()
            .args([
                "local",
                "--preload",
                "1000",
                "--stop-after",
                "120s",
                "--dir",
            ])
            .arg(dir)
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("psmr local starts");
        Local { child, out }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.output().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} from psmr local: {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of node `id`, from the banner.
    fn pid(&self, id: u32) -> u32 {
        let node = format!(" n{id} ");
        self.output()
            .lines()
            .find(|l| l.contains(&node) && l.contains(" pid "))
            .and_then(|l| {
                l.split(" pid ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("the banner names every child's pid")
    }

    /// Stops it with Ctrl-C and waits.
    fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + QUICK;
        while self.child.try_wait().expect("waitable").is_none() {
            assert!(Instant::now() < deadline, "psmr local did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

fn client(dir: &Path, args: &[&str]) -> String {
    let config = dir.join("cluster.toml");
    let mut all = vec!["client", "--config", config.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    let out = run_psmr(&all, QUICK);
    assert!(out.status.success(), "psmr client {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[test]
fn a_second_psmr_local_never_harms_the_first_and_a_dead_child_is_started_again() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("cluster");
    let port = free_base();
    let first = Local::start(&dir, port, &[]);
    first.wait_for("serving");
    let ca = std::fs::read(dir.join("certs/ca.pem")).expect("the CA");
    // The same directory: refused at once, naming the holder.
    let started = Instant::now();
    let args = [
        "local",
        "--dir",
        dir.to_str().expect("utf-8"),
        "--port",
        &(port + 3).to_string(),
    ];
    let out = run_psmr(&args, QUICK);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("in use by another psmr local"), "{stderr}");
    // The same ports, another directory: refused at once, naming the port.
    let other = tmp.path().join("other");
    let args = [
        "local",
        "--dir",
        other.to_str().expect("utf-8"),
        "--port",
        &port.to_string(),
    ];
    let out = run_psmr(&args, QUICK);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("already in use") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusals took {:?}",
        started.elapsed()
    );
    assert!(
        !other.join("certs").exists(),
        "the refused run wrote certificates"
    );
    assert_eq!(
        std::fs::read(dir.join("certs/ca.pem")).expect("the CA"),
        ca,
        "the CA was replaced"
    );
    assert_eq!(
        client(&dir, &["get", "42"]),
        "21",
        "the first cluster serves"
    );
    // A child killed: reported, started again, and the cluster serves meanwhile.
    let acceptor = first.pid(2);
    assert!(alive(acceptor));
    let _ = std::process::Command::new("kill")
        .args(["-9", &acceptor.to_string()])
        .status();
    assert_eq!(client(&dir, &["insert", "1001", "5"]), "previous: (none)");
    first.wait_for("acceptor n2 started again");
    assert_eq!(client(&dir, &["get", "1001"]), "5");
    let pids: Vec<u32> = [1, 3, 101, 102]
        .into_iter()
        .map(|id| first.pid(id))
        .collect();
    first.stop();
    // Each child exits when its standard input closes with psmr local.
    let deadline = Instant::now() + QUICK;
    while let Some(pid) = pids.iter().find(|&&pid| alive(pid)) {
        assert!(Instant::now() < deadline, "child {pid} outlived psmr local");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn durable_storage_keeps_its_data_across_runs_unless_fresh() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("cluster");
    let port = free_base();
    let durable = ["--storage", "durable"];
    let run = Local::start(&dir, port, &durable);
    run.wait_for("serving");
    assert_eq!(client(&dir, &["insert", "1001", "5"]), "previous: (none)");
    run.stop();
    let run = Local::start(&dir, port, &durable);
    run.wait_for("serving");
    assert_eq!(client(&dir, &["get", "1001"]), "5", "the data was not kept");
    run.stop();
    // Other options than the data was written with: refused, nothing wiped.
    let args = [
        "local",
        "--dir",
        dir.to_str().expect("utf-8"),
        "--port",
        &port.to_string(),
        "--storage",
        "durable",
        "--engine",
        "smr",
    ];
    let out = run_psmr(&args, QUICK);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("--fresh"), "{stderr}");
    let mut fresh = durable.to_vec();
    fresh.push("--fresh");
    let run = Local::start(&dir, port, &fresh);
    run.wait_for("serving");
    assert_eq!(
        client(&dir, &["get", "1001"]),
        "(none)",
        "--fresh kept the data"
    );
    run.stop();
}

/// Logs written to a file (not a terminal) carry no colour codes.
#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let port = free_base().to_string();
    let out = psmr()
        .args([
            "local",
            "--preload",
            "10",
            "--stop-after",
            "1s",
            "--port",
            &port,
            "--dir",
        ])
        .arg(tmp.path().join("cluster"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("psmr local runs");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{logs}");
    assert!(logs.contains("listening"), "{logs}");
    assert!(!logs.contains('\x1b'), "{logs}");
}
