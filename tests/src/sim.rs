//! A deterministic simulation of a small federation: five nodes running the
//! real sync [`Engine`] and [`Replica`] (real sled stores, real signatures,
//! real Automerge) in one process, over a seeded in-memory message bus
//! instead of sockets, with a virtual clock.
//!
//! The bus drops, duplicates, delays and so reorders messages; the harness
//! partitions and heals the network, restarts nodes from their stores, and
//! runs two roster removals by quorum while the members write. The stranger
//! (off the roster) and the observer keep pushing changes of their own, and
//! the removed member keeps writing after its removal. Member C is also
//! Byzantine: now and then it signs a change with a value Concord never
//! writes (a time in the year 10000, a number for a title, a 30 KB
//! summary, a text object, a position filed under no node id…) and pushes
//! it to a peer; honest nodes must refuse every one, and keep running and
//! converging. In every run C also forks its chain: it signs two valid
//! versions of one change number and gives one to A and the other to B;
//! the honest nodes must find the fork, freeze C at it alike, and
//! converge; it also floods valid roster records (proposals nobody
//! approves). No honest write may be lost: a member whose chain was
//! built on a frozen version rotates its key, which carries its writes
//! over. Every choice comes
//! from one seeded generator and the engine keeps no hash-ordered state, so
//! a seed replays exactly: [`Outcome::trace`] digests every delivery.
//!
//! The bus is harsher than libp2p in one way: it has no allow-list, so the
//! stranger's requests reach the engines, which must refuse them on their
//! own.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use concord_node::bundle::EnvelopeBytes;
use concord_node::config::{Config, DataDir};
use concord_node::doc::NewAssessment;
use concord_node::engine::{Engine, Purpose, Transport};
use concord_node::envelope::Envelope;
use concord_node::genesis::NetworkId;
use concord_node::governance::Op;
use concord_node::identity::{Identity, PublicKey};
use concord_node::model::Status;
use concord_node::replica::{Replica, ReplicaError};
use concord_node::roster::{Role, RosterEntry};
use concord_node::store::StoreError;
use concord_node::sync;
use rand::{Rng, RngExt, SeedableRng};
use rand_pcg::Pcg64;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// What one run does; [`Plan::default`] is the scenario.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Changes the members write (some are refused, e.g. by the removed
    /// member after it learns of its removal).
    pub writes: usize,
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    pub partitions: usize,
    pub restarts: usize,
    /// Changes the stranger and the observer each try to push.
    pub intruder_changes: usize,
    /// Changes with hostile values member C signs and pushes.
    pub hostile_changes: usize,
    /// Times member C gives A and B two versions of one change number.
    pub forks: usize,
    /// Valid roster records C floods the network with: proposals to admit
    /// keys nobody else approves, pending for good.
    pub flood_records: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            writes: 2_000,
            drop: 0.10,
            duplicate: 0.05,
            partitions: 20,
            restarts: 5,
            intruder_changes: 20,
            hostile_changes: 20,
            forks: 2,
            flood_records: 30,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    /// SHA-256 over every delivery, fault and write decision, in order.
    pub trace: [u8; 32],
    /// Changes in the converged document.
    pub changes: usize,
    /// Member writes that their own node refused (after a removal).
    pub refused_locally: usize,
    /// Changes stored but rejected under the final roster (the removed
    /// member's writes after its removal).
    pub rejected: usize,
    /// Requests refused by an engine (stranger, observer, removed member).
    pub refusals: usize,
    /// C's pushes of hostile values that the receiving engine refused.
    pub hostile_refused: usize,
    /// Where the honest nodes froze C's chain for its fork (0: neither
    /// version of any fork reached an honest node).
    pub c_frozen_at: u64,
    /// Key rotations by A or B after a write of theirs stopped counting.
    pub rotations: usize,
    /// Assessments A and B wrote, every one of them in the converged state.
    pub honest_writes: usize,
    /// Valid roster records C signed that nobody approved.
    pub flooded: usize,
    pub messages: usize,
    pub dropped: usize,
    pub duplicated: usize,
    /// Virtual time from the end of the last fault (heal or restart) and
    /// the last write until every honest node held the same state.
    pub converged_after: Duration,
}

/// What must be equal on converged nodes: sorted heads, the records'
/// digest, the changes that count, and the fork points' digest.
type State = (Vec<u8>, [u8; 32], usize, [u8; 32]);

/// Virtual milliseconds since the start of the run.
type Ms = u64;

/// Index of a node in the simulation.
type Ix = usize;

const A: Ix = 0;
const B: Ix = 1;
const C: Ix = 2;
const OBSERVER: Ix = 3;
const STRANGER: Ix = 4;
const NAMES: [&str; 5] = ["A", "B", "C", "Observer", "Stranger"];

/// Request timeout of the bus, as libp2p's request-response would give.
const TIMEOUT: Ms = 10_000;
/// How long after a drop a node redials, as the node's back-off.
const REDIAL: Ms = 500;
/// Virtual time allowed for convergence after the last fault.
const SETTLE: Ms = 120_000;

/// The engine's transport in the simulation: everything it asks is queued
/// and taken by the harness after each call.
#[derive(Debug, Default)]
struct Outbox {
    sent: Vec<(PublicKey, Purpose, sync::Request)>,
    disconnects: Vec<PublicKey>,
}

