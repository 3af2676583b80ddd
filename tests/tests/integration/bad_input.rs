//! Bad input of every kind gets a clear error naming what was wrong, a
//! non-zero exit, and leaves the store exactly as it was.

use support::{Federation, Node, add_assessment, forge, path_str};

/// A federation of two members and an observer, where B has written one
/// assessment and A has imported it.
fn setup() -> Federation {
    let fed = Federation::new(&["A", "B"], &["O"]);
    add_assessment(&fed.nodes[1], "algorithmic-bias", "B's first");
    fed.exchange_all();
    fed
}

/// Asserts that an import fails with exit 1 and a message containing
/// `expected`, and that A's store is unchanged.
fn refused(fed: &Federation, bundle: &std::path::Path, expected: &str) -> String {
    let a = &fed.nodes[0];
    let before = a.state();
    let stderr = a.fails(1, &["import", path_str(bundle)]);
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert_eq!(
        a.state(),
        before,
        "the store changed after a refused import"
    );
    stderr
}

#[test]
fn bundle_with_a_flipped_signature_bit_is_refused() {
    let fed = setup();
    let b = &fed.nodes[1];
    add_assessment(b, "model-vulnerabilities", "B's second");
    let good = b.export("good.bundle");
    let mut bundle =
        concord_node::bundle::Bundle::decode(&std::fs::read(&good).expect("read")).expect("decode");
    // Byte 40 of an envelope lies in its signature (bytes 33..97).
    let last = bundle.envelopes.last_mut().expect("an envelope");
    last.0[40] ^= 0x01;
    let bad = b.dir().join("flipped.bundle");
    std::fs::write(&bad, bundle.encode()).expect("write");
    let stderr = refused(&fed, &bad, "does not verify");
    assert!(stderr.contains("signature"), "{stderr}");
}

#[test]
fn truncated_bundle_is_refused() {
    let fed = setup();
    let b = &fed.nodes[1];
    add_assessment(b, "model-vulnerabilities", "B's second");
    let good = b.export("good.bundle");
    let bytes = std::fs::read(&good).expect("read");
    for cut in [bytes.len() - 1, bytes.len() / 2, 12, 3] {
        let bad = b.dir().join(format!("truncated-{cut}.bundle"));
        std::fs::write(&bad, &bytes[..cut]).expect("write");
        let stderr = refused(&fed, &bad, "bundle");
        assert!(
            stderr.contains("truncated") || stderr.contains("not a Concord bundle"),
            "{stderr}"
        );
    }
}

#[test]
fn bundle_from_another_network_is_refused() {
    let fed = setup();
    let other = Federation::new(&["C"], &[]);
    add_assessment(&other.nodes[0], "algorithmic-bias", "elsewhere");
    let foreign = other.nodes[0].export("foreign.bundle");
    refused(&fed, &foreign, "belongs to network");
}

/// A member once signed an assessment created in the year 10000; every
/// check let it through, and the first read on every node panicked. The
/// operation check now refuses it, naming the field and the rule, and the
/// node's reads are as they were.
#[test]
fn a_member_signed_time_past_the_year_9999_is_refused() {
    let fed = Federation::new(&["A", "C"], &[]);
    let (a, c) = (&fed.nodes[0], &fed.nodes[1]);
    add_assessment(a, "algorithmic-bias", "A's own");
    let year_10000 = concord_node::model::MAX_TIME_MS + 1;
    let change = forge::assessment_created_at(c.identity().public(), "ra-y10k", year_10000);
    let env = forge::envelope(&c.identity(), &fed.genesis, change);
    let bundle = forge::bundle(c.dir(), "y10k.bundle", &fed.genesis, vec![env.encode()]);
    let stderr = refused(&fed, &bundle, "a timestamp in years 2000 to 9999");
    assert!(stderr.contains("created_at"), "{stderr}");
    assert!(a.ok(&["assess", "list"]).contains("A's own"));
    a.ok(&["report"]);
    // The same change with an ordinary time is accepted: the rule, not
    // the shape of the forgery, refused it.
    let fine = forge::assessment_created_at(c.identity().public(), "ra-fine", 1_700_000_000_000);
    let env = forge::envelope(&c.identity(), &fed.genesis, fine);
    let bundle = forge::bundle(c.dir(), "fine.bundle", &fed.genesis, vec![env.encode()]);
    a.ok(&["import", path_str(&bundle)]);
    assert!(
        a.ok(&["assess", "list"])
            .contains("An ordinary-looking assessment")
    );
}

