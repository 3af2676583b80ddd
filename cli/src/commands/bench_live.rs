//! The live benchmarks of `concord bench`: real nodes in this process, over
//! loopback libp2p, written to through their API.
//!
//! - **propagation**: one change committed on a node until every node holds
//!   it, in a line and in a full mesh; baseline: the median libp2p ping round
//!   trip on the same connections.
//! - **writers**: 16 writers on 4 nodes at 6 changes per second each; the
//!   time until each change is on every node, over the run and per half.
//! - **durable**: changes committed through the local HTTP API, one writer
//!   and 16 concurrent writers, each acknowledged after its flush; baseline: a
//!   loop of 4 KiB write + fdatasync in the same directory.
//! - **scale**: N nodes each writing M changes: time to converge and sync
//!   bytes sent per change per node.
//!
//! Visibility is read from each node's chain tips (`status`), polled in a
//! tight loop, so latencies carry the polling interval (well under a
//! millisecond per node) as their resolution.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use concord_node::api::{AssessmentInput, Request, Response, StatusView};
use concord_node::config::DataDir;
use concord_node::genesis::Genesis;
use concord_node::identity::Identity;
use concord_node::network::Multiaddr;
use concord_node::node::{self, NodeConfig, NodeHandle, RunningNode};
use concord_node::roster::{Role, RosterEntry};

use super::bench::{Row, fresh_node};
use crate::args::BenchArgs;
use crate::session::Session;

/// How long any live run may wait for convergence before it fails.
const DEADLINE: Duration = Duration::from_secs(600);

/// How nodes bootstrap from each other.
#[derive(Clone, Copy)]
enum Topology {
    /// Node i dials node i - 1 only.
    Line,
    /// Node i dials every node before it.
    Mesh,
    /// Node i dials up to `k` pseudo-random nodes before it.
    Random(usize),
}

/// N member nodes of one network, running in this process.
struct Live {
    nodes: Vec<RunningNode>,
    ids: Vec<String>,
}

