//! Replays the fuzz targets' inputs on stable: the seeds built from the
//! fixture network, every committed corpus input (`fuzz/corpus/<target>/`)
//! and single-byte mutations of the seeds, through the same entry points the
//! cargo-fuzz targets call (`fuzz/src/entry.rs`, included by path). So an
//! input that once crashed the node stays a regression test in
//! `cargo test --workspace`, on any toolchain.

#[path = "../../../fuzz/src/entry.rs"]
mod entry;

use std::path::PathBuf;

use sha2::{Digest, Sha256};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn run(target: &str, data: &[u8]) -> entry::Outcome {
    let outcome = entry::run(target, data).unwrap_or_else(|| panic!("no target {target}"));
    if let Err(message) = &outcome {
        assert!(
            !message.trim().is_empty(),
            "{target}: a refusal without a message"
        );
    }
    outcome
}

#[test]
fn every_seed_is_accepted() {
    let seeds = entry::seeds();
    for target in entry::TARGETS {
        assert!(
            seeds.iter().any(|(t, _)| *t == target),
            "no seed for target {target}"
        );
    }
    for (target, data) in seeds {
        assert_eq!(run(target, &data), Ok(()), "seed of {target} refused");
    }
}

/// The file name of a seed in the corpus: `seed-` and the first 16 hex
/// digits of its SHA-256.
fn seed_name(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("seed-{hex}")
}

/// Every seed is in the committed corpus, so a change to the fixture or to a
/// wire format shows here. `CONCORD_WRITE_FUZZ_SEEDS=1` writes the missing
/// ones (then `cargo fuzz cmin` and commit).
#[test]
fn every_seed_is_in_the_committed_corpus() {
    let write = std::env::var_os("CONCORD_WRITE_FUZZ_SEEDS").is_some();
    let mut missing = Vec::new();
    for (target, data) in entry::seeds() {
        let path = corpus_dir(target).join(seed_name(&data));
        if std::fs::read(&path).ok().as_deref() == Some(data.as_slice()) {
            continue;
        }
        if write {
            std::fs::create_dir_all(corpus_dir(target)).expect("create the corpus folder");
            std::fs::write(&path, &data).expect("write a seed");
        } else {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "seeds missing from the corpus (CONCORD_WRITE_FUZZ_SEEDS=1 writes them): {missing:?}"
    );
}

#[test]
fn committed_corpus_replays_without_a_panic() {
    for target in entry::TARGETS {
        let dir = corpus_dir(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus of {target} at {}: {e}", dir.display()));
        let (mut accepted, mut refused) = (0, 0);
        for file in entries {
            let path = file.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("read a corpus input");
            match run(target, &data) {
                Ok(()) => accepted += 1,
                Err(_) => refused += 1,
            }
        }
        assert!(accepted > 0, "{target}: no corpus input is accepted");
        assert!(refused > 0, "{target}: no corpus input is refused");
    }
}

#[test]
fn flipped_bytes_of_the_seeds_are_refused_or_accepted_never_a_panic() {
    for (target, data) in entry::seeds() {
        // At most ~200 positions a seed, spread over all of it.
        let step = (data.len() / 200).max(1);
        for i in (0..data.len()).step_by(step) {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = data.clone();
                bad[i] ^= flip;
                let _ = run(target, &bad);
            }
        }
        for len in (0..data.len()).step_by(step) {
            let _ = run(target, &data[..len]);
        }
    }
}

/// Found by the corpus replay once every accepted input was also read back
/// through every view (`read_everything` in `fuzz/src/entry.rs`): one
/// flipped bit gave member 3's signed note an encoding Automerge parses but
/// never writes. Automerge rebuilds changes from their operations; rebuilt,
/// the note hashed to another change, and reading the item's history then
/// panicked inside Automerge on a dependency it could not find. The
/// operation check now refuses a change whose operations do not encode back
/// to its own bytes.
#[test]
fn a_signed_change_in_an_encoding_automerge_never_writes_is_refused() {
    let message = refused_regression("ingest_signed", "regression-noncanonical-encoding");
    assert!(
        message.contains("is not encoded the way Automerge encodes it"),
        "refused for another reason: {message}"
    );
}

/// Runs the kept input `name` of `target`, which must be refused, and
/// checks the node is left as it was (its seeds are accepted again);
/// returns the refusal.
fn refused_regression(target: &str, name: &str) -> String {
    let path = corpus_dir(target).join(name);
    let data = std::fs::read(&path).expect("read the regression input");
    let message = run(target, &data).expect_err("refused");
    for (target, data) in entry::seeds() {
        assert_eq!(
            run(target, &data),
            Ok(()),
            "seed of {target} after the refusal"
        );
    }
    message
}

/// Found by `ingest_signed` (a one-bit mutation of member 3's signed note):
/// a change whose insert into the note's list of assessments names the note
/// (a map) as its object. Automerge 0.12 applied it with its op set out of
/// order: with debug assertions its own check panicked, and in a release
/// build it was applied silently. The node's operation check
/// (`concord_node::opcheck`) now refuses it in every build, before Automerge
/// sees it, and names the operation.
#[test]
fn a_signed_change_that_breaks_automerges_op_order_is_refused() {
    let message = refused_regression("ingest_signed", "regression-automerge-op-order");
    assert!(
        message.contains("Automerge could have made")
            && message.contains("addresses a map by list element"),
        "refused for another reason: {message}"
    );
}
