//! One worker t_i: merges its rings, executes batches from its own group in
//! parallel mode, and takes part in the synchronous mode for batches from
//! `g_all` (the opt-PSMR paper's Algorithm 1, thread side).
//!
//! A worker is a [`Slot`]: its input queue, and its state (merger, rounds,
//! counters) behind a lock. Its own thread runs it; while that thread is
//! parked, the thread that delivers to it may run it instead (inline):
//!
//! ```text
//!  deliver ─> queue ─┬─ thread parked, batch cheap ─> run on the delivering thread
//!                    └─ otherwise ──────────────────> wake the worker's thread
//! ```
//!
//! Handing a batch to a parked thread costs a wake-up, and its replies cost
//! another (the network thread that sends them is parked too), each more
//! than a batch of cheap commands takes to run.
//! The delivering thread runs a batch itself when the worker's measured time
//! per command, times the batch's commands, is within the engine's
//! `inline_budget`. It never blocks there: a batch that must wait for a
//! synchronization round to be released, or that is too costly, goes back to
//! the worker's thread. Whoever runs it, a slot's batches execute in the
//! worker's merge order with the worker's lane, so what executes is the same.
//! A `g_all` instance goes to every slot before any handed-back work wakes a
//! thread: a slot stopped at that synchronization, unreleased, is run once
//! more after the others, since the last to arrive may have released it
//! (what that saves: docs/journal.md).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use psmr_core::proto::{Command, Merged, Merger};

use super::checkpoint;
use super::execute::{Access, ExecMetrics};
use super::pause::Pauser;
use super::{EngineError, EngineState, Input, Shared, lock, panic_message};
use crate::rendezvous::Turn;
use psmr_core::service::{Lane, Service};
use psmr_core::wire::Reply;

/// One worker: its queue of delivered instances and its state.
pub(super) struct Slot {
    queue: Mutex<Queue>,
    /// Signalled when the queue gets input, is closed, or is handed work.
    ready: Condvar,
    core: Mutex<Core>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Input>,
    /// The worker's thread waits on `ready`.
    parked: bool,
    /// An inline run handed work back: the thread runs even without input.
    handed_back: bool,
    /// No more input: the thread stops once it has run what it has.
    closed: bool,
    /// The thread has stopped (inputs closed, or it died).
    stopped: bool,
}

/// What [`Slot::offer`] left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Offer {
    /// Nothing for the caller to do: the input ran here, or the thread runs it.
    Settled,
    /// Work waits for the parked thread, which has not been woken.
    HandedBack,
}

/// Who runs a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runner {
    /// Its own thread, which may block.
    Thread,
    /// The delivering thread, which must not block.
    Inline,
}

/// Why a run of a slot ended.
enum Stop {
    /// Nothing more can be merged now.
    Drained,
    /// (Inline only) the next batch must wait or is too costly: the
    /// worker's thread takes it from `pending`.
    HandBack,
    /// Another worker died.
    Aborted,
}

/// A worker's state, run by one thread at a time.
struct Core {
    lane: Lane,
    merger: Merger,
    metrics: ExecMetrics,
    round: u64,
    /// A round this worker arrived at early, not yet seen released; it
    /// waits for that before executing anything of its own.
    unreleased: Option<u64>,
    pauser: Pauser,
    /// Replies of the batch being executed, handed to the sink at its end.
    replies: Vec<Reply>,
    /// A batch taken from the merger and handed back, executed next.
    pending: Option<Merged>,
    /// Inputs moved out of the queue (its buffer is swapped back in).
    taken: VecDeque<Input>,
    /// Measured execution time per command (a moving average), in ns.
    per_command_ns: u64,
    /// The number of the last checkpoint whose cut this worker passed.
    last_marker: u64,
}

/// Wakes the other workers for good when this one dies: no synchronization
/// can complete without it. (A worker that stops because its input closed
/// has met every synchronization that needs it.) Either way, later
/// deliveries to it fail.
pub(super) struct StopGuard<'a, S: Service>(pub(super) &'a Shared<S>, pub(super) Option<&'a Slot>);

