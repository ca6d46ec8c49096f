//! The table of executed requests (DESIGN.md section 5).
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

use std::collections::BTreeMap;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::wire::{ClientId, RequestId};

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

#[derive(Debug, Default)]
struct ClientLog {
    low_water: RequestId,
    responses: BTreeMap<RequestId, Bytes>,
}

/// Executed requests and their responses.
#[derive(Debug, Default)]
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
        match log.responses.get(&request) {
            Some(response) => Seen::Answered(response.clone()),
            None => Seen::New,
        }
    }

    /// Raises the client's low-water mark, forgetting responses below it.
    pub fn advance(&mut self, client: ClientId, low_water: RequestId) {
        let log = self.clients.entry(client).or_default();
        if low_water <= log.low_water {
            return;
        }
        log.low_water = low_water;
        while log
            .responses
            .first_key_value()
            .is_some_and(|(id, _)| *id < low_water)
        {
            log.responses.pop_first();
        }
    }

    /// Records the response of an executed request.
    pub fn record(&mut self, client: ClientId, request: RequestId, response: Bytes) {
        let log = self.clients.entry(client).or_default();
        debug_assert!(request >= log.low_water, "executing a forgotten request");
        log.responses.insert(request, response);
    }

    /// Takes in every response of `other`; a client's low-water mark
    /// becomes the higher of the two.
    pub fn absorb(&mut self, other: ExecutedTable) {
        for (client, log) in other.clients {
            self.advance(client, log.low_water);
            let mine = self.clients.entry(client).or_default();
            for (request, response) in log.responses {
                if request >= mine.low_water {
                    mine.responses.entry(request).or_insert(response);
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
    use super::*;

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
