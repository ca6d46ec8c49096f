//! The learner: delivers the decisions of the rings it subscribes to, each
//! ring in instance order, each command at most once per ring.
//!
//! ```text
//!  Decide(ring, i, v) ──> per-ring buffer ──in order──> dedupe ──> poll_delivery()
//!          gap for recovery_timeout ──> LearnRequest to an acceptor (rotating)
//! ```
//!
//! A replica process is one learner subscribed to all the rings of its
//! threads; it feeds each thread's [`Merger`](super::merger::Merger) with the
//! deliveries of that thread's rings.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::catchup::Catchup;
use super::codec;
use super::config::{ConfigError, MulticastConfig, Params};
use super::dedupe::{CommandKey, Dedupe};
use super::messages::{Decide, Message, Transmit, Trimmed};
use super::metrics::LearnerMetrics;
use super::types::{Batch, Command, Instance, NodeId, RingId, Value};

/// One delivered instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Ring.
    pub ring: RingId,
    /// Instance; consecutive per ring.
    pub instance: Instance,
    /// The decided value, without commands delivered before (retries).
    pub value: Value,
}

/// Why a learner could not be created.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LearnerError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A subscription names a ring that does not exist.
    #[error("subscription to unknown ring {ring}")]
    UnknownRing {
        /// The ring.
        ring: RingId,
    },
    /// The learner is not listed among the ring's learners, so no acceptor
    /// would send it decisions.
    #[error("{node} is not listed in rings[{ring}].learners")]
    NotListed {
        /// The learner.
        node: NodeId,
        /// The ring.
        ring: RingId,
    },
}

/// Decisions this learner can no longer get: every acceptor trimmed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    /// Ring.
    pub ring: RingId,
    /// First instance missing.
    pub from: Instance,
    /// First instance available again.
    pub below: Instance,
}

struct LearnerRing {
    acceptors: Vec<NodeId>,
    next: Instance,
    buffer: BTreeMap<Instance, Value>,
    horizon: Instance,
    dedupe: Dedupe,
    catchup: Catchup,
    lost: Option<Lost>,
    /// Kept for [`Learner::dedupe_image`] once asked for.
    lag: Option<Lag>,
    /// No recovery asks while set ([`Learner::hold`]).
    held: bool,
}

/// The filter of a ring as it stood at an earlier instance, and what it was
/// fed since: a replica's engine executes behind its learner, and its
/// checkpoints need the filter as of the instance they were taken at.
#[derive(Debug)]
struct Lag {
    dedupe: Dedupe,
    next: Instance,
    journal: VecDeque<(Instance, Vec<CommandKey>)>,
}

impl Lag {
    fn new(dedupe: &Dedupe, next: Instance) -> Lag {
        Lag {
            dedupe: dedupe.clone(),
            next,
            journal: VecDeque::new(),
        }
    }

    /// Feeds the journal below `below` to the filter, as `deliver` fed it.
    fn advance(&mut self, below: Instance) {
        while let Some((instance, _)) = self.journal.front() {
            if *instance >= below {
                break;
            }
            let (instance, keys) = self.journal.pop_front().expect("front exists");
            self.dedupe.sweep_range(self.next, instance);
            for key in keys {
                self.dedupe.admit_id(instance, key);
            }
            self.dedupe.sweep(instance);
            self.next = instance + 1;
        }
        self.dedupe.sweep_range(self.next, below);
        self.next = self.next.max(below);
    }
}

/// Where a ring's filter stood at an instance: what a replica checkpoint
/// carries so that a learner resumed from it delivers the rest of the ring
/// as a learner that never stopped ([`Learner::resume`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeImage {
    next: Instance,
    dedupe: Dedupe,
}

impl DedupeImage {
    /// The first instance after the image.
    pub fn next(&self) -> Instance {
        self.next
    }
}

