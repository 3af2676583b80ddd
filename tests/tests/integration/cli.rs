//! The commands an institution uses offline, run as a user would.

use support::{Federation, Node, add_assessment, add_note, path_str};

#[test]
fn init_prints_a_node_id_and_id_reports_it() {
    let node = Node::uninitialised("Tsinghua CISS");
    let out = node.ok(&["init", "--name", "Tsinghua CISS"]);
    let id = node.json(&["id"]);
    let node_id = id["node_id"].as_str().expect("node_id");
    assert!(node_id.starts_with("12D3KooW"), "{node_id}");
    assert!(out.contains(node_id), "{out}");
    assert!(
        out.contains(id["fingerprint"].as_str().expect("fingerprint")),
        "{out}"
    );
    assert_eq!(id["name"], "Tsinghua CISS");
    assert_eq!(id["public_key"].as_str().expect("key").len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(node.dir().join("identity.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let config = std::fs::read_to_string(node.dir().join("concord.toml")).expect("config");
    assert!(
        config.contains("# ") && config.contains("name = \"Tsinghua CISS\""),
        "{config}"
    );
}

#[test]
fn data_dir_comes_from_the_environment_when_no_flag_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(support::concord_bin())
        .args(["init", "--name", "Env"])
        .env("CONCORD_DATA_DIR", dir.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("identity.key").exists());
}

#[test]
fn network_create_join_and_show() {
    let fed = Federation::new(&["A", "B", "C"], &["O"]);
    for node in &fed.nodes {
        let net = node.json(&["network", "show"]);
        assert_eq!(net["name"], "Test network");
        assert_eq!(net["quorum"], 2, "majority of three members");
        let roster = net["roster"].as_array().expect("roster");
        assert_eq!(roster.len(), 4);
        let observer = roster.iter().find(|e| e["name"] == "O").expect("O");
        assert_eq!(observer["role"], "observer");
    }
    let ids: Vec<_> = fed
        .nodes
        .iter()
        .map(|n| n.json(&["network", "show"])["network_id"].clone())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    // A node that is not on the founding roster cannot join by mistake;
    // with --pending it joins, and stays shut out until a quorum admits it.
    let stranger = Node::init("Stranger");
    stranger.refuses(
        &["network", "join", path_str(&fed.genesis)],
        "is not on the founding roster",
    );
    stranger.ok(&["network", "join", "--pending", path_str(&fed.genesis)]);
    stranger.refuses(
        &["assess", "add", "--category", "reliability", "--title", "t"],
        "is not on the roster",
    );
    // An impossible quorum is refused.
    let d = Node::init("D");
    let out = d.dir().join("g.concord");
    d.refuses(
        &[
            "network",
            "create",
            "--name",
            "N",
            "--quorum",
            "3",
            "--out",
            path_str(&out),
        ],
        "quorum 3 is impossible",
    );
    assert!(!out.exists());
}

#[test]
fn categories_lists_the_taxonomy_and_accepts_extensions() {
    let fed = Federation::new(&["A", "B"], &[]);
    let a = &fed.nodes[0];
    let cats = a.json(&["categories"]);
    let keys: Vec<_> = cats
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["key"].as_str().expect("key").to_string())
        .collect();
    for key in [
        "algorithmic-bias",
        "malicious-use",
        "climate-governance",
        "technology-gap",
    ] {
        assert!(
            keys.contains(&key.to_string()),
            "{key} missing from {keys:?}"
        );
    }
    let text = a.ok(&["categories"]);
    assert!(
        text.contains("Technological safety") && text.contains("Beneficial use"),
        "{text}"
    );
    a.ok(&[
        "categories",
        "add",
        "biosecurity",
        "--group",
        "application-security",
        "--title",
        "AI-enabled biological risks",
    ]);
    add_assessment(a, "biosecurity", "Protein design misuse");
    // B learns the new category with the changes that use it.
    fed.exchange_all();
    let b_list = fed.nodes[1].json(&["assess", "list", "--category", "biosecurity"]);
    assert_eq!(b_list.as_array().expect("list").len(), 1);
    a.refuses(
        &[
            "categories",
            "add",
            "algorithmic-bias",
            "--group",
            "beneficial-use",
            "--title",
            "x",
        ],
        "already exists",
    );
}

#[test]
fn assessments_can_be_added_listed_shown_updated_and_commented() {
    let fed = Federation::new(&["A"], &[]);
    let a = &fed.nodes[0];
    let id = a.ok(&[
        "assess",
        "add",
        "--category",
        "reliability",
        "--title",
        "Opaque reasoning",
        "--summary",
        "Models cannot explain decisions.",
        "--likelihood",
        "4",
        "--severity",
        "3",
        "--mitigation",
        "Interpretability research",
        "--mitigation",
        "Audits",
        "--status",
        "open",
    ]);
    let id = id.trim();
    assert!(id.starts_with("ra-"), "{id}");
    let shown = a.json(&["assess", "show", id]);
    assert_eq!(shown["title"], "Opaque reasoning");
    assert_eq!(shown["risk"], 12);
    assert_eq!(
        shown["mitigations"],
        serde_json::json!(["Interpretability research", "Audits"])
    );
    assert_eq!(shown["status"], "open");
    assert_eq!(shown["author"]["name"], "A");
    a.ok(&[
        "assess",
        "update",
        id,
        "--severity",
        "5",
        "--status",
        "accepted",
    ]);
    a.ok(&["assess", "comment", id, "Agreed after round 2."]);
    let shown = a.json(&["assess", "show", id]);
    assert_eq!(shown["severity"], 5);
    assert_eq!(shown["status"], "accepted");
    assert_eq!(shown["comments"][0]["text"], "Agreed after round 2.");
    assert_eq!(shown["comments"][0]["author"]["name"], "A");
    let text = a.ok(&["assess", "show", id]);
    assert!(
        text.contains("Opaque reasoning") && text.contains("Agreed after round 2."),
        "{text}"
    );
    add_assessment(a, "malicious-use", "Second");
    assert_eq!(
        a.json(&["assess", "list"]).as_array().expect("list").len(),
        2
    );
    assert_eq!(
        a.json(&["assess", "list", "--status", "accepted"])
            .as_array()
            .expect("list")
            .len(),
        1
    );
    assert_eq!(
        a.json(&["assess", "list", "--category", "malicious-use"])
            .as_array()
            .expect("list")
            .len(),
        1
    );
    let table = a.ok(&["assess", "list"]);
    assert!(
        table.contains("Opaque reasoning") && table.contains("Second"),
        "{table}"
    );
    a.refuses(&["assess", "update", id], "nothing to update");
}

#[test]
fn notes_derive_their_standing_from_member_positions() {
    let fed = Federation::new(&["A", "B"], &["O"]);
    let (a, b, o) = (&fed.nodes[0], &fed.nodes[1], &fed.nodes[2]);
    let assessment = add_assessment(a, "international-interaction", "Militarisation");
    let note = a.json(&[
        "note",
        "add",
        "--topic",
        "Human control",
        "--body",
        "Keep humans in control.",
        "--kind",
        "consensus",
        "--round",
        "track-ii",
        "--assessment",
        &assessment,
    ])["id"]
        .as_str()
        .expect("id")
        .to_string();
    a.ok(&["note", "position", &note, "agree"]);
    fed.exchange_all();
    assert_eq!(
        b.json(&["note", "show", &note])["standing"],
        "open",
        "B has not spoken"
    );
    b.ok(&[
        "note",
        "position",
        &note,
        "reservation",
        "--comment",
        "Needs verification.",
    ]);
    fed.exchange_all();
    for node in [a, b, o] {
        let shown = node.json(&["note", "show", &note]);
        assert_eq!(shown["standing"], "consensus", "on {}", node.name);
        let positions = shown["positions"].as_array().expect("positions");
        assert_eq!(positions.len(), 2, "one per member: {shown}");
        let of_b = positions
            .iter()
            .find(|p| p["institution"]["name"] == "B")
            .expect("B");
        assert_eq!(of_b["position"], "reservation");
        assert_eq!(of_b["comment"], "Needs verification.");
    }
    b.ok(&["note", "position", &note, "disagree"]);
    fed.exchange_all();
    assert_eq!(o.json(&["note", "show", &note])["standing"], "divergence");
    let list = a.json(&["note", "list"]);
    assert_eq!(list[0]["standing"], "divergence");
    let text = a.ok(&["note", "show", &note]);
    assert!(
        text.contains("divergence") && text.contains("disagree"),
        "{text}"
    );
    a.refuses(
        &["note", "position", &note, "maybe"],
        "unknown position \"maybe\"",
    );
}

#[test]
fn concurrent_edits_are_listed_with_their_authors() {
    let fed = Federation::new(&["A", "B"], &[]);
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
    let id = add_assessment(a, "algorithmic-bias", "Biased hiring models");
    fed.exchange_all();
    a.ok(&["assess", "update", &id, "--title", "Bias in hiring"]);
    b.ok(&[
        "assess",
        "update",
        &id,
        "--title",
        "Discrimination in hiring",
    ]);
    fed.exchange_all();
    for node in [a, b] {
        let shown = node.json(&["assess", "show", &id]);
        let conflicts = shown["conflicts"].as_array().expect("conflicts");
        assert_eq!(conflicts.len(), 1, "{shown}");
        assert_eq!(conflicts[0]["field"], "title");
        let mut values: Vec<_> = conflicts[0]["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| {
                (
                    v["value"].as_str().expect("value").to_string(),
                    v["author"]["name"].as_str().expect("name").to_string(),
                )
            })
            .collect();
        values.sort();
        assert_eq!(
            values,
            vec![
                ("Bias in hiring".to_string(), "A".to_string()),
                ("Discrimination in hiring".to_string(), "B".to_string())
            ]
        );
        let text = node.ok(&["assess", "show", &id]);
        assert!(
            text.contains("concurrent edits") && text.contains("by A") && text.contains("by B"),
            "{text}"
        );
    }
}

