//! Checkpoints, the briefing and an item's history, as a replica reads
//! them.

use super::*;

/// Checkpoints, briefings and item histories.
impl Replica {
    /// Signs a checkpoint (see [`checkpoint::plan`] for which one); returns
    /// its id and the change that carries the signature.
    pub fn sign_checkpoint(
        &mut self,
        target: Option<&str>,
    ) -> Result<(String, ChangeHash), ReplicaError> {
        let network = self.require_writer()?;
        let roster = self.roster()?.clone();
        let subject = checkpoint::plan(
            &self.doc,
            network,
            &roster,
            self.identity.public(),
            target,
            &mut self.checkpoint_memo,
        )?;
        let (key, entry) = checkpoint::entry(&self.identity, &subject);
        let change = self.write(|doc, now| doc.put_checkpoint(&key, &entry, now))?;
        Ok((subject.id(), change))
    }

    /// Every checkpoint and how far it is attested.
    pub fn checkpoints(&mut self) -> Result<Checkpoints, ReplicaError> {
        let network = self.network_id()?;
        let roster = self.roster()?.clone();
        Ok(checkpoint::list(
            &self.doc,
            network,
            &roster,
            &mut self.checkpoint_memo,
        ))
    }

    /// The briefing for `round`, at checkpoint `target` or the current state.
    pub fn briefing(
        &mut self,
        round: Option<model::Round>,
        target: Option<&str>,
    ) -> Result<Briefing, ReplicaError> {
        let genesis = self.genesis().ok_or(ReplicaError::NoNetwork)?.clone();
        let roster = self.roster()?.clone();
        let mut briefing = checkpoint::briefing(
            &self.doc,
            &genesis,
            &roster,
            round,
            target,
            &mut self.checkpoint_memo,
        )?;
        // With its roster records an attested report checks out offline
        // under the roster it was signed in, not only the founding one.
        if let Some(attestation) = &mut briefing.attestation {
            attestation.records = self
                .records_wire()
                .iter()
                .map(|r| data_encoding::BASE64.encode(&r.0))
                .collect();
        }
        Ok(briefing)
    }

    /// Every change that touched item `id`, each stored signature verified.
    pub fn history(&self, id: &str) -> Result<History, ReplicaError> {
        let network = self.network_id()?;
        let roster = self.roster()?;
        let check = |hash: &ChangeHash| -> Result<(), String> {
            let bytes = self
                .store
                .envelope(hash)
                .map_err(|e| e.to_string())?
                .ok_or("not in the store")?;
            let envelope = Envelope::decode(&bytes).map_err(|e| e.to_string())?;
            envelope.verify(network).map_err(|e| e.to_string())?;
            if self.invalid.contains(hash) {
                return Err("rejected under the roster in force".into());
            }
            Ok(())
        };
        history::of(&self.doc, id, roster, check)
            .ok_or_else(|| ReplicaError::UnknownItem(id.to_string()))
    }
}
