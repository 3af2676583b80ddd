//! The shared document: an Automerge CRDT holding assessments, notes and
//! operator-added categories, and the typed reads and writes over it.
//!
//! Layout (all keys on the root map, so no two institutions ever race to
//! create the same container):
//! - `a/<id>`: an assessment map (`category`, `title`, `summary`, `likelihood`,
//!   `severity`, `status`, `mitigations` list, `comments` list of maps,
//!   `created_at`, `updated_at`);
//! - `n/<id>`: a note map (`topic`, `body`, `kind`, `round`, `assessments`
//!   list, `positions` map keyed by node id, timestamps);
//! - `c/<key>`: a category map (`group`, `title`).
//!
//! Who wrote what is never typed in: it is read from the Automerge op ids,
//! whose actor id is the author's public key. A position counts only when the
//! institution it is filed under wrote it. This module does no IO; every call
//! into Automerge on data from outside runs under `catch_unwind`.

mod carry;
pub use carry::Carried;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{
    ActorId, Automerge, AutomergeError, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc,
    ScalarValue, Value,
};

use crate::identity::{NodeId, PublicKey};
use crate::model::{
    AssessmentView, CommentView, Conflict, ConflictValue, Institution, NoteKind, NoteView,
    PositionView, Round, Score, Stance, Standing, Status, format_time, standing,
};
use crate::roster::Roster;
use crate::taxonomy::{self, Category};

const ASSESSMENT_PREFIX: &str = "a/";
const NOTE_PREFIX: &str = "n/";
const CATEGORY_PREFIX: &str = "c/";

/// Errors from the document layer.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("automerge rejected the change: {0}")]
    Automerge(#[from] AutomergeError),
    #[error("automerge panicked while {0}; the input was rejected")]
    Panicked(&'static str),
    #[error("change does not parse: {0}")]
    BadChange(String),
    #[error("no assessment with id {}", crate::clip::quote(.0))]
    NoAssessment(String),
    #[error("no note with id {}", crate::clip::quote(.0))]
    NoNote(String),
    #[error("nothing to change: the values given are already the current ones")]
    NothingToChange,
    #[error("unknown head {0}")]
    UnknownHead(String),
}

/// A new assessment, validated by the caller.
#[derive(Clone, Debug)]
pub struct NewAssessment {
    pub category: String,
    pub title: String,
    pub summary: String,
    pub likelihood: Option<Score>,
    pub severity: Option<Score>,
    pub mitigations: Vec<String>,
    pub status: Status,
}

#[cfg(test)]
impl NewAssessment {
    /// A draft with no scores, summary or mitigations, for tests.
    pub(crate) fn draft(category: &str, title: &str) -> Self {
        Self {
            category: category.into(),
            title: title.into(),
            summary: String::new(),
            likelihood: None,
            severity: None,
            mitigations: Vec::new(),
            status: Status::Draft,
        }
    }
}

/// Fields to change on an assessment; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct AssessmentUpdate {
    pub category: Option<String>,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub likelihood: Option<Score>,
    pub severity: Option<Score>,
    pub mitigations: Option<Vec<String>>,
    pub status: Option<Status>,
}

impl AssessmentUpdate {
    pub fn is_empty(&self) -> bool {
        self.category.is_none()
            && self.title.is_none()
            && self.summary.is_none()
            && self.likelihood.is_none()
            && self.severity.is_none()
            && self.mitigations.is_none()
            && self.status.is_none()
    }
}

/// A new consensus note, validated by the caller.
#[derive(Clone, Debug)]
pub struct NewNote {
    pub topic: String,
    pub body: String,
    pub kind: NoteKind,
    pub round: Option<Round>,
    pub assessments: Vec<String>,
}

/// A checkpoint entry as written into the document, every field in text
/// form (hex); `checkpoint` builds and checks it.
#[derive(Clone, Debug)]
pub struct CheckpointEntry {
    /// The checkpoint's short id, for the change message only.
    pub id: String,
    pub network: String,
    pub heads: Vec<String>,
    pub state: String,
    pub signature: String,
}

