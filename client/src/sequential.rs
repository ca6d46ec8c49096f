//! The sequential fallback: a client whose commands mostly need `g_all`
//! sends them all there.
//!
//! Under psmr and opt-psmr a command mapped to one thread's group runs on
//! that thread alone, and a command mapped to `g_all` stops every thread.
//! When most commands need `g_all`, the few left for the threads buy little
//! parallelism and cost much: the thread rings decide small instances at
//! `g_all`'s pace (the merge takes one instance of each ring per round), the
//! replicas merge every ring, and each `g_all` batch still synchronizes the
//! threads. Sending every command to `g_all` then runs the replicas in one
//! synchronized sequence, the way smr runs them, on one busy ring.
//!
//! Sending a command to `g_all` is always safe: it is ordered against the
//! commands of every thread, so each client decides alone and may change its
//! mind at any time. A request keeps the group of its first proposal when it
//! is proposed again after a silence. The reconfiguring paper deactivates
//! threads above a share of conflicting requests for the same reason; there
//! the replicas' scheduler decides, here the client does.
//!
//! How much the threads buy depends on what a command costs to execute.
//! When it costs less than ordering it (a B+-tree lookup of a microsecond
//! against several of acceptors, QUIC and merging), threads cannot raise
//! throughput, and even a tenth of the commands on `g_all` makes psmr pay
//! for its rings and synchronizations without return. When execution costs
//! more (a command that waits for I/O), the threads pay at higher shares
//! (docs/benchmarks.md, "Results"). So every reply carries the replica's
//! recent execution time per command, and while it is below [`CHEAP_NS`] the
//! fallback starts from [`CHEAP_ABOVE`] instead of the configured share.

use psmr_core::{Group, Mode};

/// Commands the share is taken over: the client's most recent.
pub(crate) const WINDOW: usize = 1024;

/// The fallback ends when the share falls this far below where it began
/// (or to half of it, for a small threshold), so that a share near the
/// threshold does not flip the client back and forth.
pub(crate) const HYSTERESIS: f64 = 0.1;

/// Commands that execute faster than this, as the replicas report, are
/// cheap: cheaper than ordering them, so threads cannot raise throughput.
pub(crate) const CHEAP_NS: u64 = 10_000;

/// Where the fallback starts while commands are cheap (unless it is off).
pub(crate) const CHEAP_ABOVE: f64 = 0.05;

/// Decides, command by command, whether a client sends everything to `g_all`.
pub(crate) struct Sequential {
    /// Share of recent commands mapped to `g_all` from which the fallback starts.
    above: f64,
    /// Bit `i`: the command at position `i` of the window was mapped to `g_all`.
    recent: [u64; WINDOW / 64],
    /// Where the next command goes in the window.
    next: usize,
    /// Commands in the window (all of it after the first `WINDOW`).
    seen: usize,
    /// Commands in the window mapped to `g_all`.
    all: usize,
    on: bool,
    /// The replicas last reported cheap commands (see [`CHEAP_NS`]).
    cheap: bool,
}

impl Sequential {
    /// A fallback that starts when at least `above` of the last [`WINDOW`]
    /// commands are mapped to `g_all` (1 or more: never changes a command).
    pub(crate) fn new(above: f64) -> Self {
        Sequential {
            above,
            recent: [0; WINDOW / 64],
            next: 0,
            seen: 0,
            all: 0,
            on: false,
            cheap: false,
        }
    }

    /// Notes a replica's execution time per command (0: not measured).
    pub(crate) fn execution(&mut self, ns: u64) {
        if ns > 0 {
            self.cheap = ns < CHEAP_NS;
        }
    }

    /// The share of `g_all` commands from which the fallback starts now.
    fn threshold(&self) -> f64 {
        match self.cheap && self.above < 1.0 {
            true => self.above.min(CHEAP_ABOVE),
            false => self.above,
        }
    }

    /// Where a command goes, given its mapping's choice: that choice, or
    /// `g_all` conservatively while the fallback is on.
    pub(crate) fn route(&mut self, chosen: (Mode, Group)) -> (Mode, Group) {
        self.note(chosen.1 == Group::All);
        if self.on && chosen.1 != Group::All {
            (Mode::Conservative, Group::All)
        } else {
            chosen
        }
    }

