//! The real `DurableLog` over a file layer that injects the faults a disk
//! and an operating system produce (docs/testing.md):
//!
//! - a process kill keeps the page cache: written but unsynced bytes survive;
//! - a power loss keeps only what was synced, plus a prefix of each file's
//!   unsynced bytes cut at any byte, sometimes with a hole of zeros inside
//!   it (pages written out of order); directory entries not synced vanish;
//! - a bit flip anywhere (media rot);
//! - a process that dies in the middle of a write, or between the write and
//!   its fdatasync.
//!
//! Every seed runs a random history of appends, syncs and faults, and checks
//! after each restart: every acknowledged record is recovered (or recovery
//! says that votes may be lost, and still keeps every acknowledged promise
//! and vote bound, or refuses to start naming file and offset, after a flip);
//! and what recovery returned survives a power loss right after it.
//! `PSMR_STORAGE_SEEDS=N` runs N seeds (default 300); a failure prints its
//! seed, and `PSMR_STORAGE_SEED=S` replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use psmr_core::proto::{Ballot, Command, CommandId, NodeId, ProposerId, RingId, Value};
use psmr_multicast::storage::fs::{AppendFile, FileSystem};
use psmr_multicast::storage::{DurableLog, LogOptions, OpenMode, Record, StorageError};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Default)]
struct File {
    /// What a reader sees (the page cache).
    cache: Vec<u8>,
    /// What survives a power loss.
    durable: Vec<u8>,
}

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, File>,
    /// Directory entries: (seen, durable).
    dirs: BTreeMap<PathBuf, (BTreeSet<String>, BTreeSet<String>)>,
    /// The next write fails after applying this many of its bytes (the
    /// process dies in the middle of it); `Some(usize::MAX)`: the write
    /// completes and the fdatasync after it fails.
    die_in_write: Option<usize>,
    died: bool,
}

/// A file system with a page cache, for one simulated machine.
#[derive(Clone, Default)]
struct SimFs(Arc<Mutex<State>>);

fn name_of(path: &Path) -> (PathBuf, String) {
    let dir = path.parent().expect("a parent").to_path_buf();
    let name = path
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    (dir, name)
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file")
}

impl SimFs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("one thread")
    }

    /// The machine loses power: unsynced bytes are lost but a prefix, cut at
    /// any byte, sometimes with a hole of zeros; unsynced directory entries
    /// are lost.
    fn power_loss(&self, rng: &mut ChaCha8Rng) {
        let mut s = self.state();
        for file in s.files.values_mut() {
            let synced = file.durable.len().min(file.cache.len());
            let unsynced = &file.cache[synced..];
            let kept = rng.random_range(0..=unsynced.len());
            let mut content = file.durable[..synced].to_vec();
            content.extend_from_slice(&unsynced[..kept]);
            if kept > 512 && rng.random_bool(0.3) {
                let page = synced.div_ceil(512) * 512 + 512 * rng.random_range(0..kept / 512);
                let end = (page + 512).min(content.len());
                if page < end {
                    content[page..end].fill(0);
                }
            }
            file.cache = content.clone();
            file.durable = content;
        }
        for (seen, durable) in s.dirs.values_mut() {
            *seen = durable.clone();
        }
        let State { files, dirs, .. } = &mut *s;
        files.retain(|path, _| {
            let (dir, name) = name_of(path);
            dirs.get(&dir).is_some_and(|(seen, _)| seen.contains(&name))
        });
    }

    /// A bit of some file rots (on disk and in the cache alike).
    fn flip(&self, rng: &mut ChaCha8Rng) -> Option<(PathBuf, usize)> {
        let mut s = self.state();
        let logs: Vec<PathBuf> = s
            .files
            .iter()
            .filter(|(p, f)| p.extension().is_some_and(|e| e == "log") && !f.cache.is_empty())
            .map(|(p, _)| p.clone())
            .collect();
        if logs.is_empty() {
            return None;
        }
        let path = logs[rng.random_range(0..logs.len())].clone();
        let file = s.files.get_mut(&path).expect("listed");
        let at = rng.random_range(0..file.cache.len());
        let bit = 1u8 << rng.random_range(0..8);
        file.cache[at] ^= bit;
        if at < file.durable.len() {
            file.durable[at] ^= bit;
        }
        Some((path, at))
    }
}

struct SimFile {
    fs: SimFs,
    path: PathBuf,
}

