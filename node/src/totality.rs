//! Every read is total over whatever a document can hold.
//!
//! A member signs what it likes. The operation check now refuses values
//! Concord never writes, but a store may hold some from before it did, and
//! the check is a second line: the first is that no read panics. This
//! property test builds documents with arbitrary Automerge values (any
//! scalar type, times and numbers at their extremes, long strings with
//! control characters, nested maps, lists and text where Concord keeps
//! scalars, conflicting writes by two members, odd ids and keys) at and
//! around the places Concord reads, then runs every view over them: the
//! register's and the dialogue's JSON views, the briefing in JSON, Markdown
//! and HTML, each item's history, the checkpoints, the canonical state and
//! every web page.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{Automerge, AutomergeError, ObjId, ObjType, ROOT, ScalarValue};
use proptest::prelude::*;

use crate::api::{NetworkView, StatusView};
use crate::checkpoint::{self, StateMemo};
use crate::doc::Document;
use crate::genesis::Genesis;
use crate::identity::Identity;
use crate::model::{MAX_TIME_MS, format_time};
use crate::report::{self, AttestedBy};
use crate::roster::{Role, RosterEntry};
use crate::web::pages::{self, Detail, DialogueFilter, Frame, RegisterFilter};
use crate::{history, model::Round};

/// A value to put: a scalar, or an object holding more.
#[derive(Clone, Debug)]
enum Hostile {
    Scalar(ScalarValue),
    Text(String),
    Map(Vec<(String, Hostile)>),
    List(Vec<Hostile>),
}

fn times() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-1),
        Just(MAX_TIME_MS + 1),
        Just(MAX_TIME_MS),
        Just(0),
    ]
}

fn strings() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f\u{80}-\u{9f}\u{202e}<>&*#|`_\\[\\]()!\\\\ a-z-]{0,40}",
        Just("- Inst b: **agree**: forged\n# Heading\r\u{1b}[2J\u{7}".to_string()),
        Just("<script>alert(1)</script><img src=x onerror=alert(1)>".to_string()),
        (0usize..3).prop_map(|n| "x".repeat(50_000 * n + 1)),
    ]
}

fn scalars() -> impl Strategy<Value = ScalarValue> {
    prop_oneof![
        strings().prop_map(|s| ScalarValue::Str(s.into())),
        prop_oneof![
            Just("draft"),
            Just("agree"),
            Just("track-ii"),
            Just("algorithmic-bias")
        ]
        .prop_map(|s| ScalarValue::Str(s.into())),
        any::<i64>().prop_map(ScalarValue::Int),
        (-3i64..9).prop_map(ScalarValue::Int),
        any::<u64>().prop_map(ScalarValue::Uint),
        any::<f64>().prop_map(ScalarValue::F64),
        any::<i64>().prop_map(ScalarValue::counter),
        times().prop_map(ScalarValue::Timestamp),
        any::<bool>().prop_map(ScalarValue::Boolean),
        Just(ScalarValue::Null),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(ScalarValue::Bytes),
    ]
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let leaf = prop_oneof![
        4 => scalars().prop_map(Hostile::Scalar),
        1 => strings().prop_map(Hostile::Text),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec((keys(), inner.clone()), 0..4).prop_map(Hostile::Map),
            proptest::collection::vec(inner, 0..4).prop_map(Hostile::List),
        ]
    })
}

/// Field names: Concord's own, and others.
fn keys() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop_oneof![
            Just("category"), Just("title"), Just("summary"), Just("likelihood"),
            Just("severity"), Just("mitigations"), Just("status"), Just("comments"),
            Just("created_at"), Just("updated_at"), Just("topic"), Just("body"),
            Just("kind"), Just("round"), Just("assessments"), Just("positions"),
            Just("text"), Just("at"), Just("position"), Just("comment"),
            Just("group"), Just("network"), Just("heads"), Just("state"),
            Just("signature"),
        ].prop_map(str::to_string),
        1 => strings(),
    ]
}

