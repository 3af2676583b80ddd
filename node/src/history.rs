//! The history of one item: every change that touched it, who signed it,
//! when, which fields it set, and whether its signature verifies.
//!
//! A change touches an item when one of its ops sets the item's root key or
//! works inside the item's map or any object created inside it (comments,
//! positions, lists). Found by decoding the changes' ops in causal order and
//! following the objects they create. No IO: the caller says how to check a
//! change's signature.

use std::collections::{HashMap, HashSet};

use automerge::{ActorId, ChangeHash, ExpandedChange};
use serde::{Deserialize, Serialize};

use crate::doc::{Document, institution};
use crate::identity::PublicKey;
use crate::model::{Institution, format_time};
use crate::roster::Roster;

/// One change in an item's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub change: String,
    pub author: Institution,
    /// The author's sequence number for this change.
    pub seq: u64,
    /// The author's clock when it made the change.
    pub at: String,
    /// The change's message, e.g. "update assessment ra-…".
    pub message: String,
    /// The fields it set, e.g. `severity` or `positions/12D3KooW…/position`.
    pub fields: Vec<String>,
    /// True when the stored envelope's signature verifies now.
    pub verified: bool,
    /// Why it does not, if it does not.
    pub problem: Option<String>,
}

/// `history ID`: what the item is and every change that touched it, oldest
/// first (causal order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub id: String,
    /// `assessment`, `note` or `category`.
    pub kind: String,
    /// Its title, topic or category title now.
    pub title: String,
    pub changes: Vec<HistoryEntry>,
}

/// The root key an item id lives under, and its kind.
pub fn root_key(id: &str) -> Option<(String, &'static str)> {
    if id.starts_with("ra-") {
        Some((format!("a/{id}"), "assessment"))
    } else if id.starts_with("cn-") {
        Some((format!("n/{id}"), "note"))
    } else if crate::taxonomy::valid_key(id) {
        Some((format!("c/{id}"), "category"))
    } else {
        None
    }
}

/// The history of item `id`, or `None` if no change ever touched it.
/// `check` verifies the stored envelope of a change.
pub fn of(
    doc: &Document,
    id: &str,
    roster: &Roster,
    check: impl Fn(&ChangeHash) -> Result<(), String>,
) -> Option<History> {
    let (key, kind) = root_key(id)?;
    let touching = touching(doc, &key);
    if touching.is_empty() {
        return None;
    }
    let title = match kind {
        "assessment" => doc.assessment(id, roster).map(|a| a.title),
        "note" => doc.note(id, roster).map(|n| n.topic),
        _ => doc
            .categories()
            .into_iter()
            .find(|c| c.key == id)
            .map(|c| c.title),
    }
    .unwrap_or_default();
    let changes = touching
        .into_iter()
        .map(|t| {
            let checked = check(&t.hash);
            HistoryEntry {
                change: t.hash.to_string(),
                author: institution(t.author, roster),
                seq: t.seq,
                at: format_time(t.time),
                message: t.message,
                fields: t.fields,
                verified: checked.is_ok(),
                problem: checked.err(),
            }
        })
        .collect();
    Some(History {
        id: id.to_string(),
        kind: kind.to_string(),
        title,
        changes,
    })
}

/// A change that touched the item, before the roster names its author.
#[derive(Debug)]
struct Touch {
    hash: ChangeHash,
    author: Option<PublicKey>,
    seq: u64,
    time: i64,
    message: String,
    fields: Vec<String>,
}

/// How many fields one change's entry names; a change that touches more
/// (a member's change may set thousands of fields no version reads) says
/// how many more.
const MAX_FIELDS: usize = 32;

