//! The engine's part in finding and settling forks (see [`crate::fork`]):
//! what a pull's answer carries besides envelopes, taking a peer's proofs
//! and versions, comparing a peer's tips with ours, and pushing proofs.

use super::*;

impl<T: Transport> Engine<T> {
    /// The answer to a pull: first the proofs of forks the puller lacks,
    /// then our versions where its tips name other hashes, then the
    /// envelopes it lacks, all within one message's size target (the
    /// envelopes wait for the next pull when the others fill it).
    pub(super) fn changes_answer(
        &mut self,
        have: &[ChainTip],
        theirs: &Tips,
        their_frozen: &Frozen,
        records_differ: bool,
    ) -> Result<sync::Response, ReplicaError> {
        let proofs = self.replica.proofs_for(their_frozen, RESPONSE_TARGET_LEN)?;
        let used: usize = proofs.iter().map(|p| p.0.len()).sum();
        let versions = self
            .replica
            .versions_for(have, RESPONSE_TARGET_LEN.saturating_sub(used))?;
        let used = used + versions.iter().map(|v| v.0.len()).sum::<usize>();
        let (envelopes, more) = if used == 0 {
            self.replica
                .changes_for(theirs, their_frozen, RESPONSE_TARGET_LEN)?
        } else {
            // Proofs and versions change what the puller holds and counts:
            // it pulls again for the rest.
            (Vec::new(), true)
        };
        Ok(sync::Response::Changes {
            records: if records_differ {
                self.replica.records_wire()
            } else {
                Vec::new()
            },
            envelopes,
            more,
            have: self.replica.wire_tips(),
            frozen: frozen_to_wire(self.replica.frozen()),
            proofs,
            versions,
        })
    }

    /// Takes a peer's fork proofs and versions (before its records'
    /// envelopes, which the new fork points may concern); new proofs are
    /// relayed to every other peer. `Err` (a refusal reason) when the peer
    /// sent a proof or version that does not verify.
    pub(super) fn take_forks(
        &mut self,
        peer: T::Peer,
        proofs: &[ProofBytes],
        versions: &[EnvelopeBytes],
        now: Instant,
    ) -> Result<(), String> {
        if proofs.is_empty() && versions.is_empty() {
            return Ok(());
        }
        let mut new = Vec::new();
        for result in [
            self.replica.adopt_proofs(proofs),
            self.replica.take_versions(versions),
        ] {
            match result {
                Ok(adopted) => new.extend(adopted),
                Err(
                    e @ (ReplicaError::Fork(_)
                    | ReplicaError::Ingest(_)
                    | ReplicaError::Envelope(_)),
                ) => {
                    tracing::warn!(%peer, error = %e, "peer sent an invalid fork proof or version; disconnecting");
                    return Err(e.to_string());
                }
                Err(e) => {
                    tracing::error!(%peer, error = %e, "cannot keep a fork proof");
                    return Ok(());
                }
            }
        }
        if !new.is_empty() {
            self.transport.changed();
            // What counts here changed: every peer gets the proofs (the
            // sender too, when the versions were its own), and we pull
            // again from the sender.
            let except = if versions.is_empty() {
                Some(peer)
            } else {
                None
            };
            self.push_forks_except(except, new);
            self.start_pull(peer, now);
        }
        Ok(())
    }

    /// After an answer or acknowledgement: where the peer's tips name
    /// another hash for a change we hold, send it our version; and send it
    /// the proofs it lacks.
    pub(super) fn compare_forks(&mut self, peer: T::Peer, have: &[ChainTip]) {
        let their_frozen = self
            .peers
            .get(&peer)
            .and_then(|s| s.frozen.clone())
            .unwrap_or_default();
        let proofs = self.replica.proofs_for(&their_frozen, usize::MAX);
        let versions = self.replica.versions_for(have, usize::MAX);
        match (proofs, versions) {
            (Ok(proofs), Ok(versions)) => {
                if !versions.is_empty() {
                    tracing::warn!(%peer, versions = versions.len(), "peer holds other versions of changes we hold; sending ours to prove the fork");
                }
                self.push_forks(Some(peer), proofs, versions);
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(%peer, error = %e, "cannot read fork proofs or versions")
            }
        }
    }

    /// Every connected peer but `except`.
    pub(super) fn connected_except(&self, except: Option<T::Peer>) -> Vec<T::Peer> {
        self.peers
            .iter()
            .filter(|(p, s)| s.connected && Some(**p) != except)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Pushes proofs to every connected peer but `except`.
    pub(super) fn push_forks_except(&mut self, except: Option<T::Peer>, proofs: Vec<ProofBytes>) {
        let targets = self.connected_except(except);
        for target in targets {
            self.push_forks(Some(target), proofs.clone(), Vec::new());
        }
    }

    /// Pushes proofs and versions to `peer` (or, with `None`, to every
    /// connected peer), in messages within the size target.
    pub(super) fn push_forks(
        &mut self,
        peer: Option<T::Peer>,
        proofs: Vec<ProofBytes>,
        versions: Vec<EnvelopeBytes>,
    ) {
        if proofs.is_empty() && versions.is_empty() {
            return;
        }
        let Some(peer) = peer else {
            self.push_forks_except(None, proofs);
            return;
        };
        if !self.peers.get(&peer).is_some_and(|s| s.connected) {
            return;
        }
        let mut items: Vec<(bool, Vec<u8>)> = proofs
            .into_iter()
            .map(|p| (true, p.0))
            .chain(versions.into_iter().map(|v| (false, v.0)))
            .collect();
        while !items.is_empty() {
            let mut take = 0;
            let mut bytes = 0;
            while take < items.len()
                && (take == 0 || bytes + items[take].1.len() <= RESPONSE_TARGET_LEN)
            {
                bytes += items[take].1.len();
                take += 1;
            }
            let rest = items.split_off(take);
            let (mut proofs, mut versions) = (Vec::new(), Vec::new());
            for (is_proof, bytes) in std::mem::replace(&mut items, rest) {
                if is_proof {
                    proofs.push(ProofBytes(bytes));
                } else {
                    versions.push(EnvelopeBytes(bytes));
                }
            }
            if let Some(state) = self.peers.get_mut(&peer) {
                state.in_flight += 1;
            }
            let request = sync::Request::Push {
                network: self.network,
                records: Vec::new(),
                envelopes: Vec::new(),
                proofs,
                versions,
            };
            self.transport.send(peer, Purpose::Push, request);
        }
    }
}
