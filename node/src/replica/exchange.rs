//! Changes in and out: bundles imported and exported, envelopes from peers
//! through the one verification path, the changes a peer lacks, group
//! commit, and fork evidence kept from an ingest.

use super::*;

impl Replica {
    /// Verifies a bundle and applies all of it or nothing. A fork is refused
    /// and recorded as evidence.
    pub fn import(&mut self, bytes: &[u8]) -> Result<ImportSummary, ReplicaError> {
        let network = self.network_id()?;
        let bundle = Bundle::decode(bytes)?;
        let theirs = Genesis::decode(&bundle.genesis)?;
        if theirs.network_id() != network {
            return Err(ReplicaError::OtherNetwork {
                ours: network.to_string(),
                theirs: theirs.network_id().to_string(),
            });
        }
        let (records, _) = self.add_records(&bundle.records)?;
        // The other side of a fork (a bundle exported where the other
        // version went) proves it; then what the freeze leaves out is left
        // out, and the rest imports.
        let proven = self.forks_in(&bundle.envelopes)?;
        let (envelopes, left_out) = self.without_frozen(bundle.envelopes)?;
        let (mut summary, _) = self.ingest_wire(&envelopes)?;
        summary.records = records.new;
        summary.left_out = left_out;
        summary.forks_proven = proven;
        // A large import is worth a snapshot; a running node saves one when
        // it stops, which covers catch-ups over the network.
        if summary.new >= SNAPSHOT_AFTER {
            self.save_snapshot()?;
        }
        Ok(summary)
    }

