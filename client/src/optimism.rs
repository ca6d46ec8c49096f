//! Adaptive optimism (opt-psmr): a client whose optimistic guesses often
//! fail the replicas' safety check sends conservatively until they would
//! pass again.
//!
//! A command whose optimistic group (OC-G) differs from its conservative
//! one (CC-G, then `g_all`) is sent to the optimistic thread group; if the
//! safety check fails there, the replica answers `Retry` and the client
//! proposes it again conservatively: the failed guess costs a whole
//! ordering round more than sending it conservatively from the start. So
//! while at least [`Optimism::new`]'s share of the client's recent guesses
//! failed, it sends such commands conservatively, as psmr would; every
//! [`PROBE_EVERY`]-th one still goes optimistically, so that the client
//! learns when guesses pass again, and it returns to optimism when the
//! share falls [`HYSTERESIS`] below where it left (or to half, for a small
//! threshold). Sending a command conservatively is always safe, so each
//! client decides alone, like the sequential fallback.

/// Guesses the share is taken over: the client's most recent.
pub(crate) const WINDOW: usize = 256;

/// While conservative, one command in this many still guesses.
pub(crate) const PROBE_EVERY: u64 = 8;

/// How far below the threshold the share must fall for optimism to return.
pub(crate) const HYSTERESIS: f64 = 0.05;

/// Decides, command by command, whether a client guesses optimistically.
pub(crate) struct Optimism {
    /// Share of failed guesses from which the client stops guessing.
    below: f64,
    /// Outcomes of the recent guesses, true for a failure, oldest first.
    recent: std::collections::VecDeque<bool>,
    failed: usize,
    on: bool,
    /// Commands that could have guessed while conservative.
    skipped: u64,
}

impl Optimism {
    /// Optimism that stops while at least `below` of the last [`WINDOW`]
    /// guesses failed (1 or more: it never stops, the paper's opt-PSMR).
    pub(crate) fn new(below: f64) -> Self {
        Optimism {
            below,
            recent: std::collections::VecDeque::with_capacity(WINDOW),
            failed: 0,
            on: true,
            skipped: 0,
        }
    }

    /// Whether a command that could guess does (a probe counts).
    pub(crate) fn guess(&mut self) -> bool {
        if self.on {
            return true;
        }
        self.skipped += 1;
        self.skipped.is_multiple_of(PROBE_EVERY)
    }

    /// Notes a guess's outcome: `failed`, the safety check refused it.
    pub(crate) fn outcome(&mut self, failed: bool) {
        if self.recent.len() == WINDOW && self.recent.pop_front() == Some(true) {
            self.failed -= 1;
        }
        self.recent.push_back(failed);
        self.failed += usize::from(failed);
        if self.recent.len() < WINDOW / 4 || self.below >= 1.0 {
            return;
        }
        let share = self.failed as f64 / self.recent.len() as f64;
        self.on = if self.on {
            share < self.below
        } else {
            share <= self.below - HYSTERESIS.min(self.below / 2.0)
        };
    }

    /// Whether the client guesses (not counting probes).
    pub(crate) fn is_on(&self) -> bool {
        self.on
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes `n` commands that could guess, as the client would: those
    /// that guess report an outcome, and every `every`-th guess fails (0:
    /// none). Returns how many guessed.
    fn run(o: &mut Optimism, n: usize, every: usize) -> usize {
        let mut guessed = 0;
        for _ in 0..n {
            if o.guess() {
                guessed += 1;
                o.outcome(every > 0 && guessed % every == 0);
            }
        }
        guessed
    }

    #[test]
    fn frequent_failures_stop_guessing_and_rare_ones_do_not() {
        let mut rare = Optimism::new(0.15);
        assert_eq!(run(&mut rare, 2_000, 10), 2_000);
        assert!(rare.is_on());
        let mut often = Optimism::new(0.15);
        let guessed = run(&mut often, 2_000, 3);
        assert!(!often.is_on());
        // After the first quarter window, only probes guess.
        assert!(guessed < 64 + 2_000 / PROBE_EVERY as usize, "{guessed}");
    }

    #[test]
    fn probes_bring_optimism_back_once_guesses_pass() {
        let mut o = Optimism::new(0.15);
        run(&mut o, 1_000, 2);
        assert!(!o.is_on());
        // Every probe passes: the window refills with passes.
        let mut commands = 0;
        while !o.is_on() {
            run(&mut o, 1, 0);
            commands += 1;
            assert!(
                commands < 10 * WINDOW * PROBE_EVERY as usize,
                "never returned"
            );
        }
        assert!(run(&mut o, 100, 0) == 100);
    }

    #[test]
    fn a_threshold_of_one_never_stops_guessing() {
        let mut o = Optimism::new(1.0);
        assert_eq!(run(&mut o, 1_000, 1), 1_000);
        assert!(o.is_on());
    }

    #[test]
    fn the_share_must_fall_below_the_hysteresis_to_return() {
        let mut o = Optimism::new(0.2);
        run(&mut o, 2_000, 4); // 25 % fail: off
        assert!(!o.is_on());
        // 16.7 % of probes fail: under the threshold, not under 0.15.
        run(&mut o, 20_000, 6);
        assert!(!o.is_on());
    }
}
