//! A member that forks its chain against live nodes on 127.0.0.1: it gives
//! one version of its changes to A and another version, with the same
//! numbers, to B. Before protocol 2 their tips were equal, neither saw the
//! other version, and every later write of A's and B's was refused on the
//! other side for good. Now the tips' hashes show the fork, both nodes hold
//! a proof, freeze the forker alike and converge.

use std::time::Duration;

use concord_node::api::{Request, Response};
use concord_node::bundle::EnvelopeBytes;
use concord_node::identity::Identity;
use concord_node::sync;
use support::forge;
use support::live::{LiveNode, federation, wait_until};
use support::rogue::{self, Outcome};

fn key_of(node: &LiveNode) -> Identity {
    Identity::load(&node.dir.path().join("identity.key")).expect("key")
}

/// Pushes `changes` to `to` as the holder of `forger`'s key.
async fn push_as(
    forger: &Identity,
    to: &LiveNode,
    genesis: &std::path::Path,
    changes: Vec<Vec<u8>>,
) {
    let envelopes = changes
        .into_iter()
        .map(|c| EnvelopeBytes(forge::envelope(forger, genesis, c).encode()))
        .collect();
    let exchange = rogue::request(
        forger.libp2p_keypair(),
        to.addresses().remove(0),
        sync::Request::Push {
            network: forge::read_genesis(genesis).network_id(),
            records: Vec::new(),
            envelopes,
            proofs: Vec::new(),
            versions: Vec::new(),
        },
    )
    .await;
    match exchange.outcome {
        Outcome::Answered(sync::Response::Ack { accepted: 2, .. }) => {}
        other => panic!("{} did not take its version: {other:?}", to.name),
    }
}

async fn web_page(url: String) -> String {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .body_mut()
            .read_to_string()
            .expect("body")
    })
    .await
    .expect("fetch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_given_half_to_each_node_is_found_and_settled_alike() {
    let (mut nodes, genesis) = federation(&["A", "B", "F"], &[]);
    let genesis_file = nodes[0].dir.path().join("genesis-copy.concord");
    std::fs::write(&genesis_file, genesis.encode()).expect("write genesis");
    let forger = key_of(&nodes[2]);
    // A and B run apart at first, so each gets only its own version.
    nodes[0].start(Vec::new()).await;
    nodes[1].start(Vec::new()).await;
    push_as(
        &forger,
        &nodes[0],
        &genesis_file,
        forge::changes(forger.public(), "for-a", 2),
    )
    .await;
    push_as(
        &forger,
        &nodes[1],
        &genesis_file,
        forge::changes(forger.public(), "for-b", 2),
    )
    .await;
    for node in &nodes[..2] {
        let status = node.status().await;
        assert_eq!(status.envelopes, 2, "{} counts its version", node.name);
        assert!(status.forks.is_empty());
    }
    // A writes on top of its version before anyone knows of the fork.
    let honest = nodes[0]
        .write("written at A on top of the forker's version")
        .await;
    // Now they meet: B restarts and dials A.
    nodes[1].stop().await;
    let a_addr = nodes[0].addresses();
    nodes[1].start(a_addr).await;

    let forger_id = forger.node_id().to_string();
    let (a, b) = (&nodes[0], &nodes[1]);
    wait_until("both nodes hold the proof and count the same", || async {
        let (sa, sb) = (a.status().await, b.status().await);
        let frozen = |s: &concord_node::api::StatusView| {
            s.forks
                .iter()
                .any(|f| f.node_id == forger_id && f.fork_at == 1)
        };
        frozen(&sa) && frozen(&sb) && sa.heads == sb.heads && sa.envelopes == sb.envelopes
    })
    .await;
    assert_eq!(a.state().await, b.state().await);
    // Neither version counts, nor A's write built on one: nothing stands.
    assert_eq!(a.status().await.envelopes, 0);
    // A's node refuses to write on top of it and says how to go on.
    let refused = a
        .handle()
        .call(Request::AddAssessment(concord_node::api::AssessmentInput {
            category: "algorithmic-bias".into(),
            title: "refused".into(),
            status: "open".into(),
            ..Default::default()
        }))
        .await
        .expect_err("A's chain is tainted");
    assert!(
        refused.error.contains("concord key rotate"),
        "{}",
        refused.error
    );
    // Rotating the key carries A's write over: B gets its content.
    match a.call(Request::RotateKey).await {
        Response::Rotated(_) => {}
        other => panic!("rotate: {other:?}"),
    }
    let b_handle = b.handle();
    wait_until("B holds A's honest write, carried over", || async {
        matches!(
            b_handle.call(Request::ShowAssessment { id: honest.clone() }).await,
            Ok(Response::Assessment(view)) if view.title == "written at A on top of the forker's version"
        )
    })
    .await;
    // Honest writes after the settlement reach the other side.
    let id = a.write("after the fork").await;
    wait_until("B holds A's write after the fork", || async {
        matches!(
            b.handle()
                .call(Request::ShowAssessment { id: id.clone() })
                .await,
            Ok(Response::Assessment(_))
        )
    })
    .await;
    // `peers` shows the forker frozen and nothing lacking either way.
    wait_until("A's peers show nothing lacking and the fork", || async {
        let Response::Peers(peers) = a.call(Request::Peers).await else {
            return false;
        };
        let b_id = b.status().await.node_id;
        let to_b = peers.iter().find(|p| p.node_id == b_id);
        let of_f = peers.iter().find(|p| p.node_id == forger_id);
        to_b.is_some_and(|p| p.they_lack == Some(0) && p.we_lack == Some(0))
            && of_f.is_some_and(|p| p.forked_at == Some(1))
    })
    .await;
    // `verify` names the frozen key and the two versions.
    let Response::Audit(audit) = b.call(Request::Verify).await else {
        panic!("verify answers with an audit");
    };
    assert!(audit.ok, "{:?}", audit.problems);
    assert_eq!(audit.frozen.len(), 1, "{:?}", audit.frozen);
    assert_eq!(audit.frozen[0].fork_at, 1);
    assert_eq!(audit.frozen[0].versions.len(), 2);
    // The web view's network page shows it.
    let page = web_page(format!("{}/network", a.web_url())).await;
    assert!(
        page.contains("Forks") && page.contains(&forger_id),
        "{page}"
    );
}