    /// Verifies and applies envelopes received from a peer (all or nothing);
    /// returns what was new, for relaying.
    pub fn ingest_wire(
        &mut self,
        wire: &[EnvelopeBytes],
    ) -> Result<(ImportSummary, Vec<EnvelopeBytes>), ReplicaError> {
        let (network, roster) = {
            let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
            (m.genesis.network_id(), m.roster().clone())
        };
        let envelopes = wire
            .iter()
            .enumerate()
            .map(|(index, e)| {
                Envelope::decode(&e.0).map_err(|source| IngestError::Malformed { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (summary, accepted) = self.ingest(envelopes, network, &roster)?;
        Ok((
            summary,
            accepted.iter().map(|e| EnvelopeBytes(e.encode())).collect(),
        ))
    }

    /// Number of changes that count: every author's chain is stored without
    /// gaps, so this is the sum of the chain tips (no scan of the store),
    /// less the stored changes rejected under the roster in force.
    pub fn change_count(&self) -> usize {
        let stored: usize = self.tips.values().map(|s| *s as usize).sum();
        stored - self.invalid.len().min(stored)
    }

    /// Highest stored sequence number per author.
    pub fn tips(&self) -> &Tips {
        &self.tips
    }

    /// The envelopes a node with `have` lacks, in causal order, at most
    /// `max_bytes` of them (but always at least one). `true` when more remain.
    ///
    /// `frozen` holds the node's fork points: it is not sent an author's
    /// changes from its fork point on, which it would refuse.
    pub fn changes_for(
        &mut self,
        have: &Tips,
        frozen: &Frozen,
        max_bytes: usize,
    ) -> Result<(Vec<EnvelopeBytes>, bool), ReplicaError> {
        let wanted = |author: &PublicKey, seq: u64| {
            seq > have.get(author).copied().unwrap_or(0)
                && frozen.get(author).is_none_or(|f| seq < *f)
        };
        let behind = self.tips.iter().any(|(author, seq)| {
            let from = have.get(author).copied().unwrap_or(0) + 1;
            from <= *seq && wanted(author, from)
        });
        if !behind {
            return Ok((Vec::new(), false));
        }
        let log = self.log.get_or_insert_with(|| self.doc.change_log());
        let mut out = Vec::new();
        let mut bytes = 0;
        for &(hash, author, seq) in log.iter() {
            if !wanted(&author, seq) {
                continue;
            }
            let envelope = self.store.envelope(&hash)?.ok_or_else(|| {
                StoreError::Corrupt(format!("change {hash} is in the document but not stored"))
            })?;
            // Stop before the limit, so a chunk never outgrows a message.
            if !out.is_empty() && bytes + envelope.len() > max_bytes {
                return Ok((out, true));
            }
            bytes += envelope.len();
            out.push(EnvelopeBytes(envelope));
        }
        Ok((out, false))
    }

    /// Makes everything stored so far durable (used at shutdown).
    pub fn flush(&self) -> Result<(), ReplicaError> {
        Ok(self.store.flush()?)
    }

    /// Starts a group commit: local writes from now on are stored atomically
    /// but not flushed, until [`Replica::end_group`] flushes them all at
    /// once. The caller must not report any of them written before that.
    pub fn begin_group(&mut self) {
        self.grouping = true;
    }

    /// Whether a group commit is open.
    pub fn in_group(&self) -> bool {
        self.grouping
    }

    /// Ends a group commit with one flush; after `Ok` every write of the
    /// group is durable.
    /// If the flush fails, the group's writes stay in memory (and perhaps in
    /// sled's cache) without being durable: further writes are refused with
    /// [`ReplicaError::NotDurable`] until a flush succeeds.
    pub fn end_group(&mut self) -> Result<(), ReplicaError> {
        self.grouping = false;
        if std::mem::take(&mut self.staged)
            && let Err(e) = self.store.flush()
        {
            self.unflushed = true;
            return Err(ReplicaError::NotDurable(e));
        }
        Ok(())
    }

    /// The shared path for changes from outside (bundles now, peers later).
    pub(super) fn ingest(
        &mut self,
        envelopes: Vec<Envelope>,
        network: NetworkId,
        roster: &Roster,
    ) -> Result<(ImportSummary, Vec<Envelope>), ReplicaError> {
        self.require_durable()?;
        let started = std::time::Instant::now();
        let holding = Holding {
            store: &self.store,
            invalid: &self.invalid,
        };
        let checked = match ingest::check_batch_indexed(
            envelopes,
            network,
            roster,
            &holding,
            &mut self.op_index,
        ) {
            Ok(checked) => checked,
            Err(IngestError::Fork(fork)) => return Err(self.keep_evidence(fork)),
            Err(e) => return Err(e.into()),
        };
        let summary = ImportSummary {
            new: checked.accepted.len(),
            already_known: checked.already_known,
            ..ImportSummary::default()
        };
        if checked.accepted.is_empty() {
            return Ok((summary, Vec::new()));
        }
        let checked_in = started.elapsed();
        let changes: Vec<Change> = checked.accepted.iter().map(|a| a.change.clone()).collect();
        // Apply while the remaining signatures are verified on other cores;
        // store only once both have succeeded. A batch with few of them
        // (every push of a live change) verifies them first, on this
        // thread: starting a thread costs more than it saves.
        let overlap = checked.unchecked.len() >= OVERLAP_VERIFY_MIN;
        if !overlap {
            // Nothing applied yet: a bad signature leaves the document as it was.
            ingest::verify_rest(&checked, network)?;
        }
        let doc = &mut self.doc;
        let (applied, verified) = std::thread::scope(|scope| {
            let verifier = overlap.then(|| scope.spawn(|| ingest::verify_rest(&checked, network)));
            let applied = doc.apply(changes);
            let verified = verifier.map_or(Ok(()), |v| {
                v.join().unwrap_or_else(|_| {
                    Err(IngestError::Malformed {
                        index: 0,
                        source: EnvelopeError::BadChunk("signature check panicked"),
                    })
                })
            });
            (applied, verified)
        });
        let applied_in = started.elapsed();
        let applied = verified
            .map_err(ReplicaError::from)
            .and(applied.map_err(ReplicaError::from))
            .and_then(|()| {
                let batch = checked.accepted.iter().map(|a| (&a.envelope, a.seq));
                if self.grouping {
                    self.store.stage(batch)?;
                    self.staged = true;
                } else {
                    self.store.commit(batch)?;
                }
                Ok(())
            });
        if let Err(e) = applied {
            if matches!(e, ReplicaError::Store(_)) {
                self.unflushed = true;
            }
            self.rebuild()?;
            return Err(e);
        }
        self.op_index.keep();
        for a in &checked.accepted {
            let tip = self.tips.entry(a.envelope.author()).or_insert(0);
            *tip = (*tip).max(a.seq);
        }
        if let Some(log) = &mut self.log {
            log.extend(
                causal_order(&checked.accepted)
                    .into_iter()
                    .map(|a| (a.envelope.hash(), a.envelope.author(), a.seq)),
            );
        }

        tracing::debug!(
            new = summary.new,
            known = summary.already_known,
            checked = ?checked_in,
            applied = ?applied_in - checked_in,
            stored = ?started.elapsed() - applied_in,
            "changes ingested"
        );
        Ok((
            summary,
            checked.accepted.into_iter().map(|a| a.envelope).collect(),
        ))
    }

    /// Keeps one proof of `fork`'s equivocation per (author, sequence
    /// number): the first variant refused is stored; the same one again
    /// changes nothing; any further variant is not stored, and its error
    /// ([`IngestError::ForkAgain`]) has the sender disconnected and banned,
    /// so endless variants of one change cost a node nothing but the ban.
    pub(super) fn keep_evidence(&mut self, fork: Box<ingest::Fork>) -> ReplicaError {
        let author = fork.evidence.author();
        let kept = match self.store.evidence_for(&author, fork.seq) {
            Ok(kept) => kept,
            Err(e) => return e.into(),
        };
        match kept {
            None => {
                tracing::warn!(author = %fork.author, seq = fork.seq, refused = %fork.conflicting, "fork refused and kept as evidence");
                if let Err(e) = self.adopt_fork(&fork) {
                    return e;
                }
                let evidence = Evidence {
                    envelope: fork.evidence.encode(),
                    conflicts_with: fork.existing.0,
                    seq: fork.seq,
                    recorded_at_ms: now_ms(),
                };
                if let Err(e) = self.store.record_evidence(&author, &evidence) {
                    return e.into();
                }
                IngestError::Fork(fork).into()
            }
            Some(kept)
                if Envelope::decode(&kept.envelope).map(|e| e.hash()) == Ok(fork.conflicting) =>
            {
                // Kept before proofs froze forks: freeze now.
                if let Err(e) = self.adopt_fork(&fork) {
                    return e;
                }
                IngestError::Fork(fork).into()
            }
            Some(_) => {
                tracing::warn!(author = %fork.author, seq = fork.seq, refused = %fork.conflicting, "yet another variant of a change already proven forked; not kept");
                IngestError::ForkAgain(fork).into()
            }
        }
    }

    /// A bundle of the genesis and every change not in the causal past of
    /// `since` (all changes when `since` is empty), in causal order.
    pub fn export(&self, since: &[ChangeHash]) -> Result<(Vec<u8>, usize), ReplicaError> {
        let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
        let hashes = self.doc.changes_since(since)?;
        let mut envelopes = Vec::with_capacity(hashes.len());
        for hash in &hashes {
            let bytes = self.store.envelope(hash)?.ok_or_else(|| {
                StoreError::Corrupt(format!("change {hash} is in the document but not stored"))
            })?;
            envelopes.push(EnvelopeBytes(bytes));
        }
        let count = envelopes.len();
        let bundle = Bundle {
            genesis: m.genesis.encode(),
            records: m
                .records
                .values()
                .map(|r| EnvelopeBytes(r.encode()))
                .collect(),
            envelopes,
        };
        Ok((bundle.encode(), count))
    }
}
