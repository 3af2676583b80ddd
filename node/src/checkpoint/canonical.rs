//! The canonical state: one byte string for the document's state, the same
//! on every node that holds the same changes, and its SHA-256 hash, which
//! checkpoints sign. Specified byte for byte in `docs/protocol.md`.
//!
//! It covers every root key except the checkpoints themselves (`k/`), so
//! adding a signature to a checkpoint does not change the state it attests.
//! Every value is written with its author (the actor id of the op that set
//! it) and every concurrent value of a field is kept, in Automerge's order
//! (the winner last): everything Concord's readers look at is covered. No IO.

use automerge::{
    Automerge, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef,
};
use sha2::{Digest, Sha256};

use super::CHECKPOINT_PREFIX;

/// The first bytes of the canonical state (17 bytes).
pub const STATE_TAG: &[u8] = b"concord-state-v1\0";

/// Where canonical bytes go: a buffer, or straight into a hasher.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

/// The canonical state of the document as it is now.
pub fn canonical_state(doc: &Automerge) -> Vec<u8> {
    let mut out = Vec::new();
    encode(doc, &mut out);
    out
}

/// SHA-256 of [`canonical_state`], computed without holding the bytes.
pub fn state_hash(doc: &Automerge) -> [u8; 32] {
    let mut hasher = Sha256::new();
    encode(doc, &mut hasher);
    hasher.finalize().into()
}

fn encode(doc: &Automerge, out: &mut impl Sink) {
    out.put(STATE_TAG);
    map(doc, &ROOT, true, out);
}

