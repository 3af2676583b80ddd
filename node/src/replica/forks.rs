//! Forks as a replica holds them: the proofs it keeps (one per author, the
//! lowest fork point known), the tips it shows peers (for a frozen author,
//! the last change that counts), the versions and proofs a peer lacks, and
//! adopting a proof, which freezes its author and rebuilds the document
//! without the author's changes from the fork point on (see
//! [`crate::fork`]).

use automerge::ChangeHash;

use super::{Membership, Replica, ReplicaError, load_document};
use crate::bundle::EnvelopeBytes;
use crate::envelope::{Envelope, change_header};
use crate::fork::{ForkProof, Frozen, ProofBytes};
use crate::ingest::{self, IngestError, Known};
use crate::store::StoreError;
use crate::sync::{ChainTip, Tips};

impl Replica {
    /// Every author proven to have forked, and its fork point.
    pub fn frozen(&self) -> &Frozen {
        static NONE: Frozen = Frozen::new();
        self.membership.as_ref().map_or(&NONE, |m| &m.frozen)
    }

    /// The tips as peers compare them: per author, the highest stored change
    /// number that counts (below its fork point, for a frozen author; below
    /// the changes a removal or a frozen dependency took out, for others).
    pub fn counting_tips(&self) -> Tips {
        let frozen = self.frozen();
        self.tips
            .keys()
            .map(|author| {
                let held = self.held_tip(author);
                let seq = frozen
                    .get(author)
                    .map_or(held, |f| held.min(f.saturating_sub(1)));
                (*author, seq)
            })
            .filter(|(_, seq)| *seq > 0)
            .collect()
    }

    /// [`Replica::counting_tips`] with the hash of each tip's change.
    pub fn wire_tips(&self) -> Vec<ChainTip> {
        self.counting_tips()
            .into_iter()
            .filter_map(|(author, seq)| {
                let hash = self.store.hash_at(&author, seq)?;
                Some(ChainTip {
                    author,
                    seq,
                    hash: hash.0,
                })
            })
            .collect()
    }

    /// This node's version of each change at a peer's tips where the hash
    /// differs: given to the peer, it makes a proof of the fork. At most
    /// `max_bytes` of them (but at least one).
    pub fn versions_for(
        &self,
        theirs: &[ChainTip],
        max_bytes: usize,
    ) -> Result<Vec<EnvelopeBytes>, ReplicaError> {
        let mut out: Vec<EnvelopeBytes> = Vec::new();
        let mut bytes = 0;
        for tip in theirs {
            let Some(ours) = self.store.hash_at(&tip.author, tip.seq) else {
                continue;
            };
            if ours.0 == tip.hash {
                continue;
            }
            let envelope = self.store.envelope(&ours)?.ok_or_else(|| {
                StoreError::Corrupt(format!("change {ours} is indexed but not stored"))
            })?;
            if !out.is_empty() && bytes + envelope.len() > max_bytes {
                break;
            }
            bytes += envelope.len();
            out.push(EnvelopeBytes(envelope));
        }
        Ok(out)
    }

    /// The proofs of the forks a peer with fork points `theirs` does not
    /// know, or knows only at a higher change number; at most `max_bytes`
    /// of them (but at least one).
    pub fn proofs_for(
        &self,
        theirs: &Frozen,
        max_bytes: usize,
    ) -> Result<Vec<ProofBytes>, ReplicaError> {
        let wanted = crate::fork::lower_than(self.frozen(), theirs);
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let network = self.network_id()?;
        let mut out: Vec<ProofBytes> = Vec::new();
        let mut bytes = 0;
        for stored in self.store.fork_proofs()? {
            let proof = ForkProof::decode(&stored, network)
                .map_err(|e| StoreError::Corrupt(format!("stored fork proof: {e}")))?;
            if !wanted.contains(&proof.author()) {
                continue;
            }
            if !out.is_empty() && bytes + stored.len() > max_bytes {
                break;
            }
            bytes += stored.len();
            out.push(ProofBytes(stored));
        }
        Ok(out)
    }

    /// Verifies fork proofs from a peer or a bundle and adopts those lower
    /// than what this node knows. A proof about a key the roster does not
    /// know is left out without blame (it may become known); a proof that
    /// does not verify is an error naming it. Returns the proofs adopted,
    /// for relaying.
    pub fn adopt_proofs(&mut self, wire: &[ProofBytes]) -> Result<Vec<ProofBytes>, ReplicaError> {
        if wire.is_empty() {
            return Ok(Vec::new());
        }
        let network = self.network_id()?;
        let proofs = wire
            .iter()
            .map(|p| ForkProof::decode(&p.0, network))
            .collect::<Result<Vec<_>, _>>()?;
        self.adopt(proofs)
    }

