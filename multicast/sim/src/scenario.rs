//! Every parameter of a simulated run, drawn from its seed (the way
//! TigerBeetle's VOPR does): the topology, the protocol parameters, the
//! network's misbehaviour and the crash schedule's rates.

use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::disk::DiskMode;
use super::faults::{Cast, Episode, draw_episodes};
use psmr_core::proto::{MulticastConfig, NodeId, Params, RingConfig, RingId};

/// The ring every replica thread subscribes to.
pub const G_ALL: RingId = RingId(0);

/// First learner id; proposers start at [`FIRST_PROPOSER`].
pub(super) const FIRST_LEARNER: u32 = 100;
/// First proposer id.
pub(super) const FIRST_PROPOSER: u32 = 1000;

/// A learner and the merges it feeds (one per replica thread, and one of all its rings).
#[derive(Clone, Debug)]
pub struct LearnerSpec {
    /// Its node id.
    pub id: NodeId,
    /// Rings it subscribes to.
    pub rings: Vec<RingId>,
    /// Ring sets of the merges fed by this learner.
    pub merges: Vec<Vec<RingId>>,
}

/// How the network misbehaves during the safety phase.
#[derive(Clone, Debug)]
pub struct NetworkFaults {
    /// Smallest delay of a message.
    pub min_delay: Duration,
    /// Largest ordinary delay.
    pub max_delay: Duration,
    /// Probability that a message is much slower (reordering).
    pub slow: f64,
    /// Largest extra delay of a slow message.
    pub slow_extra: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
}

/// What kind of run to draw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimOptions {
    /// Three-acceptor rings, a crash every 15–60 ms, downtimes of 6–40 ms.
    pub harsh: bool,
    /// Restarted acceptors forget everything they promised and accepted
    /// (the bug the checker must catch).
    pub broken: bool,
    /// The partition regime: network partitions (symmetric, one-way,
    /// non-transitive), lossy directions, process pauses longer than the
    /// suspect timeout, and long delays, besides crashes.
    pub partitions: bool,
    /// A bug planted in the protocol core, which the run should expose.
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<psmr_core::proto::PlantedBug>,
}

impl SimOptions {
    /// The environment settings, besides the seed, that replay a run drawn
    /// with these options (`PSMR_SIM_HARSH=1` and the like).
    pub fn replay_flags(&self) -> String {
        let flags = [
            (self.harsh, " PSMR_SIM_HARSH=1"),
            (self.broken, " PSMR_SIM_BROKEN=1"),
            (self.partitions, " PSMR_SIM_PARTITIONS=1"),
        ];
        let flags: String = flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, flag)| *flag)
            .collect();
        #[cfg(feature = "planted-bugs")]
        let flags = match self.planted {
            Some(bug) => format!("{flags} PSMR_SIM_PLANTED={bug:?}"),
            None => flags,
        };
        flags
    }
}

/// Everything about one run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The seed everything was drawn from.
    pub seed: u64,
    /// Rings, acceptors, learners and protocol parameters.
    pub config: MulticastConfig,
    /// The acceptor processes.
    pub acceptors: Vec<NodeId>,
    /// The learners.
    pub learners: Vec<LearnerSpec>,
    /// Proposer ids.
    pub proposers: Vec<NodeId>,
    /// Commands each proposer proposes during the safety phase.
    pub commands_per_proposer: u32,
    /// Storage mode of every acceptor.
    pub disk: DiskMode,
    /// Longest a sync takes (each is drawn up to this); zero syncs at once.
    /// Messages that wait for a sync wait this long, early ones do not,
    /// and a crash meanwhile loses what was not synced.
    pub disk_latency: Duration,
    /// The options the scenario was drawn with.
    pub options: SimOptions,
    /// Network misbehaviour during the safety phase.
    pub network: NetworkFaults,
    /// Mean time between crashes during the safety phase.
    pub crash_every: Duration,
    /// Longest downtime of a crashed acceptor.
    pub max_downtime: Duration,
    /// Probability that a crash targets the coordinator of some ring.
    pub coordinator_crash: f64,
    /// Length of the safety phase.
    pub safety: Duration,
    /// Longest the liveness phase may take before validity is declared violated.
    pub liveness: Duration,
    /// Proposer retry timeout.
    pub retry: Duration,
    /// Partitions and pauses during the safety phase (partition regime only).
    pub episodes: Vec<Episode>,
    /// Proposals are made from 0 to this (default: the whole safety phase).
    pub load_until: Option<Duration>,
}

