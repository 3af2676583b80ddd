//! The operations of incoming changes, checked against the document before
//! Automerge applies them.
//!
//! Automerge trusts a change to have been made by Automerge: that each
//! operation names an object that exists, addresses a map by key and a list
//! by element, and overwrites only operations on the same key or element. A
//! change built by hand and signed with a member's key can break any of
//! these. Automerge 0.12 then panics or, in a release build, applies it
//! silently with its operations out of order; a document in that state saves
//! and loads into something else, and nodes that applied the same changes in
//! different batches disagree. (The `ingest_signed` fuzz target found the
//! first such change; see "Fuzzing" in docs/reliability.md.)
//!
//! So every operation of an incoming change must be one Automerge could have
//! made, on a document of the shape Concord writes:
//! - it makes a map or a list, puts a plain value, or deletes (Concord's
//!   document has no text, tables, counters or marks);
//! - its object is the root, or an object made by an older operation;
//! - it addresses a map by key and never inserts into one; it addresses a
//!   list by element: an insert at the head or after an element of that same
//!   list, or an update of such an element;
//! - an insert puts a value or makes an object, and overwrites nothing; a
//!   delete overwrites something;
//! - each operation it overwrites is older, on the same object and key or
//!   element, and not a deletion;
//! - each actor the change lists besides its own is one its operations
//!   refer to;
//! - each value it puts, and each object it makes, is of the type and range
//!   Concord writes at that place (a timestamp in years 2000–9999 for
//!   `created_at`, a score from 1 to 5, a title of at most 300 bytes…), and
//!   its own time and message are in range too: see [`crate::schema`].
//!
//! "Older" means a smaller Lamport counter, which every operation Automerge
//! makes has over what it builds on. The operations referred to are looked
//! up in the batch and then, through [`Ops`], in the document's stored
//! changes; an operation nobody holds is refused.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::legacy::{self, ElementId, Key, ObjectId, OpType};
use automerge::{ActorId, Change, ChangeHash, ExpandedChange, ObjType, ScalarValue};

use crate::schema::{self, Action, BadValue, Role};

/// Where the operations a batch refers to, but does not hold, are found.
pub trait Ops {
    /// The change in the document that holds `actor`'s operation number
    /// `counter`, if there is one.
    fn change_with_op(&self, actor: &ActorId, counter: u64) -> Option<Change>;
}

/// No document: every operation referred to must be in the batch.
impl Ops for () {
    fn change_with_op(&self, _: &ActorId, _: u64) -> Option<Change> {
        None
    }
}

/// A change with an operation (or an actor) that breaks one of the rules
/// in the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at} {why}")]
pub struct BadOp {
    pub change: ChangeHash,
    /// What in the change, e.g. `operation 2 (17@ab…)`: its position from 0
    /// and its id, `counter@actor`.
    pub at: String,
    pub why: Why,
}

/// Which rule an operation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    #[error("cannot be decoded")]
    Undecodable,
    #[error("is referred to by none of its operations")]
    ActorUnused,
    #[error("uses {0}, which Concord's document never holds")]
    Unsupported(&'static str),
    #[error("targets an object that is not older than itself")]
    ObjectNotOlder,
    #[error("targets an object this node does not hold")]
    NoSuchObject,
    #[error("addresses a map by list element")]
    ElementInMap,
    #[error("addresses a list by map key")]
    KeyInList,
    #[error("updates the head of a list, which is no element")]
    HeadUpdated,
    #[error("refers to a list element that is not older than itself")]
    ElementNotOlder,
    #[error("refers to a list element this node does not hold in that list")]
    NoSuchElement,
    #[error("inserts a deletion")]
    InsertedDelete,
    #[error("inserts a new element yet overwrites earlier values")]
    InsertOverwrites,
    #[error("deletes without naming what it deletes")]
    DeletesNothing,
    #[error("overwrites an operation that is not older than itself")]
    OverwritesNewer,
    #[error("overwrites an operation this node does not hold")]
    OverwritesUnknown,
    #[error("overwrites an operation on another object, key or element")]
    OverwritesElsewhere,
    #[error("overwrites a deletion")]
    OverwritesDelete,
    #[error("{0}")]
    Value(BadValue),
    #[error(
        "is not encoded the way Automerge encodes it: its operations encode again to \
         change {0}, and Automerge, which rebuilds changes from their operations, would \
         look for that one"
    )]
    NotCanonical(ChangeHash),
}

/// Checks every operation of `changes`, a batch in causal order (each
/// change after those of its dependencies that are in the batch), against
/// the changes before it and the document behind `ops`. Refuses the batch
/// at the first operation that breaks a rule. An operation may refer only to
/// operations before it: its change's earlier ones, earlier changes' and the
/// document's.
pub fn check(changes: &[&Change], ops: &impl Ops) -> Result<(), BadOp> {
    OpIndex::default().check(changes, ops)
}

/// How many operations an [`OpIndex`] holds before it starts afresh (about
/// 60 bytes each).
const INDEX_MAX: usize = 1 << 20;
/// How deep the schema follows objects; Concord's own nest three deep.
const MAX_DEPTH: usize = 8;

/// The operations of stored changes the checks have met, kept between
/// batches: during a catch-up every batch refers to the ones before it,
/// and without the index each would look them up in the store and decode
/// them again.
///
/// It holds only operations of changes in the document: those of a checked
/// batch count once the caller says the batch is stored
/// ([`OpIndex::keep`]); the next check forgets them otherwise. When the
/// document is rebuilt (a roster change can reject stored changes) the
/// caller must [`OpIndex::clear`] it.
#[derive(Debug, Default)]
pub struct OpIndex {
    actors: HashMap<ActorId, u32>,
    actor_ids: Vec<ActorId>,
    keys: HashMap<String, u32>,
    key_names: Vec<String>,
    ops: HashMap<Id, Info>,
    /// What each object met is in Concord's document ([`schema::Role`]).
    roles: HashMap<Id, Role>,
    /// Operations of the batch last checked, not known to be stored.
    unconfirmed: Vec<Id>,
}