/// Why [`Learner::dedupe_image`] cannot give an image.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    /// The ring is not subscribed.
    #[error("ring {0} is not subscribed")]
    UnknownRing(RingId),
    /// The instance is not between the last image and what was delivered.
    #[error("no image of ring {ring} at instance {at}: images can be taken from {from} to {to}")]
    OutOfRange {
        /// The ring.
        ring: RingId,
        /// The instance asked for.
        at: Instance,
        /// The earliest instance possible.
        from: Instance,
        /// The latest.
        to: Instance,
    },
}

/// Where a ring's deliveries and counters go.
struct Out<'a> {
    metrics: &'a mut LearnerMetrics,
    deliveries: &'a mut VecDeque<Delivery>,
    ring: RingId,
}

impl LearnerRing {
    fn on_decide(&mut self, d: Decide, buffer_limit: u64, out: &mut Out<'_>) {
        self.horizon = self.horizon.max(d.instance.saturating_add(1));
        if d.instance < self.next || self.buffer.contains_key(&d.instance) {
            out.metrics.duplicate_decisions += 1;
            return;
        }
        if d.instance - self.next >= buffer_limit {
            out.metrics.beyond_buffer += 1;
            return;
        }
        if self.lost.is_some() {
            return;
        }
        if undecodable(&d.value) {
            out.metrics.bad_frames += 1;
            return;
        }
        if d.instance == self.next {
            self.deliver(d.value, out);
        } else {
            self.buffer.insert(d.instance, d.value);
        }
        while let Some(value) = self.buffer.remove(&self.next) {
            self.deliver(value, out);
        }
    }

    /// Delivers `value` as the next instance of the ring.
    fn deliver(&mut self, value: Value, out: &mut Out<'_>) {
        let instance = self.next;
        self.next += 1;
        if let (Some(lag), Value::Batch(batch)) = (&mut self.lag, &value) {
            let keys = batch.commands().iter().map(CommandKey::of).collect();
            lag.journal.push_back((instance, keys));
        }
        let value = filter(&mut self.dedupe, instance, value, out.metrics);
        self.dedupe.sweep(instance);
        out.metrics.delivered_instances += 1;
        out.metrics.delivered_commands += value.commands().len() as u64;
        out.metrics.delivered_skips += u64::from(matches!(value, Value::Skip(_)));
        out.deliveries.push_back(Delivery {
            ring: out.ring,
            instance,
            value,
        });
    }

    /// Queues every recovery ask that is due, unless the ring is lost or held.
    fn ask(
        &mut self,
        now: Instant,
        id: RingId,
        params: &Params,
        out: &mut VecDeque<Transmit>,
        metrics: &mut LearnerMetrics,
    ) {
        if self.lost.is_some() || self.held {
            return;
        }
        while let Some((to, request)) =
            self.catchup
                .poll(now, id, self.next, self.horizon, &self.acceptors, params)
        {
            metrics.recovery_requests += 1;
            out.push_back(Transmit {
                to,
                message: Message::LearnRequest(request),
            });
        }
    }

    fn on_trimmed(&mut self, t: Trimmed) {
        if t.below > self.next && self.lost.is_none() {
            self.lost = Some(Lost {
                ring: t.ring,
                from: self.next,
                below: t.below,
            });
        }
    }
}

/// Batches of `recovery_batch` instances a learner asks for ahead of its
/// frontier while it catches up: replicas wait on their learner, so it
/// fetches as fast as answers come, held back only by [`Learner::hold`].
const WINDOW: u64 = 8;

/// A subscriber to one or more rings.
pub struct Learner {
    params: Params,
    rings: BTreeMap<RingId, LearnerRing>,
    out: VecDeque<Transmit>,
    deliveries: VecDeque<Delivery>,
    metrics: LearnerMetrics,
    next_tick: Instant,
}