#[test]
fn export_since_heads_carries_only_newer_changes_and_import_is_idempotent() {
    let fed = Federation::new(&["A", "B"], &[]);
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
    add_assessment(a, "algorithmic-bias", "one");
    let full = a.export("full.bundle");
    assert_eq!(b.import(&full)["new"], 1);
    assert_eq!(
        b.import(&full),
        serde_json::json!({"new": 0, "already_known": 1, "records": 0, "left_out": 0, "forks_proven": 0})
    );
    let heads = a.json(&["verify"])["heads"]
        .as_array()
        .expect("heads")
        .iter()
        .map(|h| h.as_str().expect("hash").to_string())
        .collect::<Vec<_>>()
        .join(",");
    add_assessment(a, "algorithmic-bias", "two");
    add_assessment(a, "algorithmic-bias", "three");
    let out = a.dir().join("delta.bundle");
    let exported = a.json(&["export", "--out", path_str(&out), "--since", &heads]);
    assert_eq!(exported["changes"], 2);
    assert_eq!(b.import(&out)["new"], 2);
    assert_eq!(a.json(&["assess", "list"]), b.json(&["assess", "list"]));
    a.refuses(
        &["export", "--out", path_str(&out), "--since", "zz"],
        "not a change hash",
    );
    let unknown = "ab".repeat(32);
    a.refuses(
        &["export", "--out", path_str(&out), "--since", &unknown],
        "unknown head",
    );
}