/// Root keys: Concord's prefixes with good and bad ids, and others.
fn root_keys() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![Just("a/"), Just("n/"), Just("c/"), Just("k/"), Just("")];
    let id = prop_oneof![
        3 => "[a-z0-9-]{1,12}",
        1 => strings(),
    ];
    (prefix, id).prop_map(|(p, id)| format!("{p}{id}"))
}

/// One write: `fields` put on the object under root key `key`, by member
/// `who` (0 or 1), as a map, or else as the value itself.
#[derive(Clone, Debug)]
struct Write {
    key: String,
    who: usize,
    fields: Option<Vec<(String, Hostile)>>,
    value: Hostile,
    /// Positions filed under the writer's own node id (true) or a key of
    /// the strategy's (false).
    own_position: bool,
    position: Vec<(String, Hostile)>,
}

fn writes() -> impl Strategy<Value = Vec<Write>> {
    let write = (
        root_keys(),
        0..2usize,
        proptest::option::weighted(0.85, proptest::collection::vec((keys(), hostile()), 0..8)),
        hostile(),
        any::<bool>(),
        proptest::collection::vec((keys(), hostile()), 0..4),
    )
        .prop_map(|(key, who, fields, value, own_position, position)| Write {
            key,
            who,
            fields,
            value,
            own_position,
            position,
        });
    proptest::collection::vec(write, 1..8)
}

fn put(tx: &mut impl Transactable, obj: &ObjId, key: &str, value: &Hostile) {
    // Automerge refuses some puts (a key that is empty); what it refuses
    // cannot be in a document, so it is skipped.
    let _ = try_put(tx, obj, key, value);
}

fn try_put(
    tx: &mut impl Transactable,
    obj: &ObjId,
    key: &str,
    value: &Hostile,
) -> Result<(), AutomergeError> {
    match value {
        Hostile::Scalar(s) => tx.put(obj, key, s.clone()),
        Hostile::Text(t) => {
            let text = tx.put_object(obj, key, ObjType::Text)?;
            tx.splice_text(&text, 0, 0, t)
        }
        Hostile::Map(fields) => {
            let map = tx.put_object(obj, key, ObjType::Map)?;
            for (k, v) in fields {
                put(tx, &map, k, v);
            }
            Ok(())
        }
        Hostile::List(items) => {
            let list = tx.put_object(obj, key, ObjType::List)?;
            for (i, v) in items.iter().enumerate() {
                insert(tx, &list, i, v);
            }
            Ok(())
        }
    }
}

fn insert(tx: &mut impl Transactable, list: &ObjId, at: usize, value: &Hostile) {
    let _ = match value {
        Hostile::Scalar(s) => tx.insert(list, at, s.clone()),
        Hostile::Text(t) => tx
            .insert_object(list, at, ObjType::Text)
            .and_then(|text| tx.splice_text(&text, 0, 0, t)),
        Hostile::Map(fields) => tx.insert_object(list, at, ObjType::Map).map(|map| {
            for (k, v) in fields {
                put(tx, &map, k, v);
            }
        }),
        Hostile::List(items) => tx.insert_object(list, at, ObjType::List).map(|inner| {
            for (i, v) in items.iter().enumerate() {
                insert(tx, &inner, i, v);
            }
        }),
    };
}

