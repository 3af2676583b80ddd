//! The roster as a replica changes it: records taken from peers and
//! bundles, proposals and approvals (each approval checking the claims it
//! signs), and key rotation with what it carries over.

use super::*;

impl Replica {
    /// Verifies roster records (from a peer or a bundle) and stores the new
    /// ones, all or nothing. A record must name this network, carry valid
    /// signatures, and be signed by a key that is or was on the roster (the
    /// roster as these very records may extend it). If the roster's write
    /// rights change, the document is rebuilt from the stored changes that
    /// count under the new roster: it stays a function of (changes, records),
    /// whatever order they arrived in. Returns what was new, for relaying.
    pub fn add_records(
        &mut self,
        wire: &[EnvelopeBytes],
    ) -> Result<(RecordsSummary, Vec<EnvelopeBytes>), ReplicaError> {
        let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
        let network = m.genesis.network_id();
        let mut fresh: Vec<Record> = Vec::new();
        for bytes in wire {
            let record = Record::decode(&bytes.0)?;
            record.check_network(network)?;
            if !m.records.contains_key(&record.id()) && !fresh.iter().any(|r| r.id() == record.id())
            {
                fresh.push(record);
            }
        }
        if fresh.is_empty() {
            return Ok((RecordsSummary::default(), Vec::new()));
        }
        // Only records signed by a known key are held (see
        // `governance::admit`); the others are left out, not refused: they
        // may come again once their signer is known.
        let candidates: Vec<Record> = m.records.values().cloned().chain(fresh).collect();
        let offered = candidates.len();
        let admitted = governance::admit(&m.genesis, candidates);
        let accepted: Vec<Record> = admitted
            .iter()
            .filter(|r| !m.records.contains_key(&r.id()))
            .cloned()
            .collect();
        if admitted.len() < offered {
            tracing::debug!(
                left_out = offered - admitted.len(),
                "roster records signed by keys not known yet were left out"
            );
        }
        if accepted.is_empty() {
            return Ok((RecordsSummary::default(), Vec::new()));
        }
        let mut all = m.records.clone();
        for r in &accepted {
            all.insert(r.id(), r.clone());
        }
        let rows: Vec<([u8; 32], Vec<u8>)> =
            accepted.iter().map(|r| (r.id().0, r.encode())).collect();
        let before = m.roster().clone();
        let next = Membership::new(m.genesis.clone(), all, m.frozen.clone());
        let summary = RecordsSummary {
            new: accepted.len(),
            roster_changed: &before != next.roster(),
        };
        // Rebuild only when some stored author's rights moved; into
        // temporaries, before anything is stored, so a failed rebuild leaves
        // the store, the records and the document as they were.
        let moved = self
            .tips
            .keys()
            .any(|author| before.spans(author) != next.roster().spans(author));
        let rebuilt = if moved {
            tracing::info!("write rights changed; rebuilding the document from the store");
            Some(load_document(
                &self.store,
                self.identity.public(),
                Some(&next),
            )?)
        } else {
            None
        };
        self.require_durable()?;
        if let Err(e) = self.store.add_records(&rows) {
            self.unflushed = true;
            return Err(e.into());
        }
        self.membership = Some(next);
        if let Some((doc, tips, invalid)) = rebuilt {
            self.doc = doc;
            self.tips = tips;
            self.invalid = invalid;
            self.log = None;
            self.op_index.clear();
            // The snapshot only speeds up the next start; without it the
            // next start rebuilds from the envelopes.
            if let Err(e) = self.save_snapshot() {
                tracing::warn!(error = %e, "cannot save the rebuilt document's snapshot");
            }
        }
        Ok((
            summary,
            rows.into_iter().map(|(_, b)| EnvelopeBytes(b)).collect(),
        ))
    }

    /// What this node had seen of `target`'s chain: its highest change number
    /// that counts here (0 for none).
    pub(super) fn seen_of(&self, target: Option<PublicKey>) -> Seen {
        Seen {
            heads: self.doc.heads().iter().map(|h| h.0).collect(),
            target_tip: target.map_or(0, |key| self.held_tip(&key)),
        }
    }

    /// The highest change number of `key` that counts here (0 for none):
    /// what this node would claim of its chain in a roster record.
    pub fn held_tip(&self, key: &PublicKey) -> u64 {
        let mut seq = self.tips.get(key).copied().unwrap_or(0);
        while seq > 0
            && self
                .store
                .hash_at(key, seq)
                .is_some_and(|h| self.invalid.contains(&h))
        {
            seq -= 1;
        }
        seq
    }

    pub(super) fn require_member(&self) -> Result<(&Membership, NetworkId), ReplicaError> {
        let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
        if self.resyncing {
            return Err(ReplicaError::Resyncing);
        }
        if !m.roster().is_member(&self.identity.public()) {
            return Err(ReplicaError::NotAMember);
        }
        Ok((m, m.genesis.network_id()))
    }

    /// Proposes a roster change, signed by this member (its first approval).
    pub fn propose(&mut self, op: Op) -> Result<RecordId, ReplicaError> {
        let (m, network) = self.require_member()?;
        check_fits(&op, m.roster())?;
        let body = Body::Propose {
            network,
            proposer: self.identity.public(),
            after: m.governance.head(),
            seen: self.seen_of(op.target()),
            op,
            at_ms: now_ms(),
        };
        let record = Record::sign(body, &[&self.identity])?;
        self.add_records(&[EnvelopeBytes(record.encode())])?;
        Ok(record.id())
    }

