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
mod tests;

#[cfg(test)]
mod review;
