use proptest::prelude::*;

use super::*;
use crate::model::{Score, Status};

/// Three members in temporary directories, all joined to one network.
fn federation() -> (Vec<tempfile::TempDir>, Vec<Replica>) {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut replicas: Vec<Replica> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let dir = DataDir::new(d.path());
            Replica::init(&dir, &format!("Member {i}")).expect("init");
            Replica::open(&dir).expect("open")
        })
        .collect();
    let roster = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| RosterEntry {
            key: r.identity().public(),
            name: format!("Member {i}"),
            role: Role::Member,
        })
        .collect();
    let genesis = replicas[0]
        .create_network("Prop", roster, None)
        .expect("create");
    for r in &mut replicas[1..] {
        r.join(genesis.clone()).expect("join");
    }
    (dirs, replicas)
}

#[derive(Debug, Clone)]
enum Op {
    Add {
        node: usize,
        severity: i64,
    },
    Rescore {
        node: usize,
        target: usize,
        severity: i64,
    },
    Note {
        node: usize,
    },
    Position {
        node: usize,
        target: usize,
        stance: usize,
    },
    Send {
        from: usize,
        to: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 1..=5i64).prop_map(|(node, severity)| Op::Add { node, severity }),
        (0..3usize, 0..8usize, 1..=5i64).prop_map(|(node, target, severity)| Op::Rescore {
            node,
            target,
            severity
        }),
        (0..3usize).prop_map(|node| Op::Note { node }),
        (0..3usize, 0..8usize, 0..4usize).prop_map(|(node, target, stance)| Op::Position {
            node,
            target,
            stance
        }),
        (0..3usize, 0..3usize).prop_map(|(from, to)| Op::Send { from, to }),
    ]
}

fn apply(replicas: &mut [Replica], op: &Op) {
    match *op {
        Op::Add { node, severity } => {
            replicas[node]
                .add_assessment(NewAssessment {
                    category: "reliability".into(),
                    title: format!("by {node}"),
                    summary: String::new(),
                    likelihood: None,
                    severity: Some(Score::new("severity", severity).expect("score")),
                    mitigations: Vec::new(),
                    status: Status::Open,
                })
                .expect("add");
        }
        Op::Rescore {
            node,
            target,
            severity,
        } => {
            let ids: Vec<String> = replicas[node]
                .assessments(&AssessmentFilter::default())
                .expect("list")
                .into_iter()
                .map(|a| a.id)
                .collect();
            if let Some(id) = ids.get(target % ids.len().max(1)) {
                let update = AssessmentUpdate {
                    severity: Some(Score::new("severity", severity).expect("score")),
                    ..AssessmentUpdate::default()
                };
                // Re-stating the current value within the same millisecond
                // is no change at all, and is reported as such.
                match replicas[node].update_assessment(id, update) {
                    Ok(_) | Err(ReplicaError::Doc(DocError::NothingToChange)) => {}
                    Err(e) => panic!("update: {e}"),
                }
            }
        }
        Op::Note { node } => {
            replicas[node]
                .add_note(NewNote {
                    topic: format!("topic {node}"),
                    body: "body".into(),
                    kind: model::NoteKind::Agenda,
                    round: None,
                    assessments: Vec::new(),
                })
                .expect("note");
        }
        Op::Position {
            node,
            target,
            stance,
        } => {
            let ids: Vec<String> = replicas[node]
                .notes()
                .expect("notes")
                .into_iter()
                .map(|n| n.id)
                .collect();
            if let Some(id) = ids.get(target % ids.len().max(1)) {
                replicas[node]
                    .set_position(id, Stance::ALL[stance], "")
                    .expect("position");
            }
        }
        Op::Send { from, to } => {
            if from != to {
                let (bundle, _) = replicas[from].export(&[]).expect("export");
                replicas[to].import(&bundle).expect("import");
            }
        }
    }
}

fn state(r: &Replica) -> String {
    let assessments = r.assessments(&AssessmentFilter::default()).expect("list");
    let notes = r.notes().expect("notes");
    serde_json::to_string(&(assessments, notes, r.document().heads())).expect("json")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the writes and the order bundles travel in, once every
    /// node has every other node's bundle, all print the same JSON.
    #[test]
    fn replicas_exchanging_bundles_in_any_order_converge(
        ops in proptest::collection::vec(op(), 1..25),
        final_order in Just([0usize, 1, 2]).prop_shuffle(),
    ) {
        let (_dirs, mut replicas) = federation();
        for op in &ops {
            apply(&mut replicas, op);
        }
        let bundles: Vec<Vec<u8>> = final_order
            .iter()
            .map(|&i| replicas[i].export(&[]).expect("export").0)
            .collect();
        for r in &mut replicas {
            for b in &bundles {
                r.import(b).expect("import");
            }
        }
        let first = state(&replicas[0]);
        for r in &replicas[1..] {
            prop_assert_eq!(&state(r), &first);
        }
    }
}

