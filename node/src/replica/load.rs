//! Loading a replica's state from its store: the roster records, the
//! membership they resolve to (with the fork points of the proofs kept),
//! and the document rebuilt from the changes that count.

use std::collections::{BTreeMap, HashSet};

use automerge::{Change, ChangeHash};

use super::{Membership, ReplicaError};
use crate::doc::{Document, parse_change};
use crate::envelope::Envelope;
use crate::fork::{ForkProof, Frozen};
use crate::genesis::Genesis;
use crate::governance::{Record, RecordId};
use crate::identity::PublicKey;
use crate::ingest::{self, Known};
use crate::model;
use crate::roster::Roster;
use crate::store::{Store, StoreError};
use crate::sync::Tips;

/// Every stored roster record, decoded (they were verified when stored).
pub(super) fn load_records(store: &Store) -> Result<BTreeMap<RecordId, Record>, ReplicaError> {
    store
        .records()?
        .into_iter()
        .map(|bytes| {
            let record = Record::decode(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("roster record: {e}")))?;
            Ok((record.id(), record))
        })
        .collect()
}

/// Rebuilds the document from the store: from the snapshot if there is one
/// saved under the same roster records, plus every envelope past its tips,
/// else from every envelope, in one batch either way. Only changes that count
/// under the roster go in; the rest are returned as invalid. The store holds
/// only envelopes that passed ingest, so they are not re-verified here.
/// Returns the document, the chain tips and the invalid changes.
pub(super) fn load_document(
    store: &Store,
    actor: PublicKey,
    membership: Option<&Membership>,
) -> Result<(Document, Tips, HashSet<ChangeHash>), ReplicaError> {
    let started = std::time::Instant::now();
    let tips: Tips = store.tips()?;
    let roster = membership.map(Membership::roster);
    let digest = membership.map_or([0; 32], Membership::snapshot_key);
    let parse = |hash: &ChangeHash, bytes: &[u8]| -> Result<Change, ReplicaError> {
        let envelope = Envelope::decode(bytes)
            .map_err(|e| StoreError::Corrupt(format!("envelope {hash}: {e}")))?;
        Ok(parse_change(envelope.change_bytes())
            .map_err(|e| StoreError::Corrupt(format!("change {hash}: {e}")))?)
    };
    tracing::debug!(elapsed = ?started.elapsed(), "chain tips read");
    if let Some(snapshot) = store.snapshot()?.filter(|s| s.roster == digest) {
        tracing::debug!(elapsed = ?started.elapsed(), bytes = snapshot.doc.len(), "snapshot read");
        match Document::load(&snapshot.doc, actor) {
            Ok(mut doc) => {
                let saved: Tips = snapshot.tips.into_iter().collect();
                let mut invalid: HashSet<ChangeHash> =
                    snapshot.invalid.into_iter().map(ChangeHash).collect();
                let mut missing = Vec::new();
                for (author, tip) in &tips {
                    for seq in saved.get(author).copied().unwrap_or(0) + 1..=*tip {
                        let hash = store.hash_at(author, seq).ok_or_else(|| {
                            StoreError::Corrupt(format!("chain index lacks change {seq}"))
                        })?;
                        let bytes = store.envelope(&hash)?.ok_or_else(|| {
                            StoreError::Corrupt(format!("change {hash} is indexed but not stored"))
                        })?;
                        missing.push(parse(&hash, &bytes)?);
                    }
                }
                tracing::debug!(elapsed = ?started.elapsed(), missing = missing.len(), "snapshot loaded");
                doc.apply(admit(missing, roster, &mut invalid))?;
                return Ok((doc, tips, invalid));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the snapshot does not load; rebuilding from the envelopes")
            }
        }
    }
    let mut changes = Vec::new();
    for item in store.envelopes() {
        let (hash, bytes) = item?;
        changes.push(parse(&hash, &bytes)?);
    }
    let mut invalid = HashSet::new();
    let mut doc = Document::new(actor);
    doc.apply(admit(changes, roster, &mut invalid))?;
    Ok((doc, tips, invalid))
}

/// Keeps the changes that count under `roster` (their author may write that
/// change number, and none of their dependencies is invalid), in causal
/// order; the others join `invalid`. With no roster, all count.
pub(super) fn admit(
    changes: Vec<Change>,
    roster: Option<&Roster>,
    invalid: &mut HashSet<ChangeHash>,
) -> Vec<Change> {
    let Some(roster) = roster else {
        return changes;
    };
    let author_ok = |c: &Change| {
        <[u8; 32]>::try_from(c.actor_id().to_bytes()).is_ok_and(|a| {
            roster
                .may_write(&PublicKey::from_checked(a), c.seq())
                .is_ok()
        })
    };
    // Fast path: nothing rejected so far and every author in its rights.
    if invalid.is_empty() && changes.iter().all(author_ok) {
        return changes;
    }
    let hashes: Vec<ChangeHash> = changes.iter().map(Change::hash).collect();
    let order = ingest::causal_indices(&hashes, |i| changes[i].deps());
    let mut keep = vec![false; changes.len()];
    for &i in &order {
        let c = &changes[i];
        if author_ok(c) && !c.deps().iter().any(|d| invalid.contains(d)) {
            keep[i] = true;
        } else {
            invalid.insert(hashes[i]);
        }
    }
    changes
        .into_iter()
        .zip(keep)
        .filter_map(|(c, k)| k.then_some(c))
        .collect()
}

/// Importing at least this many changes at once refreshes the snapshot.
pub(super) const SNAPSHOT_AFTER: usize = 1000;

/// Below this many signatures left to verify, an ingest verifies them before
/// it applies the batch instead of beside it on another thread.
pub(super) const OVERLAP_VERIFY_MIN: usize = 64;

/// The accepted changes sorted so every change follows its dependencies in
/// the batch (batches from peers usually arrive sorted).
pub(super) fn causal_order(accepted: &[ingest::Accepted]) -> Vec<&ingest::Accepted> {
    let hashes: Vec<ChangeHash> = accepted.iter().map(|a| a.envelope.hash()).collect();
    ingest::causal_indices(&hashes, |i| accepted[i].change.deps())
        .into_iter()
        .map(|i| &accepted[i])
        .collect()
}

/// `now` if a change may carry it: a node whose clock reads before 2000
/// (a board without a real-time clock boots in 1970) must not sign a
/// change every other node's operation check would refuse, and on which
/// every later change of its chain would then hang.
pub(super) fn signing_time(now: i64) -> Result<i64, ReplicaError> {
    if model::valid_time(now) {
        Ok(now)
    } else {
        Err(ReplicaError::Clock(model::format_time(now)))
    }
}

/// The genesis and roster records in the store, if the node has joined.
pub(super) fn load_membership(store: &Store) -> Result<Option<Membership>, ReplicaError> {
    let Some(bytes) = store.genesis()? else {
        return Ok(None);
    };
    // It was verified when installed: not decoding now means the store is
    // damaged.
    let genesis =
        Genesis::decode(&bytes).map_err(|e| StoreError::Corrupt(format!("stored genesis: {e}")))?;
    let records = load_records(store)?;
    let mut frozen = Frozen::new();
    for bytes in store.fork_proofs()? {
        let proof = ForkProof::decode(&bytes, genesis.network_id())
            .map_err(|e| StoreError::Corrupt(format!("stored fork proof: {e}")))?;
        frozen.insert(proof.author(), proof.seq());
    }
    Ok(Some(Membership::new(genesis, records, frozen)))
}