/// Parses a change from outside under `catch_unwind`, so a panic inside
/// Automerge rejects the input instead of killing the process.
pub fn parse_change(bytes: &[u8]) -> Result<Change, DocError> {
    match catch_unwind(|| Change::try_from(bytes)) {
        Ok(Ok(change)) => Ok(change),
        Ok(Err(e)) => Err(DocError::BadChange(e.to_string())),
        Err(_) => Err(DocError::Panicked("parsing a change")),
    }
}

/// The CRDT document with Concord's schema.
#[derive(Debug)]
pub struct Document {
    doc: Automerge,
}

impl Document {
    /// An empty document that writes as `actor`.
    pub fn new(actor: PublicKey) -> Self {
        Self {
            doc: Automerge::new().with_actor(ActorId::from(actor.as_bytes().as_slice())),
        }
    }

    /// A document saved by [`Document::save`] (this node's own snapshot).
    /// Loaded under `catch_unwind`: a damaged file is an error, not a panic.
    pub fn load(bytes: &[u8], actor: PublicKey) -> Result<Self, DocError> {
        match catch_unwind(|| Automerge::load(bytes)) {
            Ok(Ok(doc)) => Ok(Self {
                doc: doc.with_actor(ActorId::from(actor.as_bytes().as_slice())),
            }),
            Ok(Err(e)) => Err(DocError::Automerge(e)),
            Err(_) => Err(DocError::Panicked("loading a snapshot")),
        }
    }

    /// Writes from now on as `actor` (after a key rotation).
    pub fn set_actor(&mut self, actor: PublicKey) {
        self.doc
            .set_actor(ActorId::from(actor.as_bytes().as_slice()));
    }

    /// The whole document in Automerge's compact form.
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// Applies verified changes in one batch. On error the document may hold
    /// part of the batch: the caller rebuilds it from the store.
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<(), DocError> {
        let doc = &mut self.doc;
        match catch_unwind(AssertUnwindSafe(|| doc.apply_changes(changes))) {
            Ok(result) => Ok(result?),
            Err(_) => Err(DocError::Panicked("applying changes")),
        }
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        let mut heads = self.doc.get_heads();
        heads.sort();
        heads
    }

    pub fn has_change(&self, hash: &ChangeHash) -> bool {
        self.doc.get_change_meta_by_hash(hash).is_some()
    }

    /// Hashes of the changes not in the causal past of `heads`, in causal order.
    pub fn changes_since(&self, heads: &[ChangeHash]) -> Result<Vec<ChangeHash>, DocError> {
        if let Some(unknown) = heads.iter().find(|h| !self.has_change(h)) {
            return Err(DocError::UnknownHead(unknown.to_string()));
        }
        Ok(self
            .doc
            .get_changes_meta(heads)
            .iter()
            .map(|m| m.hash)
            .collect())
    }

    /// Every change as (hash, author, seq), in causal order: a change comes
    /// after all of its dependencies.
    pub fn change_log(&self) -> Vec<(ChangeHash, PublicKey, u64)> {
        self.doc
            .get_changes_meta(&[])
            .iter()
            .filter_map(|m| {
                let actor: [u8; 32] = m.actor.to_bytes().try_into().ok()?;
                Some((m.hash, PublicKey::from_checked(actor), m.seq))
            })
            .collect()
    }

    fn commit<F>(&mut self, now_ms: i64, message: &str, f: F) -> Result<Change, DocError>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<(), AutomergeError>,
    {
        let options = CommitOptions::default()
            .with_time(now_ms)
            .with_message(message.to_string());
        let done = self
            .doc
            .transact_with(|_| options, f)
            .map_err(|failure| DocError::Automerge(failure.error))?;
        if done.hash.is_none() {
            return Err(DocError::NothingToChange);
        }
        self.doc
            .get_last_local_change()
            .ok_or(DocError::NothingToChange)
    }

