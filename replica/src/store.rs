//! Checkpoint files in a replica's data directory (docs/ARCHITECTURE.md,
//! "Checkpoints").
//!
//! ```text
//!  checkpoint-<number, 20 digits>.psmr:
//!    b"PSMRCK01" | meta length: u32 | meta (postcard: FileMeta) | service image
//!    | trailer: image length: u64 | CRC-32 of everything before the trailer: u32
//! ```
//!
//! A file is written as `<name>.tmp`, fsynced, renamed into place and the
//! directory fsynced, so a crash leaves either the whole file or none
//! (a `.tmp` left behind is removed at the next start). At start the newest
//! file whose checksum and contents check out is used; a damaged one is
//! reported with its name, and the one before it is tried. Reading streams
//! the file twice, once for the checksum and once to restore, so the state
//! is never held twice in memory.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use psmr_core::EngineKind;
use psmr_core::proto::{DedupeImage, RingId};
use psmr_core::service::Service;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{info, warn};

use crate::engine::{Captured, EngineImage, Resume};

const MAGIC: &[u8; 8] = b"PSMRCK01";
const TRAILER: u64 = 12;
/// A meta section larger than this is damage, not a checkpoint.
const MAX_META: u32 = 1 << 30;

/// What a checkpoint file says besides the service image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// The engine that took it.
    pub engine_kind: EngineKind,
    /// Its worker threads.
    pub threads: usize,
    /// The service's id.
    pub service: u16,
    /// The engine's part.
    pub engine: EngineImage,
    /// Per ring, the learner's filter at the cut.
    pub dedupe: Vec<(RingId, DedupeImage)>,
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is not a whole, intact checkpoint.
    #[error("{path}: damaged checkpoint: {problem}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The checkpoint was taken by another engine, K or service.
    #[error(
        "{path}: taken by {kind} with {threads} threads for service {service}; this replica runs {ours}"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its engine.
        kind: EngineKind,
        /// Its threads.
        threads: usize,
        /// Its service id.
        service: u16,
        /// This replica's engine, K and service.
        ours: String,
    },
}

/// A checkpoint read back: where the learner and the engine resume.
pub struct Loaded<T> {
    /// Per ring, the learner's filter at the cut.
    pub dedupe: Vec<(RingId, DedupeImage)>,
    /// The engine's resume point and the service state.
    pub resume: Resume<T>,
}

/// How long writing a checkpoint took, and how big it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// Bytes on disk.
    pub bytes: u64,
    /// Serializing and writing, fsync included.
    pub write: Duration,
}