/// A chain whose top signature vouches for the rest, with one forged
/// signature below the top: refused whole, nothing stored or applied,
/// whether the rest is verified before the apply (a short chain) or
/// beside it on another thread (a long one).
#[test]
fn a_forged_signature_inside_a_vouched_chain_is_refused_whole() {
    for notes in [64, 200] {
        let (_dirs, mut replicas) = federation();
        for i in 0..notes {
            replicas[0]
                .add_note(NewNote {
                    topic: format!("topic {i}"),
                    body: "body".into(),
                    kind: model::NoteKind::Agenda,
                    round: None,
                    assessments: Vec::new(),
                })
                .expect("note");
        }
        let (mut wire, _) = replicas[0]
            .changes_for(&Tips::default(), &Default::default(), usize::MAX)
            .expect("changes");
        let forged = wire.len() / 2;
        let before = state(&replicas[1]);
        let count = replicas[1].change_count();
        let honest = wire[forged].clone();
        // Bytes 60.. of an envelope are its signature.
        wire[forged].0[60] ^= 1;
        let err = replicas[1].ingest_wire(&wire).expect_err("forged");
        assert!(
            matches!(err, ReplicaError::Ingest(IngestError::Signature { .. })),
            "{notes} notes: {err}"
        );
        assert_eq!(replicas[1].change_count(), count, "{notes} notes");
        assert_eq!(state(&replicas[1]), before, "{notes} notes");
        wire[forged] = honest;
        let (summary, _) = replicas[1].ingest_wire(&wire).expect("honest");
        assert_eq!(summary.new, wire.len(), "{notes} notes");
        assert_eq!(state(&replicas[1]), state(&replicas[0]), "{notes} notes");
    }
}

#[test]
fn a_reopened_replica_holds_what_it_acknowledged() {
    let (dirs, mut replicas) = federation();
    let (id, _) = replicas[0]
        .add_assessment(NewAssessment::draft("reliability", "durable"))
        .expect("add");
    let before = state(&replicas[0]);
    drop(replicas);
    let reopened = Replica::open(&DataDir::new(dirs[0].path())).expect("reopen");
    assert_eq!(state(&reopened), before);
    assert_eq!(reopened.assessment(&id).expect("there").title, "durable");
}

/// A member that signs endless versions of one change number leaves
/// one proof behind, not one per version: the first variant refused is
/// kept and proves the fork, which freezes the forger at that number, so
/// every later variant is refused as a change it may no longer make, and
/// nothing more is stored. The version that came first stops counting.
#[test]
fn one_proof_is_kept_per_equivocation_however_many_variants_come() {
    let (_dirs, mut replicas) = federation();
    let forger = Identity::load(&replicas[1].data_dir().key_file()).expect("key");
    let network = replicas[0].network_id().expect("network");
    let variant = |title: &str| {
        let mut doc = Document::new(forger.public());
        let new = NewAssessment::draft("reliability", title);
        let change = doc
            .add_assessment("ra-fork", &new, now_ms())
            .expect("change");
        EnvelopeBytes(
            Envelope::sign(&forger, network, change.raw_bytes().to_vec())
                .expect("sign")
                .encode(),
        )
    };
    let r = &mut replicas[0];
    r.ingest_wire(&[variant("first")])
        .expect("the first version");
    assert_eq!(r.change_count(), 1);
    let err = r.ingest_wire(&[variant("second")]).expect_err("a fork");
    assert!(
        matches!(err, ReplicaError::Ingest(IngestError::Fork(_))),
        "{err}"
    );
    assert_eq!(r.frozen().get(&forger.public()), Some(&1));
    assert_eq!(r.change_count(), 0, "neither version counts");
    assert!(
        r.assessments(&AssessmentFilter::default())
            .expect("list")
            .is_empty()
    );
    for n in 2..20 {
        let err = r
            .ingest_wire(&[variant(&format!("v{n}"))])
            .expect_err("refused");
        assert!(
            matches!(err, ReplicaError::Ingest(IngestError::NotAuthorized { .. })),
            "{err}"
        );
    }
    let evidence = r.store().evidence().expect("evidence");
    assert_eq!(evidence.len(), 1);
    assert_eq!(r.store().fork_proofs().expect("proofs").len(), 1);
    assert_eq!(r.audit().expect("audit").forks.len(), 1);
}

