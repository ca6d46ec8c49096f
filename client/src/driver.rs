//! The task behind a [`crate::Client`]: it owns the multicast proposer and
//! the calls in flight.
//!
//! ```text
//! new call ──> request id, route ──> proposer.propose ──> Propose to an acceptor
//! reply    ──> Done | Refused: answer the call, forget the command
//!          ──> Retry (first time): the same request, conservative, new command
//! timers   ──> proposer resends unanswered commands; calls unanswered for
//!              `repropose_after` go out again as new commands that every replica
//!              answers, and if the replica asked to answer was the client's
//!              answerer, the next replica becomes it; calls past the deadline time out
//!          ──> every HELLO_EVERY, a hello to every replica (replicas answer on the
//!              connection a hello came on, so a restarted replica learns of us again)
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use psmr_core::cluster::ClusterConfig;
use psmr_core::proto::codec::{self, DEFAULT_MAX_FRAME};
use psmr_core::proto::{CommandId, NodeId, Proposer, ProposerId, RingId, SeqMap};
use psmr_core::{
    Answerers, ClientId, EngineKind, Group, Mode, Outcome, Reply, Request, RequestId, route,
};
use psmr_multicast::net::{Inbound, Network, Purpose, frame_of};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::sequential::Sequential;
use crate::{Answer, Call, ClientError, ClientOptions, ClientStats, ServiceClient};

struct Pending<Op> {
    op: Op,
    request: Request,
    command: CommandId,
    group: Group,
    retried: bool,
    /// When the request is proposed again as a new command.
    repropose_at: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Answer, ClientError>>,
}

/// Calls and replies taken per round before proposals go out.
const ROUND: usize = 1024;

/// How often the client greets every replica again.
const HELLO_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Driver<M: ServiceClient>
where
    M::Op: Send + 'static,
{
    service: M,
    kind: EngineKind,
    threads: usize,
    options: ClientOptions,
    net: Network,
    proposer: Proposer,
    sequential: Sequential,
    /// Calls not answered yet, by request id: the oldest is the low-water
    /// mark. Boxed: a call that waits long leaves a hole per later call
    /// answered before it, which then costs a pointer.
    pending: SeqMap<Box<Pending<M::Op>>>,
    deadlines: VecDeque<(Instant, RequestId)>,
    /// Re-proposal times, in order (the interval is constant).
    repropose: VecDeque<(Instant, RequestId)>,
    next_request: u64,
    stats: Arc<ClientStats>,
    replicas: Vec<NodeId>,
    /// Index in `replicas` of the replica asked to answer.
    answerer: usize,
    /// When the answerer last replied (or became the answerer), and how
    /// long its silence may last while requests wait on it.
    heard: Instant,
    silence: Duration,
    hello: Vec<u8>,
    next_hello: Instant,
}

