//! The durable acceptor log: append-only segment files in one directory.
//!
//! ```text
//! dir/ACCEPTOR                   marker: an initialized acceptor's directory
//! dir/00000000000000000000.log   oldest segment
//! dir/0000000000000000000N.log   active segment, appended to
//!
//! segment = "PSMRLOG2" | entry*
//! entry   = len: u32 LE | kind: u8 | 0 0 0 | crc32(len, kind): u32 LE | crc32(payload): u32 LE | payload
//! kind 0  = record: payload = postcard(Record)
//! kind 1  = seal:   payload = its own offset, u64 LE: every byte before it was made durable
//! ```
//!
//! Records are buffered by [`DurableLog::append`]; [`DurableLog::sync`] writes
//! the group with one write and one `fdatasync`. Each group starts with a
//! seal, which proves that everything before it had been synced (the group
//! is only written once the previous sync returned). A group holding a
//! promise or a vote bound is sealed at once with a second `fdatasync`,
//! because forgetting those would break agreement; a group of votes alone
//! stays unproven until the next group, which costs nothing.
//!
//! Recovery reads every segment in order and tells three things apart:
//! - a *torn tail*: the last segment ends inside an entry, or in zeros (a
//!   write that never completed, so never acknowledged): cut off, and that
//!   is all;
//! - *damage in the unproven last group*: a complete entry that fails its
//!   checksum after the last seal. It may be a write torn with a hole (never
//!   acknowledged) or a synced vote that later rotted: it is cut off, reported
//!   with file and offset, and the acceptor restarts as one that lost its
//!   votes (amnesiac up to its vote bound, as memory storage does), which is
//!   safe either way;
//! - *corruption*: damage before a seal, or in any segment but the last.
//!   Recovery refuses to start and names the file and offset.
//!
//! What recovery read is made durable (every segment and the directory are
//! fsynced) and proven (a seal after it) before the log is handed back: a
//! record that survived a process kill in the page cache is acted on by the
//! restarted acceptor, and must survive a power loss after that.
//!
//! A segment that reaches `segment_bytes` is sealed and a new one started.
//! Closed segments that hold no accepted value at or above their ring's trim
//! point are deleted, after the current metadata (promises, vote bounds,
//! trims) has been re-written to the active segment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fs::{AppendFile, FileSystem, StdFs};
use super::{Corruption, Record, Recovered, Storage, StorageError};
use psmr_core::proto::{Ballot, Instance, RingId};

const MAGIC: &[u8; 8] = b"PSMRLOG2";
const ENTRY_HEADER: usize = 16;
const SEAL_LEN: usize = ENTRY_HEADER + 8;
const KIND_RECORD: u8 = 0;
const KIND_SEAL: u8 = 1;

/// The file that marks a directory as an initialized acceptor's.
pub const MARKER: &str = "ACCEPTOR";

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

/// How to treat the directory when opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The directory must hold an initialized log (its marker): a missing or
    /// empty directory is an error, never a fresh acceptor.
    Existing,
    /// Initialize a new member: the directory must be missing or empty.
    Init,
}

/// Something recovery cut off the end of the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discarded {
    /// The segment.
    pub path: PathBuf,
    /// Where the cut starts.
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes: u64,
    /// Whether it was a torn write (never acknowledged) or damage that may
    /// have hidden acknowledged votes.
    pub damage: Option<Corruption>,
}

/// What recovery found besides the records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// What was cut off the end of the log, if anything.
    pub discarded: Option<Discarded>,
}

