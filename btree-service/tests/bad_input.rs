//! Bad input to a replica engine running the B+-tree (issue: "Bad input"):
//! a command that does not decode, an operation the service cannot decode, a
//! request for another service, a scan of zero entries and one of a billion:
//! each gets a clear reply, and the engine keeps serving. A group mapping
//! that breaks the tree's concurrency contract is reported, naming the leaf
//! and the threads.

use std::sync::Arc;

use bytes::Bytes;
use psmr_btree::{BTreeService, Invalid, KvStore, MAX_SCAN, MAX_VALUE, Op, Response, value_of};
use psmr_core::proto::{Command, CommandId, ProposerId, RingId, Value};
use psmr_core::{
    Answerers, ClientId, EngineKind, Mode, Outcome, Refusal, Reply, Request, RequestId, ServiceId,
};
use psmr_replica::workload::CollectSink;
use psmr_replica::{Engine, EngineConfig, EngineError};

const CLIENT: u64 = 9;

fn command(seq: u64, payload: Bytes) -> Command {
    Command {
        id: CommandId {
            proposer: ProposerId(CLIENT),
            seq,
        },
        low_water: 0,
        payload,
    }
}

fn request(id: u64, mode: Mode, service: ServiceId, op: Bytes) -> Bytes {
    Request {
        id: RequestId(id),
        low_water: RequestId(0),
        mode,
        service,
        op,
        answerers: Answerers::All,
    }
    .encode()
}

/// Runs a two-thread psmr engine on `ring_commands` (ring, commands) and
/// returns the replies by request id.
fn run(
    tree: KvStore,
    ring_commands: Vec<(RingId, Vec<Command>)>,
) -> Result<Vec<Reply>, EngineError> {
    let config = EngineConfig::new(EngineKind::Psmr, 2);
    let sink = Arc::new(CollectSink::default());
    let engine = Engine::start(
        Arc::new(BTreeService::new(1000)),
        tree,
        config,
        sink.clone(),
    )?;
    for (ring, commands) in ring_commands {
        engine.deliver(ring, 0, Value::batch(commands))?;
    }
    for ring in [RingId(0), RingId(1), RingId(2)] {
        engine.deliver(ring, 1, Value::Skip(10))?;
    }
    engine.finish()?;
    let mut replies = sink.take();
    replies.sort_by_key(|r| r.request);
    Ok(replies)
}

fn tree() -> KvStore {
    KvStore::bulk_load(8, 0.7, (0..1000).map(|k| (k, value_of(k * 10, 8))))
}

#[test]
fn malformed_and_foreign_requests_get_clear_refusals_and_the_engine_keeps_serving() {
    let id = BTreeService::ID;
    let commands = vec![
        command(0, Bytes::from_static(&[0xff, 0xfe, 0xfd])),
        command(
            1,
            request(1, Mode::Conservative, id, Bytes::from_static(&[0xff; 4])),
        ),
        command(
            2,
            request(2, Mode::Conservative, ServiceId(77), Op::Read(1).encode()),
        ),
        command(
            3,
            request(3, Mode::Conservative, id, Op::Scan(5, 0).encode()),
        ),
        command(
            4,
            request(
                4,
                Mode::Conservative,
                id,
                Op::Scan(5, 1_000_000_000).encode(),
            ),
        ),
        command(5, request(5, Mode::Conservative, id, Op::Read(7).encode())),
        command(
            6,
            request(
                6,
                Mode::Conservative,
                id,
                Op::Update(7, value_of(1, MAX_VALUE + 1)).encode(),
            ),
        ),
        command(7, request(7, Mode::Conservative, id, Op::Read(7).encode())),
    ];
    let replies = run(tree(), vec![(RingId(0), commands)]).expect("the engine survives");
    assert_eq!(replies.len(), 8);
    let outcome = |i: usize| &replies[i].outcome;
    assert_eq!(
        (replies[0].request, outcome(0)),
        (None, &Outcome::Refused(Refusal::MalformedRequest))
    );
    assert_eq!(
        replies[0].client,
        ClientId(CLIENT),
        "even an undecodable request is answered to its client"
    );
    assert_eq!(outcome(1), &Outcome::Refused(Refusal::MalformedOperation));
    let wrong = Refusal::WrongService {
        requested: 77,
        served: 1,
    };
    assert_eq!(outcome(2), &Outcome::Refused(wrong));
    assert_eq!(
        wrong.to_string(),
        "request for service 77, but this replica runs service 1"
    );
    let response = |i: usize| match outcome(i) {
        Outcome::Done(bytes) => Response::decode(bytes).expect("a B+-tree response"),
        other => panic!("request {i}: {other:?}"),
    };
    assert_eq!(response(3), Response::Invalid(Invalid::EmptyScan));
    match response(4) {
        Response::Entries { entries, capped } => {
            assert!(capped, "the response says the scan was capped");
            assert_eq!(entries.len(), 995.min(MAX_SCAN as usize));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        response(5),
        Response::Value(Some(value_of(70, 8))),
        "the engine kept serving"
    );
    let too_large = Invalid::ValueTooLarge { len: MAX_VALUE + 1 };
    assert_eq!(response(6), Response::Invalid(too_large));
    assert_eq!(
        response(7),
        Response::Value(Some(value_of(70, 8))),
        "a refused update changed nothing"
    );
}

/// A mapping bug: an insert delivered to a thread's group without a safety
/// check, into a full leaf. Debug builds stop the engine with a message that
/// names the leaf and the threads; release builds refuse the command.
#[test]
fn a_broken_group_mapping_is_reported_not_a_silent_race() {
    let full = KvStore::bulk_load(
        8,
        1.0,
        (0..1000)
            .filter(|k| k % 2 == 0)
            .map(|k| (k, value_of(k, 8))),
    );
    let bad = command(
        0,
        request(
            0,
            Mode::Conservative,
            BTreeService::ID,
            Op::Insert(11, value_of(1, 8)).encode(),
        ),
    );
    let result = run(full, vec![(RingId(1), vec![bad])]);
    if cfg!(debug_assertions) {
        let Err(EngineError::WorkerPanicked { thread, message }) = result else {
            panic!("expected the worker to stop, got {result:?}");
        };
        assert_eq!(thread, 0);
        assert!(
            message.contains("ShapeChange")
                && message.contains("leaf")
                && message.contains("threads 0..=0"),
            "{message}"
        );
    } else {
        let replies = result.expect("release builds keep serving");
        assert_eq!(
            replies[0].outcome,
            Outcome::Refused(Refusal::ContractViolation)
        );
    }
}
