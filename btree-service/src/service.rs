//! The B+-tree as a replicated service: [`Service`] (execution in
//! sequential, synchronous and parallel mode, the safety check) and
//! [`GroupMapping`] (CC-G and OC-G, docs/ARCHITECTURE.md, "The B+-tree service").
//!
//! | op | CC-G | OC-G | safety check (parallel mode) |
//! |---|---|---|---|
//! | Read, Update | g(k) | g(k) | — |
//! | Insert | g_all | g(k) | key exists, or k's leaf is inside the partition and has room |
//! | Delete | g_all | g(k) | key absent, or k's leaf is inside the partition and stays half full |
//! | Scan | g_all | g(k) | every entry it returns lies in k's partition |
//!
//! where g(k) is the group of the thread whose partition holds k.

use bytes::Bytes;
use psmr_core::model::ClassId;
use psmr_core::{
    ConflictModel, Group, GroupMapping, Lane, Placement, Service, ServiceClient, ServiceId,
    ThreadSet,
};

use crate::op::{MAX_SCAN, Op, Response};
use crate::partition::Partitioning;
use crate::store::{KvImage, KvStore};
use crate::tree::ContractViolation;

/// The B+-tree service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BTreeService {
    key_space: u64,
}

impl BTreeService {
    /// The service's id in requests.
    pub const ID: ServiceId = ServiceId(1);

    /// A service partitioning `[0, key_space)` over the threads (0: all of `u64`).
    pub fn new(key_space: u64) -> BTreeService {
        BTreeService { key_space }
    }

    /// The partitioning for `threads` threads.
    pub fn partitioning(&self, threads: usize) -> Partitioning {
        Partitioning::new(threads, self.key_space)
    }
}

/// A scan's entry count, capped at [`MAX_SCAN`], and whether it was.
fn scan_count(count: u32) -> (usize, bool) {
    (count.min(MAX_SCAN) as usize, count > MAX_SCAN)
}

impl Service for BTreeService {
    type State = KvStore;
    type Op = Op;
    type Violation = ContractViolation;
    type Image = KvImage;

    fn capture(&self, state: &KvStore) -> KvImage {
        state.capture()
    }

    fn write_image(&self, image: &KvImage, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        image.write(out)
    }

    fn read_image(&self, input: &mut dyn std::io::Read) -> std::io::Result<KvStore> {
        KvStore::read_image(input)
    }

    fn id(&self) -> ServiceId {
        Self::ID
    }

    fn decode(&self, op: &[u8]) -> Option<Op> {
        Op::decode(op)
    }

    fn execute(&self, store: &mut KvStore, op: &Op) -> Bytes {
        if let Some(invalid) = op.invalid() {
            return Response::Invalid(invalid).encode();
        }
        let response = match op {
            Op::Read(k) => Response::Value(store.get(*k)),
            Op::Update(k, v) => Response::Value(store.update(*k, v.clone())),
            Op::Insert(k, v) => Response::Value(store.insert(*k, v.clone())),
            Op::Delete(k) => Response::Value(store.remove(*k)),
            Op::Scan(k, n) => {
                let (n, capped) = scan_count(*n);
                let entries = store.scan(*k, n);
                Response::Entries { entries, capped }
            }
        };
        response.encode()
    }

    fn execute_shared(
        &self,
        store: &KvStore,
        lane: Lane,
        op: &Op,
    ) -> Result<Bytes, ContractViolation> {
        if let Some(invalid) = op.invalid() {
            return Ok(Response::Invalid(invalid).encode());
        }
        let p = self.partitioning(lane.threads);
        let t = lane.thread;
        let response = match op {
            Op::Read(k) => Response::Value(store.get_shared(&p, t, *k)?),
            Op::Update(k, v) => Response::Value(store.update_shared(&p, t, *k, v.clone())?),
            Op::Insert(k, v) => Response::Value(store.insert_shared(&p, t, *k, v.clone())?),
            Op::Delete(k) => Response::Value(store.remove_shared(&p, t, *k)?),
            Op::Scan(k, n) => {
                let (n, capped) = scan_count(*n);
                let entries = store.scan_shared(&p, t, *k, n)?;
                Response::Entries { entries, capped }
            }
        };
        Ok(response.encode())
    }

