//! `concord bench`: measures Concord's paths against raw baselines on the
//! same data, in the same run, and prints both and their ratio.
//!
//! The data is built here: four member institutions writing assessments,
//! comments, notes, positions and edits, merging each other's changes every
//! few dozen writes so dependencies cross authors, every change signed. The
//! benchmarks (see docs/benchmarks.md for what each measures and its target):
//! ingest, restart, initial sync over loopback libp2p, quiet reconciliation,
//! and footprint. Each prints our figure, the baseline's and the ratio.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use automerge::{Automerge, Change};
use concord_node::api::{Request, Response};
use concord_node::bundle::{Bundle, EnvelopeBytes};
use concord_node::config::{Config, DataDir};
use concord_node::doc::{AssessmentUpdate, Document, NewAssessment, NewNote, parse_change};
use concord_node::envelope::{Envelope, signing_message};
use concord_node::genesis::Genesis;
use concord_node::identity::Identity;
use concord_node::model::{NoteKind, Round, Score, Stance, Status};
use concord_node::node::{self, NodeConfig};
use concord_node::replica::{Replica, ReplicaError};
use concord_node::roster::{Role, RosterEntry};
use concord_node::store::StoreError;
use concord_node::sync::{self, RESPONSE_TARGET_LEN, Tips};
use serde::Serialize;

use crate::args::BenchArgs;
use crate::output;

/// Writes between two merges of the members' documents.
const MERGE_EVERY: usize = 48;
/// How long the initial sync may take before the benchmark fails.
const SYNC_DEADLINE: Duration = Duration::from_secs(600);

/// One benchmark's result.
#[derive(Debug, Serialize)]
pub(super) struct Row {
    pub name: &'static str,
    /// What the numbers are (seconds, bytes…).
    pub unit: &'static str,
    pub ours: f64,
    pub baseline: f64,
    /// ours / baseline (or the figure the target is stated in).
    pub ratio: f64,
    pub target: &'static str,
    pub met: bool,
    pub note: String,
}

#[derive(Debug, Serialize)]
struct Results {
    /// Changes generated for the store benchmarks (null when not run).
    changes: Option<usize>,
    cores: usize,
    rows: Vec<Row>,
}

/// The generated workload.
struct Data {
    genesis: Genesis,
    /// Every envelope, encoded, in causal order.
    envelopes: Vec<Vec<u8>>,
    /// Keys of the fresh nodes the benchmarks start (observers).
    fresh: Vec<Identity>,
}