impl<M: ServiceClient> Driver<M>
where
    M::Op: Send + 'static,
{
    pub(crate) fn new(
        cluster: &ClusterConfig,
        service: M,
        options: ClientOptions,
        id: ClientId,
        net: Network,
        stats: Arc<ClientStats>,
        answerer: usize,
    ) -> Self {
        let proposer = Proposer::new(ProposerId(id.0), &cluster.multicast(), options.resend_after);
        let silence = options.failover_after;
        Driver {
            service,
            kind: cluster.engine(),
            threads: cluster.threads(),
            sequential: Sequential::new(options.sequential_above),
            options,
            net,
            proposer,
            pending: SeqMap::default(),
            deadlines: VecDeque::new(),
            repropose: VecDeque::new(),
            next_request: 0,
            stats,
            replicas: cluster.replicas.iter().map(|r| NodeId(r.id)).collect(),
            answerer,
            heard: Instant::now(),
            silence,
            hello: frame_of(&postcard::to_allocvec(&id.0).expect("an id serializes")),
            next_hello: Instant::now(),
        }
    }

    /// Who answers a request proposed now. A call alone in flight is
    /// answered by every replica: its caller waits on latency, and the first
    /// of several replies comes sooner than one chosen in advance, while the
    /// replies' cost matters only when many calls are in flight.
    fn answerers(&self) -> Answerers {
        if self.options.every_replica_answers || self.pending.is_empty() {
            Answerers::All
        } else {
            Answerers::One(self.replicas[self.answerer].0)
        }
    }

    pub(crate) async fn run(
        mut self,
        mut calls: mpsc::Receiver<Call<M::Op>>,
        mut inbox: mpsc::Receiver<Inbound>,
    ) {
        self.greet(Instant::now());
        loop {
            let wake = tokio::time::Instant::from_std(self.next_wake());
            tokio::select! {
                call = calls.recv() => match call {
                    Some(call) => self.start(call),
                    None => break,
                },
                inbound = inbox.recv() => match inbound {
                    Some(inbound) => self.on_inbound(inbound),
                    None => break,
                },
                () = tokio::time::sleep_until(wake) => {}
            }
            // Everything already there goes out in the same messages.
            for _ in 0..ROUND {
                match (calls.try_recv(), inbox.try_recv()) {
                    (Err(_), Err(_)) => break,
                    (call, inbound) => {
                        if let Ok(call) = call {
                            self.start(call);
                        }
                        if let Ok(inbound) = inbound {
                            self.on_inbound(inbound);
                        }
                    }
                }
            }
            self.on_timers(Instant::now());
            self.flush();
        }
        self.net.close();
    }

    fn next_wake(&self) -> Instant {
        let deadline = self.deadlines.front().map(|(at, _)| *at);
        let repropose = self.repropose.front().map(|(at, _)| *at);
        let failover = (!self.pending.is_empty()).then_some(self.heard + self.silence);
        [self.proposer.poll_timeout(), deadline, repropose, failover]
            .into_iter()
            .flatten()
            .fold(self.next_hello, Instant::min)
    }

    fn greet(&mut self, now: Instant) {
        for &replica in &self.replicas {
            self.net
                .send(replica, Purpose::ClientHello, self.hello.clone());
        }
        self.next_hello = now + HELLO_EVERY;
    }

    fn ring(&self, group: Group) -> RingId {
        match group {
            Group::All => RingId(0),
            Group::Thread(i) => RingId(i as u16 + 1),
        }
    }

    fn start(&mut self, call: Call<M::Op>) {
        let now = Instant::now();
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let chosen = match route(self.kind, &self.service, &call.op, self.threads) {
            Ok(chosen) => chosen,
            Err(e) => {
                let _ = call.reply.send(Err(ClientError::Mapping(e)));
                return;
            }
        };
        let was = self.sequential.is_on();
        let (mode, group) = self.sequential.route(chosen);
        if self.sequential.is_on() != was {
            debug!(on = !was, "sequential fallback (every command to g_all)");
        }
        if group != chosen.1 {
            self.stats.sequential.fetch_add(1, Ordering::Relaxed);
        }
        let request = Request {
            id,
            low_water: RequestId(self.pending.first().unwrap_or(id.0)),
            mode,
            service: self.service.service_id(),
            op: self.service.encode_op(&call.op),
            answerers: self.answerers(),
        };
        let command = self.propose(now, group, &request);
        let deadline = now + self.options.deadline;
        self.deadlines.push_back((deadline, id));
        let repropose_at = now + self.options.repropose_after;
        self.repropose.push_back((repropose_at, id));
        let pending = Pending {
            op: call.op,
            request,
            command,
            group,
            retried: false,
            repropose_at,
            deadline,
            reply: call.reply,
        };
        self.pending.insert(id.0, Box::new(pending));
    }

    fn propose(&mut self, now: Instant, group: Group, request: &Request) -> CommandId {
        let ring = self.ring(group);
        self.proposer
            .propose(now, ring, request.encode())
            .expect("the cluster's rings are the client's rings")
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        if inbound.purpose != Purpose::Replies {
            return;
        }
        let Ok(reply) = Reply::decode(&inbound.body) else {
            debug!(from = %inbound.from, "undecodable reply");
            return;
        };
        if inbound.from == self.replicas[self.answerer] {
            self.heard = Instant::now();
            self.silence = self.options.failover_after;
        }
        self.sequential.execution(reply.execution_ns);
        if reply.execution_ns > 0 {
            self.stats
                .execution_ns
                .store(reply.execution_ns, Ordering::Relaxed);
        }
        let Some(id) = reply.request else { return };
        match reply.outcome {
            Outcome::Retry => self.retry(id),
            Outcome::Done(response) => self.finish(id, Ok(response)),
            Outcome::Refused(refusal) => self.finish(id, Err(ClientError::Refused(refusal))),
        }
    }

    /// The optimistic guess failed: the same request, conservatively, once
    /// (answered by the same replicas: the one asked has just answered).
    fn retry(&mut self, id: RequestId) {
        let Some(pending) = self.pending.get(id.0) else {
            return;
        };
        if pending.retried {
            return;
        }
        let group = self.service.conservative(&pending.op, self.threads);
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        self.propose_again(Instant::now(), id, Some(group));
        if let Some(pending) = self.pending.get_mut(id.0) {
            pending.retried = true;
        }
    }

    /// No reply for `repropose_after`: the same request as a new command,
    /// answered by every replica. If the silent replica is still the answerer,
    /// the next one takes over.
    fn repropose(&mut self, now: Instant, id: RequestId) {
        self.stats.reproposals.fetch_add(1, Ordering::Relaxed);
        let Some(pending) = self.pending.get_mut(id.0) else {
            return;
        };
        let silent = self.replicas[self.answerer];
        if pending.request.answerers == Answerers::One(silent.0) {
            self.answerer = (self.answerer + 1) % self.replicas.len();
            self.stats.answerer_changes.fetch_add(1, Ordering::Relaxed);
            debug!(%silent, next = %self.replicas[self.answerer], "the answering replica left a request unanswered");
        }
        pending.request.answerers = Answerers::All;
        self.propose_again(now, id, None);
        let at = now + self.options.repropose_after;
        if let Some(pending) = self.pending.get_mut(id.0) {
            pending.repropose_at = at;
            self.repropose.push_back((at, id));
        }
    }

    /// The answerer has been silent for `silence` while requests wait on it:
    /// the next replica answers from now on, and the waiting requests go out
    /// again as new commands that every replica answers.
    fn fail_over(&mut self, now: Instant) {
        self.heard = now;
        let silent = self.replicas[self.answerer];
        let waiting: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.request.answerers == Answerers::One(silent.0))
            .map(|(id, _)| RequestId(id))
            .collect();
        if waiting.is_empty() || self.replicas.len() < 2 {
            return;
        }
        self.answerer = (self.answerer + 1) % self.replicas.len();
        self.silence = (self.silence * 2).min(self.options.repropose_after);
        self.stats.answerer_changes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .failovers
            .fetch_add(waiting.len() as u64, Ordering::Relaxed);
        debug!(%silent, next = %self.replicas[self.answerer], waiting = waiting.len(), "the answering replica fell silent");
        for id in waiting {
            if let Some(pending) = self.pending.get_mut(id.0) {
                pending.request.answerers = Answerers::All;
            }
            self.propose_again(now, id, None);
        }
    }

    /// Proposes pending request `id` again as a new multicast command, with
    /// a fresh low-water mark; `conservative` moves it to that group in
    /// conservative mode. The old command is abandoned.
    fn propose_again(&mut self, now: Instant, id: RequestId, conservative: Option<Group>) {
        let (Some(low_water), Some(pending)) = (self.pending.first(), self.pending.get_mut(id.0))
        else {
            return;
        };
        pending.request.low_water = RequestId(low_water);
        if let Some(group) = conservative {
            pending.request.mode = Mode::Conservative;
            pending.group = group;
        }
        let (group, request, old) = (pending.group, pending.request.clone(), pending.command);
        let command = self.propose(now, group, &request);
        self.proposer.done(old);
        if let Some(pending) = self.pending.get_mut(id.0) {
            pending.command = command;
        }
    }

    fn finish(&mut self, id: RequestId, result: Result<Bytes, ClientError>) {
        let Some(pending) = self.pending.remove(id.0).map(|p| *p) else {
            return;
        };
        self.proposer.done(pending.command);
        let retried = pending.retried;
        let answer = result.map(|response| Answer { response, retried });
        let _ = pending.reply.send(answer);
    }

    fn on_timers(&mut self, now: Instant) {
        if now >= self.next_hello {
            self.greet(now);
        }
        self.proposer.handle_timeout(now);
        if !self.pending.is_empty() && now >= self.heard + self.silence {
            self.fail_over(now);
        }
        while let Some(&(at, id)) = self.repropose.front() {
            if at > now {
                break;
            }
            self.repropose.pop_front();
            if self.pending.get(id.0).is_some_and(|p| p.repropose_at == at) {
                self.repropose(now, id);
            }
        }
        while let Some(&(at, id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            if self.pending.get(id.0).is_some_and(|p| p.deadline == at) {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                let deadline = self.options.deadline;
                self.finish(id, Err(ClientError::Timeout { deadline }));
            }
        }
    }

    fn flush(&mut self) {
        while let Some(t) = self.proposer.poll_transmit() {
            if let Ok(frame) = codec::frame(&t.message, DEFAULT_MAX_FRAME) {
                self.net.send(t.to, Purpose::Propose, frame);
            }
        }
    }
}
