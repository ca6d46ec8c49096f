//! The `cbase` engine (CBASE, sections 4–5): a parallelizer keeps the
//! pending commands of one ring in a dependency graph, in delivery order,
//! and K workers take the commands that have no incomplete predecessor.
//!
//! ```text
//!  deliver ─ decode ─> insert: edge from every pending command it depends on
//!                       (window full: wait, in order, in the backlog)
//!  worker:  next_request (a command with no incomplete predecessor, oldest first)
//!           ─ execute (read guard, or write guard if it runs alone) ─ remove_request
//! ```
//!
//! Two commands are dependent if the service's rules say so
//! ([`psmr_core::model::dependent`]), if either must run alone or cannot be
//! decoded, if both run on the same lane, if they carry the same request of
//! the same client (a resend must find its first copy executed, on every
//! replica alike), or if the later one's low-water mark passes the earlier
//! one's request (it may make the earlier response forgotten). Requests
//! found stale at delivery depend on nothing.
//!
//! Cost: inserting a command tests it against every pending command, so
//! the graph costs O(P) per command for P pending commands, and
//! `window` (default 256) bounds P. Removing a command costs O(P) to find
//! it plus one step per dependent. [`DagStats`] counts the tests.
//!
//! Executed requests are recorded in one table per worker slot, chosen by
//! client: a request and its resend are dependent, so the resend runs after
//! the first copy and finds it in its client's table.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use psmr_core::proto::Command;

use super::execute::ExecMetrics;
use super::intake::{Decoded, Intake, Taken};
use super::pause::Pauser;
use super::{EngineError, Placed, Shared, lock};
use psmr_core::model::{ConflictModel, Placement, dependent};

/// A pending command.
struct Node<Op> {
    command: Command,
    /// `None` if undecodable.
    decoded: Option<Decoded<Op>>,
    /// Answered `Stale` without touching anything (see [`super::intake`]).
    stale: bool,
    placement: Placement,
    /// Incomplete predecessors.
    missing: usize,
    /// Slots of the commands that depend on this one.
    dependents: Vec<usize>,
}

/// Counters of the dependency graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DagStats {
    /// Commands inserted.
    pub inserted: u64,
    /// Dependence tests made.
    pub checks: u64,
    /// Edges added.
    pub edges: u64,
    /// The most pending commands at once.
    pub max_pending: usize,
}

struct Dag<Op> {
    slots: Vec<Option<Node<Op>>>,
    free: Vec<usize>,
    /// Slots of the commands in the graph, in delivery order.
    pending: Vec<usize>,
    /// Slots with no incomplete predecessor, oldest first.
    ready: VecDeque<usize>,
    /// Decoded commands waiting for room in the window.
    backlog: VecDeque<Node<Op>>,
    closed: bool,
    aborted: bool,
    stats: DagStats,
}

/// A command handed to a worker.
pub struct Task {
    /// Its place in the graph, for [`Parallelizer::remove_request`].
    pub slot: usize,
    /// The command.
    pub command: Command,
    /// How it runs beside others.
    pub placement: Placement,
    /// The table of executed requests its client uses.
    pub table: usize,
    /// Answer `Stale` at once.
    pub stale: bool,
}

/// CBASE's parallelizer: a producer/consumer queue that hands out only
/// commands whose predecessors are complete.
pub struct Parallelizer<S: ConflictModel> {
    service: Arc<S>,
    lanes: usize,
    window: usize,
    dag: Mutex<Dag<S::Op>>,
    wake: Condvar,
    intake: Mutex<Intake>,
}

impl<S: ConflictModel> Parallelizer<S> {
    /// The parallelizer of an engine; `intake`: a checkpoint's.
    pub(super) fn new(shared: &Shared<S>, intake: Option<Intake>) -> Parallelizer<S> {
        let parallelizer = Parallelizer::standalone(
            shared.service.clone(),
            shared.config.threads(),
            shared.config.window,
        );
        if let Some(intake) = intake {
            *lock(&parallelizer.intake) = intake;
        }
        parallelizer
    }