/// Issue 14, item 11: the natural restore (copy `identity.key` and
/// `concord.toml` into a new directory, `network join`, write at once)
/// signed a second change number 1 and forked the institution's own chain
/// for good. Now the restored directory signs nothing until it has caught
/// up with a member; then it goes on from the key's real tip, and no fork
/// is made anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_key_signs_nothing_until_it_has_caught_up_and_then_no_fork() {
    let (mut nodes, genesis) = federation(&["A", "B"], &[]);
    nodes[0].start(Vec::new()).await;
    let a_addr = nodes[0].addresses();
    nodes[1].start(a_addr).await;
    for i in 0..3 {
        nodes[0].write(&format!("A before the restore {i}")).await;
    }
    let b = &nodes[1];
    wait_until("B holds A's three changes", || async {
        b.status().await.envelopes == 3
    })
    .await;
    // A's machine is lost; its operator restores the key into a new
    // directory and joins again.
    let mut a = nodes.remove(0);
    a.stop().await;
    let restored_dir = tempfile::Builder::new()
        .prefix("concord-live-")
        .tempdir()
        .expect("tempdir");
    for file in ["identity.key", "concord.toml"] {
        std::fs::copy(a.dir.path().join(file), restored_dir.path().join(file)).expect("copy");
    }
    let data = concord_node::config::DataDir::new(restored_dir.path());
    let mut replica = concord_node::replica::Replica::open(&data).expect("open");
    replica.join(genesis.clone()).expect("join");
    let refused = replica
        .add_assessment(concord_node::doc::NewAssessment {
            category: "algorithmic-bias".into(),
            title: "written before the first sync".into(),
            summary: String::new(),
            likelihood: None,
            severity: None,
            mitigations: Vec::new(),
            status: concord_node::model::Status::Draft,
        })
        .expect_err("a restored key must not sign before it has caught up");
    assert!(
        matches!(refused, concord_node::replica::ReplicaError::ChainUnknown),
        "{refused}"
    );
    assert!(refused.to_string().contains("caught up with a member"));
    drop(replica);
    let mut restored = LiveNode {
        name: "A restored".into(),
        dir: restored_dir,
        running: None,
    };
    restored.start(nodes[0].addresses()).await;
    let b = &nodes[0];
    wait_until(
        "the restored node has caught up and writes again",
        || async {
            restored
                .handle()
                .call(Request::AddAssessment(concord_node::api::AssessmentInput {
                    category: "algorithmic-bias".into(),
                    title: "A after the restore".into(),
                    status: "open".into(),
                    ..Default::default()
                }))
                .await
                .is_ok()
        },
    )
    .await;
    wait_until("B holds A's fourth change", || async {
        b.status().await.envelopes == 4
    })
    .await;
    let a_id = restored.status().await.node_id;
    assert_eq!(
        b.status().await.tips.get(&a_id),
        Some(&4),
        "A went on from 3"
    );
    assert!(b.status().await.forks.is_empty(), "no fork anywhere");
    assert!(restored.status().await.forks.is_empty());
    restored.stop().await;
}

