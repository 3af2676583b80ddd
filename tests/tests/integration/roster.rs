//! Roster changes by quorum, removal, roles and key rotation, on live nodes
//! over real libp2p connections on 127.0.0.1.

use concord_node::api::{
    AssessmentInput, MembersView, ProposalInput, ProposalView, Request, Response,
};
use concord_node::envelope::Envelope;
use concord_node::identity::Identity;
use concord_node::replica::Replica;
use concord_node::sync;
use concord_node::{bundle::EnvelopeBytes, config::DataDir};
use support::forge;
use support::live::{
    LiveNode, federation, federation_with_quorum, outsider, wait_converged, wait_until,
};
use support::rogue::{self, Outcome};

async fn propose(node: &LiveNode, input: ProposalInput) -> ProposalView {
    match node.call(Request::Propose(input)).await {
        Response::Proposal(p) => *p,
        other => panic!("unexpected {other:?}"),
    }
}

async fn approve(node: &LiveNode, id: &str) -> ProposalView {
    match node
        .call(Request::Approve {
            id: id.into(),
            confirm_claims: false,
        })
        .await
    {
        Response::Proposal(p) => *p,
        other => panic!("unexpected {other:?}"),
    }
}

async fn members(node: &LiveNode) -> MembersView {
    match node.call(Request::Members).await {
        Response::Members(m) => *m,
        other => panic!("unexpected {other:?}"),
    }
}

async fn proposals(node: &LiveNode, all: bool) -> Vec<ProposalView> {
    match node.call(Request::Proposals { all }).await {
        Response::Proposals(p) => p,
        other => panic!("unexpected {other:?}"),
    }
}

/// The roster as (name, role) pairs, for comparing nodes.
async fn roster_of(node: &LiveNode) -> Vec<(String, String, String)> {
    let view = members(node).await;
    let mut out: Vec<_> = view
        .entries
        .into_iter()
        .map(|e| (e.node_id, e.name, e.role))
        .collect();
    out.push(("quorum".into(), view.quorum.to_string(), String::new()));
    out
}

async fn node_id(node: &LiveNode) -> String {
    node.status().await.node_id
}

/// Starts every node, each bootstrapping from all started before it.
async fn start_mesh(nodes: &mut [LiveNode]) {
    let mut seen = Vec::new();
    for node in nodes.iter_mut() {
        node.start(seen.clone()).await;
        seen.extend(node.addresses());
    }
}

async fn try_write(node: &LiveNode, title: &str) -> Result<Response, String> {
    node.handle()
        .call(Request::AddAssessment(AssessmentInput {
            category: "algorithmic-bias".into(),
            title: title.into(),
            status: "open".into(),
            ..AssessmentInput::default()
        }))
        .await
        .map_err(|e| format!("{} {}", e.error, e.causes.join(" ")))
}

