//! An opt-in recorder of what clients observe, for the linearizability
//! checker ([`crate::linearizability`]).
//!
//! ```text
//!  let call = history.begin(client, op);   // invoke time
//!  match tree.insert(k, v).await {
//!      Ok(previous) => call.ok(previous),   // completion time and result
//!      Err(_) => call.unknown(),            // timeout, connection lost: may or may not have happened
//!  }
//!  check(&model, &history.take(), budget)
//! ```
//!
//! A call dropped without an outcome counts as unknown, so a task that is
//! cancelled mid-call leaves a faithful history. Times are nanoseconds since
//! the recorder was made, from one monotonic clock, so a history must be
//! recorded in one process.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::linearizability::Operation;

/// The calls of any number of clients, with their invoke and completion times.
pub struct History<I, O> {
    start: Instant,
    ops: Mutex<Vec<Operation<I, O>>>,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }
}

impl<I: Clone, O> History<I, O> {
    /// An empty history; its clock starts now.
    pub fn new() -> Arc<Self> {
        Arc::new(History::default())
    }

    /// The recorder's clock now (nanoseconds since it was made): marks
    /// other events, such as injected faults, on the calls' time line.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn ops(&self) -> MutexGuard<'_, Vec<Operation<I, O>>> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `client` invokes `input` now; the returned call records
    /// its outcome.
    pub fn begin(self: &Arc<Self>, client: u64, input: I) -> Call<I, O> {
        let mut ops = self.ops();
        let call = self.now();
        ops.push(Operation {
            client,
            input,
            call,
            result: None,
        });
        Call {
            history: self.clone(),
            index: ops.len() - 1,
        }
    }

    /// The calls so far (those in flight have an unknown outcome).
    pub fn snapshot(&self) -> Vec<Operation<I, O>>
    where
        O: Clone,
    {
        self.ops().clone()
    }

    /// How many calls were recorded, and how many of them have an unknown outcome.
    pub fn counts(&self) -> (usize, usize) {
        let ops = self.ops();
        (ops.len(), ops.iter().filter(|o| o.result.is_none()).count())
    }
}

/// One call in flight.
pub struct Call<I: Clone, O> {
    history: Arc<History<I, O>>,
    index: usize,
}

impl<I: Clone, O> Call<I, O> {
    /// The call completed now with `output`.
    pub fn ok(self, output: O) {
        let at = self.history.now();
        self.history.ops()[self.index].result = Some((at, output));
    }

    /// The call ended without an outcome (a timeout, a lost connection):
    /// it may or may not have taken effect. Dropping the call says the same.
    pub fn unknown(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_recorded_in_time_and_a_dropped_one_is_unknown() {
        let history: Arc<History<&str, u32>> = History::new();
        let first = history.begin(1, "put");
        let second = history.begin(2, "get");
        first.ok(7);
        drop(second);
        history.begin(3, "get").unknown();
        let ops = history.snapshot();
        assert_eq!(ops.len(), 3);
        let (call, (ret, out)) = (ops[0].call, ops[0].result.expect("completed"));
        assert!(call <= ret && out == 7);
        assert!(ops[1].call >= ops[0].call && ops[1].result.is_none());
        assert_eq!(history.counts(), (3, 2));
    }
}