/// A node whose clock reads before 2000 writes nothing: its change
/// would be refused by every other node (and its chain stuck there).
#[test]
fn a_clock_outside_years_2000_to_9999_signs_nothing() {
    assert_eq!(
        signing_time(1_700_000_000_000).ok(),
        Some(1_700_000_000_000)
    );
    for bad in [0, model::MIN_TIME_MS - 1, model::MAX_TIME_MS + 1] {
        let err = signing_time(bad).expect_err("refused");
        assert!(err.to_string().contains("set the clock"), "{err}");
    }
    // What the check on every other node would say of such a change.
    let mut doc = Document::new(Identity::from_secret([9; 32]).public());
    let new = NewAssessment::draft("reliability", "t");
    let change = doc
        .add_assessment("ra-clock", &new, model::MIN_TIME_MS - 1)
        .expect("the document itself takes any time");
    assert!(crate::opcheck::check(&[&change], &()).is_err());
}

/// After a panic half-way through a write, the node reloads: what the
/// document held in memory but the store never got is gone, and what
/// the store holds is back.
#[test]
fn reload_reads_the_document_and_roster_afresh_from_the_store() {
    let (_dirs, mut replicas) = federation();
    let r = &mut replicas[0];
    let new = NewAssessment::draft("reliability", "Stored");
    let (stored, _) = r.add_assessment(new.clone()).expect("stored");
    // A write the panic cut short: in the document, never stored.
    r.doc
        .add_assessment(
            "ra-halfway",
            &NewAssessment {
                title: "Half".into(),
                ..new
            },
            now_ms(),
        )
        .expect("in memory only");
    assert_eq!(
        r.assessments(&AssessmentFilter::default())
            .expect("list")
            .len(),
        2
    );
    let members = r.roster().expect("roster").members().count();
    r.reload().expect("reload");
    let ids: Vec<String> = r
        .assessments(&AssessmentFilter::default())
        .expect("list")
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, vec![stored]);
    assert_eq!(r.roster().expect("roster").members().count(), members);
    assert!(r.tips().get(&r.identity().public()).is_some());
}

#[test]
fn a_snapshot_plus_later_changes_restarts_to_the_same_state() {
    let (dirs, mut replicas) = federation();
    let mut r = replicas.remove(0);
    let add = |r: &mut Replica, title: &str| {
        r.add_assessment(NewAssessment::draft("reliability", title))
            .expect("add")
    };
    add(&mut r, "before the snapshot");
    r.save_snapshot().expect("snapshot");
    add(&mut r, "after the snapshot");
    let before = state(&r);
    drop(r);
    let dir = DataDir::new(dirs[0].path());
    let reopened = Replica::open(&dir).expect("reopen");
    assert_eq!(state(&reopened), before);
    // A damaged snapshot is ignored: the envelopes are the truth.
    reopened
        .store()
        .set_snapshot(&Snapshot {
            tips: Vec::new(),
            roster: reopened.records_digest(),
            invalid: Vec::new(),
            doc: vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3],
        })
        .expect("damage");
    drop(reopened);
    assert_eq!(state(&Replica::open(&dir).expect("reopen")), before);
}

fn assess(r: &mut Replica, title: &str) -> ChangeHash {
    r.add_assessment(NewAssessment::draft("algorithmic-bias", title))
        .expect("add")
        .1
}

fn sync(from: &Replica, to: &mut Replica) {
    let (bundle, _) = from.export(&[]).expect("export");
    to.import(&bundle).expect("import");
}