impl Live {
    async fn start(root: &Path, label: &str, n: usize, topology: Topology) -> anyhow::Result<Self> {
        let keys: Vec<Identity> = (0..n)
            .map(|_| Identity::generate())
            .collect::<Result<_, _>>()?;
        let roster: Vec<RosterEntry> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| RosterEntry {
                key: k.public(),
                name: format!("{label} {i}"),
                role: Role::Member,
            })
            .collect();
        let genesis = Genesis::create(&keys[0], label, roster, None, 1_700_000_000_000)?;
        let dirs: Vec<DataDir> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| fresh_node(root, &format!("{label}-{i}"), k, &genesis))
            .collect::<anyhow::Result<_>>()?;
        let mut nodes: Vec<RunningNode> = Vec::with_capacity(n);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for (i, dir) in dirs.iter().enumerate() {
            let bootstrap: Vec<Multiaddr> = match topology {
                Topology::Line => nodes.last().map(|n| n.addresses()).unwrap_or_default(),
                Topology::Mesh => nodes.iter().flat_map(|n| n.addresses()).collect(),
                Topology::Random(k) => {
                    let mut picked = Vec::new();
                    for _ in 0..k.min(i) {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        picked.push(rng as usize % i);
                    }
                    picked.sort_unstable();
                    picked.dedup();
                    picked.iter().flat_map(|&j| nodes[j].addresses()).collect()
                }
            };
            nodes.push(
                node::start(NodeConfig {
                    data_dir: dir.clone(),
                    listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
                    bootstrap,
                    mdns: false,
                    api: "127.0.0.1:0".parse()?,
                    web: None,
                    web_hosts: Vec::new(),
                    faults: None,
                })
                .await?,
            );
        }
        let ids = keys.iter().map(|k| k.node_id().to_string()).collect();
        let live = Self { nodes, ids };
        // Every expected connection is up before anything is timed.
        let degree = |i: usize| match topology {
            Topology::Line => usize::from(i > 0) + usize::from(i + 1 < n),
            Topology::Mesh => n - 1,
            Topology::Random(_) => 1,
        };
        let deadline = Instant::now() + DEADLINE;
        for (i, node) in live.nodes.iter().enumerate() {
            loop {
                if status(&node.handle()).await?.connected.len() >= degree(i) {
                    break;
                }
                ensure!(Instant::now() < deadline, "{label} {i} did not connect");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(live)
    }

    async fn stop(self) -> anyhow::Result<()> {
        for node in self.nodes {
            node.shutdown().await?;
        }
        Ok(())
    }

    /// The median ping round trip over every connection, in ms.
    async fn median_rtt_ms(&self) -> anyhow::Result<f64> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut rtts = Vec::new();
            let mut missing = false;
            for node in &self.nodes {
                let peers = match node.handle().call(Request::Peers).await {
                    Ok(Response::Peers(p)) => p,
                    other => bail!("unexpected answer {other:?}"),
                };
                for p in peers.iter().filter(|p| p.connected) {
                    match p.rtt_ms {
                        Some(ms) => rtts.push(ms),
                        None => missing = true,
                    }
                }
            }
            if !missing && !rtts.is_empty() {
                return Ok(percentile(&mut rtts, 0.5));
            }
            ensure!(Instant::now() < deadline, "no ping round trip was measured");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn status(handle: &NodeHandle) -> anyhow::Result<StatusView> {
    match handle.call(Request::Status).await {
        Ok(Response::Status(s)) => Ok(*s),
        other => bail!("unexpected answer {other:?}"),
    }
}

async fn write(handle: &NodeHandle, title: String) -> anyhow::Result<()> {
    match handle
        .call(Request::AddAssessment(AssessmentInput {
            category: "model-vulnerabilities".into(),
            title,
            status: "open".into(),
            ..AssessmentInput::default()
        }))
        .await
    {
        Ok(Response::Written(_)) => Ok(()),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// The value below which a fraction `q` of the samples lie.
fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i]
}

/// Runs the live groups `wants` selects.
pub(super) fn run(
    args: &BenchArgs,
    root: &Path,
    wants: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Vec<Row>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    if wants("propagation") {
        ensure!(
            args.propagation_nodes >= 2,
            "--propagation-nodes must be at least 2"
        );
        for (topology, name) in [
            (Topology::Line, "propagation, line"),
            (Topology::Mesh, "propagation, mesh"),
        ] {
            rows.push(runtime.block_on(propagation(args, root, topology, name))?);
        }
    }
    if wants("writers") {
        rows.extend(runtime.block_on(writers(args, root))?);
    }
    if wants("durable") {
        rows.extend(runtime.block_on(durable(args, root))?);
    }
    if wants("scale") {
        rows.extend(runtime.block_on(scale(args, root))?);
    }
    Ok(rows)
}

async fn propagation(
    args: &BenchArgs,
    root: &Path,
    topology: Topology,
    name: &'static str,
) -> anyhow::Result<Row> {
    let n = args.propagation_nodes;
    let label = if matches!(topology, Topology::Line) {
        "line"
    } else {
        "mesh"
    };
    let live = Live::start(root, label, n, topology).await?;
    let rtt = live.median_rtt_ms().await?;
    let writer = live.nodes[0].handle();
    let writer_id = live.ids[0].clone();
    let handles: Vec<NodeHandle> = live.nodes.iter().map(RunningNode::handle).collect();
    let mut latencies = Vec::with_capacity(args.propagation_changes);
    for seq in 1..=args.propagation_changes as u64 {
        write(&writer, format!("propagation {seq}")).await?;
        let committed = Instant::now();
        let mut pending: Vec<&NodeHandle> = handles[1..].iter().collect();
        while !pending.is_empty() {
            // All at once: a node busy with a flush must not delay the
            // reading of the others.
            let tips = futures::future::join_all(pending.iter().map(|h| status(h))).await;
            let mut still = Vec::new();
            for (h, s) in pending.into_iter().zip(tips) {
                if s?.tips.get(&writer_id).copied().unwrap_or(0) < seq {
                    still.push(h);
                }
            }
            pending = still;
            ensure!(
                committed.elapsed() < DEADLINE,
                "change {seq} did not spread"
            );
            tokio::task::yield_now().await;
        }
        latencies.push(committed.elapsed().as_secs_f64() * 1000.0);
    }
    live.stop().await?;
    let hops = match topology {
        Topology::Line => n - 1,
        _ => 1,
    } as f64;
    let median = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    let per_hop = median / hops;
    Ok(Row {
        name,
        unit: "ms",
        ours: per_hop,
        baseline: rtt,
        ratio: per_hop / rtt,
        target: "<= 3 round trips per hop (median)",
        met: per_hop / rtt <= 3.0,
        note: format!(
            "{n} nodes, {} changes from one end; seen on every node after median {median:.2} ms, \
             p99 {p99:.2} ms over {hops} hop(s); baseline = median ping round trip {rtt:.3} ms \
             on the same connections",
            args.propagation_changes
        ),
    })
}

/// Per (author, seq): when it was first seen on its own node and when on all.
#[derive(Default)]
struct Seen {
    origin: BTreeMap<(String, u64), Instant>,
    everywhere: BTreeMap<(String, u64), Instant>,
}

async fn writers(args: &BenchArgs, root: &Path) -> anyhow::Result<Vec<Row>> {
    const NODES: usize = 4;
    const PER_NODE: usize = 4;
    const RATE_HZ: f64 = 6.0;
    let live = Live::start(root, "writers", NODES, Topology::Mesh).await?;
    let handles: Vec<NodeHandle> = live.nodes.iter().map(RunningNode::handle).collect();
    let run_for = Duration::from_secs(args.writers_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, handle) in handles.iter().enumerate() {
        for w in 0..PER_NODE {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE_HZ));
                let mut i = 0u64;
                while started.elapsed() < run_for {
                    tick.tick().await;
                    write(&handle, format!("writer {n}.{w} #{i}")).await?;
                    i += 1;
                }
                anyhow::Ok(i)
            }));
        }
    }
    // Poll every node's tips until the writers stop and everything spread.
    let mut seen = Seen::default();
    let mut written = None;
    let mut last: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); NODES];
    loop {
        let now = Instant::now();
        let statuses = futures::future::join_all(handles.iter().map(status)).await;
        for (i, s) in statuses.into_iter().enumerate() {
            let tips = s?.tips;
            // Chain numbers this node gained since the last poll.
            for (author, &tip) in &tips {
                let from = last[i].get(author).copied().unwrap_or(0);
                if live.ids[i] == *author {
                    for seq in from + 1..=tip {
                        seen.origin.entry((author.clone(), seq)).or_insert(now);
                    }
                }
            }
            last[i] = tips;
        }
        // Seen everywhere: the lowest tip across nodes, per author.
        for author in &live.ids {
            let low = last
                .iter()
                .map(|t| t.get(author).copied().unwrap_or(0))
                .min()
                .unwrap_or(0);
            let start = seen
                .everywhere
                .keys()
                .filter(|(a, _)| a == author)
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(0);
            for seq in start + 1..=low {
                seen.everywhere.insert((author.clone(), seq), now);
            }
        }
        if written.is_none() && tasks.iter().all(|t| t.is_finished()) {
            let mut total = 0;
            for t in tasks.drain(..) {
                total += t.await??;
            }
            written = Some(total);
        }
        if let Some(total) = written
            && seen.everywhere.len() as u64 >= total
        {
            break;
        }
        ensure!(
            started.elapsed() < run_for + DEADLINE,
            "the writers' changes did not spread"
        );
        tokio::task::yield_now().await;
    }
    live.stop().await?;
    let total = written.unwrap_or(0);
    let half = started + run_for / 2;
    let (mut all, mut first, mut second) = (Vec::new(), Vec::new(), Vec::new());
    for (key, everywhere) in &seen.everywhere {
        let Some(origin) = seen.origin.get(key) else {
            continue;
        };
        let ms = everywhere.saturating_duration_since(*origin).as_secs_f64() * 1000.0;
        all.push(ms);
        if *origin < half {
            first.push(ms);
        } else {
            second.push(ms);
        }
    }
    let p99 = percentile(&mut all, 0.99);
    let median = percentile(&mut all, 0.5);
    let (p99_first, p99_second) = (percentile(&mut first, 0.99), percentile(&mut second, 0.99));
    Ok(vec![
        Row {
            name: "many writers, p99 to every node",
            unit: "ms",
            ours: p99,
            baseline: 100.0,
            ratio: p99 / 100.0,
            target: "p99 < 100 ms",
            met: p99 < 100.0,
            note: format!(
                "16 writers on 4 nodes (full mesh), 6 changes/s each for {} s: {total} changes; \
                 median {median:.2} ms, p99 {p99:.2} ms from commit on the writer's node to \
                 every node",
                args.writers_seconds
            ),
        },
        Row {
            name: "many writers, growth",
            unit: "ms",
            ours: p99_second,
            baseline: p99_first,
            ratio: p99_second / p99_first,
            target: "no growth (second half / first half p99 <= 1.5)",
            met: p99_second / p99_first <= 1.5,
            note: format!(
                "p99 {p99_first:.2} ms in the first half, {p99_second:.2} ms in the second"
            ),
        },
    ])
}

