//! Checkpoints at a consistent cut (docs/ARCHITECTURE.md, "Checkpoints"):
//! what an engine captures when a checkpoint [`Marker`] is delivered on
//! `g_all`, and what it resumes from.
//!
//! ```text
//!  g_all instance k carries marker n > last:
//!    every merge of g_all (each worker's, or the single front's) records its cut after k
//!    the markers of k move to its end; the one that runs, alone, last:
//!      copies the service state (Service::capture) and the tables of executed requests
//!    ──> Captured { engine image, service image } ──> the checkpoint sink
//! ```
//!
//! The cut is the end of instance `k` of `g_all` in every merge: psmr
//! workers all synchronize there (the marker is a `g_all` command), smr's
//! one worker passes it in order, and `cbase` and `classes` run the marker
//! alone after everything delivered before it. Since markers change no
//! state, moving them to the end of their instance changes nothing else.
//! A resumed engine is fed every ring from its cut's next instance on.
//! Engine state that would be awkward to carry is reset at the cut instead,
//! on every replica alike: the `classes` policy starts a new window there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use psmr_core::proto::{Command, MergeCut, RingId};
use psmr_core::wire::{ClientId, Marker, RequestId};
use serde::{Deserialize, Serialize};

use crate::table::ExecutedTable;

/// What an engine keeps of itself in a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineImage {
    /// The checkpoint's number (its marker's).
    pub number: u64,
    /// Every merge's cut: one per worker (smr, psmr, opt-psmr), or the
    /// single merge of `g_all` (cbase, classes).
    pub merges: Vec<MergeCut>,
    /// The tables of executed requests: the synchronous-mode table, then
    /// one per worker.
    pub tables: Vec<ExecutedTable>,
    /// cbase, classes: each client's low-water mark as the intake saw it.
    pub intake: Vec<(ClientId, RequestId)>,
    /// classes: the active threads.
    pub active: Option<usize>,
}

impl EngineImage {
    /// Per ring, the first instance after the cut (the same in every merge
    /// that has the ring).
    pub fn next_instances(&self) -> Vec<(RingId, u64)> {
        let mut next: Vec<(RingId, u64)> = self
            .merges
            .iter()
            .flat_map(|m| m.rings.iter().copied().zip(m.next.iter().copied()))
            .collect();
        next.sort_unstable();
        next.dedup();
        next
    }
}

/// A checkpoint as the engine hands it over.
pub struct Captured<I> {
    /// The engine's part.
    pub engine: EngineImage,
    /// The service's state, as [`psmr_core::Service::capture`] copied it.
    pub image: I,
    /// How long the workers were held for the copy.
    pub pause: std::time::Duration,
}

/// What an engine resumes from: a checkpoint's engine image and the
/// service state read from it.
pub struct Resume<T> {
    /// The engine's part.
    pub engine: EngineImage,
    /// The service state.
    pub state: T,
}

/// The checkpoint being assembled: opened by the merges that reach the
/// cut, completed by the marker's execution.
struct Open {
    merges: Vec<Option<MergeCut>>,
    intake: Vec<(ClientId, RequestId)>,
    active: Option<usize>,
}

/// Where an engine's merges and its marker execution meet. Several
/// checkpoints may be open at once: a merge may pass the next cut before
/// the marker of the last one has run.
pub(crate) struct Assembly<I> {
    open: BTreeMap<u64, Open>,
    merges: usize,
    sink: Option<Sender<Captured<I>>>,
}

/// What a single front (cbase, classes) records at a cut besides its merge.
pub(crate) struct FrontCut {
    pub(crate) intake: Vec<(ClientId, RequestId)>,
    pub(crate) active: Option<usize>,
}

impl<I> Assembly<I> {
    pub(crate) fn new(merges: usize, sink: Option<Sender<Captured<I>>>) -> Assembly<I> {
        Assembly {
            open: BTreeMap::new(),
            merges,
            sink,
        }
    }

    /// Merge `merge` reached the cut of checkpoint `number`.
    pub(crate) fn cut(
        &mut self,
        number: u64,
        merge: usize,
        cut: MergeCut,
        front: Option<FrontCut>,
    ) {
        if self.sink.is_none() {
            return;
        }
        let merges = self.merges;
        let open = self.open.entry(number).or_insert_with(|| Open {
            merges: vec![None; merges],
            intake: Vec::new(),
            active: None,
        });
        open.merges[merge] = Some(cut);
        if let Some(front) = front {
            open.intake = front.intake;
            open.active = front.active;
        }
    }

    /// The marker of checkpoint `number` runs with the whole state: if
    /// every merge has reached its cut, the checkpoint is complete.
    /// `capture` copies the service state and the tables.
    pub(crate) fn complete(
        &mut self,
        number: u64,
        capture: impl FnOnce() -> (I, Vec<ExecutedTable>),
    ) {
        let Some(open) = self.open.remove(&number) else {
            return;
        };
        let Some(merges) = open.merges.into_iter().collect::<Option<Vec<_>>>() else {
            // Every merge of g_all passes the cut before the marker runs.
            debug_assert!(false, "checkpoint {number}: a merge did not record its cut");
            tracing::error!(
                number,
                "checkpoint abandoned: a merge did not record its cut"
            );
            return;
        };
        let started = std::time::Instant::now();
        let (image, tables) = capture();
        let pause = started.elapsed();
        let captured = Captured {
            engine: EngineImage {
                number,
                merges,
                tables,
                intake: open.intake,
                active: open.active,
            },
            image,
            pause,
        };
        if let Some(sink) = &self.sink {
            // The receiver gone: the replica is stopping.
            let _ = sink.send(captured);
        }
    }
}

/// The highest marker number in `commands` above `last`.
pub(crate) fn new_marker(commands: &[Command], last: u64) -> Option<u64> {
    commands
        .iter()
        .filter_map(|c| Marker::decode(&c.payload))
        .map(|m| m.number)
        .filter(|&n| n > last)
        .max()
}

/// `commands` with the markers moved to the end, the rest in order.
pub(crate) fn markers_last(commands: &[Command]) -> Arc<[Command]> {
    let (markers, rest): (Vec<&Command>, Vec<&Command>) = commands
        .iter()
        .partition(|c| Marker::decode(&c.payload).is_some());
    rest.into_iter().chain(markers).cloned().collect()
}