#[test]
fn a_removed_members_later_change_is_rejected_whatever_the_order() {
    let (_dirs, mut r) = federation();
    assess(&mut r[2], "before removal");
    for i in [0, 1] {
        let (a, b) = if i == 0 { (2, 0) } else { (2, 1) };
        let (from, to) = pick(&mut r, a, b);
        sync(from, to);
    }
    let doomed = r[2].identity().public();
    let proposal = r[0]
        .propose(governance::Op::Remove { key: doomed })
        .expect("propose");
    // One signature of two: nothing happens yet.
    assert!(r[0].roster().expect("roster").is_member(&doomed));
    // Member 2 writes after the proposal; member 1 receives that change
    // before it learns of the removal.
    let late = assess(&mut r[2], "after removal");
    {
        let (from, to) = pick(&mut r, 2, 1);
        sync(from, to);
    }
    assert!(r[1].document().has_change(&late));
    // Member 1 holds more of the chain than the proposal keeps: approving
    // would cut a change it holds, so it is asked to confirm.
    assert_eq!(share_records(&mut r, 0, 1).new, 1);
    let prefix = &proposal.to_hex()[..8];
    let err = r[1].approve(prefix, false).expect_err("cuts a held change");
    assert!(err.to_string().contains("reject changes 2 to 2"), "{err}");
    assert!(r[1].roster().expect("roster").is_member(&doomed));
    // Confirmed, it approves, and member 0 learns it.
    r[1].approve(prefix, true).expect("approve");
    share_records(&mut r, 1, 0);
    for node in [&r[0], &r[1]] {
        let roster = node.roster().expect("roster");
        assert!(roster.get(&doomed).is_none(), "removed on every node");
    }
    // The cut-off is the proposal's claim, change 1: member 1 rebuilt its
    // document without the late change, and member 0 refuses it at the door.
    assert!(!r[1].document().has_change(&late), "recomputed without it");
    assert!(r[1].is_rejected(&late));
    let (from, to) = pick(&mut r, 2, 0);
    let (bundle, _) = from.export(&[]).expect("export");
    let err = to.import(&bundle).expect_err("refused");
    assert!(err.to_string().contains("removed"), "{err}");
    assert!(!r[0].document().has_change(&late));
    assert!(r[0].store().envelope(&late).expect("read").is_none());
    assert_eq!(state(&r[0]), state(&r[1]));
}

/// A member's proposal to remove `target`, signed by hand so that it can
/// claim any last change of the target (as a hostile member's build would).
fn proposal_claiming(r: &Replica, target: PublicKey, claimed: u64) -> Record {
    let g = r.governance().expect("governance");
    Record::sign(
        Body::Propose {
            network: r.genesis().expect("genesis").network_id(),
            proposer: r.identity().public(),
            after: g.head(),
            op: governance::Op::Remove { key: target },
            seen: Seen {
                heads: r.document().heads().iter().map(|h| h.0).collect(),
                target_tip: claimed,
            },
            at_ms: now_ms(),
        },
        &[r.identity()],
    )
    .expect("sign")
}

/// Member 2 writes `n` changes, and members 0 and 1 hold them all.
fn target_writes(r: &mut [Replica], n: usize) {
    for i in 0..n {
        assess(&mut r[2], &format!("change {}", i + 1));
    }
    for to in [0, 1] {
        let (from, to) = pick(r, 2, to);
        sync(from, to);
    }
}