impl<S: Service> Drop for StopGuard<'_, S> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.rendezvous.abort();
        }
        if let Some(slot) = self.1 {
            lock(&slot.queue).stopped = true;
        }
    }
}

impl Slot {
    /// The slot of worker `thread` of an engine configured by `shared`,
    /// merging with `merger`, past the cut of checkpoint `last_marker`.
    pub(super) fn new<S: Service>(
        shared: &Shared<S>,
        thread: usize,
        merger: Merger,
        last_marker: u64,
    ) -> Slot {
        let config = &shared.config;
        let cost = config.cost.busy + config.cost.wait;
        let core = Core {
            lane: Lane {
                thread,
                threads: config.threads(),
            },
            merger,
            metrics: ExecMetrics::default(),
            round: 0,
            unreleased: None,
            pauser: Pauser::new(config.jitter, thread),
            replies: Vec::new(),
            pending: None,
            taken: VecDeque::new(),
            per_command_ns: nanos(cost),
            last_marker,
        };
        Slot {
            queue: Mutex::default(),
            ready: Condvar::new(),
            core: Mutex::new(core),
        }
    }

    /// Queues `input`. If the worker's thread is parked, runs the worker
    /// here when that is cheap, else wakes the thread.
    pub(super) fn deliver<S: Service>(
        &self,
        shared: &Shared<S>,
        input: Input,
    ) -> Result<(), EngineError> {
        if self.offer(shared, input)? == Offer::HandedBack {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Queues `input` and, if the worker's thread is parked, runs the worker
    /// here as far as it cheaply can. `HandedBack`: work is left for the
    /// thread, which is not woken yet: the caller must call [`Slot::retry`]
    /// or [`Slot::wake`].
    pub(super) fn offer<S: Service>(
        &self,
        shared: &Shared<S>,
        input: Input,
    ) -> Result<Offer, EngineError> {
        let mut queue = lock(&self.queue);
        if queue.stopped {
            return Err(EngineError::Stopped);
        }
        queue.items.push_back(input);
        if !queue.parked {
            // The thread is running: it looks at the queue before it parks.
            return Ok(Offer::Settled);
        }
        drop(queue);
        if shared.config.inline_budget.is_zero() {
            self.ready.notify_one();
            return Ok(Offer::Settled);
        }
        self.run_inline(shared)
    }

    /// Runs the worker here once more, for work handed back by
    /// [`Slot::offer`] (a synchronization round that another worker's
    /// delivery may have released since); wakes the thread if work is still
    /// left.
    pub(super) fn retry<S: Service>(&self, shared: &Shared<S>) -> Result<(), EngineError> {
        if self.run_inline(shared)? == Offer::HandedBack {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Inputs queued that the worker has not taken yet.
    pub(super) fn queued(&self) -> usize {
        lock(&self.queue).items.len()
    }

    /// Wakes the thread for work handed back by [`Slot::offer`].
    pub(super) fn wake(&self) {
        self.ready.notify_one();
    }

    fn run_inline<S: Service>(&self, shared: &Shared<S>) -> Result<Offer, EngineError> {
        // The thread may have woken meanwhile and hold the core: then it runs.
        let Ok(mut core) = self.core.try_lock() else {
            self.ready.notify_one();
            return Ok(Offer::Settled);
        };
        let thread = core.lane.thread;
        let run = catch_unwind(AssertUnwindSafe(|| {
            core.run(shared, &self.queue, Runner::Inline)
        }));
        drop(core);
        match run {
            Ok(Stop::Drained) => {
                lock(&self.queue).handed_back = false;
                Ok(Offer::Settled)
            }
            Ok(Stop::Aborted) => Err(EngineError::Stopped),
            Ok(Stop::HandBack) => {
                lock(&self.queue).handed_back = true;
                Ok(Offer::HandedBack)
            }
            Err(panic) => {
                // Half a batch ran: this worker takes nothing more.
                shared.rendezvous.abort();
                lock(&self.queue).stopped = true;
                self.close();
                let message = panic_message(&panic);
                Err(EngineError::WorkerPanicked { thread, message })
            }
        }
    }

    /// No more input: the worker's thread stops once it has run what it has.
    pub(super) fn close(&self) {
        lock(&self.queue).closed = true;
        self.ready.notify_one();
    }

    /// Parks the worker's thread until it has something to run; `false`
    /// when the inputs are closed and nothing is left.
    fn park(&self) -> bool {
        let mut queue = lock(&self.queue);
        while queue.items.is_empty() && !queue.handed_back {
            if queue.closed {
                return false;
            }
            queue.parked = true;
            queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        queue.parked = false;
        queue.handed_back = false;
        true
    }
}

/// Runs worker `slot` on this thread until its inputs close; returns its
/// counters.
pub(super) fn run<S: Service>(shared: &Shared<S>, slot: &Slot) -> ExecMetrics {
    let _stop = StopGuard(shared, Some(slot));
    loop {
        // Poisoned: an inline run panicked halfway through a batch.
        let Ok(mut core) = slot.core.lock() else {
            return ExecMetrics::default();
        };
        if let Stop::Aborted = core.run(shared, &slot.queue, Runner::Thread) {
            return std::mem::take(&mut core.metrics);
        }
        drop(core);
        if !slot.park() {
            break;
        }
    }
    slot.core
        .lock()
        .map(|mut c| std::mem::take(&mut c.metrics))
        .unwrap_or_default()
}

impl Core {
    fn run<S: Service>(&mut self, shared: &Shared<S>, queue: &Mutex<Queue>, by: Runner) -> Stop {
        if self.lane.threads == 1 {
            self.run_alone(shared, queue, by)
        } else {
            self.run_parallel(shared, queue, by)
        }
    }

    /// The next merged batch, from what has been delivered so far.
    fn next_batch(&mut self, queue: &Mutex<Queue>) -> Option<Merged> {
        if let Some(batch) = self.pending.take() {
            return Some(batch);
        }
        loop {
            if let Some(batch) = self.merger.poll() {
                return Some(batch);
            }
            {
                let mut queue = lock(queue);
                if queue.items.is_empty() {
                    return None;
                }
                std::mem::swap(&mut queue.items, &mut self.taken);
            }
            for Input::Deliver {
                ring,
                instance,
                value,
            } in self.taken.drain(..)
            {
                self.merger
                    .push(ring, instance, value)
                    .expect("engine routes only merged rings");
            }
        }
    }

    /// Whether `batch` may run on the delivering thread.
    fn cheap<S: Service>(&self, shared: &Shared<S>, batch: &Merged) -> bool {
        let expected = (batch.commands.len() as u64).saturating_mul(self.per_command_ns);
        expected <= nanos(shared.config.inline_budget)
    }

    /// The next batch `by` may run: `Err(Drained)` when nothing can be
    /// merged now, `Err(HandBack)` when the delivering thread must leave it
    /// to the worker's thread (it stays in `pending`).
    fn next_for<S: Service>(
        &mut self,
        shared: &Shared<S>,
        queue: &Mutex<Queue>,
        by: Runner,
    ) -> Result<Merged, Stop> {
        let batch = self.next_batch(queue).ok_or(Stop::Drained)?;
        if by == Runner::Inline && !self.cheap(shared, &batch) {
            self.pending = Some(batch);
            return Err(Stop::HandBack);
        }
        Ok(batch)
    }

    /// A single worker executes everything with exclusive access.
    fn run_alone<S: Service>(
        &mut self,
        shared: &Shared<S>,
        queue: &Mutex<Queue>,
        by: Runner,
    ) -> Stop {
        let mut guard: Option<RwLockWriteGuard<'_, EngineState<S::State>>> = None;
        loop {
            let batch = match self.next_for(shared, queue, by) {
                Ok(batch) => batch,
                Err(stop) => return stop,
            };
            let state = guard.get_or_insert_with(|| write(shared));
            let all = batch.ring == shared.config.all_ring;
            let lane = (!all).then_some(self.lane);
            let commands = if all {
                self.at_cut(shared, &batch)
            } else {
                batch.commands.clone()
            };
            self.execute_batch(shared, by, &commands, |command, metrics| {
                let access = Access::Exclusive {
                    state: &mut **state,
                    lane,
                };
                shared.execute(access, command, metrics)
            });
        }
    }

    fn run_parallel<S: Service>(
        &mut self,
        shared: &Shared<S>,
        queue: &Mutex<Queue>,
        by: Runner,
    ) -> Stop {
        let mut guard: Option<RwLockReadGuard<'_, EngineState<S::State>>> = None;
        loop {
            let batch = match self.next_for(shared, queue, by) {
                Ok(batch) => batch,
                Err(stop) => return stop,
            };
            if batch.ring == shared.config.all_ring {
                guard = None;
                let commands = self.at_cut(shared, &batch);
                self.synchronous(shared, by, &commands);
                continue;
            }
            if let Some(round) = self.unreleased {
                match by {
                    Runner::Thread => {
                        if shared.rendezvous.await_release(round).is_err() {
                            return Stop::Aborted;
                        }
                    }
                    Runner::Inline if !shared.rendezvous.is_released(round) => {
                        self.pending = Some(batch);
                        return Stop::HandBack;
                    }
                    Runner::Inline => {}
                }
                self.unreleased = None;
            }
            let state = &**guard.get_or_insert_with(|| read(shared));
            let table = self.lane.thread;
            let lane = self.lane;
            self.execute_batch(shared, by, &batch.commands, |command, metrics| {
                let access = Access::Shared { state, lane, table };
                shared.execute(access, command, metrics)
            });
        }
    }

    /// The commands of `g_all` batch `batch`, just merged: if it carries a
    /// new checkpoint marker, this worker records its merge's cut there and
    /// the markers go last (`checkpoint`).
    fn at_cut<S: Service>(&mut self, shared: &Shared<S>, batch: &Merged) -> Arc<[Command]> {
        let Some(number) = checkpoint::new_marker(&batch.commands, self.last_marker) else {
            return batch.commands.clone();
        };
        self.last_marker = number;
        lock(&shared.checkpoints).cut(number, self.lane.thread, self.merger.cut(), None);
        checkpoint::markers_last(&batch.commands)
    }

    /// Executes `commands` one by one with `execute`, then hands their
    /// replies to the sink.
    fn execute_batch<S: Service>(
        &mut self,
        shared: &Shared<S>,
        by: Runner,
        commands: &[Command],
        execute: impl FnMut(&Command, &mut ExecMetrics) -> Reply,
    ) {
        self.execute_commands(by, commands, execute);
        self.flush(shared);
    }

    /// Executes `commands` one by one with `execute`, keeping their replies
    /// in `self.replies`, and times them.
    fn execute_commands(
        &mut self,
        by: Runner,
        commands: &[Command],
        mut execute: impl FnMut(&Command, &mut ExecMetrics) -> Reply,
    ) {
        let started = Instant::now();
        for command in commands {
            self.pauser.pause();
            let reply = execute(command, &mut self.metrics);
            self.replies.push(reply);
        }
        self.timed(commands.len(), started, by);
    }

    /// Records how long `commands` commands took to execute.
    fn timed(&mut self, commands: usize, started: Instant, by: Runner) {
        if by == Runner::Inline {
            self.metrics.inline_batches += 1;
        }
        if commands == 0 {
            return;
        }
        let sample = nanos(started.elapsed()) / commands as u64;
        self.per_command_ns = self.per_command_ns - self.per_command_ns / 8 + sample / 8;
    }

    /// Hands the replies of the batch just executed to the sink, each with
    /// this worker's recent execution time per command.
    fn flush<S: Service>(&mut self, shared: &Shared<S>) {
        if !self.replies.is_empty() {
            let execution_ns = self.per_command_ns.max(1);
            for reply in &mut self.replies {
                reply.execution_ns = execution_ns;
            }
            shared.sink.replies(self.lane.thread, &mut self.replies);
            self.replies.clear();
        }
    }

    /// Synchronous mode for a batch of `g_all` commands: one handoff for the
    /// whole batch, or one per command without batch synchronization.
    fn synchronous<S: Service>(&mut self, shared: &Shared<S>, by: Runner, commands: &[Command]) {
        if shared.config.batch_sync {
            self.handoff(shared, by, commands);
        } else {
            for command in commands {
                self.handoff(shared, by, std::slice::from_ref(command));
            }
        }
    }

    /// Arrives at the next round; the last worker to arrive executes it. The
    /// others wait for its release only before work of their own.
    fn handoff<S: Service>(&mut self, shared: &Shared<S>, by: Runner, commands: &[Command]) {
        let round = self.round;
        self.round += 1;
        self.metrics.syncs += 1;
        self.pauser.pause();
        match shared.rendezvous.arrive(self.lane.thread, round) {
            Turn::Execute => {
                // Every earlier round was released before this one could
                // complete (its executor had to arrive here too).
                self.unreleased = None;
                self.execute_exclusively(shared, by, commands);
            }
            Turn::Wait => self.unreleased = Some(round),
        }
    }

    /// Executes round `self.round - 1`'s `commands` with the write guard,
    /// releases the round, then sends the replies.
    fn execute_exclusively<S: Service>(
        &mut self,
        shared: &Shared<S>,
        by: Runner,
        commands: &[Command],
    ) {
        let mut state = write(shared);
        self.execute_commands(by, commands, |command, metrics| {
            let access = Access::Exclusive {
                state: &mut state,
                lane: None,
            };
            shared.execute(access, command, metrics)
        });
        drop(state);
        shared.rendezvous.release(self.round - 1);
        self.flush(shared);
    }
}

fn read<S: Service>(shared: &Shared<S>) -> RwLockReadGuard<'_, EngineState<S::State>> {
    shared.state.read().unwrap_or_else(|e| e.into_inner())
}

fn write<S: Service>(shared: &Shared<S>) -> RwLockWriteGuard<'_, EngineState<S::State>> {
    shared.state.write().unwrap_or_else(|e| e.into_inner())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread::ThreadId;

    use psmr_core::proto::{CommandId, ProposerId, RingId, Value};

    use super::*;
    use crate::engine::{Engine, EngineConfig, EngineKind, ExecCost, ReplySink};
    use psmr_core::wire::{Answerers, Mode, Request, RequestId, ServiceId};
    use psmr_services::{NullOp, NullService};

    /// Records the thread that handed over each reply.
    #[derive(Default)]
    struct ThreadSink(Mutex<Vec<ThreadId>>);

    impl ReplySink for ThreadSink {
        fn replies(&self, _thread: usize, replies: &mut Vec<Reply>) {
            let me = std::thread::current().id();
            lock(&self.0).extend(replies.drain(..).map(|_| me));
        }
    }

    fn command(seq: u64) -> Command {
        command_tagged(seq, 0)
    }

    fn command_tagged(seq: u64, tag: u64) -> Command {
        let request = Request {
            id: RequestId(seq + 1),
            low_water: RequestId(0),
            mode: Mode::Conservative,
            service: ServiceId(0),
            op: NullOp { tag }.encode(),
            answerers: Answerers::All,
        };
        Command {
            id: CommandId {
                proposer: ProposerId(7),
                seq,
            },
            low_water: 0,
            payload: request.encode(),
        }
    }

    /// Delivers `count` single-command batches on ring 1 to a running
    /// opt-psmr engine, each once the one before was answered and a pause
    /// let the worker park; returns how many replies came from the
    /// delivering thread.
    fn answered_here(config: EngineConfig, count: u64) -> usize {
        let sink = Arc::new(ThreadSink::default());
        let engine = Engine::start(Arc::new(NullService), (), config, sink.clone()).unwrap();
        // g_all stays silent: its positions come first in the merge.
        engine.deliver(RingId(0), 0, Value::Skip(1_000)).unwrap();
        for seq in 0..count {
            let value = Value::batch(vec![command(seq)]);
            engine.deliver(RingId(1), seq, value).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while lock(&sink.0).len() as u64 <= seq {
                assert!(Instant::now() < deadline, "no reply to {seq}");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let finished = engine.finish().unwrap();
        let inline: u64 = finished.metrics.iter().map(|m| m.inline_batches).sum();
        let me = std::thread::current().id();
        let here = lock(&sink.0).iter().filter(|&&t| t == me).count();
        assert_eq!(here as u64, inline, "the counter says what ran here");
        here
    }

    #[test]
    fn a_cheap_batch_for_a_parked_worker_runs_on_the_delivering_thread() {
        let config = EngineConfig::new(EngineKind::OptPsmr, 2);
        // The first may come before the worker parked for the first time.
        assert!(answered_here(config, 10) >= 9);
    }

    /// The null service, but a command tagged 666 panics (a service bug).
    struct Buggy;

    impl Service for Buggy {
        type State = ();
        type Op = NullOp;
        type Violation = <NullService as Service>::Violation;

        fn id(&self) -> ServiceId {
            NullService.id()
        }

        fn decode(&self, op: &[u8]) -> Option<NullOp> {
            NullService.decode(op)
        }

        fn execute(&self, state: &mut (), op: &NullOp) -> bytes::Bytes {
            assert_ne!(op.tag, 666, "a service bug");
            NullService.execute(state, op)
        }

        fn execute_shared(
            &self,
            state: &(),
            lane: Lane,
            op: &NullOp,
        ) -> Result<bytes::Bytes, Self::Violation> {
            assert_ne!(op.tag, 666, "a service bug");
            NullService.execute_shared(state, lane, op)
        }

        fn safety_check(&self, state: &(), lane: Lane, op: &NullOp) -> bool {
            NullService.safety_check(state, lane, op)
        }

        fn digest(&self, state: &()) -> u64 {
            NullService.digest(state)
        }

        type Image = ();

        fn capture(&self, _state: &()) {}

        fn write_image(&self, _: &(), _: &mut dyn std::io::Write) -> std::io::Result<()> {
            Ok(())
        }

        fn read_image(&self, _: &mut dyn std::io::Read) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl psmr_core::model::ConflictModel for Buggy {
        fn placement(&self, op: &NullOp, lanes: usize) -> psmr_core::model::Placement {
            NullService.placement(op, lanes)
        }
    }

    #[test]
    fn a_panic_on_the_delivering_thread_stops_the_engine_with_an_error() {
        let sink = Arc::new(ThreadSink::default());
        let config = EngineConfig::new(EngineKind::Smr, 1);
        let engine = Engine::start(Arc::new(Buggy), (), config, sink.clone()).unwrap();
        engine
            .deliver(RingId(0), 0, Value::batch(vec![command(0)]))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&sink.0).is_empty() {
            assert!(Instant::now() < deadline, "no reply");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(5));
        let buggy = Value::batch(vec![command_tagged(1, 666)]);
        match engine.deliver(RingId(0), 1, buggy) {
            Err(EngineError::WorkerPanicked { thread: 0, message }) => {
                assert!(message.contains("a service bug"), "{message}");
            }
            other => panic!("expected the panic as an error, got {other:?}"),
        }
        let next = Value::batch(vec![command(2)]);
        assert!(matches!(
            engine.deliver(RingId(0), 2, next),
            Err(EngineError::Stopped)
        ));
        assert!(engine.finish().is_err(), "the state is poisoned");
    }

    /// psmr with two parked workers: each thread ring has a batch waiting
    /// behind the next `g_all` batch. When `g_all`'s arrives, worker 0 stops
    /// at the synchronization unreleased, worker 1 arrives last and executes
    /// it; the delivering thread then tries worker 0 again and runs its batch
    /// too, instead of waking worker 0's thread for it.
    #[test]
    fn a_synchronization_released_during_its_delivery_wakes_no_worker() {
        let sink = Arc::new(ThreadSink::default());
        let config = EngineConfig::new(EngineKind::Psmr, 2);
        let engine = Engine::start(Arc::new(NullService), (), config, sink.clone()).unwrap();
        let steps = 10u64;
        for step in 0..steps {
            let seq = 3 * step;
            engine
                .deliver(RingId(1), step, Value::batch(vec![command(seq)]))
                .unwrap();
            engine
                .deliver(RingId(2), step, Value::batch(vec![command(seq + 1)]))
                .unwrap();
            engine
                .deliver(RingId(0), step, Value::batch(vec![command(seq + 2)]))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while (lock(&sink.0).len() as u64) < seq + 3 {
                assert!(Instant::now() < deadline, "no replies to step {step}");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        engine.finish().unwrap();
        let me = std::thread::current().id();
        let here = lock(&sink.0).iter().filter(|&&t| t == me).count() as u64;
        // The first step may come before the workers parked.
        assert!(
            here >= 3 * (steps - 1),
            "{here} of {} replies ran here",
            3 * steps
        );
    }

    #[test]
    fn without_a_budget_or_above_it_a_batch_runs_on_its_worker() {
        let mut config = EngineConfig::new(EngineKind::OptPsmr, 2);
        config.inline_budget = Duration::ZERO;
        assert_eq!(answered_here(config.clone(), 5), 0);
        config.inline_budget = Duration::from_micros(50);
        config.cost = ExecCost {
            busy: Duration::from_micros(200),
            wait: Duration::ZERO,
        };
        assert_eq!(answered_here(config, 5), 0);
    }

    /// The execution time per command the replies of `batches` batches of
    /// `per_batch` commands carry, on a psmr engine whose commands wait `wait`.
    fn reported(wait: Duration, batches: u64, per_batch: u64) -> Vec<u64> {
        let sink = Arc::new(crate::workload::CollectSink::default());
        let mut config = EngineConfig::new(EngineKind::Psmr, 2);
        config.cost = ExecCost {
            busy: Duration::ZERO,
            wait,
        };
        let engine = Engine::start(Arc::new(NullService), (), config, sink.clone()).unwrap();
        engine.deliver(RingId(0), 0, Value::Skip(1_000)).unwrap();
        for batch in 0..batches {
            let seqs = batch * per_batch..(batch + 1) * per_batch;
            let value = Value::batch(seqs.map(command).collect());
            engine.deliver(RingId(1), batch, value).unwrap();
        }
        engine.finish().unwrap();
        sink.take().iter().map(|r| r.execution_ns).collect()
    }

    #[test]
    fn replies_carry_the_workers_execution_time_per_command() {
        let wait = Duration::from_millis(2);
        let costly = reported(wait, 40, 4);
        assert_eq!(costly.len(), 160);
        // A moving mean that starts at the configured cost: never below the wait.
        assert!(costly.iter().all(|&ns| ns >= nanos(wait)), "{costly:?}");
        let cheap = reported(Duration::ZERO, 40, 4);
        assert_eq!(cheap.len(), 160);
        // Measured, so never 0 (not measured), and far below a 2 ms wait.
        assert!(cheap.iter().all(|&ns| ns > 0), "{cheap:?}");
        let mut sorted = cheap.clone();
        sorted.sort_unstable();
        assert!(sorted[sorted.len() / 2] < nanos(wait) / 10, "{cheap:?}");
    }
}
