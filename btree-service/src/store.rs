//! The B+-tree service's state: keys in the tree, byte values beside it.
//!
//! ```text
//! KvStore
//!   tree    BTree: key -> handle              (the shape, the concurrency contract)
//!   values  64 shards, shard = mix(key) % 64  (Mutex<Slab<Stored>>: handle -> value)
//! ```
//!
//! The tree's leaves hold 64-bit words, so that threads can work in
//! disjoint leaves through `&BTree` without `unsafe`; a value of any size
//! lives in a slab and the leaf holds its slot. A key's value always sits
//! in the shard of that key, so a thread that owns a key (the tree checks
//! the contract first) touches one shard's lock for as long as it takes to
//! swap a value; with `&mut` no lock is taken. Each shard has its own
//! cache line (two threads on neighbouring locks would otherwise pass the
//! line back and forth), and a value of up to 23 bytes lives in its slot
//! (no allocation, no second cache miss to reach it). Handles are never
//! seen outside: responses, digests and images carry the bytes.

use std::io::{self, Read, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use slab::Slab;

use crate::partition::Partitioning;
use crate::tree::{BTree, ContractViolation, TreeImage, mix};

/// Value shards: enough that two threads rarely meet on one lock.
const SHARDS: usize = 64;

const VALUES_MAGIC: &[u8; 8] = b"PSMRVAL1";

/// The largest value the service stores (a request must fit in one frame).
pub const MAX_VALUE: usize = psmr_core::cluster::MAX_VALUE_SIZE;

fn shard_of(key: u64) -> usize {
    (mix(key) % SHARDS as u64) as usize
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Longest value kept in its slot.
const SMALL: usize = 23;

/// A value as a shard keeps it.
#[derive(Clone, Debug)]
enum Stored {
    /// Up to [`SMALL`] bytes, in place.
    Small { len: u8, bytes: [u8; SMALL] },
    /// Longer: shared with the request that brought it.
    Large(Bytes),
}

impl Stored {
    fn new(value: Bytes) -> Stored {
        if value.len() > SMALL {
            return Stored::Large(value);
        }
        let mut bytes = [0; SMALL];
        bytes[..value.len()].copy_from_slice(&value);
        Stored::Small {
            len: value.len() as u8,
            bytes,
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Stored::Small { len, bytes } => &bytes[..usize::from(*len)],
            Stored::Large(bytes) => bytes,
        }
    }

    fn to_bytes(&self) -> Bytes {
        match self {
            Stored::Small { .. } => Bytes::copy_from_slice(self.as_slice()),
            Stored::Large(bytes) => bytes.clone(),
        }
    }
}

/// One shard, on its own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(Mutex<Slab<Stored>>);

/// The values, by handle, in shards chosen by key.
#[derive(Debug)]
struct Values {
    shards: Box<[Shard]>,
}

impl Values {
    fn new() -> Values {
        Values {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    /// The shard of `key`, locked (shared access: a worker thread).
    fn lock(&self, key: u64) -> MutexGuard<'_, Slab<Stored>> {
        self.shards[shard_of(key)].lock()
    }

    /// The shard of `key` (exclusive access: no lock taken).
    fn shard_mut(&mut self, key: u64) -> &mut Slab<Stored> {
        self.shards[shard_of(key)]
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Slab<Stored>> {
        // A panic while the lock is held cannot leave a slab half changed:
        // every critical section is one slab call.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn handle(slot: usize) -> u64 {
    slot as u64
}

fn slot(handle: u64) -> usize {
    usize::try_from(handle).expect("a handle is a slab slot")
}

/// Every handle the tree holds names a value of its key's shard.
fn value(slab: &Slab<Stored>, handle: u64) -> Bytes {
    slab.get(slot(handle))
        .expect("the tree's handle names a stored value")
        .to_bytes()
}

/// Takes a value out of its slot.
fn take(slab: &mut Slab<Stored>, handle: u64) -> Bytes {
    slab.remove(slot(handle)).to_bytes()
}

/// Puts a new value in a slot; returns the old one.
fn swap(slab: &mut Slab<Stored>, handle: u64, new: Bytes) -> Bytes {
    std::mem::replace(&mut slab[slot(handle)], Stored::new(new)).to_bytes()
}

/// A map from `u64` keys to byte values: the B+-tree service's state.
#[derive(Debug)]
pub struct KvStore {
    tree: BTree,
    values: Values,
}

/// A copy of a store taken at a checkpoint's cut: the tree's nodes and
/// every value shard as they are.
#[derive(Debug)]
pub struct KvImage {
    tree: TreeImage,
    shards: Vec<Slab<Stored>>,
}

impl KvStore {
    /// An empty store whose tree nodes hold up to `fanout` keys (at least 4).
    pub fn new(fanout: usize) -> KvStore {
        KvStore {
            tree: BTree::new(fanout),
            values: Values::new(),
        }
    }

    /// A store of `entries`, sorted by key without duplicates, with the
    /// tree's nodes filled to `fill` (see [`BTree::bulk_load`]).
    pub fn bulk_load(
        fanout: usize,
        fill: f64,
        entries: impl IntoIterator<Item = (u64, Bytes)>,
    ) -> KvStore {
        let mut values = Values::new();
        let handles = entries
            .into_iter()
            .map(|(k, v)| (k, handle(values.shard_mut(k).insert(Stored::new(v)))));
        let tree = BTree::bulk_load(fanout, fill, handles);
        KvStore { tree, values }
    }

    /// The tree of keys (its values are handles); for the safety check and tests.
    pub fn tree(&self) -> &BTree {
        &self.tree
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether the store has no entry.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: u64) -> Option<Bytes> {
        let h = self.tree.get(key)?;
        Some(value(&self.values.lock(key), h))
    }

    /// Sets the value of an existing key; returns the previous value.
    pub fn update(&mut self, key: u64, new: Bytes) -> Option<Bytes> {
        let h = self.tree.get(key)?;
        Some(swap(self.values.shard_mut(key), h, new))
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: u64, new: Bytes) -> Option<Bytes> {
        if let Some(h) = self.tree.get(key) {
            return Some(swap(self.values.shard_mut(key), h, new));
        }
        let h = handle(self.values.shard_mut(key).insert(Stored::new(new)));
        let old = self.tree.insert(key, h);
        debug_assert!(old.is_none(), "the key was absent");
        None
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: u64) -> Option<Bytes> {
        let h = self.tree.remove(key)?;
        Some(take(self.values.shard_mut(key), h))
    }

    /// Up to `count` entries from `from` on, in key order.
    pub fn scan(&self, from: u64, count: usize) -> Vec<(u64, Bytes)> {
        self.with_values(self.tree.scan(from, count))
    }

    fn with_values(&self, handles: Vec<(u64, u64)>) -> Vec<(u64, Bytes)> {
        handles
            .into_iter()
            .map(|(k, h)| (k, value(&self.values.lock(k), h)))
            .collect()
    }

    /// The value of one of `thread`'s keys (parallel mode; see [`BTree::get_shared`]).
    pub fn get_shared(
        &self,
        p: &Partitioning,
        thread: usize,
        key: u64,
    ) -> Result<Option<Bytes>, ContractViolation> {
        let Some(h) = self.tree.get_shared(p, thread, key)? else {
            return Ok(None);
        };
        Ok(Some(value(&self.values.lock(key), h)))
    }

    /// Sets the value of one of `thread`'s existing keys.
    pub fn update_shared(
        &self,
        p: &Partitioning,
        thread: usize,
        key: u64,
        new: Bytes,
    ) -> Result<Option<Bytes>, ContractViolation> {
        let Some(h) = self.tree.get_shared(p, thread, key)? else {
            return Ok(None);
        };
        Ok(Some(swap(&mut self.values.lock(key), h, new)))
    }

    /// Inserts or replaces one of `thread`'s keys without changing the
    /// tree's shape (see [`BTree::insert_shared`]); nothing changes on a
    /// violation.
    pub fn insert_shared(
        &self,
        p: &Partitioning,
        thread: usize,
        key: u64,
        new: Bytes,
    ) -> Result<Option<Bytes>, ContractViolation> {
        // One lock for the slot and the tree's verdict: the tree takes none.
        let mut slab = self.values.lock(key);
        let h = handle(slab.insert(Stored::new(new)));
        match self.tree.insert_shared(p, thread, key, h) {
            Ok(None) => Ok(None),
            Ok(Some(old)) => Ok(Some(take(&mut slab, old))),
            Err(violation) => {
                slab.remove(slot(h));
                Err(violation)
            }
        }
    }

    /// Removes one of `thread`'s keys without changing the tree's shape.
    pub fn remove_shared(
        &self,
        p: &Partitioning,
        thread: usize,
        key: u64,
    ) -> Result<Option<Bytes>, ContractViolation> {
        let Some(h) = self.tree.remove_shared(p, thread, key)? else {
            return Ok(None);
        };
        Ok(Some(take(&mut self.values.lock(key), h)))
    }

    /// Up to `count` of `thread`'s entries from `from` on (see [`BTree::scan_shared`]).
    pub fn scan_shared(
        &self,
        p: &Partitioning,
        thread: usize,
        from: u64,
        count: usize,
    ) -> Result<Vec<(u64, Bytes)>, ContractViolation> {
        let handles = self.tree.scan_shared(p, thread, from, count)?;
        Ok(self.with_values(handles))
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Bytes)> + '_ {
        self.tree
            .iter()
            .map(|(k, h)| (k, value(&self.values.lock(k), h)))
    }

    /// A digest of the entries that depends neither on the tree's shape,
    /// nor on where values are kept, nor on the order operations ran in.
    pub fn digest(&self) -> u64 {
        self.iter()
            .fold(0u64, |acc, (k, v)| acc.wrapping_add(mix(k ^ mix(hash(&v)))))
    }

    /// Checks the tree's invariants and that its handles and the values
    /// match one to one: the first broken rule, named.
    pub fn check(&self) -> Result<(), String> {
        self.tree.check()?;
        let mut counts = [0usize; SHARDS];
        for (k, h) in self.tree.iter() {
            if !self.values.lock(k).contains(slot(h)) {
                return Err(format!("key {k}: handle {h} names no value"));
            }
            counts[shard_of(k)] += 1;
        }
        for (shard, count) in counts.iter().enumerate() {
            let stored = self.values.shards[shard].lock().len();
            if stored != *count {
                return Err(format!(
                    "value shard {shard} holds {stored} values for {count} keys"
                ));
            }
        }
        Ok(())
    }

    /// Checks every invariant; panics naming the first broken one. For tests.
    pub fn assert_invariants(&self) {
        if let Err(broken) = self.check() {
            panic!("{broken}");
        }
    }

    /// Copies the tree and the values; call while nothing writes the store.
    pub fn capture(&self) -> KvImage {
        KvImage {
            tree: self.tree.capture(),
            shards: self
                .values
                .shards
                .iter()
                .map(|s| s.lock().clone())
                .collect(),
        }
    }

    /// Reads a store written by [`KvImage::write`] and checks it; a damaged
    /// image is an `InvalidData` error.
    pub fn read_image(input: &mut dyn Read) -> io::Result<KvStore> {
        let tree = BTree::read_image(input)?;
        let mut magic = [0; 8];
        input.read_exact(&mut magic)?;
        if &magic != VALUES_MAGIC {
            return Err(invalid("not a B+-tree value image (bad magic)"));
        }
        let shards = read_u64(input)?;
        if shards != SHARDS as u64 {
            return Err(invalid(format!(
                "value image: {shards} shards, not {SHARDS}"
            )));
        }
        // No shard ever held more values than the leaves have room for,
        // so that bounds every count and slot of an undamaged image.
        let room = tree.capacity() as u64;
        let mut values = Values::new();
        for shard in values.shards.iter_mut() {
            *shard.0.get_mut().unwrap_or_else(PoisonError::into_inner) = read_shard(input, room)?;
        }
        let store = KvStore { tree, values };
        store
            .check()
            .map_err(|broken| invalid(format!("value image: {broken}")))?;
        Ok(store)
    }
}

fn read_u64(input: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_shard(input: &mut dyn Read, room: u64) -> io::Result<Slab<Stored>> {
    let entries = read_u64(input)?;
    if entries > room {
        return Err(invalid(format!("value image: a shard of {entries} values")));
    }
    let mut slab = Vec::with_capacity(entries as usize);
    for _ in 0..entries {
        let at = read_u64(input)?;
        if at >= room {
            return Err(invalid(format!("value image: slot {at}")));
        }
        let len = read_u64(input)?;
        if len > MAX_VALUE as u64 {
            return Err(invalid(format!("value image: a value of {len} bytes")));
        }
        let mut bytes = vec![0; len as usize];
        input.read_exact(&mut bytes)?;
        slab.push((at as usize, Stored::new(Bytes::from(bytes))));
    }
    if slab.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(invalid("value image: slots out of order"));
    }
    Ok(slab.into_iter().collect())
}

impl KvImage {
    /// Writes the image: the tree's (see [`TreeImage::write`]), then
    /// `b"PSMRVAL1" | shards: u64`, per shard `entries: u64` and per entry
    /// `slot: u64 | len: u64 | bytes`, little-endian, slots increasing.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        self.tree.write(out)?;
        out.write_all(VALUES_MAGIC)?;
        out.write_all(&(self.shards.len() as u64).to_le_bytes())?;
        for shard in &self.shards {
            out.write_all(&(shard.len() as u64).to_le_bytes())?;
            for (at, stored) in shard {
                let bytes = stored.as_slice();
                out.write_all(&(at as u64).to_le_bytes())?;
                out.write_all(&(bytes.len() as u64).to_le_bytes())?;
                out.write_all(bytes)?;
            }
        }
        Ok(())
    }
}

/// FNV-1a: a hash of a value's bytes that is the same in every process.
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The value the preload and the load generator give key `n`: `n`
/// little-endian, cut or padded with zeros to `size` bytes (so that a
/// value of 8 or more bytes tells which `n` wrote it).
pub fn value_of(n: u64, size: usize) -> Bytes {
    let mut bytes = vec![0; size];
    let head = size.min(8);
    bytes[..head].copy_from_slice(&n.to_le_bytes()[..head]);
    Bytes::from(bytes)
}

/// The `n` of a value made by [`value_of`] (the first 8 bytes, zero-padded).
pub fn value_id(value: &[u8]) -> u64 {
    let mut word = [0; 8];
    let head = value.len().min(8);
    word[..head].copy_from_slice(&value[..head]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn grown(seed: u64) -> (KvStore, BTreeMap<u64, Bytes>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut store = KvStore::new(4 + seed as usize % 5);
        let mut model = BTreeMap::new();
        for _ in 0..3_000 {
            let k = rng.random_range(0..400);
            let v = value_of(rng.random(), rng.random_range(0..40));
            match rng.random_range(0..4) {
                0 => assert_eq!(store.insert(k, v.clone()), model.insert(k, v)),
                1 => {
                    let old = model.get_mut(&k).map(|m| std::mem::replace(m, v.clone()));
                    assert_eq!(store.update(k, v), old);
                }
                2 => assert_eq!(store.remove(k), model.remove(&k)),
                _ => assert_eq!(store.get(k), model.get(&k).cloned()),
            }
        }
        (store, model)
    }

    /// Byte values of many sizes behave as a map, whatever the tree does
    /// underneath (splits, merges, reused slots), and every handle matches
    /// one value. Seeds 0..20.
    #[test]
    fn byte_values_behave_as_a_map() {
        for seed in 0..20 {
            let (store, model) = grown(seed);
            store.assert_invariants();
            let all: Vec<_> = store.iter().collect();
            let expected: Vec<_> = model.into_iter().collect();
            assert_eq!(all, expected, "seed {seed}");
        }
    }

    /// Parallel-mode operations give the same values as exclusive ones, and
    /// an insert the contract refuses leaves no value behind.
    #[test]
    fn shared_operations_keep_values_and_refusals_change_nothing() {
        let p = Partitioning::new(2, 1_000);
        let entries = (0..500).map(|i| (2 * i, value_of(i, 16)));
        let store = KvStore::bulk_load(4, 1.0, entries);
        let digest = store.digest();
        let own = p.range(0).0;
        assert_eq!(
            store.get_shared(&p, 0, own).unwrap(),
            Some(value_of(own / 2, 16))
        );
        assert!(store.get_shared(&p, 1, own).is_err(), "a foreign key");
        // Full leaves (fill 1.0): a new key would split its leaf.
        assert!(
            store
                .insert_shared(&p, 0, own + 1, value_of(9, 300))
                .is_err()
        );
        store.assert_invariants();
        assert_eq!(store.digest(), digest, "a refused insert changed the store");
        let old = store.update_shared(&p, 0, own, value_of(7, 300)).unwrap();
        assert_eq!(old, Some(value_of(own / 2, 16)));
        assert_eq!(store.get(own), Some(value_of(7, 300)));
        assert_eq!(
            store.insert_shared(&p, 0, own, value_of(8, 1)).unwrap(),
            Some(value_of(7, 300))
        );
        store.assert_invariants();
    }

    /// The digest depends on the entries only: two stores built in
    /// different orders agree, and one changed value changes it.
    #[test]
    fn the_digest_sees_values_not_history() {
        let mut a = KvStore::new(4);
        let mut b = KvStore::new(4);
        for k in 0..100 {
            a.insert(k, value_of(k, 12));
        }
        for k in (0..100).rev() {
            b.insert(k, value_of(0, 3));
            b.update(k, value_of(k, 12));
        }
        assert_eq!(a.digest(), b.digest());
        b.update(50, value_of(51, 12));
        assert_ne!(a.digest(), b.digest());
    }

    /// An image reads back to the same entries and the same bytes again; a
    /// damaged or cut image is refused, never panics.
    #[test]
    fn an_image_reads_back_and_damage_is_refused() {
        for seed in 0..10 {
            let (store, _) = grown(seed);
            let mut bytes = Vec::new();
            store.capture().write(&mut bytes).unwrap();
            let back = KvStore::read_image(&mut bytes.as_slice()).unwrap();
            assert_eq!(back.digest(), store.digest(), "seed {seed}");
            let mut again = Vec::new();
            back.capture().write(&mut again).unwrap();
            assert_eq!(bytes, again, "seed {seed}");
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..50 {
                let mut damaged = bytes.clone();
                let at = rng.random_range(0..damaged.len());
                damaged[at] ^= 1 << rng.random_range(0..8);
                let _ = KvStore::read_image(&mut damaged.as_slice());
                let cut = rng.random_range(0..bytes.len());
                assert!(
                    KvStore::read_image(&mut &bytes[..cut]).is_err(),
                    "seed {seed} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn a_value_tells_who_wrote_it() {
        assert_eq!(value_id(&value_of(0xdead_beef, 256)), 0xdead_beef);
        assert_eq!(value_of(7, 256).len(), 256);
        assert_eq!(value_id(&value_of(0x1234, 1)), 0x34);
        assert!(value_of(7, 0).is_empty());
    }
}
