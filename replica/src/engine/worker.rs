//! One worker thread t_i: merges its rings, executes batches from its own
//! group in parallel mode, and takes part in the synchronous mode for batches
//! from `g_all` (the opt-PSMR paper's Algorithm 1, thread side).

use psmr_multicast::proto::{Command, Merged, Merger};
use std::sync::RwLockReadGuard;
use std::sync::mpsc::Receiver;

use super::execute::{Access, ExecMetrics};
use super::pause::Pauser;
use super::{EngineState, Input, Shared};
use crate::rendezvous::{Aborted, Turn};
use crate::service::{Lane, Service};
use crate::wire::Reply;

/// Wakes the other workers for good when this one dies: no synchronization
/// can complete without it. (A worker that stops because its input closed
/// has met every synchronization that needs it.)
pub(super) struct StopGuard<'a, S: Service>(pub(super) &'a Shared<S>);

impl<S: Service> Drop for StopGuard<'_, S> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.rendezvous.abort();
        }
    }
}

struct Worker<'a, S: Service> {
    shared: &'a Shared<S>,
    lane: Lane,
    merger: Merger,
    inputs: Receiver<Input>,
    metrics: ExecMetrics,
    round: u64,
    /// A round this worker arrived at early, not yet seen released; it
    /// waits for that before executing anything of its own.
    unreleased: Option<u64>,
    pauser: Pauser,
    /// Replies of the batch being executed, handed to the sink at its end.
    replies: Vec<Reply>,
}

/// Runs worker `thread` until its inputs close; returns its counters.
pub(super) fn run<S: Service>(
    shared: &Shared<S>,
    thread: usize,
    inputs: Receiver<Input>,
) -> ExecMetrics {
    let _stop = StopGuard(shared);
    let config = &shared.config;
    let mut rings = vec![config.all_ring];
    rings.extend(config.thread_rings.get(thread).copied());
    let mut worker = Worker {
        shared,
        lane: Lane {
            thread,
            threads: config.threads(),
        },
        merger: Merger::new(&rings, config.merge_m).expect("validated configuration"),
        inputs,
        metrics: ExecMetrics::default(),
        round: 0,
        unreleased: None,
        pauser: Pauser::new(config.jitter, thread),
        replies: Vec::new(),
    };
    if worker.lane.threads == 1 {
        worker.run_alone();
    } else {
        let _ = worker.run_parallel();
    }
    worker.metrics
}

impl<S: Service> Worker<'_, S> {
    /// The next merged batch; blocks for input; `None` when inputs closed.
    fn next_batch(&mut self) -> Option<Merged> {
        loop {
            if let Some(batch) = self.merger.poll() {
                return Some(batch);
            }
            let Input::Deliver {
                ring,
                instance,
                value,
            } = self.inputs.recv().ok()?;
            self.merger
                .push(ring, instance, value)
                .expect("engine routes only merged rings");
        }
    }

    /// A single worker holds exclusive access for good.
    fn run_alone(&mut self) {
        let shared = self.shared;
        let mut state = shared.state.write().unwrap_or_else(|e| e.into_inner());
        while let Some(batch) = self.next_batch() {
            let lane = (batch.ring != shared.config.all_ring).then_some(self.lane);
            for command in batch.commands.iter() {
                self.pause();
                let access = Access::Exclusive {
                    state: &mut state,
                    lane,
                };
                let reply = shared.execute(access, command, &mut self.metrics);
                self.replies.push(reply);
            }
            self.flush();
        }
    }

    /// Hands the replies of the batch just executed to the sink.
    fn flush(&mut self) {
        if !self.replies.is_empty() {
            self.shared
                .sink
                .replies(self.lane.thread, &mut self.replies);
            self.replies.clear();
        }
    }

    fn run_parallel(&mut self) -> Result<(), Aborted> {
        let shared = self.shared;
        let mut guard = Some(read(shared));
        while let Some(batch) = self.next_batch() {
            if batch.ring == shared.config.all_ring {
                guard = None;
                self.synchronous(&batch.commands);
                continue;
            }
            if let Some(round) = self.unreleased.take() {
                shared.rendezvous.await_release(round)?;
            }
            let state = &**guard.get_or_insert_with(|| read(shared));
            for command in batch.commands.iter() {
                self.pause();
                let access = Access::Shared {
                    state,
                    lane: self.lane,
                    table: self.lane.thread,
                };
                let reply = shared.execute(access, command, &mut self.metrics);
                self.replies.push(reply);
            }
            self.flush();
        }
        Ok(())
    }

    /// Synchronous mode for a batch of `g_all` commands: one handoff for the
    /// whole batch, or one per command without batch synchronization.
    fn synchronous(&mut self, commands: &[Command]) {
        if self.shared.config.batch_sync {
            self.handoff(commands);
        } else {
            for command in commands {
                self.handoff(std::slice::from_ref(command));
            }
        }
    }

    /// Arrives at the next round; the last worker to arrive executes it. The
    /// others wait for its release only before work of their own.
    fn handoff(&mut self, commands: &[Command]) {
        let shared = self.shared;
        let round = self.round;
        self.round += 1;
        self.metrics.syncs += 1;
        self.pause();
        match shared.rendezvous.arrive(self.lane.thread, round) {
            Turn::Execute => {
                // Every earlier round was released before this one could
                // complete (its executor had to arrive here too).
                self.unreleased = None;
                self.execute_exclusively(commands);
                shared.rendezvous.release(round);
                self.flush();
            }
            Turn::Wait => self.unreleased = Some(round),
        }
    }

    /// Executes `commands` with the write guard; their replies wait in
    /// `self.replies` until the other workers are released.
    fn execute_exclusively(&mut self, commands: &[Command]) {
        let shared = self.shared;
        let mut state = shared.state.write().unwrap_or_else(|e| e.into_inner());
        for command in commands {
            self.pause();
            let access = Access::Exclusive {
                state: &mut state,
                lane: None,
            };
            let reply = shared.execute(access, command, &mut self.metrics);
            self.replies.push(reply);
        }
    }

    fn pause(&mut self) {
        self.pauser.pause();
    }
}

fn read<S: Service>(shared: &Shared<S>) -> RwLockReadGuard<'_, EngineState<S::State>> {
    shared.state.read().unwrap_or_else(|e| e.into_inner())
}
