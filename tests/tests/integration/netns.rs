//! Five `concord run` processes on a real network (issue #6, part 5): a
//! steady write load while links are cut and restored and nodes are killed
//! (SIGKILL) and restarted from their data directories, with delay and
//! loss throughout. Pass: every node holds the same changes within 60 s of
//! the last heal, every acknowledged write is on every node exactly once,
//! `verify` is clean, and no node's peak memory reaches 300 MiB.
//!
//! Where the test may create network namespaces (root, iproute2), each node
//! runs in its own namespace, joined to a bridge in a "switch" namespace by
//! a veth pair ([`support::netlab`]); a cut takes the node's switch port
//! down. Delay and loss come from `netem` when the kernel has it, else from
//! the node's own fault injection (`CONCORD_FAULTS`). Elsewhere the test
//! says so and falls back to 127.0.0.1, where a "cut" freezes the process
//! (SIGSTOP: its peers' connections stay open and nothing comes back, as on
//! a dead link) and delay and loss come from `CONCORD_FAULTS`.
//!
//! `CONCORD_NET_SECONDS` sets how long the load runs (default 90),
//! `CONCORD_NET_SEED` the chaos schedule's seed (default: from the clock);
//! `CONCORD_NET_LOOPBACK=1` forces the fallback.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use serde_json::Value;
use support::netlab::{self, Capability, Lab};
use support::{Federation, Run, concord_bin};

const MEMBERS: [&str; 4] = ["Beijing", "Washington", "Geneva", "Singapore"];
const OBSERVER: &str = "UN";
/// Seconds of write load and chaos in the normal suite.
const LOAD_SECONDS: u64 = 90;
/// How long after the last heal every node must hold the same changes.
const CONVERGENCE: Duration = Duration::from_secs(60);
const MEMORY_LIMIT_KIB: u64 = 300 * 1024;
/// One write every this long, to a random member that is up.
const WRITE_EVERY: Duration = Duration::from_millis(200);
/// Delay and loss: for the node's own injection, and the same for netem.
const FAULTS: &str = "delay=30ms,jitter=20ms,loss=0.05";
const NETEM: &str = "delay 30ms 20ms loss 5%";
/// The port every node listens on inside its namespace.
const PORT: u16 = 7411;
/// Longest any one CLI command may take before the test gives up on it.
const CLI_LIMIT: Duration = Duration::from_secs(30);
/// At most this many nodes are cut off or down at once.
const MAX_IMPAIRED: usize = 2;
/// For the last this long of the load, no new harm but a partition of up
/// to [`MAX_IMPAIRED`] nodes that lasts until the end.
const FINAL_CUT: Duration = Duration::from_secs(10);

/// Where the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Namespaces,
    Loopback,
}

/// The `concord` CLI pointed at one node's data directory, inside the
/// node's namespace when it has one (its local API listens on that
/// namespace's loopback).
#[derive(Clone, Debug)]
struct Cli {
    name: String,
    dir: PathBuf,
    ns: Option<String>,
}