#[test]
fn approving_a_claim_above_what_this_node_holds_is_refused_unless_confirmed() {
    let (_dirs, mut r) = federation();
    target_writes(&mut r, 5);
    let doomed = r[2].identity().public();
    // Member 0 proposes removing member 2, claiming its last change is 99.
    let inflated = proposal_claiming(&r[0], doomed, 99);
    r[1].add_records(&[EnvelopeBytes(inflated.encode())])
        .expect("stored");
    let records = r[1].records_wire().len();
    // The listing shows the claim beside what this node holds.
    let Ok(crate::api::Response::Proposals(list)) =
        crate::api::execute(&mut r[1], crate::api::Request::Proposals { all: false })
    else {
        panic!("no listing");
    };
    let view = &list[0];
    let target = view.target.as_ref().expect("a removal names its target");
    assert_eq!(
        (target.claimed_last_change, target.held_last_change),
        (99, 5)
    );
    assert_eq!(target.name, "Member 2");
    assert_eq!(view.signers[0].seen_last_change, 99);
    assert_eq!(view.signers[0].record, inflated.id().to_hex());
    assert_eq!(view.after, None);
    // Approval is refused, naming the claim and what this node holds, and
    // nothing is signed or stored.
    let prefix = &inflated.id().to_hex()[..8];
    let err = r[1].approve(prefix, false).expect_err("above what is held");
    assert!(
        matches!(
            err,
            ReplicaError::Claim(governance::ClaimError::AboveHeld {
                claimed: 99,
                held: 5,
                ..
            })
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("claims \"Member 2\"'s last change is 99, but this node holds only up to 5"),
        "{text}"
    );
    assert!(text.contains("--confirm-claims"), "{text}");
    assert_eq!(r[1].records_wire().len(), records);
    assert!(r[1].roster().expect("roster").is_member(&doomed));
    // The operator who knows better confirms: the claim stands as signed.
    r[1].approve(prefix, true).expect("confirmed");
    let roster = r[1].roster().expect("roster").clone();
    assert!(roster.get(&doomed).is_none());
    assert!(roster.may_write(&doomed, 99).is_ok());
    assert!(roster.may_write(&doomed, 100).is_err());
    // A change member 1 had not seen then counts, and verify flags it.
    let sixth = assess(&mut r[2], "change 6");
    let (from, to) = pick(&mut r, 2, 1);
    sync(from, to);
    assert!(r[1].document().has_change(&sixth));
    let audit = r[1].audit().expect("audit");
    assert_eq!(audit.flags.len(), 1, "{:?}", audit.flags);
    assert_eq!(audit.flags[0].change, sixth.to_string());
    assert!(audit.flags[0].problem.contains("not every signer"));
}

#[test]
fn after_an_inflated_claim_is_refused_the_removed_members_changes_6_to_8_are_not_accepted() {
    let (_dirs, mut r) = federation();
    target_writes(&mut r, 5);
    let doomed = r[2].identity().public();
    // Member 0 (hostile) proposes the removal claiming change 99; member 1
    // refuses to sign that.
    let inflated = proposal_claiming(&r[0], doomed, 99);
    r[1].add_records(&[EnvelopeBytes(inflated.encode())])
        .expect("stored");
    r[1].approve(&inflated.id().to_hex()[..8], false)
        .expect_err("refused");
    // Member 1 proposes it honestly (change 5); member 0 approves it, again
    // claiming 99, and dates its approval first.
    let honest = r[1]
        .propose(governance::Op::Remove { key: doomed })
        .expect("propose");
    let approval = Record::sign(
        Body::Approve {
            network: r[0].genesis().expect("genesis").network_id(),
            approver: r[0].identity().public(),
            proposal: honest,
            seen: Seen {
                heads: vec![],
                target_tip: 99,
            },
            at_ms: 0,
        },
        &[r[0].identity()],
    )
    .expect("sign");
    r[1].add_records(&[EnvelopeBytes(approval.encode())])
        .expect("stored");
    let roster = r[1].roster().expect("roster");
    assert!(roster.get(&doomed).is_none(), "removed");
    assert!(roster.may_write(&doomed, 5).is_ok());
    // Member 2 writes changes 6 to 8: member 1 accepts none of them.
    let later: Vec<ChangeHash> = (6..=8)
        .map(|i| assess(&mut r[2], &format!("change {i}")))
        .collect();
    let (from, to) = pick(&mut r, 2, 1);
    let (bundle, _) = from.export(&[]).expect("export");
    let err = to.import(&bundle).expect_err("refused");
    assert!(err.to_string().contains("removed"), "{err}");
    for change in &later {
        assert!(!r[1].document().has_change(change));
        assert!(r[1].store().envelope(change).expect("read").is_none());
    }
}

/// Members 0 and 1 remove member 2 (member 1 holding both records),
/// member 2 then writes, and member 0 takes that change before it has
/// the approval. Returns the late change.
fn late_change_before_its_removal(r: &mut [Replica]) -> ChangeHash {
    let doomed = r[2].identity().public();
    let proposal = r[0]
        .propose(governance::Op::Remove { key: doomed })
        .expect("propose");
    share_records(r, 0, 1);
    r[1].approve(&proposal.short(), false).expect("approve");
    // Member 2 writes (its signers had seen nothing of it: cutoff 0).
    let late = assess(&mut r[2], "after removal");
    let (from, to) = pick(r, 2, 0);
    sync(from, to);
    late
}

#[test]
fn state_is_recomputed_when_a_removal_arrives_after_the_change() {
    let (_dirs, mut r) = federation();
    let late = late_change_before_its_removal(&mut r);
    assert!(r[0].document().has_change(&late));
    assert!(share_records(&mut r, 1, 0).roster_changed);
    assert!(!r[0].document().has_change(&late), "recomputed without it");
    assert!(r[0].is_rejected(&late));
    assert_eq!(state(&r[0]), state(&r[1]));
    // It survives a restart, and verify says why.
    let dir = r[0].data_dir().clone();
    drop(r.remove(0));
    let reopened = Replica::open(&dir).expect("reopen");
    assert!(!reopened.document().has_change(&late));
    let audit = reopened.audit().expect("audit");
    assert!(audit.ok);
    assert_eq!(audit.rejections.len(), 1);
    assert!(
        audit.rejections[0].problem.contains("removed"),
        "{:?}",
        audit.rejections
    );
}

#[test]
fn after_a_failed_group_flush_writes_are_refused_until_a_flush_succeeds() {
    let (_dirs, mut r) = federation();
    let durable = assess(&mut r[0], "durable");
    r[0].begin_group();
    let staged = assess(&mut r[0], "staged while the disk fails");
    r[0].store().fail_flushes(true);
    let err = r[0].end_group().expect_err("the flush fails");
    assert!(matches!(err, ReplicaError::NotDurable(_)), "{err}");
    // While the disk still fails, no write goes through: neither a local
    // edit nor changes from a peer, and nothing more reaches the store.
    let stored = r[0].change_count();
    let err = r[0]
        .add_assessment(NewAssessment::draft("algorithmic-bias", "refused"))
        .expect_err("refused");
    assert!(matches!(err, ReplicaError::NotDurable(_)), "{err}");
    assert!(err.to_string().contains("writes are refused"), "{err}");
    let from_peer = assess(&mut r[1], "from a peer");
    let (bundle, _) = r[1].export(&[]).expect("export");
    let err = r[0].import(&bundle).expect_err("refused");
    assert!(matches!(err, ReplicaError::NotDurable(_)), "{err}");
    assert_eq!(r[0].change_count(), stored);
    assert!(!r[0].document().has_change(&from_peer));
    // Once the disk works again the next write flushes first, then goes
    // on; everything written is durable across a restart.
    r[0].store().fail_flushes(false);
    let after = assess(&mut r[0], "after recovery");
    r[0].import(&bundle).expect("import");
    let dir = r[0].data_dir().clone();
    drop(r.remove(0));
    let reopened = Replica::open(&dir).expect("reopen");
    for hash in [durable, staged, after, from_peer] {
        assert!(reopened.document().has_change(&hash), "{hash} is kept");
    }
}

#[test]
fn a_failed_rebuild_after_new_records_leaves_records_and_document_as_they_were() {
    let (_dirs, mut r) = federation();
    let late = late_change_before_its_removal(&mut r);
    // The removal would rebuild member 0's document without `late`; a
    // stored envelope that no longer decodes makes that rebuild fail.
    let original = r[0].store().envelope(&late).expect("read").expect("stored");
    r[0].store()
        .put_envelope_bytes(&late, b"not an envelope")
        .expect("corrupt");
    let records_before = r[0].store().records().expect("records").len();
    let state_before = state(&r[0]);
    let wire = r[1].records_wire();
    let err = r[0].add_records(&wire).expect_err("the rebuild fails");
    assert!(
        matches!(err, ReplicaError::Store(StoreError::Corrupt(_))),
        "{err}"
    );
    // Nothing moved: the records are not stored, the roster and the
    // document are the old ones, and the change still counts.
    assert_eq!(
        r[0].store().records().expect("records").len(),
        records_before
    );
    assert!(
        r[0].roster()
            .expect("roster")
            .is_member(&r[2].identity().public())
    );
    assert!(r[0].document().has_change(&late));
    assert_eq!(state(&r[0]), state_before);
    // With the store mended, the same records apply and recompute.
    r[0].store()
        .put_envelope_bytes(&late, &original)
        .expect("mend");
    assert!(r[0].add_records(&wire).expect("records").0.roster_changed);
    assert!(!r[0].document().has_change(&late));
    assert_eq!(state(&r[0]), state(&r[1]));
}

#[test]
fn a_rotation_interrupted_before_the_key_swap_is_finished_at_the_next_start() {
    let (dirs, mut r) = federation();
    let old = r[0].identity().public();
    let summary = r[0].rotate_key().expect("rotate");
    let new_id = summary.node_id.clone();
    let dir = DataDir::new(dirs[0].path());
    drop(r.remove(0));
    // Put the key files back as they were before the swap: the
    // succession is stored, the new key is still staged.
    let key_file = dir.key_file();
    let retired = std::fs::read_dir(dir.root())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("key.retired-"))
        .expect("retired key");
    std::fs::rename(&key_file, key_file.with_extension("key.new")).expect("unstage");
    std::fs::rename(&retired, &key_file).expect("restore old");
    let reopened = Replica::open(&dir).expect("reopen");
    assert_eq!(reopened.identity().node_id().to_string(), new_id);
    assert_ne!(reopened.identity().public(), old);
    assert!(!key_file.with_extension("key.new").exists());
    assert!(
        reopened
            .roster()
            .expect("roster")
            .is_member(&reopened.identity().public())
    );
}

