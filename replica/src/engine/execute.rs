//! Executing one delivered command: the per-command part of Algorithm 1 of
//! the opt-PSMR paper, shared by every engine and by the sequential
//! reference, so that they differ only in what runs in parallel.
//!
//! ```text
//! decode request ─ wrong service? ─ seen before? ─ decode op ─ optimistic? safety check ─ execute ─ record
//!      │               │               │              │              │ fail: Retry (nothing recorded)
//!   Refused         Refused     Done(stored)       Refused
//! ```

use bytes::Bytes;
use psmr_multicast::proto::Command;

use super::EngineState;
use crate::service::{Lane, Service};
use crate::table::{ExecutedTable, Seen};
use crate::wire::{ClientId, Mode, Outcome, Refusal, Reply, Request};

/// How a command is executed.
pub(crate) enum Access<'a, T> {
    /// Parallel mode: shared state; only `lane`'s table is written.
    Shared {
        state: &'a EngineState<T>,
        lane: Lane,
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
}

/// Executes `command` and returns the reply to send.
pub(crate) fn execute_command<S: Service>(
    service: &S,
    access: Access<'_, S::State>,
    command: &Command,
    metrics: &mut ExecMetrics,
) -> Reply {
    let client = ClientId(command.id.proposer.0);
    let reply = |request, outcome| Reply {
        client,
        request,
        outcome,
    };
    let Ok(request) = Request::decode(&command.payload) else {
        metrics.refused += 1;
        return reply(None, Outcome::Refused(Refusal::MalformedRequest));
    };
    let id = Some(request.id);
    if request.service != service.id() {
        metrics.refused += 1;
        let refusal = Refusal::WrongService {
            requested: request.service.0,
            served: service.id().0,
        };
        return reply(id, Outcome::Refused(refusal));
    }
    match lookup(&access, client, &request) {
        Seen::Answered(response) => {
            metrics.from_table += 1;
            return reply(id, Outcome::Done(response));
        }
        Seen::Forgotten => {
            metrics.refused += 1;
            return reply(id, Outcome::Refused(Refusal::Stale));
        }
        Seen::New => {}
    }
    let Some(op) = service.decode(&request.op) else {
        metrics.refused += 1;
        return reply(id, Outcome::Refused(Refusal::MalformedOperation));
    };
    reply(id, run(service, access, client, &request, &op, metrics))
}

/// Looks a request up where a resend of it could have been recorded: the
/// thread's own table and the synchronous-mode table; in synchronous mode,
/// every table.
fn lookup<T>(access: &Access<'_, T>, client: ClientId, request: &Request) -> Seen {
    let first_seen = |tables: &mut dyn Iterator<Item = Seen>| {
        for seen in tables {
            if seen != Seen::New {
                return seen;
            }
        }
        Seen::New
    };
    match access {
        Access::Shared { state, lane } => {
            let own = lock(&state.thread_tables[lane.thread]).seen(client, request.id);
            first_seen(&mut [own, state.sync_table.seen(client, request.id)].into_iter())
        }
        Access::Exclusive {
            state,
            lane: Some(lane),
        } => {
            let own = lock(&state.thread_tables[lane.thread]).seen(client, request.id);
            first_seen(&mut [own, state.sync_table.seen(client, request.id)].into_iter())
        }
        Access::Exclusive { state, lane: None } => {
            let sync = state.sync_table.seen(client, request.id);
            let threads = state
                .thread_tables
                .iter()
                .map(|t| lock(t).seen(client, request.id));
            first_seen(&mut std::iter::once(sync).chain(threads))
        }
    }
}

/// Safety check (for optimistic commands on a thread's group), execution,
/// and recording of the response.
fn run<S: Service>(
    service: &S,
    access: Access<'_, S::State>,
    client: ClientId,
    request: &Request,
    op: &S::Op,
    metrics: &mut ExecMetrics,
) -> Outcome {
    let optimistic = request.mode == Mode::Optimistic;
    match access {
        Access::Shared { state, lane } => {
            if optimistic && !check(service, &state.service, lane, op, metrics) {
                return Outcome::Retry;
            }
            let response = match service.execute_shared(&state.service, lane, op) {
                Ok(response) => response,
                Err(violation) => return contract_violated(lane, &violation, metrics),
            };
            let mut table = lock(&state.thread_tables[lane.thread]);
            record(&mut table, client, request, response, metrics)
        }
        Access::Exclusive { state, lane } => {
            if let Some(lane) = lane.filter(|_| optimistic) {
                if !check(service, &state.service, lane, op, metrics) {
                    return Outcome::Retry;
                }
            }
            let response = service.execute(&mut state.service, op);
            let table = match lane {
                Some(lane) => get_mut(&mut state.thread_tables[lane.thread]),
                None => &mut state.sync_table,
            };
            record(table, client, request, response, metrics)
        }
    }
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
    client: ClientId,
    request: &Request,
    response: Bytes,
    metrics: &mut ExecMetrics,
) -> Outcome {
    metrics.executed += 1;
    table.advance(client, request.low_water);
    table.record(client, request.id, response.clone());
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

fn lock(table: &std::sync::Mutex<ExecutedTable>) -> std::sync::MutexGuard<'_, ExecutedTable> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

fn get_mut(table: &mut std::sync::Mutex<ExecutedTable>) -> &mut ExecutedTable {
    table.get_mut().unwrap_or_else(|e| e.into_inner())
}