impl Learner {
    /// A learner `id` of `config` subscribed to `subscriptions`, from instance 0.
    pub fn new(
        id: NodeId,
        config: &MulticastConfig,
        subscriptions: &[RingId],
        now: Instant,
    ) -> Result<Learner, LearnerError> {
        config.validate()?;
        let mut rings = BTreeMap::new();
        for &ring in subscriptions {
            let rc = config
                .ring(ring)
                .ok_or(LearnerError::UnknownRing { ring })?;
            if !rc.learners.contains(&id) {
                return Err(LearnerError::NotListed { node: id, ring });
            }
            let state = LearnerRing {
                acceptors: rc.acceptors.clone(),
                next: 0,
                buffer: BTreeMap::new(),
                horizon: 0,
                dedupe: Dedupe::new(config.params.dedupe_horizon),
                catchup: Catchup::new(0, now, std::time::Duration::ZERO, WINDOW),
                lost: None,
                lag: None,
                held: false,
            };
            rings.insert(ring, state);
        }
        Ok(Learner {
            params: config.params.clone(),
            rings,
            out: VecDeque::new(),
            deliveries: VecDeque::new(),
            metrics: LearnerMetrics::default(),
            next_tick: now,
        })
    }

    /// Counters.
    pub fn metrics(&self) -> &LearnerMetrics {
        &self.metrics
    }

    /// The next instance to deliver on `ring`.
    pub fn next_instance(&self, ring: RingId) -> Option<Instance> {
        self.rings.get(&ring).map(|r| r.next)
    }

    /// From now on, keeps what [`Learner::dedupe_image`] needs: the filter
    /// of every ring as of the last image, and the keys of the commands
    /// delivered since (24 bytes per command until the next image).
    pub fn keep_images(&mut self) {
        for ring in self.rings.values_mut() {
            if ring.lag.is_none() {
                ring.lag = Some(Lag::new(&ring.dedupe, ring.next));
            }
        }
    }

    /// The filter of `ring` as it stood once every instance below `at` was
    /// delivered, for a checkpoint taken there. `at` may not be below the
    /// last image's, nor above what was delivered.
    pub fn dedupe_image(&mut self, ring: RingId, at: Instance) -> Result<DedupeImage, ImageError> {
        let state = self
            .rings
            .get_mut(&ring)
            .ok_or(ImageError::UnknownRing(ring))?;
        let delivered = state.next;
        let lag = state
            .lag
            .get_or_insert_with(|| Lag::new(&state.dedupe, delivered));
        if at < lag.next || at > delivered {
            return Err(ImageError::OutOfRange {
                ring,
                at,
                from: lag.next,
                to: delivered,
            });
        }
        lag.advance(at);
        Ok(DedupeImage {
            next: at,
            dedupe: lag.dedupe.clone(),
        })
    }

    /// Resumes `ring` where `image` was taken: the next delivery is instance
    /// `image.next()`, filtered as a learner that delivered everything
    /// before would. Call before anything is handled.
    pub fn resume(
        &mut self,
        ring: RingId,
        image: DedupeImage,
        now: Instant,
    ) -> Result<(), ImageError> {
        let state = self
            .rings
            .get_mut(&ring)
            .ok_or(ImageError::UnknownRing(ring))?;
        state.next = image.next;
        state.horizon = state.horizon.max(image.next);
        state.buffer.clear();
        state.catchup = Catchup::new(image.next, now, std::time::Duration::ZERO, WINDOW);
        state.lost = None;
        if state.lag.is_some() {
            state.lag = Some(Lag::new(&image.dedupe, image.next));
        }
        state.dedupe = image.dedupe;
        Ok(())
    }

    /// Holds the recovery of `ring` back while `hold` (the consumer of its
    /// deliveries has a backlog: catching up faster than it executes would
    /// only queue decisions in memory), and lets it go on when released.
    /// Per ring, because a consumer may wait on another ring to drain its
    /// backlog (a worker at a `g_all` synchronization waits for a worker
    /// that needs its own ring). Live decisions are delivered either way.
    pub fn hold(&mut self, ring: RingId, hold: bool) {
        if let Some(r) = self.rings.get_mut(&ring) {
            r.held = hold;
        }
    }

