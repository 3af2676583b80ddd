use std::collections::HashMap;

use super::*;
use crate::doc::{Document, NewAssessment};
use crate::identity::Identity;
use crate::model::{MIN_TIME_MS, Status};
use crate::roster::{Role, RosterEntry};

/// An in-memory [`Known`].
#[derive(Default)]
struct Mem {
    hashes: HashSet<ChangeHash>,
    chain: HashMap<(PublicKey, u64), ChangeHash>,
    deps: HashMap<ChangeHash, ChangeHeader>,
    /// Stored changes, when the test keeps their bodies.
    bodies: Option<HashMap<ChangeHash, Change>>,
}

impl Known for Mem {
    fn has_change(&self, hash: &ChangeHash) -> bool {
        self.hashes.contains(hash)
    }
    fn hash_at(&self, author: &PublicKey, seq: u64) -> Option<ChangeHash> {
        self.chain.get(&(*author, seq)).copied()
    }
    fn header_of(&self, hash: &ChangeHash) -> Option<ChangeHeader> {
        self.deps.get(hash).cloned()
    }
    fn change(&self, hash: &ChangeHash) -> Option<Change> {
        self.bodies.as_ref()?.get(hash).cloned()
    }
}

impl Mem {
    fn store(&mut self, checked: &Checked) {
        for a in &checked.accepted {
            let hash = a.envelope.hash();
            self.hashes.insert(hash);
            self.chain.insert((a.envelope.author(), a.seq), hash);
            let header = change_header(a.envelope.change_bytes()).expect("a header");
            self.deps.insert(hash, header);
            if let Some(bodies) = &mut self.bodies {
                bodies.insert(hash, a.change.clone());
            }
        }
    }
}

/// Member M's assessment and `comments` comments on it, one change
/// each: every comment is inserted after the one before, an element
/// made by an earlier change.
fn comment_chain(f: &Fixture, comments: usize) -> Vec<Envelope> {
    let mut doc = Document::new(f.member.public());
    let mut out = vec![changes_on(&mut doc, "c", 1).remove(0)];
    for i in 0..comments {
        let change = doc
            .comment("ra-c0", &format!("comment {i}"), MIN_TIME_MS + i as i64)
            .expect("comment");
        out.push(change.raw_bytes().to_vec());
    }
    out.into_iter().map(|c| sign(&f.member, c)).collect()
}

#[test]
fn operations_on_stored_changes_are_found_along_the_authors_chain() {
    let f = fixture();
    let envs = comment_chain(&f, 40);
    let mut mem = Mem {
        bodies: Some(HashMap::new()),
        ..Mem::default()
    };
    // Batches of 7, so each refers to elements made in many earlier
    // changes, found by searching the chain.
    for batch in envs.chunks(7) {
        let checked = check_batch(batch.to_vec(), NET, &f.roster, &mem).expect("valid");
        assert_eq!(checked.accepted.len(), batch.len());
        mem.store(&checked);
    }
}

#[test]
fn an_operation_on_something_not_stored_is_refused_and_named() {
    let f = fixture();
    let envs = comment_chain(&f, 3);
    // The store keeps no bodies: the comments' list is nowhere.
    let mut mem = Mem::default();
    let first = check_batch(envs[..1].to_vec(), NET, &f.roster, &mem).expect("valid");
    mem.store(&first);
    let err = check_batch(envs[1..].to_vec(), NET, &f.roster, &mem).expect_err("refused");
    assert!(
        matches!(&err, IngestError::BadOperation { source, .. } if source.why == opcheck::Why::NoSuchObject),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("targets an object this node does not hold"),
        "{err}"
    );
}

const NET: NetworkId = NetworkId([9; 32]);

struct Fixture {
    member: Identity,
    other_member: Identity,
    observer: Identity,
    roster: Roster,
}

fn fixture() -> Fixture {
    let member = Identity::from_secret([1; 32]);
    let other_member = Identity::from_secret([2; 32]);
    let observer = Identity::from_secret([3; 32]);
    let entry = |id: &Identity, name: &str, role| RosterEntry {
        key: id.public(),
        name: name.into(),
        role,
    };
    let roster = Roster::new(
        [
            entry(&member, "M", Role::Member),
            entry(&other_member, "N", Role::Member),
            entry(&observer, "O", Role::Observer),
        ],
        2,
    );
    Fixture {
        member,
        other_member,
        observer,
        roster,
    }
}

