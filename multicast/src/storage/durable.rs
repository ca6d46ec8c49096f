//! The durable acceptor log: append-only segment files in one directory.
//!
//! ```text
//! dir/00000000000000000000.log   oldest segment
//! dir/00000000000000000001.log   ...
//! dir/0000000000000000000N.log   active segment, appended to
//!
//! record = len: u32 LE | crc32(payload): u32 LE | payload = postcard(Record)
//! ```
//!
//! Records are buffered by [`DurableLog::append`]; [`DurableLog::sync`] writes
//! the whole group with one write and one `fdatasync`. A segment that reaches
//! `segment_bytes` is closed and a new one started (with an fsync of the
//! directory). When a new segment starts, closed segments that hold no
//! accepted value at or above their ring's trim point are deleted, after the
//! current metadata (promises, vote bounds, trims) has been re-written to the
//! active segment, so deleting them never forgets a promise.
//!
//! Recovery reads every segment in order. In the last segment a torn tail (a
//! record cut short, a zero-filled tail, or a last record whose checksum fails)
//! is the trace of a write that was never acknowledged: it is truncated.
//! Anything wrong before that is corruption, reported with the file and offset.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Corruption, Record, Recovered, Storage, StorageError};
use crate::proto::{Ballot, Instance, RingId};

const HEADER: usize = 8;

/// Tuning of a [`DurableLog`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// A segment is closed once it holds this many bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// Largest record accepted on recovery; anything larger is corruption. Default 64 MiB.
    pub max_record: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 * 1024 * 1024,
            max_record: 64 * 1024 * 1024,
        }
    }
}

/// Per-ring metadata, re-written before old segments are deleted.
#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    promised: Ballot,
    vote_bound: Instance,
    trimmed_below: Instance,
    trim_position: u64,
    frontier: Instance,
    frontier_position: u64,
}

struct Segment {
    path: PathBuf,
    index: u64,
    /// Highest instance of an Accept record in this segment, per ring.
    max_accept: BTreeMap<RingId, Instance>,
}

/// A segmented append-only log of [`Record`]s with grouped fdatasync.
pub struct DurableLog {
    dir: PathBuf,
    options: LogOptions,
    file: File,
    active: Segment,
    active_len: u64,
    closed: Vec<Segment>,
    buffer: Vec<u8>,
    buffered: BTreeMap<RingId, Instance>,
    meta: BTreeMap<RingId, Meta>,
}

impl DurableLog {
    /// Opens (or creates) the log in `dir`, replaying every valid record
    /// through `replay`. A torn tail of the last segment is truncated.
    pub fn open(
        dir: &Path,
        options: LogOptions,
        mut replay: impl FnMut(Record),
    ) -> Result<DurableLog, StorageError> {
        fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let mut indices = segment_indices(dir)?;
        if indices.is_empty() {
            indices.push(0);
            create_segment(dir, 0)?;
        }
        let mut meta = BTreeMap::new();
        let mut segments = Vec::new();
        let mut active_len = 0;
        let last = indices.len() - 1;
        for (i, &index) in indices.iter().enumerate() {
            let path = segment_path(dir, index);
            let bytes = fs::read(&path).map_err(io("read", &path))?;
            let mut segment = Segment {
                path,
                index,
                max_accept: BTreeMap::new(),
            };
            let valid = scan(
                &segment.path,
                &bytes,
                i == last,
                options.max_record,
                |record| {
                    note(&mut meta, &mut segment.max_accept, &record);
                    replay(record);
                },
            )?;
            if i == last {
                if valid < bytes.len() {
                    truncate(&segment.path, valid as u64)?;
                }
                active_len = valid as u64;
            }
            segments.push(segment);
        }
        let active = segments.pop().expect("at least one segment");
        let file = OpenOptions::new()
            .append(true)
            .open(&active.path)
            .map_err(io("open", &active.path))?;
        Ok(DurableLog {
            dir: dir.to_path_buf(),
            options,
            file,
            active,
            active_len,
            closed: segments,
            buffer: Vec::new(),
            buffered: BTreeMap::new(),
            meta,
        })
    }