    /// Per ring: the next instance to deliver and the newest decision heard
    /// of (their difference is how far this learner lags).
    pub fn progress(&self) -> Vec<(RingId, Instance, Instance)> {
        self.rings
            .iter()
            .map(|(&ring, r)| (ring, r.next, r.horizon.max(r.next)))
            .collect()
    }

    /// Whether every ring's next instance is within `slack` instances of
    /// the newest decision this learner has heard of: it is not catching up.
    pub fn caught_up(&self, slack: Instance) -> bool {
        self.rings
            .values()
            .all(|r| r.lost.is_none() && r.horizon <= r.next.saturating_add(slack))
    }

    /// Rings on which decisions were lost to trimming: the learner stops
    /// delivering them (its state must be rebuilt from a replica checkpoint).
    pub fn lost(&self) -> impl Iterator<Item = Lost> + '_ {
        self.rings.values().filter_map(|r| r.lost)
    }

    /// Handles one encoded frame body (after the length prefix).
    pub fn handle_frame(&mut self, now: Instant, from: NodeId, body: &[u8]) {
        match codec::decode_body(body) {
            Ok(message) => self.handle_message(now, from, message),
            Err(_) => self.metrics.bad_frames += 1,
        }
    }

    /// Handles one message from an acceptor.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, message: Message) {
        let Some(ring_id) = message.ring() else {
            return;
        };
        let Some(ring) = self.rings.get_mut(&ring_id) else {
            self.metrics.unknown_ring += 1;
            return;
        };
        if !ring.acceptors.contains(&from) {
            self.metrics.unknown_peer += 1;
            return;
        }
        let mut out = Out {
            metrics: &mut self.metrics,
            deliveries: &mut self.deliveries,
            ring: ring_id,
        };
        match message {
            Message::Decide(d) => {
                let before = ring.next;
                ring.on_decide(d, self.params.learner_buffer, &mut out);
                // A pipeline asks again as soon as its answers move the frontier.
                if ring.next != before && ring.catchup.asking() {
                    ring.ask(now, ring_id, &self.params, &mut self.out, &mut self.metrics);
                }
            }
            Message::Trimmed(t) => ring.on_trimmed(t),
            _ => {}
        }
    }

    /// Asks acceptors for missing decisions.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + self.params.recovery_timeout / 4;
        for (&id, ring) in &mut self.rings {
            ring.ask(now, id, &self.params, &mut self.out, &mut self.metrics);
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// When [`Learner::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_tick)
    }

    /// The next delivered instance, in order per ring.
    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.pop_front()
    }
}

/// Whether `value` is a batch whose bytes are not commands: the decision is
/// refused like a malformed frame (and fetched again from another acceptor).
/// Decoding here, once, leaves the commands ready for the merge.
fn undecodable(value: &Value) -> bool {
    matches!(value, Value::Batch(batch) if batch.decode().is_err())
}

/// Removes commands already delivered on this ring. Allocates only when
/// something is removed.
fn filter(
    dedupe: &mut Dedupe,
    instance: Instance,
    value: Value,
    metrics: &mut LearnerMetrics,
) -> Value {
    let Value::Batch(batch) = value else {
        return value;
    };
    let commands = batch.commands();
    let mut kept: Option<Vec<Command>> = None;
    for (i, command) in commands.iter().enumerate() {
        let admitted = dedupe.admit(instance, command);
        match (&mut kept, admitted) {
            (None, true) => {}
            (None, false) => kept = Some(commands[..i].to_vec()),
            (Some(kept), true) => kept.push(command.clone()),
            (Some(_), false) => {}
        }
        if !admitted {
            metrics.duplicate_commands += 1;
        }
    }
    match kept {
        None => Value::Batch(batch),
        Some(kept) => Value::Batch(Batch::new(&kept).spanning(batch.span())),
    }
}