    /// The intake's low-water marks, for a checkpoint.
    pub(super) fn intake_image(&self) -> Vec<(psmr_core::ClientId, psmr_core::RequestId)> {
        lock(&self.intake).image()
    }

    /// A parallelizer for `lanes` workers holding at most `window` commands
    /// in its graph (benchmarks use it alone).
    pub fn standalone(service: Arc<S>, lanes: usize, window: usize) -> Parallelizer<S> {
        assert!(lanes >= 1 && window >= 1);
        Parallelizer {
            service,
            lanes,
            window,
            dag: Mutex::new(Dag {
                slots: Vec::new(),
                free: Vec::new(),
                pending: Vec::new(),
                ready: VecDeque::new(),
                backlog: VecDeque::new(),
                closed: false,
                aborted: false,
                stats: DagStats::default(),
            }),
            wake: Condvar::new(),
            intake: Mutex::default(),
        }
    }

    /// Enqueues delivered commands, in order (CBASE's `insert`).
    pub fn insert(&self, commands: &[Command]) -> Result<(), EngineError> {
        let nodes: Vec<Node<S::Op>> = {
            let mut intake = lock(&self.intake);
            commands.iter().map(|c| self.node(&mut intake, c)).collect()
        };
        let mut dag = lock(&self.dag);
        if dag.aborted {
            return Err(EngineError::Stopped);
        }
        assert!(!dag.closed, "insert after close");
        dag.backlog.extend(nodes);
        let before = dag.ready.len();
        self.admit(&mut dag);
        let woken = dag.ready.len() - before;
        drop(dag);
        self.wake_up(woken);
        Ok(())
    }

    /// Commands delivered that wait outside the graph for the window.
    pub fn queued(&self) -> usize {
        lock(&self.dag).backlog.len()
    }

