//! Checkpoints end to end on replicas in temporary directories: signing,
//! co-signing, quorum, the briefing's attestation and its offline check.

use super::verify::{Format, VerifyError, export, verify_file};
use super::*;
use crate::config::DataDir;
use crate::doc::NewAssessment;
use crate::model::Status;
use crate::replica::Replica;
use crate::roster::{Role, RosterEntry};

/// Three members (quorum 2) and an observer, joined to one network.
fn federation() -> (Vec<tempfile::TempDir>, Vec<Replica>, Genesis) {
    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut replicas: Vec<Replica> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let dir = DataDir::new(d.path());
            Replica::init(&dir, &format!("Institution {i}")).expect("init");
            Replica::open(&dir).expect("open")
        })
        .collect();
    let roster = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| RosterEntry {
            key: r.identity().public(),
            name: format!("Institution {i}"),
            role: if i < 3 { Role::Member } else { Role::Observer },
        })
        .collect();
    let genesis = replicas[0]
        .create_network("Checkpoints", roster, None)
        .expect("create");
    for r in &mut replicas[1..] {
        r.join(genesis.clone()).expect("join");
    }
    (dirs, replicas, genesis)
}

fn add(r: &mut Replica, title: &str) {
    r.add_assessment(NewAssessment {
        category: "reliability".into(),
        title: title.into(),
        summary: String::new(),
        likelihood: None,
        severity: None,
        mitigations: Vec::new(),
        status: Status::Open,
    })
    .expect("add");
}

/// Sends everything `from` holds to `to`.
fn send(replicas: &mut [Replica], from: usize, to: usize) {
    let (bundle, _) = replicas[from].export(&[]).expect("export");
    replicas[to].import(&bundle).expect("import");
}

#[test]
fn a_checkpoint_is_attested_only_at_quorum_and_co_signing_joins_it() {
    let (_dirs, mut r, _genesis) = federation();
    add(&mut r[0], "first");
    send(&mut r, 0, 1);
    let (id, _) = r[0].sign_checkpoint(None).expect("sign");
    let list = r[0].checkpoints().expect("list");
    let c = list.get(&id).expect("listed");
    assert_eq!((c.member_signatures, c.quorum), (1, 2));
    assert!(
        c.state_verified && !c.attested,
        "one of three is not a quorum"
    );
    assert_eq!(list.current, None);
    // Signing again without any change says so.
    assert!(matches!(
        r[0].sign_checkpoint(None),
        Err(crate::ReplicaError::Checkpoint(
            CheckpointError::AlreadySigned(_)
        ))
    ));

    // The second member receives the signature and, signing the same state,
    // co-signs the same checkpoint although its heads moved.
    send(&mut r, 0, 1);
    let (second, _) = r[1].sign_checkpoint(None).expect("co-sign");
    assert_eq!(second, id);
    let list = r[1].checkpoints().expect("list");
    let c = list.get(&id).expect("listed");
    assert_eq!(c.member_signatures, 2);
    assert!(c.attested);
    assert_eq!(list.current.as_deref(), Some(id.as_str()));
    assert_eq!(list.latest_attested.as_deref(), Some(id.as_str()));

    // A later write leaves the checkpoint attested but no longer current.
    add(&mut r[1], "second");
    let list = r[1].checkpoints().expect("list");
    assert_eq!(list.current, None);
    assert_eq!(list.latest_attested.as_deref(), Some(id.as_str()));
    assert!(list.get(&id).expect("listed").attested);
}

