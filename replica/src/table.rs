//! The table of executed requests (docs/ARCHITECTURE.md, "Execution models").
//!
//! Per client, the responses of the requests executed at or above the
//! client's low-water mark, so that a request delivered again (the client
//! resent it) is answered from the table instead of executed twice. One
//! client's requests may run on different threads and out of order, so "the
//! highest id executed" would not do.
//!
//! The engines keep one table per worker thread, written only by that
//! thread in parallel mode, and one for commands executed in synchronous
//! mode, written only then. A request and its resends are delivered in the
//! same streams (its thread's group, or `g_all`, which every thread
//! receives), so whether a resend finds its request in the tables is decided
//! by the delivery order alone: the same on every replica.

use std::collections::VecDeque;

use bytes::Bytes;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use psmr_core::wire::{ClientId, RequestId};

/// What the table knows of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Executed before; this was the response.
    Answered(Bytes),
    /// Below the client's low-water mark: answered long ago, response forgotten.
    Forgotten,
    /// Not executed here.
    New,
}

/// One client's responses in request order. A client numbers its requests
/// in order and a table takes them in about that order, so a record is an
/// append and a lookup a binary search over contiguous memory (a
/// `BTreeMap` chased pointers through cold nodes on every command).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientLog {
    low_water: RequestId,
    responses: VecDeque<(RequestId, Bytes)>,
}

impl ClientLog {
    fn find(&self, request: RequestId) -> Result<usize, usize> {
        self.responses.binary_search_by_key(&request, |(id, _)| *id)
    }

    /// Inserts or replaces the response of `request`.
    fn insert(&mut self, request: RequestId, response: Bytes) {
        if self
            .responses
            .back()
            .is_none_or(|(last, _)| *last < request)
        {
            self.responses.push_back((request, response));
            return;
        }
        match self.find(request) {
            Ok(at) => self.responses[at].1 = response,
            Err(at) => self.responses.insert(at, (request, response)),
        }
    }
}

/// Executed requests and their responses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutedTable {
    clients: FxHashMap<ClientId, ClientLog>,
}

impl ExecutedTable {
    /// What is known of `request` of `client`.
    pub fn seen(&self, client: ClientId, request: RequestId) -> Seen {
        let Some(log) = self.clients.get(&client) else {
            return Seen::New;
        };
        if request < log.low_water {
            return Seen::Forgotten;
        }
        match log.find(request) {
            Ok(at) => Seen::Answered(log.responses[at].1.clone()),
            Err(_) => Seen::New,
        }
    }

    /// Raises the client's low-water mark, forgetting responses below it.
    pub fn advance(&mut self, client: ClientId, low_water: RequestId) {
        let log = self.clients.entry(client).or_default();
        if low_water <= log.low_water {
            return;
        }
        log.low_water = low_water;
        while log.responses.front().is_some_and(|(id, _)| *id < low_water) {
            log.responses.pop_front();
        }
    }

    /// Records the response of an executed request.
    pub fn record(&mut self, client: ClientId, request: RequestId, response: Bytes) {
        let log = self.clients.entry(client).or_default();
        debug_assert!(request >= log.low_water, "executing a forgotten request");
        log.insert(request, response);
    }

    /// Takes in every response of `other`; a client's low-water mark
    /// becomes the higher of the two.
    pub fn absorb(&mut self, other: ExecutedTable) {
        for (client, log) in other.clients {
            self.advance(client, log.low_water);
            let mine = self.clients.entry(client).or_default();
            for (request, response) in log.responses {
                if request < mine.low_water {
                    continue;
                }
                if let Err(at) = mine.find(request) {
                    mine.responses.insert(at, (request, response));
                }
            }
        }
    }

    /// Responses held, over all clients.
    pub fn len(&self) -> usize {
        self.clients.values().map(|l| l.responses.len()).sum()
    }

    /// Whether the table holds no response.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// The table against a map that holds every response at or above the
    /// low-water mark, over random records (mostly in order, some out of
    /// order or repeated), advances and absorbs. The seed is in every message.
    #[test]
    fn the_table_answers_like_a_map_of_every_response() {
        for seed in 0..64u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let c = ClientId(7);
            let (mut table, mut model) = (ExecutedTable::default(), BTreeMap::new());
            let (mut low, mut next) = (0u64, 0u64);
            for step in 0..400 {
                match rng.random_range(0..10) {
                    0..=5 => {
                        let id = if rng.random_bool(0.8) {
                            next
                        } else {
                            rng.random_range(low..=next)
                        };
                        next = next.max(id + 1);
                        let response = Bytes::from(format!("{id}/{step}"));
                        table.record(c, RequestId(id), response.clone());
                        model.insert(id, response);
                    }
                    6 => {
                        low = rng.random_range(low..=next);
                        table.advance(c, RequestId(low));
                        model.retain(|&id, _| id >= low);
                    }
                    7 => {
                        let mut other = ExecutedTable::default();
                        let id = rng.random_range(low..=next + 2);
                        other.record(c, RequestId(id), Bytes::from_static(b"other"));
                        table.absorb(other);
                        model.entry(id).or_insert(Bytes::from_static(b"other"));
                        next = next.max(id + 1);
                    }
                    _ => {}
                }
                let probe = rng.random_range(0..=next + 1);
                let expected = if probe < low {
                    Seen::Forgotten
                } else {
                    model
                        .get(&probe)
                        .map_or(Seen::New, |r| Seen::Answered(r.clone()))
                };
                assert_eq!(
                    table.seen(c, RequestId(probe)),
                    expected,
                    "seed {seed} step {step} probe {probe}"
                );
                assert_eq!(table.len(), model.len(), "seed {seed} step {step}");
            }
        }
    }

    #[test]
    fn out_of_order_requests_are_remembered_until_the_low_water_mark_passes() {
        let mut t = ExecutedTable::default();
        let c = ClientId(1);
        t.record(c, RequestId(5), Bytes::from_static(b"five"));
        t.record(c, RequestId(3), Bytes::from_static(b"three"));
        assert_eq!(
            t.seen(c, RequestId(3)),
            Seen::Answered(Bytes::from_static(b"three"))
        );
        assert_eq!(t.seen(c, RequestId(4)), Seen::New);
        assert_eq!(t.seen(ClientId(2), RequestId(3)), Seen::New);
        t.advance(c, RequestId(4));
        assert_eq!(t.seen(c, RequestId(3)), Seen::Forgotten);
        assert_eq!(
            t.seen(c, RequestId(5)),
            Seen::Answered(Bytes::from_static(b"five"))
        );
        assert_eq!(t.len(), 1);
        t.advance(c, RequestId(2));
        assert_eq!(
            t.seen(c, RequestId(3)),
            Seen::Forgotten,
            "low-water marks never go back"
        );
    }
}