/// Hands replica `a`'s roster records to replica `b`.
fn share_records(r: &mut [Replica], a: usize, b: usize) -> RecordsSummary {
    let (from, to) = pick(r, a, b);
    let wire = from.records_wire();
    to.add_records(&wire).expect("records").0
}

fn pick(r: &mut [Replica], a: usize, b: usize) -> (&Replica, &mut Replica) {
    assert_ne!(a, b);
    if a < b {
        let (left, right) = r.split_at_mut(b);
        (&left[a], &mut right[0])
    } else {
        let (left, right) = r.split_at_mut(a);
        (&right[0], &mut left[b])
    }
}

/// One reconciliation between two replicas, as the engine runs it both
/// ways: proofs, versions at each other's tips, then the changes each
/// lacks. Returns whether anything changed.
fn reconcile(a: &mut Replica, b: &mut Replica) -> bool {
    let one_way = |from: &mut Replica, to: &mut Replica| {
        let mut changed = false;
        let proofs = from.proofs_for(to.frozen(), usize::MAX).expect("proofs");
        changed |= !to.adopt_proofs(&proofs).expect("adopt").is_empty();
        let versions = from
            .versions_for(&to.wire_tips(), usize::MAX)
            .expect("versions");
        changed |= !to.take_versions(&versions).expect("take").is_empty();
        let frozen = to.frozen().clone();
        let (envelopes, _) = from
            .changes_for(&to.counting_tips(), &frozen, usize::MAX)
            .expect("changes");
        match to.ingest_wire(&envelopes) {
            Ok((summary, _)) => changed |= summary.new > 0,
            Err(ReplicaError::Ingest(IngestError::Fork(_))) => changed = true,
            // As the engine does: pull again once more is known.
            Err(ReplicaError::Ingest(
                IngestError::MissingDependency { .. } | IngestError::MissingPredecessor { .. },
            )) => {}
            Err(e) => panic!("ingest: {e}"),
        }
        changed
    };
    let there = one_way(a, b);
    let back = one_way(b, a);
    there || back
}