impl Scenario {
    /// Draws a scenario from `seed`.
    pub fn from_seed(seed: u64, options: SimOptions) -> Scenario {
        let SimOptions {
            harsh,
            broken,
            partitions,
            ..
        } = options;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pool_size = match rng.random_range(0..10) {
            _ if harsh => 3,
            0..=4 => 3,
            5..=7 => 5,
            _ => 7,
        };
        let pool: Vec<NodeId> = (1..=pool_size).map(NodeId).collect();
        let threads = rng.random_range(1..=3u16);
        let rings = draw_rings(&mut rng, &pool, threads);
        let mut acceptors: Vec<NodeId> = rings
            .iter()
            .flat_map(|r| r.acceptors.iter().copied())
            .collect();
        acceptors.sort_unstable();
        acceptors.dedup();
        let learners = learner_specs(threads);
        let rings = with_learners(rings, &learners);
        let params = plant(draw_params(&mut rng), options);
        let proposers: Vec<NodeId> = (0..rng.random_range(1..=3u32))
            .map(|i| NodeId(FIRST_PROPOSER + i))
            .collect();
        let disk = if broken || rng.random_bool(0.5) {
            DiskMode::Memory
        } else {
            DiskMode::Durable
        };
        let network = draw_network(&mut rng, partitions);
        let safety = ms(if partitions {
            rng.random_range(2000..=3500)
        } else {
            rng.random_range(1000..=2000)
        });
        let cast = Cast {
            acceptors: &acceptors,
            others: learners
                .iter()
                .map(|l| l.id)
                .chain(proposers.iter().copied())
                .collect(),
            suspect: params.suspect_timeout,
        };
        let episodes = if partitions {
            draw_episodes(&mut rng, &cast, safety)
        } else {
            Vec::new()
        };
        Scenario {
            seed,
            config: MulticastConfig {
                rings,
                merges: merges_of(&learners),
                params,
            },
            acceptors,
            learners,
            proposers,
            commands_per_proposer: if partitions {
                rng.random_range(40..=120)
            } else {
                rng.random_range(10..=40)
            },
            disk_latency: draw_disk_latency(seed, disk),
            disk,
            options,
            network,
            crash_every: ms(if harsh {
                rng.random_range(15..=60)
            } else if partitions {
                rng.random_range(300..=1500)
            } else {
                rng.random_range(80..=400)
            }),
            max_downtime: ms(if harsh {
                rng.random_range(6..=40)
            } else {
                rng.random_range(20..=300)
            }),
            coordinator_crash: rng.random_range(0.2..=0.8),
            safety,
            // After partitions heal the cluster must serve again within 2 s.
            liveness: Duration::from_secs(if partitions { 2 } else { 20 }),
            retry: ms(rng.random_range(60..=200)),
            episodes,
            load_until: None,
        }
    }
}

impl Scenario {
    /// No faults at all: three acceptors, `threads` thread rings and `g_all`,
    /// default protocol parameters, every message delayed 100 µs.
    pub fn quiet(seed: u64, threads: u16) -> Scenario {
        Scenario::quiet_with(seed, threads, 3)
    }

