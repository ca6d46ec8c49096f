//! The node hands its driver what must be durable together with the
//! messages that may leave once it is (docs/ARCHITECTURE.md, "The atomic
//! multicast", storage): exact `Ready`s of a real `AcceptorNode`, and the
//! `Persister` that every driver uses, over storages that record or fail.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{N1, N2, N3, R, acceptor, ballot, next_ready as ready, out, ring};
use psmr_core::persist::Persister;
use psmr_core::proto::{
    Accept, AcceptorNode, Message, MulticastConfig, Params, Prepare, Value, VoteSet,
};
use psmr_core::storage::{Record, Recovered, Storage, StorageError};

mod common;

fn config() -> MulticastConfig {
    ring(Params {
        delta: Duration::from_secs(3600),
        ..Params::default()
    })
}

/// Node n2 (not the first coordinator), past its start-up heartbeats.
fn n2(now: Instant) -> AcceptorNode {
    let mut n2 = acceptor(&config(), N2, now);
    out(&mut n2);
    n2
}

fn accept(instance: u64) -> Accept {
    Accept {
        ring: R,
        instance,
        ballot: ballot(1, N1),
        value: Value::Skip(1),
        votes: VoteSet(0b001),
        coordinator_pending: false,
        decided_below: 0,
    }
}

// Contract: a promise leaves in the same Ready as the record of the promised ballot.
#[test]
fn a_promise_leaves_with_the_record_of_its_ballot() {
    let now = Instant::now();
    let mut n2 = n2(now);
    let prepare = Prepare {
        ring: R,
        ballot: ballot(2, N3),
        from: 0,
    };
    n2.handle_message(now, N3, Message::Prepare(prepare));
    let (records, messages) = ready(&mut n2).expect("a promise to send");
    assert_eq!(
        records,
        vec![Record::Promise {
            ring: R,
            ballot: ballot(2, N3)
        }]
    );
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].to, N3);
    assert!(matches!(messages[0].message, Message::Promise(_)));
    assert!(ready(&mut n2).is_none(), "nothing left once taken");
}

// Contract: a vote leaves in the same Ready as the record of the value voted for.
#[test]
fn a_vote_leaves_with_the_record_of_its_value() {
    let now = Instant::now();
    let mut n2 = n2(now);
    n2.handle_message(now, N1, Message::Accept(accept(4)));
    let (records, messages) = ready(&mut n2).expect("a vote to send");
    assert!(
        records.contains(&Record::Accept {
            ring: R,
            instance: 4,
            ballot: ballot(1, N1),
            value: Value::Skip(1),
        }),
        "{records:?}"
    );
    assert!(!messages.is_empty());
}

// Contract: records wait for the next messages; a Ready without new
// records carries none (no sync is asked for nothing).
#[test]
fn records_wait_for_messages_and_a_ready_without_them_carries_none() {
    let now = Instant::now();
    let mut n2 = n2(now);
    assert!(n2.poll_ready().is_none(), "no message, no Ready");
    n2.handle_message(now, N1, Message::Accept(accept(0)));
    let (first, _) = ready(&mut n2).unwrap();
    assert!(!first.is_empty());
    // A refused Accept (below the promise) leaves a Nack and no record.
    let prepare = Prepare {
        ring: R,
        ballot: ballot(5, N3),
        from: 0,
    };
    n2.handle_message(now, N3, Message::Prepare(prepare));
    ready(&mut n2).unwrap();
    n2.handle_message(now, N1, Message::Accept(accept(1)));
    let (records, messages) = ready(&mut n2).unwrap();
    assert_eq!(records, vec![], "a refusal records nothing");
    assert!(
        matches!(messages[0].message, Message::Nack(_)),
        "{messages:?}"
    );
}

/// A storage that logs what it was asked, in order, and can be set to fail.
#[derive(Clone, Default)]
struct Logged {
    log: Arc<Mutex<Vec<String>>>,
    fail_sync: bool,
}

impl Storage for Logged {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        Ok(Recovered::default())
    }
    fn append(&mut self, record: &Record) -> Result<(), StorageError> {
        let kind = match record {
            Record::Promise { .. } => "append promise",
            Record::Accept { .. } => "append accept",
            _ => "append other",
        };
        self.log.lock().unwrap().push(kind.into());
        Ok(())
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        if self.fail_sync {
            return Err(StorageError::Io {
                op: "fsync",
                path: "log".into(),
                source: std::io::Error::other("disk gone"),
            });
        }
        self.log.lock().unwrap().push("sync".into());
        Ok(())
    }
}

fn persister(storage: Logged, now: Instant) -> Persister {
    let mut p = Persister::open(N2, &config(), Box::new(storage.clone()), now).unwrap();
    while p.poll_transmit().is_some() {}
    storage.log.lock().unwrap().clear();
    p
}

// Contract: the Persister releases a message only after its records were
// appended and synced, one sync for all of them.
#[test]
fn the_persister_syncs_before_the_first_message_of_a_ready() {
    let now = Instant::now();
    let storage = Logged::default();
    let mut p = persister(storage.clone(), now);
    p.handle_message(now, N1, Message::Accept(accept(0)));
    p.handle_message(now, N1, Message::Accept(accept(1)));
    p.poll_transmit().expect("a vote");
    let log = storage.log.lock().unwrap().clone();
    assert_eq!(log.last().map(String::as_str), Some("sync"), "{log:?}");
    assert_eq!(log.iter().filter(|e| *e == "sync").count(), 1, "{log:?}");
    assert_eq!(
        log.iter().filter(|e| *e == "append accept").count(),
        2,
        "{log:?}"
    );
}

// Contract: a failed sync halts the node and nothing of that Ready leaves.
#[test]
fn a_failed_sync_halts_the_node_and_nothing_leaves() {
    let now = Instant::now();
    let storage = Logged {
        fail_sync: true,
        ..Logged::default()
    };
    let mut p = Persister::open(N2, &config(), Box::new(storage), now).unwrap();
    p.handle_message(now, N1, Message::Accept(accept(0)));
    assert!(p.poll_transmit().is_none());
    assert!(matches!(
        p.halted(),
        Some(StorageError::Io { op: "fsync", .. })
    ));
    p.handle_message(now, N1, Message::Accept(accept(1)));
    assert!(p.poll_transmit().is_none(), "a halted node sends nothing");
}
