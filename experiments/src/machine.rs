//! Facts about the machine a run measured, and the CPU time of processes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What every result file records about where it was measured.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    /// Cores this process may use.
    pub(crate) cores: usize,
    /// `model name` of /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// The kernel release.
    pub(crate) kernel: String,
    /// The git commit of the working directory, marked when it has changes.
    pub(crate) commit: String,
}

impl Machine {
    /// Looks the facts up; unknown ones read "unknown".
    pub(crate) fn describe() -> Machine {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown CPU".to_string(), |(_, m)| m.trim().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |k| k.trim().to_string());
        Machine {
            cores,
            cpu_model,
            kernel,
            commit: commit(),
        }
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn commit() -> String {
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{hash} (with uncommitted changes)"),
            _ => hash,
        },
        None => "unknown (not a git checkout)".to_string(),
    }
}

/// CPU time (user + system) that process `pid`'s live threads have used,
/// from the scheduler's per-thread accounting in nanoseconds; `None` when the
/// process is gone.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let mut total = 0u64;
    for task in std::fs::read_dir(tasks).ok()?.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(Duration::from_nanos(total))
}

/// The CPU times of `pids`, in order (zero for a process that is gone).
pub(crate) fn cpu_times(pids: &[u32]) -> Vec<Duration> {
    pids.iter()
        .map(|&p| cpu_time(p).unwrap_or_default())
        .collect()
}

/// Mean CPU use between two samples of the same processes, in percent of one core.
pub(crate) fn cpu_percent(before: &[Duration], after: &[Duration], elapsed: Duration) -> f64 {
    if before.is_empty() || elapsed.is_zero() {
        return 0.0;
    }
    let used: f64 = before
        .iter()
        .zip(after)
        .map(|(b, a)| a.saturating_sub(*b).as_secs_f64())
        .sum();
    100.0 * used / elapsed.as_secs_f64() / before.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_uses_its_cpu_time_and_the_percent_follows() {
        let me = std::process::id();
        let before = cpu_times(&[me]);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = cpu_times(&[me]);
        assert!(after[0] > before[0], "{before:?} -> {after:?}");
        let pct = cpu_percent(&before, &after, start.elapsed());
        assert!(pct > 1.0, "a spinning thread used {pct} % of a core");
        assert_eq!(cpu_time(u32::MAX), None);
        let m = Machine::describe();
        assert!(m.cores >= 1);
    }
}