/// `author`'s chain: one change both branches share, then two branches of
/// `len` changes each from change number 2, signed with `key`.
fn forked_chain(key: &Identity, network: NetworkId, len: usize) -> [Vec<EnvelopeBytes>; 2] {
    let sign = |c: Change| {
        EnvelopeBytes(
            Envelope::sign(key, network, c.raw_bytes().to_vec())
                .expect("sign")
                .encode(),
        )
    };
    let mut base = Document::new(key.public());
    let shared = base
        .add_assessment(
            "ra-shared",
            &NewAssessment::draft("reliability", "shared"),
            now_ms(),
        )
        .expect("change");
    let shared = sign(shared);
    ["x", "y"].map(|side| {
        let mut doc = Document::load(&base.save(), key.public()).expect("load");
        let mut chain = vec![shared.clone()];
        for n in 0..len {
            let new = NewAssessment::draft("reliability", &format!("{side} {n}"));
            let change = doc
                .add_assessment(&format!("ra-{side}{n}"), &new, now_ms())
                .expect("change");
            chain.push(sign(change));
        }
        chain
    })
}

/// A member gives one branch of its chain to one node and another branch
/// to another (forked at change 2, each running on to change 4). Their tips
/// carry the same numbers, but the hashes differ: each sends the other its
/// version, both hold a proof, and exchange by exchange the fork point
/// drops to 2, where the branches part. Both then count the same changes
/// (the shared change 1, nothing of either branch), a third node that
/// held only change 1 learns the proof, and it all survives a restart.
#[test]
fn two_branches_of_a_fork_are_found_and_settled_alike() {
    let (_dirs, mut r) = federation();
    let forger = Identity::load(&r[2].data_dir().key_file()).expect("key");
    let network = r[0].network_id().expect("network");
    let [x, y] = forked_chain(&forger, network, 3);
    r[0].ingest_wire(&x).expect("x branch");
    r[1].ingest_wire(&y).expect("y branch");
    assert_eq!(r[0].tips().get(&forger.public()), Some(&4));
    assert_eq!(r[1].tips().get(&forger.public()), Some(&4));
    assert_ne!(state(&r[0]), state(&r[1]));

    let (a, rest) = r.split_at_mut(1);
    let mut rounds = 0;
    while reconcile(&mut a[0], &mut rest[0]) {
        rounds += 1;
        assert!(rounds < 10, "the fork point keeps moving");
    }
    // The forger's own node held none of this: it learns the proof too.
    while reconcile(&mut a[0], &mut rest[1]) {
        rounds += 1;
        assert!(rounds < 20, "the fork point keeps moving");
    }
    for replica in [&a[0], &rest[0], &rest[1]] {
        assert_eq!(replica.frozen().get(&forger.public()), Some(&2));
        assert_eq!(state(replica), state(&a[0]));
    }
    assert_eq!(a[0].counting_tips().get(&forger.public()), Some(&1));
    let titles: Vec<String> = a[0]
        .assessments(&AssessmentFilter::default())
        .expect("list")
        .into_iter()
        .map(|v| v.title)
        .collect();
    assert_eq!(titles, ["shared"]);
    assert!(matches!(
        rest[1].add_assessment(NewAssessment::draft("reliability", "forged")),
        Err(ReplicaError::OwnKeyFrozen { seq: 2 })
    ));

    let dir = r[0].data_dir().clone();
    let before = state(&r[0]);
    drop(r.remove(0));
    let reopened = Replica::open(&dir).expect("reopen");
    assert_eq!(reopened.frozen().get(&forger.public()), Some(&2));
    assert_eq!(state(&reopened), before);
}