impl OpIndex {
    /// [`check`], with the operations indexed so far.
    pub fn check(&mut self, changes: &[&Change], ops: &impl Ops) -> Result<(), BadOp> {
        for id in self.unconfirmed.drain(..) {
            self.ops.remove(&id);
            self.roles.remove(&id);
        }
        if self
            .ops
            .len()
            .max(self.keys.len())
            .max(self.actor_ids.len())
            > INDEX_MAX
        {
            self.clear();
        }
        let mut checker = Checker { ops, index: self };
        for change in changes {
            checker.check(change)?;
        }
        Ok(())
    }

    /// The batch last checked is in the document and the store: its
    /// operations may be referred to from now on.
    pub fn keep(&mut self) {
        self.unconfirmed.clear();
    }

    /// Forgets everything (after the document was rebuilt).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// How many operations it holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Automerge's own decoder, which panics on some values a parsed change can
/// still hold (an unknown action, a non-numeric increment).
fn decode(change: &Change) -> Result<ExpandedChange, BadOp> {
    catch_unwind(AssertUnwindSafe(|| change.decode())).map_err(|_| BadOp {
        change: change.hash(),
        at: "its operations".into(),
        why: Why::Undecodable,
    })
}

/// Refuses a change that is not in Automerge's own encoding. Automerge
/// keeps operations, not bytes: it rebuilds a change from them when asked
/// for its changes (an item's history, a save), and a change whose bytes
/// differ from that rebuild (found by fuzzing: one flipped bit in a column
/// header) hashes differently once rebuilt, so its dependants name a change
/// Automerge no longer finds, and it panics.
fn canonical(change: &Change, expanded: ExpandedChange) -> Result<(), BadOp> {
    let again = catch_unwind(AssertUnwindSafe(|| Change::from(expanded).hash()));
    match again {
        Ok(hash) if hash == change.hash() => Ok(()),
        Ok(hash) => Err(BadOp {
            change: change.hash(),
            at: "its encoding".into(),
            why: Why::NotCanonical(hash),
        }),
        Err(_) => Err(BadOp {
            change: change.hash(),
            at: "its operations".into(),
            why: Why::Undecodable,
        }),
    }
}

/// An operation id with its actor interned.
type Id = (u32, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Obj {
    Root,
    Made(Id),
}

/// Where in its object an operation acts: a map key (interned), or a list
/// element (for an insert, the element it makes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Key(u32),
    Element(Id),
    Head,
}

#[derive(Debug)]
struct Info {
    obj: Obj,
    slot: Slot,
    insert: bool,
    makes: Option<ObjType>,
    deletes: bool,
}

struct Checker<'a, O> {
    ops: &'a O,
    index: &'a mut OpIndex,
}

