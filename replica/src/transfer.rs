//! State transfer: a replica without a usable checkpoint fetches the newest
//! one of another replica (docs/ARCHITECTURE.md, "Checkpoints").
//!
//! ```text
//!  fetcher ──Newest{id, newer_than}──> every other replica ──Have{id, number?}──> fetcher
//!  fetcher ──Fetch{id, number}──> the replica with the newest
//!          <──Start{id, number, bytes}, Chunk{id, data}...── (one stream, flow-controlled)
//!          chunks ──> Store::receive (temporary file, CRC on the way) ──> rename
//! ```
//!
//! Both directions run over the cluster's QUIC connections with mutual TLS:
//! a stream of these purposes is accepted only from a node whose certificate
//! names it, and a replica answers only the other replicas of its cluster.
//! The file travels in chunks of [`CHUNK`] bytes through a bounded queue,
//! so neither side holds it whole in memory; the receiver checks the
//! checksum before the file gets its name, and the engine reads it back
//! through [`Store::load`] like its own. A checkpoint number means the same
//! cut on every replica, so any replica's file serves.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use psmr_core::proto::NodeId;
use psmr_multicast::net::{Inbound, NetError, Network, Purpose, SendStream, frame_of};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{info, warn};

use crate::store::{Store, StoreError};

/// Bytes of a checkpoint per frame.
pub const CHUNK: usize = 256 * 1024;

/// Frames of a transfer queued at the receiver before its stream waits.
pub const QUEUED: usize = 64;

/// How long a fetcher waits for the next frame of a transfer before it
/// gives that replica up and tries another.
const SILENCE: Duration = Duration::from_secs(5);

/// How long a fetcher waits for every replica to say what it has.
const ASK_WAIT: Duration = Duration::from_secs(1);

/// Bytes between two progress lines in the log.
const PROGRESS_EVERY: u64 = 64 << 20;

/// What a fetcher asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Ask {
    /// Which is your newest checkpoint, if newer than `newer_than`?
    Newest { id: u64, newer_than: u64 },
    /// Send checkpoint `number`.
    Fetch { id: u64, number: u64 },
}

/// What a replica answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Answer {
    /// Its newest checkpoint, if newer than asked.
    Have { id: u64, number: Option<u64> },
    /// The file follows: `bytes` bytes in chunks.
    Start { id: u64, number: u64, bytes: u64 },
    /// The next bytes of the file.
    Chunk { id: u64, data: Bytes },
    /// It no longer has that checkpoint (a newer one replaced it).
    Gone { id: u64 },
}

impl Answer {
    fn id(&self) -> u64 {
        match self {
            Answer::Have { id, .. }
            | Answer::Start { id, .. }
            | Answer::Chunk { id, .. }
            | Answer::Gone { id } => *id,
        }
    }
}

/// Why a transfer from one replica failed.
#[derive(Debug, Error)]
pub enum TransferError {
    /// The received file could not be written, or does not check out.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The replica could not be reached.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The replica stopped sending.
    #[error("{peer} sent nothing for {SILENCE:?}")]
    Silent {
        /// The replica.
        peer: NodeId,
    },
    /// The replica no longer has the checkpoint.
    #[error("{peer} no longer has checkpoint {number}")]
    Gone {
        /// The replica.
        peer: NodeId,
        /// The checkpoint.
        number: u64,
    },
    /// The replica sent something out of order.
    #[error("{peer} broke the transfer protocol: {problem}")]
    Protocol {
        /// The replica.
        peer: NodeId,
        /// What it did.
        problem: String,
    },
}

