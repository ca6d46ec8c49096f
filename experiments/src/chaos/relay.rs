//! A fault-injecting UDP relay in front of each node: how `psmr chaos`
//! partitions, delays and drops packets.
//!
//! ```text
//!  peer ──> relay at the node's `address` ──> node at its `listen` address
//!  peer <── (same relay, the flow's own socket) <── node
//! ```
//!
//! The cluster file gives every node a `listen` address beside the `address`
//! the others reach it at; a relay binds each `address` and forwards every
//! datagram to the node through one socket per source, so the node's
//! answers come back through the relay too. Each node sends from its own
//! listen address, so a source that is some node's listen address is that
//! node; any other source is a client. Every datagram asks [`Faults`] for
//! its fate on its link (from, to) in its direction: both directions of a
//! connection pass the relay of the node that was dialed, whichever side
//! speaks.
//!
//! A relay rather than network namespaces: it needs no privileges, runs
//! wherever the tests run, and delays and drops as well as cuts (`tc netem`
//! is missing on the machines we test on). What it cannot do: it adds a hop
//! (a few µs per datagram, the same on every link), and it cannot cut the
//! metrics endpoints, which are TCP and not relayed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One end of a link: a node, or any client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Party {
    /// A node of the cluster, by id.
    Node(u32),
    /// Every process that is not a node (the workload's clients).
    Clients,
}

/// The faults on the network right now.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Faults {
    /// Links cut, one direction each: (from, to).
    pub(crate) cut: HashSet<(Party, Party)>,
    /// Delay added to every datagram.
    pub(crate) delay: Duration,
    /// Share of datagrams dropped on every link, in [0, 1].
    pub(crate) loss: f64,
}

/// What happens to one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Dropped.
    Drop,
    /// Delivered after this long (zero: at once).
    Deliver(Duration),
}

impl Faults {
    /// The fate of a datagram from `from` to `to`.
    pub(crate) fn fate(&self, from: Party, to: Party, rng: &mut impl RngExt) -> Fate {
        if self.cut.contains(&(from, to)) || (self.loss > 0.0 && rng.random_bool(self.loss)) {
            return Fate::Drop;
        }
        Fate::Deliver(self.delay)
    }

    /// Cuts both directions between every party of `a` and every party of `b`.
    pub(crate) fn split(&mut self, a: &[Party], b: &[Party]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }
}

/// The shared, changeable fault state of every relay.
#[derive(Clone, Default)]
pub(crate) struct Network {
    faults: Arc<Mutex<Faults>>,
}

impl Network {
    /// Replaces the faults (an empty [`Faults`] heals the network).
    pub(crate) fn set(&self, faults: Faults) {
        *self.lock() = faults;
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fate(&self, from: Party, to: Party, rng: &mut ChaCha8Rng) -> Fate {
        self.lock().fate(from, to, rng)
    }
}

/// The relays of a cluster; dropping them stops them.
pub(crate) struct Relays {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Relays {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One node behind a relay: where others reach it and where it listens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hop {
    pub(crate) id: u32,
    pub(crate) address: SocketAddr,
    pub(crate) listen: SocketAddr,
}

impl Relays {
    /// Binds a relay at each hop's address; `seed` seeds the drops.
    pub(crate) async fn start(
        hops: &[Hop],
        network: &Network,
        seed: u64,
    ) -> std::io::Result<Relays> {
        let nodes: Arc<HashMap<SocketAddr, u32>> =
            Arc::new(hops.iter().map(|h| (h.listen, h.id)).collect());
        let mut tasks = Vec::new();
        for hop in hops {
            let front = Arc::new(UdpSocket::bind(hop.address).await?);
            let relay = Relay {
                hop: *hop,
                front,
                nodes: nodes.clone(),
                network: network.clone(),
                rng: ChaCha8Rng::seed_from_u64(seed ^ u64::from(hop.id)),
            };
            tasks.push(tokio::spawn(relay.run()));
        }
        Ok(Relays { tasks })
    }
}

struct Relay {
    hop: Hop,
    front: Arc<UdpSocket>,
    nodes: Arc<HashMap<SocketAddr, u32>>,
    network: Network,
    rng: ChaCha8Rng,
}

/// Datagrams waiting out their delay, in order.
type Delayed = mpsc::UnboundedSender<(tokio::time::Instant, Vec<u8>)>;

/// One source's flow through a relay: its socket towards the node, and the
/// queue of its delayed datagrams.
struct Flow {
    from: Party,
    upstream: Arc<UdpSocket>,
    delayed: Delayed,
    answers: JoinHandle<()>,
    sender: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.answers.abort();
        self.sender.abort();
    }
}

/// Most datagrams a relay holds for one flow: past it new ones are dropped
/// (as a router would), so a long delay cannot grow memory without bound.
const MAX_DELAYED: usize = 1 << 20;

impl Relay {
    async fn run(mut self) {
        let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, source)) = self.front.recv_from(&mut buf).await else {
                // An ICMP error for an earlier datagram (a peer not running): go on.
                continue;
            };
            let flow = match flows.get(&source) {
                Some(flow) => flow,
                None => match self.flow(source).await {
                    Ok(flow) => flows.entry(source).or_insert(flow),
                    Err(_) => continue,
                },
            };
            let to = Party::Node(self.hop.id);
            match self.network.fate(flow.from, to, &mut self.rng) {
                Fate::Drop => {}
                Fate::Deliver(d) if d.is_zero() => {
                    let _ = flow.upstream.send(&buf[..n]).await;
                }
                Fate::Deliver(d) => {
                    let _ = flow
                        .delayed
                        .send((tokio::time::Instant::now() + d, buf[..n].to_vec()));
                }
            }
        }
    }

    /// A new flow from `source`: a socket towards the node, a task relaying
    /// the node's answers back to `source`, and one sending delayed datagrams.
    async fn flow(&self, source: SocketAddr) -> std::io::Result<Flow> {
        let from = self
            .nodes
            .get(&source)
            .map_or(Party::Clients, |&id| Party::Node(id));
        let upstream = Arc::new(UdpSocket::bind((self.hop.listen.ip(), 0)).await?);
        upstream.connect(self.hop.listen).await?;
        let (delayed, queue) = mpsc::unbounded_channel();
        let sender = tokio::spawn(send_delayed(queue, Target::Connected(upstream.clone())));
        let answers = tokio::spawn(answer(
            upstream.clone(),
            self.front.clone(),
            source,
            Party::Node(self.hop.id),
            from,
            self.network.clone(),
            self.rng.clone(),
        ));
        Ok(Flow {
            from,
            upstream,
            delayed,
            answers,
            sender,
        })
    }
}

