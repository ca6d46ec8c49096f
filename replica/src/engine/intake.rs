//! Where the single-ring engines (`cbase`, `classes`) take in a delivered
//! command, in delivery order, before it goes to a worker: decoded once, and
//! judged stale or not.
//!
//! A request below its client's low-water mark is answered `Stale` (its
//! response may be forgotten). In the sequential execution that depends on
//! the low-water marks of the client's requests executed before it; with
//! workers running a client's requests in any order it would depend on
//! timing. So the intake decides it here, from the marks of the requests
//! delivered before it that get executed (decodable, for this service):
//! the same verdict as the sequential execution, on every replica.

use psmr_core::proto::Command;
use rustc_hash::FxHashMap;

use psmr_core::service::Service;
use psmr_core::wire::{ClientId, Request, RequestId};

/// A delivered command, decoded.
pub(crate) struct Decoded<Op> {
    pub(crate) client: ClientId,
    pub(crate) request: RequestId,
    pub(crate) low_water: RequestId,
    pub(crate) op: Op,
}

/// What the intake makes of a command.
pub(crate) struct Taken<Op> {
    /// `None`: the request or its operation cannot be decoded, or it is for
    /// another service (the worker refuses it).
    pub(crate) decoded: Option<Decoded<Op>>,
    /// Answer `Stale` without looking further.
    pub(crate) stale: bool,
}

/// The low-water mark of every client, as of the last command taken in.
#[derive(Default)]
pub(crate) struct Intake {
    low_water: FxHashMap<ClientId, RequestId>,
}

impl Intake {
    /// Every client's mark, for a checkpoint.
    pub(crate) fn image(&self) -> Vec<(ClientId, RequestId)> {
        let mut marks: Vec<_> = self.low_water.iter().map(|(c, r)| (*c, *r)).collect();
        marks.sort_unstable();
        marks
    }

    /// The intake a checkpoint's [`Intake::image`] describes.
    pub(crate) fn from_image(marks: &[(ClientId, RequestId)]) -> Intake {
        Intake {
            low_water: marks.iter().copied().collect(),
        }
    }

    pub(crate) fn take<S: Service>(&mut self, service: &S, command: &Command) -> Taken<S::Op> {
        let client = ClientId(command.id.proposer.0);
        let Some(request) = Request::decode(&command.payload)
            .ok()
            .filter(|r| r.service == service.id())
        else {
            return Taken {
                decoded: None,
                stale: false,
            };
        };
        let mark = self.low_water.entry(client).or_default();
        let stale = request.id < *mark;
        let op = service.decode(&request.op);
        if op.is_some() && !stale {
            *mark = (*mark).max(request.low_water);
        }
        Taken {
            decoded: op.map(|op| Decoded {
                client,
                request: request.id,
                low_water: request.low_water,
                op,
            }),
            stale,
        }
    }
}
