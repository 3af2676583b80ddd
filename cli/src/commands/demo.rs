//! `concord demo`: a live federation on embedded defaults.
//!
//! Three member institutions and one observer are initialised in a temporary
//! directory; one member creates the network and the others join. All four
//! start as real libp2p nodes on 127.0.0.1 (ports chosen by the OS). Members
//! write assessments, notes, a pair of concurrent edits and their positions
//! through their own node's local HTTP API; the observer's attempts to write
//! are refused. The demo prints each node's convergence as it happens, then
//! the briefing, and checks that all four nodes hold identical state. Two
//! members sign a checkpoint of that state (the quorum is two), which makes
//! it attested; the observer's briefing is written with its attestation and
//! verified offline against the genesis. With `--keep-running` the nodes stay
//! up and the demo prints the observer's web view URL until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use concord_node::api::{AssessmentInput, NoteInput, Request, Response, UpdateInput};
use concord_node::bundle::{Bundle, EnvelopeBytes};
use concord_node::checkpoint::verify::{self, Format};
use concord_node::config::DataDir;
use concord_node::doc::{Document, NewAssessment};
use concord_node::envelope::Envelope;
use concord_node::genesis::Genesis;
use concord_node::model::Status;
use concord_node::node::{self, NodeConfig, RunningNode};
use concord_node::replica::Replica;
use concord_node::report;
use concord_node::roster::{Role, RosterEntry};

use crate::output;
use crate::session::Remote;

/// The demo's institutions: (name, role). Fictional.
const INSTITUTIONS: [(&str, Role); 4] = [
    ("Beijing Institute for AI Governance", Role::Member),
    ("Washington Center for AI Policy", Role::Member),
    ("Singapore Dialogue Forum", Role::Member),
    ("UN Observer Mission", Role::Observer),
];
/// How long the demo waits for the nodes to converge before giving up.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);

/// One demo node: its name, directory, the running node and its API client.
struct DemoNode {
    name: &'static str,
    dir: DataDir,
    running: Option<RunningNode>,
    api: Option<Remote>,
}

impl DemoNode {
    fn call(&self, request: Request) -> anyhow::Result<Response> {
        self.api
            .as_ref()
            .context("the node is not running")?
            .call(&request)
    }

    fn written_id(&self, request: Request) -> anyhow::Result<String> {
        match self.call(request)? {
            Response::Written(w) => Ok(w.id),
            other => bail!("unexpected answer {other:?}"),
        }
    }
}

