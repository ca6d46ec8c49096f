//! A replica process's checkpoints (docs/ARCHITECTURE.md, "Checkpoints"):
//! when to propose the next marker, and writing what the engine captured.
//!
//! ```text
//!  network task, after each round:
//!    engine ──Captured──> + the learner's filters at the cut ──Job──> writer thread ──> Store
//!    trigger due (time or commands since the last checkpoint) ──> Propose(marker n+1) on g_all
//!    checkpoint durable ──> Checkpointed(ring, next instance) to every ring's acceptors (trimming)
//! ```
//!
//! Every replica proposes the next marker when its own trigger fires; the
//! first one ordered is the checkpoint of every replica, the others change
//! nothing. A lost proposal is proposed again after [`RETRY`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use psmr_core::cluster::CheckpointSection;
use psmr_core::proto::codec::{self, DEFAULT_MAX_FRAME};
use psmr_core::proto::{
    Checkpointed, Command, CommandId, Learner, Message, NodeId, Propose, ProposerId, RingId,
};
use psmr_core::{EngineKind, Layout, Marker, Service};
use psmr_multicast::net::{Network, Purpose};
use tracing::{error, info, warn};

use crate::engine::Captured;
use crate::store::{FileMeta, Store};

/// How long a marker proposal may take to come back before it is sent again.
const RETRY: Duration = Duration::from_secs(1);

/// How often the positions of the newest durable checkpoint are sent to
/// the acceptors again (a restarted acceptor learns them so).
const REPORT_AGAIN: Duration = Duration::from_secs(5);

/// Where a checkpoint cut each ring: the next instance after it.
type Positions = Vec<(RingId, u64)>;

struct Job<I> {
    meta: FileMeta,
    captured: Captured<I>,
}

/// The checkpoint side of a replica's network task.
pub(crate) struct Checkpointing<S: Service> {
    captured: Receiver<Captured<S::Image>>,
    jobs: Option<Sender<Job<S::Image>>>,
    writer: Option<JoinHandle<()>>,
    section: CheckpointSection,
    kind: EngineKind,
    threads: usize,
    service: u16,
    last_number: u64,
    last_commands: u64,
    last_at: Instant,
    proposed_at: Option<Instant>,
    proposer: ProposerId,
    seq: u64,
    /// Every ring's acceptors; ring 0 (`g_all`) first.
    rings: Vec<(RingId, Vec<NodeId>)>,
    next_acceptor: usize,
    /// A checkpoint handed to the writer: its number and positions.
    writing: Option<(u64, Vec<(RingId, u64)>)>,
    /// The positions of the durable checkpoints kept (`keep`, newest last),
    /// and when the oldest one's were last sent to the acceptors.
    durable_at: Option<(VecDeque<Positions>, Instant)>,
    /// The number of the newest checkpoint on disk.
    pub(crate) durable: Arc<AtomicU64>,
}

impl<S: Service> Checkpointing<S> {
    /// Starts the writer thread; `captured` is the engine's checkpoint
    /// channel, `last` the checkpoint the replica resumed from (0: none).
    pub(crate) fn start(
        service: Arc<S>,
        store: Store,
        section: CheckpointSection,
        (kind, threads): (EngineKind, usize),
        rings: Vec<(RingId, Vec<NodeId>)>,
        captured: Receiver<Captured<S::Image>>,
        last: u64,
    ) -> std::io::Result<Checkpointing<S>> {
        let durable = Arc::new(AtomicU64::new(last));
        let (jobs, rx) = channel::<Job<S::Image>>();
        let id = service.id().0;
        let written = durable.clone();
        let writer = std::thread::Builder::new()
            .name("psmr-checkpoints".into())
            .spawn(move || write_all(&*service, &store, &rx, &written))?;
        Ok(Checkpointing {
            captured,
            jobs: Some(jobs),
            writer: Some(writer),
            section,
            kind,
            threads,
            service: id,
            last_number: last,
            last_commands: 0,
            last_at: Instant::now(),
            proposed_at: None,
            // A new id per start: learners would drop a restarted
            // replica's proposals as repeats of its earlier ones.
            proposer: ProposerId(rand::random::<u64>() | 1 << 63),
            seq: 0,
            rings,
            next_acceptor: 0,
            writing: None,
            durable_at: None,
            durable,
        })
    }

    /// Hands completed checkpoints to the writer; proposes the next marker
    /// when it is due.
    pub(crate) fn after(&mut self, learner: &mut Learner, net: &Network) {
        let now = Instant::now();
        let delivered = learner.metrics().delivered_commands;
        while let Ok(captured) = self.captured.try_recv() {
            self.last_number = captured.engine.number;
            self.last_commands = delivered;
            self.last_at = now;
            self.proposed_at = None;
            self.hand_over(learner, captured);
        }
        if self.due(now, delivered) {
            self.propose(net, now);
        }
        self.report(net, now);
    }