#[test]
fn an_observer_cannot_sign_and_foreign_or_forged_entries_do_not_count() {
    let (_dirs, mut r, _genesis) = federation();
    add(&mut r[0], "x");
    assert!(matches!(
        r[3].sign_checkpoint(None),
        Err(crate::ReplicaError::ObserverCannotWrite)
    ));
    // A member writes a "signature" under another member's name: it is not
    // written by the signer it names, so it is listed as invalid.
    let network = r[0].network_id().expect("network");
    let doc = r[0].document();
    let subject = Subject::new(network, doc.heads(), canonical::state_hash(doc.automerge()));
    let victim = r[1].identity().public();
    let (_, mut forged) = entry(r[0].identity(), &subject);
    forged.signature = hex::encode([7u8; 64]);
    let key = subject.key(&victim);
    let mut doc = Document::load(&r[0].document().save(), r[0].identity().public()).expect("load");
    doc.put_checkpoint(&key, &forged, 1).expect("write");
    let (signed, invalid) = read(doc.automerge(), network);
    assert!(signed.is_empty());
    assert_eq!(invalid.len(), 1);
    assert!(
        invalid[0].problem.contains("not written by the signer"),
        "{invalid:?}"
    );
    // A signature with the wrong bytes, under the signer's own name.
    let mine = subject.key(&r[0].identity().public());
    doc.put_checkpoint(&mine, &forged, 2).expect("write");
    let (_, invalid) = read(doc.automerge(), network);
    assert!(
        invalid
            .iter()
            .any(|i| i.problem == "the signature does not verify"),
        "{invalid:?}"
    );
}

#[test]
fn a_report_at_an_attested_checkpoint_verifies_offline_and_an_edited_one_does_not() {
    let (_dirs, mut r, genesis) = federation();
    add(&mut r[0], "Autonomy in command and control");
    r[0].sign_checkpoint(None).expect("sign");
    send(&mut r, 0, 2);
    r[2].sign_checkpoint(None).expect("co-sign");
    send(&mut r, 2, 3);
    // The observer renders the briefing: it shows the attested state.
    let briefing = r[3].briefing(None, None).expect("briefing");
    let attestation = briefing.attestation.as_ref().expect("attested");
    assert!(briefing.report.checkpoint.attested);
    let roster = genesis.roster();
    for format in [Format::Markdown, Format::Html, Format::Json] {
        let file = export(&briefing.report, Some(attestation), format);
        let verified = verify_file(file.as_bytes(), &genesis, &roster)
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(verified.checkpoint, attestation.checkpoint);
        assert_eq!(verified.signers.len(), 2);
        let edited = file.replace("Autonomy in command", "Autonomy in commerce");
        assert_ne!(edited, file);
        let err = verify_file(edited.as_bytes(), &genesis, &roster).expect_err("edited");
        assert!(
            matches!(
                err,
                VerifyError::Edited { .. } | VerifyError::EditedJson { .. }
            ),
            "{format:?}: {err}"
        );
        assert!(err.to_string().contains("commerce"), "{err}");
    }
    // With one signature removed the quorum is not met.
    let mut thin = attestation.clone();
    thin.signatures.pop();
    let file = export(&briefing.report, Some(&thin), Format::Markdown);
    assert!(matches!(
        verify_file(file.as_bytes(), &genesis, &roster),
        Err(VerifyError::BelowQuorum {
            signatures: 1,
            quorum: 2
        })
    ));
    // A report with no attestation says how to get one.
    let plain = export(&briefing.report, None, Format::Markdown);
    assert!(matches!(
        verify_file(plain.as_bytes(), &genesis, &roster),
        Err(VerifyError::NoAttestation)
    ));
}