    /// Takes a peer's versions of changes it saw this node hold with another
    /// hash: each one that differs from the stored change of its author and
    /// number makes a proof, adopted as [`Replica::adopt_proofs`] does.
    /// Versions of changes this node does not hold, or holds as they are,
    /// say nothing and are left out unchecked; a differing version that is
    /// not validly signed by its author is an error.
    pub fn take_versions(
        &mut self,
        wire: &[EnvelopeBytes],
    ) -> Result<Vec<ProofBytes>, ReplicaError> {
        if wire.is_empty() {
            return Ok(Vec::new());
        }
        let network = self.network_id()?;
        let mut proofs = Vec::new();
        for (index, bytes) in wire.iter().enumerate() {
            let theirs = Envelope::decode(&bytes.0)
                .map_err(|source| IngestError::Malformed { index, source })?;
            if !self.roster()?.knows(&theirs.author()) {
                continue;
            }
            // The cheap checks first: only a version that differs from a
            // change held here costs signature checks (in the proof), so a
            // message of versions that say nothing costs a lookup each.
            let seq = change_header(theirs.change_bytes())?.seq;
            let Some(ours) = self
                .store
                .hash_at(&theirs.author(), seq)
                .filter(|ours| *ours != theirs.hash())
            else {
                continue;
            };
            let ours = self.stored_envelope(&ours)?;
            proofs.push(ForkProof::new(ours, theirs, network)?);
        }
        self.adopt(proofs)
    }

    /// Turns an ingest's fork (a stored change and a refused one with the
    /// same author and number) into a proof and adopts it.
    pub(super) fn adopt_fork(&mut self, fork: &ingest::Fork) -> Result<(), ReplicaError> {
        let network = self.network_id()?;
        if !self.store.has_change(&fork.existing) {
            // Both versions came in one batch, which is refused whole: the
            // sender gets nothing stored, and there is no stored version to
            // prove the fork with.
            return Ok(());
        }
        let ours = self.stored_envelope(&fork.existing)?;
        let proof = ForkProof::new(ours, fork.evidence.clone(), network)?;
        self.adopt(vec![proof]).map(|_| ())
    }

    fn stored_envelope(&self, hash: &ChangeHash) -> Result<Envelope, ReplicaError> {
        let bytes = self.store.envelope(hash)?.ok_or_else(|| {
            StoreError::Corrupt(format!("change {hash} is indexed but not stored"))
        })?;
        Ok(Envelope::decode(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("envelope {hash}: {e}")))?)
    }

    /// Keeps the proofs that lower a fork point of a known author: the
    /// document is rebuilt under the new fork points into temporaries first,
    /// then the proofs are stored, then both take effect, so a failure
    /// leaves everything as it was.
    fn adopt(&mut self, proofs: Vec<ForkProof>) -> Result<Vec<ProofBytes>, ReplicaError> {
        let m = self
            .membership
            .as_ref()
            .ok_or(super::ReplicaError::NoNetwork)?;
        let mut frozen = m.frozen.clone();
        let mut lower: Vec<ForkProof> = Vec::new();
        for proof in proofs {
            let author = proof.author();
            if !m.roster().knows(&author) {
                continue;
            }
            if frozen.get(&author).is_some_and(|f| *f <= proof.seq()) {
                continue;
            }
            frozen.insert(author, proof.seq());
            lower.retain(|p| p.author() != author);
            lower.push(proof);
        }
        if lower.is_empty() {
            return Ok(Vec::new());
        }
        let next = Membership::new(m.genesis.clone(), m.records.clone(), frozen);
        for proof in &lower {
            tracing::warn!(
                author = %proof.author().node_id(),
                name = %next.roster().display_name(&proof.author()),
                seq = proof.seq(),
                "fork proven: the author signed two different changes with this number; its changes from this number on no longer count"
            );
        }
        let (doc, tips, invalid) = load_document(&self.store, self.identity.public(), Some(&next))?;
        self.require_durable()?;
        let encoded: Vec<ProofBytes> = lower.iter().map(ForkProof::encode).collect();
        for (proof, bytes) in lower.iter().zip(&encoded) {
            if let Err(e) = self.store.put_fork_proof(&proof.author(), &bytes.0) {
                self.unflushed = true;
                return Err(e.into());
            }
        }
        self.membership = Some(next);
        self.doc = doc;
        self.tips = tips;
        self.invalid = invalid;
        self.log = None;
        self.op_index.clear();
        self.checkpoint_memo = Default::default();
        Ok(encoded)
    }
}

/// What carrying an old key's uncounted changes over did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarryReport {
    /// The old key's stored changes that did not count.
    pub changes: usize,
    /// New changes written with their effect.
    pub written: usize,
    /// Operations replayed, and operations on objects no longer there.
    pub replayed: usize,
    pub left_behind: usize,
}