    /// The oldest command with no incomplete predecessor; waits for one;
    /// `None` once closed and drained (CBASE's `next_request`).
    pub fn next_request(&self) -> Option<Task> {
        let mut dag = lock(&self.dag);
        loop {
            if dag.aborted {
                return None;
            }
            if let Some(slot) = dag.ready.pop_front() {
                return Some(self.task(&dag, slot));
            }
            if dag.closed && dag.pending.is_empty() && dag.backlog.is_empty() {
                return None;
            }
            dag = self.wake.wait(dag).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A command with no incomplete predecessor, if there is one now.
    pub fn try_next_request(&self) -> Option<Task> {
        let mut dag = lock(&self.dag);
        let slot = dag.ready.pop_front()?;
        Some(self.task(&dag, slot))
    }

    fn task(&self, dag: &Dag<S::Op>, slot: usize) -> Task {
        let node = dag.slots[slot].as_ref().expect("a ready slot holds a node");
        let table = node
            .decoded
            .as_ref()
            .map_or(0, |d| (d.client.0 % self.lanes as u64) as usize);
        Task {
            slot,
            command: node.command.clone(),
            placement: node.placement,
            table,
            stale: node.stale,
        }
    }

    /// Marks `slot` complete and frees its dependents (CBASE's `remove_request`).
    pub fn remove_request(&self, slot: usize) {
        let mut dag = lock(&self.dag);
        let node = dag.slots[slot].take().expect("removing a pending command");
        debug_assert_eq!(node.missing, 0, "removing a command that was not ready");
        dag.free.push(slot);
        let at = dag
            .pending
            .iter()
            .position(|&s| s == slot)
            .expect("pending");
        dag.pending.remove(at);
        let before = dag.ready.len();
        for d in node.dependents {
            let dependent = dag.slots[d].as_mut().expect("dependents are pending");
            dependent.missing -= 1;
            if dependent.missing == 0 {
                dag.ready.push_back(d);
            }
        }
        self.admit(&mut dag);
        let woken = dag.ready.len() - before;
        let drained = dag.closed && dag.pending.is_empty() && dag.backlog.is_empty();
        drop(dag);
        if drained {
            self.wake.notify_all();
        } else {
            self.wake_up(woken);
        }
    }

    /// No more inserts: workers stop once the graph is drained.
    pub fn close(&self) {
        lock(&self.dag).closed = true;
        self.wake.notify_all();
    }

    /// A worker died: every other one stops.
    pub fn abort(&self) {
        lock(&self.dag).aborted = true;
        self.wake.notify_all();
    }

    /// The graph's counters.
    pub fn stats(&self) -> DagStats {
        lock(&self.dag).stats
    }

    fn wake_up(&self, n: usize) {
        for _ in 0..n {
            self.wake.notify_one();
        }
    }

    fn node(&self, intake: &mut Intake, command: &Command) -> Node<S::Op> {
        let Taken { decoded, stale } = intake.take(&*self.service, command);
        let placement = match &decoded {
            _ if stale => Placement::Anywhere,
            Some(d) => match self.service.placement(&d.op, self.lanes) {
                Placement::Lane(l) if l >= self.lanes => Placement::Alone,
                placement => placement,
            },
            None => Placement::Alone,
        };
        Node {
            command: command.clone(),
            decoded,
            stale,
            placement,
            missing: 0,
            dependents: Vec::new(),
        }
    }

    /// Moves backlog commands into the graph while the window has room.
    fn admit(&self, dag: &mut Dag<S::Op>) {
        while dag.pending.len() < self.window {
            let Some(mut node) = dag.backlog.pop_front() else {
                break;
            };
            let slot = dag.free.pop().unwrap_or(dag.slots.len());
            let mut edges = Vec::new();
            for &p in &dag.pending {
                let earlier = dag.slots[p].as_ref().expect("pending");
                if self.conflict(earlier, &node) {
                    edges.push(p);
                }
            }
            dag.stats.checks += dag.pending.len() as u64;
            dag.stats.edges += edges.len() as u64;
            dag.stats.inserted += 1;
            node.missing = edges.len();
            for p in edges {
                dag.slots[p]
                    .as_mut()
                    .expect("pending")
                    .dependents
                    .push(slot);
            }
            if node.missing == 0 {
                dag.ready.push_back(slot);
            }
            if slot == dag.slots.len() {
                dag.slots.push(Some(node));
            } else {
                dag.slots[slot] = Some(node);
            }
            dag.pending.push(slot);
            dag.stats.max_pending = dag.stats.max_pending.max(dag.pending.len());
        }
    }

    /// Whether `later` must wait for `earlier`.
    fn conflict(&self, earlier: &Node<S::Op>, later: &Node<S::Op>) -> bool {
        if earlier.stale || later.stale {
            return false;
        }
        let (Some(a), Some(b)) = (&earlier.decoded, &later.decoded) else {
            return true;
        };
        match (earlier.placement, later.placement) {
            (Placement::Alone, _) | (_, Placement::Alone) => return true,
            (Placement::Lane(x), Placement::Lane(y)) if x == y => return true,
            _ => {}
        }
        // A resend runs after its first copy, and a request that lets its
        // client's earlier responses be forgotten runs after them.
        let same_client = a.client == b.client;
        (same_client && (a.request == b.request || b.low_water > a.request))
            || dependent(&*self.service, &a.op, &b.op)
    }
}

/// Stops the other workers if this one dies.
struct AbortGuard<'a, S: ConflictModel>(&'a Parallelizer<S>);

impl<S: ConflictModel> Drop for AbortGuard<'_, S> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abort();
        }
    }
}

/// Runs worker `worker` until the parallelizer is closed and drained.
pub(super) fn run<S: ConflictModel>(
    shared: &Shared<S>,
    parallelizer: &Parallelizer<S>,
    worker: usize,
) -> ExecMetrics {
    let _guard = AbortGuard(parallelizer);
    let mut metrics = ExecMetrics::default();
    let mut pauser = Pauser::new(shared.config.jitter, worker);
    let mut replies = Vec::with_capacity(1);
    while let Some(task) = parallelizer.next_request() {
        pauser.pause();
        let placed = Placed {
            command: &task.command,
            placement: task.placement,
            alone: task.placement == Placement::Alone,
            stale: task.stale,
            table: task.table,
        };
        let reply = shared.execute_placed(placed, worker, &mut metrics);
        parallelizer.remove_request(task.slot);
        replies.push(reply);
        shared.sink.replies(worker, &mut replies);
        replies.clear();
    }
    metrics
}

