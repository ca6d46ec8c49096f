//! Skewed clocks: each node reads the virtual time through its own offset
//! and rate, as machines whose clocks neither agree nor run at one speed.
//!
//! ```text
//!  local(t) = base + offset + t + t * ppm / 1e6        (t: virtual ns)
//!  virtual(i) = the first t with local(t) >= i          (for timers)
//! ```
//!
//! Only differences of one node's readings matter to the protocol cores
//! (timeouts, suspicion, re-proposals), so an offset shows up where two
//! nodes compare times carried in messages, and a rate where a node's
//! timeouts are longer or shorter than another's.

use std::time::{Duration, Instant};

/// One node's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Ahead of the virtual time by this much at time zero.
    pub offset: Duration,
    /// Runs fast (positive) or slow by this many parts per million.
    pub ppm: i32,
}

impl Clock {
    /// The node's reading at virtual time `t`.
    pub fn local(&self, base: Instant, t: u64) -> Instant {
        base + Duration::from_nanos(self.local_nanos(t))
    }

    fn local_nanos(&self, t: u64) -> u64 {
        let drift = i128::from(t) * i128::from(self.ppm) / 1_000_000;
        let offset = u64::try_from(self.offset.as_nanos()).unwrap_or(u64::MAX);
        let local = i128::from(offset) + i128::from(t) + drift;
        u64::try_from(local.max(0)).unwrap_or(u64::MAX)
    }

    /// The first virtual time at which the node's clock reads `at` or later.
    pub fn virtual_of(&self, base: Instant, at: Instant) -> u64 {
        let target =
            u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX);
        let offset = u64::try_from(self.offset.as_nanos()).unwrap_or(u64::MAX);
        let since = i128::from(target.saturating_sub(offset));
        let rate = 1_000_000 + i128::from(self.ppm);
        let mut t = u64::try_from((since * 1_000_000 / rate).max(0)).unwrap_or(u64::MAX);
        while self.local_nanos(t) < target {
            t += 1;
        }
        while t > 0 && self.local_nanos(t - 1) >= target {
            t -= 1;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_fires_at_the_first_virtual_time_the_node_reads_it() {
        let base = Instant::now();
        for clock in [
            Clock {
                offset: Duration::ZERO,
                ppm: 0,
            },
            Clock {
                offset: Duration::from_millis(150),
                ppm: 2_000,
            },
            Clock {
                offset: Duration::from_millis(3),
                ppm: -2_000,
            },
        ] {
            for t in [0, 1, 999, 1_000_000, 3_000_000_007] {
                let at = clock.local(base, t);
                let back = clock.virtual_of(base, at);
                assert!(back <= t, "{clock:?} {t} {back}");
                assert!(clock.local(base, back) >= at);
                assert!(back == 0 || clock.local(base, back - 1) < at);
            }
        }
        let fast = Clock {
            offset: Duration::ZERO,
            ppm: 1_000,
        };
        assert_eq!(
            fast.local(base, 1_000_000_000) - base,
            Duration::from_millis(1_001)
        );
    }
}
