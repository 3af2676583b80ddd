//! Text from a hostile member on other operators' terminals: control
//! characters are refused when this build writes them, and when a member's
//! own build writes them anyway (a legal Automerge value, so ingest takes
//! it), no command prints them raw.

use concord_node::doc::{Document, NewAssessment, NewNote};
use concord_node::model::{NoteKind, Stance, Status};
use support::{Federation, forge, path_str};

#[test]
fn a_title_with_a_control_character_is_refused_naming_it() {
    let fed = Federation::new(&["A"], &[]);
    let a = &fed.nodes[0];
    a.refuses(
        &[
            "assess",
            "add",
            "--category",
            "algorithmic-bias",
            "--title",
            "Bad\u{1b}[2Jtitle",
        ],
        "title contains a control character U+001B at byte 3",
    );
    a.refuses(
        &[
            "note",
            "add",
            "--topic",
            "two\nlines",
            "--body",
            "b",
            "--kind",
            "agenda",
        ],
        "topic contains a control character U+000A at byte 3 (it must be one line)",
    );
    assert_eq!(a.json(&["assess", "list"]), serde_json::json!([]));
}

/// What a terminal would obey: C0 controls but line feed and tab, DEL, C1
/// controls and the bidi overrides.
fn obeyed(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[test]
fn a_members_control_characters_reach_no_terminal() {
    let fed = Federation::new(&["A", "H"], &[]);
    let (a, h) = (&fed.nodes[0], &fed.nodes[1]);
    let hostile = h.identity();
    let mut doc = Document::new(hostile.public());
    let mut changes = Vec::new();
    let title = "Evil\u{1b}[2J\u{7}\rtitle\u{202e}desrever\u{9b}31m";
    let new = NewAssessment {
        category: "algorithmic-bias".into(),
        title: title.into(),
        summary: "sum\u{1b}]0;pwned\u{7}\nmary".into(),
        likelihood: None,
        severity: None,
        mitigations: vec!["m\u{1b}[1m".into()],
        status: Status::Open,
    };
    let at = 1_700_000_000_000;
    changes.push(
        doc.add_assessment("ra-hostile", &new, at)
            .expect("assessment"),
    );
    changes.push(
        doc.comment("ra-hostile", "c\u{1b}[5m\u{7f}", at + 1)
            .expect("comment"),
    );
    let note = NewNote {
        topic: "Topic\u{1b}[31m\r\n# heading".into(),
        body: "body\u{1b}[8m\nline\u{7}".into(),
        kind: NoteKind::Agenda,
        round: None,
        assessments: vec!["ra-hostile".into()],
    };
    changes.push(doc.add_note("cn-hostile", &note, at + 2).expect("note"));
    changes.push(
        doc.set_position(
            "cn-hostile",
            hostile.node_id(),
            Stance::Agree,
            "p\u{1b}c",
            at + 3,
        )
        .expect("position"),
    );
    let envelopes = changes
        .into_iter()
        .map(|c| forge::envelope(&hostile, &fed.genesis, c.raw_bytes().to_vec()).encode())
        .collect();
    let bundle = forge::bundle(h.dir(), "hostile.bundle", &fed.genesis, envelopes);
    a.ok(&["import", path_str(&bundle)]);
    // The value is stored as written: JSON shows it, escaped by serde.
    assert_eq!(a.json(&["assess", "show", "ra-hostile"])["title"], title);

    for args in [
        &["assess", "list"][..],
        &["assess", "show", "ra-hostile"],
        &["note", "list"],
        &["note", "show", "cn-hostile"],
        &["history", "ra-hostile"],
        &["report"],
        &["report", "--format", "html"],
    ] {
        let run = a.run(args);
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        let raw: Vec<char> = run.stdout.chars().filter(|&c| obeyed(c)).collect();
        assert!(
            raw.is_empty(),
            "`concord {}` printed {raw:?}:\n{}",
            args.join(" "),
            run.stdout
        );
        // Shown as `\u{1b}`; in Markdown source, escaped as `\\u\{1b\}`.
        assert!(
            run.stdout.contains("\\u{1b}") || run.stdout.contains("\\\\u\\{1b\\}"),
            "`concord {}` shows the escape:\n{}",
            args.join(" "),
            run.stdout
        );
    }
    // A forged line break in a one-line field starts no line of its own.
    let show = a.ok(&["note", "show", "cn-hostile"]);
    assert!(!show.lines().any(|l| l.starts_with("# heading")), "{show}");
}