async fn durable(args: &BenchArgs, root: &Path) -> anyhow::Result<Vec<Row>> {
    // Baseline: 4 KiB write + fdatasync, in a loop, on the same filesystem.
    let probe_path = root.join("fsync-probe");
    let count = args.durable_changes.max(10);
    let fsync_per_s = {
        let mut file = std::fs::File::create(&probe_path)?;
        let block = [0x5au8; 4096];
        let start = Instant::now();
        for _ in 0..count {
            file.write_all(&block)?;
            file.sync_data()?;
        }
        count as f64 / start.elapsed().as_secs_f64()
    };
    let live = Live::start(root, "durable", 1, Topology::Mesh).await?;
    let handle = live.nodes[0].handle();
    let data = DataDir::new(root.join("durable-0"));
    let fsync_ms = 1000.0 / fsync_per_s;
    // One writer through HTTP: each call returns after its change is flushed.
    let single = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
            let mut session = Session::open(&data)?;
            let start = Instant::now();
            for i in 0..count {
                session.call(assessment(format!("durable {i}")))?;
            }
            Ok(count as f64 / start.elapsed().as_secs_f64())
        })
        .await??
    };
    // Sixteen concurrent writers through HTTP, each call timed.
    let flushes_before = status(&handle).await?.flushes;
    let per = count.div_ceil(16);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let data = data.clone();
        tasks.push(tokio::task::spawn_blocking(
            move || -> anyhow::Result<Vec<f64>> {
                let mut session = Session::open(&data)?;
                let mut latencies = Vec::with_capacity(per);
                for i in 0..per {
                    let t = Instant::now();
                    session.call(assessment(format!("durable {w}.{i}")))?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok(latencies)
            },
        ));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let concurrent = (per * 16) as f64 / start.elapsed().as_secs_f64();
    let flushes = status(&handle).await?.flushes - flushes_before;
    // Batch calls of 128 writes each, from 4 concurrent writers.
    let batch_flushes_before = status(&handle).await?.flushes;
    let batches = count.div_ceil(128).max(1);
    let batch_start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let data = data.clone();
        tasks.push(tokio::task::spawn_blocking(
            move || -> anyhow::Result<()> {
                let mut session = Session::open(&data)?;
                for b in 0..batches.div_ceil(4) {
                    let requests = (0..128)
                        .map(|i| assessment(format!("batch {w}.{b}.{i}")))
                        .collect();
                    session.call(Request::Batch { requests })?;
                }
                Ok(())
            },
        ));
    }
    for t in tasks {
        t.await??;
    }
    let batched = batches.div_ceil(4) * 4 * 128;
    let batch_rate = batched as f64 / batch_start.elapsed().as_secs_f64();
    let batch_flushes = status(&handle).await?.flushes - batch_flushes_before;
    let batch_per_flush = batched as f64 / batch_flushes.max(1) as f64;
    live.stop().await?;
    let per_flush = (per * 16) as f64 / flushes.max(1) as f64;
    let p99 = percentile(&mut latencies, 0.99);
    Ok(vec![
        Row {
            name: "durable writes, one writer",
            unit: "changes/s",
            ours: single,
            baseline: fsync_per_s,
            ratio: single / fsync_per_s,
            target: "report (each acknowledged after its flush)",
            met: true,
            note: format!(
                "{count} sequential HTTP calls; baseline = 4 KiB write + fdatasync loop, \
                 {fsync_per_s:.0}/s"
            ),
        },
        Row {
            name: "durable writes, 16 writers: changes per flush",
            unit: "changes",
            ours: per_flush,
            baseline: 100.0,
            ratio: per_flush / 100.0,
            target: ">= 100 changes per fsync (group commit)",
            met: per_flush >= 100.0,
            note: format!(
                "16 concurrent HTTP writers, {} changes in {flushes} flushes, {concurrent:.0} \
                 changes/s",
                per * 16
            ),
        },
        Row {
            name: "durable writes, batch calls: changes per flush",
            unit: "changes",
            ours: batch_per_flush,
            baseline: 100.0,
            ratio: batch_per_flush / 100.0,
            target: ">= 100 changes per fsync (group commit)",
            met: batch_per_flush >= 100.0,
            note: format!(
                "4 concurrent HTTP writers sending batch calls of 128 writes: {batched} changes \
                 in {batch_flushes} flushes, {batch_rate:.0} changes/s"
            ),
        },
        Row {
            name: "durable writes, 16 writers: p99 latency",
            unit: "ms",
            ours: p99,
            baseline: fsync_ms,
            ratio: p99 / fsync_ms,
            target: "<= 2 fsyncs",
            met: p99 <= 2.0 * fsync_ms,
            note: format!(
                "p99 of each HTTP call until its change is durable; one fsync takes \
                 {fsync_ms:.2} ms here"
            ),
        },
    ])
}

