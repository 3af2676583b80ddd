//! Hostile-review tests (review of 3dfaace..5bcf304); see the commit
//! message for the finding each shows.

use std::num::NonZeroU64;

use automerge::legacy::{self, ElementId, Key, ObjectId, OpType, SortedVec};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, AutomergeError, Change, ObjType, ROOT, ReadDoc, ScalarValue};

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