/// The manual repair, as air-gapped sites do it: importing the other
/// side's bundle used to be refused whole once a fork split two nodes. Now
/// the bundle proves the fork, what the freeze leaves out is left out and
/// the rest imports; and after A rotates its key, A's own write made on its
/// version reaches B in A's next bundle.
#[test]
fn bundles_from_both_sides_of_a_fork_prove_it_and_repair_the_split() {
    use support::{Federation, add_assessment, path_str};
    let fed = Federation::new(&["A", "B", "F"], &[]);
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
    let forger = fed.nodes[2].identity();
    let branch = |label: &str, at: &support::Node| {
        let envelopes = forge::changes(forger.public(), label, 2)
            .into_iter()
            .map(|c| forge::envelope(&forger, &fed.genesis, c).encode())
            .collect();
        forge::bundle(
            at.dir(),
            &format!("{label}.bundle"),
            &fed.genesis,
            envelopes,
        )
    };
    assert_eq!(a.import(&branch("for-a", a))["new"], 2);
    assert_eq!(b.import(&branch("for-b", b))["new"], 2);
    // Each writes on top of the version it got, before anyone knows.
    let on_x = add_assessment(a, "algorithmic-bias", "A's write on its version");
    let on_y = add_assessment(b, "reliability", "B's write on its version");

    // They swap bundles, as air-gapped sites do. A imports B's: the fork
    // is proven, and what the freeze leaves out (the y branch, and B's
    // write built on it) is left out instead of refusing the bundle.
    let from_a = a.export("from-a.bundle");
    let from_b = b.export("from-b.bundle");
    let summary = a.import(&from_b);
    assert_eq!(summary["forks_proven"], 1, "{summary}");
    assert_eq!(summary["left_out"], 3, "{summary}");
    let text = a.ok(&["import", path_str(&from_b)]);
    assert!(text.contains("Left out 3 change(s)"), "{text}");
    // B imports A's: it proves the fork the same way.
    assert_eq!(b.import(&from_a)["forks_proven"], 1);
    let document = |n: &support::Node| (n.json(&["assess", "list"]), n.json(&["note", "list"]));
    assert_eq!(document(a), document(b), "both sides settled alike");
    for node in [a, b] {
        let refused = node.fails(
            1,
            &["assess", "add", "--category", "reliability", "--title", "x"],
        );
        assert!(refused.contains("concord key rotate"), "{refused}");
    }

    // Each rotates (offline): its write comes back under its new key, and
    // the bundles carry the successions and the writes across.
    a.ok(&["key", "rotate"]);
    b.ok(&["key", "rotate"]);
    b.import(&a.export("a-rotated.bundle"));
    a.import(&b.export("b-rotated.bundle"));
    for node in [a, b] {
        assert_eq!(
            node.json(&["assess", "show", &on_x])["title"],
            "A's write on its version"
        );
        assert_eq!(
            node.json(&["assess", "show", &on_y])["title"],
            "B's write on its version"
        );
    }
    assert_eq!(document(a), document(b));
}