/// Where delayed datagrams go.
enum Target {
    /// The node, through a flow's connected socket.
    Connected(Arc<UdpSocket>),
    /// A peer, through the relay's front socket.
    To(Arc<UdpSocket>, SocketAddr),
}

async fn send_delayed(
    mut queue: mpsc::UnboundedReceiver<(tokio::time::Instant, Vec<u8>)>,
    target: Target,
) {
    while let Some((due, datagram)) = queue.recv().await {
        if queue.len() > MAX_DELAYED {
            continue;
        }
        tokio::time::sleep_until(due).await;
        let _ = match &target {
            Target::Connected(socket) => socket.send(&datagram).await,
            Target::To(socket, to) => socket.send_to(&datagram, *to).await,
        };
    }
}

/// Relays the node's datagrams on a flow back to its source.
async fn answer(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    source: SocketAddr,
    node: Party,
    to: Party,
    network: Network,
    mut rng: ChaCha8Rng,
) {
    let (delayed, queue) = mpsc::unbounded_channel();
    let _sender = AbortOnDrop(tokio::spawn(send_delayed(
        queue,
        Target::To(front.clone(), source),
    )));
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok(n) = upstream.recv(&mut buf).await else {
            // The node is down (an ICMP error): its next datagram will come.
            continue;
        };
        match network.fate(node, to, &mut rng) {
            Fate::Drop => {}
            Fate::Deliver(d) if d.is_zero() => {
                let _ = front.send_to(&buf[..n], source).await;
            }
            Fate::Deliver(d) => {
                let _ = delayed.send((tokio::time::Instant::now() + d, buf[..n].to_vec()));
            }
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_drops_one_direction_and_a_split_both() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (a, b) = (Party::Node(1), Party::Node(2));
        let mut faults = Faults::default();
        faults.cut.insert((a, b));
        assert_eq!(faults.fate(a, b, &mut rng), Fate::Drop);
        assert_eq!(faults.fate(b, a, &mut rng), Fate::Deliver(Duration::ZERO));
        let mut split = Faults::default();
        split.split(&[a], &[b, Party::Clients]);
        for (x, y) in [(a, b), (b, a), (a, Party::Clients), (Party::Clients, a)] {
            assert_eq!(split.fate(x, y, &mut rng), Fate::Drop, "{x:?} -> {y:?}");
        }
        assert_eq!(
            split.fate(b, Party::Clients, &mut rng),
            Fate::Deliver(Duration::ZERO)
        );
    }

    #[test]
    fn loss_drops_about_its_share_and_delay_is_applied() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let faults = Faults {
            loss: 0.25,
            delay: Duration::from_millis(5),
            ..Faults::default()
        };
        let dropped = (0..10_000)
            .filter(|_| faults.fate(Party::Clients, Party::Node(1), &mut rng) == Fate::Drop)
            .count();
        assert!((2_200..2_800).contains(&dropped), "{dropped} of 10,000");
        let kept = (0..100)
            .map(|_| faults.fate(Party::Node(1), Party::Node(2), &mut rng))
            .find(|f| *f != Fate::Drop);
        assert_eq!(kept, Some(Fate::Deliver(Duration::from_millis(5))));
    }

    fn within<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout(Duration::from_secs(2), f)
    }

    #[tokio::test]
    async fn datagrams_pass_both_ways_until_the_link_is_cut() {
        let node = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let listen = node.local_addr().unwrap();
        let address = UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let network = Network::default();
        let hop = Hop {
            id: 1,
            address,
            listen,
        };
        let _relays = Relays::start(&[hop], &network, 3).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 16];
        client.send_to(b"ping", address).await.unwrap();
        let (n, via) = within(node.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"ping");
        node.send_to(b"pong", via).await.unwrap();
        let (n, from) = within(client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (&b"pong"[..], address));
        let mut cut = Faults::default();
        cut.cut.insert((Party::Node(1), Party::Clients));
        network.set(cut);
        client.send_to(b"ping", address).await.unwrap();
        within(node.recv_from(&mut buf)).await.unwrap().unwrap();
        node.send_to(b"lost", via).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf));
        assert!(
            answer.await.is_err(),
            "the node's answer crossed a cut link"
        );
        network.set(Faults {
            delay: Duration::from_millis(50),
            ..Faults::default()
        });
        let sent = tokio::time::Instant::now();
        client.send_to(b"late", address).await.unwrap();
        within(node.recv_from(&mut buf)).await.unwrap().unwrap();
        assert!(sent.elapsed() >= Duration::from_millis(50));
    }
}