/// `count` chained changes with `actor` as Automerge actor.
fn changes(actor: PublicKey, label: &str, count: usize) -> Vec<Vec<u8>> {
    changes_on(&mut Document::new(actor), label, count)
}

/// `count` new assessments written on `doc`, one change each.
fn changes_on(doc: &mut Document, label: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let new = NewAssessment {
                category: "algorithmic-bias".into(),
                title: format!("{label}{i}"),
                summary: String::new(),
                likelihood: None,
                severity: None,
                mitigations: Vec::new(),
                status: Status::Draft,
            };
            doc.add_assessment(&format!("ra-{label}{i}"), &new, MIN_TIME_MS + i as i64)
                .expect("change")
                .raw_bytes()
                .to_vec()
        })
        .collect()
}

fn sign(id: &Identity, change: Vec<u8>) -> Envelope {
    Envelope::sign(id, NET, change).expect("sign")
}

/// Review finding D at the door: a member's change 2 that reuses the
/// operation ids of its stored change 1 (start op 1 again), and a
/// change 3 that then writes values Concord never writes into the
/// assessment change 1 made, pass every check of `check_batch`, in one
/// batch or one by one.
#[test]
fn review_a_change_reusing_stored_operation_ids_is_refused() {
    use automerge::legacy::{self, Key, ObjectId, OpType, SortedVec};
    use automerge::{ObjType, ScalarValue};
    let f = fixture();
    let mut doc = Document::new(f.member.public());
    let c1 = doc
        .add_assessment(
            "ra-d",
            &NewAssessment {
                category: "reliability".into(),
                title: "honest".into(),
                summary: String::new(),
                likelihood: None,
                severity: None,
                mitigations: Vec::new(),
                status: Status::Draft,
            },
            MIN_TIME_MS,
        )
        .expect("c1");
    let forged = |after: &Change, seq: u64, start: u64, ops: Vec<legacy::Op>| -> Change {
        let mut e = after.decode();
        e.seq = seq;
        e.deps = vec![after.hash()];
        e.start_op = std::num::NonZeroU64::new(start).expect("start");
        e.hash = None;
        e.operations = ops;
        e.into()
    };
    let op = |action, obj, key: &str| legacy::Op {
        action,
        obj,
        key: Key::Map(key.into()),
        pred: SortedVec::new(),
        insert: false,
    };
    let actor = c1.actor_id().clone();
    let c2 = forged(
        &c1,
        2,
        1,
        vec![op(OpType::Make(ObjType::Map), ObjectId::Root, "z")],
    );
    let assessment = ObjectId::Id(legacy::OpId(1, actor));
    let c3 = forged(
        &c2,
        3,
        c1.max_op() + 1,
        vec![
            op(
                OpType::Put(ScalarValue::Int(99)),
                assessment.clone(),
                "likelihood",
            ),
            op(
                OpType::Put(ScalarValue::Str("final".into())),
                assessment,
                "status",
            ),
        ],
    );
    let envs: Vec<Envelope> = [&c1, &c2, &c3]
        .iter()
        .map(|c| sign(&f.member, c.raw_bytes().to_vec()))
        .collect();
    let together = check_batch(envs.clone(), NET, &f.roster, &Mem::default());
    let mut mem = Mem {
        bodies: Some(HashMap::new()),
        ..Mem::default()
    };
    let mut one_by_one = Ok(());
    for e in &envs {
        match check_batch(vec![e.clone()], NET, &f.roster, &mem) {
            Ok(checked) => mem.store(&checked),
            Err(err) => {
                one_by_one = Err(err.to_string());
                break;
            }
        }
    }
    assert!(
        together.is_err() && one_by_one.is_err(),
        "accepted: together {:?}, one by one {one_by_one:?}",
        together
            .map(|c| c.accepted.len())
            .map_err(|e| e.to_string())
    );
}

