//! The document state is a pure function of the set of valid envelopes: the
//! same bundles imported in any order give byte-identical `--json` output.

use support::{Federation, Node, add_assessment, path_str};

#[test]
fn the_same_bundles_in_any_order_give_identical_output() {
    let fed = Federation::new(&["A", "B", "C"], &["O"]);
    let (a, b, c) = (&fed.nodes[0], &fed.nodes[1], &fed.nodes[2]);
    let shared = add_assessment(a, "social-order", "Automation and jobs");
    fed.exchange_all();
    // Concurrent, conflicting and independent edits on three nodes.
    a.ok(&["assess", "update", &shared, "--severity", "2"]);
    b.ok(&["assess", "update", &shared, "--severity", "5"]);
    c.ok(&["assess", "comment", &shared, "Retraining programmes lag."]);
    let note = b.json(&[
        "note",
        "add",
        "--topic",
        "Retraining",
        "--body",
        "Fund it.",
        "--assessment",
        &shared,
    ])["id"]
        .as_str()
        .expect("id")
        .to_string();
    b.ok(&["note", "position", &note, "agree"]);
    add_assessment(c, "climate-governance", "Grid optimisation");
    let bundles = [
        a.export("a.bundle"),
        b.export("b.bundle"),
        c.export("c.bundle"),
    ];

    // Two fresh observers import the same bundles in opposite orders.
    let outputs: Vec<_> = [[0, 1, 2], [2, 1, 0]]
        .iter()
        .enumerate()
        .map(|(i, order)| {
            let observer = &fed.nodes[3];
            let fresh = if i == 0 {
                None
            } else {
                Some(fresh_observer(&fed))
            };
            let node = fresh.as_ref().unwrap_or(observer);
            for &k in order {
                node.import(&bundles[k]);
            }
            (
                node.ok(&["assess", "list", "--json"]),
                node.ok(&["note", "list", "--json"]),
                node.ok(&["report", "--format", "json"]),
                node.ok(&["assess", "show", &shared, "--json"]),
            )
        })
        .collect();
    assert_eq!(outputs[0], outputs[1]);
    let shown: serde_json::Value = serde_json::from_str(&outputs[0].3).expect("json");
    assert_eq!(shown["conflicts"][0]["field"], "severity", "{shown}");
}

/// A second observer can't be added after genesis (roster changes come
/// later), so the fresh node is a copy of the observer's identity with an
/// empty store: same key, same network, nothing imported yet.
fn fresh_observer(fed: &Federation) -> Node {
    let node = Node::uninitialised("O-copy");
    let from = fed.nodes[3].dir();
    for file in ["identity.key", "concord.toml"] {
        std::fs::copy(from.join(file), node.dir().join(file)).expect("copy");
    }
    node.ok(&["network", "join", path_str(&fed.genesis)]);
    node
}
