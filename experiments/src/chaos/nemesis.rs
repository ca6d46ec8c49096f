//! The nemesis of `psmr chaos`: which faults, in what order and on which
//! nodes (drawn from the seed), and how each is injected and healed.
//!
//! ```text
//!  kill-acceptor    kill -9 of an acceptor; started again at the heal
//!  kill-coordinator kill -9 of ring 0's coordinator (read from the acceptors' metrics)
//!  kill-replica     kill -9 of a replica
//!  pause            SIGSTOP of any node; SIGCONT at the heal
//!  isolate          every link of one node cut, both ways, clients too
//!  split            the coordinator and a replica cut off from the rest and the clients
//!  one-way          one node's datagrams out (or in) dropped, the other direction kept
//!  slow             every link delayed 2–20 ms and 1–10 % of datagrams dropped
//!  kill-all         kill -9 of every process at once (durable storage only)
//! ```

use std::fmt;
use std::time::Duration;

use nix::sys::signal::Signal;
use psmr_core::cluster::ClusterConfig;
use psmr_core::proto::NodeId;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::relay::{Faults, Network, Party};
use crate::local::{Children, LocalError};

/// A class of fault, as `--faults` names it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
    KillAcceptor,
    KillCoordinator,
    KillReplica,
    Pause,
    Isolate,
    Split,
    OneWay,
    Slow,
    KillAll,
}

impl FaultKind {
    /// Every class, in the order of the table above.
    pub(crate) const ALL: [FaultKind; 9] = [
        FaultKind::KillAcceptor,
        FaultKind::KillCoordinator,
        FaultKind::KillReplica,
        FaultKind::Pause,
        FaultKind::Isolate,
        FaultKind::Split,
        FaultKind::OneWay,
        FaultKind::Slow,
        FaultKind::KillAll,
    ];
}

/// Who a fault strikes, drawn with the schedule; the coordinator is found
/// when the fault comes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Fault {
    /// kill -9, then started again.
    Kill(Target),
    /// SIGSTOP, then SIGCONT.
    Pause(u32),
    /// Every link of the node cut both ways.
    Isolate(u32),
    /// The coordinator and this replica against the others and the clients.
    Split { replica: u32 },
    /// The node's datagrams out (`outbound`) or in are dropped.
    OneWay { node: u32, outbound: bool },
    /// Every link delayed and lossy.
    Slow { delay: Duration, loss: f64 },
    /// kill -9 of every process, then all started again.
    KillAll,
}

/// A node to kill: a given one, or ring 0's coordinator when the fault comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Node(u32),
    Coordinator,
}

/// The schedule of a run: each chosen class once per round, shuffled by
/// the seed, with targets drawn from it.
pub(crate) fn schedule(
    kinds: &[FaultKind],
    rounds: usize,
    cluster: &ClusterConfig,
    seed: u64,
) -> Vec<Fault> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let acceptors: Vec<u32> = cluster.acceptors.iter().map(|a| a.id).collect();
    let replicas: Vec<u32> = cluster.replicas.iter().map(|r| r.id).collect();
    let nodes: Vec<u32> = acceptors.iter().chain(&replicas).copied().collect();
    let mut faults = Vec::new();
    for _ in 0..rounds {
        let mut round: Vec<FaultKind> = kinds.to_vec();
        round.shuffle(&mut rng);
        for kind in round {
            let pick = |rng: &mut ChaCha8Rng, from: &[u32]| from[rng.random_range(0..from.len())];
            faults.push(match kind {
                FaultKind::KillAcceptor => Fault::Kill(Target::Node(pick(&mut rng, &acceptors))),
                FaultKind::KillCoordinator => Fault::Kill(Target::Coordinator),
                FaultKind::KillReplica => Fault::Kill(Target::Node(pick(&mut rng, &replicas))),
                FaultKind::Pause => Fault::Pause(pick(&mut rng, &nodes)),
                FaultKind::Isolate => Fault::Isolate(pick(&mut rng, &nodes)),
                FaultKind::Split => Fault::Split {
                    replica: pick(&mut rng, &replicas),
                },
                FaultKind::OneWay => Fault::OneWay {
                    node: pick(&mut rng, &nodes),
                    outbound: rng.random_bool(0.5),
                },
                FaultKind::Slow => Fault::Slow {
                    delay: Duration::from_millis(rng.random_range(2..=20)),
                    loss: f64::from(rng.random_range(1..=10u32)) / 100.0,
                },
                FaultKind::KillAll => Fault::KillAll,
            });
        }
    }
    faults
}

/// A fault as it was injected: what it did, and how to heal it.
pub(crate) struct Injected {
    /// What happened, for the table (`kill -9 n1 (coordinator)`).
    pub(crate) description: String,
    heal: Heal,
}

enum Heal {
    Start(Vec<u32>),
    Continue(u32),
    Network,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(Target::Node(id)) => write!(f, "kill -9 n{id}"),
            Fault::Kill(Target::Coordinator) => write!(f, "kill -9 the coordinator"),
            Fault::Pause(id) => write!(f, "pause n{id}"),
            Fault::Isolate(id) => write!(f, "isolate n{id}"),
            Fault::Split { replica } => write!(f, "split coordinator+n{replica} from the rest"),
            Fault::OneWay { node, outbound } => {
                let way = if *outbound { "out" } else { "in" };
                write!(f, "drop n{node}'s datagrams {way}")
            }
            Fault::Slow { delay, loss } => write!(f, "delay {delay:?}, loss {:.0}%", loss * 100.0),
            Fault::KillAll => write!(f, "kill -9 every process"),
        }
    }
}