    /// Writes a new assessment under `id` and returns the change bytes.
    pub fn add_assessment(
        &mut self,
        id: &str,
        new: &NewAssessment,
        now_ms: i64,
    ) -> Result<Change, DocError> {
        let key = format!("{ASSESSMENT_PREFIX}{id}");
        self.commit(now_ms, &format!("add assessment {id}"), |tx| {
            let obj = tx.put_object(ROOT, key.as_str(), ObjType::Map)?;
            tx.put(&obj, "category", new.category.as_str())?;
            tx.put(&obj, "title", new.title.as_str())?;
            tx.put(&obj, "summary", new.summary.as_str())?;
            if let Some(l) = new.likelihood {
                tx.put(&obj, "likelihood", i64::from(l.get()))?;
            }
            if let Some(s) = new.severity {
                tx.put(&obj, "severity", i64::from(s.get()))?;
            }
            put_list(tx, &obj, "mitigations", &new.mitigations)?;
            tx.put(&obj, "status", new.status.as_str())?;
            tx.put_object(&obj, "comments", ObjType::List)?;
            tx.put(&obj, "created_at", ScalarValue::Timestamp(now_ms))?;
            tx.put(&obj, "updated_at", ScalarValue::Timestamp(now_ms))?;
            Ok(())
        })
    }

    /// Changes the given fields of an assessment.
    pub fn update_assessment(
        &mut self,
        id: &str,
        update: &AssessmentUpdate,
        now_ms: i64,
    ) -> Result<Change, DocError> {
        if update.is_empty() {
            return Err(DocError::NothingToChange);
        }
        let obj = self
            .object(ASSESSMENT_PREFIX, id)
            .ok_or_else(|| DocError::NoAssessment(id.to_string()))?;
        self.commit(now_ms, &format!("update assessment {id}"), |tx| {
            if let Some(c) = &update.category {
                tx.put(&obj, "category", c.as_str())?;
            }
            if let Some(t) = &update.title {
                tx.put(&obj, "title", t.as_str())?;
            }
            if let Some(s) = &update.summary {
                tx.put(&obj, "summary", s.as_str())?;
            }
            if let Some(l) = update.likelihood {
                tx.put(&obj, "likelihood", i64::from(l.get()))?;
            }
            if let Some(s) = update.severity {
                tx.put(&obj, "severity", i64::from(s.get()))?;
            }
            if let Some(m) = &update.mitigations {
                put_list(tx, &obj, "mitigations", m)?;
            }
            if let Some(s) = update.status {
                tx.put(&obj, "status", s.as_str())?;
            }
            tx.put(&obj, "updated_at", ScalarValue::Timestamp(now_ms))?;
            Ok(())
        })
    }

    /// Appends a comment to an assessment.
    pub fn comment(&mut self, id: &str, text: &str, now_ms: i64) -> Result<Change, DocError> {
        let obj = self
            .object(ASSESSMENT_PREFIX, id)
            .ok_or_else(|| DocError::NoAssessment(id.to_string()))?;
        let list = match self.doc.get(&obj, "comments")? {
            Some((Value::Object(ObjType::List), list)) => Some(list),
            _ => None,
        };
        self.commit(now_ms, &format!("comment on {id}"), |tx| {
            let list = match list {
                Some(list) => list,
                None => tx.put_object(&obj, "comments", ObjType::List)?,
            };
            let at = tx.length(&list);
            let comment = tx.insert_object(&list, at, ObjType::Map)?;
            tx.put(&comment, "text", text)?;
            tx.put(&comment, "at", ScalarValue::Timestamp(now_ms))?;
            Ok(())
        })
    }

    /// Writes a new note under `id`.
    pub fn add_note(&mut self, id: &str, new: &NewNote, now_ms: i64) -> Result<Change, DocError> {
        let key = format!("{NOTE_PREFIX}{id}");
        self.commit(now_ms, &format!("add note {id}"), |tx| {
            let obj = tx.put_object(ROOT, key.as_str(), ObjType::Map)?;
            tx.put(&obj, "topic", new.topic.as_str())?;
            tx.put(&obj, "body", new.body.as_str())?;
            tx.put(&obj, "kind", new.kind.as_str())?;
            if let Some(round) = new.round {
                tx.put(&obj, "round", round.as_str())?;
            }
            put_list(tx, &obj, "assessments", &new.assessments)?;
            tx.put_object(&obj, "positions", ObjType::Map)?;
            tx.put(&obj, "created_at", ScalarValue::Timestamp(now_ms))?;
            tx.put(&obj, "updated_at", ScalarValue::Timestamp(now_ms))?;
            Ok(())
        })
    }