impl RecoveryReport {
    /// Whether acknowledged votes may have been lost (damage in the
    /// unproven last group): the acceptor must restart amnesiac.
    pub fn votes_may_be_lost(&self) -> bool {
        self.discarded.as_ref().is_some_and(|d| d.damage.is_some())
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
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    options: LogOptions,
    file: Box<dyn AppendFile>,
    active: Segment,
    active_len: u64,
    /// Offset of the active segment below which a seal proves durability.
    proven: u64,
    closed: Vec<Segment>,
    buffer: Vec<u8>,
    /// The buffered group holds a promise or a vote bound: seal it at once.
    buffer_needs_seal: bool,
    buffered: BTreeMap<RingId, Instance>,
    meta: BTreeMap<RingId, Meta>,
}

impl DurableLog {
    /// Opens the log in `dir` on the operating system's file system (see
    /// [`DurableLog::open_on`]).
    pub fn open(
        dir: &Path,
        options: LogOptions,
        mode: OpenMode,
        replay: impl FnMut(Record),
    ) -> Result<(DurableLog, RecoveryReport), StorageError> {
        DurableLog::open_on(Arc::new(StdFs), dir, options, mode, replay)
    }

    /// Opens (or, in [`OpenMode::Init`], creates) the log in `dir` on `fs`,
    /// replaying every valid record through `replay`, and makes what it read
    /// durable before returning.
    pub fn open_on(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        options: LogOptions,
        mode: OpenMode,
        mut replay: impl FnMut(Record),
    ) -> Result<(DurableLog, RecoveryReport), StorageError> {
        prepare_dir(fs.as_ref(), dir, mode)?;
        let mut indices = segment_indices(fs.as_ref(), dir)?;
        if indices.is_empty() {
            indices.push(0);
            create_segment(fs.as_ref(), dir, 0)?;
        }
        let mut meta = BTreeMap::new();
        let mut segments = Vec::new();
        let mut report = RecoveryReport::default();
        let mut active_len = 0;
        let mut proven = 0;
        let last = indices.len() - 1;
        for (i, &index) in indices.iter().enumerate() {
            let path = segment_path(dir, index);
            let bytes = fs.read(&path).map_err(io("read", &path))?;
            let mut segment = Segment {
                path,
                index,
                max_accept: BTreeMap::new(),
            };
            let scan = scan(&segment.path, &bytes, i == last, options.max_record, |r| {
                note(&mut meta, &mut segment.max_accept, &r);
                replay(r);
            })?;
            if i == last {
                if scan.valid < bytes.len() {
                    let cut = (bytes.len() - scan.valid) as u64;
                    fs.truncate(&segment.path, scan.valid as u64)
                        .map_err(io("truncate", &segment.path))?;
                    report.discarded = Some(Discarded {
                        path: segment.path.clone(),
                        offset: scan.valid as u64,
                        bytes: cut,
                        damage: scan.damage,
                    });
                }
                active_len = scan.valid as u64;
                proven = scan.proven as u64;
            }
            fs.sync_file(&segment.path)
                .map_err(io("fsync", &segment.path))?;
            segments.push(segment);
        }
        fs.sync_dir(dir).map_err(io("fsync directory", dir))?;
        let active = segments.pop().expect("at least one segment");
        let file = fs
            .open_append(&active.path)
            .map_err(io("open", &active.path))?;
        let mut log = DurableLog {
            fs,
            dir: dir.to_path_buf(),
            options,
            file,
            active,
            active_len,
            proven,
            closed: segments,
            buffer: Vec::new(),
            buffer_needs_seal: false,
            buffered: BTreeMap::new(),
            meta,
        };
        // The acceptor acts on what was replayed: prove it, so that later
        // damage to it reads as corruption, never as a torn tail.
        if log.proven < log.active_len {
            log.seal()?;
        }
        Ok((log, report))
    }

    /// Buffers `record`; it is durable once [`DurableLog::sync`] returns.
    pub fn append(&mut self, record: &Record) -> Result<(), StorageError> {
        note(&mut self.meta, &mut self.buffered, record);
        self.buffer_needs_seal |=
            matches!(record, Record::Promise { .. } | Record::VoteBound { .. });
        encode(KIND_RECORD, &postcard_of(record)?, &mut self.buffer);
        Ok(())
    }

