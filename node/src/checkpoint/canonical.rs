//! The canonical state: one byte string for the document's state, the same
//! on every node that holds the same changes, and its SHA-256 hash, which
//! checkpoints sign. Specified byte for byte in `docs/protocol.md`.
//!
//! It covers every root key except the checkpoints themselves (`k/`), so
//! adding a signature to a checkpoint does not change the state it attests.
//! Every value is written with its author (the actor id of the op that set
//! it) and every concurrent value of a field is kept, in Automerge's order
//! (the winner last): everything Concord's readers look at is covered. No IO.

use automerge::{Automerge, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
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
    let mut keys: Vec<String> = doc
        .keys(obj)
        .filter(|k| !(root && k.starts_with(CHECKPOINT_PREFIX)))
        .collect();
    keys.sort();
    out.put(b"M");
    len(out, keys.len());
    for key in keys {
        bytes(out, key.as_bytes());
        let all = doc.get_all(obj, key.as_str()).unwrap_or_default();
        values(doc, &all, out);
    }
}

fn list(doc: &Automerge, obj: &ObjId, out: &mut impl Sink) {
    let n = doc.length(obj);
    out.put(b"L");
    len(out, n);
    for i in 0..n {
        let all = doc.get_all(obj, i).unwrap_or_default();
        values(doc, &all, out);
    }
}

fn values(doc: &Automerge, all: &[(Value<'_>, ObjId)], out: &mut impl Sink) {
    len(out, all.len());
    for (value, id) in all {
        match id {
            ObjId::Id(_, actor, _) => bytes(out, actor.to_bytes()),
            ObjId::Root => bytes(out, &[]),
        }
        match value {
            Value::Object(ObjType::Map | ObjType::Table) => map(doc, id, false, out),
            Value::Object(ObjType::List) => list(doc, id, out),
            Value::Object(ObjType::Text) => {
                out.put(b"T");
                bytes(out, doc.text(id).unwrap_or_default().as_bytes());
            }
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