    /// [`Scenario::quiet`] with `acceptors` acceptors; ring `i`'s order is
    /// rotated by `i`, so ring 0 is led by n1, ring 1 by n2, ...
    pub fn quiet_with(seed: u64, threads: u16, acceptors: u32) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let pool: Vec<NodeId> = (1..=acceptors).map(NodeId).collect();
        let mut rings = draw_rings(&mut rng, &pool, threads);
        for (i, ring) in rings.iter_mut().enumerate() {
            ring.acceptors = pool.clone();
            ring.acceptors.rotate_left(i % pool.len());
        }
        let learners = learner_specs(threads);
        let rings = with_learners(rings, &learners);
        let hundred = Duration::from_micros(100);
        Scenario {
            seed,
            config: MulticastConfig {
                rings,
                // A P-SMR deployment's merges: {g_i, g_all} per thread.
                merges: (1..=threads).map(|t| vec![RingId(t), G_ALL]).collect(),
                params: Params::default(),
            },
            acceptors: pool,
            learners,
            proposers: vec![NodeId(FIRST_PROPOSER)],
            commands_per_proposer: 0,
            disk: DiskMode::Memory,
            disk_latency: Duration::ZERO,
            options: SimOptions::default(),
            network: NetworkFaults {
                min_delay: hundred,
                max_delay: hundred,
                slow: 0.0,
                slow_extra: Duration::ZERO,
                loss: 0.0,
                duplicate: 0.0,
            },
            crash_every: Duration::from_secs(3600),
            max_downtime: Duration::from_millis(10),
            coordinator_crash: 0.0,
            safety: Duration::ZERO,
            liveness: Duration::from_secs(60),
            retry: Duration::from_secs(1),
            episodes: Vec::new(),
            load_until: None,
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Rings g_1..g_K and g_all; each has all acceptors of the pool or an odd
/// subset of at least three. Either one order for every ring (one coordinator for all, the
/// default of a cluster file) or an order rotated per ring so that
/// coordinators spread.
fn draw_rings(rng: &mut ChaCha8Rng, pool: &[NodeId], threads: u16) -> Vec<RingConfig> {
    let rotate = rng.random_bool(0.5);
    (0..=threads)
        .map(|i| {
            let mut members: Vec<NodeId> = pool.to_vec();
            // A ring of a subset of the pool: 3 of 5, 3 or 5 of 7.
            if pool.len() > 3 && rng.random_bool(0.5) {
                let size = 2 * rng.random_range(1..pool.len() / 2) + 1;
                while members.len() > size {
                    let drop = rng.random_range(0..members.len());
                    members.remove(drop);
                }
            }
            if rotate {
                let shift = usize::from(i) % members.len();
                members.rotate_left(shift);
            }
            RingConfig {
                id: RingId(i),
                acceptors: members,
                learners: Vec::new(),
            }
        })
        .collect()
}

/// Two full replicas (one merge per thread over {g_i, g_all}, plus one over
/// all rings) and a partial learner of {g_1, g_all}.
fn learner_specs(threads: u16) -> Vec<LearnerSpec> {
    let all: Vec<RingId> = (0..=threads).map(RingId).collect();
    let replica = |id: u32| {
        let mut merges: Vec<Vec<RingId>> = (1..=threads).map(|t| vec![RingId(t), G_ALL]).collect();
        merges.push(all.clone());
        LearnerSpec {
            id: NodeId(id),
            rings: all.clone(),
            merges,
        }
    };
    let partial = LearnerSpec {
        id: NodeId(FIRST_LEARNER + 2),
        rings: vec![RingId(1), G_ALL],
        merges: vec![vec![RingId(1), G_ALL]],
    };
    vec![replica(FIRST_LEARNER), replica(FIRST_LEARNER + 1), partial]
}

/// Every merge of every learner.
fn merges_of(learners: &[LearnerSpec]) -> Vec<Vec<RingId>> {
    learners
        .iter()
        .flat_map(|l| l.merges.iter().cloned())
        .collect()
}

fn with_learners(mut rings: Vec<RingConfig>, learners: &[LearnerSpec]) -> Vec<RingConfig> {
    for ring in &mut rings {
        ring.learners = learners
            .iter()
            .filter(|l| l.rings.contains(&ring.id))
            .map(|l| l.id)
            .collect();
    }
    rings
}

/// The protocol parameters with the options' planted bug, if any.
#[cfg(feature = "planted-bugs")]
pub(super) fn plant(params: Params, options: SimOptions) -> Params {
    Params {
        planted: options.planted,
        ..params
    }
}

#[cfg(not(feature = "planted-bugs"))]
pub(super) fn plant(params: Params, _options: SimOptions) -> Params {
    params
}

fn draw_params(rng: &mut ChaCha8Rng) -> Params {
    let delta = ms(rng.random_range(2..=6));
    Params {
        window: rng.random_range(2..=32),
        batch_max_commands: rng.random_range(1..=8),
        batch_delay: if rng.random_bool(0.3) {
            ms(rng.random_range(1..=5))
        } else {
            Duration::ZERO
        },
        heartbeat_interval: ms(10),
        suspect_timeout: ms(rng.random_range(40..=80)),
        retry_timeout: ms(rng.random_range(20..=50)),
        delta,
        lambda: rng.random_range(500..=200_000),
        merge_m: rng.random_range(1..=3),
        retention: 100_000,
        vote_bound_reserve: rng.random_range(8..=64),
        recovery_timeout: ms(rng.random_range(10..=30)),
        recovery_batch: rng.random_range(4..=64),
        learner_buffer: 10_000,
        ..Params::default()
    }
}

/// The partition regime also has long delays: slow messages may take longer
/// than the suspect timeout, and arrive far out of order.
/// Durable disks take up to 0.1–2 ms per sync in most scenarios (a quarter
/// sync at once), drawn apart from the scenario's other draws so that
/// memory-mode scenarios are the ones they were before disks had latency.
fn draw_disk_latency(seed: u64, disk: DiskMode) -> Duration {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xd15c_1a7e_0000_0002);
    match disk {
        DiskMode::Memory => Duration::ZERO,
        DiskMode::Durable if rng.random_bool(0.25) => Duration::ZERO,
        DiskMode::Durable => Duration::from_micros(rng.random_range(100..=2000)),
    }
}

fn draw_network(rng: &mut ChaCha8Rng, partitions: bool) -> NetworkFaults {
    let slow_extra = if partitions && rng.random_bool(0.5) {
        rng.random_range(40..=300)
    } else {
        rng.random_range(5..=40)
    };
    NetworkFaults {
        min_delay: Duration::from_micros(50),
        max_delay: Duration::from_micros(rng.random_range(200..=2000)),
        slow: rng.random_range(0.0..=0.1),
        slow_extra: ms(slow_extra),
        loss: rng.random_range(0.0..=0.08),
        duplicate: rng.random_range(0.0..=0.05),
    }
}