    /// Bytes appended and not yet synced.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Writes every buffered record (after a seal of what came before) and
    /// waits for `fdatasync`; seals a group with a promise or vote bound at once.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.active_len >= self.options.segment_bytes {
            self.roll()?;
        }
        let group = std::mem::take(&mut self.buffer);
        let mut bytes = Vec::with_capacity(SEAL_LEN + group.len());
        if self.proven < self.active_len {
            encode(KIND_SEAL, &self.active_len.to_le_bytes(), &mut bytes);
        }
        bytes.extend_from_slice(&group);
        self.write(&bytes)?;
        if std::mem::take(&mut self.buffer_needs_seal) {
            self.seal()?;
        }
        for (ring, instance) in std::mem::take(&mut self.buffered) {
            let max = self.active.max_accept.entry(ring).or_insert(instance);
            *max = (*max).max(instance);
        }
        if self.closed.iter().any(|s| self.deletable(s)) {
            self.compact()?;
        }
        Ok(())
    }

    /// Number of segment files, for tests and metrics.
    pub fn segment_count(&self) -> usize {
        self.closed.len() + 1
    }

    /// Appends `bytes` to the active segment and waits for `fdatasync`.
    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let path = &self.active.path;
        self.file.write_all(bytes).map_err(io("write", path))?;
        let started = std::time::Instant::now();
        self.file.sync_data().map_err(io("fdatasync", path))?;
        metrics::histogram!(crate::metrics::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
        self.active_len += bytes.len() as u64;
        Ok(())
    }

    /// Proves everything written so far with a seal of its own.
    fn seal(&mut self) -> Result<(), StorageError> {
        let mut bytes = Vec::with_capacity(SEAL_LEN);
        let at = self.active_len;
        encode(KIND_SEAL, &at.to_le_bytes(), &mut bytes);
        self.write(&bytes)?;
        self.proven = at;
        Ok(())
    }

    /// Seals the active segment, then starts the next one.
    fn roll(&mut self) -> Result<(), StorageError> {
        if self.proven < self.active_len {
            self.seal()?;
        }
        let index = self.active.index + 1;
        let path = create_segment(self.fs.as_ref(), &self.dir, index)?;
        self.file = self.fs.open_append(&path).map_err(io("open", &path))?;
        let old = std::mem::replace(
            &mut self.active,
            Segment {
                path,
                index,
                max_accept: BTreeMap::new(),
            },
        );
        self.closed.push(old);
        self.active_len = MAGIC.len() as u64;
        self.proven = self.active_len;
        Ok(())
    }

    fn deletable(&self, segment: &Segment) -> bool {
        segment
            .max_accept
            .iter()
            .all(|(ring, &max)| self.meta.get(ring).is_some_and(|m| max < m.trimmed_below))
    }

    /// Re-writes the metadata (sealed), then deletes closed segments it makes redundant.
    fn compact(&mut self) -> Result<(), StorageError> {
        let mut bytes = Vec::new();
        if self.proven < self.active_len {
            encode(KIND_SEAL, &self.active_len.to_le_bytes(), &mut bytes);
        }
        for (&ring, m) in &self.meta {
            for record in meta_records(ring, m) {
                encode(KIND_RECORD, &postcard_of(&record)?, &mut bytes);
            }
        }
        self.write(&bytes)?;
        self.seal()?;
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.closed)
            .into_iter()
            .partition(|s| self.deletable(s));
        self.closed = kept;
        for segment in gone {
            self.fs
                .remove(&segment.path)
                .map_err(io("remove", &segment.path))?;
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(io("fsync directory", &self.dir))
    }
}

/// Checks (or, for [`OpenMode::Init`], creates) the directory and its marker.
fn prepare_dir(fs: &dyn FileSystem, dir: &Path, mode: OpenMode) -> Result<(), StorageError> {
    let marker = dir.join(MARKER);
    let empty = !fs.exists(dir) || fs.list(dir).map_err(io("list", dir))?.is_empty();
    match mode {
        OpenMode::Existing if fs.exists(&marker) => Ok(()),
        OpenMode::Existing => Err(StorageError::NotInitialized {
            dir: dir.to_path_buf(),
            empty,
        }),
        OpenMode::Init if !empty => Err(StorageError::AlreadyInitialized {
            dir: dir.to_path_buf(),
        }),
        OpenMode::Init => {
            fs.create_dir_all(dir)
                .map_err(io("create directory", dir))?;
            let text = b"psmr acceptor storage, log format 2; do not delete: an acceptor that forgets its promises breaks agreement\n";
            fs.write_new(&marker, text).map_err(io("write", &marker))?;
            fs.sync_dir(dir).map_err(io("fsync directory", dir))
        }
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
        Record::Decided { ring, instance, .. } => {
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

fn postcard_of(record: &Record) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(record).map_err(StorageError::Encode)
}

fn header_crc(len: u32, kind: u8) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&[kind]);
    h.finalize()
}