/// Two members' documents, each written on alone, then merged, so the
/// same fields can hold concurrent values.
fn build(members: &[Identity; 2], writes: &[Write]) -> Document {
    let mut docs: Vec<Automerge> = members
        .iter()
        .map(|m| {
            Automerge::new().with_actor(automerge::ActorId::from(m.public().as_bytes().as_slice()))
        })
        .collect();
    for (i, w) in writes.iter().enumerate() {
        let me = &members[w.who];
        let doc = &mut docs[w.who];
        let options = CommitOptions::default()
            .with_time(if i % 3 == 0 {
                i64::MAX
            } else {
                1_700_000_000_000
            })
            .with_message(w.key.clone());
        let _ = doc.transact_with::<_, _, AutomergeError, _>(
            |_| options,
            |tx| {
                match &w.fields {
                    Some(fields) => {
                        let obj = tx.put_object(ROOT, w.key.as_str(), ObjType::Map)?;
                        for (k, v) in fields {
                            put(tx, &obj, k, v);
                        }
                        let positions = tx.put_object(&obj, "positions", ObjType::Map)?;
                        let filed_under = if w.own_position {
                            me.public().node_id().to_string()
                        } else {
                            w.key.clone()
                        };
                        let pos = tx.put_object(&positions, filed_under.as_str(), ObjType::Map)?;
                        for (k, v) in &w.position {
                            put(tx, &pos, k, v);
                        }
                    }
                    None => put(tx, &ROOT, &w.key, &w.value),
                }
                Ok(())
            },
        );
    }
    let [mut first, second] = <[Automerge; 2]>::try_from(docs).expect("two documents");
    first.merge(&mut second.clone()).expect("merge");
    Document::load(&first.save(), members[0].public()).expect("loads")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn every_view_report_and_page_is_total(writes in writes()) {
        let members = [Identity::from_secret([7; 32]), Identity::from_secret([8; 32])];
        let entries = members
            .iter()
            .enumerate()
            .map(|(i, m)| RosterEntry {
                key: m.public(),
                name: format!("Inst {i}\u{1b}[31m<b>"),
                role: Role::Member,
            })
            .collect();
        let genesis = Genesis::create(&members[0], "Net", entries, None, i64::MAX)
            .expect("genesis");
        let roster = genesis.roster();
        let doc = build(&members, &writes);

        // The register and the dialogue, as the CLI's JSON.
        let assessments = doc.assessments(&roster);
        let notes = doc.notes(&roster);
        let categories = doc.categories();
        for a in &assessments {
            for time in std::iter::once(&a.created_at).chain(a.comments.iter().map(|c| &c.at)) {
                prop_assert!(
                    time.starts_with("invalid time") || time.ends_with('Z'),
                    "{time}"
                );
            }
            serde_json::to_string(a).expect("json");
        }
        serde_json::to_string(&notes).expect("json");

        // The briefing in every format, for every round.
        for round in [None, Some(Round::TrackII), Some(Round::Multilateral)] {
            let r = report::build_with(&doc, &genesis, &roster, round, AttestedBy::default());
            serde_json::to_string(&r).expect("json");
            report::to_markdown(&r);
            report::to_html(&r);
        }

        // Checkpoints, the canonical state, and each item's history.
        let network = genesis.network_id();
        let checkpoints = checkpoint::list(&doc, network, &roster, &mut StateMemo::default());
        checkpoint::canonical::state_hash(doc.automerge());
        let mut histories = Vec::new();
        for w in &writes {
            let id = w.key.split_once('/').map_or(w.key.as_str(), |(_, id)| id);
            if let Some(h) = history::of(&doc, id, &roster, |_| Ok(())) {
                serde_json::to_string(&h).expect("json");
                histories.push(h);
            }
        }

        // Every page of the web view.
        let status = StatusView {
            last_sync: Some(format_time(i64::MAX)),
            ..StatusView::default()
        };
        let frame = Frame { version: 1, status, checkpoints };
        let view = NetworkView::of(&genesis, &roster);
        pages::register(&frame, &view, &categories, &assessments, &notes, &RegisterFilter::default());
        pages::dialogue(&frame, &notes, &DialogueFilter::default());
        pages::network(&frame, &view, &[]);
        for h in &histories {
            let detail = match assessments.iter().find(|a| a.id == h.id) {
                Some(a) => Detail::Assessment(Box::new(a.clone())),
                None => match notes.iter().find(|n| n.id == h.id) {
                    Some(n) => Detail::Note(Box::new(n.clone())),
                    None => Detail::Other,
                },
            };
            pages::item(&frame, h, &detail);
        }
    }
}
