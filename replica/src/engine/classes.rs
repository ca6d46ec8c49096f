//! The `classes` engine (reconfiguration paper, section V): request classes,
//! a class-to-threads map (CtoT), and a number of active threads that a
//! policy changes while the stream runs.
//!
//! ```text
//!  deliver ─> Scheduler (Algorithms 3 and 5)
//!     CtoT = Any         ─> one active thread (putAny)
//!     CtoT = {t}         ─> thread t
//!     CtoT = {t, u, ..}  ─> each of them, with one sync point (putOnConflicting)
//!     names an inactive thread, or the command must run alone
//!                        ─> every active thread, one sync point (putAll)
//!     policy says ±k     ─> RECONFIG(n') to all `workers` threads, one sync point
//!  worker t (Algorithms 4 and 6): FIFO; a sync point's lowest thread waits
//!     for the others, executes, releases them
//! ```
//!
//! Choices beyond the paper, each for determinism of the table of executed
//! requests: putAny picks the thread from the request's id, not round
//! robin, so that a request and its resend meet in one queue; a RECONFIG
//! (which every thread reaches, and which runs alone) moves every thread's
//! table into the shared one, since afterwards the same request may map to
//! another thread. A command that names one thread runs there without a
//! barrier; a sync point of every active thread gives the leader the whole
//! state (`&mut`), a smaller one shares it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use psmr_core::proto::Command;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::execute::ExecMetrics;
use super::intake::{Intake, Taken};
use super::pause::Pauser;
use super::worker::StopGuard;
use super::{EngineError, Placed, Shared};
use crate::rendezvous::Aborted;
use psmr_core::cluster::PolicyName;
use psmr_core::model::{ConflictModel, Placement, ThreadSet};
use psmr_core::wire::{Marker, Reply};

/// When to change the number of active threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Never.
    Fixed,
    /// Algorithm 7: every `period` requests, one more thread if at most
    /// `threshold` % of them had a non-empty CtoT, else one fewer. The
    /// paper's values: 2,000 and 20.
    Paper {
        /// Requests per decision.
        period: u32,
        /// Percent of conflicting requests.
        threshold: u32,
    },
    /// Every `period` requests, counting the requests that synchronize
    /// threads: at most `low` % — every thread; more than `high` % — the
    /// fewest; in between, no change. Reacts in one period.
    Jump {
        /// Requests per decision.
        period: u32,
        /// Percent at or under which all threads run.
        low: u32,
        /// Percent over which the fewest threads run.
        high: u32,
    },
    /// Tests: every `period` requests, a number of threads drawn from `seed`.
    Random {
        /// Seed of the draws.
        seed: u64,
        /// Requests per draw.
        period: u32,
    },
}

impl From<PolicyName> for Policy {
    fn from(name: PolicyName) -> Policy {
        match name {
            PolicyName::Fixed => Policy::Fixed,
            PolicyName::Paper => Policy::paper(),
            PolicyName::Jump => Policy::jump(),
        }
    }
}

impl Policy {
    /// The paper's policy (Algorithm 7): period 2,000, threshold 20 %.
    pub fn paper() -> Policy {
        Policy::Paper {
            period: 2000,
            threshold: 20,
        }
    }

    /// The policy that jumps: period 500, all threads at or under 5 %
    /// synchronizing requests, the fewest over 20 %.
    pub fn jump() -> Policy {
        Policy::Jump {
            period: 500,
            low: 5,
            high: 20,
        }
    }

    /// The policy object.
    pub fn build(&self) -> Box<dyn ReconfigPolicy> {
        match *self {
            Policy::Fixed => Box::new(Never),
            Policy::Paper { period, threshold } => {
                Box::new(Window::new(period, move |p: Period, _| {
                    if p.nonempty * 100 <= threshold as u64 * p.seen {
                        Target::OneMore
                    } else {
                        Target::OneFewer
                    }
                }))
            }
            Policy::Jump { period, low, high } => {
                Box::new(Window::new(period, move |p: Period, _| {
                    if p.synchronizing * 100 <= low as u64 * p.seen {
                        Target::Max
                    } else if p.synchronizing * 100 > high as u64 * p.seen {
                        Target::Min
                    } else {
                        Target::Same
                    }
                }))
            }
            Policy::Random { seed, period } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                Box::new(Window::new(period, move |_, (min, max): (usize, usize)| {
                    Target::Exactly(rng.random_range(min..=max))
                }))
            }
        }
    }
}

/// What a policy sees of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The class's CtoT with the current number of active threads.
    pub set: ThreadSet,
    /// Whether it synchronizes two or more threads (or must run alone).
    pub synchronizes: bool,
}

