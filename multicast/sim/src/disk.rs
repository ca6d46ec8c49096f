//! A simulated disk: records appended by an acceptor, of which those synced
//! survive a crash. In memory mode only metadata records are written (as
//! `psmr_multicast::storage::MemoryStorage` does); a *broken* disk forgets everything
//! on restart, which is the bug the checker must catch.

use std::sync::{Arc, Mutex};

use psmr_core::storage::{Record, Recovered, Storage, StorageError};

/// The storage mode being simulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskMode {
    /// Every record is kept (durable log).
    Durable,
    /// Only promises, vote bounds and trims are kept (memory storage).
    Memory,
}

#[derive(Debug)]
struct DiskState {
    records: Vec<Record>,
    synced: usize,
    mode: DiskMode,
    broken: bool,
}

/// The disk of one simulated acceptor; it outlives the acceptor's crashes.
#[derive(Clone, Debug)]
pub struct SimDisk(Arc<Mutex<DiskState>>);

impl SimDisk {
    /// A new empty disk.
    pub fn new(mode: DiskMode, broken: bool) -> SimDisk {
        SimDisk(Arc::new(Mutex::new(DiskState {
            records: Vec::new(),
            synced: 0,
            mode,
            broken,
        })))
    }

    /// The acceptor crashed: unsynced records are gone; a broken disk loses all.
    pub fn crash(&self) {
        let mut d = self.0.lock().expect("sim is single-threaded");
        let synced = d.synced;
        d.records.truncate(synced);
        if d.broken {
            d.records.clear();
            d.synced = 0;
        }
    }

    /// A storage handle for an acceptor (re)starting on this disk.
    pub fn storage(&self) -> Box<dyn Storage> {
        Box::new(self.clone())
    }
}

impl Storage for SimDisk {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        let d = self.0.lock().expect("sim is single-threaded");
        let mut recovered = Recovered {
            values_lost: d.mode == DiskMode::Memory,
            ..Recovered::default()
        };
        for record in &d.records[..d.synced] {
            recovered.apply(record.clone());
        }
        Ok(recovered)
    }

    fn append(&mut self, record: &Record) -> Result<(), StorageError> {
        let mut d = self.0.lock().expect("sim is single-threaded");
        if d.mode == DiskMode::Durable || record.is_metadata() {
            d.records.push(record.clone());
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let mut d = self.0.lock().expect("sim is single-threaded");
        d.synced = d.records.len();
        Ok(())
    }
}