fn key_of(node: &LiveNode) -> Identity {
    Identity::load(&node.data_dir().key_file()).expect("key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_two_of_three_one_signature_does_nothing_the_second_applies_everywhere() {
    let (mut nodes, _) = federation(&["A", "B", "C"], &[]);
    start_mesh(&mut nodes).await;
    let all: Vec<&LiveNode> = nodes.iter().collect();
    wait_converged(&all, 0).await;
    let newcomer = Identity::generate().expect("key");
    let p = propose(
        &nodes[0],
        ProposalInput::Add {
            node_id: newcomer.node_id().to_string(),
            name: "Newcomer".into(),
            role: "observer".into(),
        },
    )
    .await;
    assert_eq!((p.state.as_str(), p.needs), ("pending", Some(1)));
    // Every node sees the proposal pending, and the roster unchanged.
    for node in &nodes {
        wait_until(&format!("{} sees the proposal", node.name), || async {
            proposals(node, false).await.iter().any(|q| q.id == p.id)
        })
        .await;
        assert_eq!(members(node).await.entries.len(), 3, "{}", node.name);
    }
    let done = approve(&nodes[1], &p.id[..10]).await;
    assert_eq!(done.state, "applied");
    for node in &nodes {
        wait_until(&format!("{} lists the newcomer", node.name), || async {
            members(node)
                .await
                .entries
                .iter()
                .any(|e| e.name == "Newcomer" && e.role == "observer")
        })
        .await;
    }
    // A second approval of a settled proposal is refused with a reason.
    let err = nodes[2]
        .handle()
        .call(Request::Approve {
            id: p.id.clone(),
            confirm_claims: false,
        })
        .await
        .expect_err("settled");
    assert!(err.error.contains("already in force"), "{}", err.error);
    for node in &mut nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_and_an_observer_added_by_quorum_sync_and_only_the_member_writes() {
    let (mut nodes, genesis) = federation(&["A", "B", "C"], &[]);
    start_mesh(&mut nodes).await;
    nodes[0].write("before the newcomers").await;
    let mut newcomer = outsider("N", &genesis);
    let mut watcher = outsider("W", &genesis);
    let n_id = Replica::open(&newcomer.data_dir())
        .expect("open")
        .identity()
        .node_id()
        .to_string();
    let w_id = Replica::open(&watcher.data_dir())
        .expect("open")
        .identity()
        .node_id()
        .to_string();
    let add_n = propose(
        &nodes[0],
        ProposalInput::Add {
            node_id: n_id.clone(),
            name: "N".into(),
            role: "member".into(),
        },
    )
    .await;
    // B approves once it has the proposal.
    wait_until("B sees the proposal", || async {
        proposals(&nodes[1], false)
            .await
            .iter()
            .any(|q| q.id == add_n.id)
    })
    .await;
    approve(&nodes[1], &add_n.id).await;
    let add_w = propose(
        &nodes[2],
        ProposalInput::Add {
            node_id: w_id.clone(),
            name: "W".into(),
            role: "observer".into(),
        },
    )
    .await;
    wait_until("A sees the observer proposal", || async {
        proposals(&nodes[0], false)
            .await
            .iter()
            .any(|q| q.id == add_w.id)
    })
    .await;
    approve(&nodes[0], &add_w.id).await;
    let a = nodes[0].addresses();
    newcomer.start(a.clone()).await;
    watcher.start(a).await;
    // Both catch up on everything, including the roster that admits them.
    wait_converged(&[&nodes[0], &nodes[1], &nodes[2], &newcomer, &watcher], 1).await;
    // The new member writes, and every node takes its change.
    newcomer.write("written by the newcomer").await;
    wait_converged(&[&nodes[0], &nodes[1], &nodes[2], &newcomer, &watcher], 2).await;
    // The observer cannot write.
    let err = try_write(&watcher, "observer write")
        .await
        .expect_err("refused");
    assert!(err.contains("observers cannot write"), "{err}");
    let first = nodes[0].state().await;
    for node in [&nodes[1], &nodes[2], &newcomer, &watcher] {
        assert_eq!(node.state().await, first, "{} differs", node.name);
    }
    for node in nodes.iter_mut().chain([&mut newcomer, &mut watcher]) {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_later_change_is_rejected_everywhere_even_where_it_arrived_first() {
    // Quorum 2 of 4: A and B remove C.
    let (mut nodes, _) = federation_with_quorum(&["A", "B", "C", "D"], &[], Some(2));
    start_mesh(&mut nodes).await;
    nodes[2].write("C before its removal").await;
    let all: Vec<&LiveNode> = nodes.iter().collect();
    wait_converged(&all, 1).await;
    let c_id = node_id(&nodes[2]).await;
    // C and D go offline; they do not hear of the removal.
    nodes[2].stop().await;
    nodes[3].stop().await;
    let removal = propose(
        &nodes[0],
        ProposalInput::Remove {
            node_id: c_id.clone(),
        },
    )
    .await;
    wait_until("B sees the removal", || async {
        proposals(&nodes[1], false)
            .await
            .iter()
            .any(|q| q.id == removal.id)
    })
    .await;
    assert_eq!(approve(&nodes[1], &removal.id).await.state, "applied");
    // Offline, C writes after its removal, and D takes that change from a
    // bundle before it learns of the removal: the change arrives first.
    let late = {
        let mut c = Replica::open(&nodes[2].data_dir()).expect("open C");
        let (id, _) = c
            .add_assessment(concord_node::doc::NewAssessment {
                category: "algorithmic-bias".into(),
                title: "C after its removal".into(),
                summary: String::new(),
                likelihood: None,
                severity: None,
                mitigations: Vec::new(),
                status: concord_node::model::Status::Open,
            })
            .expect("C writes offline");
        let (bundle, _) = c.export(&[]).expect("export");
        let mut d = Replica::open(&nodes[3].data_dir()).expect("open D");
        d.import(&bundle).expect("D imports before it knows");
        assert!(d.assessment(&id).is_ok(), "D shows it before it knows");
        id
    };
    // D comes back and learns the removal from A: it recomputes.
    let a = nodes[0].addresses();
    nodes[3].start(a.clone()).await;
    // C comes back too: every node refuses it.
    nodes[2].start(a).await;
    wait_until("D learns the removal", || async {
        members(&nodes[3])
            .await
            .former
            .iter()
            .any(|f| f.node_id == c_id)
    })
    .await;
    wait_converged(&[&nodes[0], &nodes[1], &nodes[3]], 1).await;
    for node in [&nodes[0], &nodes[1], &nodes[3]] {
        let err = node
            .handle()
            .call(Request::ShowAssessment { id: late.clone() })
            .await
            .expect_err("rejected");
        assert!(err.error.contains("no assessment"), "{}", err.error);
        assert!(
            !node
                .status()
                .await
                .connected
                .iter()
                .any(|n| n.contains('C')),
            "{} still talks to C",
            node.name
        );
    }
    let first = nodes[0].state().await;
    assert_eq!(nodes[1].state().await, first);
    assert_eq!(nodes[3].state().await, first);
    // D's verify names the rejected change and why.
    match nodes[3].call(Request::Verify).await {
        Response::Audit(audit) => {
            assert!(audit.ok, "{:?}", audit.problems);
            assert_eq!(audit.rejections.len(), 1, "{:?}", audit.rejections);
            assert!(
                audit.rejections[0].problem.contains("removed"),
                "{:?}",
                audit.rejections
            );
            let c = audit.authors.iter().find(|a| a.node_id == c_id).expect("C");
            assert_eq!((c.accepted, c.rejected), (1, 1));
        }
        other => panic!("unexpected {other:?}"),
    }
    // C is served nothing: a change written now reaches every node but C.
    // (C keeps dialling, and the others close each connection once its
    // handshake names C, so C's own list of connected peers may hold one
    // for an instant: what counts is that nothing reaches it.)
    let after = nodes[0].write("after C left").await;
    wait_converged(&[&nodes[0], &nodes[1], &nodes[3]], 2).await;
    let err = nodes[2]
        .handle()
        .call(Request::ShowAssessment { id: after })
        .await
        .expect_err("C was served nothing");
    assert!(err.error.contains("no assessment"), "{}", err.error);
    for node in &mut nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_concurrent_removals_settle_the_same_way_on_every_node() {
    let (mut nodes, _) = federation(&["A", "B", "C"], &["O"]);
    start_mesh(&mut nodes).await;
    let all: Vec<&LiveNode> = nodes.iter().collect();
    wait_converged(&all, 0).await;
    let a_id = node_id(&nodes[0]).await;
    let c_id = node_id(&nodes[2]).await;
    // Two removals at once; each alone is fine, together they would leave
    // one member under a quorum of two.
    let (p1, p2) = tokio::join!(
        propose(&nodes[0], ProposalInput::Remove { node_id: c_id }),
        propose(&nodes[1], ProposalInput::Remove { node_id: a_id }),
    );
    for (node, id) in [(&nodes[1], &p1.id), (&nodes[2], &p2.id)] {
        wait_until("the approver sees the proposal", || async {
            proposals(node, false).await.iter().any(|q| q.id == *id)
        })
        .await;
    }
    let (_, _) = tokio::join!(approve(&nodes[1], &p1.id), approve(&nodes[2], &p2.id));
    // B (a member either way) and the observer reach the same verdict.
    let settled = |node: &LiveNode| {
        let node = node.handle();
        async move {
            match node.call(Request::Proposals { all: true }).await {
                Ok(Response::Proposals(list)) => {
                    list.iter().filter(|p| p.state == "applied").count() == 1
                        && list.iter().filter(|p| p.state == "void").count() == 1
                }
                _ => false,
            }
        }
    };
    wait_until("B settles both", || settled(&nodes[1])).await;
    wait_until("O settles both", || settled(&nodes[3])).await;
    assert_eq!(roster_of(&nodes[1]).await, roster_of(&nodes[3]).await);
    let verdicts = |list: Vec<ProposalView>| {
        list.into_iter()
            .map(|p| (p.id, p.state, p.reason))
            .collect::<Vec<_>>()
    };
    let b = verdicts(proposals(&nodes[1], true).await);
    assert_eq!(b, verdicts(proposals(&nodes[3], true).await));
    assert!(
        b.iter()
            .any(|(_, s, r)| s == "void" && r.as_deref().is_some_and(|r| r.contains("quorum"))),
        "{b:?}"
    );
    assert_eq!(
        members(&nodes[1]).await.entries.len(),
        3,
        "two members, one observer"
    );
    for node in &mut nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observers_change_never_reaches_a_members_document() {
    let (mut nodes, genesis) = federation(&["A", "B"], &["O"]);
    start_mesh(&mut nodes[..2]).await;
    nodes[0].write("by A").await;
    wait_converged(&[&nodes[0], &nodes[1]], 1).await;
    // The observer's own node refuses to write...
    let a = nodes[0].addresses();
    nodes[2].start(a).await;
    let err = try_write(&nodes[2], "by O").await.expect_err("refused");
    assert!(err.contains("observers cannot write"), "{err}");
    nodes[2].stop().await;
    // ...and a change signed with its key, pushed straight to A from its
    // identity, is refused there and goes no further.
    let o = key_of(&nodes[2]);
    let change = forge::changes(o.public(), "observer", 1).remove(0);
    let envelope = Envelope::sign(&o, genesis.network_id(), change).expect("sign");
    let exchange = rogue::request(
        o.libp2p_keypair(),
        nodes[0].addresses().remove(0),
        sync::Request::Push {
            network: genesis.network_id(),
            records: Vec::new(),
            envelopes: vec![EnvelopeBytes(envelope.encode())],
            proofs: Vec::new(),
            versions: Vec::new(),
        },
    )
    .await;
    match exchange.outcome {
        Outcome::Answered(sync::Response::Ack { accepted, .. }) => assert_eq!(accepted, 0),
        Outcome::Answered(sync::Response::Refused { reason }) => {
            assert!(reason.contains("observer"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // A write by A after it is the barrier: once B holds it, B would also
    // hold anything A relayed before.
    nodes[0].write("by A, after").await;
    wait_converged(&[&nodes[0], &nodes[1]], 2).await;
    for node in &nodes[..2] {
        assert_eq!(node.status().await.envelopes, 2, "{}", node.name);
        match node.call(Request::Verify).await {
            Response::Audit(audit) => {
                assert!(
                    audit
                        .authors
                        .iter()
                        .all(|a| a.node_id != o.node_id().to_string()),
                    "{} stored the observer's change",
                    node.name
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for node in &mut nodes[..2] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_the_new_key_writes_and_the_old_keys_new_changes_are_rejected() {
    let (mut nodes, genesis) = federation(&["A", "B", "C"], &[]);
    start_mesh(&mut nodes).await;
    nodes[1].write("B with its first key").await;
    let all: Vec<&LiveNode> = nodes.iter().collect();
    wait_converged(&all, 1).await;
    // Keep a copy of B's old identity and store, as a thief of the old key
    // would have it.
    nodes[1].stop().await;
    let stolen = tempfile::tempdir().expect("tempdir");
    copy_dir(nodes[1].dir.path(), stolen.path());
    let a = nodes[0].addresses();
    nodes[1].start(a).await;
    wait_until("B is connected again", || async {
        nodes[1].status().await.connected.len() == 2
    })
    .await;
    let old_id = node_id(&nodes[1]).await;
    let rotated = match nodes[1].call(Request::RotateKey).await {
        Response::Rotated(r) => r,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(rotated.old_node_id, old_id);
    let new_id = rotated.identity.node_id.clone();
    assert_ne!(new_id, old_id);
    for node in &nodes {
        wait_until(&format!("{} knows B's new key", node.name), || async {
            members(node)
                .await
                .entries
                .iter()
                .any(|e| e.node_id == new_id && e.name == "B" && e.role == "member")
        })
        .await;
    }
    // B reconnects under its new key and writes.
    wait_until("B reconnects under its new key", || async {
        nodes[1].status().await.connected.len() == 2
    })
    .await;
    nodes[1].write("B with its new key").await;
    let all: Vec<&LiveNode> = nodes.iter().collect();
    wait_converged(&all, 2).await;
    // The old key signs a new change: every node refuses it.
    let (bundle, _) = {
        let mut thief = Replica::open(&DataDir::new(stolen.path())).expect("open copy");
        thief
            .add_assessment(concord_node::doc::NewAssessment {
                category: "algorithmic-bias".into(),
                title: "signed with the old key".into(),
                summary: String::new(),
                likelihood: None,
                severity: None,
                mitigations: Vec::new(),
                status: concord_node::model::Status::Open,
            })
            .expect("old key writes on its copy");
        thief.export(&[]).expect("export")
    };
    for node in &nodes {
        let err = node
            .handle()
            .call(Request::Import {
                bundle: bundle.clone(),
            })
            .await
            .expect_err("refused");
        let text = format!("{} {}", err.error, err.causes.join(" "));
        assert!(text.contains("replaced"), "{}: {text}", node.name);
        assert_eq!(node.status().await.envelopes, 2, "{}", node.name);
    }
    // The old key cannot even connect.
    let old_key = Identity::load(&DataDir::new(stolen.path()).key_file()).expect("old key");
    let exchange = rogue::request(
        old_key.libp2p_keypair(),
        nodes[0].addresses().remove(0),
        sync::Request::Pull {
            network: genesis.network_id(),
            have: Vec::new(),
            records: [0; 32],
            frozen: Vec::new(),
        },
    )
    .await;
    assert!(
        matches!(exchange.outcome, Outcome::Failed(_)),
        "the old key got an answer: {:?}",
        exchange.outcome
    );
    for node in &mut nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_who_copies_the_genesis_gets_nothing() {
    let (mut nodes, genesis) = federation(&["A", "B"], &[]);
    nodes[0].start(Vec::new()).await;
    nodes[0].write("members only").await;
    let mut stranger = outsider("Stranger", &genesis);
    stranger.start(nodes[0].addresses()).await;
    // B starts after the stranger and catches up: time enough for the
    // stranger to have been served, had it been.
    let a = nodes[0].addresses();
    nodes[1].start(a).await;
    wait_converged(&[&nodes[0], &nodes[1]], 1).await;
    nodes[0].write("still members only").await;
    wait_converged(&[&nodes[0], &nodes[1]], 2).await;
    let status = stranger.status().await;
    assert_eq!(status.envelopes, 0);
    assert!(status.connected.is_empty(), "{:?}", status.connected);
    assert!(
        !nodes[0]
            .status()
            .await
            .connected
            .iter()
            .any(|n| n.contains("Stranger") || n.contains("unknown")),
    );
    let err = try_write(&stranger, "let me in")
        .await
        .expect_err("refused");
    assert!(err.contains("not on the roster"), "{err}");
    stranger.stop().await;
    for node in &mut nodes {
        node.stop().await;
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
