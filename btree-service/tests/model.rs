//! Model-based tests of the B+-tree against `std::collections::BTreeMap`
//! (docs/testing.md): random operation sequences on small fanouts, so
//! that splits, borrows and merges happen all the time; every response is
//! compared and every invariant checked after every operation.
//!
//! `PSMR_BTREE_SEEDS=N` runs N seeds (default 60); a failure names its seed,
//! and `PSMR_BTREE_SEED=S` replays it.

use std::collections::BTreeMap;

use psmr_btree::{BTree, Partitioning, ViolationKind};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn seeds() -> Vec<u64> {
    psmr_replica::workload::seeds_from_env("PSMR_BTREE", 60)
}

fn model_scan(model: &BTreeMap<u64, u64>, from: u64, n: usize) -> Vec<(u64, u64)> {
    model.range(from..).take(n).map(|(&k, &v)| (k, v)).collect()
}

/// One random operation on both, compared.
fn step(
    rng: &mut ChaCha8Rng,
    tree: &mut BTree,
    model: &mut BTreeMap<u64, u64>,
    keys: u64,
    seed: u64,
    i: usize,
) {
    let k = rng.random_range(0..keys);
    let v = rng.random::<u64>();
    let what = format!("seed={seed} step={i}");
    match rng.random_range(0..10) {
        0..=3 => assert_eq!(tree.insert(k, v), model.insert(k, v), "{what}: insert {k}"),
        4..=6 => assert_eq!(tree.remove(k), model.remove(&k), "{what}: remove {k}"),
        7 => {
            let expected = model.get_mut(&k).map(|slot| std::mem::replace(slot, v));
            assert_eq!(tree.update(k, v), expected, "{what}: update {k}");
        }
        8 => assert_eq!(tree.get(k), model.get(&k).copied(), "{what}: get {k}"),
        _ => {
            let n = rng.random_range(1..20);
            assert_eq!(
                tree.scan(k, n),
                model_scan(model, k, n),
                "{what}: scan {k} {n}"
            );
        }
    }
}

#[test]
fn random_operations_match_btreemap_on_small_fanouts() {
    for seed in seeds() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let fanout = rng.random_range(4..=9);
        let keys = rng.random_range(10..400);
        let mut tree = BTree::new(fanout);
        let mut model = BTreeMap::new();
        for i in 0..rng.random_range(200..1500) {
            step(&mut rng, &mut tree, &mut model, keys, seed, i);
            tree.assert_invariants();
        }
        assert_eq!(
            tree.iter().collect::<Vec<_>>(),
            model.into_iter().collect::<Vec<_>>(),
            "seed={seed}"
        );
    }
}

#[test]
fn growing_and_draining_changes_height_both_ways() {
    let mut tree = BTree::new(4);
    for k in 0..2000 {
        tree.insert(k * 7 % 2003, k);
    }
    tree.assert_invariants();
    assert!(tree.height() >= 4, "height {}", tree.height());
    for k in 0..2000 {
        assert!(tree.remove(k * 7 % 2003).is_some());
        if k % 97 == 0 {
            tree.assert_invariants();
        }
    }
    tree.assert_invariants();
    assert_eq!(tree.height(), 0);
    assert!(tree.is_empty());
}

#[test]
fn digests_depend_on_contents_not_shape_or_history() {
    let entries: Vec<(u64, u64)> = (0..500).map(|k| (k * 13 % 1009, k)).collect();
    let mut a = BTree::new(4);
    for &(k, v) in &entries {
        a.insert(k, v);
    }
    let mut sorted = entries.clone();
    sorted.sort_unstable();
    let b = BTree::bulk_load(16, 0.9, sorted);
    assert_eq!(a.digest(), b.digest());
    a.insert(5000, 1);
    assert_ne!(a.digest(), b.digest());
}