/// Decides from the stream how many threads to activate (positive) or
/// deactivate (negative): the paper's `reconfigPolicy`.
pub trait ReconfigPolicy: Send {
    /// Called once per delivered request.
    fn decide(&mut self, request: Observed, min: usize, current: usize, max: usize) -> isize;
}

struct Never;

impl ReconfigPolicy for Never {
    fn decide(&mut self, _: Observed, _: usize, _: usize, _: usize) -> isize {
        0
    }
}

/// Counts of one period.
#[derive(Clone, Copy, Debug, Default)]
struct Period {
    seen: u64,
    nonempty: u64,
    synchronizing: u64,
}

enum Target {
    Same,
    OneMore,
    OneFewer,
    Min,
    Max,
    Exactly(usize),
}

/// A policy that decides once per `period` requests.
struct Window<F> {
    period: u64,
    counts: Period,
    rule: F,
}

impl<F> Window<F> {
    fn new(period: u32, rule: F) -> Window<F> {
        Window {
            period: u64::from(period.max(1)),
            counts: Period::default(),
            rule,
        }
    }
}

impl<F: FnMut(Period, (usize, usize)) -> Target + Send> ReconfigPolicy for Window<F> {
    fn decide(&mut self, request: Observed, min: usize, current: usize, max: usize) -> isize {
        let c = &mut self.counts;
        c.seen += 1;
        c.nonempty += u64::from(request.set != ThreadSet::Any);
        c.synchronizing += u64::from(request.synchronizes);
        if c.seen < self.period {
            return 0;
        }
        let counts = std::mem::take(&mut self.counts);
        let target = match (self.rule)(counts, (min, max)) {
            Target::Same => current,
            Target::OneMore => (current + 1).min(max),
            Target::OneFewer => current.saturating_sub(1).max(min),
            Target::Min => min,
            Target::Max => max,
            Target::Exactly(n) => n.clamp(min, max),
        };
        target as isize - current as isize
    }
}

/// A change of the number of active threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconfiguration {
    /// Requests delivered before it.
    pub after: u64,
    /// Active threads before.
    pub from: usize,
    /// Active threads after.
    pub to: usize,
}

/// A command and how to run it.
pub(super) struct Exec {
    command: Command,
    placement: Placement,
    /// With the whole state (`&mut`): nothing else runs meanwhile.
    exclusive: bool,
    /// Answer `Stale` at once (see [`super::intake`]).
    stale: bool,
}

pub(super) enum Work {
    Command(Exec),
    Reconfig { active: usize },
}

/// Where the threads of one synchronization meet (the paper's barrier).
pub(super) struct SyncPoint {
    leader: usize,
    followers: usize,
    arrived: AtomicUsize,
    released: std::sync::atomic::AtomicBool,
    work: Work,
}

pub(super) enum Item {
    /// Run on this thread without synchronizing.
    Run(Exec),
    /// Synchronize; the leader runs the work.
    Sync(Arc<SyncPoint>),
}

/// The scheduler: runs on the delivering thread.
pub(super) struct Scheduler<S: ConflictModel> {
    service: Arc<S>,
    workers: usize,
    min: usize,
    /// n' of Algorithm 5: active threads for what is scheduled next.
    active: usize,
    queues: Vec<mpsc::Sender<Vec<Item>>>,
    receivers: Vec<Option<mpsc::Receiver<Vec<Item>>>>,
    /// Batches sent to the workers and not yet run.
    queued: Arc<AtomicUsize>,
    outgoing: Vec<Vec<Item>>,
    policy: Box<dyn ReconfigPolicy>,
    /// What `policy` was built from: a checkpoint's cut starts it anew.
    policy_spec: Policy,
    delivered: u64,
    history: Vec<Reconfiguration>,
    intake: Intake,
}

/// The queue of one worker, and the count of batches queued to all.
pub(super) type Queue = (mpsc::Receiver<Vec<Item>>, Arc<AtomicUsize>);

impl<S: ConflictModel> Scheduler<S> {
    /// The scheduler of an engine; `intake` and `active`: a checkpoint's.
    pub(super) fn new(
        shared: &Shared<S>,
        intake: Option<Intake>,
        active: Option<usize>,
    ) -> Result<Scheduler<S>, EngineError> {
        let config = &shared.config;
        let active = active.unwrap_or(config.initial_threads);
        if !(config.min_threads..=config.workers).contains(&active) {
            return Err(EngineError::Resume {
                number: 0,
                problem: format!(
                    "{active} active threads, outside {}..={}",
                    config.min_threads, config.workers
                ),
            });
        }
        let (queues, receivers) = (0..config.workers)
            .map(|_| {
                let (tx, rx) = mpsc::channel();
                (tx, Some(rx))
            })
            .unzip();
        Ok(Scheduler {
            service: shared.service.clone(),
            workers: config.workers,
            min: config.min_threads,
            active,
            queues,
            receivers,
            queued: Arc::default(),
            outgoing: (0..config.workers).map(|_| Vec::new()).collect(),
            policy: config.policy.build(),
            policy_spec: config.policy.clone(),
            delivered: 0,
            history: Vec::new(),
            intake: intake.unwrap_or_default(),
        })
    }

