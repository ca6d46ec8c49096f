//! The tuple space of the reconfiguration paper (section IV-B1 and 2):
//! tuples of 1 to 10 integer fields; `out(t)` inserts t, `rdp(p)` reads a
//! tuple matching template p, `inp(p)` removes one, `cas(p, t)` inserts t
//! and answers true if nothing matches p (else false).
//!
//! The space keeps one bucket per number of fields, in insertion order; a
//! read or removal takes the oldest match. Two class models:
//! - simple: `c_r` = {rdp}, `c_w` = {out, inp, cas}; `c_r` conflicts with
//!   `c_w`, `c_w` with everything; CtoT(c_r) = any thread, CtoT(c_w) = all;
//! - extended: `c_i` = {out_i, inp_i, rdp_i}, `c_{i,j}` = {cas_{i,j}}; two
//!   classes conflict if their numbers of fields meet; CtoT(c_i) =
//!   {t_{(i-1) mod n}}, CtoT(c_{i,j}) = {t_{(i-1) mod n}, t_{(j-1) mod n}}
//!   (the paper names t_{i-1}; taking it mod n keeps the parallelism when
//!   fewer than 10 threads are active).
//!
//! The CBASE rules are precise whatever the model: commands whose numbers
//! of fields meet are dependent unless both are `rdp`.
//!
//! Each bucket sits behind a read-write lock that parallel execution only
//! ever *tries*: a bucket found busy means the engine let two conflicting
//! commands run at once, and is reported as a [`TupleViolation`].

use std::sync::RwLock;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::encode;
use psmr_core::model::{ClassId, ConflictModel, Placement, ThreadSet};
use psmr_core::service::{Group, GroupMapping, Lane, Service};
use psmr_core::wire::ServiceId;

/// The most fields of a tuple or template.
pub const MAX_FIELDS: usize = 10;

/// A tuple: 1 to [`MAX_FIELDS`] fields.
pub type Tuple = Vec<u64>;

/// A template: a field matches anything (`None`) or one value.
pub type Template = Vec<Option<u64>>;

/// An operation on the tuple space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TupleOp {
    /// Insert a tuple.
    Out(Tuple),
    /// Read the oldest tuple matching a template.
    Rdp(Template),
    /// Remove the oldest tuple matching a template.
    Inp(Template),
    /// Insert the tuple if no tuple matches the template.
    Cas(Template, Tuple),
}

impl TupleOp {
    /// Encodes the operation.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// The numbers of fields it touches: (template or tuple, cas tuple).
    fn arities(&self) -> (usize, Option<usize>) {
        match self {
            TupleOp::Out(t) => (t.len(), None),
            TupleOp::Rdp(p) | TupleOp::Inp(p) => (p.len(), None),
            TupleOp::Cas(p, t) => (p.len(), Some(t.len())),
        }
    }

    fn valid(&self) -> bool {
        let ok = |n: usize| (1..=MAX_FIELDS).contains(&n);
        let (a, b) = self.arities();
        ok(a) && b.is_none_or(ok)
    }

    fn operator(&self) -> usize {
        match self {
            TupleOp::Out(_) => 0,
            TupleOp::Rdp(_) => 1,
            TupleOp::Inp(_) => 2,
            TupleOp::Cas(..) => 3,
        }
    }
}

fn matches(template: &[Option<u64>], tuple: &[u64]) -> bool {
    template.len() == tuple.len()
        && template
            .iter()
            .zip(tuple)
            .all(|(p, v)| p.is_none_or(|p| p == *v))
}

/// The replicated tuple space.
#[derive(Debug)]
pub struct TupleSpace {
    buckets: Vec<RwLock<Vec<Tuple>>>,
}

