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

use crate::op::{Invalid, MAX_SCAN, Op, Response};
use crate::partition::Partitioning;
use crate::tree::{BTree, ContractViolation, TreeImage};

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

fn scan_count(count: u32) -> Result<(usize, bool), Response> {
    if count == 0 {
        return Err(Response::Invalid(Invalid::EmptyScan));
    }
    Ok((count.min(MAX_SCAN) as usize, count > MAX_SCAN))
}

impl Service for BTreeService {
    type State = BTree;
    type Op = Op;
    type Violation = ContractViolation;
    type Image = TreeImage;

    fn capture(&self, state: &BTree) -> TreeImage {
        state.capture()
    }

    fn write_image(&self, image: &TreeImage, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        image.write(out)
    }

    fn read_image(&self, input: &mut dyn std::io::Read) -> std::io::Result<BTree> {
        BTree::read_image(input)
    }

    fn id(&self) -> ServiceId {
        Self::ID
    }

    fn decode(&self, op: &[u8]) -> Option<Op> {
        Op::decode(op)
    }

    fn execute(&self, tree: &mut BTree, op: &Op) -> Bytes {
        let response = match *op {
            Op::Read(k) => Response::Value(tree.get(k)),
            Op::Update(k, v) => Response::Value(tree.update(k, v)),
            Op::Insert(k, v) => Response::Value(tree.insert(k, v)),
            Op::Delete(k) => Response::Value(tree.remove(k)),
            Op::Scan(k, n) => match scan_count(n) {
                Ok((n, capped)) => Response::Entries {
                    entries: tree.scan(k, n),
                    capped,
                },
                Err(invalid) => invalid,
            },
        };
        response.encode()
    }

    fn execute_shared(
        &self,
        tree: &BTree,
        lane: Lane,
        op: &Op,
    ) -> Result<Bytes, ContractViolation> {
        let p = self.partitioning(lane.threads);
        let t = lane.thread;
        let response = match *op {
            Op::Read(k) => Response::Value(tree.get_shared(&p, t, k)?),
            Op::Update(k, v) => Response::Value(tree.update_shared(&p, t, k, v)?),
            Op::Insert(k, v) => Response::Value(tree.insert_shared(&p, t, k, v)?),
            Op::Delete(k) => Response::Value(tree.remove_shared(&p, t, k)?),
            Op::Scan(k, n) => match scan_count(n) {
                Ok((n, capped)) => Response::Entries {
                    entries: tree.scan_shared(&p, t, k, n)?,
                    capped,
                },
                Err(invalid) => invalid,
            },
        };
        Ok(response.encode())
    }

    fn safety_check(&self, tree: &BTree, lane: Lane, op: &Op) -> bool {
        let p = self.partitioning(lane.threads);
        let t = lane.thread;
        match *op {
            Op::Read(k) | Op::Update(k, _) => p.owner(k) == t,
            Op::Insert(k, _) => tree.insert_is_safe(&p, t, k),
            Op::Delete(k) => tree.remove_is_safe(&p, t, k),
            Op::Scan(k, n) => match scan_count(n) {
                Ok((n, _)) => tree.scan_is_safe(&p, t, k, n),
                Err(_) => p.owner(k) == t,
            },
        }
    }

    fn digest(&self, tree: &BTree) -> u64 {
        tree.digest()
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
