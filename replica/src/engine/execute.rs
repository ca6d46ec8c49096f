//! Executing one delivered command: the per-command part of Algorithm 1 of
//! the opt-PSMR paper, shared by every engine and by the sequential
//! reference, so that they differ only in what runs in parallel.
//!
//! ```text
//! decode request ─ wrong service? ─ seen before? ─ decode op ─ optimistic? safety check ─ execute ─ record
//!      │               │               │              │              │ fail: Retry (nothing recorded)
//!   Refused         Refused     Done(stored)       Refused
//! ```
//!
//! In parallel mode a command's table is locked to look the request up and
//! again to record it, not while it runs. Under psmr and opt-psmr only the
//! thread owning a table takes its lock; under cbase a table serves the
//! clients of one slot, and two commands of one request never run at once.

use bytes::Bytes;
use psmr_core::proto::Command;

use super::{EngineState, ExecCost};
use crate::table::{ExecutedTable, Seen};
use psmr_core::service::{Lane, Service};
use psmr_core::wire::{Answerers, ClientId, Mode, Outcome, Refusal, Reply, Request};

/// How a command is executed.
pub(crate) enum Access<'a, T> {
    /// Parallel mode: shared state, the service's `lane`; only table
    /// `table` is written.
    Shared {
        state: &'a EngineState<T>,
        lane: Lane,
        table: usize,
    },
    /// Exclusive access. `lane` is the thread whose group delivered the
    /// command (single-thread engines and the sequential reference), or
    /// `None` for a `g_all` command in synchronous mode.
    Exclusive {
        state: &'a mut EngineState<T>,
        lane: Option<Lane>,
    },
}

/// Counters of one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecMetrics {
    /// Commands executed.
    pub executed: u64,
    /// Optimistic commands whose safety check failed (answered `Retry`).
    pub retries: u64,
    /// Optimistic commands whose safety check passed.
    pub passed: u64,
    /// Resent requests answered from the table of executed requests.
    pub from_table: u64,
    /// Requests refused (malformed, wrong service, stale).
    pub refused: u64,
    /// Concurrency-contract violations reported by the service.
    pub violations: u64,
    /// Synchronous-mode handoffs this worker took part in.
    pub syncs: u64,
    /// `classes`: reconfigurations this worker executed.
    pub reconfigs: u64,
    /// smr, psmr, opt-psmr: batches of this worker that the delivering
    /// thread executed while the worker's thread was parked.
    pub inline_batches: u64,
}

/// How commands run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    /// Spent by every execution.
    pub(crate) cost: ExecCost,
    /// A request is looked up in the table of executed requests first
    /// (false only where a bug is planted).
    pub(crate) look_up: bool,
}

impl Default for Run {
    fn default() -> Run {
        Run {
            cost: ExecCost::default(),
            look_up: true,
        }
    }
}

/// A decoded request about to run.
struct Job<'r> {
    client: ClientId,
    request: &'r Request,
    look_up: bool,
}

/// Executes `command` and returns the reply to send; an execution (not an
/// answer from the table, a refusal or a `Retry`) also spends the cost.
pub(crate) fn execute_command<S: Service>(
    service: &S,
    access: Access<'_, S::State>,
    command: &Command,
    run: Run,
    metrics: &mut ExecMetrics,
) -> Reply {
    let executed = metrics.executed;
    let reply = execute_once(service, access, command, run.look_up, metrics);
    if metrics.executed > executed {
        super::spend(&run.cost);
    }
    reply
}

fn execute_once<S: Service>(
    service: &S,
    access: Access<'_, S::State>,
    command: &Command,
    look_up: bool,
    metrics: &mut ExecMetrics,
) -> Reply {
    let client = ClientId(command.id.proposer.0);
    let Ok(request) = Request::decode(&command.payload) else {
        metrics.refused += 1;
        return Reply {
            client,
            request: None,
            outcome: Outcome::Refused(Refusal::MalformedRequest),
            execution_ns: 0,
            answerers: Answerers::All,
        };
    };
    let job = Job {
        client,
        request: &request,
        look_up,
    };
    let outcome = if request.service != service.id() {
        metrics.refused += 1;
        Outcome::Refused(Refusal::WrongService {
            requested: request.service.0,
            served: service.id().0,
        })
    } else {
        match access {
            Access::Shared { state, lane, table } => {
                shared(service, state, lane, table, &job, metrics)
            }
            Access::Exclusive { state, lane } => exclusive(service, state, lane, &job, metrics),
        }
    };
    Reply {
        client,
        request: Some(request.id),
        outcome,
        execution_ns: 0,
        answerers: request.answerers,
    }
}

/// The reply to a request its client has declared answered: the intake of
/// a single-ring engine found it below the client's low-water mark.
pub(crate) fn stale(command: &Command, metrics: &mut ExecMetrics) -> Reply {
    metrics.refused += 1;
    let request = Request::decode(&command.payload).ok();
    Reply {
        client: ClientId(command.id.proposer.0),
        request: request.as_ref().map(|r| r.id),
        outcome: Outcome::Refused(Refusal::Stale),
        execution_ns: 0,
        answerers: request.map_or(Answerers::All, |r| r.answerers),
    }
}

