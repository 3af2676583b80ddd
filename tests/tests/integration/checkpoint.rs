//! Checkpoints and briefings through the real binary: sign, co-sign, list,
//! report at an attested checkpoint in every format, and `checkpoint
//! verify` run from an empty directory with only the genesis.

use support::{Federation, Node, path_str};

/// Three members (quorum 2) and an observer, with one assessment and a note.
fn network() -> (Federation, String) {
    let fed = Federation::new(&["A", "B", "C"], &["O"]);
    let a = &fed.nodes[0];
    let id = support::add_assessment(a, "malicious-use", "Automated disinformation campaigns");
    support::add_note(a, "Labelling synthetic media", &id);
    fed.exchange_all();
    (fed, id)
}

fn checkpoint_list(node: &Node) -> serde_json::Value {
    node.json(&["checkpoint", "list"])
}

#[test]
fn a_checkpoint_is_attested_at_quorum_and_an_observer_cannot_sign() {
    let (fed, _) = network();
    let (a, b, o) = (&fed.nodes[0], &fed.nodes[1], &fed.nodes[3]);
    o.refuses(&["checkpoint", "sign"], "observers cannot write");
    let signed = a.json(&["checkpoint", "sign"]);
    let id = signed["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("ck-"), "{signed}");
    let list = checkpoint_list(a);
    assert_eq!(list["checkpoints"][0]["id"], id.as_str());
    assert_eq!(list["checkpoints"][0]["member_signatures"], 1);
    assert_eq!(list["checkpoints"][0]["quorum"], 2);
    assert_eq!(list["checkpoints"][0]["attested"], false);
    assert_eq!(list["current"], serde_json::Value::Null);
    assert!(a.ok(&["checkpoint", "list"]).contains("not yet attested"));
    a.refuses(&["checkpoint", "sign"], "already signed checkpoint");

    fed.exchange_all();
    let cosigned = b.json(&["checkpoint", "sign"]);
    assert_eq!(
        cosigned["id"],
        id.as_str(),
        "B co-signs the same checkpoint"
    );
    fed.exchange_all();
    let list = checkpoint_list(o);
    let c = &list["checkpoints"][0];
    assert_eq!(c["attested"], true);
    assert_eq!(c["state_verified"], true);
    assert_eq!(c["member_signatures"], 2);
    let names: Vec<&str> = c["signatures"]
        .as_array()
        .expect("signatures")
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert!(names.contains(&"A") && names.contains(&"B"), "{names:?}");
    assert_eq!(list["current"], id.as_str());
    let text = o.ok(&["checkpoint", "list"]);
    assert!(text.contains(&format!("attested by {id}")), "{text}");

    // Naming an unknown checkpoint is an error that says what to do.
    fed.nodes[2].refuses(
        &["checkpoint", "sign", "--checkpoint", "ck-0000"],
        "checkpoint list",
    );
}

#[test]
fn a_report_verifies_offline_with_only_the_genesis_and_an_edited_one_fails() {
    let (fed, _) = network();
    let (a, b, o) = (&fed.nodes[0], &fed.nodes[1], &fed.nodes[3]);
    // Before any attestation the report says so, and `latest` has nothing.
    let md = o.ok(&["report"]);
    assert!(md.contains("State: not yet attested"), "{md}");
    o.refuses(
        &["report", "--checkpoint", "latest"],
        "no checkpoint is attested yet",
    );
    a.ok(&["checkpoint", "sign"]);
    fed.exchange_all();
    b.ok(&["checkpoint", "sign"]);
    fed.exchange_all();

    // A stranger holding only the genesis: an empty directory.
    let outsider = Node::uninitialised("outsider");
    let genesis = path_str(&fed.genesis);
    for format in ["markdown", "html", "json"] {
        let file = o.dir().join(format!("briefing.{format}"));
        o.ok(&[
            "report",
            "--format",
            format,
            "--checkpoint",
            "latest",
            "--out",
            path_str(&file),
        ]);
        let out = outsider.ok(&[
            "checkpoint",
            "verify",
            path_str(&file),
            "--genesis",
            genesis,
        ]);
        assert!(out.starts_with("OK: report"), "{format}: {out}");
        // A node of the network needs no --genesis: it uses the one it joined.
        let out = o.ok(&["checkpoint", "verify", path_str(&file)]);
        assert!(out.starts_with("OK: report"), "{format}: {out}");
        let text = std::fs::read_to_string(&file).expect("report");
        assert!(text.contains("Automated disinformation campaigns"));
        let edited = text.replace("Automated disinformation", "Harmless disinformation");
        std::fs::write(&file, edited).expect("edit");
        let err = outsider.fails(
            3,
            &[
                "checkpoint",
                "verify",
                path_str(&file),
                "--genesis",
                genesis,
            ],
        );
        assert!(err.contains("edited after export"), "{format}: {err}");
        assert!(err.contains("Harmless disinformation"), "{format}: {err}");
    }
    // The current state equals the attested one, so the plain report embeds
    // the attestation too and says which checkpoint it shows.
    let md = o.ok(&["report"]);
    assert!(md.contains("State: attested by checkpoint ck-"), "{md}");
    assert!(md.contains("<!-- concord-attestation v1"));
    // A report limited to a round it has no notes of still verifies.
    let file = o.dir().join("track-ii.md");
    o.ok(&["report", "--round", "track-ii", "--out", path_str(&file)]);
    outsider.ok(&[
        "checkpoint",
        "verify",
        path_str(&file),
        "--genesis",
        genesis,
    ]);
    o.refuses(&["report", "--round", "bilateral"], "unknown round");

    // After a new change the current state is no longer attested.
    support::add_assessment(a, "reliability", "Later");
    fed.exchange_all();
    let md = o.ok(&["report"]);
    assert!(
        md.contains("State: not yet attested; the latest attested checkpoint"),
        "{md}"
    );
    assert!(!md.contains("concord-attestation"));
    let plain = o.dir().join("current.md");
    std::fs::write(&plain, md).expect("write");
    let err = outsider.fails(
        3,
        &[
            "checkpoint",
            "verify",
            path_str(&plain),
            "--genesis",
            genesis,
        ],
    );
    assert!(err.contains("--checkpoint latest"), "{err}");
    // Without a node or --genesis there is nothing to check against.
    outsider.refuses(
        &["checkpoint", "verify", path_str(&plain)],
        "pass --genesis FILE",
    );
    // A file that cannot be read is an error (exit 1), not a failed check.
    outsider.refuses(
        &["checkpoint", "verify", "no-such-file", "--genesis", genesis],
        "cannot read no-such-file",
    );
}

#[test]
fn a_bundle_verifies_offline_only_once_a_quorum_has_signed() {
    let (fed, _) = network();
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
    let outsider = Node::uninitialised("outsider");
    let genesis = path_str(&fed.genesis);
    a.ok(&["checkpoint", "sign"]);
    let bundle = a.export("one-signature.bundle");
    let err = outsider.fails(
        3,
        &[
            "checkpoint",
            "verify",
            path_str(&bundle),
            "--genesis",
            genesis,
        ],
    );
    assert!(err.contains("none attested by a quorum"), "{err}");
    fed.exchange_all();
    b.ok(&["checkpoint", "sign"]);
    let bundle = b.export("attested.bundle");
    let verified = outsider.json(&[
        "checkpoint",
        "verify",
        path_str(&bundle),
        "--genesis",
        genesis,
    ]);
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["verified"]["file"], "bundle");
    assert_eq!(verified["verified"]["changes"], 4);
    // Another network's genesis refuses it, naming both networks.
    let other = Federation::new(&["X"], &[]);
    let err = outsider.fails(
        3,
        &[
            "checkpoint",
            "verify",
            path_str(&bundle),
            "--genesis",
            path_str(&other.genesis),
        ],
    );
    assert!(err.contains("belongs to network"), "{err}");
    // A file that is neither is named as such.
    let junk = outsider.dir().join("notes.txt");
    std::fs::write(&junk, "just some notes").expect("write");
    let err = outsider.fails(
        3,
        &[
            "checkpoint",
            "verify",
            path_str(&junk),
            "--genesis",
            genesis,
        ],
    );
    assert!(err.contains("carries no attestation"), "{err}");
}