/// The checkpoints of one replica.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    keep: usize,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Counts and checksums what passes through.
struct Summed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Store {
    /// The checkpoints in `dir` (created if missing), keeping the newest `keep`.
    pub fn open(dir: &Path, keep: usize) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let store = Store {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
        };
        for entry in fs::read_dir(dir).map_err(io_at(dir))? {
            let path = entry.map_err(io_at(dir))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                warn!(file = %path.display(), "removing a checkpoint left half written");
                fs::remove_file(&path).map_err(io_at(&path))?;
            }
        }
        Ok(store)
    }

    fn path_of(&self, number: u64) -> PathBuf {
        self.dir.join(format!("checkpoint-{number:020}.psmr"))
    }

    /// The checkpoint files, newest first.
    pub fn files(&self) -> Result<Vec<(u64, PathBuf)>, StoreError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let path = entry.map_err(io_at(&self.dir))?.path();
            let number = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("checkpoint-"))
                .and_then(|n| n.strip_suffix(".psmr"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(number) = number {
                files.push((number, path));
            }
        }
        files.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        Ok(files)
    }

    /// Writes `captured` durably; then removes all but the newest `keep`.
    pub fn write<S: Service>(
        &self,
        service: &S,
        meta: &FileMeta,
        captured: &Captured<S::Image>,
    ) -> Result<Written, StoreError> {
        let started = Instant::now();
        let path = self.path_of(meta.engine.number);
        let tmp = path.with_extension("psmr.tmp");
        let file = File::create(&tmp).map_err(io_at(&tmp))?;
        let mut out = Summed {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            len: 0,
        };
        let meta_bytes = postcard::to_allocvec(meta).map_err(|e| StoreError::Io {
            path: tmp.clone(),
            source: io::Error::other(e),
        })?;
        let body = |out: &mut Summed<BufWriter<File>>| -> io::Result<u64> {
            out.write_all(MAGIC)?;
            out.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
            out.write_all(&meta_bytes)?;
            let before = out.len;
            service.write_image(&captured.image, out)?;
            Ok(out.len - before)
        };
        let image_len = body(&mut out).map_err(io_at(&tmp))?;
        let crc = out.crc.clone().finalize();
        let mut file = out
            .inner
            .into_inner()
            .map_err(|e| io_at(&tmp)(e.into_error()))?;
        file.write_all(&image_len.to_le_bytes())
            .and_then(|()| file.write_all(&crc.to_le_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(io_at(&tmp))?;
        let bytes = out.len + TRAILER;
        drop(file);
        self.place(&tmp, &path)?;
        Ok(Written {
            bytes,
            write: started.elapsed(),
        })
    }

    /// Renames the synced `tmp` to `path`, syncs the directory, and
    /// removes all but the newest `keep` checkpoints.
    fn place(&self, tmp: &Path, path: &Path) -> Result<(), StoreError> {
        fs::rename(tmp, path).map_err(io_at(path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&self.dir))?;
        for (_, old) in self.files()?.into_iter().skip(self.keep) {
            fs::remove_file(&old).map_err(io_at(&old))?;
        }
        Ok(())
    }

    /// The newest checkpoint file, to send to another replica: written
    /// whole before it got its name, so it can be sent as it is (the
    /// receiver checks it).
    pub fn newest(&self) -> Result<Option<(u64, PathBuf)>, StoreError> {
        Ok(self.files()?.into_iter().next())
    }

    /// Checkpoint `number`'s file, opened to be sent, if it is still there
    /// (an open file stays readable when a newer checkpoint removes it).
    pub async fn open_file(&self, number: u64) -> Result<Option<tokio::fs::File>, StoreError> {
        let path = self.path_of(number);
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// An I/O error on checkpoint `number`'s file.
    pub fn io(&self, number: u64, source: io::Error) -> StoreError {
        io_at(&self.path_of(number))(source)
    }

    /// Starts receiving checkpoint `number`, of `bytes` bytes, from
    /// another replica.
    pub fn receive(&self, number: u64, bytes: u64) -> Result<Receiving, StoreError> {
        let path = self.path_of(number);
        if bytes < MAGIC.len() as u64 + 4 + TRAILER {
            return Err(damaged(
                &path,
                format!("{bytes} bytes, shorter than any checkpoint"),
            ));
        }
        // Not the writer's name: this replica may be writing the same
        // checkpoint itself meanwhile (both files are whole; either wins).
        let tmp = path.with_extension("psmr.recv.tmp");
        let file = File::create(&tmp).map_err(io_at(&tmp))?;
        Ok(Receiving {
            store: self.clone(),
            tmp,
            path,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            crc: crc32fast::Hasher::new(),
            bytes,
            written: 0,
            trailer: Vec::with_capacity(TRAILER as usize),
            placed: false,
        })
    }

    /// The newest checkpoint that checks out, restored: its meta and the
    /// engine's resume point. Damaged files are reported and skipped; a
    /// checkpoint of another engine, K or service is an error (the data
    /// directory belongs to another deployment).
    pub fn load<S: Service>(
        &self,
        service: &S,
        kind: EngineKind,
        threads: usize,
    ) -> Result<Option<Loaded<S::State>>, StoreError> {
        for (_, path) in self.files()? {
            match read(&path, service) {
                Ok((meta, state)) => {
                    if meta.engine_kind != kind
                        || meta.threads != threads
                        || meta.service != service.id().0
                    {
                        return Err(StoreError::Foreign {
                            path,
                            kind: meta.engine_kind,
                            threads: meta.threads,
                            service: meta.service,
                            ours: format!(
                                "{kind} with {threads} threads for service {}",
                                service.id().0
                            ),
                        });
                    }
                    info!(file = %path.display(), number = meta.engine.number, "checkpoint loaded");
                    let engine = meta.engine;
                    return Ok(Some(Loaded {
                        dedupe: meta.dedupe,
                        resume: Resume { engine, state },
                    }));
                }
                Err(e @ StoreError::Damaged { .. }) => {
                    warn!(error = %e, "skipping a damaged checkpoint; trying the one before");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// A checkpoint file arriving from another replica ([`Store::receive`]):
/// written to `<name>.tmp` as it comes, checksummed on the way, and put in
/// place only once whole and intact, so that it is never held in memory.
pub struct Receiving {
    store: Store,
    tmp: PathBuf,
    path: PathBuf,
    out: Option<BufWriter<File>>,
    crc: crc32fast::Hasher,
    /// Bytes announced, and bytes written so far.
    bytes: u64,
    written: u64,
    trailer: Vec<u8>,
    /// The file got its name: nothing to remove.
    placed: bool,
}

impl Receiving {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends the next bytes of the file.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        if self.written + data.len() as u64 > self.bytes {
            return Err(damaged(
                &self.path,
                format!("more than the {} bytes announced", self.bytes),
            ));
        }
        let out = self.out.as_mut().expect("not finished");
        out.write_all(data).map_err(io_at(&self.tmp))?;
        let body_len = self.bytes - TRAILER;
        if self.written < body_len {
            let body = data.len().min((body_len - self.written) as usize);
            self.crc.update(&data[..body]);
            data = &data[body..];
            self.written += body as u64;
        }
        self.trailer.extend_from_slice(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Checks that the whole file came and that its checksum holds, then
    /// puts it in place as [`Store::write`] does (fsync, rename, fsync of
    /// the directory) and removes all but the newest `keep`. On any failure,
    /// or if it is dropped unfinished, the temporary file is removed.
    pub fn finish(mut self) -> Result<PathBuf, StoreError> {
        let (written, bytes) = (self.written, self.bytes);
        if written != bytes {
            return Err(damaged(
                &self.path,
                format!("{written} of {bytes} bytes came"),
            ));
        }
        let stored = u32::from_le_bytes(self.trailer[8..].try_into().expect("4 bytes"));
        if self.crc.clone().finalize() != stored {
            return Err(damaged(&self.path, "checksum mismatch in transfer"));
        }
        let out = self.out.take().expect("finished once");
        let file = out
            .into_inner()
            .map_err(|e| io_at(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_at(&self.tmp))?;
        drop(file);
        self.store.place(&self.tmp, &self.path)?;
        self.placed = true;
        Ok(self.path.clone())
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        if !self.placed {
            drop(self.out.take());
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn damaged(path: &Path, problem: impl Into<String>) -> StoreError {
    StoreError::Damaged {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Checks a file's checksum, then reads its meta and service image.
fn read<S: Service>(path: &Path, service: &S) -> Result<(FileMeta, S::State), StoreError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    let len = file.metadata().map_err(io_at(path))?.len();
    if len < MAGIC.len() as u64 + 4 + TRAILER {
        return Err(damaged(
            path,
            format!("{len} bytes, shorter than any checkpoint"),
        ));
    }
    let body_len = len - TRAILER;
    let mut crc = crc32fast::Hasher::new();
    let mut reader = BufReader::with_capacity(1 << 20, (&mut file).take(body_len));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(io_at(path))?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
    }
    let mut trailer = [0u8; TRAILER as usize];
    file.read_exact(&mut trailer).map_err(io_at(path))?;
    let image_len = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    let stored = u32::from_le_bytes(trailer[8..].try_into().expect("4 bytes"));
    if crc.finalize() != stored {
        return Err(damaged(path, "checksum mismatch"));
    }
    file.seek(SeekFrom::Start(0)).map_err(io_at(path))?;
    let mut input = BufReader::with_capacity(1 << 20, file.take(body_len));
    let mut head = [0u8; 12];
    input.read_exact(&mut head).map_err(io_at(path))?;
    if &head[..8] != MAGIC {
        return Err(damaged(path, "not a psmr checkpoint (bad magic)"));
    }
    let meta_len = u32::from_le_bytes(head[8..].try_into().expect("4 bytes"));
    if meta_len > MAX_META || u64::from(meta_len) + 12 + image_len != body_len {
        return Err(damaged(path, "sections do not add up to the file"));
    }
    let mut meta = vec![0u8; meta_len as usize];
    input.read_exact(&mut meta).map_err(io_at(path))?;
    let meta: FileMeta =
        postcard::from_bytes(&meta).map_err(|e| damaged(path, format!("meta: {e}")))?;
    let state = service
        .read_image(&mut input)
        .map_err(|e| damaged(path, format!("service image: {e}")))?;
    Ok((meta, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use psmr_services::{LinkedList, ListService};

    fn captured(number: u64, values: Vec<u64>) -> (FileMeta, Captured<Vec<u64>>) {
        let engine = EngineImage {
            number,
            ..EngineImage::default()
        };
        let meta = FileMeta {
            engine_kind: EngineKind::Psmr,
            threads: 2,
            service: ListService.id().0,
            engine: engine.clone(),
            dedupe: Vec::new(),
        };
        let captured = Captured {
            engine,
            image: values,
            pause: Duration::ZERO,
        };
        (meta, captured)
    }

    fn load(store: &Store) -> Option<(u64, usize)> {
        store
            .load(&ListService, EngineKind::Psmr, 2)
            .unwrap()
            .map(|l| (l.resume.engine.number, l.resume.state.len()))
    }

    /// The newest good checkpoint is used: a torn, a bit-flipped and a
    /// half-written one are skipped (named in the log), the rest is kept.
    #[test]
    fn the_newest_intact_checkpoint_is_loaded_and_damage_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        assert_eq!(load(&store), None);
        for n in 1..=4 {
            let (meta, c) = captured(n, (0..n * 10).collect());
            store.write(&ListService, &meta, &c).unwrap();
        }
        assert_eq!(store.files().unwrap().len(), 3, "keep 3");
        assert_eq!(load(&store), Some((4, 40)));
        let newest = store.path_of(4);
        let mut bytes = fs::read(&newest).unwrap();
        bytes[30] ^= 0x10;
        fs::write(&newest, &bytes).unwrap();
        assert!(matches!(
            read(&newest, &ListService),
            Err(StoreError::Damaged { .. })
        ));
        assert_eq!(load(&store), Some((3, 30)));
        let third = store.path_of(3);
        let len = fs::metadata(&third).unwrap().len();
        File::options()
            .write(true)
            .open(&third)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        assert_eq!(load(&store), Some((2, 20)));
        fs::write(
            dir.path().join("checkpoint-00000000000000000009.psmr.tmp"),
            b"half",
        )
        .unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        assert_eq!(store.files().unwrap().len(), 3, "the .tmp is gone");
        assert_eq!(load(&store), Some((2, 20)));
        assert!(matches!(
            store.load(&ListService, EngineKind::Smr, 1),
            Err(StoreError::Foreign { .. })
        ));
        let _ = LinkedList::new();
    }

    /// A checkpoint received in chunks is put in place only whole and with
    /// its checksum intact, and then loads like one written here; a
    /// damaged, short or overlong one is refused and leaves no file behind.
    #[test]
    fn a_received_checkpoint_is_checked_before_it_is_named() {
        let from = tempfile::tempdir().unwrap();
        let sender = Store::open(from.path(), 2).unwrap();
        let (meta, c) = captured(5, (0..50_000).collect());
        sender.write(&ListService, &meta, &c).unwrap();
        let bytes = fs::read(sender.path_of(5)).unwrap();
        let to = tempfile::tempdir().unwrap();
        let receiver = Store::open(to.path(), 2).unwrap();
        let send = |data: &[u8], announced: u64| -> Result<PathBuf, StoreError> {
            let mut file = receiver.receive(5, announced)?;
            for chunk in data.chunks(7_777) {
                file.write(chunk)?;
            }
            file.finish()
        };
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        let len = bytes.len() as u64;
        for (data, announced, what) in [
            (&flipped[..], len, "a flipped bit"),
            (&bytes[..bytes.len() - 1], len, "a short file"),
            (&bytes[..], len - 1, "more than announced"),
            (&bytes[..4], 4, "less than any checkpoint"),
        ] {
            let refused = send(data, announced);
            assert!(
                matches!(refused, Err(StoreError::Damaged { .. })),
                "{what}: {refused:?}"
            );
            let left = fs::read_dir(to.path()).unwrap().count();
            assert_eq!(left, 0, "{what}: nothing left behind");
        }
        assert_eq!(send(&bytes, len).unwrap(), receiver.path_of(5));
        assert_eq!(load(&receiver), Some((5, 50_000)));
    }
}