    fn safety_check(&self, store: &KvStore, lane: Lane, op: &Op) -> bool {
        let p = self.partitioning(lane.threads);
        let t = lane.thread;
        let tree = store.tree();
        match *op {
            _ if op.invalid().is_some() => p.owner(op.key()) == t,
            Op::Read(k) | Op::Update(k, _) => p.owner(k) == t,
            Op::Insert(k, _) => tree.insert_is_safe(&p, t, k),
            Op::Delete(k) => tree.remove_is_safe(&p, t, k),
            Op::Scan(k, n) => tree.scan_is_safe(&p, t, k, scan_count(n).0),
        }
    }

    fn digest(&self, store: &KvStore) -> u64 {
        store.digest()
    }
}

impl GroupMapping for BTreeService {
    type Op = Op;

    fn conservative(&self, op: &Op, threads: usize) -> Group {
        match op {
            Op::Read(k) | Op::Update(k, _) => Group::Thread(self.partitioning(threads).owner(*k)),
            Op::Insert(..) | Op::Delete(_) | Op::Scan(..) => Group::All,
        }
    }

    fn optimistic(&self, op: &Op, threads: usize) -> Group {
        Group::Thread(self.partitioning(threads).owner(op.key()))
    }
}

/// `cbase` and `classes`: reads and updates run in parallel on the lane of
/// their key's partition (the same contract as psmr's threads); inserts,
/// deletes and scans, which may change the tree's shape or read across
/// partitions, run alone.
///
/// CBASE rules: Insert, Delete and Scan depend on everything (OCM); a Read
/// or Update depends on an Update of the same key (AAF: same key; OACM).
/// The engine adds that two commands of one lane are dependent.
///
/// Classes: class 0 = {Insert, Delete, Scan}, mapped to every thread; class
/// p+1 = {Read, Update} of partition p, mapped to thread p mod n.
impl ConflictModel for BTreeService {
    fn placement(&self, op: &Op, lanes: usize) -> Placement {
        match *op {
            Op::Read(k) | Op::Update(k, _) => Placement::Lane(self.partitioning(lanes).owner(k)),
            Op::Insert(..) | Op::Delete(_) | Op::Scan(..) => Placement::Alone,
        }
    }

    fn operator(&self, op: &Op) -> usize {
        match op {
            Op::Read(_) => 0,
            Op::Update(..) => 1,
            Op::Insert(..) | Op::Delete(_) | Op::Scan(..) => 2,
        }
    }

    fn ocm(&self, a: usize, b: usize) -> bool {
        a == 2 || b == 2
    }

    fn related(&self, a: &Op, b: &Op) -> bool {
        a.key() == b.key()
    }

    fn oacm(&self, a: usize, b: usize) -> bool {
        a == 1 || b == 1
    }

    fn classes(&self, lanes: usize) -> usize {
        lanes + 1
    }

    fn class(&self, op: &Op, lanes: usize) -> ClassId {
        match *op {
            Op::Read(k) | Op::Update(k, _) => self.partitioning(lanes).owner(k) + 1,
            Op::Insert(..) | Op::Delete(_) | Op::Scan(..) => 0,
        }
    }

    fn class_conflicts(&self, a: ClassId, b: ClassId) -> bool {
        a == 0 || b == 0 || a == b
    }

    fn threads_of(&self, class: ClassId, threads: usize) -> ThreadSet {
        match class {
            0 => ThreadSet::all(threads),
            p => ThreadSet::one((p - 1) % threads),
        }
    }
}

impl ServiceClient for BTreeService {
    fn service_id(&self) -> ServiceId {
        Service::id(self)
    }

    fn encode_op(&self, op: &Op) -> Bytes {
        op.encode()
    }
}