impl<O: Ops> Checker<'_, O> {
    fn actor(&mut self, actor: &ActorId) -> u32 {
        if let Some(n) = self.index.actors.get(actor) {
            return *n;
        }
        let n = u32::try_from(self.index.actor_ids.len()).expect("fewer actors than operations");
        self.index.actors.insert(actor.clone(), n);
        self.index.actor_ids.push(actor.clone());
        n
    }

    fn key(&mut self, key: &str) -> u32 {
        if let Some(n) = self.index.keys.get(key) {
            return *n;
        }
        let n = u32::try_from(self.index.keys.len()).expect("fewer keys than operations");
        self.index.keys.insert(key.to_string(), n);
        self.index.key_names.push(key.to_string());
        n
    }

    fn id(&mut self, id: &legacy::OpId) -> Id {
        (self.actor(id.actor()), id.counter())
    }

    fn obj(&mut self, obj: &ObjectId) -> Obj {
        match obj {
            ObjectId::Root => Obj::Root,
            ObjectId::Id(id) => Obj::Made(self.id(id)),
        }
    }

    /// Indexes every operation of a stored change.
    fn add(&mut self, change: &ExpandedChange) {
        let actor = self.actor(&change.actor_id);
        let start = change.start_op.get();
        for (i, op) in change.operations.iter().enumerate() {
            self.add_op((actor, start + i as u64), op);
        }
    }

    fn add_op(&mut self, id: Id, op: &legacy::Op) {
        let slot = match &op.key {
            _ if op.insert => Slot::Element(id),
            Key::Map(key) => Slot::Key(self.key(key)),
            Key::Seq(ElementId::Head) => Slot::Head,
            Key::Seq(ElementId::Id(e)) => Slot::Element(self.id(e)),
        };
        let info = Info {
            obj: self.obj(&op.obj),
            slot,
            insert: op.insert,
            makes: op.obj_type(),
            deletes: matches!(op.action, OpType::Delete),
        };
        self.index.ops.insert(id, info);
    }

    /// The operation `id`: checked already, or else from the document.
    fn find(&mut self, id: Id) -> Option<&Info> {
        if !self.index.ops.contains_key(&id) {
            let actor = self.index.actor_ids[id.0 as usize].clone();
            let change = self.ops.change_with_op(&actor, id.1)?;
            let expanded = decode(&change).ok()?;
            self.add(&expanded);
        }
        self.index.ops.get(&id)
    }

    /// What `obj` is in Concord's document. An object met in a checked
    /// batch has its role already; one from a stored change is worked out
    /// from its parent's, up to a depth past which nothing is Concord's.
    fn role(&mut self, obj: Obj, depth: usize) -> Role {
        let id = match obj {
            Obj::Root => return Role::Root,
            Obj::Made(id) => id,
        };
        if let Some(role) = self.index.roles.get(&id) {
            return *role;
        }
        if depth > MAX_DEPTH {
            return Role::Unknown;
        }
        let Some(info) = self.find(id) else {
            return Role::Unknown;
        };
        let (parent, slot) = (info.obj, info.slot);
        let parent = self.role(parent, depth + 1);
        let role = schema::child(parent, self.key_name(slot));
        self.index.roles.insert(id, role);
        role
    }

    fn key_name(&self, slot: Slot) -> Option<&str> {
        match slot {
            Slot::Key(k) => self.index.key_names.get(k as usize).map(String::as_str),
            Slot::Element(_) | Slot::Head => None,
        }
    }

    fn check(&mut self, change: &Change) -> Result<(), BadOp> {
        schema::check_header(change.timestamp(), change.message()).map_err(|e| BadOp {
            change: change.hash(),
            at: "its header".into(),
            why: Why::Value(e),
        })?;
        let expanded = decode(change)?;
        let actor = self.actor(&expanded.actor_id);
        let start = expanded.start_op.get();
        for (index, op) in expanded.operations.iter().enumerate() {
            let counter = start + index as u64;
            let bad = |why| BadOp {
                change: change.hash(),
                at: format!("operation {index} ({counter}@{})", expanded.actor_id),
                why,
            };
            self.check_op((actor, counter), op).map_err(bad)?;
            self.add_op((actor, counter), op);
            self.index.unconfirmed.push((actor, counter));
        }
        // Automerge looks every listed actor up among those it knows, and
        // panics on one it does not; the actors its operations refer to are
        // known, since what they refer to exists.
        let referred: HashSet<&ActorId> = expanded
            .operations
            .iter()
            .flat_map(|op| {
                let obj = match &op.obj {
                    ObjectId::Id(id) => Some(id.actor()),
                    ObjectId::Root => None,
                };
                let element = match &op.key {
                    Key::Seq(ElementId::Id(id)) => Some(id.actor()),
                    _ => None,
                };
                obj.into_iter()
                    .chain(element)
                    .chain(op.pred.iter().map(legacy::OpId::actor))
            })
            .collect();
        if let Some(unused) = change
            .other_actor_ids()
            .iter()
            .find(|a| !referred.contains(a))
        {
            return Err(BadOp {
                change: change.hash(),
                at: format!("actor {unused} in its list of actors"),
                why: Why::ActorUnused,
            });
        }
        canonical(change, expanded)
    }

    fn check_op(&mut self, id: Id, op: &legacy::Op) -> Result<(), Why> {
        match &op.action {
            OpType::Make(ObjType::Map | ObjType::List) | OpType::Delete => {}
            OpType::Put(ScalarValue::Counter(_)) => return Err(Why::Unsupported("a counter")),
            OpType::Put(_) => {}
            OpType::Make(ObjType::Text) => return Err(Why::Unsupported("text")),
            OpType::Make(ObjType::Table) => return Err(Why::Unsupported("a table")),
            OpType::Increment(_) => return Err(Why::Unsupported("an increment")),
            OpType::MarkBegin(_) | OpType::MarkEnd(_) => return Err(Why::Unsupported("a mark")),
        }
        let deletes = matches!(op.action, OpType::Delete);
        let obj = self.obj(&op.obj);
        let is_list = match obj {
            Obj::Root => false,
            Obj::Made(o) => {
                if o.1 >= id.1 {
                    return Err(Why::ObjectNotOlder);
                }
                match self.find(o).and_then(|info| info.makes) {
                    Some(ObjType::List) => true,
                    Some(ObjType::Map) => false,
                    _ => return Err(Why::NoSuchObject),
                }
            }
        };
        let slot = match (&op.key, is_list) {
            (Key::Map(key), false) if !op.insert => Slot::Key(self.key(key)),
            (_, false) => return Err(Why::ElementInMap),
            (Key::Map(_), true) => return Err(Why::KeyInList),
            (Key::Seq(ElementId::Head), true) if op.insert => Slot::Element(id),
            (Key::Seq(ElementId::Head), true) => return Err(Why::HeadUpdated),
            (Key::Seq(ElementId::Id(e)), true) => {
                let e = self.id(e);
                if e.1 >= id.1 {
                    return Err(Why::ElementNotOlder);
                }
                match self.find(e) {
                    Some(info) if info.insert && info.obj == obj => {}
                    _ => return Err(Why::NoSuchElement),
                }
                if op.insert {
                    Slot::Element(id)
                } else {
                    Slot::Element(e)
                }
            }
        };
        if op.insert {
            if deletes {
                return Err(Why::InsertedDelete);
            }
            if !op.pred.is_empty() {
                return Err(Why::InsertOverwrites);
            }
        }
        if deletes && op.pred.is_empty() {
            return Err(Why::DeletesNothing);
        }
        for pred in op.pred.iter() {
            let pred = self.id(pred);
            if pred.1 >= id.1 {
                return Err(Why::OverwritesNewer);
            }
            let Some(info) = self.find(pred) else {
                return Err(Why::OverwritesUnknown);
            };
            if info.obj != obj || info.slot != slot {
                return Err(Why::OverwritesElsewhere);
            }
            if info.deletes {
                return Err(Why::OverwritesDelete);
            }
        }
        let action = match &op.action {
            OpType::Put(value) => Action::Put(value),
            OpType::Make(made) => Action::Make(*made),
            _ => return Ok(()),
        };
        let parent = self.role(obj, 0);
        let key = self.key_name(slot);
        schema::check(parent, key, action).map_err(Why::Value)?;
        let made = matches!(action, Action::Make(_)).then(|| schema::child(parent, key));
        if let Some(role) = made {
            self.index.roles.insert(id, role);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use automerge::legacy::{OpId, SortedVec};
    use automerge::transaction::{CommitOptions, Transactable};

    use crate::model::MIN_TIME_MS;
    use automerge::{Automerge, AutomergeError, ROOT, ReadDoc, ValueRef};
    use proptest::prelude::*;

    use super::*;

    /// The document's own changes as [`Ops`] (a scan: fine for a test).
    struct DocOps<'a>(&'a Automerge);

    impl Ops for DocOps<'_> {
        fn change_with_op(&self, actor: &ActorId, counter: u64) -> Option<Change> {
            self.0.get_changes(&[]).into_iter().find(|c| {
                c.actor_id() == actor
                    && (c.start_op().get()..c.start_op().get() + c.len() as u64).contains(&counter)
            })
        }
    }

    /// Commits at a time the schema accepts.
    fn at() -> CommitOptions {
        CommitOptions::default().with_time(MIN_TIME_MS)
    }

    fn actor(byte: u8) -> ActorId {
        ActorId::from(vec![byte; 32])
    }

    fn opid(id: &automerge::ObjId) -> OpId {
        let text = id.to_string();
        let (counter, actor) = text.split_once('@').expect("counter@actor");
        OpId(
            counter.parse().expect("counter"),
            ActorId::from(hex::decode(actor).expect("hex")),
        )
    }

    /// A document shaped like Concord's: an assessment with a title, a list
    /// of mitigations (one edited, one deleted) and of comments, positions,
    /// and a note; with the ids of its objects, list elements and values.
    struct Base {
        doc: Automerge,
        objects: Vec<OpId>,
        elements: Vec<OpId>,
        values: Vec<OpId>,
    }

    fn base() -> Base {
        let mut doc = Automerge::new().with_actor(actor(0xaa));
        doc.transact_with::<_, _, AutomergeError, _>(
            |_| at(),
            |tx| {
                let a = tx.put_object(ROOT, "a/x", ObjType::Map)?;
                tx.put(&a, "title", "T")?;
                let list = tx.put_object(&a, "mitigations", ObjType::List)?;
                for (i, s) in ["one", "two", "three"].into_iter().enumerate() {
                    tx.insert(&list, i, s)?;
                }
                let comments = tx.put_object(&a, "comments", ObjType::List)?;
                let comment = tx.insert_object(&comments, 0, ObjType::Map)?;
                tx.put(&comment, "text", "hi")?;
                // Fields no version writes yet, which the schema leaves open.
                let later = tx.put_object(&a, "later", ObjType::Map)?;
                tx.put(&later, "k", 1)?;
                tx.put(ROOT, "z/y", "s")?;
                Ok(())
            },
        )
        .expect("first change");
        doc.transact_with::<_, _, AutomergeError, _>(
            |_| at(),
            |tx| {
                let (_, a) = tx.get(ROOT, "a/x")?.expect("assessment");
                tx.put(&a, "title", "T2")?;
                let (_, list) = tx.get(&a, "mitigations")?.expect("list");
                tx.delete(&list, 1)?;
                tx.put(&list, 0, "uno")?;
                Ok(())
            },
        )
        .expect("second change");
        let mut base = Base {
            doc,
            objects: Vec::new(),
            elements: Vec::new(),
            values: Vec::new(),
        };
        let root = ROOT;
        base.walk(&root);
        base
    }

    impl Base {
        fn walk(&mut self, obj: &automerge::ObjId) {
            let items: Vec<(automerge::ObjId, bool)> = match self.doc.object_type(obj) {
                Ok(ObjType::List) => self
                    .doc
                    .list_range(obj, ..)
                    .map(|i| (i.id(), matches!(i.value, ValueRef::Object(_))))
                    .collect(),
                _ => self
                    .doc
                    .map_range(obj, ..)
                    .map(|i| (i.id(), matches!(i.value, ValueRef::Object(_))))
                    .collect(),
            };
            let in_list = matches!(self.doc.object_type(obj), Ok(ObjType::List));
            for (id, is_object) in items {
                if in_list {
                    self.elements.push(opid(&id));
                }
                if is_object {
                    self.objects.push(opid(&id));
                    self.walk(&id);
                } else {
                    self.values.push(opid(&id));
                }
            }
        }
    }

    /// One of four edits Concord makes, by `who`, on top of `doc`.
    fn honest(doc: &Automerge, variant: u8, who: u8) -> Change {
        let mut fork = doc.fork().with_actor(actor(who));
        fork.transact_with::<_, _, AutomergeError, _>(
            |_| at(),
            |tx| {
                let (_, a) = tx.get(ROOT, "a/x")?.expect("assessment");
                let (_, list) = tx.get(&a, "mitigations")?.expect("list");
                let (_, comments) = tx.get(&a, "comments")?.expect("comments");
                match variant % 4 {
                    0 => {
                        tx.put(&a, "title", "B")?;
                        tx.insert(&list, 1, "b")?;
                    }
                    1 => {
                        let comment = tx.insert_object(&comments, 1, ObjType::Map)?;
                        tx.put(&comment, "text", "x")?;
                        tx.put(&comment, "at", ScalarValue::Timestamp(MIN_TIME_MS + 5))?;
                    }
                    2 => {
                        let note = tx.put_object(ROOT, "n/z", ObjType::Map)?;
                        let refs = tx.put_object(&note, "assessments", ObjType::List)?;
                        tx.insert(&refs, 0, "x")?;
                        tx.put(&note, "topic", "u")?;
                    }
                    _ => {
                        tx.delete(&list, 0)?;
                        tx.put(&a, "zzz", "y")?;
                        tx.delete(&a, "title")?;
                    }
                }
                Ok(())
            },
        )
        .expect("honest change");
        fork.get_last_local_change().expect("a change")
    }

    /// What a hand-built change may change in one operation.
    #[derive(Debug, Clone)]
    struct Mutation {
        op: u8,
        field: u8,
        choice: u8,
        pick: u16,
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        (any::<u8>(), 0..5u8, any::<u8>(), any::<u16>()).prop_map(|(op, field, choice, pick)| {
            Mutation {
                op,
                field,
                choice,
                pick,
            }
        })
    }

    /// Applies `mutations` to `change`, drawing ids from the base document,
    /// the change itself and `concurrent` (another author's change).
    fn mutate(base: &Base, change: &Change, concurrent: &Change, mutations: &[Mutation]) -> Change {
        let mut expanded = change.decode();
        let ids = |c: &Change| -> Vec<OpId> {
            (0..c.len() as u64)
                .map(|i| OpId(c.start_op().get() + i, c.actor_id().clone()))
                .collect()
        };
        let own = ids(change);
        let other = ids(concurrent);
        let unknown = OpId(999, actor(0xdd));
        for m in mutations {
            let pick = |pool: &[OpId]| pool[usize::from(m.pick) % pool.len()].clone();
            let fresh = |c: u8| {
                if c.is_multiple_of(2) {
                    pick(&own)
                } else {
                    pick(&other)
                }
            };
            let i = usize::from(m.op) % expanded.operations.len();
            let op = &mut expanded.operations[i];
            match m.field {
                0 => {
                    op.obj = match m.choice % 5 {
                        0 => ObjectId::Root,
                        1 => ObjectId::Id(pick(&base.objects)),
                        2 => ObjectId::Id(pick(&base.values)),
                        3 => ObjectId::Id(fresh(m.choice / 5)),
                        _ => ObjectId::Id(unknown.clone()),
                    }
                }
                1 => {
                    op.key = match m.choice % 6 {
                        0 => Key::Map("title".into()),
                        1 => Key::Map("q".into()),
                        2 => Key::Seq(ElementId::Head),
                        3 => Key::Seq(ElementId::Id(pick(&base.elements))),
                        4 => Key::Seq(ElementId::Id(fresh(m.choice / 6))),
                        _ => Key::Seq(ElementId::Id(unknown.clone())),
                    }
                }
                2 => op.insert = !op.insert,
                3 => {
                    let preds = (0..m.choice % 3)
                        .map(|n| match (m.choice / 3 + n) % 4 {
                            0 => pick(&base.values),
                            1 => pick(&base.elements),
                            2 => fresh(m.choice / 12 + n),
                            _ => unknown.clone(),
                        })
                        .collect::<Vec<_>>();
                    op.pred = SortedVec::from(preds);
                }
                _ => {
                    op.action = match m.choice % 6 {
                        0 => OpType::Put(ScalarValue::Str("v".into())),
                        1 => OpType::Delete,
                        2 => OpType::Make(ObjType::Map),
                        3 => OpType::Make(ObjType::List),
                        4 => OpType::Make(ObjType::Text),
                        _ => OpType::Increment(1),
                    }
                }
            }
        }
        expanded.into()
    }

    fn applied(doc: &Automerge, batches: &[Vec<Change>]) -> Result<Automerge, String> {
        let mut doc = doc.fork();
        for batch in batches {
            catch_unwind(AssertUnwindSafe(|| doc.apply_changes(batch.clone())))
                .map_err(|_| "Automerge panicked".to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok(doc)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn honest_changes_pass(first in 0..4u8, second in 0..4u8) {
            let base = base();
            let a = honest(&base.doc, first, 0xbb);
            let b = honest(&base.doc, second, 0xcc);
            prop_assert_eq!(check(&[&a, &b], &DocOps(&base.doc)), Ok(()));
            let with_a = applied(&base.doc, &[vec![a]]).expect("applies");
            prop_assert_eq!(check(&[&b], &DocOps(&with_a)), Ok(()));
        }
    }

    proptest! {
        // Each case applies a batch and saves and loads the result, in a
        // build with Automerge's debug assertions (its own op-order check).
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whatever hand-built change the check lets through is one
        /// Automerge handles: it applies without a panic, the document
        /// saves and loads into the same state, and the state does not
        /// depend on whether a concurrent change came in the same batch.
        #[test]
        fn what_passes_applies_cleanly_and_converges(
            variant in 0..4u8,
            other in 0..4u8,
            mutations in proptest::collection::vec(mutation(), 1..4),
        ) {
            let base = base();
            let concurrent = honest(&base.doc, other, 0xcc);
            let change = mutate(&base, &honest(&base.doc, variant, 0xbb), &concurrent, &mutations);
            let with_concurrent = applied(&base.doc, &[vec![concurrent.clone()]]).expect("honest");
            if check(&[&change], &DocOps(&with_concurrent)).is_err() {
                return Ok(());
            }
            prop_assert_eq!(check(&[&concurrent, &change], &DocOps(&base.doc)), Ok(()));
            let together = applied(&base.doc, &[vec![concurrent.clone(), change.clone()]]);
            let together = together.map_err(|e| TestCaseError::fail(format!("{e}: {change:?}")))?;
            let apart = applied(&base.doc, &[vec![concurrent], vec![change.clone()]])
                .map_err(TestCaseError::fail)?;
            prop_assert_eq!(together.hydrate(None), apart.hydrate(None));
            let loaded = catch_unwind(AssertUnwindSafe(|| Automerge::load(&together.save())))
                .map_err(|_| TestCaseError::fail("load panicked"))?
                .map_err(|e| TestCaseError::fail(format!("load: {e}")))?;
            prop_assert_eq!(loaded.hydrate(None), together.hydrate(None));
        }
    }

    /// One operation of `change` replaced by `f`'s version of it.
    fn with_op(change: &Change, index: usize, f: impl FnOnce(&mut legacy::Op)) -> Change {
        let mut expanded = change.decode();
        f(&mut expanded.operations[index]);
        expanded.into()
    }

    fn why(base: &Base, change: &Change) -> Option<Why> {
        check(&[change], &DocOps(&base.doc))
            .err()
            .map(|bad| bad.why)
    }

    #[test]
    fn each_rule_names_what_was_wrong() {
        let base = base();
        // variant 2: make note map; make list in it; insert into the list;
        // put a topic on the note.
        let note = honest(&base.doc, 2, 0xbb);
        let start = note.start_op().get();
        let own = |i: u64| OpId(start + i, actor(0xbb));
        assert_eq!(why(&base, &note), None);

        // The fuzz finding's shape: an insert into the note map.
        let insert_in_map = with_op(&note, 2, |op| op.obj = ObjectId::Id(own(0)));
        assert_eq!(why(&base, &insert_in_map), Some(Why::ElementInMap));
        let key_in_list = with_op(&note, 3, |op| op.obj = ObjectId::Id(own(1)));
        assert_eq!(why(&base, &key_in_list), Some(Why::KeyInList));
        let no_object = with_op(&note, 3, |op| op.obj = ObjectId::Id(OpId(3, actor(0xdd))));
        assert_eq!(why(&base, &no_object), Some(Why::NoSuchObject));
        let value_as_object = with_op(&note, 3, |op| op.obj = ObjectId::Id(base.values[0].clone()));
        assert_eq!(why(&base, &value_as_object), Some(Why::NoSuchObject));
        let newer_object = with_op(&note, 1, |op| op.obj = ObjectId::Id(own(3)));
        assert_eq!(why(&base, &newer_object), Some(Why::ObjectNotOlder));
        let head_update = with_op(&note, 2, |op| op.insert = false);
        assert_eq!(why(&base, &head_update), Some(Why::HeadUpdated));
        let foreign_element = with_op(&note, 2, |op| {
            op.key = Key::Seq(ElementId::Id(base.elements[0].clone()))
        });
        assert_eq!(why(&base, &foreign_element), Some(Why::NoSuchElement));
        let inserted_delete = with_op(&note, 2, |op| op.action = OpType::Delete);
        assert_eq!(why(&base, &inserted_delete), Some(Why::InsertedDelete));
        let insert_overwrites = with_op(&note, 2, |op| {
            op.pred = SortedVec::from(vec![base.values[0].clone()])
        });
        assert_eq!(why(&base, &insert_overwrites), Some(Why::InsertOverwrites));
        let deletes_nothing = with_op(&note, 3, |op| op.action = OpType::Delete);
        assert_eq!(why(&base, &deletes_nothing), Some(Why::DeletesNothing));
        let text = with_op(&note, 1, |op| op.action = OpType::Make(ObjType::Text));
        assert_eq!(why(&base, &text), Some(Why::Unsupported("text")));
        let counter = with_op(&note, 3, |op| op.action = OpType::Increment(2));
        assert_eq!(why(&base, &counter), Some(Why::Unsupported("an increment")));

        // variant 0: overwrite the title; insert after mitigation 1.
        let title = honest(&base.doc, 0, 0xbb);
        assert_eq!(why(&base, &title), None);
        let title_id = title.start_op().get();
        let newer_pred = with_op(&title, 0, |op| {
            op.pred = SortedVec::from(vec![OpId(title_id + 1, actor(0xbb))])
        });
        assert_eq!(why(&base, &newer_pred), Some(Why::OverwritesNewer));
        let unknown_pred = with_op(&title, 0, |op| {
            op.pred = SortedVec::from(vec![OpId(2, actor(0xdd))])
        });
        assert_eq!(why(&base, &unknown_pred), Some(Why::OverwritesUnknown));
        let pred_elsewhere = with_op(&title, 0, |op| op.key = Key::Map("summary".into()));
        assert_eq!(why(&base, &pred_elsewhere), Some(Why::OverwritesElsewhere));
    }

    /// Concord's own changes, large ones too (Automerge compresses the
    /// columns of a big change), encode back to themselves; a change in
    /// an encoding Automerge never writes is refused.
    #[test]
    fn only_changes_in_automerges_own_encoding_pass() {
        let mut doc =
            crate::doc::Document::new(crate::identity::Identity::from_secret([5; 32]).public());
        let new = crate::doc::NewAssessment {
            category: "algorithmic-bias".into(),
            title: "t".into(),
            summary: "s".repeat(20_000),
            likelihood: None,
            severity: None,
            mitigations: (0..200).map(|i| format!("mitigation {i}")).collect(),
            status: crate::model::Status::Open,
        };
        let big = doc
            .add_assessment("ra-big", &new, MIN_TIME_MS)
            .expect("write");
        assert!(big.raw_bytes().len() > 20_000);
        assert_eq!(check(&[&big], &()), Ok(()));
        let reencoded: Change = big.decode().into();
        assert_eq!(reencoded.hash(), big.hash());
    }

    /// From the hostile review: a change nesting maps 100,000 deep under
    /// a field no version writes passed the check, and walking the
    /// document (the canonical state every page hashes) overflowed the
    /// stack: an abort no `catch_unwind` catches. Objects are made only
    /// where Concord's layout has them, so nesting is bounded.
    #[test]
    fn objects_under_fields_concord_does_not_know_are_refused() {
        let base = base();
        for (parent, key) in [("", "z"), ("a/x", "later2"), ("a/x", "title")] {
            let mut fork = base.doc.fork().with_actor(actor(0xbb));
            fork.transact_with::<_, _, AutomergeError, _>(
                |_| at(),
                |tx| {
                    let mut obj = match parent {
                        "" => automerge::ROOT,
                        item => tx.get(ROOT, item)?.expect("item").1,
                    };
                    for _ in 0..50 {
                        obj = tx.put_object(&obj, key, ObjType::Map)?;
                    }
                    Ok(())
                },
            )
            .expect("nest");
            let nested = fork.get_last_local_change().expect("a change");
            let err = check(&[&nested], &DocOps(&base.doc)).expect_err("refused");
            assert!(matches!(err.why, Why::Value(_)), "{key}: {err}");
            assert!(err.at.starts_with("operation 0 "), "{key}: {err}");
        }
    }

    #[test]
    fn a_bad_operation_is_named_with_its_change_and_id() {
        let base = base();
        let note = honest(&base.doc, 2, 0xbb);
        let start = note.start_op().get();
        let bad = with_op(&note, 2, |op| {
            op.obj = ObjectId::Id(OpId(start, actor(0xbb)))
        });
        let err = check(&[&bad], &DocOps(&base.doc)).expect_err("refused");
        assert_eq!(err.change, bad.hash());
        assert_eq!(
            err.to_string(),
            format!(
                "operation 2 ({}@{}) addresses a map by list element",
                start + 2,
                actor(0xbb)
            )
        );
    }

    /// The change by the author of `first` that, after it, puts `value`
    /// at `key` of the root's `item`.
    fn then_put(doc: &Automerge, first: &Change, item: &str, key: &str, value: &str) -> Change {
        let mut fork = doc.fork().with_actor(first.actor_id().clone());
        fork.apply_changes(vec![first.clone()]).expect("applies");
        fork.transact_with::<_, _, AutomergeError, _>(
            |_| at(),
            |tx| {
                let (_, obj) = tx.get(ROOT, item)?.expect("the item");
                tx.put(&obj, key, value)?;
                Ok(())
            },
        )
        .expect("the change after");
        fork.get_last_local_change().expect("a change")
    }

    #[test]
    fn a_batch_refers_only_to_what_comes_before() {
        let base = base();
        let first = honest(&base.doc, 2, 0xbb);
        let second = then_put(&base.doc, &first, "n/z", "topic", "again");
        assert_eq!(check(&[&first, &second], &DocOps(&base.doc)), Ok(()));
        for batch in [vec![&second, &first], vec![&second]] {
            let err = check(&batch, &DocOps(&base.doc)).expect_err("the note comes later");
            assert_eq!((err.change, err.why), (second.hash(), Why::NoSuchObject));
        }
        let with_first = applied(&base.doc, &[vec![first]]).expect("applies");
        assert_eq!(check(&[&second], &DocOps(&with_first)), Ok(()));
    }

    #[test]
    fn an_index_keeps_a_batch_only_once_told_it_is_stored() {
        let base = base();
        // Overwrites the base's title and inserts after its first mitigation.
        let first = honest(&base.doc, 0, 0xbb);
        // Overwrites the first's title, on the base's assessment.
        let second = then_put(&base.doc, &first, "a/x", "title", "C");
        let mut index = OpIndex::default();
        index.check(&[&first], &DocOps(&base.doc)).expect("first");
        let indexed = index.len();
        assert!(indexed > first.len(), "the base's operations were fetched");

        // Not kept: the next check forgets the first batch's operations,
        // but the base's, fetched from the document, stay.
        let err = index
            .check(&[&second], &())
            .expect_err("the first is forgotten");
        assert_eq!(err.why, Why::OverwritesUnknown);
        assert_eq!(index.len(), indexed - first.len());

        // Kept: a later batch finds them without any store.
        index
            .check(&[&first], &DocOps(&base.doc))
            .expect("first again");
        index.keep();
        index
            .check(&[&second], &())
            .expect("second, from the index");

        // Cleared (the document was rebuilt): nothing is found.
        index.clear();
        assert!(index.is_empty());
        let err = index.check(&[&second], &()).expect_err("nothing indexed");
        assert_eq!(err.why, Why::NoSuchObject);
    }

    /// `change` re-encoded with `extra` appended to its list of other
    /// actors (which Automerge's own encoder never does: it lists the actors
    /// the operations refer to).
    fn with_extra_actor(change: &Change, extra: &ActorId) -> Change {
        use sha2::{Digest, Sha256};
        let raw = change.raw_bytes();
        let mut rest = &raw[9..];
        leb128::read::unsigned(&mut rest).expect("length");
        let data = rest;
        let mut cur = data;
        let skip = |cur: &mut &[u8]| {
            let n = leb128::read::unsigned(cur).expect("a length") as usize;
            *cur = &cur[n..];
        };
        let deps = leb128::read::unsigned(&mut cur).expect("deps") as usize;
        cur = &cur[32 * deps..];
        skip(&mut cur); // actor
        leb128::read::unsigned(&mut cur).expect("seq");
        leb128::read::unsigned(&mut cur).expect("start op");
        leb128::read::signed(&mut cur).expect("time");
        skip(&mut cur); // message
        let head = data.len() - cur.len();
        let others = leb128::read::unsigned(&mut cur).expect("actor count");
        let listed = cur;
        for _ in 0..others {
            skip(&mut cur);
        }
        let listed = &listed[..listed.len() - cur.len()];
        let mut body = data[..head].to_vec();
        leb128::write::unsigned(&mut body, others + 1).expect("write");
        body.extend_from_slice(listed);
        leb128::write::unsigned(&mut body, extra.to_bytes().len() as u64).expect("write");
        body.extend_from_slice(extra.to_bytes());
        body.extend_from_slice(cur);
        let mut len = Vec::new();
        leb128::write::unsigned(&mut len, body.len() as u64).expect("write");
        let hash = Sha256::new()
            .chain_update([1u8])
            .chain_update(&len)
            .chain_update(&body)
            .finalize();
        let mut chunk = raw[..4].to_vec();
        chunk.extend_from_slice(&hash[..4]);
        chunk.push(1);
        chunk.extend_from_slice(&len);
        chunk.extend_from_slice(&body);
        Change::from_bytes(chunk).expect("still a change")
    }

    #[test]
    fn an_actor_no_operation_refers_to_is_refused() {
        let base = base();
        let change = honest(&base.doc, 0, 0xbb);
        let stranger = actor(0xee);
        let listed = with_extra_actor(&change, &stranger);
        assert_eq!(listed.other_actor_ids().last(), Some(&stranger));
        // Automerge, given it, looks the stranger up and panics.
        assert_eq!(
            applied(&base.doc, &[vec![listed.clone()]]).err().as_deref(),
            Some("Automerge panicked")
        );
        let err = check(&[&listed], &DocOps(&base.doc)).expect_err("refused");
        assert_eq!(err.why, Why::ActorUnused);
        assert_eq!(
            err.to_string(),
            format!(
                "actor {stranger} in its list of actors is referred to by none of its operations"
            )
        );
    }
}

/// Hostile-review tests (review of 3dfaace..5bcf304); see the commit
/// message for the finding each shows.
#[cfg(test)]
mod review {
    use std::num::NonZeroU64;

    use automerge::legacy::{self, ElementId, Key, ObjectId, OpType, SortedVec};
    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::{
        ActorId, Automerge, AutomergeError, Change, ObjType, ROOT, ReadDoc, ScalarValue,
    };

    use crate::model::MIN_TIME_MS;

    fn at() -> CommitOptions {
        CommitOptions::default().with_time(MIN_TIME_MS)
    }

    /// `after`'s author signs a change numbered `seq` on `after` whose ops
    /// start at `start_op`.
    fn forged(after: &Change, seq: u64, start_op: u64, ops: Vec<legacy::Op>) -> Change {
        let mut e = after.decode();
        e.seq = seq;
        e.deps = vec![after.hash()];
        e.start_op = NonZeroU64::new(start_op).expect("non-zero");
        e.message = None;
        e.hash = None;
        e.operations = ops;
        e.into()
    }

    fn op(action: OpType, obj: ObjectId, key: &str) -> legacy::Op {
        legacy::Op {
            action,
            obj,
            key: Key::Map(key.into()),
            pred: SortedVec::new(),
            insert: false,
        }
    }

    /// Finding D (critical): nothing checks that a change's operation ids
    /// are new. Its author signs change 2 with `start_op` 1, so its op
    /// 1@author is a second op with the id of change 1's `a/x` map. The
    /// index (`add_op`) and the role cache simply overwrite the entry for
    /// that id, so object 1@author now has the role of a map at unknown
    /// root key `z` (`Role::Unknown`), and change 3's puts into it (a
    /// `title` of -7, a `status` of "bogus") are checked as free fields:
    /// the schema is bypassed for any object the author ever made. Automerge
    /// applies all three; then `get_changes` panics (`collector.rs:299`,
    /// so `history` panics on every node), and `save` writes a document
    /// that does not load (`InvalidMaxOp`: every snapshot is refused and
    /// every restart replays the whole store).
    #[test]
    fn a_change_reusing_its_authors_operation_ids_is_refused() {
        let a = ActorId::from(vec![0xaa; 32]);
        let mut doc = Automerge::new().with_actor(a.clone());
        doc.transact_with::<_, _, AutomergeError, _>(
            |_| at(),
            |tx| {
                let x = tx.put_object(ROOT, "a/x", ObjType::Map)?;
                tx.put(&x, "title", "T")?;
                Ok(())
            },
        )
        .expect("c1");
        let c1 = doc.get_last_local_change().expect("c1");
        let c2 = forged(
            &c1,
            2,
            1,
            vec![op(OpType::Make(ObjType::Map), ObjectId::Root, "z")],
        );
        let obj = ObjectId::Id(legacy::OpId(1, a.clone()));
        let c3 = forged(
            &c2,
            3,
            3,
            vec![
                op(OpType::Put(ScalarValue::Int(-7)), obj.clone(), "title"),
                op(OpType::Put(ScalarValue::Str("bogus".into())), obj, "status"),
            ],
        );
        // What follows when the check lets them in.
        let mut applied = Automerge::new();
        applied
            .apply_changes(vec![c1.clone(), c2.clone(), c3.clone()])
            .expect("Automerge applies them");
        let (_, x) = applied.get(ROOT, "a/x").expect("get").expect("a/x");
        let title = applied
            .get(&x, "title")
            .expect("get")
            .map(|(v, _)| v.to_string());
        let loads = Automerge::load(&applied.save())
            .map(|_| ())
            .map_err(|e| e.to_string());
        let changes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            applied.get_changes(&[]).len()
        }))
        .map_err(|_| "panics");
        let _ = ElementId::Head;
        let checked = super::check(&[&c1, &c2, &c3], &());
        assert!(
            checked.is_err(),
            "the check accepts a change reusing op ids; then a/x's title is {title:?}, \
             the saved document loads: {loads:?}, get_changes: {changes:?}"
        );
    }
}