    /// Records `author`'s position on a note, replacing its earlier one.
    pub fn set_position(
        &mut self,
        id: &str,
        author: NodeId,
        stance: Stance,
        comment: &str,
        now_ms: i64,
    ) -> Result<Change, DocError> {
        let obj = self
            .object(NOTE_PREFIX, id)
            .ok_or_else(|| DocError::NoNote(id.to_string()))?;
        let positions = match self.doc.get(&obj, "positions")? {
            Some((Value::Object(ObjType::Map), map)) => Some(map),
            _ => None,
        };
        let key = author.to_string();
        self.commit(now_ms, &format!("position on {id}"), |tx| {
            let positions = match positions {
                Some(map) => map,
                None => tx.put_object(&obj, "positions", ObjType::Map)?,
            };
            let pos = tx.put_object(&positions, key.as_str(), ObjType::Map)?;
            tx.put(&pos, "position", stance.as_str())?;
            tx.put(&pos, "comment", comment)?;
            tx.put(&pos, "at", ScalarValue::Timestamp(now_ms))?;
            Ok(())
        })
    }

    /// Adds an operator-defined category to the shared taxonomy.
    pub fn add_category(
        &mut self,
        key: &str,
        group: &str,
        title: &str,
        now_ms: i64,
    ) -> Result<Change, DocError> {
        let root_key = format!("{CATEGORY_PREFIX}{key}");
        self.commit(now_ms, &format!("add category {key}"), |tx| {
            let obj = tx.put_object(ROOT, root_key.as_str(), ObjType::Map)?;
            tx.put(&obj, "group", group)?;
            tx.put(&obj, "title", title)?;
            Ok(())
        })
    }