#[test]
fn change_by_an_observer_is_refused() {
    let fed = setup();
    let observer = fed.nodes[2].identity();
    let change = forge::changes(observer.public(), "obs", 1).remove(0);
    let env = forge::envelope(&observer, &fed.genesis, change);
    let bundle = forge::bundle(
        fed.nodes[2].dir(),
        "observer.bundle",
        &fed.genesis,
        vec![env.encode()],
    );
    refused(&fed, &bundle, "observers cannot write");
    // The observer's own CLI refuses to write in the first place.
    fed.nodes[2].refuses(
        &[
            "assess",
            "add",
            "--category",
            "algorithmic-bias",
            "--title",
            "x",
        ],
        "observer",
    );
}

#[test]
fn change_by_a_key_off_the_roster_is_refused() {
    let fed = setup();
    let stranger = concord_node::identity::Identity::generate().expect("key");
    let change = forge::changes(stranger.public(), "str", 1).remove(0);
    let env = forge::envelope(&stranger, &fed.genesis, change);
    let bundle = forge::bundle(
        fed.nodes[0].dir(),
        "stranger.bundle",
        &fed.genesis,
        vec![env.encode()],
    );
    refused(&fed, &bundle, "not on the roster");
}

#[test]
fn envelope_whose_actor_is_not_its_key_is_refused() {
    let fed = setup();
    let b = fed.nodes[1].identity();
    let a_key = fed.nodes[0].identity().public();
    // B signs a change whose actor id is A's key: B writing in A's name.
    let change = forge::changes(a_key, "impersonation", 1).remove(0);
    let env = forge::envelope(&b, &fed.genesis, change);
    let bundle = forge::bundle(
        fed.nodes[1].dir(),
        "actor.bundle",
        &fed.genesis,
        vec![env.encode()],
    );
    refused(&fed, &bundle, "is not its signer's key");
}

#[test]
fn fork_is_refused_kept_as_evidence_and_named_by_verify() {
    let fed = Federation::new(&["A", "B"], &[]);
    let b = fed.nodes[1].identity();
    // Two different changes, both B's change number 1.
    let first = forge::envelope(
        &b,
        &fed.genesis,
        forge::changes(b.public(), "left", 1).remove(0),
    );
    let second = forge::envelope(
        &b,
        &fed.genesis,
        forge::changes(b.public(), "right", 1).remove(0),
    );
    assert_ne!(first.hash(), second.hash());
    let a = &fed.nodes[0];
    let one = forge::bundle(a.dir(), "one.bundle", &fed.genesis, vec![first.encode()]);
    assert_eq!(a.import(&one)["new"], 1);
    let two = forge::bundle(a.dir(), "two.bundle", &fed.genesis, vec![second.encode()]);
    let before = serde_json::json!([a.json(&["assess", "list"]), a.json(&["note", "list"])]);
    let envelopes_before = a.json(&["verify"])["envelopes"].clone();
    // The second version is not stored, but the two prove B forked at 1:
    // the import says so, and B is frozen there, so neither version counts
    // any more.
    let stdout = a.ok(&["import", path_str(&two)]);
    assert!(stdout.contains("proved 1 fork"), "{stdout}");
    assert!(stdout.contains("Left out 1 change"), "{stdout}");
    assert_eq!(before[0].as_array().map(Vec::len), Some(1));
    let after = serde_json::json!([a.json(&["assess", "list"]), a.json(&["note", "list"])]);
    assert_eq!(
        after,
        serde_json::json!([[], []]),
        "B's version still counts"
    );
    let audit = a.json(&["verify"]);
    assert_eq!(
        audit["envelopes"], envelopes_before,
        "a forked change was stored"
    );
    let frozen = audit["frozen"].as_array().expect("frozen");
    assert_eq!(frozen.len(), 1, "{audit}");
    assert_eq!(frozen[0]["fork_at"], 1);
    let versions = frozen[0]["versions"].as_array().expect("versions");
    for version in [&first, &second] {
        assert!(
            versions.contains(&serde_json::json!(version.hash().to_string())),
            "{audit}"
        );
    }
    let text = a.ok(&["verify"]);
    assert!(text.contains("FROZEN B"), "{text}");
    let status = a.ok(&["status"]);
    assert!(
        status.contains("fork:") && status.contains("numbered 1"),
        "{status}"
    );
}

