//! Range partitioning of the key space over K threads (the opt-PSMR paper's
//! `g = ⌊kK/M⌋`): thread `t` owns the keys `k` with `⌊k·K/S⌋ = t`, where S
//! is the size of the key space. Keys at or above S belong to the last thread.

/// The partitions of `[0, key_space)` over `threads` threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partitioning {
    threads: usize,
    space: u128,
}

impl Partitioning {
    /// `threads` partitions of `[0, key_space)`; a key space of 0 means all of `u64`.
    pub fn new(threads: usize, key_space: u64) -> Partitioning {
        let space = if key_space == 0 {
            1u128 << 64
        } else {
            u128::from(key_space)
        };
        Partitioning {
            threads: threads.max(1),
            space,
        }
    }

    /// The number of partitions.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The thread that owns `key`.
    pub fn owner(&self, key: u64) -> usize {
        let t = u128::from(key) * self.threads as u128 / self.space;
        t.min(self.threads as u128 - 1) as usize
    }

    /// The keys of thread `t`, inclusive.
    pub fn range(&self, t: usize) -> (u64, u64) {
        let lo = |t: usize| -> u128 { (t as u128 * self.space).div_ceil(self.threads as u128) };
        let first = lo(t) as u64;
        let last = if t + 1 >= self.threads {
            u64::MAX
        } else {
            (lo(t + 1) - 1) as u64
        };
        (first, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_owners_agree() {
        for threads in 1..=9 {
            for space in [0, 1, 7, 10, 1000, 1 << 40] {
                let p = Partitioning::new(threads, space);
                let mut next = 0u64;
                for t in 0..threads {
                    let (lo, hi) = p.range(t);
                    if lo > hi {
                        continue;
                    }
                    assert_eq!(lo, next, "threads={threads} space={space} t={t}");
                    for k in [lo, hi, lo + (hi - lo) / 2] {
                        assert_eq!(p.owner(k), t, "k={k} threads={threads} space={space}");
                    }
                    next = hi.wrapping_add(1);
                }
                assert_eq!(p.range(threads - 1).1, u64::MAX);
            }
        }
    }
}