    fn object(&self, prefix: &str, id: &str) -> Option<ObjId> {
        match self.doc.get(ROOT, format!("{prefix}{id}")) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => Some(obj),
            _ => None,
        }
    }

    /// The ids under `prefix` (which ends in `/`). Automerge keeps a map's
    /// keys sorted, so they are the range from the prefix up to the prefix
    /// with `/` raised to `0`: a lookup, not a walk of every object in the
    /// document (it was a walk, on every write that names a category).
    fn ids(&self, prefix: &str) -> Vec<String> {
        debug_assert!(prefix.ends_with('/'), "{prefix}");
        let end = format!("{}0", &prefix[..prefix.len() - 1]);
        self.doc
            .map_range(ROOT, prefix.to_string()..end)
            .filter_map(|item| item.key.strip_prefix(prefix).map(str::to_string))
            .collect()
    }

    pub fn has_assessment(&self, id: &str) -> bool {
        self.object(ASSESSMENT_PREFIX, id).is_some()
    }

    pub fn has_note(&self, id: &str) -> bool {
        self.object(NOTE_PREFIX, id).is_some()
    }

    /// The built-in categories followed by those operators added, by key.
    pub fn categories(&self) -> Vec<Category> {
        let mut all = taxonomy::builtin();
        let mut extra = Vec::new();
        for key in self.ids(CATEGORY_PREFIX) {
            if all.iter().any(|c| c.key == key) || !taxonomy::valid_key(&key) {
                continue;
            }
            if let Some(obj) = self.object(CATEGORY_PREFIX, &key) {
                let r = Reader::new(&self.doc, &obj);
                extra.push(Category {
                    key,
                    group: r.string("group").unwrap_or_default(),
                    title: r.string("title").unwrap_or_default(),
                    builtin: false,
                });
            }
        }
        all.extend(extra);
        all
    }

    /// One assessment.
    pub fn assessment(&self, id: &str, roster: &Roster) -> Option<AssessmentView> {
        let obj = self.object(ASSESSMENT_PREFIX, id)?;
        let r = Reader::new(&self.doc, &obj);
        let mut conflicts = Vec::new();
        for field in [
            "category",
            "title",
            "summary",
            "likelihood",
            "severity",
            "mitigations",
            "status",
        ] {
            r.conflict(field, roster, &mut conflicts);
        }
        let likelihood = r.score("likelihood");
        let severity = r.score("severity");
        let comments = r
            .list_objects("comments")
            .into_iter()
            .map(|comment| {
                let c = Reader::new(&self.doc, &comment);
                CommentView {
                    author: institution(author_of(&comment), roster),
                    text: c.string("text").unwrap_or_default(),
                    at: format_time(c.time("at").unwrap_or(0)),
                }
            })
            .collect();
        Some(AssessmentView {
            id: id.to_string(),
            category: r.string("category").unwrap_or_default(),
            title: r.string("title").unwrap_or_default(),
            summary: r.string("summary").unwrap_or_default(),
            likelihood,
            severity,
            risk: likelihood.zip(severity).map(|(l, s)| l * s),
            mitigations: r.strings("mitigations"),
            status: r.string("status").unwrap_or_else(|| "draft".into()),
            author: institution(author_of(&obj), roster),
            created_at: format_time(r.time("created_at").unwrap_or(0)),
            updated_at: format_time(r.time("updated_at").unwrap_or(0)),
            comments,
            conflicts,
        })
    }

    /// Every assessment, oldest first (ties broken by id).
    pub fn assessments(&self, roster: &Roster) -> Vec<AssessmentView> {
        let mut all: Vec<_> = self
            .ids(ASSESSMENT_PREFIX)
            .iter()
            .filter_map(|id| self.assessment(id, roster))
            .collect();
        all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        all
    }

    /// One note, with its standing derived from the current members.
    pub fn note(&self, id: &str, roster: &Roster) -> Option<NoteView> {
        let obj = self.object(NOTE_PREFIX, id)?;
        let r = Reader::new(&self.doc, &obj);
        let mut conflicts = Vec::new();
        for field in ["topic", "body", "kind", "round", "assessments"] {
            r.conflict(field, roster, &mut conflicts);
        }
        // A rotated key's position speaks for its institution's current key
        // until that key files its own (the latest one counts).
        let mut recorded: BTreeMap<PublicKey, (Option<Stance>, String, i64)> = BTreeMap::new();
        for (key, pos) in self.positions(&obj) {
            let current = roster.current_key(&key);
            if recorded.get(&current).is_none_or(|p| p.2 <= pos.2) {
                recorded.insert(current, pos);
            }
        }
        let mut positions = Vec::new();
        let mut stances = Vec::new();
        for member in roster.members() {
            let pos = recorded.get(&member.key);
            stances.push(pos.and_then(|p| p.0));
            positions.push(PositionView {
                institution: institution(Some(member.key), roster),
                counts: true,
                position: pos.and_then(|p| p.0).map(|s| s.as_str().to_string()),
                comment: pos.map(|p| p.1.clone()).unwrap_or_default(),
                at: pos.map(|p| format_time(p.2)),
            });
        }
        for (key, (stance, comment, at)) in &recorded {
            if !roster.is_member(key) {
                positions.push(PositionView {
                    institution: institution(Some(*key), roster),
                    counts: false,
                    position: stance.map(|s| s.as_str().to_string()),
                    comment: comment.clone(),
                    at: Some(format_time(*at)),
                });
            }
        }
        let standing: Standing = standing(stances);
        Some(NoteView {
            id: id.to_string(),
            topic: r.string("topic").unwrap_or_default(),
            body: r.string("body").unwrap_or_default(),
            kind: r.string("kind").unwrap_or_else(|| "agenda".into()),
            round: r.string("round"),
            assessments: r.strings("assessments"),
            standing,
            positions,
            author: institution(author_of(&obj), roster),
            created_at: format_time(r.time("created_at").unwrap_or(0)),
            updated_at: format_time(r.time("updated_at").unwrap_or(0)),
            conflicts,
        })
    }

    /// Positions filed under a node id and written by that same institution.
    fn positions(&self, note: &ObjId) -> BTreeMap<PublicKey, (Option<Stance>, String, i64)> {
        let mut out = BTreeMap::new();
        let Ok(Some((Value::Object(ObjType::Map), map))) = self.doc.get(note, "positions") else {
            return out;
        };
        for key in self.doc.keys(&map) {
            let Ok(node) = key.parse::<NodeId>() else {
                continue;
            };
            let Ok(Some((Value::Object(ObjType::Map), pos))) = self.doc.get(&map, key.as_str())
            else {
                continue;
            };
            // Only the institution itself may file its position.
            if author_of(&pos) != Some(node.public_key()) {
                continue;
            }
            // ...and only the values it wrote inside count: another member
            // writing into this map changes nothing.
            let p = Reader::new(&self.doc, &pos);
            let me = node.public_key();
            let stance = p
                .value_by("position", me)
                .and_then(|v| v.as_str().and_then(|s| s.parse().ok()));
            let comment = p
                .value_by("comment", me)
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let at = p.value_by("at", me).and_then(|v| v.as_i64()).unwrap_or(0);
            out.insert(me, (stance, comment, at));
        }
        out
    }

    /// The Automerge document itself, for readers that walk it whole
    /// (`checkpoint`'s canonical state, `history`'s change scan).
    pub fn automerge(&self) -> &Automerge {
        &self.doc
    }

    /// The document as it was at `heads` (every change in their causal past
    /// and nothing else), for reading an earlier state.
    pub fn at(&self, heads: &[ChangeHash]) -> Result<Document, DocError> {
        if let Some(unknown) = heads.iter().find(|h| !self.has_change(h)) {
            return Err(DocError::UnknownHead(unknown.to_string()));
        }
        let mut heads = heads.to_vec();
        heads.sort();
        if heads == self.heads() {
            return Ok(Self {
                doc: self.doc.clone(),
            });
        }
        Ok(Self {
            doc: self.doc.fork_at(&heads)?,
        })
    }

    /// Writes one signed checkpoint entry under `key` (see `checkpoint`).
    pub fn put_checkpoint(
        &mut self,
        key: &str,
        entry: &CheckpointEntry,
        now_ms: i64,
    ) -> Result<Change, DocError> {
        self.commit(now_ms, &format!("checkpoint {}", entry.id), |tx| {
            let obj = tx.put_object(ROOT, key, ObjType::Map)?;
            tx.put(&obj, "network", entry.network.as_str())?;
            put_list(tx, &obj, "heads", &entry.heads)?;
            tx.put(&obj, "state", entry.state.as_str())?;
            tx.put(&obj, "signature", entry.signature.as_str())?;
            tx.put(&obj, "at", ScalarValue::Timestamp(now_ms))?;
            Ok(())
        })
    }

    /// Every note, oldest first (ties broken by id).
    pub fn notes(&self, roster: &Roster) -> Vec<NoteView> {
        let mut all: Vec<_> = self
            .ids(NOTE_PREFIX)
            .iter()
            .filter_map(|id| self.note(id, roster))
            .collect();
        all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        all
    }
}