impl Replica {
    /// Writes again, under this node's current key, the effect of every
    /// stored change of `old` (this institution's previous key) that does not
    /// count: changes built on a version a fork froze, or on another change
    /// taken out of the document. `None` when there were none. See
    /// [`crate::doc::Carried`] for what can be carried.
    pub(super) fn carry_over(
        &mut self,
        old: crate::identity::PublicKey,
    ) -> Result<Option<CarryReport>, ReplicaError> {
        let tip = self.tips.get(&old).copied().unwrap_or(0);
        let mut lost = Vec::new();
        for seq in 1..=tip {
            let Some(hash) = self.store.hash_at(&old, seq) else {
                continue;
            };
            if !self.invalid.contains(&hash) {
                continue;
            }
            let envelope = self.stored_envelope(&hash)?;
            lost.push(
                crate::doc::parse_change(envelope.change_bytes())
                    .map_err(|e| StoreError::Corrupt(format!("change {hash}: {e}")))?,
            );
        }
        if lost.is_empty() {
            return Ok(None);
        }
        let mut carried = crate::doc::Carried::default();
        let mut written = 0;
        for change in &lost {
            let result = self.write(|doc, now| {
                doc.carry(change, &mut carried, now)?
                    .ok_or(crate::doc::DocError::NothingToChange)
            });
            match result {
                Ok(_) => written += 1,
                Err(ReplicaError::Doc(crate::doc::DocError::NothingToChange)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(CarryReport {
            changes: lost.len(),
            written,
            replayed: carried.replayed,
            left_behind: carried.left_behind,
        }))
    }
}

impl Replica {
    /// When this node's own chain ends in changes that do not count (built
    /// on a change a fork froze or a removal took out): the first of them.
    /// The node writes nothing more under this key until it is rotated, and
    /// the rotation carries them over.
    pub fn tainted_from(&self) -> Option<u64> {
        let me = self.identity.public();
        let stored = self.tips.get(&me).copied().unwrap_or(0);
        let counting = self.counting_tips().get(&me).copied().unwrap_or(0);
        (stored > counting).then_some(counting + 1)
    }
}

impl Replica {
    /// Proves every fork a batch shows: an envelope whose author and number
    /// this node holds with another hash. Only those envelopes are verified
    /// here (the rest are verified as they are ingested). Returns how many
    /// proofs were adopted.
    pub(super) fn forks_in(&mut self, wire: &[EnvelopeBytes]) -> Result<usize, ReplicaError> {
        let network = self.network_id()?;
        let mut proofs = Vec::new();
        for bytes in wire {
            // Anything that is not a valid other version is left to the
            // ingest, which refuses it naming what is wrong.
            let Ok(envelope) = Envelope::decode(&bytes.0) else {
                continue;
            };
            let Ok(header) = change_header(envelope.change_bytes()) else {
                continue;
            };
            let Some(held) = self
                .store
                .hash_at(&envelope.author(), header.seq)
                .filter(|held| *held != envelope.hash())
            else {
                continue;
            };
            if !self.roster()?.knows(&envelope.author()) {
                continue;
            }
            if let Ok(proof) = ForkProof::new(self.stored_envelope(&held)?, envelope, network) {
                proofs.push(proof);
            }
        }
        Ok(self.adopt(proofs)?.len())
    }

    /// Splits off the envelopes that cannot count here because their
    /// author is frozen from their number on, and those that build on them
    /// (by the dependencies in their headers, within the batch). Returns the
    /// rest, in order, and how many were left out.
    pub(super) fn without_frozen(
        &self,
        wire: Vec<EnvelopeBytes>,
    ) -> Result<(Vec<EnvelopeBytes>, usize), ReplicaError> {
        let frozen = self.frozen();
        if frozen.is_empty() {
            return Ok((wire, 0));
        }
        let mut dropped: std::collections::HashSet<ChangeHash> = Default::default();
        let parsed: Vec<Option<(ChangeHash, crate::envelope::ChangeHeader, bool)>> = wire
            .iter()
            .map(|bytes| {
                let envelope = Envelope::decode(&bytes.0).ok()?;
                let header = change_header(envelope.change_bytes()).ok()?;
                let forked = frozen
                    .get(&envelope.author())
                    .is_some_and(|f| header.seq >= *f);
                Some((envelope.hash(), header, forked))
            })
            .collect();
        // To a fixed point: a batch need not be in causal order.
        loop {
            let before = dropped.len();
            for (hash, header, forked) in parsed.iter().flatten() {
                if !dropped.contains(hash)
                    && (*forked || header.deps.iter().any(|d| dropped.contains(d)))
                {
                    dropped.insert(*hash);
                }
            }
            if dropped.len() == before {
                break;
            }
        }
        let left_out = dropped.len();
        let kept = wire
            .into_iter()
            .zip(&parsed)
            .filter(|(_, p)| !p.as_ref().is_some_and(|(h, _, _)| dropped.contains(h)))
            .map(|(bytes, _)| bytes)
            .collect();
        Ok((kept, left_out))
    }
}