impl Transport for Outbox {
    type Peer = PublicKey;
    fn peer_of(key: &PublicKey) -> Option<PublicKey> {
        Some(*key)
    }
    fn send(&mut self, peer: PublicKey, purpose: Purpose, request: sync::Request) {
        self.sent.push((peer, purpose, request));
    }
    fn disconnect(&mut self, peer: PublicKey) {
        self.disconnects.push(peer);
    }
    fn allow(&mut self, _peer: PublicKey, _key: PublicKey) {}
    fn disallow(&mut self, peer: PublicKey) {
        self.disconnects.push(peer);
    }
    fn changed(&mut self) {}
}

struct SimNode {
    identity: Identity,
    dir: TempDir,
    engine: Option<Engine<Outbox>>,
}

impl SimNode {
    fn key(&self) -> PublicKey {
        self.identity.public()
    }
}

#[derive(Clone, Debug)]
enum What {
    Request {
        id: u64,
        from: Ix,
        to: Ix,
        request: Box<sync::Request>,
    },
    Response {
        id: u64,
        from: Ix,
        to: Ix,
        response: Box<sync::Response>,
    },
    /// A request's answer did not come in time.
    Timeout {
        id: u64,
    },
    Write {
        node: Ix,
    },
    Intrude {
        node: Ix,
    },
    /// Member C pushes a change carrying a value Concord never writes.
    Hostile,
    /// Member C gives A and B two versions of its next change number.
    Fork,
    /// Member C signs one more valid roster record nobody will approve.
    Flood,
    Partition,
    Heal,
    Down {
        node: Ix,
    },
    Up {
        node: Ix,
    },
    Redial,
    Tick,
    Propose {
        by: Ix,
        target: Ix,
    },
    Approve {
        by: Ix,
        target: Ix,
    },
}

/// An event due at `at`; `seq` keeps equal times in the order scheduled.
#[derive(Debug)]
struct Due {
    at: Ms,
    seq: u64,
    what: What,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A request waiting for its answer.
struct Pending {
    from: Ix,
    to: Ix,
    purpose: Purpose,
}

struct Sim {
    plan: Plan,
    rng: Pcg64,
    base: Instant,
    now: Ms,
    seq: u64,
    queue: BinaryHeap<Due>,
    nodes: Vec<SimNode>,
    /// Connected pairs (lower index first).
    links: BTreeSet<(Ix, Ix)>,
    /// Which side of the current partition each node is on.
    side: Option<[bool; 5]>,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    trace: Sha256,
    /// Assessment ids written so far, to comment on.
    assessments: Vec<String>,
    /// Changes the intruders sign, by intruder, with the next to push.
    intruder: BTreeMap<Ix, (Vec<EnvelopeBytes>, usize)>,
    proposals: BTreeMap<Ix, String>,
    /// Ids of C's hostile pushes, to count their refusals.
    hostile_ids: BTreeSet<u64>,
    /// When the last fault ended (a heal, a restarted node back up) or the
    /// last write was made, whichever is later.
    quiet_from: Ms,
    /// Replicas opened during setup, taken by each node's first start.
    opened: Vec<Option<Replica>>,
    /// Every assessment A and B wrote: (node, id, change); each must be in
    /// the converged document, carried over if its change stopped counting.
    honest_writes: Vec<(Ix, String, automerge::ChangeHash)>,
    /// The roster records after the last key rotation.
    successions: Vec<EnvelopeBytes>,
    stats: Outcome,
}

/// How many kinds of hostile value [`hostile_change`] makes.
const HOSTILE_VARIANTS: u8 = 8;
/// Part of every item id a hostile change writes under.
const HOSTILE_ID: &str = "hostile";

/// A change by `signer` on top of `doc` that carries one value Concord's
/// own writes never make, of kind `variant`.
fn hostile_change(
    doc: &automerge::Automerge,
    signer: &Identity,
    variant: u8,
    now: Ms,
) -> Result<Vec<u8>, String> {
    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::{ActorId, AutomergeError, ObjType, ROOT, ScalarValue};
    let mut fork = doc
        .fork()
        .with_actor(ActorId::from(signer.public().as_bytes().as_slice()));
    let id = format!("a/ra-{HOSTILE_ID}-{now}");
    let time = if variant == 4 {
        i64::MAX
    } else {
        1_700_000_000_000 + now as i64
    };
    let options = CommitOptions::default().with_time(time);
    fork.transact_with::<_, _, AutomergeError, _>(
        |_| options,
        |tx| {
            let obj = tx.put_object(ROOT, id.as_str(), ObjType::Map)?;
            tx.put(&obj, "category", "algorithmic-bias")?;
            tx.put(&obj, "title", "An ordinary-looking title")?;
            tx.put(&obj, "status", "open")?;
            tx.put(&obj, "created_at", ScalarValue::Timestamp(time))?;
            match variant {
                0 => tx.put(
                    &obj,
                    "created_at",
                    ScalarValue::Timestamp(253_402_300_800_000),
                )?,
                1 => tx.put(&obj, "title", 7)?,
                2 => tx.put(&obj, "status", "bogus")?,
                3 => tx.put(&obj, "likelihood", 99)?,
                4 => {} // the commit time itself
                5 => tx.put(&obj, "summary", "x".repeat(30_000))?,
                6 => {
                    let text = tx.put_object(&obj, "summary", ObjType::Text)?;
                    tx.splice_text(&text, 0, 0, "\u{1b}[2J")?;
                }
                _ => {
                    let note =
                        tx.put_object(ROOT, format!("n/cn-{HOSTILE_ID}-{now}"), ObjType::Map)?;
                    let filed = tx.put_object(&note, "positions", ObjType::Map)?;
                    tx.put_object(&filed, "not a node id", ObjType::Map)?;
                }
            }
            Ok(())
        },
    )
    .map_err(|e| format!("hostile change: {e:?}"))?;
    fork.get_last_local_change()
        .map(|c| c.raw_bytes().to_vec())
        .ok_or_else(|| "hostile change: none made".to_string())
}

/// Runs one seed of `plan`. `Err` says what went wrong, with the seed.
pub fn run(seed: u64, plan: &Plan) -> Result<Outcome, String> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Sim::new(seed, plan.clone()).and_then(Sim::run)
    }));
    match result {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(e)) => Err(format!("seed {seed}: {e}")),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("seed {seed}: panicked: {text}"))
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} changes converged {:.1} s after the last fault; {} messages ({} dropped, \
             {} duplicated); {} writes refused locally, {} stored changes rejected, {} requests \
             refused ({} hostile values); C frozen at {}, flooded {} records; {} rotations, \
             {} honest writes all kept; trace {}",
            self.seed,
            self.changes,
            self.converged_after.as_secs_f64(),
            self.messages,
            self.dropped,
            self.duplicated,
            self.refused_locally,
            self.rejected,
            self.refusals,
            self.hostile_refused,
            self.c_frozen_at,
            self.flooded,
            self.rotations,
            self.honest_writes,
            hex::encode(&self.trace[..8]),
        )
    }
}