fn put_list(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
    items: &[String],
) -> Result<(), AutomergeError> {
    let list = tx.put_object(obj, key, ObjType::List)?;
    for (i, item) in items.iter().enumerate() {
        tx.insert(&list, i, item.as_str())?;
    }
    Ok(())
}

/// The author of an op: the public key its actor id carries.
pub(crate) fn author_of(id: &ObjId) -> Option<PublicKey> {
    match id {
        ObjId::Id(_, actor, _) => {
            let bytes: [u8; 32] = actor.to_bytes().try_into().ok()?;
            PublicKey::from_bytes(bytes).ok()
        }
        ObjId::Root => None,
    }
}

/// An author as shown: node id and roster name ("unknown" without a key).
pub(crate) fn institution(key: Option<PublicKey>, roster: &Roster) -> Institution {
    match key {
        Some(key) => Institution {
            node_id: key.node_id().to_string(),
            name: roster.display_name(&key),
        },
        None => Institution {
            node_id: String::new(),
            name: "unknown".into(),
        },
    }
}

/// Lenient typed reads of one map object: a wrong type reads as absent.
struct Reader<'a> {
    doc: &'a Automerge,
    obj: &'a ObjId,
}

impl<'a> Reader<'a> {
    fn new(doc: &'a Automerge, obj: &'a ObjId) -> Self {
        Self { doc, obj }
    }

    fn string(&self, key: &str) -> Option<String> {
        match self.doc.get(self.obj, key) {
            Ok(Some((v, _))) => v.as_str().map(str::to_string),
            _ => None,
        }
    }

