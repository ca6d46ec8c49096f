//! The linked list of the reconfiguration paper (section IV-B3): integers
//! with `add(i)` (true if i was not in the list; appends it), `remove(i)`
//! (true if i was in the list), `get(p)` (the element at position p) and
//! `contains(i)`. Every operation walks the list, so each costs O(n).
//!
//! Reads never conflict with each other; writes conflict with everything.
//! CC-G and OC-G agree: reads go to any one thread (by argument), writes to
//! `g_all`. In parallel mode only reads run, on `&LinkedList`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::encode;
use psmr_core::model::{ClassId, ConflictModel, Placement, ThreadSet};
use psmr_core::service::{Group, GroupMapping, Lane, Service};
use psmr_core::wire::ServiceId;

const NIL: u32 = u32::MAX;

/// A singly linked list of integers in an arena.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkedList {
    values: Vec<u64>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    len: usize,
    free: Vec<u32>,
}

impl LinkedList {
    /// An empty list.
    pub fn new() -> LinkedList {
        LinkedList {
            head: NIL,
            tail: NIL,
            ..LinkedList::default()
        }
    }

    /// A list holding `values` in order (duplicates are skipped).
    pub fn from_values(values: impl IntoIterator<Item = u64>) -> LinkedList {
        let mut list = LinkedList::new();
        let mut seen = std::collections::HashSet::new();
        for v in values {
            if seen.insert(v) {
                list.push_back(v);
            }
        }
        list
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut at = self.head;
        std::iter::from_fn(move || {
            (at != NIL).then(|| {
                let v = self.values[at as usize];
                at = self.next[at as usize];
                v
            })
        })
    }

    /// Whether `v` is in the list.
    pub fn contains(&self, v: u64) -> bool {
        self.iter().any(|x| x == v)
    }

    /// The element at position `p`.
    pub fn get(&self, p: u64) -> Option<u64> {
        self.iter().nth(usize::try_from(p).ok()?)
    }

    /// Appends `v` unless present; true if appended.
    pub fn add(&mut self, v: u64) -> bool {
        if self.contains(v) {
            return false;
        }
        self.push_back(v);
        true
    }

    fn push_back(&mut self, v: u64) {
        let node = match self.free.pop() {
            Some(n) => {
                self.values[n as usize] = v;
                self.next[n as usize] = NIL;
                n
            }
            None => {
                self.values.push(v);
                self.next.push(NIL);
                (self.values.len() - 1) as u32
            }
        };
        if self.tail == NIL {
            self.head = node;
        } else {
            self.next[self.tail as usize] = node;
        }
        self.tail = node;
        self.len += 1;
    }

    /// Removes `v`; true if it was present.
    pub fn remove(&mut self, v: u64) -> bool {
        let (mut prev, mut at) = (NIL, self.head);
        while at != NIL && self.values[at as usize] != v {
            prev = at;
            at = self.next[at as usize];
        }
        if at == NIL {
            return false;
        }
        let after = self.next[at as usize];
        if prev == NIL {
            self.head = after;
        } else {
            self.next[prev as usize] = after;
        }
        if self.tail == at {
            self.tail = prev;
        }
        self.free.push(at);
        self.len -= 1;
        true
    }
}

/// The list service's state.
pub type ListState = LinkedList;

/// An operation on the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListOp {
    /// Append `i` unless present.
    Add(u64),
    /// Remove `i`.
    Remove(u64),
    /// The element at position `p`.
    Get(u64),
    /// Whether `i` is present.
    Contains(u64),
}

impl ListOp {
    /// Encodes the operation.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    fn is_write(self) -> bool {
        matches!(self, ListOp::Add(_) | ListOp::Remove(_))
    }
}

/// A write reached parallel mode: the mapping sent it to one thread.
#[derive(Debug, Error)]
#[error(
    "thread {thread} got list write {op:?} in parallel mode; writes must be delivered in g_all"
)]
pub struct ListViolation {
    /// The thread.
    pub thread: usize,
    /// The write.
    pub op: ListOp,
}

/// The linked-list service.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListService;

fn read(list: &LinkedList, op: ListOp) -> Option<Bytes> {
    match op {
        ListOp::Get(p) => Some(encode(&list.get(p))),
        ListOp::Contains(v) => Some(encode(&list.contains(v))),
        ListOp::Add(_) | ListOp::Remove(_) => None,
    }
}