/// Parallel mode: the thread's own table and the synchronous-mode table.
fn shared<S: Service>(
    service: &S,
    state: &EngineState<S::State>,
    lane: Lane,
    table: usize,
    job: &Job<'_>,
    metrics: &mut ExecMetrics,
) -> Outcome {
    let own = &state.thread_tables[table].0;
    let lock = || own.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(outcome) = seen_before([&*lock(), &state.sync_table], job, metrics) {
        return outcome;
    }
    let Some(op) = decode(service, job, metrics) else {
        return Outcome::Refused(Refusal::MalformedOperation);
    };
    if job.request.mode == Mode::Optimistic && !check(service, &state.service, lane, &op, metrics) {
        return Outcome::Retry;
    }
    // The table is not held while the operation runs: under cbase one table
    // serves several workers (never for the same request at once).
    match service.execute_shared(&state.service, lane, &op) {
        Ok(response) => record(&mut lock(), job, response, metrics),
        Err(violation) => contract_violated(lane, &violation, metrics),
    }
}

/// Exclusive access: with a lane, that thread's table and the
/// synchronous-mode table; without (synchronous mode), every table.
fn exclusive<S: Service>(
    service: &S,
    state: &mut EngineState<S::State>,
    lane: Option<Lane>,
    job: &Job<'_>,
    metrics: &mut ExecMetrics,
) -> Outcome {
    let EngineState {
        service: service_state,
        sync_table,
        thread_tables,
    } = state;
    match lane {
        Some(lane) => {
            let own = thread_tables[lane.thread]
                .0
                .get_mut()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(outcome) = seen_before([&*own, &*sync_table], job, metrics) {
                return outcome;
            }
            match run_exclusive(service, service_state, Some(lane), job, metrics) {
                Ok(response) => record(own, job, response, metrics),
                Err(outcome) => outcome,
            }
        }
        None => {
            let threads = thread_tables
                .iter_mut()
                .map(|t| &*t.0.get_mut().unwrap_or_else(|e| e.into_inner()));
            if let Some(outcome) =
                seen_before(std::iter::once(&*sync_table).chain(threads), job, metrics)
            {
                return outcome;
            }
            match run_exclusive(service, service_state, None, job, metrics) {
                Ok(response) => record(sync_table, job, response, metrics),
                Err(outcome) => outcome,
            }
        }
    }
}

/// Decodes, safety-checks (an optimistic command on a thread's group) and
/// executes with exclusive access.
fn run_exclusive<S: Service>(
    service: &S,
    state: &mut S::State,
    lane: Option<Lane>,
    job: &Job<'_>,
    metrics: &mut ExecMetrics,
) -> Result<Bytes, Outcome> {
    let op = decode(service, job, metrics).ok_or(Outcome::Refused(Refusal::MalformedOperation))?;
    if let Some(lane) = lane.filter(|_| job.request.mode == Mode::Optimistic)
        && !check(service, state, lane, &op, metrics)
    {
        return Err(Outcome::Retry);
    }
    Ok(service.execute(state, &op))
}

/// The answer to a request executed before, if it was.
fn seen_before<'t>(
    tables: impl IntoIterator<Item = &'t ExecutedTable>,
    job: &Job<'_>,
    metrics: &mut ExecMetrics,
) -> Option<Outcome> {
    if !job.look_up {
        return None;
    }
    let seen = tables
        .into_iter()
        .map(|t| t.seen(job.client, job.request.id))
        .find(|s| *s != Seen::New)?;
    match seen {
        Seen::Answered(response) => {
            metrics.from_table += 1;
            Some(Outcome::Done(response))
        }
        Seen::Forgotten => {
            metrics.refused += 1;
            Some(Outcome::Refused(Refusal::Stale))
        }
        Seen::New => None,
    }
}

fn decode<S: Service>(service: &S, job: &Job<'_>, metrics: &mut ExecMetrics) -> Option<S::Op> {
    let op = service.decode(&job.request.op);
    if op.is_none() {
        metrics.refused += 1;
    }
    op
}

fn check<S: Service>(
    service: &S,
    state: &S::State,
    lane: Lane,
    op: &S::Op,
    metrics: &mut ExecMetrics,
) -> bool {
    let passed = service.safety_check(state, lane, op);
    if passed {
        metrics.passed += 1;
    } else {
        metrics.retries += 1;
    }
    passed
}

fn record(
    table: &mut ExecutedTable,
    job: &Job<'_>,
    response: Bytes,
    metrics: &mut ExecMetrics,
) -> Outcome {
    metrics.executed += 1;
    table.advance(job.client, job.request.low_water);
    table.record(job.client, job.request.id, response.clone());
    Outcome::Done(response)
}

/// The service reported a broken concurrency contract: a bug. Debug builds
/// and tests stop here; release builds refuse the command and count it.
fn contract_violated(
    lane: Lane,
    violation: &dyn std::error::Error,
    metrics: &mut ExecMetrics,
) -> Outcome {
    if cfg!(debug_assertions) {
        panic!(
            "concurrency contract violated on thread {}: {violation}",
            lane.thread
        );
    }
    metrics.violations += 1;
    Outcome::Refused(Refusal::ContractViolation)
}