fn len(out: &mut impl Sink, n: usize) {
    out.put(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn bytes(out: &mut impl Sink, b: &[u8]) {
    len(out, b.len());
    out.put(b);
}

fn map(doc: &Automerge, obj: &ObjId, root: bool, out: &mut impl Sink) {
    // One pass over the map yields each key's visible value; only keys with
    // concurrent values (or counters) need the slower full lookup.
    let mut items: Vec<_> = doc
        .map_range(obj, ..)
        .filter(|item| !(root && item.key.starts_with(CHECKPOINT_PREFIX)))
        .collect();
    items.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
    out.put(b"M");
    len(out, items.len());
    for item in items {
        bytes(out, item.key.as_bytes());
        if item.conflict || is_counter(&item.value) {
            let all = doc.get_all(obj, item.key.as_ref()).unwrap_or_default();
            values(doc, &all, out);
        } else {
            len(out, 1);
            one(doc, &item.value, &item.id(), out);
        }
    }
}

fn list(doc: &Automerge, obj: &ObjId, out: &mut impl Sink) {
    let items: Vec<_> = doc.list_range(obj, ..).collect();
    out.put(b"L");
    len(out, items.len());
    for item in items {
        if item.conflict || is_counter(&item.value) {
            let all = doc.get_all(obj, item.index).unwrap_or_default();
            values(doc, &all, out);
        } else {
            len(out, 1);
            one(doc, &item.value, &item.id(), out);
        }
    }
}

fn is_counter(value: &ValueRef<'_>) -> bool {
    matches!(value, ValueRef::Scalar(ScalarValueRef::Counter(_)))
}

fn author(out: &mut impl Sink, id: &ObjId) {
    match id {
        ObjId::Id(_, actor, _) => bytes(out, actor.to_bytes()),
        ObjId::Root => bytes(out, &[]),
    }
}

fn object(doc: &Automerge, kind: ObjType, id: &ObjId, out: &mut impl Sink) {
    match kind {
        ObjType::Map | ObjType::Table => map(doc, id, false, out),
        ObjType::List => list(doc, id, out),
        ObjType::Text => {
            out.put(b"T");
            bytes(out, doc.text(id).unwrap_or_default().as_bytes());
        }
    }
}

/// The only value of a field (no concurrent ones), from a range item.
fn one(doc: &Automerge, value: &ValueRef<'_>, id: &ObjId, out: &mut impl Sink) {
    author(out, id);
    match value {
        ValueRef::Object(kind) => object(doc, *kind, id, out),
        ValueRef::Scalar(s) => match s {
            ScalarValueRef::Str(s) => {
                out.put(b"s");
                bytes(out, s.as_bytes());
            }
            ScalarValueRef::Int(n) => {
                out.put(b"i");
                out.put(&n.to_be_bytes());
            }
            ScalarValueRef::Uint(n) => {
                out.put(b"u");
                out.put(&n.to_be_bytes());
            }
            ScalarValueRef::F64(f) => {
                out.put(b"f");
                out.put(&f.to_bits().to_be_bytes());
            }
            ScalarValueRef::Timestamp(t) => {
                out.put(b"t");
                out.put(&t.to_be_bytes());
            }
            ScalarValueRef::Boolean(b) => {
                out.put(b"b");
                out.put(&[u8::from(*b)]);
            }
            ScalarValueRef::Bytes(b) => {
                out.put(b"y");
                bytes(out, b);
            }
            ScalarValueRef::Null => out.put(b"n"),
            ScalarValueRef::Unknown {
                type_code,
                bytes: b,
            } => {
                out.put(b"x");
                out.put(&[*type_code]);
                bytes(out, b);
            }
            // Counters take the full lookup (their current value); see `map`.
            ScalarValueRef::Counter(c) => {
                out.put(b"c");
                out.put(&c.to_be_bytes());
            }
        },
    }
}

/// Every concurrent value of a field, in Automerge's order.
fn values(doc: &Automerge, all: &[(Value<'_>, ObjId)], out: &mut impl Sink) {
    len(out, all.len());
    for (value, id) in all {
        author(out, id);
        match value {
            Value::Object(kind) => object(doc, *kind, id, out),
            Value::Scalar(s) => scalar(s, out),
        }
    }
}

fn scalar(value: &ScalarValue, out: &mut impl Sink) {
    match value {
        ScalarValue::Str(s) => {
            out.put(b"s");
            bytes(out, s.as_bytes());
        }
        ScalarValue::Int(n) => {
            out.put(b"i");
            out.put(&n.to_be_bytes());
        }
        ScalarValue::Uint(n) => {
            out.put(b"u");
            out.put(&n.to_be_bytes());
        }
        ScalarValue::F64(f) => {
            out.put(b"f");
            out.put(&f.to_bits().to_be_bytes());
        }
        ScalarValue::Counter(c) => {
            out.put(b"c");
            out.put(&i64::from(c).to_be_bytes());
        }
        ScalarValue::Timestamp(t) => {
            out.put(b"t");
            out.put(&t.to_be_bytes());
        }
        ScalarValue::Boolean(b) => {
            out.put(b"b");
            out.put(&[u8::from(*b)]);
        }
        ScalarValue::Bytes(b) => {
            out.put(b"y");
            bytes(out, b);
        }
        ScalarValue::Null => out.put(b"n"),
        ScalarValue::Unknown {
            type_code,
            bytes: b,
        } => {
            out.put(b"x");
            out.put(&[*type_code]);
            bytes(out, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ObjType};
    use proptest::prelude::*;

    use super::*;

    /// The specification read literally, one lookup per key and index: the
    /// oracle the single-pass encoder must agree with.
    fn literal(doc: &Automerge) -> Vec<u8> {
        fn map(doc: &Automerge, obj: &ObjId, root: bool, out: &mut Vec<u8>) {
            let mut keys: Vec<String> = doc
                .keys(obj)
                .filter(|k| !(root && k.starts_with(CHECKPOINT_PREFIX)))
                .collect();
            keys.sort();
            out.put(b"M");
            len(out, keys.len());
            for key in keys {
                bytes(out, key.as_bytes());
                all(doc, &doc.get_all(obj, key.as_str()).expect("get_all"), out);
            }
        }
        fn all(doc: &Automerge, values: &[(Value<'_>, ObjId)], out: &mut Vec<u8>) {
            len(out, values.len());
            for (value, id) in values {
                author(out, id);
                match value {
                    Value::Object(ObjType::Map | ObjType::Table) => map(doc, id, false, out),
                    Value::Object(ObjType::List) => {
                        let n = doc.length(id);
                        out.put(b"L");
                        len(out, n);
                        for i in 0..n {
                            all(doc, &doc.get_all(id, i).expect("get_all"), out);
                        }
                    }
                    Value::Object(ObjType::Text) => {
                        out.put(b"T");
                        bytes(out, doc.text(id).expect("text").as_bytes());
                    }
                    Value::Scalar(s) => scalar(s, out),
                }
            }
        }
        let mut out = STATE_TAG.to_vec();
        map(doc, &ROOT, true, &mut out);
        out
    }

    #[test]
    fn text_counters_and_nested_conflicts_encode_as_specified() {
        let mut a = Automerge::new().with_actor(actor(1));
        let mut tx = a.transaction();
        let text = tx.put_object(ROOT, "t", ObjType::Text).expect("text");
        tx.splice_text(&text, 0, 0, "hello").expect("splice");
        tx.put(ROOT, "n", automerge::ScalarValue::counter(1))
            .expect("counter");
        let list = tx.put_object(ROOT, "l", ObjType::List).expect("list");
        tx.insert(&list, 0, 1.5f64).expect("insert");
        tx.insert(&list, 1, vec![1u8, 2]).expect("insert");
        tx.commit();
        let mut b = a.fork().with_actor(actor(2));
        let mut tx = a.transaction();
        tx.increment(ROOT, "n", 4).expect("increment");
        tx.put(&list, 0, "from a").expect("put");
        tx.commit();
        let mut tx = b.transaction();
        tx.put(&list, 0, "from b").expect("put");
        tx.put(ROOT, "null", ScalarValue::Null).expect("null");
        tx.commit();
        a.merge(&mut b).expect("merge");
        assert_eq!(canonical_state(&a), literal(&a));
        let bytes = canonical_state(&a);
        let counter = [b"c".as_slice(), &5i64.to_be_bytes()].concat();
        assert!(
            bytes.windows(9).any(|w| w == counter),
            "the counter's current value"
        );
    }

    proptest! {
        /// Three writers each make some edits (some to the same keys); every
        /// order of merging their documents gives the same canonical state.
        #[test]
        fn any_merge_order_gives_the_same_canonical_state(
            edits in proptest::collection::vec((0..3u8, 0..4u8, any::<i64>(), any::<bool>()), 1..20),
            order in Just([0usize, 1, 2]).prop_shuffle(),
        ) {
            let mut docs: Vec<Automerge> = (1..=3u8)
                .map(|n| Automerge::new().with_actor(actor(n)))
                .collect();
            for (who, key, value, nested) in &edits {
                let doc = &mut docs[*who as usize];
                let mut tx = doc.transaction();
                let key = format!("a/{key}");
                if *nested {
                    let map = tx.put_object(ROOT, key.as_str(), ObjType::Map).expect("map");
                    tx.put(&map, "v", *value).expect("put");
                } else {
                    tx.put(ROOT, key.as_str(), *value).expect("put");
                }
                tx.commit();
            }
            let merged = |order: &[usize]| {
                let mut out = Automerge::new().with_actor(actor(9));
                for &i in order {
                    out.merge(&mut docs[i].clone()).expect("merge");
                }
                canonical_state(&out)
            };
            prop_assert_eq!(merged(&order), merged(&[0, 1, 2]));
            let mut all = Automerge::new().with_actor(actor(9));
            for doc in &docs {
                all.merge(&mut doc.clone()).expect("merge");
            }
            prop_assert_eq!(canonical_state(&all), literal(&all));
        }
    }

    fn actor(n: u8) -> ActorId {
        ActorId::from([n; 32].as_slice())
    }

    #[test]
    fn the_encoding_is_exactly_as_specified() {
        let mut doc = Automerge::new().with_actor(actor(7));
        let mut tx = doc.transaction();
        tx.put(ROOT, "b", 5i64).expect("put");
        let list = tx.put_object(ROOT, "a", ObjType::List).expect("list");
        tx.insert(&list, 0, "x").expect("insert");
        tx.put(ROOT, "k/ignored", "checkpoints are not state")
            .expect("put");
        tx.commit();
        let mut expected = STATE_TAG.to_vec();
        expected.extend(b"M\0\0\0\x02");
        // "a": one value by actor 7, a list holding "x" by actor 7.
        expected.extend(b"\0\0\0\x01a\0\0\0\x01\0\0\0\x20");
        expected.extend([7u8; 32]);
        expected.extend(b"L\0\0\0\x01\0\0\0\x01\0\0\0\x20");
        expected.extend([7u8; 32]);
        expected.extend(b"s\0\0\0\x01x");
        // "b": one value by actor 7, the integer 5.
        expected.extend(b"\0\0\0\x01b\0\0\0\x01\0\0\0\x20");
        expected.extend([7u8; 32]);
        expected.extend(b"i\0\0\0\0\0\0\0\x05");
        assert_eq!(canonical_state(&doc), expected);
        let hash: [u8; 32] = Sha256::digest(&expected).into();
        assert_eq!(state_hash(&doc), hash);
    }

    #[test]
    fn the_same_changes_in_any_order_give_the_same_state_and_conflicts_count() {
        let mut a = Automerge::new().with_actor(actor(1));
        let mut b = Automerge::new().with_actor(actor(2));
        let mut tx = a.transaction();
        tx.put(ROOT, "x", "from a").expect("put");
        tx.commit();
        let mut tx = b.transaction();
        tx.put(ROOT, "x", "from b").expect("put");
        tx.commit();
        let before = state_hash(&a);
        let mut ab = a.clone();
        ab.merge(&mut b.clone()).expect("merge");
        let mut ba = b.clone();
        ba.merge(&mut a.clone()).expect("merge");
        assert_eq!(canonical_state(&ab), canonical_state(&ba));
        assert_ne!(state_hash(&ab), before, "the concurrent value is state");
        // Only the checkpoints moved: the state is the same.
        let mut tx = ab.transaction();
        tx.put(ROOT, "k/some/signature", "sig").expect("put");
        tx.commit();
        assert_eq!(state_hash(&ab), state_hash(&ba));
    }
}