/// Appends one entry of `kind` holding `payload` to `out`.
fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("records are far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&header_crc(len, kind).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// One entry read back.
enum Parsed {
    Record(Record, usize),
    Seal(usize),
    /// The bytes end inside the entry, or only zeros follow: a write that
    /// never completed.
    Torn,
    /// A complete entry that is not what was written.
    Damaged(Corruption),
}

fn parse(rest: &[u8], offset: usize, max_record: u32) -> Parsed {
    if rest.iter().all(|&b| b == 0) {
        return Parsed::Torn;
    }
    if rest.len() < ENTRY_HEADER {
        return Parsed::Torn;
    }
    let word = |at: usize| u32::from_le_bytes(rest[at..at + 4].try_into().expect("4 bytes"));
    let (len, kind) = (word(0), rest[4]);
    if word(8) != header_crc(len, kind) || rest[5..8] != [0, 0, 0] {
        return Parsed::Damaged(Corruption::Header);
    }
    if len > max_record {
        return Parsed::Damaged(Corruption::Length(len));
    }
    let end = ENTRY_HEADER + len as usize;
    if rest.len() < end {
        return Parsed::Torn;
    }
    let payload = &rest[ENTRY_HEADER..end];
    if crc32fast::hash(payload) != word(12) {
        return Parsed::Damaged(Corruption::Checksum);
    }
    match kind {
        KIND_RECORD => match postcard::from_bytes(payload) {
            Ok(record) => Parsed::Record(record, end),
            Err(_) => Parsed::Damaged(Corruption::Decode),
        },
        KIND_SEAL => match <[u8; 8]>::try_from(payload).map(u64::from_le_bytes) {
            Ok(at) if at == offset as u64 => Parsed::Seal(end),
            _ => Parsed::Damaged(Corruption::Decode),
        },
        _ => Parsed::Damaged(Corruption::Decode),
    }
}

/// Whether a valid seal starts anywhere in `bytes` after `from`.
fn seal_after(bytes: &[u8], from: usize, max_record: u32) -> bool {
    (from + 1..bytes.len().saturating_sub(SEAL_LEN - 1))
        .any(|at| matches!(parse(&bytes[at..], at, max_record), Parsed::Seal(..)))
}

/// What scanning a segment found.
struct Scan {
    /// Length of the prefix kept.
    valid: usize,
    /// Offset of the last seal (everything before it is proven durable).
    proven: usize,
    /// Damage found in the unproven last group (cut off with the rest).
    damage: Option<Corruption>,
}

/// Parses the entries of one segment, handing each record to `each`.
fn scan(
    path: &Path,
    bytes: &[u8],
    last: bool,
    max_record: u32,
    mut each: impl FnMut(Record),
) -> Result<Scan, StorageError> {
    let corrupt = |offset: usize, reason| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, Corruption::Format));
    }
    let (mut offset, mut proven) = (MAGIC.len(), MAGIC.len());
    while offset < bytes.len() {
        match parse(&bytes[offset..], offset, max_record) {
            Parsed::Record(record, len) => {
                each(record);
                offset += len;
            }
            Parsed::Seal(len) => {
                proven = offset;
                offset += len;
            }
            Parsed::Torn if last => {
                return Ok(Scan {
                    valid: offset,
                    proven,
                    damage: None,
                });
            }
            Parsed::Torn => return Err(corrupt(offset, Corruption::Truncated)),
            Parsed::Damaged(reason) => {
                if !last || seal_after(bytes, offset, max_record) {
                    return Err(corrupt(offset, reason));
                }
                return Ok(Scan {
                    valid: offset,
                    proven,
                    damage: Some(reason),
                });
            }
        }
    }
    Ok(Scan {
        valid: offset,
        proven,
        damage: None,
    })
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.log"))
}