#[test]
fn verify_reports_every_author() {
    let fed = Federation::new(&["A", "B"], &[]);
    add_assessment(&fed.nodes[0], "algorithmic-bias", "a1");
    add_assessment(&fed.nodes[1], "algorithmic-bias", "b1");
    add_assessment(&fed.nodes[1], "algorithmic-bias", "b2");
    fed.exchange_all();
    let audit = fed.nodes[0].json(&["verify"]);
    assert_eq!(audit["ok"], true);
    assert_eq!(audit["envelopes"], 3);
    let authors = audit["authors"].as_array().expect("authors");
    let of = |name: &str| {
        authors
            .iter()
            .find(|a| a["name"] == name)
            .expect("author")
            .clone()
    };
    assert_eq!(of("A")["verified"], 1);
    assert_eq!(of("B")["verified"], 2);
    assert_eq!(of("B")["rejected"], 0);
}

#[test]
fn report_prints_consensus_and_divergence() {
    let fed = Federation::new(&["A", "B"], &[]);
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
    let risk = add_assessment(a, "technology-gap", "Compute divide");
    let agreed = add_note(a, "Share benchmarks", &risk);
    let split = add_note(a, "Chip export controls", &risk);
    a.ok(&["note", "position", &agreed, "agree"]);
    a.ok(&["note", "position", &split, "agree", "--comment", "Needed."]);
    fed.exchange_all();
    b.ok(&["note", "position", &agreed, "agree"]);
    b.ok(&[
        "note",
        "position",
        &split,
        "disagree",
        "--comment",
        "Trade matter.",
    ]);
    fed.exchange_all();
    let md = a.ok(&["report"]);
    assert!(
        md.contains("Consensus reached") && md.contains("Share benchmarks"),
        "{md}"
    );
    assert!(
        md.contains("Points of divergence") && md.contains("Chip export controls"),
        "{md}"
    );
    assert!(md.contains("**disagree**: Trade matter."), "{md}");
    assert!(md.contains("Compute divide"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&a.ok(&["report", "--format", "json"])).expect("report JSON");
    assert_eq!(json["totals"]["consensus"], 1);
    assert_eq!(json["totals"]["divergence"], 1);
    let section = &json["categories"][0];
    assert_eq!(section["key"], "technology-gap");
    assert_eq!(section["divergence"][0]["topic"], "Chip export controls");
    // Both nodes print the same briefing from the same changes.
    assert_eq!(md, b.ok(&["report"]));
}

#[test]
fn commands_before_joining_a_network_say_what_to_do() {
    let node = Node::init("Lonely");
    node.refuses(
        &[
            "assess",
            "add",
            "--category",
            "algorithmic-bias",
            "--title",
            "T",
        ],
        "has not joined a network",
    );
    node.refuses(&["report"], "has not joined a network");
    let fresh = Node::uninitialised("Nobody");
    fresh.refuses(&["id"], "concord init");
}

#[test]
fn the_demo_runs_a_live_federation_to_convergence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = dir.path().join("demo");
    let out = std::process::Command::new(support::concord_bin())
        .args(["demo", "--dir", path_str(&kept)])
        .env_remove("RUST_LOG")
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "holds all 14 changes",
        "observers cannot write",
        "Every member refused a change the observer signed anyway",
        "Points of divergence",
        "holds all 16 changes",
        "State: attested by checkpoint ck-",
        "verifies offline against the genesis",
        "Converged: all 4 nodes",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // The kept data directories are real nodes, stopped and readable.
    let run = std::process::Command::new(support::concord_bin())
        .arg("--data-dir")
        .arg(kept.join("node4"))
        .args(["verify", "--json"])
        .output()
        .expect("verify");
    let audit: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(audit["ok"], true);
    assert_eq!(audit["envelopes"], 16);
    // The observer's briefing it kept verifies with nothing but the genesis.
    let run = std::process::Command::new(support::concord_bin())
        .args(["checkpoint", "verify"])
        .arg(kept.join("briefing.md"))
        .arg("--genesis")
        .arg(kept.join("genesis.concord"))
        .output()
        .expect("checkpoint verify");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Runs `concord bench` with `args` and `--json`, and reads its rows' names.
fn bench_json(args: &[&str]) -> (serde_json::Value, Vec<String>) {
    let out = std::process::Command::new(support::concord_bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .env_remove("RUST_LOG")
        .output()
        .expect("run bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let names = results["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_string())
        .collect();
    (results, names)
}

#[test]
fn the_benchmark_harness_runs_a_1000_change_smoke_test() {
    let (results, names) = bench_json(&[
        "--changes",
        "1000",
        "--propagation-nodes",
        "3",
        "--propagation-changes",
        "5",
        "--writers-seconds",
        "2",
        "--durable-changes",
        "10",
        "--scale-nodes",
        "4",
        "--scale-changes",
        "3",
    ]);
    assert_eq!(results["changes"], 1000);
    for expected in [
        "ingest",
        "restart",
        "initial sync",
        "initial sync, processes",
        "sync peak memory per node",
        "quiet reconciliation",
        "footprint (disk)",
        "propagation, line",
        "propagation, mesh",
        "many writers, p99 to every node",
        "durable writes, 16 writers: changes per flush",
        "scale, convergence",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    for row in results["rows"].as_array().expect("rows") {
        let ours = row["ours"].as_f64().expect("ours");
        assert!(ours > 0.0, "{row}");
        // A report-only row has no baseline (null).
        if let Some(baseline) = row["baseline"].as_f64() {
            assert!(baseline > 0.0, "{row}");
        } else {
            assert_eq!(row["target"], "report", "{row}");
        }
    }
}

#[test]
fn the_benchmark_harness_runs_the_process_sync_alone() {
    let (results, names) = bench_json(&["--only", "sync", "--changes", "300"]);
    assert_eq!(results["changes"], 300);
    assert_eq!(
        names,
        ["initial sync, processes", "sync peak memory per node"]
    );
    let memory = &results["rows"][1];
    let mib = memory["ours"].as_f64().expect("MiB");
    assert!(mib > 1.0, "the peak memory was read: {memory}");
}

/// A removal's claim about its target's last change is listed beside what
/// the node holds, and approving a claim that would cut a change the node
/// holds is refused until the operator confirms it.
#[test]
fn member_proposals_shows_each_claim_and_approve_asks_to_confirm_one_it_cannot_vouch_for() {
    let fed = Federation::new(&["A", "B", "C"], &[]);
    let (a, b, c) = (&fed.nodes[0], &fed.nodes[1], &fed.nodes[2]);
    // C writes; B has that change, A (the proposer) does not.
    c.ok(&["assess", "add", "--category", "reliability", "--title", "t"]);
    b.import(&c.export("c.bundle"));
    let proposal = a.json(&["member", "propose", "remove", &c.node_id()]);
    let id = proposal["id"].as_str().expect("id").to_string();
    assert_eq!(proposal["target"]["claimed_last_change"], 0);
    assert_eq!(b.import(&a.export("a.bundle"))["records"], 1);
    let listed = &b.json(&["member", "proposals"])[0];
    assert_eq!(listed["target"]["claimed_last_change"], 0);
    assert_eq!(listed["target"]["held_last_change"], 1);
    assert_eq!(listed["signers"][0]["seen_last_change"], 0);
    assert!(listed["after"].is_null());
    let table = b.ok(&["member", "proposals"]);
    assert!(table.contains("C: 0 (this node holds 1)"), "{table}");
    assert!(table.contains("What each signature claims"), "{table}");
    b.refuses(
        &["member", "approve", &id[..8]],
        "claims \"C\"'s last change is 0, but this node holds its changes up to 1",
    );
    assert_eq!(b.json(&["member", "proposals"])[0]["state"], "pending");
    let approved = b.json(&["member", "approve", &id[..8], "--confirm-claims"]);
    assert_eq!(approved["state"], "applied");
    assert_eq!(approved["signers"].as_array().map(Vec::len), Some(2));
}

/// The README's roster walk-through, offline: records travel in bundles.
#[test]
fn roster_changes_by_quorum_through_the_cli_and_bundles() {
    let fed = Federation::new(&["A", "B", "C"], &["O"]);
    let (a, b, o) = (&fed.nodes[0], &fed.nodes[1], &fed.nodes[3]);
    let newcomer = Node::init("N");
    newcomer.ok(&["network", "join", "--pending", path_str(&fed.genesis)]);
    let proposal = a.json(&[
        "member",
        "propose",
        "add",
        &newcomer.node_id(),
        "--name",
        "N",
        "--role",
        "member",
    ]);
    assert_eq!(proposal["state"], "pending");
    assert_eq!(proposal["needs"], 1);
    let id = proposal["id"].as_str().expect("id").to_string();
    // The text form says how many signatures are missing.
    let listed = a.ok(&["member", "proposals"]);
    assert!(listed.contains("needs 1 more"), "{listed}");
    // B learns of it from A's bundle and approves by a short prefix.
    assert_eq!(b.import(&a.export("a.bundle"))["records"], 1);
    assert_eq!(b.json(&["member", "proposals"])[0]["id"], id.as_str());
    let approved = b.json(&["member", "approve", &id[..8]]);
    assert_eq!(approved["state"], "applied");
    b.refuses(&["member", "approve", &id[..8]], "already in force");
    // An observer cannot propose; an unknown id is named.
    o.refuses(
        &["member", "propose", "quorum", "1"],
        "only members can propose",
    );
    b.refuses(&["member", "approve", "abcdef"], "no pending proposal");
    // Everyone who imports B's bundle has the new member, with a start time.
    let from_b = b.export("b.bundle");
    for node in [a, o, &newcomer] {
        node.import(&from_b);
        let list = node.json(&["member", "list"]);
        let entry = list["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .find(|e| e["name"] == "N")
            .cloned()
            .expect("N listed");
        assert_eq!(entry["role"], "member");
        assert!(entry["since"].as_str().is_some_and(|s| s.contains('T')));
    }
    // The newcomer writes, and its change is accepted elsewhere.
    add_assessment(&newcomer, "algorithmic-bias", "written by N");
    a.import(&newcomer.export("n.bundle"));
    let audit = a.json(&["verify"]);
    assert!(
        audit["authors"]
            .as_array()
            .expect("authors")
            .iter()
            .any(|x| x["name"] == "N" && x["accepted"] == 1)
    );
    // A proposal that cannot take effect is refused at once, with the reason.
    a.refuses(
        &["member", "propose", "quorum", "9"],
        "between 1 and the 4 members",
    );
    a.refuses(
        &["member", "propose", "role", &newcomer.node_id(), "member"],
        "already has the role member",
    );
}

#[cfg(unix)]
#[test]
fn the_data_directory_is_made_0700_on_init_and_whenever_it_is_opened() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| {
        let mode = std::fs::metadata(path)
            .expect("the data directory")
            .permissions()
            .mode()
            & 0o777;
        format!("{mode:o}")
    };
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("fresh").join("node");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(support::concord_bin())
            .arg("--data-dir")
            .arg(&dir)
            .args(args)
            .env_remove("CONCORD_DATA_DIR")
            .output()
            .expect("run concord");
        assert!(
            out.status.success(),
            "concord {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["init", "--name", "Private"]);
    assert_eq!(mode(&dir), "700", "after init");

    // Widened by hand (or by an old version): tightened when next opened.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    run(&["id"]);
    assert_eq!(mode(&dir), "700", "after `concord id`");

    let fed = Federation::new(&["A"], &[]);
    let a = &fed.nodes[0];
    std::fs::set_permissions(a.dir(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let node = support::process::Proc::start(a.dir(), &[]).expect("A starts");
    assert_eq!(mode(a.dir()), "700", "after `concord run`");
    assert_eq!(node.stop(), Some(0));
}