impl Service for ListService {
    type State = LinkedList;
    type Op = ListOp;
    type Violation = ListViolation;

    fn id(&self) -> ServiceId {
        ServiceId(2)
    }

    fn decode(&self, op: &[u8]) -> Option<ListOp> {
        postcard::from_bytes(op).ok()
    }

    fn execute(&self, list: &mut LinkedList, op: &ListOp) -> Bytes {
        match *op {
            ListOp::Add(v) => encode(&list.add(v)),
            ListOp::Remove(v) => encode(&list.remove(v)),
            read_op => read(list, read_op).expect("reads"),
        }
    }

    fn execute_shared(
        &self,
        list: &LinkedList,
        lane: Lane,
        op: &ListOp,
    ) -> Result<Bytes, ListViolation> {
        read(list, *op).ok_or(ListViolation {
            thread: lane.thread,
            op: *op,
        })
    }

    fn safety_check(&self, _list: &LinkedList, _lane: Lane, op: &ListOp) -> bool {
        !op.is_write()
    }

    fn digest(&self, list: &LinkedList) -> u64 {
        super::fnv(list.iter())
    }

    /// The values in order: nothing the operations observe depends on
    /// where in the arena they sit.
    type Image = Vec<u64>;

    fn capture(&self, list: &LinkedList) -> Vec<u64> {
        list.iter().collect()
    }

    fn write_image(&self, image: &Vec<u64>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        super::write_postcard(image, out)
    }

    fn read_image(&self, input: &mut dyn std::io::Read) -> std::io::Result<LinkedList> {
        let values: Vec<u64> = super::read_postcard(input)?;
        let list = LinkedList::from_values(values.iter().copied());
        if list.len() != values.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "list image: a value appears twice",
            ));
        }
        Ok(list)
    }
}

impl GroupMapping for ListService {
    type Op = ListOp;

    fn conservative(&self, op: &ListOp, threads: usize) -> Group {
        match *op {
            ListOp::Add(_) | ListOp::Remove(_) => Group::All,
            ListOp::Get(x) | ListOp::Contains(x) => {
                Group::Thread((x % threads.max(1) as u64) as usize)
            }
        }
    }

    fn optimistic(&self, op: &ListOp, threads: usize) -> Group {
        self.conservative(op, threads)
    }
}

/// The class model of section IV-B3: `c_r` (get, contains) conflicts only
/// with `c_w` (add, remove), which conflicts with everything; CtoT(c_r) is
/// empty and CtoT(c_w) every thread. The CBASE rules say the same.
impl ConflictModel for ListService {
    fn placement(&self, op: &ListOp, _lanes: usize) -> Placement {
        if op.is_write() {
            Placement::Alone
        } else {
            Placement::Anywhere
        }
    }

    fn operator(&self, op: &ListOp) -> usize {
        usize::from(op.is_write())
    }

    fn ocm(&self, a: usize, b: usize) -> bool {
        a == 1 || b == 1
    }

    fn related(&self, _a: &ListOp, _b: &ListOp) -> bool {
        false
    }

    fn classes(&self, _lanes: usize) -> usize {
        2
    }

    fn class(&self, op: &ListOp, _lanes: usize) -> ClassId {
        usize::from(op.is_write())
    }

    fn class_conflicts(&self, a: ClassId, b: ClassId) -> bool {
        a == 1 || b == 1
    }

    fn threads_of(&self, class: ClassId, threads: usize) -> ThreadSet {
        match class {
            0 => ThreadSet::Any,
            _ => ThreadSet::all(threads),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_operations_match_a_vector() {
        let mut list = LinkedList::from_values([3, 1, 4, 1, 5]);
        assert_eq!(list.iter().collect::<Vec<_>>(), vec![3, 1, 4, 5]);
        assert!(!list.add(4));
        assert!(list.add(9));
        assert!(list.remove(3));
        assert!(list.remove(9));
        assert!(!list.remove(7));
        assert_eq!(list.iter().collect::<Vec<_>>(), vec![1, 4, 5]);
        assert_eq!(list.get(1), Some(4));
        assert_eq!(list.get(3), None);
        assert!(list.add(2));
        assert_eq!(list.iter().collect::<Vec<_>>(), vec![1, 4, 5, 2]);
        assert_eq!(list.len(), 4);
    }
}