impl Cli {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(concord_bin());
                c
            }
            None => Command::new(concord_bin()),
        };
        command
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .env_remove("CONCORD_DATA_DIR")
            .env_remove("CONCORD_FAULTS")
            .env_remove("RUST_LOG");
        command
    }

    fn run(&self, args: &[&str]) -> Option<Run> {
        netlab::run_bounded(self.command(args), CLI_LIMIT)
    }

    /// Runs `args --json`; the parsed output, or what went wrong.
    fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut args = args.to_vec();
        args.push("--json");
        let run = self
            .run(&args)
            .ok_or_else(|| format!("`concord {}` on {} hung", args.join(" "), self.name))?;
        if run.code != Some(0) {
            return Err(format!(
                "`concord {}` on {} exited {:?}: {}",
                args.join(" "),
                self.name,
                run.code,
                run.stderr.trim()
            ));
        }
        serde_json::from_str(&run.stdout).map_err(|e| format!("bad JSON from {args:?}: {e}"))
    }

    fn must(&self, args: &[&str]) -> Value {
        self.json(args).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// One node's `concord run` process, restarted as the test goes.
struct Proc {
    cli: Cli,
    node_id: String,
    /// The listen address (no `/p2p`); on loopback, the port the OS chose
    /// at the first start, kept for restarts.
    listen: String,
    faults: Option<&'static str>,
    log: PathBuf,
    child: Option<Child>,
    peak_kib: u64,
}

impl Proc {
    fn bootstrap_addr(&self) -> String {
        format!("{}/p2p/{}", self.listen, self.node_id)
    }

    /// Starts the node and waits until its API answers.
    fn start(&mut self, bootstrap: &[String]) {
        assert!(self.child.is_none(), "{} is already running", self.cli.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log");
        let mut command = self
            .cli
            .command(&["run", "--listen", &self.listen, "--no-web"]);
        for addr in bootstrap {
            command.args(["--bootstrap", addr]);
        }
        if let Some(faults) = self.faults {
            command.env("CONCORD_FAULTS", faults);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn concord run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited at start with {status}:\n{}",
                    self.cli.name,
                    tail(&self.log)
                );
            }
            if let Ok(status) = self.cli.json(&["status"])
                && status["running"] == true
            {
                // `ip netns exec` execs: the child is the node itself, so
                // its memory is what the test samples.
                let pid = self.pid().expect("running");
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                assert_eq!(comm.trim(), "concord", "pid {pid} is not the node");
                if self.listen.ends_with("/tcp/0") {
                    self.listen = status["listen"][0]
                        .as_str()
                        .expect("a listen address")
                        .to_string();
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not serve its API within 30 s:\n{}",
                self.cli.name,
                tail(&self.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn sample_memory(&mut self) {
        if let Some(kib) = self.pid().and_then(netlab::peak_kib) {
            self.peak_kib = self.peak_kib.max(kib);
        }
    }

    /// SIGKILL: no chance to flush or say goodbye.
    fn kill(&mut self) {
        self.sample_memory();
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("running").to_string();
        let sent = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// SIGTERM, and the exit code once it has stopped (within 20 s).
    fn stop(&mut self) -> Option<i32> {
        self.sample_memory();
        self.signal("-TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop within 20 s of SIGTERM", self.cli.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last lines of a node's log.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Prints every node's log tail if the test fails.
struct LogsOnFailure(Vec<(String, PathBuf)>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, log) in &self.0 {
                eprintln!("--- the end of {name}'s log ---\n{}", tail(log));
            }
        }
    }
}

/// A write the CLI acknowledged (exit 0, with the new item's id).
#[derive(Debug)]
struct Ack {
    title: String,
    id: String,
    node: usize,
}

/// What the writer and the chaos schedule share.
struct Load {
    /// Members the writer may write to now.
    writable: Vec<AtomicBool>,
    stop: AtomicBool,
    acked: Mutex<Vec<Ack>>,
    /// Writes whose outcome is unknown (the CLI failed or hung): each may
    /// or may not have been made, but at most once.
    unknown: Mutex<Vec<String>>,
}

/// Stops the writer when dropped, so a panic in the chaos loop does not
/// leave the scope waiting for it forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One write every [`WRITE_EVERY`] to a random writable member, until told
/// to stop; each with a unique title.
fn write_load(clis: &[Cli], load: &Load, seed: u64, tag: &str) {
    let mut rng = Pcg64::seed_from_u64(seed.wrapping_add(1));
    let mut next = Instant::now();
    for n in 0..1_000_000u32 {
        if load.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Steady: a slow write delays the next one, it does not cause a burst.
        next = (next + WRITE_EVERY).max(Instant::now());
        let up: Vec<usize> = (0..clis.len())
            .filter(|&i| load.writable[i].load(Ordering::SeqCst))
            .collect();
        if up.is_empty() {
            continue;
        }
        let node = up[rng.random_range(0..up.len())];
        let title = format!("{tag} write {n:06}");
        let written = clis[node].json(&[
            "assess",
            "add",
            "--category",
            "algorithmic-bias",
            "--title",
            &title,
        ]);
        match written
            .ok()
            .and_then(|w| w["id"].as_str().map(str::to_string))
        {
            Some(id) => load
                .acked
                .lock()
                .expect("lock")
                .push(Ack { title, id, node }),
            None => load.unknown.lock().expect("lock").push(title),
        }
    }
}

/// What is wrong with a node for a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Harm {
    /// Its link is cut (namespaces) or its process frozen (loopback).
    Cut,
    /// Killed; restarted when the harm ends.
    Down,
}

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn five_processes_converge_after_cuts_kills_delay_and_loss_under_load() {
    // Build the binary first, so the time reported is the test's own.
    concord_bin();
    let began = Instant::now();
    let seconds = env_u64("CONCORD_NET_SECONDS").unwrap_or(LOAD_SECONDS);
    let seed = env_u64("CONCORD_NET_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let count = MEMBERS.len() + 1;

    // Which network: namespaces (with netem, or with the node's own
    // faults), or the loopback fallback.
    let capability = if std::env::var_os("CONCORD_NET_LOOPBACK").is_some() {
        Capability::Loopback {
            why: "CONCORD_NET_LOOPBACK is set".into(),
        }
    } else {
        netlab::probe()
    };
    let (mode, netem) = match capability {
        Capability::Namespaces { netem } => (Mode::Namespaces, netem),
        Capability::Loopback { why } => {
            eprintln!(
                "netns: FALLBACK to loopback: {why}.\n\
                 netns: five processes on 127.0.0.1; a cut freezes the process (SIGSTOP); \
                 delay and loss from CONCORD_FAULTS.\n\
                 netns: for the full version (network namespaces, veth links cut at a \
                 bridge), run as root with iproute2 installed: \
                 sudo -E cargo test -p tests --test integration netns::"
            );
            (Mode::Loopback, false)
        }
    };
    let lab = match mode {
        Mode::Namespaces => Some(
            Lab::new(count, netem.then_some(NETEM))
                .unwrap_or_else(|e| panic!("cannot build the namespace lab: {e}")),
        ),
        Mode::Loopback => None,
    };
    let faults = if netem { None } else { Some(FAULTS) };
    eprintln!(
        "netns: mode {}; delay and loss: {}; {seconds} s of load; seed {seed} \
         (CONCORD_NET_SEED={seed} repeats the schedule)",
        match mode {
            Mode::Namespaces => "network namespaces (veth pairs on a bridge)",
            Mode::Loopback => "loopback fallback",
        },
        match faults {
            None => format!("netem `{NETEM}` on every node's link"),
            Some(f) => format!("the nodes' own injection, CONCORD_FAULTS={f}"),
        }
    );

    let fed = Federation::new(&MEMBERS, &[OBSERVER]);
    let logs = tempfile::Builder::new()
        .prefix("concord-netns-logs-")
        .tempdir()
        .expect("tempdir");
    let mut procs: Vec<Proc> = fed
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let cli = Cli {
                name: node.name.clone(),
                dir: node.dir().to_path_buf(),
                ns: lab.as_ref().map(|l| l.ns(i).to_string()),
            };
            let listen = match &lab {
                Some(lab) => format!("/ip4/{}/tcp/{PORT}", lab.ip(i)),
                None => "/ip4/127.0.0.1/tcp/0".to_string(),
            };
            Proc {
                node_id: node.node_id(),
                cli,
                listen,
                faults,
                log: logs.path().join(format!("{}.log", node.name)),
                child: None,
                peak_kib: 0,
            }
        })
        .collect();
    let _logs_on_failure = LogsOnFailure(
        procs
            .iter()
            .map(|p| (p.cli.name.clone(), p.log.clone()))
            .collect(),
    );
    let bootstrap = |procs: &[Proc], i: usize| -> Vec<String> {
        procs
            .iter()
            .enumerate()
            .filter(|(j, p)| *j != i && !p.listen.ends_with("/tcp/0"))
            .map(|(_, p)| p.bootstrap_addr())
            .collect()
    };
    for i in 0..count {
        let peers = bootstrap(&procs, i);
        procs[i].start(&peers);
    }

    let load = Load {
        writable: (0..MEMBERS.len()).map(|_| AtomicBool::new(true)).collect(),
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        unknown: Mutex::new(Vec::new()),
    };
    let member_clis: Vec<Cli> = procs[..MEMBERS.len()]
        .iter()
        .map(|p| p.cli.clone())
        .collect();
    let tag = format!("netns-{seed}");
    let mut rng = Pcg64::seed_from_u64(seed);
    let (mut cuts, mut kills) = (0u32, 0u32);
    let mut harmed: Vec<(usize, Harm, Instant)> = Vec::new();
    let heal = |procs: &mut Vec<Proc>, i: usize, harm: Harm| {
        match (harm, &lab) {
            (Harm::Cut, Some(lab)) => lab.restore(i).unwrap_or_else(|e| panic!("{e}")),
            (Harm::Cut, None) => procs[i].signal("-CONT"),
            (Harm::Down, _) => {
                let peers = bootstrap(procs, i);
                procs[i].start(&peers);
            }
        }
        if i < MEMBERS.len() {
            load.writable[i].store(true, Ordering::SeqCst);
        }
    };

    // A cut: the node's switch port goes down; on loopback the process is
    // frozen, and its API with it, so the writer leaves it alone.
    let cut = |procs: &[Proc], i: usize| {
        match &lab {
            Some(lab) => lab.cut(i).unwrap_or_else(|e| panic!("{e}")),
            None => procs[i].signal("-STOP"),
        }
        if lab.is_none() && i < MEMBERS.len() {
            load.writable[i].store(false, Ordering::SeqCst);
        }
    };

    let load_began = Instant::now();
    let mut final_cut = false;
    std::thread::scope(|scope| {
        let _stop_writer = StopOnDrop(&load.stop);
        scope.spawn(|| write_load(&member_clis, &load, seed, &tag));
        let end = load_began + Duration::from_secs(seconds);
        let mut next_harm = Instant::now() + Duration::from_secs(2);
        // Each pass sleeps 100 ms: the count bounds the loop if the clock
        // misbehaves.
        for _ in 0..(seconds * 20 + 100) {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let (due, rest): (Vec<_>, Vec<_>) = harmed.drain(..).partition(|h| h.2 <= now);
            harmed = rest;
            for (i, harm, _) in due {
                heal(&mut procs, i, harm);
            }
            if !final_cut && now + FINAL_CUT >= end {
                // The last stretch: two nodes cut off (or kept down) until
                // the end, so the final heal joins two sides that both
                // wrote, and the convergence time means something.
                final_cut = true;
                let mut free: Vec<usize> = (0..count)
                    .filter(|i| !harmed.iter().any(|h| h.0 == *i))
                    .collect();
                for h in harmed.iter_mut() {
                    h.2 = end;
                }
                while harmed.len() < MAX_IMPAIRED && !free.is_empty() {
                    let i = free.swap_remove(rng.random_range(0..free.len()));
                    cut(&procs, i);
                    cuts += 1;
                    eprintln!(
                        "netns: {:>5.1} s: {} {} until the end",
                        load_began.elapsed().as_secs_f64(),
                        if lab.is_some() {
                            "cut the link of"
                        } else {
                            "froze"
                        },
                        procs[i].cli.name
                    );
                    harmed.push((i, Harm::Cut, end));
                }
            }
            if !final_cut && now >= next_harm && harmed.len() < MAX_IMPAIRED {
                let free: Vec<usize> = (0..count)
                    .filter(|i| !harmed.iter().any(|h| h.0 == *i))
                    .collect();
                let i = free[rng.random_range(0..free.len())];
                let harm = if rng.random_bool(0.5) {
                    Harm::Cut
                } else {
                    Harm::Down
                };
                let lasts = Duration::from_millis(match harm {
                    Harm::Cut => rng.random_range(3_000..15_000),
                    Harm::Down => rng.random_range(1_000..8_000),
                });
                if harm == Harm::Down && i < MEMBERS.len() {
                    // A killed node's store would be written by the CLI
                    // directly: fine, but not what this schedule tests.
                    load.writable[i].store(false, Ordering::SeqCst);
                }
                match harm {
                    Harm::Cut => cut(&procs, i),
                    Harm::Down => procs[i].kill(),
                }
                eprintln!(
                    "netns: {:>5.1} s: {} {} for {:.1} s",
                    load_began.elapsed().as_secs_f64(),
                    match harm {
                        Harm::Cut if lab.is_some() => "cut the link of",
                        Harm::Cut => "froze",
                        Harm::Down => "killed",
                    },
                    procs[i].cli.name,
                    lasts.as_secs_f64()
                );
                match harm {
                    Harm::Cut => cuts += 1,
                    Harm::Down => kills += 1,
                }
                harmed.push((i, harm, now + lasts));
                next_harm = now + Duration::from_millis(rng.random_range(1_500..5_000));
            }
            for p in procs.iter_mut() {
                p.sample_memory();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Stop writing (the scope joins the writer), then heal everything.
        load.stop.store(true, Ordering::SeqCst);
    });
    let load_seconds = load_began.elapsed().as_secs_f64();
    for (i, harm, _) in std::mem::take(&mut harmed) {
        heal(&mut procs, i, harm);
    }
    let healed = Instant::now();
    let acked = load.acked.into_inner().expect("lock");
    let unknown = load.unknown.into_inner().expect("lock");
    eprintln!(
        "netns: healed; {} writes acknowledged, {} unknown; {cuts} cuts, {kills} kills",
        acked.len(),
        unknown.len()
    );
    assert!(
        acked.len() as f64 >= load_seconds * 0.5,
        "only {} writes acknowledged in {load_seconds:.0} s: the load was not steady",
        acked.len()
    );

    // Convergence: every node holds the same changes, within 60 s.
    let deadline = healed + CONVERGENCE;
    let converged_after = loop {
        let last: Vec<Result<Value, String>> = procs
            .iter()
            .map(|p| {
                p.cli
                    .json(&["status"])
                    .map(|s| serde_json::json!([s["envelopes"], s["heads"]]))
            })
            .collect();
        if last.iter().all(Result::is_ok) && last.windows(2).all(|w| w[0] == w[1]) {
            break healed.elapsed();
        }
        if Instant::now() > deadline {
            let peers: Vec<Result<Value, String>> =
                procs.iter().map(|p| p.cli.json(&["peers"])).collect();
            panic!(
                "not converged within {CONVERGENCE:?} of the last heal (seed {seed}):\n\
                 [envelopes, heads] per node: {last:#?}\npeers per node: {peers:#?}"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };

    // No acknowledged write lost, none twice, nothing that was not written.
    let mut listings = Vec::new();
    for p in &procs {
        let list = p.cli.must(&["assess", "list"]);
        let items = list.as_array().expect("an array");
        let mut seen: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for item in items {
            let title = item["title"].as_str().expect("title");
            seen.entry(title)
                .or_default()
                .push(item["id"].as_str().expect("id"));
        }
        for ack in &acked {
            assert_eq!(
                seen.get(ack.title.as_str()),
                Some(&vec![ack.id.as_str()]),
                "{}: the write {:?} acknowledged by {} as {} is not there exactly once",
                p.cli.name,
                ack.title,
                procs[ack.node].cli.name,
                ack.id
            );
        }
        for (title, ids) in &seen {
            assert_eq!(ids.len(), 1, "{}: {title:?} is there {ids:?}", p.cli.name);
            assert!(
                acked.iter().any(|a| a.title == *title) || unknown.iter().any(|u| u == title),
                "{}: {title:?} was never written",
                p.cli.name
            );
        }
        listings.push(list.clone());
        let audit = p.cli.must(&["verify"]);
        assert_eq!(audit["ok"], true, "{}: verify: {audit:#}", p.cli.name);
        for key in ["problems", "rejections", "forks"] {
            assert_eq!(
                audit[key].as_array().map(Vec::len),
                Some(0),
                "{}: verify {key}: {audit:#}",
                p.cli.name
            );
        }
    }
    assert!(
        listings.windows(2).all(|w| w[0] == w[1]),
        "the nodes list different registers"
    );
    let surfaced = listings[0].as_array().map_or(0, Vec::len) - acked.len();

    // Memory, then a clean stop of every node.
    for p in procs.iter_mut() {
        p.sample_memory();
    }
    let peaks: Vec<String> = procs
        .iter()
        .map(|p| format!("{} {:.0} MiB", p.cli.name, p.peak_kib as f64 / 1024.0))
        .collect();
    for p in &procs {
        assert!(p.peak_kib > 0, "{}: no memory sample", p.cli.name);
        assert!(
            p.peak_kib < MEMORY_LIMIT_KIB,
            "{} peaked at {} KiB",
            p.cli.name,
            p.peak_kib
        );
    }
    for p in procs.iter_mut() {
        assert_eq!(p.stop(), Some(0), "{} did not stop cleanly", p.cli.name);
    }
    eprintln!(
        "netns: PASS ({}{}): {load_seconds:.0} s of load, {} writes acknowledged \
         ({} of {} unknown outcomes made it), {cuts} cuts, {kills} kills; converged {:.1} s \
         after the last heal; peak memory: {}; the test took {:.0} s",
        match mode {
            Mode::Namespaces => "namespaces",
            Mode::Loopback => "loopback fallback",
        },
        if netem { ", netem" } else { ", CONCORD_FAULTS" },
        acked.len(),
        surfaced,
        unknown.len(),
        converged_after.as_secs_f64(),
        peaks.join(", "),
        began.elapsed().as_secs_f64()
    );
}