fn assessment(title: String) -> Request {
    Request::AddAssessment(AssessmentInput {
        category: "model-vulnerabilities".into(),
        title,
        status: "open".into(),
        ..AssessmentInput::default()
    })
}

async fn scale(args: &BenchArgs, root: &Path) -> anyhow::Result<Vec<Row>> {
    let n = args.scale_nodes;
    let m = args.scale_changes;
    ensure!(n >= 2, "--scale-nodes must be at least 2");
    let live = Live::start(root, "scale", n, Topology::Random(3)).await?;
    let handles: Vec<NodeHandle> = live.nodes.iter().map(RunningNode::handle).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, handle) in handles.iter().enumerate() {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..m {
                write(&handle, format!("scale {i}.{k}")).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let total = n * m;
    loop {
        let mut done = true;
        for h in &handles {
            if status(h).await?.envelopes < total {
                done = false;
                break;
            }
        }
        if done {
            break;
        }
        ensure!(
            started.elapsed() < DEADLINE,
            "the scale run did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let converge_s = started.elapsed().as_secs_f64();
    let mut sent = 0u64;
    for h in &handles {
        sent += status(h).await?.bytes_sent;
    }
    let envelope_bytes = match handles[0].call(Request::Export { since: Vec::new() }).await {
        Ok(Response::Exported(e)) => e.bundle.len() as f64 / e.changes.max(1) as f64,
        other => bail!("unexpected answer {other:?}"),
    };
    live.stop().await?;
    let per_change_per_node = sent as f64 / total as f64 / n as f64;
    let memory = super::bench::peak_rss_mib().map_or("?".into(), |v| v.to_string());
    Ok(vec![
        Row {
            name: "scale, convergence",
            unit: "s",
            ours: converge_s,
            baseline: f64::NAN,
            ratio: f64::NAN,
            target: "report",
            met: true,
            note: format!(
                "{n} nodes (each dialling up to 3 others), {m} changes each written \
                 concurrently: all {total} changes on every node after {converge_s:.2} s; peak \
                 resident memory of this process {memory} MiB"
            ),
        },
        Row {
            name: "scale, bytes per change per node",
            unit: "bytes",
            ours: per_change_per_node,
            baseline: envelope_bytes,
            ratio: per_change_per_node / envelope_bytes,
            target: "report (ratio = copies of each change a node sends)",
            met: true,
            note: format!(
                "{sent} sync bytes sent in all; baseline = one change's size in a bundle \
                 ({envelope_bytes:.0} bytes)"
            ),
        },
    ])
}
