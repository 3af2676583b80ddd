//! `concord verify`: every stored envelope checked again, and a report per
//! author of what counts, what the roster rejects and what is flagged.

use super::*;

impl Replica {
    /// Re-verifies every stored envelope and reports per author: which
    /// changes count, which the roster rejects and why, and which are
    /// flagged (accepted from a key that has left, yet dated after it left).
    pub fn audit(&self) -> Result<Audit, ReplicaError> {
        let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
        let roster = m.roster();
        let network = m.genesis.network_id();
        let mut authors: BTreeMap<PublicKey, AuthorAudit> = BTreeMap::new();
        let mut problems = Vec::new();
        let mut rejections = Vec::new();
        let mut flags = Vec::new();
        let mut envelopes = Vec::new();
        for item in self.store.envelopes() {
            let (key_hash, bytes) = item?;
            match Envelope::decode(&bytes) {
                Ok(e) if e.hash() == key_hash => envelopes.push(e),
                Ok(e) => problems.push(Problem {
                    change: key_hash.to_string(),
                    author: e.author().node_id().to_string(),
                    problem: format!(
                        "stored under the wrong hash (content hashes to {})",
                        e.hash()
                    ),
                }),
                Err(err) => problems.push(Problem {
                    change: key_hash.to_string(),
                    author: String::new(),
                    problem: format!("stored envelope does not decode: {err}"),
                }),
            }
        }
        let total = envelopes.len() + problems.len();
        for envelope in &envelopes {
            let author = envelope.author();
            let entry = authors.entry(author).or_insert_with(|| AuthorAudit {
                node_id: author.node_id().to_string(),
                name: roster.display_name(&author),
                role: role_label(roster, &author),
                changes: 0,
                verified: 0,
                accepted: 0,
                rejected: 0,
                flagged: 0,
            });
            entry.changes += 1;
            let change = match audit_one(envelope, network, &self.store) {
                Ok(change) => change,
                Err(problem) => {
                    problems.push(Problem {
                        change: envelope.hash().to_string(),
                        author: author.node_id().to_string(),
                        problem,
                    });
                    continue;
                }
            };
            entry.verified += 1;
            let row = |problem: String| Problem {
                change: envelope.hash().to_string(),
                author: author.node_id().to_string(),
                problem,
            };
            if self.invalid.contains(&envelope.hash()) {
                entry.rejected += 1;
                let why = match roster.may_write(&author, change.seq()) {
                    Err(why) => format!("change number {}: {why}", change.seq()),
                    Ok(()) => match change.deps().iter().find(|d| self.invalid.contains(d)) {
                        Some(dep) => format!("builds on rejected change {dep}"),
                        None => "rejected".to_string(),
                    },
                };
                rejections.push(row(why));
                continue;
            }
            entry.accepted += 1;
            if let Some(former) = roster.former_of(&author) {
                let how = match former.departure {
                    Departure::Removed => "removed",
                    Departure::RotatedTo(_) => "replaced",
                };
                let why = if change.seq() > former.seen_by_all {
                    Some(format!(
                        "accepted because a signer of its author's departure had seen change \
                         number {}, but not every signer had: it may have been written while \
                         the departure was pending (back-dated onto old heads)",
                        change.seq()
                    ))
                } else if change.timestamp() > former.left_ms {
                    Some(format!(
                        "accepted, but dated {}, after its author was {how} at {}: back-dated \
                         onto old heads, or a skewed clock",
                        model::format_time(change.timestamp()),
                        model::format_time(former.left_ms),
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    entry.flagged += 1;
                    flags.push(row(why));
                }
            }
        }
        let forks = self
            .store
            .evidence()?
            .into_iter()
            .map(|ev| {
                let refused = Envelope::decode(&ev.envelope);
                let author = refused.as_ref().map(Envelope::author).ok();
                ForkReport {
                    author: author.map(|a| a.node_id().to_string()).unwrap_or_default(),
                    name: author.map(|a| roster.display_name(&a)).unwrap_or_default(),
                    seq: ev.seq,
                    kept: ChangeHash(ev.conflicts_with).to_string(),
                    refused: refused.map(|e| e.hash().to_string()).unwrap_or_default(),
                    recorded_at: model::format_time(ev.recorded_at_ms),
                }
            })
            .collect();
        let mut frozen = Vec::new();
        for bytes in self.store.fork_proofs()? {
            match crate::fork::ForkProof::decode(&bytes, network) {
                Ok(proof) => frozen.push(FrozenReport {
                    author: proof.author().node_id().to_string(),
                    name: roster.display_name(&proof.author()),
                    fork_at: proof.seq(),
                    versions: proof.versions().map(|e| e.hash().to_string()).to_vec(),
                }),
                Err(e) => problems.push(Problem {
                    change: String::new(),
                    author: String::new(),
                    problem: format!("a stored fork proof does not verify: {e}"),
                }),
            }
        }
        Ok(Audit {
            ok: problems.is_empty(),
            network_id: network.to_string(),
            envelopes: total,
            heads: self.doc.heads().iter().map(ToString::to_string).collect(),
            authors: authors.into_values().collect(),
            problems,
            rejections,
            flags,
            forks,
            frozen,
        })
    }
}

/// A key's role for reports: its roster role, or how it left.
fn role_label(roster: &Roster, key: &PublicKey) -> Option<String> {
    if let Some(role) = roster.role_of(key) {
        return Some(role.to_string());
    }
    roster.former_of(key).map(|f| match f.departure {
        Departure::Removed => "removed".to_string(),
        Departure::RotatedTo(_) => "former key".to_string(),
    })
}

/// Re-checks one stored envelope's integrity the way ingest did (signature,
/// actor, chain index, dependencies); whether it counts is the roster's call.
fn audit_one(envelope: &Envelope, network: NetworkId, store: &Store) -> Result<Change, String> {
    envelope.verify(network).map_err(|e| e.to_string())?;
    let change = parse_change(envelope.change_bytes()).map_err(|e| e.to_string())?;
    if change.actor_id().to_bytes() != envelope.author().as_bytes() {
        return Err("actor id does not match the signing key".into());
    }
    if store.hash_at(&envelope.author(), change.seq()) != Some(envelope.hash()) {
        return Err(format!(
            "chain index does not list it as change {}",
            change.seq()
        ));
    }
    if let Some(missing) = change.deps().iter().find(|d| !store.has_change(d)) {
        return Err(format!("dependency {missing} is not stored"));
    }
    Ok(change)
}

/// The result of `concord verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Audit {
    /// True when every stored envelope re-verified.
    pub ok: bool,
    pub network_id: String,
    pub envelopes: usize,
    pub heads: Vec<String>,
    pub authors: Vec<AuthorAudit>,
    /// Stored changes that fail an integrity check (signature, chain, ...).
    pub problems: Vec<Problem>,
    /// Stored changes the roster in force rejects, and why.
    pub rejections: Vec<Problem>,
    /// Accepted changes worth a look (see [`Replica::audit`]).
    pub flags: Vec<Problem>,
    /// Forks refused at import and kept as evidence.
    pub forks: Vec<ForkReport>,
    /// Keys frozen by a proven fork: the proof held for each (two signed
    /// versions of one change number), checked again.
    #[serde(default)]
    pub frozen: Vec<FrozenReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrozenReport {
    pub author: String,
    pub name: String,
    /// The change number signed twice; none of the key's changes from it
    /// on count.
    pub fork_at: u64,
    /// The hashes of the two versions.
    pub versions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorAudit {
    pub node_id: String,
    pub name: String,
    pub role: Option<String>,
    /// Changes stored.
    pub changes: usize,
    /// Changes whose signature and chain re-verified.
    pub verified: usize,
    /// Verified changes that count under the roster in force.
    pub accepted: usize,
    /// Verified changes the roster in force rejects.
    pub rejected: usize,
    /// Accepted changes flagged (dated after their author left).
    pub flagged: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    pub change: String,
    pub author: String,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkReport {
    pub author: String,
    pub name: String,
    pub seq: u64,
    pub kept: String,
    pub refused: String,
    pub recorded_at: String,
}