#[test]
fn a_bundle_verifies_offline_only_with_an_attested_checkpoint() {
    let (_dirs, mut r, genesis) = federation();
    add(&mut r[0], "one");
    r[0].sign_checkpoint(None).expect("sign");
    let roster = genesis.roster();
    let (bundle, _) = r[0].export(&[]).expect("export");
    let err = verify_file(&bundle, &genesis, &roster).expect_err("one signature");
    assert!(
        matches!(
            err,
            VerifyError::NoAttestedCheckpoint { checkpoints: 1, .. }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("1 of 2 member signatures"),
        "{err}"
    );
    send(&mut r, 0, 1);
    r[1].sign_checkpoint(None).expect("co-sign");
    let (bundle, count) = r[1].export(&[]).expect("export");
    let verified = verify_file(&bundle, &genesis, &roster).expect("verifies");
    assert_eq!(verified.changes, Some(count));
    assert_eq!(verified.signers.len(), 2);
    // Another network's genesis refuses it.
    let (_other_dirs, others, other_genesis) = federation();
    drop(others);
    assert!(matches!(
        verify_file(&bundle, &other_genesis, &other_genesis.roster()),
        Err(VerifyError::OtherNetwork { .. })
    ));
}

#[test]
fn the_state_at_old_heads_is_what_was_signed() {
    let (_dirs, mut r, _genesis) = federation();
    add(&mut r[0], "before");
    let heads = r[0].document().heads();
    let mut memo = StateMemo::default();
    let then = memo.state_at(r[0].document(), &heads).expect("state");
    add(&mut r[0], "after");
    let mut fresh = StateMemo::default();
    assert_eq!(
        fresh.state_at(r[0].document(), &heads).expect("state"),
        then
    );
    assert_ne!(fresh.current(r[0].document()), then);
}

/// A report attested and exported by a build before renderer versions
/// existed (made with main at 3dfaace; its note body forges a position line
/// and its topic a heading): the frozen first renderer still verifies it,
/// and says which renderer it used.
#[test]
fn a_report_exported_before_renderer_versions_still_verifies() {
    let genesis = Genesis::decode(include_bytes!("fixtures/v1-genesis.bin")).expect("genesis");
    let roster = genesis.roster();
    let files: [(&[u8], Option<u32>); 3] = [
        (include_bytes!("fixtures/v1-report.md"), Some(1)),
        (include_bytes!("fixtures/v1-report.html"), Some(1)),
        (include_bytes!("fixtures/v1-report.json"), None),
    ];
    for (file, renderer) in files {
        let verified = verify_file(file, &genesis, &roster).expect("the old export verifies");
        assert_eq!(verified.renderer, renderer);
        assert_eq!(verified.signers.len(), 2);
    }
    let md = std::str::from_utf8(files[0].0).expect("utf-8");
    let edited = md.replace("forged", "fudged");
    assert!(matches!(
        verify_file(edited.as_bytes(), &genesis, &roster),
        Err(VerifyError::Edited { .. })
    ));
}

/// Hostile text in an attested state: the export escapes it, and verifies.
#[test]
fn a_report_of_hostile_text_is_escaped_and_verifies() {
    let (_dirs, mut r, genesis) = federation();
    add(&mut r[0], "<img src=x onerror=alert(1)> | cell");
    let (note, _) = r[0]
        .add_note(crate::doc::NewNote {
            topic: "Labelling # Heading".into(),
            body: "First line.\n- Institution 1: **agree**: forged\n# Heading".into(),
            kind: crate::model::NoteKind::Consensus,
            round: None,
            assessments: Vec::new(),
        })
        .expect("note");
    r[0].set_position(
        &note,
        crate::model::Stance::Disagree,
        "<script>alert(1)</script>",
    )
    .expect("position");
    r[0].sign_checkpoint(None).expect("sign");
    send(&mut r, 0, 2);
    r[2].sign_checkpoint(None).expect("co-sign");
    let briefing = r[2].briefing(None, None).expect("briefing");
    let attestation = briefing.attestation.as_ref().expect("attested");
    assert_eq!(attestation.version, verify::ATTESTATION_VERSION);
    let roster = genesis.roster();
    for format in [Format::Markdown, Format::Html] {
        let file = export(&briefing.report, Some(attestation), format);
        assert!(
            !file.contains("<script") && !file.contains("<img"),
            "{file}"
        );
        // In HTML the body is text in a paragraph; in Markdown no line of
        // it starts a position or a heading.
        assert!(
            format == Format::Html
                || !file
                    .lines()
                    .any(|l| l.starts_with("  - Institution 1: **agree**")
                        || l.starts_with("# Heading")),
            "{file}"
        );
        let verified = verify_file(file.as_bytes(), &genesis, &roster)
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(verified.renderer, Some(2));
        // Rendered with the old renderer under a new attestation, it is
        // refused: the version names the renderer.
        let old = crate::report::Renderer::V1.markdown(&briefing.report);
        if format == Format::Markdown {
            let swapped = file.replacen(
                file.split("\n\n<!-- concord-attestation")
                    .next()
                    .unwrap_or_default(),
                old.trim_end(),
                1,
            );
            assert!(matches!(
                verify_file(swapped.as_bytes(), &genesis, &roster),
                Err(VerifyError::Edited { .. })
            ));
        }
    }
}