impl AppendFile for SimFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.fs.state();
        if s.died {
            return Err(io::Error::other("the process died"));
        }
        let die = s.die_in_write.take();
        let file = s.files.get_mut(&self.path).ok_or_else(gone)?;
        match die {
            Some(n) if n < bytes.len() => {
                file.cache.extend_from_slice(&bytes[..n]);
                s.died = true;
                Err(io::Error::other("the process died in a write"))
            }
            Some(_) => {
                file.cache.extend_from_slice(bytes);
                s.died = true;
                Ok(())
            }
            None => {
                file.cache.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut s = self.fs.state();
        if s.died {
            return Err(io::Error::other("the process died before fdatasync"));
        }
        let file = s.files.get_mut(&self.path).ok_or_else(gone)?;
        file.durable = file.cache.clone();
        Ok(())
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state();
        let mut at = Some(dir);
        while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
            s.dirs.entry(d.to_path_buf()).or_default();
            if let (Some(parent), Some(name)) = (d.parent(), d.file_name()) {
                let name = name.to_string_lossy().into_owned();
                let (seen, durable) = s.dirs.entry(parent.to_path_buf()).or_default();
                seen.insert(name.clone());
                durable.insert(name);
            }
            at = d.parent();
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.state();
        s.dirs.contains_key(path) || s.files.contains_key(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.state();
        let (seen, _) = s.dirs.get(dir).ok_or_else(gone)?;
        Ok(seen.iter().cloned().collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.state();
        Ok(s.files.get(path).ok_or_else(gone)?.cache.clone())
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.state();
        let (dir, name) = name_of(path);
        s.dirs.get_mut(&dir).ok_or_else(gone)?.0.insert(name);
        let file = File {
            cache: bytes.to_vec(),
            durable: bytes.to_vec(),
        };
        s.files.insert(path.to_path_buf(), file);
        Ok(())
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        if !self.state().files.contains_key(path) {
            return Err(gone());
        }
        Ok(Box::new(SimFile {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        let file = s.files.get_mut(path).ok_or_else(gone)?;
        file.durable = file.cache.clone();
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.state();
        let file = s.files.get_mut(path).ok_or_else(gone)?;
        file.cache.truncate(len as usize);
        file.durable = file.cache.clone();
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        let (dir, name) = name_of(path);
        s.dirs.get_mut(&dir).ok_or_else(gone)?.0.remove(&name);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state();
        let (seen, durable) = s.dirs.get_mut(dir).ok_or_else(gone)?;
        *durable = seen.clone();
        Ok(())
    }
}

const DIR: &str = "/acceptor/log";

fn options() -> LogOptions {
    LogOptions {
        // Small segments: histories cross several, and the roll's seal.
        segment_bytes: 8 * 1024,
        ..LogOptions::default()
    }
}

fn open(fs: &SimFs, mode: OpenMode) -> Result<(DurableLog, Vec<Record>, bool), StorageError> {
    let mut records = Vec::new();
    let (log, report) =
        DurableLog::open_on(Arc::new(fs.clone()), Path::new(DIR), options(), mode, |r| {
            records.push(r)
        })?;
    Ok((log, records, report.votes_may_be_lost()))
}

fn random_record(rng: &mut ChaCha8Rng, next: &mut u64) -> Record {
    let ring = RingId(rng.random_range(0..2));
    let ballot = Ballot {
        round: rng.random_range(1..50),
        node: NodeId(1),
    };
    match rng.random_range(0..10) {
        0 => Record::Promise { ring, ballot },
        1 => Record::VoteBound {
            ring,
            bound: rng.random_range(0..1000),
        },
        _ => {
            *next += 1;
            let mut payload = vec![0u8; rng.random_range(0..1500)];
            rng.fill(&mut payload[..]);
            let command = Command {
                id: CommandId {
                    proposer: ProposerId(9),
                    seq: *next,
                },
                low_water: 0,
                payload: Bytes::from(payload),
            };
            Record::Accept {
                ring,
                instance: *next,
                ballot,
                value: Value::batch(vec![command]),
            }
        }
    }
}

/// Prints a step of the history when `PSMR_STORAGE_TRACE` is set.
fn trace(line: impl FnOnce() -> String) {
    if std::env::var_os("PSMR_STORAGE_TRACE").is_some() {
        eprintln!("{}", line());
    }
}

fn sealed(r: &Record) -> bool {
    matches!(r, Record::Promise { .. } | Record::VoteBound { .. })
}

/// What a restart must give back, given what was appended and acknowledged.
fn check_recovery(
    seed: u64,
    recovered: &[Record],
    appended: &[Record],
    acked: usize,
    votes_lost: bool,
) {
    assert!(
        recovered.len() <= appended.len() && recovered[..] == appended[..recovered.len()],
        "seed={seed}: recovered records that were never appended, or out of order"
    );
    if votes_lost {
        let last_sealed = appended[..acked]
            .iter()
            .rposition(sealed)
            .map_or(0, |i| i + 1);
        assert!(
            recovered.len() >= last_sealed,
            "seed={seed}: an acknowledged promise or vote bound was lost ({} of {last_sealed} kept)",
            recovered.len()
        );
    } else {
        assert!(
            recovered.len() >= acked,
            "seed={seed}: {} acknowledged records, {} recovered, and recovery did not say votes may be lost",
            acked,
            recovered.len()
        );
    }
}

/// Outcomes of one seed, for the totals printed at the end.
#[derive(Default, Debug)]
struct Tally {
    restarts: u32,
    torn: u32,
    votes_lost: u32,
    corrupt: u32,
}

fn run_seed(seed: u64, tally: &mut Tally) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fs = SimFs::default();
    let (mut log, _, _) = open(&fs, OpenMode::Init).expect("init");
    let (mut appended, mut acked, mut next) = (Vec::new(), 0usize, 0u64);
    let mut flipped = false;
    for _ in 0..rng.random_range(20..80) {
        match rng.random_range(0..20) {
            0..=13 => {
                for _ in 0..rng.random_range(1..6) {
                    let record = random_record(&mut rng, &mut next);
                    log.append(&record).expect("append buffers");
                    appended.push(record);
                }
                if rng.random_bool(0.1) {
                    let cut = rng.random_range(0..4000);
                    fs.state().die_in_write = Some(if rng.random_bool(0.5) {
                        cut
                    } else {
                        usize::MAX
                    });
                }
                if log.sync().is_ok() {
                    acked = appended.len();
                    continue;
                }
            }
            14 | 15 => {}
            16..=18 => fs.power_loss(&mut rng),
            _ => {
                if let Some((path, at)) = fs.flip(&mut rng) {
                    trace(|| format!("flip {} at {at}", path.display()));
                    flipped = true;
                }
            }
        }
        // The process dies (or was killed): restart it, perhaps after a power loss.
        drop(log);
        {
            let mut s = fs.state();
            s.died = false;
            s.die_in_write = None;
        }
        if rng.random_bool(0.5) {
            fs.power_loss(&mut rng);
        }
        tally.restarts += 1;
        trace(|| format!("restart: {} appended, {acked} acknowledged", appended.len()));
        let (reopened, recovered, votes_lost) = match open(&fs, OpenMode::Existing) {
            Ok(opened) => opened,
            Err(StorageError::Corrupt { path, offset, .. }) => {
                assert!(
                    flipped,
                    "seed={seed}: corruption reported without any bit flip"
                );
                let len = fs.state().files.get(&path).map_or(0, |f| f.cache.len());
                assert!(
                    (offset as usize) < len.max(1),
                    "seed={seed}: corruption at {offset} beyond {} ({len} bytes)",
                    path.display()
                );
                tally.corrupt += 1;
                return;
            }
            Err(e) => panic!("seed={seed}: recovery failed: {e}"),
        };
        if votes_lost && !flipped {
            tally.torn += 1;
        }
        tally.votes_lost += u32::from(votes_lost);
        check_recovery(seed, &recovered, &appended, acked, votes_lost);
        // Recovery made what it returned durable: a power loss now loses nothing.
        drop(reopened);
        fs.power_loss(&mut rng);
        let (reopened, again, _) = open(&fs, OpenMode::Existing)
            .unwrap_or_else(|e| panic!("seed={seed}: recovery after recovery failed: {e}"));
        assert_eq!(
            again.len(),
            recovered.len(),
            "seed={seed}: records recovery returned did not survive a power loss"
        );
        log = reopened;
        appended = recovered;
        acked = appended.len();
        flipped = false;
    }
}

#[test]
fn every_acknowledged_record_survives_kills_power_loss_torn_writes_and_is_never_silently_lost() {
    let seeds: Vec<u64> = match std::env::var("PSMR_STORAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => {
            let n = std::env::var("PSMR_STORAGE_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(300);
            (0..n).collect()
        }
    };
    let mut tally = Tally::default();
    for &seed in &seeds {
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_seed(seed, &mut tally)));
        if let Err(panic) = result {
            eprintln!(
                "failed: seed={seed} (replay: PSMR_STORAGE_SEED={seed} cargo test -p psmr-multicast --test storage_faults)"
            );
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!("{} seeds: {tally:?}", seeds.len());
    assert!(tally.restarts > seeds.len() as u32, "the histories restart");
    assert!(
        tally.corrupt > 0 || seeds.len() < 50,
        "some flips were caught as corruption"
    );
}

/// The recovery fsync is what makes the test above pass: a log reopened
/// after a kill replays unsynced records from the page cache, and without
/// an fsync a power loss then forgets records the restarted acceptor may
/// already have answered with.
#[test]
fn records_replayed_from_the_page_cache_are_made_durable_before_the_log_is_returned() {
    let fs = SimFs::default();
    let (mut log, _, _) = open(&fs, OpenMode::Init).unwrap();
    let promise = Record::Promise {
        ring: RingId(0),
        ballot: Ballot {
            round: 7,
            node: NodeId(2),
        },
    };
    log.append(&promise).unwrap();
    fs.state().die_in_write = Some(usize::MAX); // written, then killed before fdatasync
    assert!(log.sync().is_err());
    drop(log);
    fs.state().died = false;
    let (log, recovered, _) = open(&fs, OpenMode::Existing).unwrap();
    assert_eq!(recovered, vec![promise.clone()], "the page cache kept it");
    drop(log);
    fs.power_loss(&mut ChaCha8Rng::seed_from_u64(1));
    let (_, after, _) = open(&fs, OpenMode::Existing).unwrap();
    assert_eq!(after, vec![promise], "recovery had made it durable");
}