    /// Tells every ring's acceptors how far the oldest checkpoint this
    /// replica keeps reaches, whenever a new one is durable and again every
    /// [`REPORT_AGAIN`]. Not the newest: a replica that fetches the newest
    /// checkpoint of another must find the decisions after it still there,
    /// though the other may take the next one meanwhile (with `keep` 2, the
    /// acceptors hold one checkpoint interval more).
    fn report(&mut self, net: &Network, now: Instant) {
        let written = self.durable.load(Ordering::Acquire);
        if let Some((_, positions)) = self.writing.take_if(|(n, _)| *n <= written) {
            let (kept, at) = self
                .durable_at
                .get_or_insert_with(|| (VecDeque::new(), now));
            kept.push_back(positions);
            while kept.len() > self.section.keep.max(1) {
                kept.pop_front();
            }
            *at = now - REPORT_AGAIN;
        }
        let Some((kept, at)) = &mut self.durable_at else {
            return;
        };
        if now < *at + REPORT_AGAIN {
            return;
        }
        *at = now;
        let Some(positions) = kept.front() else {
            return;
        };
        for &(ring, below) in positions.iter() {
            let message = Message::Checkpointed(Checkpointed { ring, below });
            let Ok(frame) = codec::frame(&message, DEFAULT_MAX_FRAME) else {
                continue;
            };
            let acceptors = self.rings.iter().filter(|(r, _)| *r == ring);
            for &to in acceptors.flat_map(|(_, a)| a) {
                net.send(to, Purpose::Protocol, frame.clone());
            }
        }
    }

    fn hand_over(&mut self, learner: &mut Learner, captured: Captured<S::Image>) {
        let number = captured.engine.number;
        let mut dedupe = Vec::new();
        for (ring, next) in captured.engine.next_instances() {
            match learner.dedupe_image(ring, next) {
                Ok(image) => dedupe.push((ring, image)),
                Err(e) => {
                    error!(number, error = %e, "checkpoint abandoned: no learner filter at its cut");
                    return;
                }
            }
        }
        let meta = FileMeta {
            engine_kind: self.kind,
            threads: self.threads,
            service: self.service,
            engine: captured.engine.clone(),
            dedupe,
        };
        self.writing = Some((number, captured.engine.next_instances()));
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job { meta, captured });
        }
    }

    fn due(&self, now: Instant, delivered: u64) -> bool {
        let s = &self.section;
        let since = delivered.saturating_sub(self.last_commands);
        let waiting = self.proposed_at.is_some_and(|at| now < at + RETRY);
        since > 0
            && !waiting
            && ((s.every_commands > 0 && since >= s.every_commands)
                || (!s.every.is_zero() && now >= self.last_at + s.every))
    }

    fn propose(&mut self, net: &Network, now: Instant) {
        let Some((_, acceptors)) = self.rings.iter().find(|(r, _)| *r == Layout::ALL_RING) else {
            return;
        };
        let Some(&to) = acceptors.get(self.next_acceptor % acceptors.len().max(1)) else {
            return;
        };
        self.next_acceptor += 1;
        let command = Command {
            id: CommandId {
                proposer: self.proposer,
                seq: self.seq,
            },
            low_water: self.seq,
            payload: Marker {
                number: self.last_number + 1,
            }
            .encode(),
        };
        self.seq += 1;
        let message = Message::Propose(Propose {
            ring: Layout::ALL_RING,
            commands: vec![command],
            forwarded: false,
        });
        match codec::frame(&message, DEFAULT_MAX_FRAME) {
            Ok(frame) => net.send(to, Purpose::Propose, frame),
            Err(e) => warn!(error = %e, "cannot encode a checkpoint marker"),
        }
        self.proposed_at = Some(now);
    }

    /// Waits for the checkpoints handed over to be written.
    pub(crate) fn finish(&mut self) {
        self.jobs = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl<S: Service> Drop for Checkpointing<S> {
    fn drop(&mut self) {
        self.finish();
    }
}

fn write_all<S: Service>(
    service: &S,
    store: &Store,
    jobs: &Receiver<Job<S::Image>>,
    durable: &AtomicU64,
) {
    for job in jobs {
        let number = job.meta.engine.number;
        match store.write(service, &job.meta, &job.captured) {
            Ok(written) => {
                durable.store(number, Ordering::Release);
                metrics::histogram!("psmr_checkpoint_pause_seconds")
                    .record(job.captured.pause.as_secs_f64());
                metrics::histogram!("psmr_checkpoint_write_seconds")
                    .record(written.write.as_secs_f64());
                metrics::gauge!("psmr_checkpoint_bytes").set(written.bytes as f64);
                info!(
                    number,
                    bytes = written.bytes,
                    pause_us = job.captured.pause.as_micros() as u64,
                    write_ms = written.write.as_millis() as u64,
                    "checkpoint written"
                );
            }
            Err(e) => error!(number, error = %e, "checkpoint not written"),
        }
    }
}