/// Parallel-mode operations, driven the way opt-PSMR drives them: each
/// operation goes to the thread owning its key; shape-preserving ones run
/// through the shared API when the safety check passes, the others through
/// the exclusive API. Results must match the model, and a refused shared
/// operation must leave the tree untouched.
#[test]
fn shared_operations_match_btreemap_when_the_safety_check_passes() {
    for seed in seeds() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xabcd);
        let threads = rng.random_range(1..=4);
        let keys = rng.random_range(50..600);
        let p = Partitioning::new(threads, keys);
        let entries = (0..keys).filter(|k| k % 2 == 0).map(|k| (k, k));
        let mut tree = BTree::bulk_load(rng.random_range(4..=8), 0.75, entries.clone());
        let mut model: BTreeMap<u64, u64> = entries.collect();
        let (mut shared, mut exclusive) = (0, 0);
        for i in 0..800 {
            let k = rng.random_range(0..keys);
            let t = p.owner(k);
            let what = format!("seed={seed} step={i} key={k} thread={t}");
            let insert = rng.random_bool(0.5);
            let safe = if insert {
                tree.insert_is_safe(&p, t, k)
            } else {
                tree.remove_is_safe(&p, t, k)
            };
            let expected = if insert {
                model.insert(k, i)
            } else {
                model.remove(&k)
            };
            let got = if safe {
                shared += 1;
                if insert {
                    tree.insert_shared(&p, t, k, i)
                } else {
                    tree.remove_shared(&p, t, k)
                }
                .unwrap_or_else(|v| panic!("{what}: safe but refused: {v}"))
            } else {
                let before = tree.iter().collect::<Vec<_>>();
                let refused = if insert {
                    tree.insert_shared(&p, t, k, i)
                } else {
                    tree.remove_shared(&p, t, k)
                };
                assert!(refused.is_err(), "{what}: unsafe but accepted");
                assert_eq!(
                    tree.iter().collect::<Vec<_>>(),
                    before,
                    "{what}: a refused operation changed the tree"
                );
                exclusive += 1;
                if insert {
                    tree.insert(k, i)
                } else {
                    tree.remove(k)
                }
            };
            assert_eq!(got, expected, "{what}");
            let n = rng.random_range(1..8);
            if tree.scan_is_safe(&p, t, k, n) {
                assert_eq!(
                    tree.scan_shared(&p, t, k, n).unwrap(),
                    model_scan(&model, k, n),
                    "{what}: scan"
                );
            }
            tree.assert_invariants();
        }
        assert!(
            shared > 0 && (threads == 1 || exclusive > 0),
            "seed={seed}: {shared} shared, {exclusive} exclusive"
        );
    }
}

#[test]
fn contract_violations_name_the_leaf_and_the_threads() {
    let keys = 1000;
    let p = Partitioning::new(2, keys);
    let tree = BTree::bulk_load(8, 1.0, (0..keys).map(|k| (k, k)));
    // Thread 1 touching thread 0's key.
    let v = tree.get_shared(&p, 1, 10).unwrap_err();
    assert_eq!(v.kind, ViolationKind::ForeignKey);
    // Every leaf is full: inserting a new key needs a split.
    let mut sparse = BTree::bulk_load(8, 1.0, (0..keys).filter(|k| k % 2 == 0).map(|k| (k, k)));
    let v = sparse.insert_shared(&p, 0, 11, 0).unwrap_err();
    assert_eq!(v.kind, ViolationKind::ShapeChange);
    // Leaves of 4 even keys: separators are multiples of 8, so the leaf
    // [496, 503] holds the partition boundary 500 and is shared by threads 0 and 1.
    sparse = BTree::bulk_load(8, 0.5, (0..keys).filter(|k| k % 2 == 0).map(|k| (k, k)));
    let boundary = p.range(1).0;
    assert_eq!(boundary, 500);
    let v = sparse.insert_shared(&p, 0, 499, 0).unwrap_err();
    assert_eq!(v.kind, ViolationKind::MoveInSharedLeaf);
    assert_eq!((v.fences, v.owners), ((496, 503), (0, 1)));
    let text = v.to_string();
    assert!(
        text.contains(&format!("leaf {}", v.leaf)) && text.contains("threads 0..=1"),
        "{text}"
    );
    assert!(!sparse.insert_is_safe(&p, 0, 499));
    // Replacing the value of an existing key in the shared leaf moves nothing.
    assert!(sparse.insert_is_safe(&p, 0, 498));
    assert_eq!(sparse.insert_shared(&p, 0, 498, 7), Ok(Some(498)));
    // A scan that needs keys of thread 1.
    let v = tree.scan_shared(&p, 0, boundary - 2, 10).unwrap_err();
    assert_eq!(v.kind, ViolationKind::ScanPastPartition);
    assert!(!tree.scan_is_safe(&p, 0, boundary - 2, 10));
    assert!(tree.scan_is_safe(&p, 0, boundary - 12, 10));
}
