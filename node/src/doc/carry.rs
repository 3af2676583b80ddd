//! Carrying a write over: making, under this node's current key, a new
//! change with the effect of an old change of its own that no longer counts
//! (it was built on a change that a proven fork or a removal took out of the
//! document). Automerge refuses a second change with a used sequence number
//! and an author's chain has no gaps, so the old change cannot be signed
//! again: its operations are replayed instead, in one new change each.
//!
//! An operation is replayed on the object it addressed when that object is
//! still in the document, or on the object an earlier replayed operation
//! made in its place; an operation on an object that is gone (made by a
//! change that no longer counts) cannot be carried and is counted as left
//! behind. List insertions go after the element they followed when it is
//! still there, else at the end.

use std::collections::HashMap;

use automerge::legacy::{self, ElementId, Key, ObjectId, OpType};
use automerge::transaction::Transactable;
use automerge::{AutomergeError, Change, ExpandedChange, ObjId, ROOT, ReadDoc};

use super::{DocError, Document};

/// Objects and list elements made by replayed operations, by the id of the
/// operation they replace.
#[derive(Debug, Default)]
pub struct Carried {
    ids: HashMap<(u64, Vec<u8>), ObjId>,
    /// Operations replayed, over every change carried.
    pub replayed: usize,
    /// Operations that addressed an object no longer in the document.
    pub left_behind: usize,
}

impl Carried {
    fn key(id: &legacy::OpId) -> (u64, Vec<u8>) {
        (id.counter(), id.actor().to_bytes().to_vec())
    }
}

impl Document {
    /// Replays `old`'s operations as one new change by this document's
    /// actor, committed at `now_ms` with `old`'s message. `None` when none of
    /// its operations could be carried.
    pub fn carry(
        &mut self,
        old: &Change,
        carried: &mut Carried,
        now_ms: i64,
    ) -> Result<Option<Change>, DocError> {
        let expanded: ExpandedChange = old.decode();
        let message = expanded
            .message
            .clone()
            .unwrap_or_else(|| "carried over".to_string());
        let start = expanded.start_op.get();
        let actor = expanded.actor_id.clone();
        let mut replayed = 0;
        let result = self.commit(now_ms, &message, |tx| {
            for (i, op) in expanded.operations.iter().enumerate() {
                let id = legacy::OpId(start + i as u64, actor.clone());
                if replay(tx, op, &id, carried)? {
                    replayed += 1;
                } else {
                    carried.left_behind += 1;
                }
            }
            Ok(())
        });
        match result {
            Ok(change) => {
                carried.replayed += replayed;
                Ok(Some(change))
            }
            Err(DocError::NothingToChange) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The object an operation addressed, as it is now: the replayed one, or
/// the original if it is still in the document.
fn object<T: Transactable + ReadDoc>(tx: &T, obj: &ObjectId, carried: &Carried) -> Option<ObjId> {
    match obj {
        ObjectId::Root => Some(ROOT),
        ObjectId::Id(id) => carried.ids.get(&Carried::key(id)).cloned().or_else(|| {
            let exid = original(id);
            tx.object_type(&exid).ok().map(|_| exid)
        }),
    }
}

/// The id an operation has in the document (the actor's index is only a
/// hint; Automerge looks the actor up when it does not match).
fn original(id: &legacy::OpId) -> ObjId {
    ObjId::Id(id.counter(), id.actor().clone(), usize::MAX)
}

/// Where list element `elem` is now, by the id of the element or of the
/// one replayed in its place.
fn index_of<T: Transactable + ReadDoc>(
    tx: &T,
    list: &ObjId,
    elem: &legacy::OpId,
    carried: &Carried,
) -> Option<usize> {
    let wanted = carried
        .ids
        .get(&Carried::key(elem))
        .cloned()
        .unwrap_or_else(|| original(elem));
    tx.list_range(list, ..)
        .find(|item| item.id() == wanted)
        .map(|item| item.index)
}

/// Replays one operation; `false` when its object is gone.
fn replay<T: Transactable + ReadDoc>(
    tx: &mut T,
    op: &legacy::Op,
    id: &legacy::OpId,
    carried: &mut Carried,
) -> Result<bool, AutomergeError> {
    let Some(obj) = object(tx, &op.obj, carried) else {
        return Ok(false);
    };
    match (&op.key, op.insert) {
        (Key::Map(key), _) => match &op.action {
            OpType::Make(kind) => {
                let made = tx.put_object(&obj, key.as_str(), *kind)?;
                carried.ids.insert(Carried::key(id), made);
            }
            OpType::Put(value) => tx.put(&obj, key.as_str(), value.clone())?,
            OpType::Delete => {
                if tx.get(&obj, key.as_str())?.is_some() {
                    tx.delete(&obj, key.as_str())?;
                }
            }
            // Concord writes no counters or marks (the operation check
            // refuses them), so an old change of its own holds none.
            _ => return Ok(false),
        },
        (Key::Seq(after), true) => {
            let at = match after {
                ElementId::Head => 0,
                ElementId::Id(elem) => {
                    index_of(tx, &obj, elem, carried).map_or_else(|| tx.length(&obj), |i| i + 1)
                }
            };
            match &op.action {
                OpType::Make(kind) => {
                    let made = tx.insert_object(&obj, at, *kind)?;
                    carried.ids.insert(Carried::key(id), made);
                }
                OpType::Put(value) => {
                    tx.insert(&obj, at, value.clone())?;
                    if let Some(item) = tx.list_range(&obj, at..=at).next() {
                        carried.ids.insert(Carried::key(id), item.id());
                    }
                }
                _ => return Ok(false),
            }
        }
        (Key::Seq(ElementId::Id(elem)), false) => {
            let Some(at) = index_of(tx, &obj, elem, carried) else {
                return Ok(false);
            };
            match &op.action {
                OpType::Put(value) => tx.put(&obj, at, value.clone())?,
                OpType::Make(kind) => {
                    let made = tx.put_object(&obj, at, *kind)?;
                    carried.ids.insert(Carried::key(id), made);
                }
                OpType::Delete => tx.delete(&obj, at)?,
                _ => return Ok(false),
            }
        }
        (Key::Seq(ElementId::Head), false) => return Ok(false),
    }
    Ok(true)
}