    /// At a checkpoint's cut: what the checkpoint keeps (the active
    /// threads, the intake), and the policy starts a new window, here on
    /// every replica, so that a replica resumed from the checkpoint decides
    /// as the others do without the window's counts.
    pub(super) fn cut(&mut self) -> super::checkpoint::FrontCut {
        self.policy = self.policy_spec.build();
        super::checkpoint::FrontCut {
            intake: self.intake.image(),
            active: Some(self.active),
        }
    }

    pub(super) fn take_queue(&mut self, thread: usize) -> Queue {
        let queue = self.receivers[thread]
            .take()
            .expect("each queue is taken once");
        (queue, self.queued.clone())
    }

    /// Batches sent to the workers that they have not run yet.
    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The reconfigurations so far.
    pub(super) fn history(&self) -> &[Reconfiguration] {
        &self.history
    }

    /// Schedules a delivered batch (Algorithm 5, `on deliver`).
    pub(super) fn deliver(&mut self, commands: &[Command]) -> Result<(), EngineError> {
        for command in commands {
            self.schedule(command);
        }
        for (queue, items) in self.queues.iter().zip(&mut self.outgoing) {
            if !items.is_empty() {
                self.queued.fetch_add(1, Ordering::Relaxed);
                queue
                    .send(std::mem::take(items))
                    .map_err(|_| EngineError::Stopped)?;
            }
        }
        Ok(())
    }

    fn schedule(&mut self, command: &Command) {
        let n = self.active;
        let all = ThreadSet::all(n);
        if Marker::decode(&command.payload).is_some() {
            // Runs alone at the cut; policies do not count it (a replica
            // resumed from the checkpoint never sees it).
            let exec = Exec {
                command: command.clone(),
                placement: Placement::Alone,
                exclusive: true,
                stale: false,
            };
            self.synchronize(all, Work::Command(exec));
            return;
        }
        let Taken { decoded, stale } = self.intake.take(&*self.service, command);
        let (set, placement, spread) = match &decoded {
            Some(d) => {
                let class = self.service.class(&d.op, self.workers);
                let set = self.service.threads_of(class, n);
                let spread = d.client.0 ^ d.request.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (set, self.service.placement(&d.op, self.workers), spread)
            }
            None => (all, Placement::Alone, 0),
        };
        let alone = placement == Placement::Alone || !set.fits(n);
        let target = if alone { all } else { set };
        let observed = Observed {
            set,
            synchronizes: alone || target.bits().count_ones() > 1,
        };
        let exec = Exec {
            command: command.clone(),
            placement,
            exclusive: alone || target == all,
            stale,
        };
        match target {
            ThreadSet::Any => {
                let thread = (spread.rotate_left(17) % n as u64) as usize;
                self.outgoing[thread].push(Item::Run(exec));
            }
            ThreadSet::Threads(bits) if bits.count_ones() == 1 => {
                self.outgoing[bits.trailing_zeros() as usize].push(Item::Run(exec));
            }
            threads => self.synchronize(threads, Work::Command(exec)),
        }
        self.delivered += 1;
        self.reconfigure(observed);
    }

    /// Algorithm 5, `checkForReconfiguration`.
    fn reconfigure(&mut self, observed: Observed) {
        let n = self.active;
        let change = self.policy.decide(observed, self.min, n, self.workers);
        let next = n as isize + change;
        if change == 0 || next < self.min as isize || next > self.workers as isize {
            return;
        }
        let next = next as usize;
        self.history.push(Reconfiguration {
            after: self.delivered,
            from: n,
            to: next,
        });
        tracing::info!(
            after = self.delivered,
            from = n,
            to = next,
            "classes: active threads changed"
        );
        self.active = next;
        self.synchronize(
            ThreadSet::all(self.workers),
            Work::Reconfig { active: next },
        );
    }

    fn synchronize(&mut self, threads: ThreadSet, work: Work) {
        let mut members = threads.iter();
        let leader = members.next().expect("a synchronization has members");
        let point = Arc::new(SyncPoint {
            leader,
            followers: threads.bits().count_ones() as usize - 1,
            arrived: AtomicUsize::new(0),
            released: std::sync::atomic::AtomicBool::new(false),
            work,
        });
        for t in threads.iter() {
            self.outgoing[t].push(Item::Sync(point.clone()));
        }
    }
}