    /// Whether the fallback is on.
    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    /// Notes one command's mapping, and decides again once the window is full.
    fn note(&mut self, all: bool) {
        let (word, bit) = (self.next / 64, self.next % 64);
        if self.seen == WINDOW {
            self.all -= (self.recent[word] >> bit & 1) as usize;
        } else {
            self.seen += 1;
        }
        self.recent[word] = self.recent[word] & !(1 << bit) | u64::from(all) << bit;
        self.all += usize::from(all);
        self.next = (self.next + 1) % WINDOW;
        debug_assert_eq!(
            self.all,
            self.recent
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>()
        );
        if self.seen == WINDOW {
            let share = self.all as f64 / WINDOW as f64;
            let threshold = self.threshold();
            self.on = if self.on {
                share > threshold - HYSTERESIS.min(threshold / 2.0)
            } else {
                share >= threshold
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: (Mode, Group) = (Mode::Optimistic, Group::Thread(1));
    const ALL: (Mode, Group) = (Mode::Conservative, Group::All);

    /// Routes `n` commands, every `every`-th mapped to `g_all`; returns how
    /// many thread commands went to `g_all`.
    fn run(s: &mut Sequential, n: usize, every: usize) -> usize {
        (0..n)
            .filter(|i| {
                let chosen = if i % every == 0 { ALL } else { ONE };
                let sent = s.route(chosen);
                chosen != ALL && sent == ALL
            })
            .count()
    }

    #[test]
    fn a_full_window_above_the_threshold_sends_thread_commands_to_g_all() {
        let mut s = Sequential::new(0.4);
        // Half the commands need g_all: nothing changes before the window is full.
        assert_eq!(run(&mut s, WINDOW - 1, 2), 0);
        assert!(!s.is_on());
        run(&mut s, 1, 2);
        assert!(s.is_on());
        assert_eq!(s.route(ONE), ALL, "conservative, to g_all");
        assert_eq!(s.route(ALL), ALL);
    }

    #[test]
    fn below_the_threshold_the_mapping_stands() {
        let mut s = Sequential::new(0.4);
        // A third: 0.33 < 0.4.
        assert_eq!(run(&mut s, 10 * WINDOW, 3), 0);
        assert!(!s.is_on());
        assert_eq!(s.route(ONE), ONE);
    }

    #[test]
    fn the_fallback_ends_only_below_the_hysteresis_band() {
        let mut s = Sequential::new(0.4);
        run(&mut s, WINDOW, 2);
        assert!(s.is_on());
        // A third of the window (0.33, inside 0.3..0.4) keeps it on ...
        assert_eq!(run(&mut s, 3 * WINDOW, 3), 2 * WINDOW);
        assert!(s.is_on());
        // ... a quarter (0.25) ends it once the window holds no more of the half.
        run(&mut s, WINDOW, 4);
        assert!(!s.is_on());
        assert_eq!(s.route(ONE), ONE);
    }

    #[test]
    fn cheap_commands_start_the_fallback_from_a_twentieth_and_end_it_below_half_that() {
        let mut s = Sequential::new(0.4);
        s.execution(1_200);
        // A tenth of the commands on g_all: enough while commands are cheap.
        run(&mut s, WINDOW, 10);
        assert!(s.is_on());
        // Not measured (0) changes nothing; a costly command restores 0.4.
        s.execution(0);
        run(&mut s, 1, 10);
        assert!(s.is_on());
        s.execution(250_000);
        run(&mut s, 1, 10);
        assert!(!s.is_on());
        // Cheap again: on at a twentieth, kept at a thirtieth (0.033 > 0.025),
        // ended at a fiftieth (0.02).
        s.execution(CHEAP_NS - 1);
        run(&mut s, WINDOW, 20);
        assert!(s.is_on());
        run(&mut s, WINDOW, 30);
        assert!(s.is_on());
        run(&mut s, WINDOW, 50);
        assert!(!s.is_on());
    }

    #[test]
    fn replicas_that_report_nothing_leave_the_configured_threshold() {
        let mut s = Sequential::new(0.4);
        s.execution(0);
        assert_eq!(run(&mut s, 4 * WINDOW, 10), 0);
        assert!(!s.is_on());
    }

    #[test]
    fn a_threshold_of_one_never_changes_a_command() {
        let mut s = Sequential::new(1.0);
        s.execution(1_000);
        assert_eq!(run(&mut s, 4 * WINDOW, 2), 0);
        // Every command to g_all turns it on, which changes nothing.
        assert_eq!(run(&mut s, WINDOW, 1), 0);
        assert_eq!(s.route(ALL), ALL);
    }
}
