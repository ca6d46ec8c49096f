//! Memory storage: accepted values are not written anywhere; promises, vote
//! bounds and trims go to a small [`DurableLog`] (see the module docs of
//! [`crate::storage`] for why that is the minimum for a safe restart).

use std::path::Path;
use std::sync::Arc;

use super::fs::{FileSystem, StdFs};
use super::{DurableLog, LogOptions, OpenMode, Record, Recovered, Storage, StorageError};

/// [`Storage`] for the `memory` mode.
pub struct MemoryStorage {
    metadata: Option<DurableLog>,
    recovered: Recovered,
}

impl MemoryStorage {
    /// Memory storage whose metadata lives in `dir`. A restarted acceptor
    /// recovers its promises and abstains from Phase 1 until it has caught up.
    pub fn open(dir: &Path, mode: OpenMode) -> Result<MemoryStorage, StorageError> {
        MemoryStorage::open_on(Arc::new(StdFs), dir, mode)
    }

    /// [`MemoryStorage::open`] on `fs`.
    pub fn open_on(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        mode: OpenMode,
    ) -> Result<MemoryStorage, StorageError> {
        let mut recovered = Recovered {
            values_lost: true,
            ..Recovered::default()
        };
        // A group holding a promise or a vote bound is sealed before its
        // messages leave, so what recovery cuts off was never relied on (or
        // is a trim, which costs nothing to forget).
        let (log, _) =
            DurableLog::open_on(fs, dir, LogOptions::default(), mode, |r| recovered.apply(r))?;
        Ok(MemoryStorage {
            metadata: Some(log),
            recovered,
        })
    }

    /// Memory storage with no file at all, for benchmarks and tests whose
    /// acceptors never restart. An acceptor process restarted on it would
    /// rejoin as if it had promised nothing: never use it for a process that
    /// can be restarted.
    pub fn ephemeral() -> MemoryStorage {
        MemoryStorage {
            metadata: None,
            recovered: Recovered {
                values_lost: true,
                ..Recovered::default()
            },
        }
    }
}

impl Storage for MemoryStorage {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        Ok(std::mem::take(&mut self.recovered))
    }

    fn append(&mut self, record: &Record) -> Result<(), StorageError> {
        match &mut self.metadata {
            Some(log) if record.is_metadata() => log.append(record),
            _ => Ok(()),
        }
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        match &mut self.metadata {
            Some(log) => log.sync(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use psmr_core::proto::{Ballot, NodeId, RingId, Value};

    #[test]
    fn metadata_survives_but_values_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let ring = RingId(3);
        let ballot = Ballot {
            round: 4,
            node: NodeId(2),
        };
        let mut storage = MemoryStorage::open(dir.path(), OpenMode::Init).unwrap();
        assert!(storage.recover().unwrap().rings.is_empty());
        storage.append(&Record::Promise { ring, ballot }).unwrap();
        storage
            .append(&Record::VoteBound { ring, bound: 4096 })
            .unwrap();
        storage
            .append(&Record::Accept {
                ring,
                instance: 3,
                ballot,
                value: Value::Skip(1),
            })
            .unwrap();
        storage.sync().unwrap();
        drop(storage);
        let recovered = MemoryStorage::open(dir.path(), OpenMode::Existing)
            .unwrap()
            .recover()
            .unwrap();
        assert!(recovered.values_lost);
        let r = &recovered.rings[&ring];
        assert_eq!(r.promised, ballot);
        assert_eq!(r.vote_bound, 4096);
        assert!(r.accepted.is_empty());
    }
}
