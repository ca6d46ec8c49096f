//! The sans-IO client: calls in flight, the multicast proposer, replies and
//! timers, with time passed in as `now` and messages passed out through
//! [`Session::poll_transmit`]. [`crate::Client`] runs one on a tokio task
//! over QUIC; a simulator runs it on virtual time over a faulty network.
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
use psmr_core::proto::{CommandId, Message, NodeId, Proposer, ProposerId, RingId, SeqMap};
use psmr_core::{
    Answerers, ClientId, EngineKind, Group, Mode, Outcome, Reply, Request, RequestId, route,
};
use tracing::debug;

use crate::optimism::Optimism;
use crate::sequential::Sequential;
use crate::{Answer, ClientError, ClientOptions, ClientStats, ServiceClient};

/// What a session sends.
#[derive(Clone, Debug, PartialEq)]
pub enum Transmit {
    /// A protocol message (a proposal) to an acceptor.
    Propose {
        /// The acceptor.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// A greeting to a replica: it answers this client on the connection
    /// the greeting came on.
    Hello {
        /// The replica.
        to: NodeId,
    },
}

/// How a call ended, for the caller's `token`.
pub type Answered<T> = (T, Result<Answer, ClientError>);

struct Pending<Op, T> {
    op: Op,
    request: Request,
    command: CommandId,
    group: Group,
    retried: bool,
    /// When the request is proposed again as a new command.
    repropose_at: Instant,
    deadline: Instant,
    token: T,
}

/// How often the client greets every replica again.
const HELLO_EVERY: Duration = Duration::from_secs(1);

/// One client's calls: generic over the caller's `token` for a call (the
/// SDK's reply channel, a simulator's call number), which comes back with
/// the call's answer from [`Session::poll_answer`].
pub struct Session<M: ServiceClient, T>
where
    M::Op: Send + 'static,
{
    service: M,
    kind: EngineKind,
    threads: usize,
    options: ClientOptions,
    proposer: Proposer,
    sequential: Sequential,
    optimism: Optimism,
    /// Calls not answered yet, by request id: the oldest is the low-water
    /// mark. Boxed: a call that waits long leaves a hole per later call
    /// answered before it, which then costs a pointer.
    pending: SeqMap<Box<Pending<M::Op, T>>>,
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
    next_hello: Instant,
    transmits: VecDeque<Transmit>,
    answers: VecDeque<Answered<T>>,
}

impl<M: ServiceClient, T> Session<M, T>
where
    M::Op: Send + 'static,
{
    /// A session of client `id` (its id on the wire) of `cluster`, whose
    /// replica `answerer` (an index in the cluster's replicas) answers first.
    /// It greets every replica at once.
    pub fn new(
        now: Instant,
        cluster: &ClusterConfig,
        service: M,
        options: ClientOptions,
        id: ClientId,
        stats: Arc<ClientStats>,
        answerer: usize,
    ) -> Self {
        let proposer = Proposer::new(ProposerId(id.0), &cluster.multicast(), options.resend_after);
        let silence = options.failover_after;
        let mut session = Session {
            service,
            kind: cluster.engine(),
            threads: cluster.threads(),
            sequential: Sequential::new(options.sequential_above),
            optimism: Optimism::new(options.optimism_below),
            options,
            proposer,
            pending: SeqMap::default(),
            deadlines: VecDeque::new(),
            repropose: VecDeque::new(),
            next_request: 0,
            stats,
            replicas: cluster.replicas.iter().map(|r| NodeId(r.id)).collect(),
            answerer,
            heard: now,
            silence,
            next_hello: now,
            transmits: VecDeque::new(),
            answers: VecDeque::new(),
        };
        session.greet(now);
        session
    }

    /// Starts a call of `op`; its answer comes from [`Session::poll_answer`]
    /// with `token`.
    pub fn call(&mut self, now: Instant, op: M::Op, token: T) {
        self.start(now, op, token);
    }

    /// A frame the replica `from` sent on this client's reply stream.
    pub fn handle_reply(&mut self, now: Instant, from: NodeId, body: &[u8]) {
        let Ok(replies) = Reply::decode_all(body) else {
            debug!(%from, "undecodable replies");
            return;
        };
        for reply in replies {
            self.on_reply(now, from, reply);
        }
    }

    /// Runs the timers due at `now`: resends, re-proposals, the failover,
    /// deadlines, greetings.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.on_timers(now);
        self.flush();
    }