    /// Buffers `record`; it is durable once [`DurableLog::sync`] returns.
    pub fn append(&mut self, record: &Record) -> Result<(), StorageError> {
        note(&mut self.meta, &mut self.buffered, record);
        encode(record, &mut self.buffer)
    }

    /// Bytes appended and not yet synced.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Writes every buffered record and waits for `fdatasync`.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.active_len >= self.options.segment_bytes {
            self.roll()?;
        }
        self.write_buffer()?;
        if self.closed.iter().any(|s| self.deletable(s)) {
            self.compact()?;
        }
        Ok(())
    }

    /// Number of segment files, for tests and metrics.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }

    fn write_buffer(&mut self) -> Result<(), StorageError> {
        self.file
            .write_all(&self.buffer)
            .map_err(io("write", &self.active.path))?;
        self.file
            .sync_data()
            .map_err(io("fdatasync", &self.active.path))?;
        self.active_len += self.buffer.len() as u64;
        self.buffer.clear();
        for (ring, instance) in std::mem::take(&mut self.buffered) {
            let max = self.active.max_accept.entry(ring).or_insert(instance);
            *max = (*max).max(instance);
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), StorageError> {
        let index = self.active.index + 1;
        let path = create_segment(&self.dir, index)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let old = std::mem::replace(
            &mut self.active,
            Segment {
                path,
                index,
                max_accept: BTreeMap::new(),
            },
        );
        self.closed.push(old);
        self.active_len = 0;
        Ok(())
    }

    fn deletable(&self, segment: &Segment) -> bool {
        segment
            .max_accept
            .iter()
            .all(|(ring, &max)| self.meta.get(ring).is_some_and(|m| max < m.trimmed_below))
    }

    /// Re-writes the metadata, then deletes closed segments it makes redundant.
    fn compact(&mut self) -> Result<(), StorageError> {
        let snapshot: Vec<Record> = self
            .meta
            .iter()
            .flat_map(|(&ring, m)| meta_records(ring, m))
            .collect();
        for record in &snapshot {
            encode(record, &mut self.buffer)?;
        }
        self.write_buffer()?;
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.closed)
            .into_iter()
            .partition(|s| self.deletable(s));
        self.closed = kept;
        for segment in gone {
            fs::remove_file(&segment.path).map_err(io("remove", &segment.path))?;
        }
        sync_dir(&self.dir)
    }
}

fn meta_records(ring: RingId, m: &Meta) -> [Record; 4] {
    [
        Record::Promise {
            ring,
            ballot: m.promised,
        },
        Record::VoteBound {
            ring,
            bound: m.vote_bound,
        },
        Record::Trim {
            ring,
            below: m.trimmed_below,
            position: m.trim_position,
        },
        Record::Frontier {
            ring,
            below: m.frontier,
            position: m.frontier_position,
        },
    ]
}

/// Tracks metadata and the highest accepted instance per ring of `record`.
fn note(
    meta: &mut BTreeMap<RingId, Meta>,
    max_accept: &mut BTreeMap<RingId, Instance>,
    record: &Record,
) {
    let m = meta.entry(record.ring()).or_default();
    match record {
        Record::Promise { ballot, .. } => m.promised = m.promised.max(*ballot),
        Record::Accept {
            ring,
            instance,
            ballot,
            ..
        } => {
            m.promised = m.promised.max(*ballot);
            let max = max_accept.entry(*ring).or_insert(*instance);
            *max = (*max).max(*instance);
        }
        Record::VoteBound { bound, .. } => m.vote_bound = m.vote_bound.max(*bound),
        Record::Frontier {
            below, position, ..
        } => {
            if *below > m.frontier {
                m.frontier = *below;
                m.frontier_position = *position;
            }
        }
        Record::Trim {
            below, position, ..
        } => {
            if *below > m.trimmed_below {
                m.trimmed_below = *below;
                m.trim_position = *position;
            }
        }
    }
}