/// An honest member that wrote on top of a version a fork later froze
/// loses nothing: its write stops counting with the frozen version (and its
/// node refuses to write on top of it), and once its key is rotated the
/// node writes the write's effect again under the new key, which every
/// node then counts.
#[test]
fn an_honest_write_built_on_a_frozen_version_is_carried_over_by_rotation() {
    let (_dirs, mut r) = federation();
    let forger = Identity::load(&r[2].data_dir().key_file()).expect("key");
    let network = r[0].network_id().expect("network");
    let [x, y] = forked_chain(&forger, network, 2);
    r[0].ingest_wire(&x).expect("x branch");
    r[1].ingest_wire(&y).expect("y branch");
    let (honest, _) = r[0]
        .add_assessment(NewAssessment::draft(
            "reliability",
            "written on the x branch",
        ))
        .expect("honest write");
    r[0].comment(&honest, "and a comment on it")
        .expect("comment");

    let (a, rest) = r.split_at_mut(1);
    while reconcile(&mut a[0], &mut rest[0]) {}
    assert_eq!(a[0].frozen().get(&forger.public()), Some(&2));
    assert!(
        a[0].assessment(&honest).is_err(),
        "built on x: no longer counts"
    );
    assert!(matches!(
        a[0].add_assessment(NewAssessment::draft("reliability", "more")),
        Err(ReplicaError::TaintedChain { .. })
    ));
    assert_eq!(state(&a[0]), state(&rest[0]));

    let old = a[0].identity().public();
    a[0].rotate_key().expect("rotate");
    assert_ne!(a[0].identity().public(), old);
    let view = a[0].assessment(&honest).expect("carried over");
    assert_eq!(view.title, "written on the x branch");
    assert_eq!(view.comments.len(), 1, "{view:?}");
    assert_eq!(view.comments[0].text, "and a comment on it");
    // B learns the succession and the carried changes, and agrees.
    let records = a[0].records_wire();
    rest[0].add_records(&records).expect("succession");
    while reconcile(&mut a[0], &mut rest[0]) {}
    assert_eq!(
        rest[0].assessment(&honest).expect("at B").title,
        "written on the x branch"
    );
    assert_eq!(state(&a[0]), state(&rest[0]));
    a[0].add_assessment(NewAssessment::draft("reliability", "writing again"))
        .expect("the new key writes");
}

/// Only current members' signatures count, so a rotation used to drop the
/// institution's pending proposals: the rotating node now signs them again
/// under its new key.
#[test]
fn a_rotation_signs_the_institutions_pending_proposals_again() {
    let (_dirs, mut r) = federation();
    let target = r[2].identity().public();
    let id = r[0]
        .propose(crate::governance::Op::Remove { key: target })
        .expect("propose");
    r[0].rotate_key().expect("rotate");
    let new = r[0].identity().public();
    let motion = &r[0].governance().expect("governance").motions[&id];
    assert!(motion.signers.contains(&new), "{:?}", motion.signers);
    // B's approval now completes the quorum of two current members.
    let records = r[0].records_wire();
    r[1].add_records(&records).expect("records");
    r[1].approve(&id.to_hex(), false).expect("approve");
    assert!(
        r[1].roster().expect("roster").get(&target).is_none(),
        "removed"
    );
}