/// Every change touching root key `key`, in causal order.
fn touching(doc: &Document, key: &str) -> Vec<Touch> {
    // Objects inside the item, by op id, with their path from the item.
    let mut inside: HashMap<(u64, ActorId), String> = HashMap::new();
    let mut out = Vec::new();
    for change in doc.automerge().get_changes(&[]) {
        let expanded: ExpandedChange = change.decode();
        let start = expanded.start_op.get();
        let mut fields: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for (i, op) in expanded.operations.iter().enumerate() {
            let parent = match &op.obj {
                automerge::legacy::ObjectId::Root => match &op.key {
                    automerge::legacy::Key::Map(k) if k.as_str() == key => Some(String::new()),
                    _ => None,
                },
                automerge::legacy::ObjectId::Id(id) => inside
                    .get(&(id.counter(), id.actor().clone()))
                    .map(|path| match &op.key {
                        automerge::legacy::Key::Map(k) if path.is_empty() => k.to_string(),
                        automerge::legacy::Key::Map(k) => format!("{path}/{k}"),
                        automerge::legacy::Key::Seq(_) => path.clone(),
                    }),
            };
            let Some(path) = parent else {
                continue;
            };
            if let automerge::legacy::OpType::Make(_) = op.action {
                inside.insert((start + i as u64, expanded.actor_id.clone()), path.clone());
            }
            let field = if path.is_empty() {
                "(created)".to_string()
            } else {
                path
            };
            if seen.insert(field.clone()) && fields.len() < MAX_FIELDS {
                fields.push(field);
            }
        }
        if seen.len() > fields.len() {
            fields.push(format!("(and {} more)", seen.len() - fields.len()));
        }
        if fields.is_empty() {
            continue;
        }
        let author = <[u8; 32]>::try_from(change.actor_id().to_bytes())
            .ok()
            .and_then(|b| PublicKey::from_bytes(b).ok());
        out.push(Touch {
            hash: change.hash(),
            author,
            seq: change.seq(),
            time: change.timestamp(),
            message: change.message().unwrap_or_default().to_string(),
            fields,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{AssessmentUpdate, NewAssessment, NewNote};
    use crate::identity::Identity;
    use crate::model::{NoteKind, Score, Stance, Status};
    use crate::roster::{Role, RosterEntry};

    #[test]
    fn every_change_to_an_item_and_only_those_is_listed() {
        let a = Identity::generate().expect("key");
        let b = Identity::generate().expect("key");
        let roster = Roster::new(
            [
                RosterEntry {
                    key: a.public(),
                    name: "A".into(),
                    role: Role::Member,
                },
                RosterEntry {
                    key: b.public(),
                    name: "B".into(),
                    role: Role::Member,
                },
            ],
            2,
        );
        let mut doc_a = Document::new(a.public());
        let new = NewAssessment {
            category: "reliability".into(),
            title: "t".into(),
            summary: String::new(),
            likelihood: None,
            severity: None,
            mitigations: vec!["m".into()],
            status: Status::Open,
        };
        doc_a.add_assessment("ra-one", &new, 1_000).expect("add");
        doc_a.add_assessment("ra-two", &new, 2_000).expect("add");
        let update = AssessmentUpdate {
            severity: Some(Score::new("severity", 4).expect("score")),
            ..AssessmentUpdate::default()
        };
        // B rescores and comments on the first, starting from A's state.
        let mut doc_b = Document::load(&doc_a.save(), b.public()).expect("load");
        doc_b
            .update_assessment("ra-one", &update, 3_000)
            .expect("u");
        doc_b.comment("ra-one", "seen", 4_000).expect("comment");
        doc_b
            .add_note(
                "cn-x",
                &NewNote {
                    topic: "n".into(),
                    body: "b".into(),
                    kind: NoteKind::Agenda,
                    round: None,
                    assessments: vec!["ra-one".into()],
                },
                5_000,
            )
            .expect("note");
        doc_b
            .set_position("cn-x", b.node_id(), Stance::Agree, "", 6_000)
            .expect("position");
        let h = of(&doc_b, "ra-one", &roster, |_| Ok(())).expect("history");
        assert_eq!(h.kind, "assessment");
        let who: Vec<&str> = h.changes.iter().map(|c| c.author.name.as_str()).collect();
        assert_eq!(who, ["A", "B", "B"]);
        assert!(h.changes[0].fields.contains(&"(created)".to_string()));
        assert!(h.changes[1].fields.contains(&"severity".to_string()));
        assert!(h.changes[2].fields.contains(&"comments".to_string()));
        assert!(h.changes.iter().all(|c| c.verified));
        let n = of(&doc_b, "cn-x", &roster, |_| Err("forged".into())).expect("note");
        assert_eq!(n.changes.len(), 2);
        assert!(n.changes[1].fields[0].starts_with("positions"));
        assert_eq!(n.changes[1].problem.as_deref(), Some("forged"));
        assert!(of(&doc_b, "ra-none", &roster, |_| Ok(())).is_none());
    }

    /// From the hostile review: a member's change may set thousands of
    /// fields no version reads on an item (plain values are allowed
    /// there). Its history entry names at most 32 and counts the rest, in
    /// time linear in the change (it was quadratic, and kept every path).
    #[test]
    fn a_change_touching_thousands_of_fields_is_listed_in_bounded_space() {
        use automerge::transaction::{CommitOptions, Transactable};
        use automerge::{ROOT, ReadDoc};
        let me = Identity::from_secret([4; 32]);
        let mut doc = Document::new(me.public());
        let new = NewAssessment::draft("algorithmic-bias", "t");
        doc.add_assessment("ra-wide", &new, 1_700_000_000_000)
            .expect("assessment");
        let mut am = doc.automerge().clone();
        let (_, obj) = am.get(ROOT, "a/ra-wide").expect("get").expect("item");
        am.transact_with::<_, _, automerge::AutomergeError, _>(
            |_| CommitOptions::default().with_time(1_700_000_000_001),
            |tx| {
                for i in 0..20_000 {
                    tx.put(&obj, format!("f{i}"), 1)?;
                }
                Ok(())
            },
        )
        .expect("wide change");
        let doc = Document::load(&am.save(), me.public()).expect("loads");
        let roster = Roster::new(
            [RosterEntry {
                key: me.public(),
                name: "A".into(),
                role: Role::Member,
            }],
            1,
        );
        let history = of(&doc, "ra-wide", &roster, |_| Ok(())).expect("history");
        let wide = &history.changes[1].fields;
        assert_eq!(wide.len(), MAX_FIELDS + 1, "{wide:?}");
        assert_eq!(
            wide[MAX_FIELDS],
            format!("(and {} more)", 20_000 - MAX_FIELDS)
        );
    }
}