#[test]
fn history_lists_every_change_to_an_item() {
    let (fed, id) = network();
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
    b.ok(&["assess", "update", &id, "--severity", "5"]);
    b.ok(&["assess", "comment", &id, "Seen in our region too"]);
    fed.exchange_all();
    let h = a.json(&["history", &id]);
    let changes = h["changes"].as_array().expect("changes");
    let who: Vec<&str> = changes
        .iter()
        .map(|c| c["author"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(who, ["A", "B", "B"]);
    assert!(changes.iter().all(|c| c["verified"] == true));
    let text = a.ok(&["history", &id]);
    assert!(
        text.contains("verified") && text.contains("severity"),
        "{text}"
    );
    a.refuses(&["history", "ra-nothing0"], "no item with id");
}

/// A member admitted after the founding co-signs a checkpoint: the report
/// and the bundle carry the roster records, so both verify offline with only
/// the genesis, and the report names the newcomer among the signers.
#[test]
fn a_checkpoint_co_signed_by_a_member_admitted_later_verifies_offline() {
    let fed = Federation::new(&["A", "B"], &[]);
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
    let newcomer = Node::init("N");
    newcomer.ok(&["network", "join", "--pending", path_str(&fed.genesis)]);
    // Quorum 2 of 2: A proposes, B approves; then the quorum of 3 is 2.
    let p = a.json(&[
        "member",
        "propose",
        "add",
        &newcomer.node_id(),
        "--name",
        "N",
        "--role",
        "member",
    ]);
    b.import(&a.export("a.bundle"));
    b.ok(&["member", "approve", p["id"].as_str().expect("id")]);
    support::add_assessment(b, "malicious-use", "Voice cloning for fraud");
    let from_b = b.export("b.bundle");
    a.import(&from_b);
    newcomer.import(&from_b);
    // A and the newcomer sign the same state: attested (2 of 3 members).
    a.ok(&["checkpoint", "sign"]);
    newcomer.import(&a.export("a2.bundle"));
    newcomer.ok(&["checkpoint", "sign"]);
    a.import(&newcomer.export("n.bundle"));
    let file = a.dir().join("briefing.md");
    a.ok(&["report", "--checkpoint", "latest", "--out", path_str(&file)]);
    let outsider = Node::uninitialised("outsider");
    let genesis = path_str(&fed.genesis);
    let out = outsider.ok(&[
        "checkpoint",
        "verify",
        path_str(&file),
        "--genesis",
        genesis,
    ]);
    assert!(out.starts_with("OK: report"), "{out}");
    assert!(out.contains('N'), "{out}");
    let bundle = a.export("all.bundle");
    let out = outsider.ok(&[
        "checkpoint",
        "verify",
        path_str(&bundle),
        "--genesis",
        genesis,
    ]);
    assert!(out.starts_with("OK: bundle"), "{out}");
}
