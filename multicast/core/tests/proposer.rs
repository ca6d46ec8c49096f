//! Exact outputs of the proposer (a client's side of the multicast;
//! docs/ARCHITECTURE.md, "Client"): given proposals and time, the exact
//! Propose messages.

use std::time::{Duration, Instant};

use bytes::Bytes;
use psmr_core::proto::{
    Command, CommandId, Message, MulticastConfig, NodeId, Params, Propose, ProposeError, Proposer,
    ProposerId, RingConfig, RingId, Transmit,
};

const G: RingId = RingId(0);
const T: RingId = RingId(1);
const P: ProposerId = ProposerId(7);
const RETRY: Duration = Duration::from_millis(100);

fn config() -> MulticastConfig {
    let ring = |id, acceptors: &[u32]| RingConfig {
        id,
        acceptors: acceptors.iter().map(|&a| NodeId(a)).collect(),
        learners: vec![NodeId(101)],
    };
    MulticastConfig {
        rings: vec![ring(G, &[1, 2, 3]), ring(T, &[2, 3, 1])],
        merges: Vec::new(),
        params: Params::default(),
    }
}

fn command(seq: u64, low_water: u64, payload: &'static [u8]) -> Command {
    Command {
        id: CommandId { proposer: P, seq },
        low_water,
        payload: Bytes::from_static(payload),
    }
}

fn propose(to: u32, ring: RingId, commands: Vec<Command>) -> Transmit {
    Transmit {
        to: NodeId(to),
        message: Message::Propose(Propose {
            ring,
            commands,
            forwarded: false,
        }),
    }
}

fn sent(p: &mut Proposer) -> Vec<Transmit> {
    std::iter::from_fn(|| p.poll_transmit()).collect()
}

// Contract: commands proposed before the next poll go out in one Propose per
// (acceptor, ring), each ring's to its first acceptor, in proposal order.
#[test]
fn commands_to_one_ring_share_a_message_to_its_first_acceptor() {
    let now = Instant::now();
    let mut p = Proposer::new(P, &config(), RETRY);
    p.propose(now, G, Bytes::from_static(b"a")).unwrap();
    p.propose(now, T, Bytes::from_static(b"b")).unwrap();
    p.propose(now, G, Bytes::from_static(b"c")).unwrap();
    assert_eq!(
        sent(&mut p),
        vec![
            propose(1, G, vec![command(0, 0, b"a"), command(2, 0, b"c")]),
            propose(2, T, vec![command(1, 0, b"b")]),
        ]
    );
    assert_eq!(p.outstanding(), 3);
}

// Contract: nothing is resent before the retry timeout; at it, the same
// command id goes to the ring's next acceptor.
#[test]
fn a_command_is_resent_to_the_next_acceptor_at_the_retry_timeout() {
    let t0 = Instant::now();
    let mut p = Proposer::new(P, &config(), RETRY);
    p.propose(t0, T, Bytes::from_static(b"x")).unwrap();
    sent(&mut p);
    assert_eq!(p.poll_timeout(), Some(t0 + RETRY));
    p.handle_timeout(t0 + RETRY - Duration::from_millis(1));
    assert_eq!(sent(&mut p), vec![]);
    p.handle_timeout(t0 + RETRY);
    assert_eq!(sent(&mut p), vec![propose(3, T, vec![command(0, 0, b"x")])]);
}

// Contract: a command that is done is never sent again, and nothing waits.
#[test]
fn a_done_command_is_not_resent() {
    let t0 = Instant::now();
    let mut p = Proposer::new(P, &config(), RETRY);
    let id = p.propose(t0, G, Bytes::from_static(b"x")).unwrap();
    sent(&mut p);
    p.done(id);
    assert_eq!(p.poll_timeout(), None);
    p.handle_timeout(t0 + 10 * RETRY);
    assert_eq!(sent(&mut p), vec![]);
    assert_eq!(p.outstanding(), 0);
}

// Contract: done is per proposer: another proposer's id changes nothing.
#[test]
fn another_proposers_done_changes_nothing() {
    let t0 = Instant::now();
    let mut p = Proposer::new(P, &config(), RETRY);
    let id = p.propose(t0, G, Bytes::from_static(b"x")).unwrap();
    sent(&mut p);
    p.done(CommandId {
        proposer: ProposerId(8),
        seq: id.seq,
    });
    assert_eq!(p.outstanding(), 1);
    p.handle_timeout(t0 + RETRY);
    assert_eq!(sent(&mut p).len(), 1);
}

// Contract: a ring the configuration does not have is refused, and no
// sequence number is spent on it.
#[test]
fn a_proposal_to_an_unknown_ring_is_refused() {
    let now = Instant::now();
    let mut p = Proposer::new(P, &config(), RETRY);
    assert_eq!(
        p.propose(now, RingId(9), Bytes::new()),
        Err(ProposeError::UnknownRing { ring: RingId(9) })
    );
    assert_eq!(sent(&mut p), vec![]);
    let id = p.propose(now, G, Bytes::new()).unwrap();
    assert_eq!(id.seq, 0);
}