/// Review finding E (critical, a split): with change numbers whose
/// start ops go back, "the last change whose start op is at most the
/// counter" (`StoredOps`) is no longer the change holding the op. Member
/// M signs its assessment (ops 1–9) and then change 2 starting again at
/// op 2. Member N, honest, comments on M's assessment: an insert into
/// M's `comments` list, op 7@M. A node whose operation index still holds
/// M's change 1 (it checked it since it started) accepts N's comment; a
/// node that restarted since (or rebuilt, reloaded, or passed
/// INDEX_MAX) looks 7@M up along M's chain, lands on change 2, and
/// refuses it, and with it every later change of N's.
#[test]
/// From the hostile review: a member's change 2 that restarted its
/// operation counter at 2 (reusing change 1's ids) passed, and then a
/// node that kept its operation index and one that restarted decided
/// differently on an honest comment: a split. It is refused now.
fn review_a_warm_and_a_cold_index_decide_alike_on_an_honest_comment() {
    use automerge::ScalarValue;
    use automerge::legacy::{self, Key, ObjectId, OpType, SortedVec};
    let f = fixture();
    let mut doc = Document::new(f.member.public());
    let c1 = doc
        .add_assessment(
            "ra-e",
            &NewAssessment {
                category: "reliability".into(),
                title: "honest".into(),
                summary: String::new(),
                likelihood: None,
                severity: None,
                mitigations: Vec::new(),
                status: Status::Draft,
            },
            MIN_TIME_MS,
        )
        .expect("c1");
    let mut e = c1.decode();
    e.seq = 2;
    e.deps = vec![c1.hash()];
    e.start_op = std::num::NonZeroU64::new(2).expect("start");
    e.hash = None;
    e.operations = vec![legacy::Op {
        action: OpType::Put(ScalarValue::Str("s".into())),
        obj: ObjectId::Root,
        key: Key::Map("z".into()),
        pred: SortedVec::new(),
        insert: false,
    }];
    let c2: Change = e.into();
    // N's honest comment, written on a document holding both.
    let mut theirs = Document::new(f.other_member.public());
    theirs
        .apply(vec![c1.clone(), c2.clone()])
        .expect("N applies M's changes");
    let comment = theirs
        .comment("ra-e", "an honest comment", MIN_TIME_MS + 1)
        .expect("N comments");
    let envs: Vec<Envelope> = [&c1, &c2]
        .iter()
        .map(|c| sign(&f.member, c.raw_bytes().to_vec()))
        .collect();
    let comment = sign(&f.other_member, comment.raw_bytes().to_vec());
    // Warm: one index across the batches, as a running node keeps it.
    let mut warm_index = OpIndex::default();
    let mut mem = Mem {
        bodies: Some(HashMap::new()),
        ..Mem::default()
    };
    let checked = check_batch_indexed(vec![envs[0].clone()], NET, &f.roster, &mem, &mut warm_index)
        .expect("M's first change passes");
    mem.store(&checked);
    warm_index.keep();
    // The change that reuses operation ids is refused at the door, so
    // no node holds it and none can decide differently about it.
    let reused = check_batch_indexed(vec![envs[1].clone()], NET, &f.roster, &mem, &mut warm_index)
        .expect_err("M's second change reuses operation ids");
    assert!(
        matches!(reused, IngestError::OpsNotAfterDeps { start: 2, .. }),
        "{reused}"
    );
    let warm = check_batch_indexed(vec![comment.clone()], NET, &f.roster, &mem, &mut warm_index)
        .map(|c| c.accepted.len())
        .map_err(|e| e.to_string());
    // Cold: the same store, after a restart.
    let cold = check_batch(vec![comment], NET, &f.roster, &mem)
        .map(|c| c.accepted.len())
        .map_err(|e| e.to_string());
    assert_eq!(
        warm, cold,
        "a running node and a restarted one decide differently"
    );
}

/// From the hostile review (finding G): Automerge's run-length
/// encoding let an 85-byte change hold 200,000 operations, each of
/// which the checks then decoded, indexed and encoded again. A change
/// with more operations than bytes is refused before any of that.
#[test]
fn a_change_with_more_operations_than_bytes_is_refused_before_decoding() {
    use automerge::ScalarValue;
    use automerge::legacy::{self, Key, ObjectId, OpType, SortedVec};
    let f = fixture();
    let honest = changes(f.member.public(), "g", 1).remove(0);
    let mut e = crate::doc::parse_change(&honest).expect("parse").decode();
    e.hash = None;
    e.operations = (0..200_000)
        .map(|_| legacy::Op {
            action: OpType::Put(ScalarValue::Null),
            obj: ObjectId::Root,
            key: Key::Map("z".into()),
            pred: SortedVec::new(),
            insert: false,
        })
        .collect();
    let packed: Change = e.into();
    assert!(
        packed.raw_bytes().len() < 1_000,
        "{}",
        packed.raw_bytes().len()
    );
    let err = check_batch(
        vec![sign(&f.member, packed.raw_bytes().to_vec())],
        NET,
        &f.roster,
        &Mem::default(),
    )
    .expect_err("refused");
    assert!(
        matches!(err, IngestError::TooManyOps { ops: 200_000, .. }),
        "{err}"
    );
}