    /// When [`Session::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        self.next_wake()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() {
            self.flush();
        }
        self.transmits.pop_front()
    }

    /// The next call that ended, with its token.
    pub fn poll_answer(&mut self) -> Option<Answered<T>> {
        self.answers.pop_front()
    }

    /// Calls not answered yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
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
        for &to in &self.replicas {
            self.transmits.push_back(Transmit::Hello { to });
        }
        self.next_hello = now + HELLO_EVERY;
    }

    fn ring(&self, group: Group) -> RingId {
        match group {
            Group::All => RingId(0),
            Group::Thread(i) => RingId(i as u16 + 1),
        }
    }

    fn start(&mut self, now: Instant, op: M::Op, token: T) {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let mut chosen = match route(self.kind, &self.service, &op, self.threads) {
            Ok(chosen) => chosen,
            Err(e) => {
                self.answers
                    .push_back((token, Err(ClientError::Mapping(e))));
                return;
            }
        };
        if chosen.0 == Mode::Optimistic && !self.optimism.guess() {
            // Always in range: `route` checked the conservative group too.
            let group = self.service.conservative(&op, self.threads);
            chosen = (Mode::Conservative, group);
            self.stats.cautious.fetch_add(1, Ordering::Relaxed);
        }
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
            op: self.service.encode_op(&op),
            answerers: self.answerers(),
        };
        let command = self.propose(now, group, &request);
        let deadline = now + self.options.deadline;
        self.deadlines.push_back((deadline, id));
        let repropose_at = now + self.options.repropose_after;
        self.repropose.push_back((repropose_at, id));
        let pending = Pending {
            op,
            request,
            command,
            group,
            retried: false,
            repropose_at,
            deadline,
            token,
        };
        self.pending.insert(id.0, Box::new(pending));
    }

    fn propose(&mut self, now: Instant, group: Group, request: &Request) -> CommandId {
        let ring = self.ring(group);
        self.proposer
            .propose(now, ring, request.encode())
            .expect("the cluster's rings are the client's rings")
    }

    fn on_reply(&mut self, now: Instant, from: NodeId, reply: Reply) {
        if from == self.replicas[self.answerer] {
            self.heard = now;
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
            Outcome::Retry => self.retry(now, id),
            Outcome::Done(response) => self.finish(id, Ok(response)),
            Outcome::Refused(refusal) => self.finish(id, Err(ClientError::Refused(refusal))),
        }
    }

    /// The optimistic guess failed: the same request, conservatively, once
    /// (answered by the same replicas: the one asked has just answered).
    fn retry(&mut self, now: Instant, id: RequestId) {
        let Some(pending) = self.pending.get(id.0) else {
            return;
        };
        if pending.retried {
            return;
        }
        let guessed = pending.request.mode == Mode::Optimistic;
        let group = self.service.conservative(&pending.op, self.threads);
        if guessed {
            self.guessed(true);
        }
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        self.propose_again(now, id, Some(group));
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

    /// Notes whether an optimistic guess failed the safety check.
    fn guessed(&mut self, failed: bool) {
        let was = self.optimism.is_on();
        self.optimism.outcome(failed);
        if self.optimism.is_on() != was {
            debug!(
                on = !was,
                "adaptive optimism (guesses with OC-G, else CC-G)"
            );
        }
    }

    fn finish(&mut self, id: RequestId, result: Result<Bytes, ClientError>) {
        let Some(pending) = self.pending.remove(id.0).map(|p| *p) else {
            return;
        };
        self.proposer.done(pending.command);
        if result.is_ok() && pending.request.mode == Mode::Optimistic {
            self.guessed(false);
        }
        let retried = pending.retried;
        let answer = result.map(|response| Answer { response, retried });
        self.answers.push_back((pending.token, answer));
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
            self.transmits.push_back(Transmit::Propose {
                to: t.to,
                message: t.message,
            });
        }
    }
}
