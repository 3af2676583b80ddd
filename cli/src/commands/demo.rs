//! `concord demo`: the whole story on embedded defaults, offline.
//!
//! Three member institutions and one observer are initialised in a temporary
//! directory; one member creates the network and the others join; members
//! write assessments, notes, positions and a pair of concurrent edits; they
//! exchange signed bundles as files; an observer's forged write is refused;
//! and at the end every node's report and heads are compared.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail, ensure};
use concord_node::config::DataDir;
use concord_node::doc::{AssessmentUpdate, Document, NewAssessment, NewNote};
use concord_node::envelope::Envelope;
use concord_node::genesis::Genesis;
use concord_node::model::{NoteKind, Round, Score, Stance, Status};
use concord_node::roster::{Role, RosterEntry};
use concord_node::{Replica, ReplicaError, report};

use crate::output;

/// The demo's institutions: (name, role). Fictional.
const INSTITUTIONS: [(&str, Role); 4] = [
    ("Beijing Institute for AI Governance", Role::Member),
    ("Washington Center for AI Policy", Role::Member),
    ("Singapore Dialogue Forum", Role::Member),
    ("UN Observer Mission", Role::Observer),
];

struct Node {
    name: &'static str,
    replica: Replica,
}

pub fn run(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
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
    say(&format!("Concord demo in {}\n", root.display()))?;

    // 1. Every institution creates its key.
    let mut nodes = Vec::new();
    for (i, (name, role)) in INSTITUTIONS.iter().enumerate() {
        let dir = DataDir::new(root.join(format!("node{}", i + 1)));
        let summary = Replica::init(&dir, name)?;
        say(&format!(
            "  {name:<36} {role:<8} {} [{}]",
            summary.node_id, summary.fingerprint
        ))?;
        nodes.push(Node {
            name,
            replica: Replica::open(&dir)?,
        });
    }

    // 2. The first member creates the network; the others join from the file.
    let roster: Vec<RosterEntry> = nodes
        .iter()
        .zip(INSTITUTIONS)
        .map(|(n, (name, role))| RosterEntry {
            key: n.replica.identity().public(),
            name: name.to_string(),
            role,
        })
        .collect();
    let genesis =
        nodes[0]
            .replica
            .create_network("US-China-ASEAN Track II on AI risk", roster, None)?;
    let genesis_file = root.join("genesis.concord");
    std::fs::write(&genesis_file, genesis.encode())?;
    for node in &mut nodes[1..] {
        let bytes = std::fs::read(&genesis_file)?;
        node.replica.join(Genesis::decode(&bytes)?)?;
    }
    say(&format!(
        "\nNetwork {:?} created, id {}…, quorum {}; all four joined.",
        genesis.name(),
        genesis.network_id().short(),
        genesis.body().quorum
    ))?;

    // 3. Each member writes its own assessments while offline.
    let (militarisation, _) = nodes[0].replica.add_assessment(assessment(
        "international-interaction",
        "Autonomy in nuclear command and control",
        "Integrating AI into early warning and launch decisions compresses decision time.",
        3,
        5,
        &[
            "Keep a human decision on every nuclear launch",
            "Crisis hotline for AI incidents",
        ],
    )?)?;
    let (jailbreaks, _) = nodes[1].replica.add_assessment(assessment(
        "model-vulnerabilities",
        "Jailbreaks of frontier models",
        "Safety training can be bypassed by adversarial prompts.",
        4,
        3,
        &["Shared red-teaming benchmarks"],
    )?)?;
    let (gap, _) = nodes[2].replica.add_assessment(assessment(
        "technology-gap",
        "Compute divide between countries",
        "Access to compute concentrates capability in few countries.",
        4,
        3,
        &["Capacity-building programmes"],
    )?)?;
    say("Each member wrote an assessment offline.")?;
    exchange(&root, &mut nodes, 1)?;

    // 4. Notes, positions and a concurrent edit of the same field.
    let (nuclear_note, _) = nodes[0].replica.add_note(NewNote {
        topic: "Human control over nuclear launch decisions".into(),
        body: "Decisions to use nuclear weapons must remain under human control.".into(),
        kind: NoteKind::Consensus,
        round: Some(Round::TrackII),
        assessments: vec![militarisation.clone()],
    })?;
    let (chips_note, _) = nodes[1].replica.add_note(NewNote {
        topic: "Export controls on advanced chips".into(),
        body: "Whether export controls on AI chips belong on the agenda of AI risk talks.".into(),
        kind: NoteKind::Divergence,
        round: Some(Round::Intergovernmental),
        assessments: vec![gap.clone()],
    })?;
    // Two members re-score the same risk without seeing each other's edit.
    nodes[0].replica.update_assessment(
        &jailbreaks,
        AssessmentUpdate {
            severity: Some(Score::new("severity", 4)?),
            ..AssessmentUpdate::default()
        },
    )?;
    nodes[1].replica.update_assessment(
        &jailbreaks,
        AssessmentUpdate {
            severity: Some(Score::new("severity", 2)?),
            ..AssessmentUpdate::default()
        },
    )?;
    nodes[2]
        .replica
        .comment(&jailbreaks, "We see the same pattern in regional models.")?;
    say("Members wrote two notes, a comment, and two concurrent edits of one severity.")?;
    exchange(&root, &mut nodes, 2)?;

    let positions: [(usize, &str, Stance, &str); 6] = [
        (0, &nuclear_note, Stance::Agree, ""),
        (1, &nuclear_note, Stance::Agree, ""),
        (
            2,
            &nuclear_note,
            Stance::Reservation,
            "Verification mechanisms need work.",
        ),
        (
            0,
            &chips_note,
            Stance::Disagree,
            "Export controls are a trade matter, not AI safety.",
        ),
        (
            1,
            &chips_note,
            Stance::Agree,
            "Compute is the main lever on frontier risk.",
        ),
        (2, &chips_note, Stance::Abstain, ""),
    ];
    for (node, note, stance, comment) in positions {
        nodes[node].replica.set_position(note, stance, comment)?;
    }
    say("Each member recorded its position on both notes.")?;

    // 5. The observer tries to write: refused on its own node, and a change it
    //    signs anyway is refused by every member that receives it.
    let observer = nodes.len() - 1;
    let refused = nodes[observer].replica.add_assessment(assessment(
        "malicious-use",
        "Observer's attempt",
        "",
        1,
        1,
        &[],
    )?);
    ensure!(
        matches!(refused, Err(ReplicaError::ObserverCannotWrite)),
        "the observer's node accepted a write"
    );
    let forged = forged_observer_bundle(&nodes[observer].replica, &root)?;
    for node in &mut nodes[..observer] {
        let before = node.replica.store().len();
        match node.replica.import(&std::fs::read(&forged)?) {
            Err(ReplicaError::Ingest(e)) => {
                ensure!(node.replica.store().len() == before, "store changed");
                tracing::debug!(node = node.name, error = %e, "forged change refused");
            }
            other => bail!("{} accepted an observer's change: {other:?}", node.name),
        }
    }
    say(
        "The observer's own node refused its write, and every member refused a change it signed anyway.",
    )?;
    exchange(&root, &mut nodes, 3)?;

    // 6. Everyone holds the same set: compare heads, reports and audits.
    let first = &nodes[0].replica;
    let expected_heads = first.document().heads();
    let expected_report = report_json(first)?;
    for node in &nodes {
        ensure!(
            node.replica.document().heads() == expected_heads,
            "{} has different heads",
            node.name
        );
        ensure!(
            report_json(&node.replica)? == expected_report,
            "{} prints a different report",
            node.name
        );
        let audit = node.replica.audit()?;
        ensure!(audit.ok, "{}: {:?}", node.name, audit.problems);
    }
    let changes = first.store().len();
    let g = first.genesis().ok_or(ReplicaError::NoNetwork)?;
    say(&format!(
        "\n{}",
        report::to_markdown(&report::build(first.document(), g, first.roster()?))
    ))?;
    say(&format!(
        "Converged: all {} nodes hold the same {} signed changes (heads {}), every \
         signature re-verified, and their reports are byte-identical.",
        nodes.len(),
        changes,
        expected_heads
            .iter()
            .map(|h| h.to_string()[..12].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    if dir.is_some() {
        say(&format!(
            "The nodes' data directories are kept in {}: try `concord --data-dir {} assess list`.",
            root.display(),
            root.join("node1").display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
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
) -> anyhow::Result<NewAssessment> {
    Ok(NewAssessment {
        category: category.into(),
        title: title.into(),
        summary: summary.into(),
        likelihood: Some(Score::new("likelihood", likelihood)?),
        severity: Some(Score::new("severity", severity)?),
        mitigations: mitigations.iter().map(|m| m.to_string()).collect(),
        status: Status::Open,
    })
}

/// Every node exports a bundle file and every other node imports it.
fn exchange(root: &Path, nodes: &mut [Node], round: usize) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (bytes, _) = node.replica.export(&[])?;
        let file = root.join(format!("round{round}-node{}.bundle", i + 1));
        std::fs::write(&file, bytes)?;
        files.push(file);
    }
    let mut new = 0;
    for (i, node) in nodes.iter_mut().enumerate() {
        for (j, file) in files.iter().enumerate() {
            if i != j {
                new += node.replica.import(&std::fs::read(file)?)?.new;
            }
        }
    }
    say(&format!(
        "  bundle exchange {round}: {} files, {new} new change(s) verified and applied across the nodes",
        files.len()
    ))
}

/// A bundle holding a change the observer signed with its own key.
fn forged_observer_bundle(observer: &Replica, root: &Path) -> anyhow::Result<PathBuf> {
    let key = observer.identity();
    let network = observer.network_id()?;
    let mut doc = Document::new(key.public());
    let change = doc.add_assessment(
        "ra-forged",
        &assessment("malicious-use", "Observer's forged entry", "", 1, 1, &[])?,
        concord_node::model::now_ms(),
    )?;
    let envelope = Envelope::sign(key, network, change.raw_bytes().to_vec())?;
    let (mut bundle_bytes, _) = observer.export(&[])?;
    let mut bundle = concord_node::bundle::Bundle::decode(&bundle_bytes)?;
    bundle
        .envelopes
        .push(concord_node::bundle::EnvelopeBytes(envelope.encode()));
    bundle_bytes = bundle.encode();
    let file = root.join("forged-by-observer.bundle");
    std::fs::write(&file, bundle_bytes)?;
    Ok(file)
}

fn report_json(replica: &Replica) -> anyhow::Result<String> {
    let genesis = replica.genesis().ok_or(ReplicaError::NoNetwork)?;
    Ok(serde_json::to_string(&report::build(
        replica.document(),
        genesis,
        replica.roster()?,
    ))?)
}