    /// The value of `key` written by `author`, ignoring anyone else's.
    fn value_by(&self, key: &str, author: PublicKey) -> Option<serde_json::Value> {
        let all = self.doc.get_all(self.obj, key).ok()?;
        let (value, id) = all
            .iter()
            .rev()
            .find(|(_, id)| author_of(id) == Some(author))?;
        Some(to_json(self.doc, value, id))
    }

    fn time(&self, key: &str) -> Option<i64> {
        match self.doc.get(self.obj, key) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Timestamp(t) | ScalarValue::Int(t) => Some(*t),
                _ => None,
            },
            _ => None,
        }
    }

    fn score(&self, key: &str) -> Option<u8> {
        match self.doc.get(self.obj, key) {
            Ok(Some((v, _))) => v.as_i64().filter(|n| (1..=5).contains(n)).map(|n| n as u8),
            _ => None,
        }
    }

    fn strings(&self, key: &str) -> Vec<String> {
        match self.doc.get(self.obj, key) {
            Ok(Some((Value::Object(ObjType::List), list))) => list_strings(self.doc, &list),
            _ => Vec::new(),
        }
    }

    fn list_objects(&self, key: &str) -> Vec<ObjId> {
        let Ok(Some((Value::Object(ObjType::List), list))) = self.doc.get(self.obj, key) else {
            return Vec::new();
        };
        (0..self.doc.length(&list))
            .filter_map(|i| match self.doc.get(&list, i) {
                Ok(Some((Value::Object(ObjType::Map), obj))) => Some(obj),
                _ => None,
            })
            .collect()
    }

    /// Adds a conflict entry when `key` holds more than one concurrent value.
    fn conflict(&self, key: &str, roster: &Roster, out: &mut Vec<Conflict>) {
        let Ok(all) = self.doc.get_all(self.obj, key) else {
            return;
        };
        if all.len() < 2 {
            return;
        }
        let winner = self.doc.get(self.obj, key).ok().flatten().map(|(_, id)| id);
        let values = all
            .iter()
            .map(|(value, id)| ConflictValue {
                value: to_json(self.doc, value, id),
                author: institution(author_of(id), roster),
                winner: winner.as_ref() == Some(id),
            })
            .collect();
        out.push(Conflict {
            field: key.to_string(),
            values,
        });
    }
}

fn list_strings(doc: &Automerge, list: &ObjId) -> Vec<String> {
    (0..doc.length(list))
        .filter_map(|i| match doc.get(list, i) {
            Ok(Some((v, _))) => v.as_str().map(str::to_string),
            _ => None,
        })
        .collect()
}

fn to_json(doc: &Automerge, value: &Value<'_>, id: &ObjId) -> serde_json::Value {
    match value {
        Value::Object(ObjType::List) => serde_json::Value::from(list_strings(doc, id)),
        Value::Object(_) => serde_json::Value::Null,
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => serde_json::Value::from(s.to_string()),
            ScalarValue::Int(n) | ScalarValue::Timestamp(n) => serde_json::Value::from(*n),
            ScalarValue::Uint(n) => serde_json::Value::from(*n),
            ScalarValue::Boolean(b) => serde_json::Value::from(*b),
            other => serde_json::Value::from(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The range lookup finds exactly the keys a walk of every key with the
    /// prefix finds, among neighbours that sort just before and after it.
    #[test]
    fn ids_are_exactly_the_keys_under_the_prefix() {
        let mut doc = Document::new(crate::identity::Identity::from_secret([3; 32]).public());
        let keys = [
            "a", "a.", "a/", "a/1", "a/z~", "a0", "a00", "b/x", "c", "c/", "c/bio", "c/z", "c0",
            "n/", "n/1", "n/2", "n0", "o/1", "/", "", "é/", "a/é",
        ];
        let mut tx = doc.doc.transaction();
        for key in keys {
            tx.put(ROOT, key, 1).expect("put");
        }
        tx.delete(ROOT, "a/1").expect("delete");
        tx.commit();
        for prefix in [ASSESSMENT_PREFIX, NOTE_PREFIX, CATEGORY_PREFIX] {
            let walked: Vec<String> = doc
                .doc
                .keys(ROOT)
                .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
                .collect();
            assert!(!walked.is_empty(), "{prefix}");
            assert_eq!(doc.ids(prefix), walked, "{prefix}");
        }
    }
}