/// The benchmark groups `--only` can name.
pub(super) const GROUPS: [&str; 6] = [
    "store",
    "sync",
    "propagation",
    "writers",
    "durable",
    "scale",
];

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.changes >= 100, "--changes must be at least 100");
    for group in &args.only {
        ensure!(
            GROUPS.contains(&group.as_str()),
            "unknown benchmark group {group:?}; choose from {}",
            GROUPS.join(", ")
        );
    }
    let wants = |g: &str| args.only.is_empty() || args.only.iter().any(|o| o == g);
    let root = tempfile::Builder::new()
        .prefix("concord-bench-")
        .tempdir()?;
    let mut rows = Vec::new();
    if wants("store") {
        rows.extend(store_benchmarks(&args, root.path())?);
    } else if wants("sync") {
        rows.extend(sync_benchmark(&args, root.path())?);
    }
    rows.extend(super::bench_live::run(&args, root.path(), &wants)?);
    let results = Results {
        changes: (wants("store") || wants("sync")).then_some(args.changes),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rows,
    };
    if args.json {
        output::json(&results)?;
    } else {
        print_table(&results)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Ingest, restart, initial sync, reconciliation and footprint on
/// `--changes` generated changes.
fn store_benchmarks(args: &BenchArgs, root: &Path) -> anyhow::Result<Vec<Row>> {
    let data = generate_saying_so(args)?;
    let mut rows = Vec::new();

    // Baselines on the same data: batch verification, one bulk apply, one
    // sled batch.
    let changes = parsed(&data)?;
    let (verify_s, ()) = time(|| batch_verify(&data))?;
    let (apply_s, saved) = time(|| Ok(applied(changes.clone())?.save()))?;
    let (sled_s, ()) = time(|| sled_batch(&root.join("raw-sled"), &data))?;

    // 1. Ingest through the real import path into a fresh store.
    let ingest_dir = fresh_node(root, "ingest", &data.fresh[0], &data.genesis)?;
    let bundle = Bundle {
        genesis: data.genesis.encode(),
        records: Vec::new(),
        envelopes: data.envelopes.iter().cloned().map(EnvelopeBytes).collect(),
    }
    .encode();
    let (ingest_s, ()) = time(|| {
        let mut replica = open_replica(&ingest_dir)?.1;
        let summary = replica.import(&bundle)?;
        ensure!(
            summary.new == data.envelopes.len(),
            "ingest stored {}",
            summary.new
        );
        Ok(())
    })?;
    let baseline_s = verify_s + apply_s + sled_s;
    rows.push(Row {
        name: "ingest",
        unit: "changes/s",
        ours: data.envelopes.len() as f64 / ingest_s,
        baseline: data.envelopes.len() as f64 / baseline_s,
        ratio: baseline_s / ingest_s,
        target: ">= 1.5",
        met: baseline_s / ingest_s >= 1.5,
        note: format!(
            "baseline = batch verify {verify_s:.2} s + one apply_changes {apply_s:.2} s + one sled batch {sled_s:.2} s; ours {ingest_s:.2} s"
        ),
    });

    // 2. Restart: open the store just written (no re-verification).
    let (open_s, load_s) = {
        let (open_s, _) = open_replica(&ingest_dir)?;
        let (load_s, ()) = time(|| Automerge::load(&saved).map(drop).map_err(Into::into))?;
        (open_s, load_s)
    };
    rows.push(Row {
        name: "restart",
        unit: "s",
        ours: open_s,
        baseline: load_s,
        ratio: open_s / load_s,
        target: "<= 1.2",
        met: open_s / load_s <= 1.2,
        note: "open the store of all changes vs Automerge::load of the saved document".into(),
    });

    // 3. Initial sync: a fresh node catches up from the node holding all.
    let sync_dir = fresh_node(root, "sync", &data.fresh[1], &data.genesis)?;
    let sync_s = initial_sync(&ingest_dir, &sync_dir, data.envelopes.len())?;
    rows.push(sync_row(
        "initial sync",
        sync_s,
        apply_s,
        "fresh node over loopback libp2p until it stores and shows every change, vs one apply_changes",
    ));

    // 3b. The same between two `concord run` processes, each with its own
    // peak memory.
    let processes_dir = fresh_node(root, "sync-process", &data.fresh[1], &data.genesis)?;
    rows.extend(process_sync(
        &ingest_dir,
        &processes_dir,
        data.envelopes.len(),
        apply_s,
    )?);

    // 4. Quiet reconciliation: what two nodes holding the same changes send.
    let mut holder = open_replica(&ingest_dir)?.1;
    let network = data.genesis.network_id();
    let same = holder.tips().clone();
    let quiet = exchange_bytes(&mut holder, network, &same)?;
    rows.push(Row {
        name: "quiet reconciliation",
        unit: "bytes",
        ours: quiet as f64,
        baseline: 4096.0,
        ratio: quiet as f64 / 4096.0,
        target: "<= 1 (under 4 KiB, 1 round trip)",
        met: quiet < 4096,
        note: "Pull and empty Changes, both directions, message bodies and length prefixes".into(),
    });
    let mut behind = same.clone();
    for seq in behind.values_mut() {
        *seq -= (*seq / 100).max(1).min(*seq);
    }
    let (missing, missing_bytes) = holder.changes_for(&behind, &Default::default(), usize::MAX)?;
    let one_percent = exchange_bytes(&mut holder, network, &behind)?;
    let payload: usize = missing.iter().map(|e| e.0.len()).sum();
    ensure!(!missing_bytes, "changes_for without a limit reported more");
    rows.push(Row {
        name: "reconciliation, 1% missing",
        unit: "bytes",
        ours: one_percent as f64,
        baseline: payload as f64,
        ratio: one_percent as f64 / payload as f64,
        target: "<= 2",
        met: (one_percent as f64) <= 2.0 * payload as f64,
        note: format!("{} missing changes of {} bytes", missing.len(), payload),
    });
    drop(holder);

    // 5. Footprint: the store on disk against the saved document.
    let disk = dir_size(&ingest_dir.store_dir())?;
    let allowance = (saved.len() + 100 * data.envelopes.len()) as u64;
    rows.push(Row {
        name: "footprint (disk)",
        unit: "bytes",
        ours: disk as f64,
        baseline: allowance as f64,
        ratio: disk as f64 / allowance as f64,
        target: "<= 1 (saved doc + 100 B/change)",
        met: disk <= allowance,
        note: format!(
            "saved document {} bytes; peak resident memory of this process {} MiB",
            saved.len(),
            peak_rss_mib().map_or("?".into(), |m| m.to_string())
        ),
    });

    Ok(rows)
}

/// `--only sync`: only the initial sync between two processes, with as
/// little else in memory as possible, for runs of a million changes.
fn sync_benchmark(args: &BenchArgs, root: &Path) -> anyhow::Result<Vec<Row>> {
    let started = Instant::now();
    let data = generate_saying_so(args)?;
    let apply_s = {
        let changes = parsed(&data)?;
        time(|| applied(changes).map(drop))?.0
    };
    let source = fresh_node(root, "sync-source", &data.fresh[0], &data.genesis)?;
    {
        // Through the import path, a bundle at a time, so no second copy of
        // every envelope is held.
        let mut replica = open_replica(&source)?.1;
        for chunk in data.envelopes.chunks(IMPORT_CHUNK) {
            let bundle = Bundle {
                genesis: data.genesis.encode(),
                records: Vec::new(),
                envelopes: chunk.iter().cloned().map(EnvelopeBytes).collect(),
            };
            replica.import(&bundle.encode())?;
        }
        replica.save_snapshot()?;
    }
    if !args.json {
        eprintln!(
            "source store filled in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let fresh = fresh_node(root, "sync-fresh", &data.fresh[1], &data.genesis)?;
    let count = data.envelopes.len();
    drop(data);
    process_sync(&source, &fresh, count, apply_s)
}

/// [`generate`], saying on stderr what it does and how long it took.
fn generate_saying_so(args: &BenchArgs) -> anyhow::Result<Data> {
    let started = Instant::now();
    if !args.json {
        eprintln!("generating {} signed changes by 4 members…", args.changes);
    }
    let data = generate(args.changes)?;
    if !args.json {
        eprintln!("generated in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(data)
}

/// Every generated change, parsed by Automerge (for the baselines).
fn parsed(data: &Data) -> anyhow::Result<Vec<Change>> {
    data.envelopes
        .iter()
        .map(|e| Ok(parse_change(Envelope::decode(e)?.change_bytes())?))
        .collect()
}

/// The baseline's document: every change in one `apply_changes` call.
fn applied(changes: Vec<Change>) -> anyhow::Result<Automerge> {
    let mut doc = Automerge::new();
    doc.apply_changes(changes)?;
    Ok(doc)
}

/// Envelopes per bundle when `--only sync` fills the source store.
const IMPORT_CHUNK: usize = 50_000;

/// A `concord run` process of this binary on `dir`, listening on loopback,
/// and its local API once it answers.
struct NodeProcess {
    child: std::process::Child,
    api: crate::session::Remote,
}

impl NodeProcess {
    fn start(dir: &DataDir, extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("--data-dir")
            .arg(dir.root())
            .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-web"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start a node process")?;
        let deadline = Instant::now() + SYNC_DEADLINE;
        loop {
            if let Some(api) = crate::session::Remote::connect(dir) {
                return Ok(Self { child, api });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the node process on {} exited: {status}",
                    dir.root().display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "the node process on {} did not start",
                dir.root().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn status(&self) -> anyhow::Result<concord_node::api::StatusView> {
        match self.api.call(&Request::Status)? {
            Response::Status(s) => Ok(*s),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// The process's peak resident memory so far, in MiB.
    fn peak_rss_mib(&self) -> Option<u64> {
        vm_hwm_mib(&format!("/proc/{}/status", self.child.id()))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Initial sync between two node processes: `fresh` catches up from
/// `source`, which holds `count` changes. Timed from the fresh node's start
/// until its status shows every change; each process's peak resident
/// memory is read from /proc before it is stopped.
fn process_sync(
    source: &DataDir,
    fresh: &DataDir,
    count: usize,
    apply_s: f64,
) -> anyhow::Result<Vec<Row>> {
    let holder = NodeProcess::start(source, &[])?;
    let status = holder.status()?;
    ensure!(
        status.envelopes == count,
        "the source holds {}",
        status.envelopes
    );
    let listen = status
        .listen
        .first()
        .context("the source listens nowhere")?;
    let bootstrap = format!("{listen}/p2p/{}", status.node_id);
    let start = Instant::now();
    let catcher = NodeProcess::start(fresh, &["--bootstrap", &bootstrap])?;
    while catcher.status()?.envelopes < count {
        ensure!(
            start.elapsed() < SYNC_DEADLINE,
            "the fresh node did not catch up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sync_s = start.elapsed().as_secs_f64();
    let memory = [holder.peak_rss_mib(), catcher.peak_rss_mib()];
    let [Some(source_mib), Some(fresh_mib)] = memory else {
        bail!("cannot read the node processes' peak memory");
    };
    let peak = source_mib.max(fresh_mib);
    Ok(vec![
        sync_row(
            "initial sync, processes",
            sync_s,
            apply_s,
            "a fresh `concord run` process catches up from another over loopback until its status shows every change, vs one apply_changes",
        ),
        Row {
            name: "sync peak memory per node",
            unit: "MiB",
            ours: peak as f64,
            baseline: SYNC_MEMORY_MIB as f64,
            ratio: peak as f64 / SYNC_MEMORY_MIB as f64,
            target: "<= 1 (under 700 MiB)",
            met: peak < SYNC_MEMORY_MIB,
            note: format!(
                "peak resident memory: the source process {source_mib} MiB, the fresh one {fresh_mib} MiB"
            ),
        },
    ])
}

/// An initial sync's row: `sync_s` against one `apply_changes`, `apply_s`.
fn sync_row(name: &'static str, sync_s: f64, apply_s: f64, note: &str) -> Row {
    Row {
        name,
        unit: "s",
        ours: sync_s,
        baseline: apply_s,
        ratio: sync_s / apply_s,
        target: "<= 1.5",
        met: sync_s / apply_s <= 1.5,
        note: note.into(),
    }
}

/// The bound on each node's peak memory during a sync.
const SYNC_MEMORY_MIB: u64 = 700;

pub(super) fn time<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(f64, T)>
where
    T: Sized,
{
    let start = Instant::now();
    let value = f()?;
    Ok((start.elapsed().as_secs_f64(), value))
}

/// Builds the workload: four members, merging every [`MERGE_EVERY`] writes.
fn generate(n: usize) -> anyhow::Result<Data> {
    let members: Vec<Identity> = (1..=4u8).map(|i| Identity::from_secret([i; 32])).collect();
    let fresh: Vec<Identity> = (11..=12u8)
        .map(|i| Identity::from_secret([i; 32]))
        .collect();
    let mut roster: Vec<RosterEntry> = members
        .iter()
        .enumerate()
        .map(|(i, id)| RosterEntry {
            key: id.public(),
            name: format!("Member {}", i + 1),
            role: Role::Member,
        })
        .collect();
    roster.extend(fresh.iter().enumerate().map(|(i, id)| RosterEntry {
        key: id.public(),
        name: format!("Fresh node {}", i + 1),
        role: Role::Observer,
    }));
    let genesis = Genesis::create(&members[0], "Benchmark", roster, None, 1_700_000_000_000)?;
    let network = genesis.network_id();
    let mut docs: Vec<Document> = members.iter().map(|m| Document::new(m.public())).collect();
    let mut assessments: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut envelopes: Vec<Vec<u8>> = Vec::with_capacity(n);
    // Changes each member has not yet merged, by member.
    let mut unmerged: Vec<Vec<Change>> = vec![Vec::new(); members.len()];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in 0..n {
        let who = i % members.len();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let roll = rng % 100;
        let now = 1_700_000_000_000 + i as i64 * 1000;
        let doc = &mut docs[who];
        let change = if assessments.len() < 4 || roll < 20 {
            let id = format!("ra-b{i:07}");
            let change = doc.add_assessment(
                &id,
                &NewAssessment {
                    category: "model-vulnerabilities".into(),
                    title: format!("Risk {i}"),
                    summary: "A realistic summary of an AI risk, a sentence or two long.".into(),
                    likelihood: Some(Score::new("likelihood", (i % 5 + 1) as i64)?),
                    severity: Some(Score::new("severity", (i % 3 + 2) as i64)?),
                    mitigations: vec!["Shared evaluations".into()],
                    status: Status::Open,
                },
                now,
            )?;
            assessments.push(id);
            change
        } else if roll < 50 || (notes.is_empty() && roll >= 70) {
            let id = &assessments[(rng as usize / 7) % assessments.len()];
            if !doc.has_assessment(id) {
                continue_with_comment(doc, &assessments, now)?
            } else {
                doc.update_assessment(
                    id,
                    &AssessmentUpdate {
                        severity: Some(Score::new("severity", (i % 5 + 1) as i64)?),
                        summary: Some(format!("Revised at step {i}.")),
                        ..AssessmentUpdate::default()
                    },
                    now,
                )?
            }
        } else if roll < 70 {
            continue_with_comment(doc, &assessments, now)?
        } else if roll < 75 {
            let id = format!("cn-b{i:07}");
            let change = doc.add_note(
                &id,
                &NewNote {
                    topic: format!("Topic {i}"),
                    body: "What the institutions discussed, in a few sentences.".into(),
                    kind: NoteKind::Agenda,
                    round: Some(Round::TrackII),
                    assessments: vec![assessments[0].clone()],
                },
                now,
            )?;
            notes.push(id);
            change
        } else {
            let id = notes[(rng as usize / 11) % notes.len()].clone();
            if doc.has_note(&id) {
                let stance = Stance::ALL[(rng as usize / 13) % Stance::ALL.len()];
                doc.set_position(&id, members[who].node_id(), stance, "", now)?
            } else {
                continue_with_comment(doc, &assessments, now)?
            }
        };
        for (other, pending) in unmerged.iter_mut().enumerate() {
            if other != who {
                pending.push(change.clone());
            }
        }
        envelopes
            .push(Envelope::sign(&members[who], network, change.raw_bytes().to_vec())?.encode());
        if i % MERGE_EVERY == MERGE_EVERY - 1 {
            for (doc, pending) in docs.iter_mut().zip(unmerged.iter_mut()) {
                doc.apply(std::mem::take(pending))?;
            }
        }
    }
    Ok(Data {
        genesis,
        envelopes,
        fresh,
    })
}

/// A comment on an assessment the writer already holds (the first ones are
/// held by everyone after the first merge).
fn continue_with_comment(
    doc: &mut Document,
    assessments: &[String],
    now: i64,
) -> anyhow::Result<Change> {
    let id = assessments
        .iter()
        .rev()
        .find(|a| doc.has_assessment(a))
        .context("no assessment to comment on")?;
    Ok(doc.comment(id, "A comment from the dialogue.", now)?)
}

/// Opens the replica in `dir`, waiting while the store is still locked by
/// the replica or node that just closed it (sled lets go of its lock when
/// its background flusher exits, a moment after the drop). Returns the time
/// the successful open took, and the replica.
fn open_replica(dir: &DataDir) -> anyhow::Result<(f64, Replica)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let start = Instant::now();
        match Replica::open(dir) {
            Ok(replica) => return Ok((start.elapsed().as_secs_f64(), replica)),
            Err(ReplicaError::Store(StoreError::Locked(_))) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A node directory with a fixed key, joined to the benchmark network.
pub(super) fn fresh_node(
    root: &Path,
    name: &str,
    key: &Identity,
    genesis: &Genesis,
) -> anyhow::Result<DataDir> {
    let dir = DataDir::new(root.join(name));
    std::fs::create_dir_all(dir.root())?;
    key.save_new(&dir.key_file())?;
    Config::new(name)?.write_new(&dir.config_file())?;
    let mut replica = Replica::open(&dir)?;
    replica.join(genesis.clone())?;
    // The benchmark made this key just now.
    replica.key_is_new()?;
    Ok(dir)
}

fn batch_verify(data: &Data) -> anyhow::Result<()> {
    let network = data.genesis.network_id();
    let envelopes: Vec<Envelope> = data
        .envelopes
        .iter()
        .map(|e| Envelope::decode(e))
        .collect::<Result<_, _>>()?;
    let messages: Vec<[u8; 82]> = envelopes
        .iter()
        .map(|e| signing_message(network, e.hash()))
        .collect();
    let message_refs: Vec<&[u8]> = messages.iter().map(|m| m.as_slice()).collect();
    let signatures: Vec<ed25519_dalek::Signature> = envelopes
        .iter()
        .map(|e| ed25519_dalek::Signature::from_bytes(e.signature()))
        .collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> = envelopes
        .iter()
        .map(|e| e.author().verifying_key())
        .collect::<Result<_, _>>()?;
    ed25519_dalek::verify_batch(&message_refs, &signatures, &keys)
        .map_err(|e| anyhow::anyhow!("batch verification failed: {e}"))
}

fn sled_batch(path: &Path, data: &Data) -> anyhow::Result<()> {
    let db = sled::open(path)?;
    let mut batch = sled::Batch::default();
    for e in &data.envelopes {
        let env = Envelope::decode(e)?;
        batch.insert(env.hash().0.as_slice(), e.as_slice());
    }
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}

/// Starts the node holding everything and a fresh one bootstrapped from it;
/// returns the seconds until the fresh node holds all `count` changes.
fn initial_sync(full: &DataDir, fresh: &DataDir, count: usize) -> anyhow::Result<f64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = |dir: &DataDir, bootstrap| NodeConfig {
            data_dir: dir.clone(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
            bootstrap,
            mdns: false,
            api: "127.0.0.1:0".parse().expect("addr"),
            web: None,
            web_hosts: Vec::new(),
            faults: None,
        };
        let a = node::start(config(full, Vec::new())).await?;
        let start = Instant::now();
        let b = node::start(config(fresh, a.addresses())).await?;
        let handle = b.handle();
        loop {
            let status = match handle.call(Request::Status).await {
                Ok(Response::Status(s)) => s,
                other => bail!("unexpected answer {other:?}"),
            };
            if status.envelopes == count {
                break;
            }
            ensure!(
                start.elapsed() < SYNC_DEADLINE,
                "the fresh node did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        b.shutdown().await?;
        a.shutdown().await?;
        Ok(elapsed)
    })
}

/// Bytes two nodes exchange to reconcile when one holds everything and the
/// other holds `theirs`: each side's Pulls and the Changes answering them,
/// with their 4-byte length prefixes.
fn exchange_bytes(
    holder: &mut Replica,
    network: concord_node::genesis::NetworkId,
    theirs: &Tips,
) -> anyhow::Result<usize> {
    let framed_request = |r: &sync::Request| 4 + sync::encode_request(r).len();
    let framed_response = |r: &sync::Response| 4 + sync::encode_response(r).len();
    let mut total = 0;
    // The node that is behind pulls until nothing more comes.
    let mut have = theirs.clone();
    loop {
        total += framed_request(&sync::Request::Pull {
            network,
            have: sync::tips_to_wire(&have),
            records: holder.records_digest(),
            frozen: Vec::new(),
        });
        let (envelopes, more) =
            holder.changes_for(&have, &Default::default(), RESPONSE_TARGET_LEN)?;
        for e in &envelopes {
            let env = Envelope::decode(&e.0)?;
            let seq = parse_change(env.change_bytes())?.seq();
            let tip = have.entry(env.author()).or_insert(0);
            *tip = (*tip).max(seq);
        }
        total += framed_response(&sync::Response::Changes {
            records: Vec::new(),
            envelopes,
            more,
            have: holder.wire_tips(),
            frozen: Vec::new(),
            proofs: Vec::new(),
            versions: Vec::new(),
        });
        if !more {
            break;
        }
    }
    // The holder pulls too, and gets an empty answer.
    total += framed_request(&sync::Request::Pull {
        network,
        have: holder.wire_tips(),
        records: holder.records_digest(),
        frozen: Vec::new(),
    });
    total += framed_response(&sync::Response::Changes {
        records: Vec::new(),
        envelopes: Vec::new(),
        more: false,
        have: sync::tips_to_wire(theirs),
        frozen: Vec::new(),
        proofs: Vec::new(),
        versions: Vec::new(),
    });
    Ok(total)
}

fn dir_size(path: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

pub(super) fn peak_rss_mib() -> Option<u64> {
    vm_hwm_mib("/proc/self/status")
}

/// `VmHWM` (peak resident memory) of a process's `/proc/PID/status`, in MiB.
fn vm_hwm_mib(path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn print_table(results: &Results) -> anyhow::Result<()> {
    let mut table = output::table(&["BENCHMARK", "OURS", "BASELINE", "RATIO", "TARGET", "MET"]);
    for r in &results.rows {
        let fmt = |v: f64| match r.unit {
            _ if v.is_nan() => "-".to_string(),
            "s" => format!("{v:.3} s"),
            "ms" => format!("{v:.2} ms"),
            "bytes" => format!("{v:.0} B"),
            _ => format!("{v:.0} {}", r.unit),
        };
        output::row(
            &mut table,
            [
                r.name.to_string(),
                fmt(r.ours),
                fmt(r.baseline),
                if r.ratio.is_nan() {
                    "-".to_string()
                } else {
                    format!("{:.2}", r.ratio)
                },
                r.target.to_string(),
                if r.met { "yes" } else { "no" }.to_string(),
            ],
        );
    }
    let mut text = match results.changes {
        Some(n) => format!(
            "{n} changes for the store benchmarks, {} cores\n\n{table}\n",
            results.cores
        ),
        None => format!("{} cores\n\n{table}\n", results.cores),
    };
    for r in &results.rows {
        text.push_str(&format!("\n{}: {}", r.name, r.note));
    }
    output::text(&text)
}