fn encode(record: &Record, buffer: &mut Vec<u8>) -> Result<(), StorageError> {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; HEADER]);
    let extended =
        postcard::to_extend(record, std::mem::take(buffer)).map_err(StorageError::Encode);
    *buffer = extended?;
    let payload = &buffer[start + HEADER..];
    let len = u32::try_from(payload.len())
        .map_err(|_| StorageError::Encode(postcard::Error::SerializeBufferFull))?;
    let crc = crc32fast::hash(payload);
    buffer[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buffer[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Parses the records of one segment; returns the length of its valid prefix.
fn scan(
    path: &Path,
    bytes: &[u8],
    last: bool,
    max_record: u32,
    mut each: impl FnMut(Record),
) -> Result<usize, StorageError> {
    let corrupt = |offset: usize, reason| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < HEADER {
            return if last {
                Ok(offset)
            } else {
                Err(corrupt(offset, Corruption::Truncated))
            };
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rest[4..HEADER].try_into().expect("4 bytes"));
        if last && len == 0 && rest.iter().all(|&b| b == 0) {
            return Ok(offset);
        }
        if len == 0 || len > max_record {
            let beyond_end = HEADER as u64 + u64::from(len) > rest.len() as u64;
            return if last && beyond_end {
                Ok(offset)
            } else {
                Err(corrupt(offset, Corruption::Length(len)))
            };
        }
        let end = HEADER + len as usize;
        if end > rest.len() {
            return if last {
                Ok(offset)
            } else {
                Err(corrupt(offset, Corruption::Truncated))
            };
        }
        let payload = &rest[HEADER..end];
        if crc32fast::hash(payload) != crc {
            let final_record = end == rest.len();
            return if last && final_record {
                Ok(offset)
            } else {
                Err(corrupt(offset, Corruption::Checksum))
            };
        }
        let record =
            postcard::from_bytes(payload).map_err(|_| corrupt(offset, Corruption::Decode))?;
        each(record);
        offset += end;
    }
    Ok(offset)
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.log"))
}

fn segment_indices(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut indices = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if let Ok(index) = stem.parse::<u64>() {
            indices.push(index);
        }
    }
    indices.sort_unstable();
    Ok(indices)
}

fn create_segment(dir: &Path, index: u64) -> Result<PathBuf, StorageError> {
    let path = segment_path(dir, index);
    File::create(&path)
        .and_then(|f| f.sync_all())
        .map_err(io("create", &path))?;
    sync_dir(dir)?;
    Ok(path)
}

fn truncate(path: &Path, len: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    file.set_len(len).map_err(io("truncate", path))?;
    file.sync_all().map_err(io("fsync", path))
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { op, path, source }
}

/// [`Storage`] that keeps every record in a [`DurableLog`].
pub struct DurableStorage {
    log: DurableLog,
    recovered: Option<Recovered>,
}

impl DurableStorage {
    /// Opens the log in `dir` and replays it.
    pub fn open(dir: &Path, options: LogOptions) -> Result<DurableStorage, StorageError> {
        let mut recovered = Recovered::default();
        let log = DurableLog::open(dir, options, |r| recovered.apply(r))?;
        Ok(DurableStorage {
            log,
            recovered: Some(recovered),
        })
    }

    /// The underlying log.
    pub fn log(&self) -> &DurableLog {
        &self.log
    }
}

impl Storage for DurableStorage {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        Ok(self.recovered.take().unwrap_or_default())
    }

    fn append(&mut self, record: &Record) -> Result<(), StorageError> {
        self.log.append(record)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.log.sync()
    }
}

#[cfg(test)]
mod tests {

    use bytes::Bytes;

    use super::*;
    use crate::proto::{Command, CommandId, NodeId, ProposerId, Value};

    fn ballot(round: u64) -> Ballot {
        Ballot {
            round,
            node: NodeId(1),
        }
    }

    fn accept(instance: Instance) -> Record {
        let cmd = Command {
            id: CommandId {
                proposer: ProposerId(1),
                seq: instance,
            },
            low_water: 0,
            payload: Bytes::from(vec![7u8; 64]),
        };
        Record::Accept {
            ring: RingId(0),
            instance,
            ballot: ballot(1),
            value: Value::batch(vec![cmd]),
        }
    }

    fn reopen(dir: &Path) -> Result<(DurableLog, Vec<Record>), StorageError> {
        let mut records = Vec::new();
        let log = DurableLog::open(dir, LogOptions::default(), |r| records.push(r))?;
        Ok((log, records))
    }

