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
        format!("actor {stranger} in its list of actors is referred to by none of its operations")
    );
}