/// Serves this replica's checkpoints to the other replicas of `replicas`,
/// answering each ask on its own task, until `asks` closes.
pub async fn serve(
    net: Network,
    store: Store,
    replicas: Vec<NodeId>,
    mut asks: mpsc::Receiver<Inbound>,
) {
    while let Some(inbound) = asks.recv().await {
        let from = inbound.from;
        if !replicas.contains(&from) {
            warn!(%from, "refusing a checkpoint request from a node that is not a replica");
            continue;
        }
        let Ok(ask) = postcard::from_bytes::<Ask>(&inbound.body) else {
            warn!(%from, "malformed checkpoint request");
            continue;
        };
        let (net, store) = (net.clone(), store.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(&net, &store, from, ask).await {
                warn!(to = %from, error = %e, "sending a checkpoint failed");
            }
        });
    }
}

async fn answer(net: &Network, store: &Store, to: NodeId, ask: Ask) -> Result<(), TransferError> {
    let mut stream = net.stream(to, Purpose::Transfer).await?;
    match ask {
        Ask::Newest { id, newer_than } => {
            let number = store.newest()?.map(|(n, _)| n).filter(|&n| n > newer_than);
            write(&mut stream, &Answer::Have { id, number }).await?;
        }
        Ask::Fetch { id, number } => {
            let Some(mut file) = store.open_file(number).await? else {
                write(&mut stream, &Answer::Gone { id }).await?;
                return Ok(());
            };
            let bytes = file
                .metadata()
                .await
                .map_err(|e| store.io(number, e))?
                .len();
            info!(%to, number, bytes, "sending a checkpoint");
            write(&mut stream, &Answer::Start { id, number, bytes }).await?;
            let mut sent = 0;
            while sent < bytes {
                let mut data = vec![0u8; CHUNK.min((bytes - sent) as usize)];
                file.read_exact(&mut data)
                    .await
                    .map_err(|e| store.io(number, e))?;
                sent += data.len() as u64;
                let data = Bytes::from(data);
                write(&mut stream, &Answer::Chunk { id, data }).await?;
            }
            info!(%to, number, bytes, "checkpoint sent");
        }
    }
    let _ = stream.finish();
    Ok(())
}

/// Writes `answer` as a frame: its length, then its body (two writes, so
/// that a chunk is not copied once more into a frame).
async fn write(stream: &mut SendStream, answer: &Answer) -> Result<(), TransferError> {
    let body = postcard::to_allocvec(answer).expect("an answer serializes");
    let len = u32::try_from(body.len()).expect("a chunk frame is small");
    let written = async {
        stream.write_all(&len.to_le_bytes()).await?;
        stream.write_all(&body).await
    };
    written.await.map_err(|e| TransferError::Net(e.into()))
}

/// Fetches checkpoints from the other replicas.
pub struct Fetcher {
    net: Network,
    answers: mpsc::Receiver<Inbound>,
    peers: Vec<NodeId>,
    next_id: u64,
}

impl Fetcher {
    /// A fetcher that asks `peers` (the other replicas) over `net` and
    /// reads their answers from `answers` (the [`Purpose::Transfer`] route).
    pub fn new(net: Network, answers: mpsc::Receiver<Inbound>, peers: Vec<NodeId>) -> Fetcher {
        Fetcher {
            net,
            answers,
            peers,
            next_id: 0,
        }
    }

    /// Whether there is any replica to fetch from.
    pub fn has_peers(&self) -> bool {
        !self.peers.is_empty()
    }