pub fn run(dir: Option<&Path>, keep_running: bool) -> anyhow::Result<ExitCode> {
    let temp;
    let root: PathBuf = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            ensure!(
                std::fs::read_dir(dir)?.next().is_none(),
                "{} is not empty; give the demo an empty or new directory",
                dir.display()
            );
            dir.to_path_buf()
        }
        None => {
            temp = tempfile::Builder::new().prefix("concord-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    say(&format!("Concord demo in {}\n", root.display()))?;

    let mut nodes = setup(&root)?;

    // Every node starts on 127.0.0.1 and dials those started before it.
    let mut bootstrap = Vec::new();
    for node in &mut nodes {
        let running = runtime.block_on(node::start(NodeConfig {
            data_dir: node.dir.clone(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            bootstrap: bootstrap.clone(),
            mdns: false,
            api: "127.0.0.1:0".parse()?,
            web: Some("127.0.0.1:0".parse()?),
            web_hosts: Vec::new(),
            faults: None,
        }))?;
        bootstrap.extend(running.addresses());
        say(&format!(
            "  started {:<36} {}",
            node.name,
            running
                .addresses()
                .first()
                .map(ToString::to_string)
                .unwrap_or_default()
        ))?;
        node.api = Remote::connect(&node.dir);
        ensure!(
            node.api.is_some(),
            "{}'s local API does not answer",
            node.name
        );
        node.running = Some(running);
    }

    let mut result = story(&root, &nodes);
    if result.is_ok() && keep_running {
        result = runtime.block_on(keep_serving(&nodes));
    }
    for node in &mut nodes {
        if let Some(running) = node.running.take() {
            runtime.block_on(running.shutdown())?;
        }
    }
    result?;
    if dir.is_some() {
        say(&format!(
            "The nodes' data directories are kept in {}: try `concord --data-dir {} assess list`.",
            root.display(),
            root.join("node1").display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints every node's web view, the observer's first, and waits for Ctrl-C.
async fn keep_serving(nodes: &[DemoNode]) -> anyhow::Result<()> {
    // Listen for Ctrl-C before saying to press it: a SIGINT that came
    // before the handler would kill the demo without stopping the nodes.
    #[cfg(unix)]
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    let url = |node: &DemoNode| {
        node.running
            .as_ref()
            .and_then(|r| r.web)
            .map(|a| format!("http://{a}/"))
            .unwrap_or_default()
    };
    say(&format!(
        "\nThe nodes keep running. Open the observer's web view:\n\n    {}\n",
        url(&nodes[3])
    ))?;
    for node in &nodes[..3] {
        say(&format!("  {:<36} {}", node.name, url(node)))?;
    }
    say(&format!(
        "\nThe CLI works against them too, e.g. `concord --data-dir {} checkpoint list`.\n\
         Stop with Ctrl-C.",
        nodes[3].dir.root().display()
    ))?;
    #[cfg(unix)]
    interrupt.recv().await;
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    say("\nStopping the nodes…")?;
    Ok(())
}

/// Initialises the four institutions and the network, offline.
fn setup(root: &Path) -> anyhow::Result<Vec<DemoNode>> {
    let mut nodes = Vec::new();
    let mut replicas = Vec::new();
    for (i, (name, role)) in INSTITUTIONS.iter().enumerate() {
        let dir = DataDir::new(root.join(format!("node{}", i + 1)));
        let summary = Replica::init(&dir, name)?;
        say(&format!(
            "  {name:<36} {:<8} {} [{}]",
            role.to_string(),
            summary.node_id,
            summary.fingerprint
        ))?;
        replicas.push(Replica::open(&dir)?);
        nodes.push(DemoNode {
            name,
            dir,
            running: None,
            api: None,
        });
    }
    let roster: Vec<RosterEntry> = replicas
        .iter()
        .zip(INSTITUTIONS)
        .map(|(r, (name, role))| RosterEntry {
            key: r.identity().public(),
            name: name.to_string(),
            role,
        })
        .collect();
    let genesis = replicas[0].create_network("US-China-ASEAN Track II on AI risk", roster, None)?;
    std::fs::write(root.join("genesis.concord"), genesis.encode())?;
    for replica in &mut replicas[1..] {
        replica.join(genesis.clone())?;
    }
    say(&format!(
        "\nNetwork {:?} created, id {}…, quorum {}; all four joined.\n",
        genesis.name(),
        genesis.network_id().short(),
        genesis.body().quorum
    ))?;
    Ok(nodes)
}

/// The writes, the refusals, and the checks, against running nodes.
fn story(root: &Path, nodes: &[DemoNode]) -> anyhow::Result<()> {
    let started = Instant::now();
    say("\nEach member writes an assessment through its own node's API.")?;
    let militarisation = nodes[0].written_id(assessment(
        "international-interaction",
        "Autonomy in nuclear command and control",
        "Integrating AI into early warning and launch decisions compresses decision time.",
        3,
        5,
        &[
            "Keep a human decision on every nuclear launch",
            "Crisis hotline for AI incidents",
        ],
    ))?;
    let jailbreaks = nodes[1].written_id(assessment(
        "model-vulnerabilities",
        "Jailbreaks of frontier models",
        "Safety training can be bypassed by adversarial prompts.",
        4,
        3,
        &["Shared red-teaming benchmarks"],
    ))?;
    let gap = nodes[2].written_id(assessment(
        "technology-gap",
        "Compute divide between countries",
        "Access to compute concentrates capability in few countries.",
        4,
        3,
        &["Capacity-building programmes"],
    ))?;
    wait_converged(nodes, 3, started)?;

    say("\nTwo notes, a comment, and two members re-scoring the same risk at once.")?;
    let nuclear_note = nodes[0].written_id(Request::AddNote(NoteInput {
        topic: "Human control over nuclear launch decisions".into(),
        body: "Decisions to use nuclear weapons must remain under human control.".into(),
        kind: "consensus".into(),
        round: Some("track-ii".into()),
        assessments: vec![militarisation],
    }))?;
    let chips_note = nodes[1].written_id(Request::AddNote(NoteInput {
        topic: "Export controls on advanced chips".into(),
        body: "Whether export controls on AI chips belong on the agenda of AI risk talks.".into(),
        kind: "divergence".into(),
        round: Some("intergovernmental".into()),
        assessments: vec![gap],
    }))?;
    // Both edits are sent before either node has seen the other's.
    let rescore = |severity| Request::UpdateAssessment {
        id: jailbreaks.clone(),
        update: UpdateInput {
            severity: Some(severity),
            ..UpdateInput::default()
        },
    };
    std::thread::scope(|s| {
        let a = s.spawn(|| nodes[0].call(rescore(4)));
        let b = s.spawn(|| nodes[1].call(rescore(2)));
        a.join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        b.join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        anyhow::Ok(())
    })?;
    nodes[2].call(Request::Comment {
        id: jailbreaks,
        text: "We see the same pattern in regional models.".into(),
    })?;
    wait_converged(nodes, 8, started)?;

    say("\nEvery member records its position on both notes.")?;
    let positions = [
        (0, &nuclear_note, "agree", ""),
        (1, &nuclear_note, "agree", ""),
        (
            2,
            &nuclear_note,
            "reservation",
            "Verification mechanisms need work.",
        ),
        (
            0,
            &chips_note,
            "disagree",
            "Export controls are a trade matter, not AI safety.",
        ),
        (
            1,
            &chips_note,
            "agree",
            "Compute is the main lever on frontier risk.",
        ),
        (2, &chips_note, "abstain", ""),
    ];
    for (node, note, position, comment) in positions {
        nodes[node].call(Request::Position {
            id: note.clone(),
            position: position.into(),
            comment: comment.into(),
        })?;
    }
    wait_converged(nodes, 14, started)?;

    // The observer cannot write: its own node refuses, and a change it signs
    // anyway is refused by every member that receives it.
    let observer = &nodes[3];
    let refused = observer.call(assessment(
        "malicious-use",
        "Observer's attempt",
        "",
        1,
        1,
        &[],
    ));
    match refused {
        Err(e) if e.to_string().contains("observers cannot write") => {
            say(&format!("\nThe observer's node refused its write: {e}"))?;
        }
        other => bail!("the observer's node accepted a write: {other:?}"),
    }
    let forged = forged_observer_bundle(root, observer)?;
    for node in &nodes[..3] {
        match node.call(Request::Import {
            bundle: forged.clone(),
        }) {
            Err(e) if e.to_string().contains("observers cannot write") => {}
            other => bail!("{} accepted an observer's change: {other:?}", node.name),
        }
    }
    say("Every member refused a change the observer signed anyway.")?;

    // Everyone holds the same state: compare what each node shows.
    let expected = state(&nodes[0])?;
    for node in nodes {
        ensure!(
            state(node)? == expected,
            "{} shows a different state",
            node.name
        );
        match node.call(Request::Verify)? {
            Response::Audit(audit) => ensure!(audit.ok, "{}: {:?}", node.name, audit.problems),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    // Two of three members sign the state they hold: the quorum is two.
    say("\nTwo members sign a checkpoint of this state; the quorum is two.")?;
    let first = nodes[0].written_id(Request::SignCheckpoint { checkpoint: None })?;
    wait_converged(nodes, 15, started)?;
    let second = nodes[1].written_id(Request::SignCheckpoint { checkpoint: None })?;
    ensure!(
        first == second,
        "the second member signed {second}, not {first}"
    );
    wait_converged(nodes, 16, started)?;

    let briefing = match nodes[3].call(Request::Briefing {
        round: None,
        checkpoint: None,
    })? {
        Response::Briefing(b) => b,
        other => bail!("unexpected answer {other:?}"),
    };
    ensure!(
        briefing.report.checkpoint.attested,
        "the observer does not see checkpoint {first} as attested"
    );
    let report = &briefing.report;
    say(&format!("\n{}", report::to_markdown(report)))?;
    // The observer's briefing, with its attestation, checked offline with
    // nothing but the genesis: what anyone receiving the file can do.
    let path = root.join("briefing.md");
    std::fs::write(
        &path,
        verify::export(report, briefing.attestation.as_ref(), Format::Markdown),
    )?;
    let genesis = Genesis::decode(&std::fs::read(root.join("genesis.concord"))?)?;
    let verified = verify::verify_file(&std::fs::read(&path)?, &genesis, &genesis.roster())?;
    say(&format!(
        "The observer's briefing ({}) verifies offline against the genesis: checkpoint {}, \
         signed by {}.",
        path.display(),
        verified.checkpoint,
        verified.signers.join(" and ")
    ))?;
    say(&format!(
        "Converged: all {} nodes hold the same 16 signed changes, every signature \
         re-verified on every node, their reports and lists are identical, and checkpoint {} \
         attests the state. ({:.1} s)",
        nodes.len(),
        verified.checkpoint,
        started.elapsed().as_secs_f64()
    ))
}

/// Waits until every node holds `count` changes with the same heads,
/// printing each node as it gets there.
fn wait_converged(nodes: &[DemoNode], count: usize, started: Instant) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    let mut done = vec![false; nodes.len()];
    loop {
        let mut heads = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let status = match node.call(Request::Status)? {
                Response::Status(s) => s,
                other => bail!("unexpected answer {other:?}"),
            };
            if status.envelopes == count && !done[i] {
                done[i] = true;
                say(&format!(
                    "  {:>6.0} ms  {:<36} holds all {count} changes",
                    started.elapsed().as_secs_f64() * 1000.0,
                    node.name
                ))?;
            }
            heads.push(status.heads.clone());
        }
        if done.iter().all(|d| *d) && heads.windows(2).all(|w| w[0] == w[1]) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the nodes did not converge within {CONVERGE_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn say(text: &str) -> anyhow::Result<()> {
    output::text(text)
}

fn assessment(
    category: &str,
    title: &str,
    summary: &str,
    likelihood: i64,
    severity: i64,
    mitigations: &[&str],
) -> Request {
    Request::AddAssessment(AssessmentInput {
        category: category.into(),
        title: title.into(),
        summary: summary.into(),
        likelihood: Some(likelihood),
        severity: Some(severity),
        mitigations: mitigations.iter().map(|m| m.to_string()).collect(),
        status: "open".into(),
    })
}

/// A bundle holding a change the observer signed with its own key.
fn forged_observer_bundle(root: &Path, observer: &DemoNode) -> anyhow::Result<Vec<u8>> {
    // The key is read from the observer's own data dir, as an attacker
    // holding it would.
    let key = concord_node::identity::Identity::load(&observer.dir.key_file())?;
    let genesis = std::fs::read(root.join("genesis.concord"))?;
    let network = concord_node::genesis::Genesis::decode(&genesis)?.network_id();
    let mut doc = Document::new(key.public());
    let change = doc.add_assessment(
        "ra-forged000",
        &NewAssessment {
            category: "malicious-use".into(),
            title: "Observer's forged entry".into(),
            summary: String::new(),
            likelihood: None,
            severity: None,
            mitigations: Vec::new(),
            status: Status::Open,
        },
        concord_node::model::now_ms(),
    )?;
    let envelope = Envelope::sign(&key, network, change.raw_bytes().to_vec())?;
    Ok(Bundle {
        genesis,
        records: Vec::new(),
        envelopes: vec![EnvelopeBytes(envelope.encode())],
    }
    .encode())
}

/// What a node shows: lists, report, as JSON text.
fn state(node: &DemoNode) -> anyhow::Result<String> {
    let assessments = node.call(Request::ListAssessments {
        category: None,
        status: None,
    })?;
    let notes = node.call(Request::ListNotes)?;
    let report = node.call(Request::Report)?;
    Ok(serde_json::to_string(&(assessments, notes, report))?)
}