fn segment_indices(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut indices: Vec<u64> = fs
        .list(dir)
        .map_err(io("list", dir))?
        .iter()
        .filter_map(|name| name.strip_suffix(".log")?.parse().ok())
        .collect();
    indices.sort_unstable();
    Ok(indices)
}

/// Creates segment `index` with its format header, durable with its name.
fn create_segment(fs: &dyn FileSystem, dir: &Path, index: u64) -> Result<PathBuf, StorageError> {
    let path = segment_path(dir, index);
    fs.write_new(&path, MAGIC).map_err(io("create", &path))?;
    fs.sync_dir(dir).map_err(io("fsync directory", dir))?;
    Ok(path)
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
    /// Opens the log in `dir` and replays it. If recovery cut off damage
    /// that may have held acknowledged votes, the acceptor restarts as one
    /// that lost its votes (see the module docs).
    pub fn open(
        dir: &Path,
        options: LogOptions,
        mode: OpenMode,
    ) -> Result<(DurableStorage, RecoveryReport), StorageError> {
        DurableStorage::open_on(Arc::new(StdFs), dir, options, mode)
    }

    /// [`DurableStorage::open`] on `fs`.
    pub fn open_on(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        options: LogOptions,
        mode: OpenMode,
    ) -> Result<(DurableStorage, RecoveryReport), StorageError> {
        let mut recovered = Recovered::default();
        let (log, report) = DurableLog::open_on(fs, dir, options, mode, |r| recovered.apply(r))?;
        recovered.values_lost = report.votes_may_be_lost();
        let storage = DurableStorage {
            log,
            recovered: Some(recovered),
        };
        Ok((storage, report))
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
    use psmr_core::proto::{Command, CommandId, NodeId, ProposerId, Value};

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

    fn reopen(dir: &Path) -> Result<(DurableLog, Vec<Record>, RecoveryReport), StorageError> {
        let mut records = Vec::new();
        let (log, report) =
            DurableLog::open(dir, LogOptions::default(), OpenMode::Existing, |r| {
                records.push(r)
            })?;
        Ok((log, records, report))
    }

    fn init(dir: &Path) -> DurableLog {
        DurableLog::open(dir, LogOptions::default(), OpenMode::Init, |_| {})
            .unwrap()
            .0
    }

    fn only_segment(dir: &Path) -> PathBuf {
        segment_path(dir, 0)
    }

    #[test]
    fn synced_records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = init(dir.path());
        for i in 0..10 {
            log.append(&accept(i)).unwrap();
        }
        log.sync().unwrap();
        log.append(&accept(10)).unwrap(); // never synced
        drop(log);
        let (_, records, report) = reopen(dir.path()).unwrap();
        assert_eq!(records, (0..10).map(accept).collect::<Vec<_>>());
        assert_eq!(report, RecoveryReport::default());
    }

    // A missing or empty directory is never a fresh acceptor: it would have
    // forgotten its promises.
    #[test]
    fn a_missing_or_empty_directory_is_refused_unless_initialized() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a").join("b");
        let err = reopen(&missing).err().expect("refused");
        assert!(
            matches!(err, StorageError::NotInitialized { empty: true, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("--init"), "{err}");
        std::fs::create_dir_all(&missing).unwrap();
        assert!(
            reopen(&missing).is_err(),
            "an empty directory is refused too"
        );
        drop(init(&missing));
        assert!(reopen(&missing).is_ok());
        let again = DurableLog::open(&missing, LogOptions::default(), OpenMode::Init, |_| {});
        assert!(matches!(
            again.err(),
            Some(StorageError::AlreadyInitialized { .. })
        ));
    }

    /// Writes three synced groups of one vote each; returns the segment's length.
    fn write_three(dir: &Path) -> u64 {
        let mut log = init(dir);
        for i in 0..3 {
            log.append(&accept(i)).unwrap();
            log.sync().unwrap();
        }
        std::fs::metadata(only_segment(dir)).unwrap().len()
    }

    #[test]
    fn a_write_that_never_completed_is_a_torn_tail_and_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let len = write_three(dir.path());
        let path = only_segment(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        // Cut inside the last entry, or extended with zeros: never acknowledged.
        for torn in [
            bytes[..len as usize - 5].to_vec(),
            [&bytes[..], &[0u8; 4096]].concat(),
        ] {
            std::fs::write(&path, &torn).unwrap();
            let (_, records, report) = reopen(dir.path()).unwrap();
            assert!(records.len() >= 2);
            let cut = report.discarded.expect("a torn tail");
            assert_eq!(cut.damage, None);
            assert!(!report_votes_lost(&cut));
            std::fs::write(&path, &bytes).unwrap();
        }
    }

    fn report_votes_lost(d: &Discarded) -> bool {
        RecoveryReport {
            discarded: Some(d.clone()),
        }
        .votes_may_be_lost()
    }

    // The last group is unproven: a complete entry there that fails its
    // checksum may be a vote that was acknowledged, so the acceptor must
    // restart amnesiac, and the report names file and offset.
    #[test]
    fn damage_in_the_unproven_last_group_is_cut_and_reported_as_lost_votes() {
        let dir = tempfile::tempdir().unwrap();
        let len = write_three(dir.path());
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let (_, records, report) = reopen(dir.path()).unwrap();
        assert_eq!(records.len(), 2);
        let cut = report.discarded.clone().expect("cut");
        assert_eq!(cut.damage, Some(Corruption::Checksum));
        assert_eq!(cut.path, path);
        assert!(cut.offset < len && cut.offset + cut.bytes == len);
        assert!(report.votes_may_be_lost());
    }

    // Damage followed by a seal was synced and proven: recovery refuses.
    #[test]
    fn damage_before_a_seal_is_corruption_with_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        write_three(dir.path());
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let first = MAGIC.len();
        bytes[first + ENTRY_HEADER + 3] ^= 0x55; // inside the first vote
        std::fs::write(&path, &bytes).unwrap();
        let err = reopen(dir.path()).err().expect("corruption");
        match &err {
            StorageError::Corrupt {
                path: p,
                offset,
                reason,
            } => {
                assert_eq!(p, &path);
                assert_eq!(*offset, first as u64);
                assert_eq!(*reason, Corruption::Checksum);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(
            err.to_string().contains(&format!("at byte {first}")),
            "{err}"
        );
    }

    // A promise is sealed before `sync` returns: rot in it is corruption,
    // never a torn tail that would forget it.
    #[test]
    fn a_synced_promise_is_proven_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = init(dir.path());
        let promise = Record::Promise {
            ring: RingId(0),
            ballot: ballot(9),
        };
        log.append(&promise).unwrap();
        log.sync().unwrap();
        drop(log);
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + ENTRY_HEADER] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            reopen(dir.path()).err(),
            Some(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_log_of_an_older_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        drop(init(dir.path()));
        std::fs::write(only_segment(dir.path()), [1u8, 0, 0, 0, 9, 9, 9, 9, 0]).unwrap();
        let err = reopen(dir.path()).err().expect("refused");
        assert!(
            matches!(
                err,
                StorageError::Corrupt {
                    reason: Corruption::Format,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn segments_roll_and_trimmed_ones_are_deleted_without_losing_promises() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            segment_bytes: 1024,
            ..LogOptions::default()
        };
        let ring = RingId(0);
        let open = |mode| {
            DurableLog::open(dir.path(), options, mode, |_| {})
                .unwrap()
                .0
        };
        let mut log = open(OpenMode::Init);
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
        DurableLog::open(dir.path(), options, OpenMode::Existing, |r| {
            recovered.apply(r)
        })
        .unwrap();
        let r = &recovered.rings[&ring];
        assert_eq!(r.trimmed_below, 90);
        assert!(r.promised >= ballot(5));
        assert_eq!(
            r.accepted.keys().copied().collect::<Vec<_>>(),
            (90..120).collect::<Vec<_>>()
        );
    }
}
