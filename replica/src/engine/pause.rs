//! Test jitter: random pauses between commands, so that the engine tests
//! see many thread timings. Every worker of every engine draws from its own
//! seeded stream.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Jitter;

/// The pauses of one worker (nothing without jitter).
pub(crate) struct Pauser(Option<(ChaCha8Rng, Duration)>);

impl Pauser {
    /// The pauses of worker `thread` under `jitter`.
    pub(crate) fn new(jitter: Option<Jitter>, thread: usize) -> Pauser {
        Pauser(jitter.map(|j| {
            let seed = j.seed ^ (thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (ChaCha8Rng::seed_from_u64(seed), j.max_pause)
        }))
    }

    /// Now and then, yields or sleeps a little.
    pub(crate) fn pause(&mut self) {
        let Some((rng, max)) = self.0.as_mut() else {
            return;
        };
        match rng.random_range(0..8u8) {
            0 => std::thread::yield_now(),
            1 => std::thread::sleep(Duration::from_nanos(
                rng.random_range(0..=max.as_nanos() as u64),
            )),
            _ => {}
        }
    }
}