    /// Approves a pending proposal, named by its id or a unique prefix.
    /// Refused when the proposal's claim about its target's chain (its
    /// cut-off) is not what this node holds, unless `confirm_claims`.
    pub fn approve(
        &mut self,
        prefix: &str,
        confirm_claims: bool,
    ) -> Result<RecordId, ReplicaError> {
        let (m, network) = self.require_member()?;
        let motion = find_motion(&m.governance, prefix)?;
        let MotionKind::Proposal { op, .. } = &motion.kind else {
            return Err(ReplicaError::UnknownProposal(prefix.to_string()));
        };
        match &motion.standing {
            Standing::Pending { .. } => {}
            Standing::Applied { .. } => {
                return Err(ReplicaError::ProposalSettled {
                    id: motion.id.short(),
                    state: "already in force".into(),
                });
            }
            Standing::Void { reason } => {
                return Err(ReplicaError::ProposalSettled {
                    id: motion.id.short(),
                    state: format!("void: {reason}"),
                });
            }
        }
        if motion.signers.contains(&self.identity.public()) {
            return Err(ReplicaError::AlreadySigned(motion.id.short()));
        }
        let seen = self.seen_of(op.target());
        if let (Some(target), false) = (op.target(), confirm_claims) {
            let name = m.roster().display_name(&target);
            let claimed = motion.seen.target_tip;
            governance::check_claim(motion.id, op, &name, claimed, seen.target_tip)?;
        }
        let body = Body::Approve {
            network,
            approver: self.identity.public(),
            proposal: motion.id,
            seen,
            at_ms: now_ms(),
        };
        let record = Record::sign(body, &[&self.identity])?;
        let id = motion.id;
        self.add_records(&[EnvelopeBytes(record.encode())])?;
        Ok(id)
    }

    /// Replaces this node's key: a new key is made, a succession signed by
    /// the old and the new key is stored, the new key file is installed (the
    /// old one is kept beside it, renamed) and the node writes as the new key
    /// from now on. Returns the new identity's summary.
    pub fn rotate_key(&mut self) -> Result<IdentitySummary, ReplicaError> {
        let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
        let me = self.identity.public();
        if m.roster().get(&me).is_none() {
            return Err(ReplicaError::NotOnRoster {
                node_id: self.identity.node_id().to_string(),
                network: m.genesis.network_id().to_string(),
            });
        }
        let new = Identity::generate()?;
        let body = Body::Succeed {
            network: m.genesis.network_id(),
            old: me,
            new: new.public(),
            after: m.governance.head(),
            seen: self.seen_of(Some(me)),
            at_ms: now_ms(),
        };
        let record = Record::sign(body, &[&self.identity, &new])?;
        // New key first, beside the old one; then the record; then swap.
        let key_file = self.dir.key_file();
        let staged = key_file.with_extension("key.new");
        if staged.exists() {
            fs::remove_file(&staged).map_err(|source| ReplicaError::Io {
                path: staged.clone(),
                source,
            })?;
        }
        new.save_new(&staged)?;
        self.add_records(&[EnvelopeBytes(record.encode())])?;
        let retired = retired_key_file(&key_file, &me);
        fs::rename(&key_file, &retired)
            .and_then(|()| fs::rename(&staged, &key_file))
            .map_err(|source| ReplicaError::Io {
                path: key_file.clone(),
                source,
            })?;
        self.identity = new;
        self.doc.set_actor(self.identity.public());
        self.log = None;
        tracing::info!(old = %me.node_id(), new = %self.identity.node_id(), "key rotated");
        // The new key was made here and has signed nothing.
        self.mark_chain_known()?;
        match self.carry_over(me) {
            Ok(None) => {}
            Ok(Some(c)) => tracing::warn!(
                changes = c.changes,
                written = c.written,
                operations = c.replayed,
                left_behind = c.left_behind,
                "changes of the old key that no longer counted were written again under the new key"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot carry the old key's uncounted changes over")
            }
        }
        self.resign_pending(me);
        Ok(summary(&self.identity, &self.config))
    }

    /// Signs again, with this node's current key, every pending proposal
    /// its previous key `old` had signed: only current members' signatures
    /// count, so a rotation would otherwise drop the institution's pending
    /// proposals and approvals. The old key vouched for each claim already.
    pub(super) fn resign_pending(&mut self, old: PublicKey) {
        let Some(m) = self.membership.as_ref() else {
            return;
        };
        let pending: Vec<String> = m
            .governance
            .motions
            .values()
            .filter(|motion| {
                matches!(motion.standing, Standing::Pending { .. })
                    && matches!(motion.kind, MotionKind::Proposal { .. })
                    && motion.signers.contains(&old)
            })
            .map(|motion| motion.id.to_hex())
            .collect();
        for id in pending {
            match self.approve(&id, true) {
                Ok(_) => {
                    tracing::info!(proposal = %id, "pending proposal signed again under the new key")
                }
                Err(e) => {
                    tracing::warn!(proposal = %id, error = %e, "cannot sign a pending proposal again under the new key")
                }
            }
        }
    }
}