/// Opens a replica, waiting out the lock a store just closed may still hold
/// for a moment (sled releases it from its flusher thread).
fn open(dir: &Path) -> Result<Replica, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Replica::open(&DataDir::new(dir)) {
            Err(ReplicaError::Store(StoreError::Locked(_))) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.map_err(|e| format!("cannot open {}: {e}", dir.display())),
        }
    }
}

/// Where the stores live: memory-backed when the machine has it, since the
/// run flushes thousands of times and durability is not what it tests.
fn scratch() -> Result<TempDir, String> {
    let shm = Path::new("/dev/shm");
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("concord-sim-");
        b
    };
    if shm.is_dir()
        && let Ok(dir) = builder().tempdir_in(shm)
    {
        return Ok(dir);
    }
    builder().tempdir().map_err(|e| format!("tempdir: {e}"))
}

impl Sim {
    fn new(seed: u64, plan: Plan) -> Result<Self, String> {
        let mut rng = Pcg64::seed_from_u64(seed);
        let mut nodes = Vec::new();
        for name in NAMES {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            let identity = Identity::from_secret(secret);
            let dir = scratch()?;
            let data = DataDir::new(dir.path());
            identity
                .save_new(&data.key_file())
                .map_err(|e| format!("key: {e}"))?;
            Config::new(name)
                .and_then(|c| c.write_new(&data.config_file()))
                .map_err(|e| format!("config: {e}"))?;
            nodes.push(SimNode {
                identity,
                dir,
                engine: None,
            });
        }
        let roster: Vec<RosterEntry> = (A..=OBSERVER)
            .map(|i| RosterEntry {
                key: nodes[i].key(),
                name: NAMES[i].to_string(),
                role: if i == OBSERVER {
                    Role::Observer
                } else {
                    Role::Member
                },
            })
            .collect();
        // The replicas stay open for the first start: reopening a store just
        // closed waits for sled to let go of it.
        let mut founder = open(nodes[A].dir.path())?;
        let genesis = founder
            .create_network("Simulation", roster, Some(2))
            .map_err(|e| format!("create: {e}"))?;
        let mut opened = vec![Some(founder)];
        for (i, node) in nodes.iter().enumerate().skip(1) {
            let mut replica = open(node.dir.path())?;
            let joined = if i == STRANGER {
                replica.join_pending(genesis.clone())
            } else {
                replica.join(genesis.clone())
            };
            joined.map_err(|e| format!("join: {e}"))?;
            // The harness made these keys for this run.
            replica.key_is_new().map_err(|e| format!("key: {e}"))?;
            opened.push(Some(replica));
        }
        // The intruders' changes: validly signed, by keys that may not write.
        let mut intruder = BTreeMap::new();
        for i in [OBSERVER, STRANGER] {
            let envelopes = crate::forge::changes(nodes[i].key(), NAMES[i], plan.intruder_changes)
                .into_iter()
                .map(|change| {
                    Envelope::sign(&nodes[i].identity, genesis.network_id(), change)
                        .map(|e| EnvelopeBytes(e.encode()))
                        .map_err(|e| format!("sign: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            intruder.insert(i, (envelopes, 0));
        }
        let stats = Outcome {
            seed,
            trace: [0; 32],
            changes: 0,
            refused_locally: 0,
            rejected: 0,
            refusals: 0,
            hostile_refused: 0,
            c_frozen_at: 0,
            rotations: 0,
            honest_writes: 0,
            flooded: 0,
            messages: 0,
            dropped: 0,
            duplicated: 0,
            converged_after: Duration::ZERO,
        };
        Ok(Self {
            plan,
            rng,
            base: Instant::now(),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            links: BTreeSet::new(),
            side: None,
            pending: BTreeMap::new(),
            next_id: 0,
            trace: Sha256::new(),
            assessments: Vec::new(),
            intruder,
            proposals: BTreeMap::new(),
            hostile_ids: BTreeSet::new(),
            quiet_from: 0,
            opened,
            honest_writes: Vec::new(),
            successions: Vec::new(),
            stats,
        })
    }

    fn at(&mut self, delay: Ms, what: What) {
        self.seq += 1;
        self.queue.push(Due {
            at: self.now + delay,
            seq: self.seq,
            what,
        });
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    fn note(&mut self, parts: &[u64]) {
        self.trace.update(self.now.to_le_bytes());
        for p in parts {
            self.trace.update(p.to_le_bytes());
        }
    }

    fn run(mut self) -> Result<Outcome, String> {
        for i in 0..self.nodes.len() {
            self.start(i)?;
        }
        // Writes spread over a minute; faults over the same span.
        let span: Ms = 60_000;
        for _ in 0..self.plan.writes {
            let at = self.rng.random_range(0..span);
            let node = self.rng.random_range(A..=C);
            self.at(at, What::Write { node });
        }
        for node in [OBSERVER, STRANGER] {
            for _ in 0..self.plan.intruder_changes {
                let at = self.rng.random_range(0..span);
                self.at(at, What::Intrude { node });
            }
        }
        for _ in 0..self.plan.hostile_changes {
            let at = self.rng.random_range(0..span);
            self.at(at, What::Hostile);
        }
        // Before C's removal can take effect, so both versions count at
        // first where they land.
        for _ in 0..self.plan.forks {
            let at = self.rng.random_range(0..span / 4);
            self.at(at, What::Fork);
        }
        for _ in 0..self.plan.flood_records {
            let at = self.rng.random_range(0..span / 2);
            self.at(at, What::Flood);
        }
        let mut t = 0;
        let gap = span / (self.plan.partitions as u64 + 1);
        for _ in 0..self.plan.partitions {
            t += self.rng.random_range(gap / 4..gap);
            self.at(t, What::Partition);
            t += self.rng.random_range(gap / 8..gap / 2);
            self.at(t, What::Heal);
        }
        let last_heal = t;
        self.quiet_from = last_heal.max(span);
        for _ in 0..self.plan.restarts {
            let at = self.rng.random_range(0..span);
            let node = self.rng.random_range(A..=OBSERVER);
            self.at(at, What::Down { node });
        }
        // Two removals by quorum while the members write: C by A (with B),
        // the observer by B (with A).
        let first = self.rng.random_range(span / 4..span / 2);
        self.at(first, What::Propose { by: A, target: C });
        let second = self.rng.random_range(span / 4..span * 3 / 4);
        self.at(
            second,
            What::Propose {
                by: B,
                target: OBSERVER,
            },
        );
        self.at(1_000, What::Tick);

        let end = last_heal.max(span) + SETTLE;
        let mut settled_at = None;
        while let Some(due) = self.queue.pop() {
            if due.at > end {
                break;
            }
            self.now = due.at;
            self.handle(due.what)?;
            if self.now >= self.quiet_from && self.converged()? {
                settled_at = Some(self.now);
                break;
            }
        }
        let Some(settled) = settled_at else {
            return Err(format!(
                "honest nodes did not converge within {} s of the last fault: {}",
                SETTLE / 1000,
                self.describe()?
            ));
        };
        self.stats.converged_after = Duration::from_millis(settled - self.quiet_from);
        self.check_final()?;
        self.stats.trace = std::mem::take(&mut self.trace).finalize().into();
        Ok(self.stats)
    }

    fn handle(&mut self, what: What) -> Result<(), String> {
        match what {
            What::Request {
                id,
                from,
                to,
                request,
            } => {
                self.note(&[1, id, from as u64, to as u64]);
                if !self.linked(from, to) {
                    return Ok(()); // lost with its connection; it times out
                }
                let now = self.instant();
                let from_key = self.nodes[from].key();
                let Some(engine) = self.nodes[to].engine.as_mut() else {
                    return Ok(());
                };
                let response = engine.handle_request(from_key, *request, now);
                self.flush_outbox(to)?;
                if matches!(response, sync::Response::Refused { .. }) {
                    // The refusing side closes the connection after its
                    // answer; the requester sees the request fail.
                    self.stats.refusals += 1;
                    if self.hostile_ids.contains(&id) {
                        self.stats.hostile_refused += 1;
                    }
                    return self.cut(from, to);
                }
                self.transmit(What::Response {
                    id,
                    from: to,
                    to: from,
                    response: Box::new(response),
                });
            }
            What::Response {
                id,
                from,
                to,
                response,
            } => {
                self.note(&[2, id, from as u64, to as u64]);
                let Some(pending) = self.pending.remove(&id) else {
                    return Ok(()); // a duplicate, or already timed out
                };
                let now = self.instant();
                let from_key = self.nodes[from].key();
                if let Some(engine) = self.nodes[to].engine.as_mut() {
                    engine.handle_outcome(from_key, pending.purpose, Ok(*response), now);
                    self.flush_outbox(to)?;
                }
            }
            What::Timeout { id } => {
                if let Some(p) = self.pending.remove(&id) {
                    self.note(&[3, id]);
                    self.fail(p)?;
                }
            }
            What::Write { node } => self.write(node)?,
            What::Intrude { node } => self.intrude(node)?,
            What::Hostile => self.hostile()?,
            What::Fork => self.fork()?,
            What::Flood => self.flood()?,
            What::Partition => {
                let mut side = [false; 5];
                for s in &mut side {
                    *s = self.rng.random_bool(0.5);
                }
                self.note(&[4, side.iter().fold(0, |acc, &s| acc * 2 + u64::from(s))]);
                self.side = Some(side);
                let cut: Vec<(Ix, Ix)> = self
                    .links
                    .iter()
                    .filter(|(a, b)| side[*a] != side[*b])
                    .copied()
                    .collect();
                for (a, b) in cut {
                    self.cut(a, b)?;
                }
            }
            What::Heal => {
                self.note(&[5]);
                self.side = None;
                self.connect_all()?;
            }
            What::Down { node } => {
                self.note(&[6, node as u64]);
                if self.nodes[node].engine.is_none() {
                    return Ok(());
                }
                let peers: Vec<(Ix, Ix)> = self
                    .links
                    .iter()
                    .filter(|(a, b)| *a == node || *b == node)
                    .copied()
                    .collect();
                for (a, b) in peers {
                    self.cut(a, b)?;
                }
                // Closing the replica flushes it; a crash mid-write is the
                // crash test's business, not this one's.
                drop(self.nodes[node].engine.take());
                let back = self.rng.random_range(500..5_000);
                self.at(back, What::Up { node });
            }
            What::Up { node } => {
                self.note(&[7, node as u64]);
                self.quiet_from = self.quiet_from.max(self.now);
                self.start(node)?;
            }
            What::Redial => {
                self.note(&[8]);
                self.connect_all()?;
            }
            What::Tick => {
                let now = self.instant();
                for i in 0..self.nodes.len() {
                    if let Some(engine) = self.nodes[i].engine.as_mut() {
                        engine.tick(now);
                        self.flush_outbox(i)?;
                    }
                }
                self.at(1_000, What::Tick);
            }
            What::Propose { by, target } => self.propose(by, target)?,
            What::Approve { by, target } => self.approve(by, target)?,
        }
        Ok(())
    }

    /// Starts (or restarts) node `i` from its store and connects it.
    fn start(&mut self, i: Ix) -> Result<(), String> {
        let replica = match self.opened[i].take() {
            Some(replica) => replica,
            None => open(self.nodes[i].dir.path())?,
        };
        let engine = Engine::new(replica, Outbox::default(), self.instant())
            .map_err(|e| format!("{}: engine: {e}", NAMES[i]))?;
        self.nodes[i].engine = Some(engine);
        self.hand_successions(i)?;
        self.connect_all()
    }

    fn linked(&self, a: Ix, b: Ix) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
    }

    /// Whether `a` and `b` may hold a connection now: both up, on the same
    /// side of any partition, and (for an honest pair) on each other's
    /// roster. The stranger "connects" to everyone: there is no allow-list
    /// on the bus, so the engines must refuse it themselves.
    fn may_link(&self, a: Ix, b: Ix) -> bool {
        let (Some(ea), Some(eb)) = (&self.nodes[a].engine, &self.nodes[b].engine) else {
            return false;
        };
        if self.side.is_some_and(|s| s[a] != s[b]) {
            return false;
        }
        if a == STRANGER || b == STRANGER {
            return true;
        }
        ea.peer(&self.nodes[b].key()).is_some() && eb.peer(&self.nodes[a].key()).is_some()
    }

    /// Connects every pair that may be connected and is not.
    fn connect_all(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        for a in 0..n {
            for b in a + 1..n {
                if !self.linked(a, b) && self.may_link(a, b) {
                    self.links.insert((a, b));
                    self.note(&[9, a as u64, b as u64]);
                    let now = self.instant();
                    for (me, other) in [(a, b), (b, a)] {
                        let key = self.nodes[other].key();
                        if let Some(engine) = self.nodes[me].engine.as_mut() {
                            engine.connected(key, now);
                        }
                        self.flush_outbox(me)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Closes the connection between `a` and `b`: both engines hear of it,
    /// and requests in flight between them fail.
    fn cut(&mut self, a: Ix, b: Ix) -> Result<(), String> {
        if !self.links.remove(&(a.min(b), a.max(b))) {
            return Ok(());
        }
        self.note(&[10, a as u64, b as u64]);
        for (me, other) in [(a, b), (b, a)] {
            let key = self.nodes[other].key();
            if let Some(engine) = self.nodes[me].engine.as_mut() {
                engine.disconnected(key);
            }
        }
        let failed: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| (p.from, p.to) == (a, b) || (p.from, p.to) == (b, a))
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some(p) = self.pending.remove(&id) {
                self.fail(p)?;
            }
        }
        self.at(REDIAL, What::Redial);
        Ok(())
    }

    fn fail(&mut self, p: Pending) -> Result<(), String> {
        let now = self.instant();
        let key = self.nodes[p.to].key();
        if let Some(engine) = self.nodes[p.from].engine.as_mut() {
            engine.handle_outcome(key, p.purpose, Err("connection lost".into()), now);
            self.flush_outbox(p.from)?;
        }
        Ok(())
    }

    /// Puts a message on the bus: lost, delivered once, or twice, each copy
    /// after its own delay (so messages overtake each other).
    fn transmit(&mut self, what: What) {
        self.stats.messages += 1;
        if self.rng.random_bool(self.plan.drop) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.random_bool(self.plan.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.random_range(1..40);
            self.at(delay, what.clone());
        }
    }

    /// Takes what node `i`'s engine asked of its transport.
    fn flush_outbox(&mut self, i: Ix) -> Result<(), String> {
        let Some(engine) = self.nodes[i].engine.as_mut() else {
            return Ok(());
        };
        let outbox = std::mem::take(engine.transport_mut());
        for (peer, purpose, request) in outbox.sent {
            let Some(to) = self.index_of(&peer) else {
                continue;
            };
            let id = self.next_id;
            self.next_id += 1;
            if !self.linked(i, to) {
                // Sent on no connection: fails at once, as libp2p would.
                self.fail(Pending {
                    from: i,
                    to,
                    purpose,
                })?;
                continue;
            }
            self.pending.insert(
                id,
                Pending {
                    from: i,
                    to,
                    purpose,
                },
            );
            self.at(TIMEOUT, What::Timeout { id });
            self.transmit(What::Request {
                id,
                from: i,
                to,
                request: Box::new(request),
            });
        }
        for peer in outbox.disconnects {
            if let Some(other) = self.index_of(&peer) {
                self.cut(i, other)?;
            }
        }
        Ok(())
    }

    fn index_of(&self, key: &PublicKey) -> Option<Ix> {
        self.nodes.iter().position(|n| n.key() == *key)
    }

    /// A member writes: a new assessment, or a comment on one it holds.
    fn write(&mut self, node: Ix) -> Result<(), String> {
        let pick = self.rng.random_range(0..10u32);
        let target = if self.assessments.is_empty() {
            None
        } else {
            let k = self.rng.random_range(0..self.assessments.len());
            Some(self.assessments[k].clone())
        };
        self.note(&[11, node as u64, u64::from(pick)]);
        let Some(engine) = self.nodes[node].engine.as_mut() else {
            return Ok(()); // down: the write never happens
        };
        let before = engine.replica().tips().clone();
        let replica = engine.replica_mut();
        let comment_on = target.filter(|id| pick >= 3 && replica.document().has_assessment(id));
        let is_comment = comment_on.is_some();
        let result = match comment_on {
            Some(id) => replica.comment(&id, &format!("comment {}", self.now)),
            None => replica
                .add_assessment(NewAssessment {
                    category: "algorithmic-bias".into(),
                    title: format!("{} at {}", NAMES[node], self.now),
                    summary: String::new(),
                    likelihood: None,
                    severity: None,
                    mitigations: Vec::new(),
                    status: Status::Draft,
                })
                .map(|(id, hash)| {
                    self.assessments.push(id);
                    hash
                }),
        };
        match result {
            Ok(hash) => {
                if !is_comment && node != C {
                    let id = self.assessments.last().cloned().unwrap_or_default();
                    self.honest_writes.push((node, id, hash));
                }
                engine.committed(&before);
                self.flush_outbox(node)
            }
            Err(ReplicaError::TaintedChain { .. }) if node != C => {
                // As its operator would: rotate the key, which carries the
                // writes that no longer count over, then write.
                self.stats.rotations += 1;
                self.rotate(node)?;
                self.write(node)
            }
            Err(
                ReplicaError::NotOnRoster { .. }
                | ReplicaError::ObserverCannotWrite
                | ReplicaError::TaintedChain { .. }
                | ReplicaError::OwnKeyFrozen { .. },
            ) => {
                self.stats.refused_locally += 1;
                Ok(())
            }
            Err(e) => Err(format!("{} cannot write: {e}", NAMES[node])),
        }
    }

    /// Rotates `node`'s key as `concord key rotate` does on a running node:
    /// the succession reaches every member (here handed over directly, as
    /// the real node pushes it before it restarts its network), the node's
    /// connections drop and are dialled again under the new key.
    fn rotate(&mut self, node: Ix) -> Result<(), String> {
        self.note(&[17, node as u64]);
        let now = self.instant();
        let Some(engine) = self.nodes[node].engine.as_mut() else {
            return Ok(());
        };
        engine
            .replica_mut()
            .rotate_key()
            .map_err(|e| format!("{} cannot rotate: {e}", NAMES[node]))?;
        let identity = engine.replica().identity().clone();
        let records = engine.replica().records_wire();
        engine.follow_roster(now);
        for other in 0..self.nodes.len() {
            if other != node {
                self.cut(node, other)?;
            }
        }
        self.nodes[node].identity = identity;
        self.successions = records;
        for other in 0..self.nodes.len() {
            self.hand_successions(other)?;
        }
        Ok(())
    }

    /// Gives `node` (if up) the roster records of the last rotation, as an
    /// operator carries a succession to a member that was down.
    fn hand_successions(&mut self, node: Ix) -> Result<(), String> {
        if self.successions.is_empty() || node == STRANGER {
            return Ok(());
        }
        let now = self.instant();
        let records = self.successions.clone();
        if let Some(engine) = self.nodes[node].engine.as_mut() {
            engine
                .replica_mut()
                .add_records(&records)
                .map_err(|e| format!("{} refuses the succession: {e}", NAMES[node]))?;
            engine.follow_roster(now);
        }
        Ok(())
    }

    /// The stranger or the observer pushes one of its own signed changes to
    /// a random node it is connected to.
    fn intrude(&mut self, node: Ix) -> Result<(), String> {
        let peers: Vec<Ix> = (0..self.nodes.len())
            .filter(|&p| p != node && self.linked(node, p))
            .collect();
        if peers.is_empty() {
            return Ok(());
        }
        let to = peers[self.rng.random_range(0..peers.len())];
        let Some((envelopes, next)) = self.intruder.get_mut(&node) else {
            return Ok(());
        };
        // Chained: the first not yet sent, with everything before it.
        let count = (*next + 1).min(envelopes.len());
        *next = count;
        let batch = envelopes[..count].to_vec();
        let Some(engine) = self.nodes[node].engine.as_ref() else {
            return Ok(());
        };
        let request = sync::Request::Push {
            network: engine.network(),
            records: Vec::new(),
            envelopes: batch,
            proofs: Vec::new(),
            versions: Vec::new(),
        };
        self.note(&[12, node as u64, to as u64, count as u64]);
        let id = self.next_id;
        self.next_id += 1;
        // The intruder does not care for the answer.
        self.transmit(What::Request {
            id,
            from: node,
            to,
            request: Box::new(request),
        });
        Ok(())
    }

    /// Member C signs, on top of its own document, a change carrying a
    /// value Concord never writes, and pushes it to a peer without storing
    /// it (so its next honest change takes the same number, as a member
    /// that lies to one peer would).
    fn hostile(&mut self) -> Result<(), String> {
        let peers: Vec<Ix> = (0..self.nodes.len())
            .filter(|&p| p != C && self.linked(C, p))
            .collect();
        if peers.is_empty() {
            return Ok(());
        }
        let to = peers[self.rng.random_range(0..peers.len())];
        let variant: u8 = self.rng.random_range(0..HOSTILE_VARIANTS);
        self.note(&[15, to as u64, u64::from(variant)]);
        let Some(engine) = self.nodes[C].engine.as_ref() else {
            return Ok(());
        };
        let replica = engine.replica();
        let network = engine.network();
        let change = hostile_change(
            replica.document().automerge(),
            &self.nodes[C].identity,
            variant,
            self.now,
        )?;
        let envelope = Envelope::sign(&self.nodes[C].identity, network, change)
            .map_err(|e| format!("sign: {e}"))?;
        let id = self.push_from_c(to, network, &envelope);
        self.hostile_ids.insert(id);
        Ok(())
    }

    /// C pushes one envelope to `to` without storing it; returns the
    /// request's id.
    fn push_from_c(&mut self, to: Ix, network: NetworkId, envelope: &Envelope) -> u64 {
        let request =
            sync::Request::push_envelopes(network, vec![EnvelopeBytes(envelope.encode())]);
        let id = self.next_id;
        self.next_id += 1;
        self.transmit(What::Request {
            id,
            from: C,
            to,
            request: Box::new(request),
        });
        id
    }

    /// Member C signs two ordinary versions of its next change number on
    /// top of its own document, stores neither, and pushes one to A and the
    /// other to B (each only if linked): a fork that splits the honest
    /// members unless they find it.
    fn fork(&mut self) -> Result<(), String> {
        self.note(&[16]);
        let Some(engine) = self.nodes[C].engine.as_ref() else {
            return Ok(());
        };
        let network = engine.network();
        let saved = engine.replica().document().save();
        let mut versions = Vec::new();
        for side in ["A", "B"] {
            let mut doc = concord_node::doc::Document::load(&saved, self.nodes[C].key())
                .map_err(|e| format!("fork: {e}"))?;
            let new = NewAssessment {
                category: "algorithmic-bias".into(),
                title: format!("C's version for {side} at {}", self.now),
                summary: String::new(),
                likelihood: None,
                severity: None,
                mitigations: Vec::new(),
                status: Status::Draft,
            };
            let change = doc
                .add_assessment(
                    &format!("ra-fork-{side}-{}", self.now),
                    &new,
                    concord_node::model::now_ms(),
                )
                .map_err(|e| format!("fork: {e}"))?;
            let envelope = Envelope::sign(
                &self.nodes[C].identity,
                network,
                change.raw_bytes().to_vec(),
            )
            .map_err(|e| format!("sign: {e}"))?;
            versions.push(envelope);
        }
        for (to, envelope) in [A, B].into_iter().zip(versions) {
            if !self.linked(C, to) {
                continue;
            }
            self.push_from_c(to, network, &envelope);
        }
        Ok(())
    }

    /// Member C proposes to admit a key of its own making, which nobody
    /// approves: one more valid, pending roster record on every node.
    fn flood(&mut self) -> Result<(), String> {
        let mut secret = [0u8; 32];
        self.rng.fill_bytes(&mut secret);
        self.note(&[18]);
        let key = Identity::from_secret(secret).public();
        let now = self.instant();
        let Some(engine) = self.nodes[C].engine.as_mut() else {
            return Ok(());
        };
        let proposed = engine.replica_mut().propose(Op::Add {
            key,
            name: format!("flood {}", self.now),
            role: Role::Observer,
        });
        match proposed {
            Ok(_) => {
                self.stats.flooded += 1;
                engine.records_changed(now);
                self.flush_outbox(C)
            }
            // Removed by now: it can flood no more.
            Err(ReplicaError::NotAMember | ReplicaError::NoNetwork) => Ok(()),
            Err(e) => Err(format!("C cannot propose: {e}")),
        }
    }

    fn propose(&mut self, by: Ix, target: Ix) -> Result<(), String> {
        self.note(&[13, by as u64, target as u64]);
        let key = self.nodes[target].key();
        let now = self.instant();
        let Some(engine) = self.nodes[by].engine.as_mut() else {
            self.at(500, What::Propose { by, target });
            return Ok(());
        };
        let id = engine
            .replica_mut()
            .propose(Op::Remove { key })
            .map_err(|e| format!("{} cannot propose: {e}", NAMES[by]))?;
        engine.records_changed(now);
        self.flush_outbox(by)?;
        self.proposals.insert(target, id.to_hex());
        let approver = if by == A { B } else { A };
        let wait = self.rng.random_range(100..3_000);
        self.at(
            wait,
            What::Approve {
                by: approver,
                target,
            },
        );
        Ok(())
    }

    /// Approves the removal of `target`, once the proposal has reached the
    /// approver (retried until then).
    fn approve(&mut self, by: Ix, target: Ix) -> Result<(), String> {
        self.note(&[14, by as u64, target as u64]);
        let Some(prefix) = self.proposals.get(&target).cloned() else {
            return Err("approval before its proposal".into());
        };
        let now = self.instant();
        let Some(engine) = self.nodes[by].engine.as_mut() else {
            self.at(500, What::Approve { by, target });
            return Ok(());
        };
        // The target writes on while the removal is pending, so the
        // approver may hold more (or less) of its chain than the proposal
        // claims: its operator, who wants the target gone, confirms.
        let approved = match engine.replica_mut().approve(&prefix, false) {
            Err(ReplicaError::Claim(_)) => engine.replica_mut().approve(&prefix, true),
            other => other,
        };
        match approved {
            Ok(_) => {
                engine.records_changed(now);
                self.flush_outbox(by)
            }
            Err(ReplicaError::UnknownProposal(_)) => {
                self.at(500, What::Approve { by, target });
                Ok(())
            }
            Err(e) => Err(format!("{} cannot approve: {e}", NAMES[by])),
        }
    }

    /// The nodes that must agree: those on the roster in force, as the
    /// first member that is up knows it.
    fn honest(&self) -> Result<Vec<Ix>, String> {
        let replica = [A, B]
            .iter()
            .find_map(|&i| self.nodes[i].engine.as_ref())
            .ok_or("both remaining members are down")?
            .replica();
        let roster = replica.roster().map_err(|e| e.to_string())?;
        Ok((0..self.nodes.len())
            .filter(|&i| roster.get(&self.nodes[i].key()).is_some())
            .collect())
    }

    fn state_of(&self, i: Ix) -> Option<State> {
        let replica = self.nodes[i].engine.as_ref()?.replica();
        let mut heads: Vec<u8> = replica
            .document()
            .heads()
            .iter()
            .flat_map(|h| h.0)
            .collect();
        heads.sort_unstable();
        Some((
            heads,
            replica.records_digest(),
            replica.change_count(),
            concord_node::fork::digest(replica.frozen()),
        ))
    }

    fn converged(&self) -> Result<bool, String> {
        // Both removals must have taken effect everywhere first.
        let honest = self.honest()?;
        if honest.contains(&C) || honest.contains(&OBSERVER) {
            return Ok(false);
        }
        let states: Vec<_> = honest.iter().map(|&i| self.state_of(i)).collect();
        Ok(states.iter().all(Option::is_some) && states.windows(2).all(|w| w[0] == w[1]))
    }

    fn describe(&self) -> Result<String, String> {
        let honest = self.honest()?;
        Ok((0..self.nodes.len())
            .map(|i| match self.state_of(i) {
                Some((_, records, count, _)) => format!(
                    "{}{}: {count} changes, records {}",
                    NAMES[i],
                    if honest.contains(&i) { "" } else { " (off)" },
                    hex::encode(&records[..4])
                ),
                None => format!("{}: down", NAMES[i]),
            })
            .collect::<Vec<_>>()
            .join("; "))
    }

    /// What must hold once converged: every change any honest node counts
    /// is one the final roster lets its author write: none by the stranger
    /// or the observer, none by C past the end of its span.
    fn check_final(&mut self) -> Result<(), String> {
        use automerge::ReadDoc;
        let honest = self.honest()?;
        let stranger = self.nodes[STRANGER].key();
        let observer = self.nodes[OBSERVER].key();
        for &i in &honest {
            let replica = self.nodes[i].engine.as_ref().ok_or("down")?.replica();
            let roster = replica.roster().map_err(|e| e.to_string())?;
            for (hash, author, seq) in replica.document().change_log() {
                if author == stranger || author == observer {
                    return Err(format!(
                        "{} accepted change {hash} by {}",
                        NAMES[i],
                        if author == stranger {
                            "the stranger"
                        } else {
                            "the observer"
                        }
                    ));
                }
                roster
                    .may_write(&author, seq)
                    .map_err(|e| format!("{} counts change {seq} of {author}: {e}", NAMES[i]))?;
            }
            let hostile = replica
                .document()
                .automerge()
                .keys(automerge::ROOT)
                .find(|k| k.contains(HOSTILE_ID));
            if let Some(key) = hostile {
                return Err(format!("{} accepted C's hostile value at {key}", NAMES[i]));
            }
            if i == honest[0] {
                let audit = replica.audit().map_err(|e| e.to_string())?;
                if !audit.ok {
                    return Err(format!(
                        "{} fails its own audit: {:?}",
                        NAMES[i], audit.problems
                    ));
                }
                self.stats.rejected = audit.rejections.len();
                self.stats.c_frozen_at = replica
                    .frozen()
                    .get(&self.nodes[C].key())
                    .copied()
                    .unwrap_or(0);
                self.stats.changes = replica.document().change_log().len();
            }
        }
        if self.stats.changes == 0 {
            return Err("nothing was written".into());
        }
        // No honest write is lost.
        let replica = self.nodes[honest[0]]
            .engine
            .as_ref()
            .ok_or("down")?
            .replica();
        for (node, id, change) in &self.honest_writes {
            if replica.assessment(id).is_err() {
                return Err(format!(
                    "{}'s assessment {id} (change {change}) is not in the converged state",
                    NAMES[*node]
                ));
            }
        }
        self.stats.honest_writes = self.honest_writes.len();
        Ok(())
    }
}