#[test]
fn a_valid_chain_is_accepted_in_any_order_and_twice_is_harmless() {
    let f = fixture();
    let mut envs: Vec<_> = changes(f.member.public(), "a", 3)
        .into_iter()
        .map(|c| sign(&f.member, c))
        .collect();
    envs.reverse();
    let mut mem = Mem::default();
    let checked = check_batch(envs.clone(), NET, &f.roster, &mem).expect("valid");
    assert_eq!(checked.accepted.len(), 3);
    mem.store(&checked);
    let again = check_batch(envs, NET, &f.roster, &mem).expect("valid");
    assert_eq!((again.accepted.len(), again.already_known), (0, 3));
}

#[test]
fn wrong_network_fails_the_signature() {
    let f = fixture();
    let c = changes(f.member.public(), "a", 1).remove(0);
    let env = Envelope::sign(&f.member, NetworkId([8; 32]), c).expect("sign");
    let err = check_batch(vec![env], NET, &f.roster, &Mem::default()).expect_err("foreign");
    assert!(matches!(err, IngestError::Signature { .. }), "{err}");
}

#[test]
fn flipped_signature_bit_is_refused() {
    let f = fixture();
    let c = changes(f.member.public(), "a", 1).remove(0);
    let mut wire = sign(&f.member, c).encode();
    wire[50] ^= 0x20;
    let env = Envelope::decode(&wire).expect("decodes");
    let err = check_batch(vec![env], NET, &f.roster, &Mem::default()).expect_err("forged");
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn observers_and_strangers_cannot_write() {
    let f = fixture();
    let c = changes(f.observer.public(), "o", 1).remove(0);
    let err = check_batch(vec![sign(&f.observer, c)], NET, &f.roster, &Mem::default())
        .expect_err("observer");
    assert!(matches!(err, IngestError::Observer { .. }), "{err}");
    let stranger = Identity::from_secret([7; 32]);
    let c = changes(stranger.public(), "s", 1).remove(0);
    let err = check_batch(vec![sign(&stranger, c)], NET, &f.roster, &Mem::default())
        .expect_err("stranger");
    assert!(matches!(err, IngestError::NotOnRoster { .. }), "{err}");
}

#[test]
fn actor_must_be_the_signer() {
    let f = fixture();
    let c = changes(f.other_member.public(), "x", 1).remove(0);
    let err = check_batch(vec![sign(&f.member, c)], NET, &f.roster, &Mem::default())
        .expect_err("mismatch");
    assert!(matches!(err, IngestError::ActorMismatch { .. }), "{err}");
}

#[test]
fn forks_are_refused_against_the_store_and_within_a_batch() {
    let f = fixture();
    let left = sign(&f.member, changes(f.member.public(), "l", 1).remove(0));
    let right = sign(&f.member, changes(f.member.public(), "r", 1).remove(0));
    let mut mem = Mem::default();
    let checked = check_batch(vec![left.clone()], NET, &f.roster, &mem).expect("first");
    mem.store(&checked);
    let err = check_batch(vec![right.clone()], NET, &f.roster, &mem).expect_err("fork");
    match err {
        IngestError::Fork(fork) => {
            assert_eq!(
                (fork.existing, fork.conflicting),
                (left.hash(), right.hash())
            );
            assert_eq!(fork.evidence, right);
        }
        other => panic!("expected a fork, got {other}"),
    }
    let err =
        check_batch(vec![left, right], NET, &f.roster, &Mem::default()).expect_err("fork in batch");
    assert!(matches!(err, IngestError::Fork(_)), "{err}");
}

#[test]
fn missing_dependencies_and_predecessors_are_refused() {
    let f = fixture();
    let chain = changes(f.member.public(), "d", 2);
    let second = sign(&f.member, chain[1].clone());
    let err = check_batch(vec![second], NET, &f.roster, &Mem::default()).expect_err("dep");
    assert!(
        matches!(err, IngestError::MissingDependency { .. }),
        "{err}"
    );
}

#[test]
fn a_change_that_skips_its_predecessor_is_refused() {
    let f = fixture();
    let actor = f.member.public();
    let mut mem = Mem::default();
    let first = sign(&f.member, changes(actor, "a", 1).remove(0));
    mem.store(&check_batch(vec![first], NET, &f.roster, &mem).expect("first"));
    // Change number 2 by the same actor that does not depend on number 1,
    // built by editing a genuine change 2's dependencies away.
    let two = changes(actor, "b", 2);
    let mut expanded = crate::doc::parse_change(&two[1]).expect("parse").decode();
    expanded.deps.clear();
    let orphan_change = automerge::Change::from(expanded);
    assert_eq!(orphan_change.seq(), 2);
    let orphan = sign(&f.member, orphan_change.raw_bytes().to_vec());
    let err = check_batch(vec![orphan], NET, &f.roster, &mem).expect_err("broken chain");
    assert!(
        matches!(err, IngestError::BrokenChain { seq: 2, .. }),
        "{err}"
    );
}

#[test]
fn garbage_that_is_signed_is_refused_without_panicking() {
    let f = fixture();
    // A well-formed chunk header around bytes Automerge cannot parse.
    let body = vec![0xffu8; 40];
    let mut hasher = sha2::Sha256::new();
    use sha2::Digest as _;
    hasher.update([1u8, body.len() as u8]);
    hasher.update(&body);
    let hash: [u8; 32] = hasher.finalize().into();
    let mut chunk = vec![0x85, 0x6f, 0x4a, 0x83];
    chunk.extend_from_slice(&hash[..4]);
    chunk.push(1);
    chunk.push(body.len() as u8);
    chunk.extend_from_slice(&body);
    let env = sign(&f.member, chunk);
    let err = check_batch(vec![env], NET, &f.roster, &Mem::default()).expect_err("garbage");
    assert!(matches!(err, IngestError::Unparseable { .. }), "{err}");
}

fn tamper_signature(env: &Envelope) -> Envelope {
    let mut wire = env.encode();
    wire[60] ^= 1;
    Envelope::decode(&wire).expect("decode")
}

#[test]
fn every_signature_is_checked_in_parallel_when_no_chain_vouches() {
    let f = fixture();
    let envs: Vec<_> = (0..PARALLEL_VERIFY_MIN + 10)
        .map(|i| {
            sign(
                &f.member,
                changes(f.member.public(), &format!("x{i}-"), 1).remove(0),
            )
        })
        .collect();
    assert!(verify_signatures(&envs, NET).is_ok());
    let mut bad = envs.clone();
    bad[PARALLEL_VERIFY_MIN + 3] = tamper_signature(&envs[PARALLEL_VERIFY_MIN + 3]);
    let err = verify_signatures(&bad, NET).expect_err("bad one");
    assert!(
        matches!(err, IngestError::Signature { hash, .. } if hash == bad[PARALLEL_VERIFY_MIN + 3].hash())
    );
}

#[test]
fn a_chain_is_vouched_for_by_its_top_signature_only() {
    let f = fixture();
    let chain = changes(f.member.public(), "p", CHAIN_SHORTCUT_MIN + 10);
    let envs: Vec<_> = chain.into_iter().map(|c| sign(&f.member, c)).collect();
    assert!(verify_signatures(&envs, NET).is_ok());
    // A forged top signature is always caught.
    let mut bad = envs.clone();
    let last = bad.len() - 1;
    bad[last] = tamper_signature(&envs[last]);
    assert!(verify_signatures(&bad, NET).is_err());
    // The chain vouches for its own author only: a change by the other
    // member with a bad signature still fails.
    let mut mixed = envs.clone();
    let other = changes(f.other_member.public(), "o", 1).remove(0);
    mixed.push(tamper_signature(&sign(&f.other_member, other)));
    assert!(verify_signatures(&mixed, NET).is_err());
}