#[cfg(test)]
mod tests {
    use psmr_core::proto::{CommandId, ProposerId};

    use super::*;
    use psmr_core::Service;
    use psmr_core::wire::{Answerers, Mode, Request, RequestId};
    use psmr_services::{ListOp, ListService};

    fn command(client: u64, id: u64, low_water: u64, op: ListOp) -> Command {
        let request = Request {
            id: RequestId(id),
            low_water: RequestId(low_water),
            mode: Mode::Conservative,
            service: ListService.id(),
            op: op.encode(),
            answerers: Answerers::All,
        };
        Command {
            id: CommandId {
                proposer: ProposerId(client),
                seq: id,
            },
            low_water: 0,
            payload: request.encode(),
        }
    }

    fn parallelizer(window: usize) -> Parallelizer<ListService> {
        Parallelizer::standalone(Arc::new(ListService), 2, window)
    }

    fn take(p: &Parallelizer<ListService>) -> Vec<usize> {
        std::iter::from_fn(|| p.try_next_request().map(|t| t.slot)).collect()
    }

    #[test]
    fn reads_run_together_and_a_write_waits_for_them_and_blocks_what_follows() {
        let p = parallelizer(16);
        p.insert(&[
            command(1, 0, 0, ListOp::Contains(1)),
            command(2, 0, 0, ListOp::Contains(2)),
            command(3, 0, 0, ListOp::Add(3)),
            command(4, 0, 0, ListOp::Contains(4)),
        ])
        .unwrap();
        assert_eq!(take(&p), vec![0, 1], "both reads are ready at once");
        p.remove_request(0);
        assert_eq!(
            take(&p),
            Vec::<usize>::new(),
            "the write waits for both reads"
        );
        p.remove_request(1);
        assert_eq!(take(&p), vec![2]);
        p.remove_request(2);
        assert_eq!(take(&p), vec![3], "the read after the write waits for it");
        p.remove_request(3);
        let stats = p.stats();
        assert_eq!((stats.checks, stats.edges), (6, 3));
    }

    #[test]
    fn a_resend_waits_for_its_first_copy_and_a_raised_low_water_mark_for_both() {
        let p = parallelizer(16);
        p.insert(&[
            command(1, 5, 5, ListOp::Contains(1)),
            command(1, 5, 5, ListOp::Contains(1)),
            command(1, 6, 5, ListOp::Contains(2)),
            command(1, 7, 7, ListOp::Contains(3)),
        ])
        .unwrap();
        assert_eq!(take(&p), vec![0, 2], "the resend (slot 1) waits for slot 0");
        p.remove_request(0);
        p.remove_request(2);
        assert_eq!(take(&p), vec![1]);
        p.remove_request(1);
        assert_eq!(take(&p), vec![3], "low-water 7 passes requests 5 and 6");
    }

    #[test]
    fn a_request_below_its_clients_low_water_mark_is_stale_and_waits_for_nothing() {
        let p = parallelizer(16);
        p.insert(&[
            command(1, 0, 0, ListOp::Add(1)),
            command(1, 3, 2, ListOp::Add(2)),
            command(1, 1, 0, ListOp::Add(1)),
        ])
        .unwrap();
        let tasks: Vec<Task> = std::iter::from_fn(|| p.try_next_request()).collect();
        let stale: Vec<(usize, bool)> = tasks.iter().map(|t| (t.slot, t.stale)).collect();
        assert_eq!(stale, vec![(0, false), (2, true)]);
    }

    #[test]
    fn the_window_bounds_the_graph_and_the_backlog_keeps_the_order() {
        let p = parallelizer(2);
        let writes: Vec<Command> = (0..5).map(|i| command(1, i, 0, ListOp::Add(i))).collect();
        p.insert(&writes).unwrap();
        let mut order = Vec::new();
        while let Some(task) = p.try_next_request() {
            order.push(task.command.id.seq);
            p.remove_request(task.slot);
        }
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert_eq!(p.stats().max_pending, 2);
        p.close();
        assert!(p.next_request().is_none(), "closed and drained");
    }
}