/// Runs worker `thread` until its queue closes.
pub(super) fn run<S: ConflictModel>(
    shared: &Shared<S>,
    thread: usize,
    (queue, queued): Queue,
) -> ExecMetrics {
    let _stop = StopGuard(shared, None);
    let mut worker = Worker {
        shared,
        thread,
        metrics: ExecMetrics::default(),
        pauser: Pauser::new(shared.config.jitter, thread),
        replies: Vec::new(),
    };
    for items in queue {
        for item in items {
            worker.pauser.pause();
            let done = match item {
                Item::Run(exec) => {
                    worker.execute(&exec);
                    Ok(())
                }
                Item::Sync(point) => worker.meet(&point),
            };
            if done.is_err() {
                return worker.metrics;
            }
        }
        if !worker.replies.is_empty() {
            shared.sink.replies(thread, &mut worker.replies);
            worker.replies.clear();
        }
        queued.fetch_sub(1, Ordering::Relaxed);
    }
    worker.metrics
}

struct Worker<'a, S: ConflictModel> {
    shared: &'a Shared<S>,
    thread: usize,
    metrics: ExecMetrics,
    pauser: Pauser,
    replies: Vec<Reply>,
}

impl<S: ConflictModel> Worker<'_, S> {
    /// Algorithm 2's `execWithBarrier`.
    fn meet(&mut self, point: &SyncPoint) -> Result<(), Aborted> {
        let parking = self.shared.rendezvous.parking();
        self.metrics.syncs += 1;
        if point.leader != self.thread {
            point.arrived.fetch_add(1, Ordering::SeqCst);
            parking.notify();
            return parking.wait_until(|| point.released.load(Ordering::SeqCst));
        }
        parking.wait_until(|| point.arrived.load(Ordering::SeqCst) == point.followers)?;
        match &point.work {
            Work::Command(exec) => self.execute(exec),
            Work::Reconfig { active } => self.reconfig(*active),
        }
        point.released.store(true, Ordering::SeqCst);
        parking.notify();
        Ok(())
    }

    fn execute(&mut self, exec: &Exec) {
        let placed = Placed {
            command: &exec.command,
            placement: exec.placement,
            alone: exec.exclusive,
            stale: exec.stale,
            table: self.thread,
        };
        let reply = self
            .shared
            .execute_placed(placed, self.thread, &mut self.metrics);
        self.replies.push(reply);
    }

    /// Algorithm 6, `exec(RECONFIG(n'))`: every thread is here. The
    /// per-thread tables move into the shared one.
    fn reconfig(&mut self, active: usize) {
        let mut state = self.shared.state.write().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        for table in &mut state.thread_tables {
            let table = std::mem::take(table.0.get_mut().unwrap_or_else(|e| e.into_inner()));
            state.sync_table.absorb(table);
        }
        self.metrics.reconfigs += 1;
        tracing::debug!(active, "classes: reconfiguration executed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(set: ThreadSet, synchronizes: bool) -> Observed {
        Observed { set, synchronizes }
    }

    fn decisions(policy: &Policy, requests: &[Observed], mut current: usize) -> Vec<usize> {
        let mut p = policy.build();
        let mut seen = Vec::new();
        for &r in requests {
            let change = p.decide(r, 1, current, 4);
            if change != 0 {
                current = (current as isize + change) as usize;
                seen.push(current);
            }
        }
        seen
    }

    #[test]
    fn the_papers_policy_adds_a_thread_per_quiet_period_and_removes_one_per_busy_one() {
        let policy = Policy::Paper {
            period: 5,
            threshold: 20,
        };
        let quiet = [observe(ThreadSet::Any, false); 5];
        let busy = [observe(ThreadSet::all(2), true); 5];
        let stream: Vec<Observed> = [quiet; 4].concat().into_iter().chain(busy).collect();
        assert_eq!(decisions(&policy, &stream, 1), vec![2, 3, 4, 3]);
        let one_in_five: Vec<Observed> = (0..5)
            .map(|i| {
                observe(
                    if i == 0 {
                        ThreadSet::one(0)
                    } else {
                        ThreadSet::Any
                    },
                    false,
                )
            })
            .collect();
        assert_eq!(
            decisions(&policy, &one_in_five, 1),
            vec![2],
            "20 % is quiet"
        );
    }

    #[test]
    fn the_jumping_policy_goes_to_the_bounds_in_one_period() {
        let policy = Policy::Jump {
            period: 10,
            low: 5,
            high: 20,
        };
        let quiet = [observe(ThreadSet::one(1), false); 10];
        let busy = [observe(ThreadSet::all(4), true); 10];
        let stream: Vec<Observed> = [quiet, busy, quiet].concat();
        assert_eq!(decisions(&policy, &stream, 1), vec![4, 1, 4]);
    }
}
