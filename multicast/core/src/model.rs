//! What the `cbase` and `classes` engines need to know about a service:
//! which commands conflict, and what a command touches while it runs.
//!
//! One trait, [`ConflictModel`], carries both papers' ways of saying it:
//! - CBASE (section 5.2): two requests are dependent if the operator
//!   concurrency matrix says so (`ocm`), or if the argument analysis
//!   function finds their arguments related (`related`) and the
//!   operator+argument matrix says so (`oacm`);
//! - request classes (reconfiguration paper, sections IV-A and V-A): every
//!   request has a class; classes conflict; `threads_of` is CtoT, the map
//!   from a class to the threads that must synchronize to run it, for a
//!   given number of active threads.
//!
//! Every method has a default that makes the engines sequential: every
//! command conflicts with every other, needs the whole state, and belongs to
//! one class mapped to every thread. A service refines what it can.
//!
//! [`Placement`] says how a command runs beside others: anywhere the rules
//! allow (the service synchronizes internally or only reads), on one lane of
//! the service's parallel-mode contract (the engines never run two commands
//! of one lane at once), or alone, with `&mut State`.

use crate::service::Service;

/// How a command may run beside others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// In parallel mode, beside any command it does not conflict with; the
    /// lane it gets is that of the executing thread.
    Anywhere,
    /// In parallel mode on lane `l` of the lane count the engine passes:
    /// never beside another command of lane `l`.
    Lane(usize),
    /// With exclusive access to the state: nothing else runs meanwhile.
    Alone,
}

/// A request class.
pub type ClassId = usize;

/// The threads a class is mapped to (CtoT), out of at most 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadSet {
    /// No conflict: any one thread may run it (the paper's empty set).
    Any,
    /// These threads synchronize to run it (bit `t` is thread `t`).
    Threads(u64),
}

impl ThreadSet {
    /// The most threads a set can name.
    pub const MAX: usize = crate::layout::Layout::MAX_THREADS;

    /// Threads `0..n`.
    pub fn all(n: usize) -> ThreadSet {
        assert!((1..=Self::MAX).contains(&n), "1 to 64 threads");
        ThreadSet::Threads(if n == 64 { u64::MAX } else { (1 << n) - 1 })
    }

    /// One thread.
    pub fn one(t: usize) -> ThreadSet {
        assert!(t < Self::MAX);
        ThreadSet::Threads(1 << t)
    }

    /// The union with thread `t`.
    pub fn with(self, t: usize) -> ThreadSet {
        assert!(t < Self::MAX);
        match self {
            ThreadSet::Any => ThreadSet::one(t),
            ThreadSet::Threads(bits) => ThreadSet::Threads(bits | 1 << t),
        }
    }

    /// The bits of the set (0 for `Any`).
    pub fn bits(self) -> u64 {
        match self {
            ThreadSet::Any => 0,
            ThreadSet::Threads(bits) => bits,
        }
    }

    /// Whether every named thread is below `n` (Algorithm 3, line 6).
    pub fn fits(self, n: usize) -> bool {
        n >= Self::MAX || self.bits() >> n == 0
    }

    /// The threads, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let bits = self.bits();
        (0..Self::MAX).filter(move |t| bits >> t & 1 == 1)
    }
}

/// A service's conflict rules for the `cbase` and `classes` engines.
///
/// Correctness is the service's to keep: any two commands that read or
/// write common state (and one of them writes) must be declared dependent
/// (CBASE) and be in conflicting classes whose thread sets meet (classes).
/// [`check_class_map`] checks the second against the class relation; the
/// engine equivalence tests check both against the sequential execution.
pub trait ConflictModel: Service {
    /// How `op` runs beside others, with `lanes` lanes. Default: alone.
    fn placement(&self, op: &Self::Op, lanes: usize) -> Placement {
        let _ = (op, lanes);
        Placement::Alone
    }

    /// CBASE: the operator of `op`, an index into the matrices. Default 0.
    fn operator(&self, op: &Self::Op) -> usize {
        let _ = op;
        0
    }

    /// CBASE's operator concurrency matrix: operators `a` and `b` are
    /// dependent whatever their arguments. Default: true.
    fn ocm(&self, a: usize, b: usize) -> bool {
        let _ = (a, b);
        true
    }

    /// CBASE's argument analysis function: the arguments of `a` and `b` may
    /// make them dependent. Default: true.
    fn related(&self, a: &Self::Op, b: &Self::Op) -> bool {
        let _ = (a, b);
        true
    }

    /// CBASE's operator+argument concurrency matrix: operators `a` and `b`
    /// with related arguments are dependent. Default: true.
    fn oacm(&self, a: usize, b: usize) -> bool {
        let _ = (a, b);
        true
    }

    /// The number of request classes with `lanes` lanes. Default 1.
    fn classes(&self, lanes: usize) -> usize {
        let _ = lanes;
        1
    }

    /// The class of `op` with `lanes` lanes. Default 0.
    fn class(&self, op: &Self::Op, lanes: usize) -> ClassId {
        let _ = (op, lanes);
        0
    }

    /// Whether classes `a` and `b` conflict (the paper's RC). Default: true.
    fn class_conflicts(&self, a: ClassId, b: ClassId) -> bool {
        let _ = (a, b);
        true
    }

    /// CtoT for `threads` active threads. Default: every thread.
    fn threads_of(&self, class: ClassId, threads: usize) -> ThreadSet {
        let _ = class;
        ThreadSet::all(threads)
    }
}

/// CBASE's dependence test of two commands (section 5.2).
pub fn dependent<S: ConflictModel>(service: &S, a: &S::Op, b: &S::Op) -> bool {
    let (fa, fb) = (service.operator(a), service.operator(b));
    service.ocm(fa, fb) || (service.oacm(fa, fb) && service.related(a, b))
}

/// A flaw of a class-to-threads map.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClassMapError {
    /// Two conflicting classes whose thread sets do not meet.
    #[error("classes {a} and {b} conflict but share no thread with {threads} threads")]
    Disjoint {
        /// A class.
        a: ClassId,
        /// Another class.
        b: ClassId,
        /// Active threads.
        threads: usize,
    },
}

/// Checks the rule of section V-A: conflicting classes are mapped to at least
/// one common thread (a class with no threads conflicts with nothing but
/// classes mapped to every thread, and not with itself).
pub fn check_class_map<S: ConflictModel>(
    service: &S,
    lanes: usize,
    threads: usize,
) -> Result<(), ClassMapError> {
    let all = ThreadSet::all(threads).bits();
    let set = |c| match service.threads_of(c, threads) {
        ThreadSet::Threads(bits) if bits & !all != 0 => all,
        set => set.bits(),
    };
    let classes = service.classes(lanes);
    for a in 0..classes {
        for b in a..classes {
            if !service.class_conflicts(a, b) {
                continue;
            }
            let (sa, sb) = (set(a), set(b));
            let meet = sa & sb != 0 || sa == all || sb == all;
            if !meet {
                return Err(ClassMapError::Disjoint { a, b, threads });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_sets_name_their_threads() {
        assert_eq!(ThreadSet::all(3).iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(
            ThreadSet::one(4).with(1).iter().collect::<Vec<_>>(),
            vec![1, 4]
        );
        assert!(ThreadSet::one(3).fits(4));
        assert!(!ThreadSet::one(4).fits(4));
        assert!(ThreadSet::Any.fits(1));
        assert_eq!(ThreadSet::all(64).bits(), u64::MAX);
    }
}