    #[test]
    fn synced_records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, records) = reopen(dir.path()).unwrap();
        assert!(records.is_empty());
        for i in 0..10 {
            log.append(&accept(i)).unwrap();
        }
        log.sync().unwrap();
        log.append(&accept(10)).unwrap(); // never synced
        drop(log);
        let (_, records) = reopen(dir.path()).unwrap();
        assert_eq!(records, (0..10).map(accept).collect::<Vec<_>>());
    }

    fn only_segment(dir: &Path) -> PathBuf {
        segment_path(dir, 0)
    }

    fn write_three(dir: &Path) -> u64 {
        let (mut log, _) = reopen(dir).unwrap();
        for i in 0..3 {
            log.append(&accept(i)).unwrap();
        }
        log.sync().unwrap();
        fs::metadata(only_segment(dir)).unwrap().len()
    }

    #[test]
    fn a_torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let len = write_three(dir.path());
        let path = only_segment(dir.path());
        // A record cut short by a crash during the write.
        let mut bytes = fs::read(&path).unwrap();
        let one = len as usize / 3;
        bytes.truncate(len as usize - one / 2);
        fs::write(&path, &bytes).unwrap();
        let (mut log, records) = reopen(dir.path()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * one as u64);
        // The log appends after the truncation point.
        log.append(&accept(9)).unwrap();
        log.sync().unwrap();
        let (_, records) = reopen(dir.path()).unwrap();
        assert_eq!(records.last(), Some(&accept(9)));
    }

    #[test]
    fn a_zero_filled_or_garbled_last_record_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let len = write_three(dir.path());
        let path = only_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(reopen(dir.path()).unwrap().1.len(), 3);
        assert_eq!(fs::metadata(&path).unwrap().len(), len);
        // Flip a payload byte of the last record: its write was torn.
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(reopen(dir.path()).unwrap().1.len(), 2);
    }

    #[test]
    fn corruption_before_the_tail_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let len = write_three(dir.path());
        let path = only_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let one = len as usize / 3;
        bytes[one + HEADER + 3] ^= 0x55; // inside the second record
        fs::write(&path, &bytes).unwrap();
        let err = reopen(dir.path()).err().expect("corruption");
        match &err {
            StorageError::Corrupt {
                path: p,
                offset,
                reason,
            } => {
                assert_eq!(p, &path);
                assert_eq!(*offset, one as u64);
                assert_eq!(*reason, Corruption::Checksum);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(err.to_string().contains(&format!("at byte {one}")), "{err}");
    }

    #[test]
    fn an_impossible_length_before_the_tail_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        write_three(dir.path());
        let path = only_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[..4].copy_from_slice(&0u32.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            reopen(dir.path()),
            Err(StorageError::Corrupt {
                offset: 0,
                reason: Corruption::Length(0),
                ..
            })
        ));
    }

    #[test]
    fn segments_roll_and_trimmed_ones_are_deleted_without_losing_promises() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            segment_bytes: 1024,
            ..LogOptions::default()
        };
        let ring = RingId(0);
        let mut log = DurableLog::open(dir.path(), options, |_| {}).unwrap();
        log.append(&Record::Promise {
            ring,
            ballot: ballot(5),
        })
        .unwrap();
        log.sync().unwrap();
        for i in 0..100 {
            log.append(&accept(i)).unwrap();
            log.sync().unwrap();
        }
        assert!(log.segment_count() > 3, "{}", log.segment_count());
        log.append(&Record::Trim {
            ring,
            below: 90,
            position: 90,
        })
        .unwrap();
        for i in 100..120 {
            log.append(&accept(i)).unwrap();
            log.sync().unwrap();
        }
        let remaining = log.segment_count();
        assert!(remaining <= 5, "old segments were not deleted: {remaining}");
        drop(log);
        let mut recovered = Recovered::default();
        DurableLog::open(dir.path(), options, |r| recovered.apply(r)).unwrap();
        let r = &recovered.rings[&ring];
        assert_eq!(r.trimmed_below, 90);
        assert!(r.promised >= ballot(5));
        assert_eq!(
            r.accepted.keys().copied().collect::<Vec<_>>(),
            (90..120).collect::<Vec<_>>()
        );
    }
}