#[test]
fn missing_dependency_is_refused() {
    let fed = setup();
    let b = fed.nodes[1].identity();
    let mut chain = forge::changes(b.public(), "dep", 2);
    let second = chain.remove(1);
    let env = forge::envelope(&b, &fed.genesis, second);
    let bundle = forge::bundle(
        fed.nodes[1].dir(),
        "missing.bundle",
        &fed.genesis,
        vec![env.encode()],
    );
    refused(&fed, &bundle, "which is neither stored nor in this batch");
}

#[test]
fn genesis_with_a_bad_signature_is_refused() {
    let fed = Federation::new(&["A"], &["O"]);
    let mut bytes = std::fs::read(&fed.genesis).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let joiner = Node::init("O2");
    let bad = joiner.dir().join("bad-genesis.concord");
    std::fs::write(&bad, &bytes).expect("write");
    joiner.refuses(
        &["network", "join", path_str(&bad)],
        "signature does not verify",
    );
    joiner.refuses(&["network", "show"], "has not joined a network");
}

#[test]
fn bad_values_name_the_field_and_change_nothing() {
    let fed = setup();
    let a = &fed.nodes[0];
    let before = a.state();
    a.refuses(
        &[
            "assess",
            "add",
            "--category",
            "no-such-thing",
            "--title",
            "T",
        ],
        "unknown category \"no-such-thing\"",
    );
    for bad in ["0", "6"] {
        a.refuses(
            &[
                "assess",
                "add",
                "--category",
                "algorithmic-bias",
                "--title",
                "T",
                "--likelihood",
                bad,
            ],
            &format!("likelihood must be an integer from 1 to 5, got {bad}"),
        );
    }
    a.refuses(
        &["assess", "show", "ra-nothere"],
        "no assessment with id \"ra-nothere\"",
    );
    a.refuses(
        &["assess", "update", "ra-nothere", "--title", "x"],
        "no assessment with id",
    );
    a.refuses(
        &["assess", "comment", "ra-nothere", "hello"],
        "no assessment with id",
    );
    a.refuses(
        &[
            "note",
            "add",
            "--topic",
            "t",
            "--body",
            "b",
            "--assessment",
            "ra-nothere",
        ],
        "no assessment with id",
    );
    a.refuses(
        &["note", "position", "cn-nothere", "agree"],
        "no note with id",
    );
    let stderr = a.fails(2, &["note", "add", "--topic", "t"]);
    assert!(stderr.contains("--body"), "{stderr}");
    assert_eq!(a.state(), before);
}

#[test]
fn init_never_overwrites_an_identity() {
    let node = Node::init("First");
    let key = std::fs::read(node.dir().join("identity.key")).expect("key");
    let id = node.node_id();
    node.refuses(&["init", "--name", "Second"], "already exists");
    assert_eq!(
        std::fs::read(node.dir().join("identity.key")).expect("key"),
        key
    );
    assert_eq!(node.node_id(), id);
}