impl Default for TupleSpace {
    fn default() -> Self {
        TupleSpace {
            buckets: (0..MAX_FIELDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl TupleSpace {
    /// A space holding `tuples` (tuples with a bad number of fields are skipped).
    pub fn from_tuples(tuples: impl IntoIterator<Item = Tuple>) -> TupleSpace {
        let mut space = TupleSpace::default();
        for t in tuples {
            if (1..=MAX_FIELDS).contains(&t.len()) {
                space.bucket_mut(t.len()).push(t);
            }
        }
        space
    }

    /// Tuples held.
    pub fn len(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| b.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether the space is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bucket_mut(&mut self, arity: usize) -> &mut Vec<Tuple> {
        self.buckets[arity - 1]
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Which class model the service declares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TupleModel {
    /// rdp in parallel; everything else synchronizes every thread.
    Simple,
    /// By number of fields (the default).
    #[default]
    Extended,
}

/// Parallel execution found a bucket busy.
#[derive(Debug, Error)]
#[error(
    "bucket of {arity}-field tuples was busy: two conflicting tuple-space commands ran at once"
)]
pub struct TupleViolation {
    /// The bucket's number of fields.
    pub arity: usize,
}

/// The tuple-space service.
#[derive(Clone, Copy, Debug, Default)]
pub struct TupleService {
    /// The class model for the `classes` engine.
    pub model: TupleModel,
}

/// The operation on the buckets it needs: `read` the template's bucket,
/// `write` the bucket the tuple goes to or leaves.
fn apply(op: &TupleOp, read: &[Tuple], write: Option<&mut Vec<Tuple>>) -> Bytes {
    let first = |p: &[Option<u64>]| read.iter().position(|t| matches(p, t));
    match (op, write) {
        (TupleOp::Rdp(p), _) => encode(&first(p).map(|i| &read[i])),
        (TupleOp::Out(t), Some(bucket)) => {
            bucket.push(t.clone());
            encode(&())
        }
        (TupleOp::Inp(p), Some(bucket)) => {
            let found = bucket.iter().position(|t| matches(p, t));
            encode(&found.map(|i| bucket.remove(i)))
        }
        (TupleOp::Cas(p, t), Some(bucket)) => {
            let absent = first(p).is_none() && !bucket.iter().any(|x| matches(p, x));
            if absent {
                bucket.push(t.clone());
            }
            encode(&absent)
        }
        (_, None) => unreachable!("writes get their bucket"),
    }
}

impl Service for TupleService {
    type State = TupleSpace;
    type Op = TupleOp;
    type Violation = TupleViolation;

    fn id(&self) -> ServiceId {
        ServiceId(3)
    }

    fn decode(&self, op: &[u8]) -> Option<TupleOp> {
        postcard::from_bytes::<TupleOp>(op)
            .ok()
            .filter(TupleOp::valid)
    }

    fn execute(&self, space: &mut TupleSpace, op: &TupleOp) -> Bytes {
        let (a, b) = op.arities();
        match op {
            TupleOp::Rdp(_) => apply(op, space.bucket_mut(a), None),
            TupleOp::Out(_) | TupleOp::Inp(_) => {
                let mut bucket = std::mem::take(space.bucket_mut(a));
                let response = apply(op, &[], Some(&mut bucket));
                *space.bucket_mut(a) = bucket;
                response
            }
            TupleOp::Cas(..) => {
                let target = b.expect("cas has a tuple");
                let mut bucket = std::mem::take(space.bucket_mut(target));
                let response = if a == target {
                    apply(op, &[], Some(&mut bucket))
                } else {
                    apply(op, space.bucket_mut(a), Some(&mut bucket))
                };
                *space.bucket_mut(target) = bucket;
                response
            }
        }
    }

    fn execute_shared(
        &self,
        space: &TupleSpace,
        _lane: Lane,
        op: &TupleOp,
    ) -> Result<Bytes, TupleViolation> {
        let busy = |arity| TupleViolation { arity };
        let read = |arity: usize| space.buckets[arity - 1].try_read().map_err(|_| busy(arity));
        let write = |arity: usize| {
            space.buckets[arity - 1]
                .try_write()
                .map_err(|_| busy(arity))
        };
        let (a, b) = op.arities();
        Ok(match op {
            TupleOp::Rdp(_) => apply(op, &read(a)?, None),
            TupleOp::Out(_) | TupleOp::Inp(_) => apply(op, &[], Some(&mut *write(a)?)),
            TupleOp::Cas(..) => {
                let target = b.expect("cas has a tuple");
                let mut bucket = write(target)?;
                if a == target {
                    apply(op, &[], Some(&mut bucket))
                } else {
                    apply(op, &read(a)?, Some(&mut bucket))
                }
            }
        })
    }

    fn safety_check(&self, _space: &TupleSpace, _lane: Lane, _op: &TupleOp) -> bool {
        true
    }

    fn digest(&self, space: &TupleSpace) -> u64 {
        let buckets: Vec<_> = space
            .buckets
            .iter()
            .map(|b| b.read().unwrap_or_else(|e| e.into_inner()))
            .collect();
        super::fnv(buckets.iter().flat_map(|bucket| {
            bucket
                .iter()
                .flat_map(|t| std::iter::once(t.len() as u64).chain(t.iter().copied()))
        }))
    }

    /// Every bucket's tuples in order (which tuple a template takes first
    /// depends on it).
    type Image = Vec<Vec<Tuple>>;

    fn capture(&self, space: &TupleSpace) -> Vec<Vec<Tuple>> {
        space
            .buckets
            .iter()
            .map(|b| b.read().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    fn write_image(
        &self,
        image: &Vec<Vec<Tuple>>,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        super::write_postcard(image, out)
    }

    fn read_image(&self, input: &mut dyn std::io::Read) -> std::io::Result<TupleSpace> {
        let buckets: Vec<Vec<Tuple>> = super::read_postcard(input)?;
        let arity_ok = buckets.len() == MAX_FIELDS
            && buckets
                .iter()
                .enumerate()
                .all(|(i, b)| b.iter().all(|t| t.len() == i + 1));
        if !arity_ok {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "tuple space image: a tuple in the wrong bucket",
            ));
        }
        Ok(TupleSpace {
            buckets: buckets.into_iter().map(RwLock::new).collect(),
        })
    }
}

/// psmr and opt-psmr: thread `(i-1) mod K` owns the buckets of i fields.
impl GroupMapping for TupleService {
    type Op = TupleOp;

    fn conservative(&self, op: &TupleOp, threads: usize) -> Group {
        let k = threads.max(1);
        let (a, b) = op.arities();
        let owner = (a.max(1) - 1) % k;
        match b {
            Some(b) if (b.max(1) - 1) % k != owner => Group::All,
            _ => Group::Thread(owner),
        }
    }

    fn optimistic(&self, op: &TupleOp, threads: usize) -> Group {
        self.conservative(op, threads)
    }
}

const CAS_CLASSES: usize = MAX_FIELDS * MAX_FIELDS;

impl TupleService {
    /// The numbers of fields of an extended-model class (bit i-1 for i fields).
    fn class_arities(class: ClassId) -> u32 {
        if class < MAX_FIELDS {
            1 << class
        } else {
            let c = class - MAX_FIELDS;
            1 << (c / MAX_FIELDS) | 1 << (c % MAX_FIELDS)
        }
    }
}

impl ConflictModel for TupleService {
    fn placement(&self, _op: &TupleOp, _lanes: usize) -> Placement {
        Placement::Anywhere
    }

    fn operator(&self, op: &TupleOp) -> usize {
        op.operator()
    }

    fn ocm(&self, _a: usize, _b: usize) -> bool {
        false
    }

    fn related(&self, a: &TupleOp, b: &TupleOp) -> bool {
        let set = |op: &TupleOp| {
            let (x, y) = op.arities();
            1u32 << x | y.map_or(0, |y| 1 << y)
        };
        set(a) & set(b) != 0
    }

    fn oacm(&self, a: usize, b: usize) -> bool {
        !(a == 1 && b == 1)
    }

    fn classes(&self, _lanes: usize) -> usize {
        match self.model {
            TupleModel::Simple => 2,
            TupleModel::Extended => MAX_FIELDS + CAS_CLASSES,
        }
    }

    fn class(&self, op: &TupleOp, _lanes: usize) -> ClassId {
        let (a, b) = op.arities();
        match (self.model, b) {
            (TupleModel::Simple, _) => usize::from(!matches!(op, TupleOp::Rdp(_))),
            (TupleModel::Extended, None) => a - 1,
            (TupleModel::Extended, Some(b)) => MAX_FIELDS + (a - 1) * MAX_FIELDS + (b - 1),
        }
    }

    fn class_conflicts(&self, a: ClassId, b: ClassId) -> bool {
        match self.model {
            TupleModel::Simple => a == 1 || b == 1,
            TupleModel::Extended => Self::class_arities(a) & Self::class_arities(b) != 0,
        }
    }

    fn threads_of(&self, class: ClassId, threads: usize) -> ThreadSet {
        match self.model {
            TupleModel::Simple if class == 0 => ThreadSet::Any,
            TupleModel::Simple => ThreadSet::all(threads),
            TupleModel::Extended => {
                let bits = Self::class_arities(class);
                (0..MAX_FIELDS)
                    .filter(|i| bits >> i & 1 == 1)
                    .fold(ThreadSet::Any, |set, i| set.with(i % threads))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use psmr_core::model::check_class_map;

    fn run(space: &mut TupleSpace, op: TupleOp) -> Bytes {
        TupleService::default().execute(space, &op)
    }

    #[test]
    fn operations_follow_the_tuple_space_semantics() {
        let mut s = TupleSpace::from_tuples([vec![1, 2], vec![1, 3], vec![7]]);
        assert_eq!(
            run(&mut s, TupleOp::Rdp(vec![Some(1), None])),
            encode(&Some(vec![1u64, 2]))
        );
        assert_eq!(
            run(&mut s, TupleOp::Inp(vec![Some(1), None])),
            encode(&Some(vec![1u64, 2]))
        );
        assert_eq!(
            run(&mut s, TupleOp::Rdp(vec![Some(1), None])),
            encode(&Some(vec![1u64, 3]))
        );
        assert_eq!(
            run(&mut s, TupleOp::Cas(vec![Some(7)], vec![8, 8])),
            encode(&false)
        );
        assert_eq!(
            run(&mut s, TupleOp::Cas(vec![Some(9)], vec![8, 8])),
            encode(&true)
        );
        assert_eq!(run(&mut s, TupleOp::Out(vec![5, 5, 5])), encode(&()));
        assert_eq!(s.len(), 4);
        assert_eq!(
            run(&mut s, TupleOp::Inp(vec![Some(4)])),
            encode(&None::<Tuple>)
        );
    }

    #[test]
    fn tuples_without_fields_or_with_too_many_are_refused() {
        let service = TupleService::default();
        assert!(service.decode(&TupleOp::Out(vec![]).encode()).is_none());
        assert!(
            service
                .decode(&TupleOp::Out(vec![0; 11]).encode())
                .is_none()
        );
        assert!(
            service
                .decode(&TupleOp::Cas(vec![None], vec![]).encode())
                .is_none()
        );
        assert!(
            service
                .decode(&TupleOp::Out(vec![0; 10]).encode())
                .is_some()
        );
    }

    #[test]
    fn both_class_maps_keep_conflicting_classes_on_a_common_thread() {
        for model in [TupleModel::Simple, TupleModel::Extended] {
            let service = TupleService { model };
            for threads in 1..=12 {
                check_class_map(&service, threads, threads).expect("a correct map");
            }
        }
    }

    #[test]
    fn a_busy_bucket_is_reported_not_raced() {
        let space = TupleSpace::from_tuples([vec![1]]);
        let _held = space.buckets[0].write().expect("not poisoned");
        let lane = Lane {
            thread: 0,
            threads: 1,
        };
        let e = TupleService::default()
            .execute_shared(&space, lane, &TupleOp::Rdp(vec![None]))
            .expect_err("the bucket is held");
        assert_eq!(e.arity, 1);
    }
}
