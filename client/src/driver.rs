//! The task behind a [`crate::Client`]: a [`Session`] run on tokio over the
//! QUIC network.
//!
//! ```text
//!  calls ──┐                         ┌──> Propose frames to acceptors
//!  inbox ──┼──> Session (sans-IO) ───┼──> hellos to replicas
//!  timer ──┘                         └──> answers to the callers' channels
//! ```

use std::time::Instant;

use psmr_core::ClientId;
use psmr_core::proto::codec::{self, DEFAULT_MAX_FRAME};
use psmr_multicast::net::{Inbound, Network, Purpose, frame_of};
use tokio::sync::{mpsc, oneshot};

use crate::session::{Session, Transmit};
use crate::{Answer, Call, ClientError, ServiceClient};

/// Calls and replies taken per round before proposals go out.
const ROUND: usize = 1024;

type ReplyTo = oneshot::Sender<Result<Answer, ClientError>>;

pub(crate) struct Driver<M: ServiceClient>
where
    M::Op: Send + 'static,
{
    session: Session<M, ReplyTo>,
    net: Network,
    hello: Vec<u8>,
}

impl<M: ServiceClient> Driver<M>
where
    M::Op: Send + 'static,
{
    pub(crate) fn new(session: Session<M, ReplyTo>, id: ClientId, net: Network) -> Self {
        Driver {
            session,
            net,
            hello: frame_of(&postcard::to_allocvec(&id.0).expect("an id serializes")),
        }
    }

    pub(crate) async fn run(
        mut self,
        mut calls: mpsc::Receiver<Call<M::Op>>,
        mut inbox: mpsc::Receiver<Inbound>,
    ) {
        self.flush();
        loop {
            let wake = tokio::time::Instant::from_std(self.session.poll_timeout());
            tokio::select! {
                call = calls.recv() => match call {
                    Some(call) => self.session.call(Instant::now(), call.op, call.reply),
                    None => break,
                },
                inbound = inbox.recv() => match inbound {
                    Some(inbound) => self.on_inbound(inbound),
                    None => break,
                },
                () = tokio::time::sleep_until(wake) => {}
            }
            // Everything already there goes out in the same messages.
            for _ in 0..ROUND {
                match (calls.try_recv(), inbox.try_recv()) {
                    (Err(_), Err(_)) => break,
                    (call, inbound) => {
                        if let Ok(call) = call {
                            self.session.call(Instant::now(), call.op, call.reply);
                        }
                        if let Ok(inbound) = inbound {
                            self.on_inbound(inbound);
                        }
                    }
                }
            }
            self.session.handle_timeout(Instant::now());
            self.flush();
        }
        self.net.close();
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        if inbound.purpose == Purpose::Replies {
            self.session
                .handle_reply(Instant::now(), inbound.from, &inbound.body);
        }
    }

    fn flush(&mut self) {
        while let Some((reply, answer)) = self.session.poll_answer() {
            let _ = reply.send(answer);
        }
        while let Some(t) = self.session.poll_transmit() {
            match t {
                Transmit::Propose { to, message } => {
                    if let Ok(frame) = codec::frame(&message, DEFAULT_MAX_FRAME) {
                        self.net.send(to, Purpose::Propose, frame);
                    }
                }
                Transmit::Hello { to } => {
                    self.net.send(to, Purpose::ClientHello, self.hello.clone());
                }
            }
        }
    }
}
