//! Live nodes syncing over real libp2p connections on 127.0.0.1.

use concord_node::api::{Request, Response};
use concord_node::bundle::EnvelopeBytes;
use concord_node::envelope::Envelope;
use concord_node::identity::Identity;
use concord_node::sync;
use support::forge;
use support::live::{LiveNode, federation, wait_converged, wait_until};
use support::rogue::{self, Outcome};

async fn connected_names(node: &LiveNode) -> Vec<String> {
    node.status().await.connected
}

fn key_of(node: &LiveNode) -> Identity {
    Identity::load(&node.dir.path().join("identity.key")).expect("key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_and_an_observer_converge_after_concurrent_writes() {
    let (mut nodes, _) = federation(&["A", "B", "C"], &["O"]);
    // A full mesh: every node bootstraps from every node started before it.
    let mut seen = Vec::new();
    for node in &mut nodes {
        node.start(seen.clone()).await;
        seen.extend(node.addresses());
    }
    let writers: Vec<_> = nodes[..3]
        .iter()
        .map(|n| {
            let handle = n.handle();
            let name = n.name.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let request = Request::AddAssessment(concord_node::api::AssessmentInput {
                        category: "reliability".into(),
                        title: format!("{name} {i}"),
                        status: "open".into(),
                        ..Default::default()
                    });
                    handle.call(request).await.expect("write");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let all: Vec<&LiveNode> = nodes.iter().collect();
    wait_converged(&all, 30).await;
    let first = nodes[0].state().await;
    for node in &nodes[1..] {
        assert_eq!(node.state().await, first, "{} differs", node.name);
    }
    // The observer verified and holds everything; every author checks out.
    match nodes[3].call(Request::Verify).await {
        Response::Audit(audit) => {
            assert!(audit.ok, "{:?}", audit.problems);
            assert_eq!(audit.authors.len(), 3);
        }
        other => panic!("unexpected {other:?}"),
    }
    for node in &mut nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_a_reaches_c_through_b() {
    let (mut nodes, _) = federation(&["A", "B", "C"], &[]);
    nodes[1].start(Vec::new()).await;
    let b = nodes[1].addresses();
    nodes[0].start(b.clone()).await;
    nodes[2].start(b).await;
    wait_until("B is connected to A and C", || async {
        connected_names(&nodes[1]).await.len() == 2
    })
    .await;
    let id = nodes[0].write("from A").await;
    wait_until("C holds A's change", || async {
        matches!(
            nodes[2]
                .handle()
                .call(Request::ShowAssessment { id: id.clone() })
                .await,
            Ok(Response::Assessment(_))
        )
    })
    .await;
    // A and C never connected: the change travelled through B.
    assert_eq!(connected_names(&nodes[0]).await, vec!["B".to_string()]);
    assert_eq!(connected_names(&nodes[2]).await, vec!["B".to_string()]);
    for node in &mut nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_left_behind_by_1000_changes_catches_up_after_restart() {
    let (mut nodes, _) = federation(&["A", "B"], &[]);
    nodes[0].start(Vec::new()).await;
    let a = nodes[0].addresses();
    nodes[1].start(a).await;
    let mine = nodes[1].write("B's own, before it stops").await;
    wait_converged(&[&nodes[0], &nodes[1]], 1).await;
    nodes[1].stop().await;
    for i in 0..1000 {
        nodes[0].write(&format!("while B is away {i}")).await;
    }
    // No bootstrap this time: B reconnects from the addresses it remembered.
    nodes[1].start(Vec::new()).await;
    wait_converged(&[&nodes[0], &nodes[1]], 1001).await;
    assert_eq!(nodes[0].state().await, nodes[1].state().await);
    match nodes[1].call(Request::ShowAssessment { id: mine }).await {
        Response::Assessment(a) => assert_eq!(a.title, "B's own, before it stops"),
        other => panic!("unexpected {other:?}"),
    }
    for node in &mut nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_groups_converge_after_reconnecting() {
    let (mut nodes, _) = federation(&["A", "B", "C", "D"], &[]);
    // Two groups that do not know of each other: {A, B} and {C, D}.
    nodes[0].start(Vec::new()).await;
    let a = nodes[0].addresses();
    nodes[1].start(a.clone()).await;
    nodes[2].start(Vec::new()).await;
    let c = nodes[2].addresses();
    nodes[3].start(c).await;
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..5 {
            node.write(&format!("{} apart {j}", ["A", "B", "C", "D"][i]))
                .await;
        }
    }
    wait_converged(&[&nodes[0], &nodes[1]], 10).await;
    wait_converged(&[&nodes[2], &nodes[3]], 10).await;
    assert_ne!(nodes[0].state().await, nodes[2].state().await);
    // Heal: D restarts knowing A.
    nodes[3].stop().await;
    nodes[3].start(a).await;
    let all: Vec<&LiveNode> = nodes.iter().collect();
    wait_converged(&all, 20).await;
    let first = nodes[0].state().await;
    for node in &nodes[1..] {
        assert_eq!(node.state().await, first, "{} differs", node.name);
    }
    for node in &mut nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_off_the_roster_receives_nothing_and_is_disconnected() {
    let (mut nodes, genesis) = federation(&["A"], &[]);
    nodes[0].start(Vec::new()).await;
    nodes[0].write("secret to strangers").await;
    let stranger = Identity::generate().expect("key");
    let addr = nodes[0].addresses().remove(0);
    let exchange = rogue::request(
        stranger.libp2p_keypair(),
        addr,
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
        "a stranger got an answer: {:?}",
        exchange.outcome
    );
    assert!(exchange.disconnected);
    assert!(connected_names(&nodes[0]).await.is_empty());
    nodes[0].stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_pushing_a_forged_envelope_is_disconnected_and_others_keep_syncing() {
    let (mut nodes, genesis) = federation(&["A", "B", "M"], &[]);
    nodes[0].start(Vec::new()).await;
    let a = nodes[0].addresses();
    nodes[1].start(a.clone()).await;
    wait_converged(&[&nodes[0], &nodes[1]], 0).await;
    // M is a member, but what it pushes is signed by a stranger in M's name.
    let m = key_of(&nodes[2]);
    let stranger = Identity::generate().expect("key");
    let change = forge::changes(m.public(), "forged", 1).remove(0);
    let genuine = Envelope::sign(&m, genesis.network_id(), change).expect("sign");
    let forged = Envelope::from_parts(
        m.public(),
        stranger.sign(b"anything"),
        genuine.change_bytes().to_vec(),
    )
    .expect("envelope");
    let before = nodes[0].status().await;
    let exchange = rogue::request(
        m.libp2p_keypair(),
        a[0].clone(),
        sync::Request::Push {
            network: genesis.network_id(),
            records: Vec::new(),
            envelopes: vec![EnvelopeBytes(forged.encode())],
            proofs: Vec::new(),
            versions: Vec::new(),
        },
    )
    .await;
    match exchange.outcome {
        Outcome::Answered(sync::Response::Refused { reason }) => {
            assert!(reason.contains("does not verify"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(exchange.disconnected, "the forger stayed connected");
    assert_eq!(
        nodes[0].status().await.envelopes,
        before.envelopes,
        "something was stored"
    );
    // The honest members carry on.
    nodes[1].write("still syncing").await;
    wait_converged(&[&nodes[0], &nodes[1]], before.envelopes + 1).await;
    for node in &mut nodes[..2] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_messages_are_rejected_and_the_node_keeps_running() {
    let (mut nodes, _) = federation(&["A", "B", "M"], &[]);
    nodes[0].start(Vec::new()).await;
    let a = nodes[0].addresses();
    let m = key_of(&nodes[2]).libp2p_keypair();
    // Undecodable: a valid frame around bytes that are no message.
    let mut garbage = 9u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 9]);
    // Oversized: a frame announcing 100 MiB.
    let mut oversized = (100u32 << 20).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0u8; 1024]);
    for bytes in [garbage, oversized] {
        let exchange = rogue::raw(m.clone(), a[0].clone(), bytes).await;
        assert!(
            !matches!(&exchange.outcome, Outcome::Answered(body) if !body.is_empty()),
            "the node answered garbage: {:?}",
            exchange.outcome
        );
        assert!(exchange.disconnected, "the sender stayed connected");
    }
    // Still serving: a write, and a member that syncs.
    nodes[0].write("after the garbage").await;
    nodes[1].start(a).await;
    wait_converged(&[&nodes[0], &nodes[1]], 1).await;
    for node in &mut nodes[..2] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_writes_is_made_durable_with_one_flush_and_reaches_peers() {
    let (mut nodes, _) = federation(&["A", "B"], &[]);
    nodes[0].start(Vec::new()).await;
    let a = nodes[0].addresses();
    nodes[1].start(a).await;
    wait_converged(&[&nodes[0], &nodes[1]], 0).await;
    let before = nodes[0].status().await.flushes;
    let requests = (0..20)
        .map(|i| {
            Request::AddAssessment(concord_node::api::AssessmentInput {
                category: "reliability".into(),
                title: format!("batched {i}"),
                status: "open".into(),
                ..Default::default()
            })
        })
        .collect();
    match nodes[0].call(Request::Batch { requests }).await {
        Response::Batch(answers) => assert_eq!(answers.len(), 20),
        other => panic!("unexpected {other:?}"),
    }
    let after = nodes[0].status().await;
    assert_eq!(after.envelopes, 20);
    assert_eq!(after.flushes - before, 1, "one flush for the whole batch");
    wait_converged(&[&nodes[0], &nodes[1]], 20).await;
    // A batch may hold only local writes; the refusal names the item.
    let err = nodes[0]
        .handle()
        .call(Request::Batch {
            requests: vec![Request::Verify],
        })
        .await
        .expect_err("refused");
    assert!(err.error.contains("request #0"), "{}", err.error);
    for node in &mut nodes {
        node.stop().await;
    }
}