    /// Fetches the newest checkpoint any other replica has above
    /// `newer_than` into `store`, asking again every second until
    /// `patience` has passed (zero: one round). Returns its number, or
    /// `None` if no replica had one.
    pub async fn newest(
        &mut self,
        store: &Store,
        newer_than: u64,
        patience: Duration,
    ) -> Option<u64> {
        let deadline = Instant::now() + patience;
        loop {
            let mut offers = self.offers(newer_than).await;
            offers.sort_unstable_by_key(|&(peer, number)| (std::cmp::Reverse(number), peer));
            for (peer, number) in offers {
                match self.fetch(store, peer, number).await {
                    Ok(path) => {
                        info!(%peer, number, file = %path.display(), "checkpoint received");
                        return Some(number);
                    }
                    Err(e) => {
                        warn!(%peer, number, error = %e, "fetching a checkpoint failed; trying another replica")
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            info!(
                newer_than,
                "no replica has a newer checkpoint yet; asking again"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// What every replica has above `newer_than`, as far as they answered
    /// within [`ASK_WAIT`].
    async fn offers(&mut self, newer_than: u64) -> Vec<(NodeId, u64)> {
        let id = self.id();
        for &peer in &self.peers {
            let ask = postcard::to_allocvec(&Ask::Newest { id, newer_than }).expect("serializes");
            self.net
                .send(peer, Purpose::TransferRequest, frame_of(&ask));
        }
        let deadline = Instant::now() + ASK_WAIT;
        let (mut offers, mut answered) = (Vec::new(), Vec::new());
        while answered.len() < self.peers.len() {
            let Ok(Some((peer, answer))) = timeout_at(deadline, self.next(id)).await else {
                break;
            };
            if let Answer::Have { number, .. } = answer {
                answered.push(peer);
                offers.extend(number.map(|n| (peer, n)));
            }
        }
        offers
    }

    /// Fetches checkpoint `number` from `peer` into `store`.
    async fn fetch(
        &mut self,
        store: &Store,
        peer: NodeId,
        number: u64,
    ) -> Result<PathBuf, TransferError> {
        let id = self.id();
        let ask = postcard::to_allocvec(&Ask::Fetch { id, number }).expect("serializes");
        self.net
            .send(peer, Purpose::TransferRequest, frame_of(&ask));
        let protocol = |problem: &str| TransferError::Protocol {
            peer,
            problem: problem.to_string(),
        };
        let bytes = match self.from(peer, id).await? {
            Answer::Start {
                number: n, bytes, ..
            } if n == number => bytes,
            Answer::Gone { .. } => return Err(TransferError::Gone { peer, number }),
            _ => return Err(protocol("expected the start of the file")),
        };
        info!(%peer, number, bytes, "receiving a checkpoint");
        let mut file = store.receive(number, bytes)?;
        let mut reported = 0;
        while file.written() < bytes {
            let Answer::Chunk { data, .. } = self.from(peer, id).await? else {
                return Err(protocol("expected a chunk"));
            };
            file.write(&data)?;
            if file.written() - reported >= PROGRESS_EVERY {
                reported = file.written();
                info!(%peer, number, received = reported, of = bytes, "receiving a checkpoint");
            }
        }
        Ok(file.finish()?)
    }

    /// The next answer of `peer` to ask `id`, within [`SILENCE`].
    async fn from(&mut self, peer: NodeId, id: u64) -> Result<Answer, TransferError> {
        loop {
            match timeout(SILENCE, self.next(id)).await {
                Ok(Some((from, answer))) if from == peer => return Ok(answer),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Err(TransferError::Silent { peer }),
            }
        }
    }

    /// The next well-formed answer to ask `id`; others are dropped.
    async fn next(&mut self, id: u64) -> Option<(NodeId, Answer)> {
        loop {
            let inbound = self.answers.recv().await?;
            match postcard::from_bytes::<Answer>(&inbound.body) {
                Ok(answer) if answer.id() == id => return Some((inbound.from, answer)),
                Ok(_) => {}
                Err(_) => warn!(from = %inbound.from, "malformed checkpoint transfer frame"),
            }
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_name_their_ask() {
        let answers = [
            Answer::Have {
                id: 1,
                number: None,
            },
            Answer::Have {
                id: 2,
                number: Some(7),
            },
            Answer::Start {
                id: 3,
                number: 7,
                bytes: 1 << 40,
            },
            Answer::Chunk {
                id: 4,
                data: Bytes::from_static(b"abc"),
            },
            Answer::Gone { id: 5 },
        ];
        for (i, answer) in answers.iter().enumerate() {
            let bytes = postcard::to_allocvec(answer).unwrap();
            let back: Answer = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(&back, answer);
            assert_eq!(back.id(), i as u64 + 1);
        }
        assert!(postcard::from_bytes::<Answer>(b"\xff\xff").is_err());
    }
}
