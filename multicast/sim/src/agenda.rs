//! The simulators' agenda: events by virtual time, ties in the order they
//! were scheduled, so that a run is a function of its seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

struct Scheduled<E> {
    at: u64,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// What comes next: a node's timer, or an event of the agenda.
#[derive(Debug, PartialEq, Eq)]
pub enum Due<W, E> {
    /// The timer of `W`, due at the time given.
    Timer(u64, W),
    /// An event taken off the agenda, due at the time given.
    Event(u64, E),
}

/// Events of type `E` at virtual times (nanoseconds).
pub struct Agenda<E> {
    queue: BinaryHeap<Reverse<Scheduled<E>>>,
    seq: u64,
}

impl<E> Default for Agenda<E> {
    fn default() -> Self {
        Agenda {
            queue: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<E> Agenda<E> {
    /// Adds `event` at `at`, after the events already there at `at`.
    pub fn schedule(&mut self, at: u64, event: E) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// When the next event is due.
    pub fn next_at(&self) -> Option<u64> {
        self.queue.peek().map(|s| s.0.at)
    }

    /// The next event and its time.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        self.queue.pop().map(|Reverse(s)| (s.at, s.event))
    }

    /// Whichever comes first, the earliest `timer` or the next event (an
    /// event due at the same time as a timer goes first); the event is
    /// taken off the agenda.
    pub fn next_with<W>(&mut self, timer: Option<(u64, W)>) -> Option<Due<W, E>> {
        match (timer, self.next_at()) {
            (None, None) => None,
            (Some((t, who)), e) if e.is_none_or(|e| t < e) => Some(Due::Timer(t, who)),
            _ => self.pop().map(|(at, event)| Due::Event(at, event)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_by_time_then_in_the_order_they_were_scheduled() {
        let mut agenda = Agenda::default();
        agenda.schedule(5, "b");
        agenda.schedule(1, "a");
        agenda.schedule(5, "c");
        assert_eq!(agenda.next_at(), Some(1));
        let order: Vec<_> = std::iter::from_fn(|| agenda.pop()).collect();
        assert_eq!(order, [(1, "a"), (5, "b"), (5, "c")]);
    }

    #[test]
    fn a_timer_goes_first_only_when_strictly_earlier() {
        let mut agenda = Agenda::default();
        agenda.schedule(5, "e");
        assert_eq!(agenda.next_with(Some((4, 't'))), Some(Due::Timer(4, 't')));
        assert_eq!(agenda.next_with(Some((5, 't'))), Some(Due::Event(5, "e")));
        assert_eq!(agenda.next_with(Some((5, 't'))), Some(Due::Timer(5, 't')));
        assert_eq!(agenda.next_with(None::<(u64, char)>), None);
    }
}