/// Injects `fault` now.
pub(crate) async fn inject(
    fault: &Fault,
    cluster: &ClusterConfig,
    children: &mut Children,
    network: &Network,
) -> Injected {
    let everyone = || -> Vec<Party> {
        let nodes = cluster.nodes().into_iter().map(|n| Party::Node(n.0));
        nodes.chain([Party::Clients]).collect()
    };
    let cut = |faults: Faults| {
        network.set(faults);
        Heal::Network
    };
    // Which node a fault strikes, and whether it coordinates ring 0 now.
    let struck = match fault {
        Fault::Pause(id) | Fault::Isolate(id) | Fault::OneWay { node: id, .. } => Some(*id),
        _ => None,
    };
    let role = match struck {
        Some(id) if cluster.acceptor(NodeId(id)).is_some() && coordinator(cluster).await == id => {
            " (coordinator)"
        }
        _ => "",
    };
    let (description, heal) = match fault {
        Fault::Kill(target) => {
            let (id, what) = match target {
                Target::Node(id) => (*id, String::new()),
                Target::Coordinator => (coordinator(cluster).await, " (coordinator)".into()),
            };
            children.kill(id);
            (format!("kill -9 n{id}{what}"), Heal::Start(vec![id]))
        }
        Fault::Pause(id) => {
            children.signal(*id, Signal::SIGSTOP);
            (format!("{fault}{role}"), Heal::Continue(*id))
        }
        Fault::Isolate(id) => {
            let mut faults = Faults::default();
            let others: Vec<Party> = everyone()
                .into_iter()
                .filter(|p| *p != Party::Node(*id))
                .collect();
            faults.split(&[Party::Node(*id)], &others);
            (format!("{fault}{role}"), cut(faults))
        }
        Fault::Split { replica } => {
            let leader = coordinator(cluster).await;
            let minority = [Party::Node(leader), Party::Node(*replica)];
            let rest: Vec<Party> = everyone()
                .into_iter()
                .filter(|p| !minority.contains(p))
                .collect();
            let mut faults = Faults::default();
            faults.split(&minority, &rest);
            let what = format!("split n{leader} (coordinator)+n{replica} from the rest");
            (what, cut(faults))
        }
        Fault::OneWay { node, outbound } => {
            let mut faults = Faults::default();
            for other in everyone().into_iter().filter(|p| *p != Party::Node(*node)) {
                let link = match outbound {
                    true => (Party::Node(*node), other),
                    false => (other, Party::Node(*node)),
                };
                faults.cut.insert(link);
            }
            (format!("{fault}{role}"), cut(faults))
        }
        Fault::Slow { delay, loss } => {
            let faults = Faults {
                delay: *delay,
                loss: *loss,
                ..Faults::default()
            };
            (fault.to_string(), cut(faults))
        }
        Fault::KillAll => {
            let ids: Vec<u32> = cluster.nodes().into_iter().map(|n| n.0).collect();
            for &id in &ids {
                children.kill(id);
            }
            (fault.to_string(), Heal::Start(ids))
        }
    };
    Injected { description, heal }
}

/// Heals an injected fault: starts killed nodes again, resumes a paused
/// one, or heals the network.
pub(crate) fn heal(
    injected: &Injected,
    children: &mut Children,
    network: &Network,
) -> Result<(), LocalError> {
    match &injected.heal {
        Heal::Start(ids) => {
            for &id in ids {
                children.start_again(id)?;
            }
        }
        Heal::Continue(id) => children.signal(*id, Signal::SIGCONT),
        Heal::Network => network.set(Faults::default()),
    }
    Ok(())
}

/// Ring 0's coordinator as the acceptors' metrics say (the acceptor that
/// leads it), or the first acceptor when none says so yet.
async fn coordinator(cluster: &ClusterConfig) -> u32 {
    for a in &cluster.acceptors {
        let Ok(page) = crate::status::scrape(a.metrics_address()).await else {
            continue;
        };
        if page.get("psmr_ring_leading{ring=\"0\"}") == Some(&1.0) {
            return a.id;
        }
    }
    cluster.acceptors[0].id
}

#[cfg(test)]
mod tests {
    use super::*;
    use psmr_core::EngineKind;

    #[test]
    fn a_seed_gives_one_schedule_with_every_class_once_per_round() {
        let cluster = ClusterConfig::local(7000, EngineKind::OptPsmr, 2);
        let a = schedule(&FaultKind::ALL, 2, &cluster, 11);
        assert_eq!(a, schedule(&FaultKind::ALL, 2, &cluster, 11), "replayable");
        assert_ne!(a, schedule(&FaultKind::ALL, 2, &cluster, 12));
        assert_eq!(a.len(), 18);
        let kills_all = a.iter().filter(|f| **f == Fault::KillAll).count();
        assert_eq!(kills_all, 2);
        for fault in &a {
            if let Fault::Kill(Target::Node(id)) | Fault::Pause(id) | Fault::Isolate(id) = fault {
                assert!(cluster.nodes().iter().any(|n| n.0 == *id), "{fault}");
            }
        }
    }
}
