//! The one verification path every incoming change takes (bundle import now,
//! the network later), before anything is applied or stored.
//!
//! For a batch of envelopes it checks, in this order: the author is on the
//! roster as a member; the signature over (tag, network id, change hash)
//! verifies; only then does Automerge parse the change (under `catch_unwind`);
//! the parsed hash is the signed hash; the actor id is the author's key; the
//! author has not signed a different change with the same sequence number (a
//! fork); the change's predecessor in its author's chain and all its
//! dependencies are already stored or in the same batch.
//!
//! Pure: what the store holds comes in through [`Known`]; no IO here.

use std::collections::{HashMap, HashSet};

use automerge::{Change, ChangeHash};

use crate::doc::{DocError, parse_change};
use crate::envelope::{Envelope, EnvelopeError};
use crate::genesis::NetworkId;
use crate::identity::PublicKey;
use crate::roster::{Role, Roster};

/// What the store already holds, as the checks need it.
pub trait Known {
    fn has_change(&self, hash: &ChangeHash) -> bool;
    /// The hash of `author`'s change number `seq`, if stored.
    fn hash_at(&self, author: &PublicKey, seq: u64) -> Option<ChangeHash>;
}

/// Why a batch was refused. Every variant names the change and its author.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("envelope #{index} is malformed: {source}")]
    Malformed {
        index: usize,
        #[source]
        source: EnvelopeError,
    },
    #[error("change {hash} is signed by {author}, a key that is not on the roster")]
    NotOnRoster { hash: ChangeHash, author: String },
    #[error("change {hash} is signed by observer {name} ({author}); observers cannot write")]
    Observer {
        hash: ChangeHash,
        author: String,
        name: String,
    },
    #[error("change {hash}: {source}")]
    Signature {
        hash: ChangeHash,
        #[source]
        source: EnvelopeError,
    },
    #[error("change {hash} by {author} is not a valid Automerge change: {source}")]
    Unparseable {
        hash: ChangeHash,
        author: String,
        #[source]
        source: Box<DocError>,
    },
    #[error("change {hash}: its actor id {actor} is not its signer's key {author}")]
    ActorMismatch {
        hash: ChangeHash,
        author: String,
        actor: String,
    },
    #[error(
        "fork: {} ({}) signed two different changes with sequence number {}: {} and {}; \
         the second is refused and kept as evidence",
        .0.name, .0.author, .0.seq, .0.existing, .0.conflicting
    )]
    Fork(Box<Fork>),
    #[error(
        "change {hash} by {name} depends on {missing}, which is neither stored nor in this batch"
    )]
    MissingDependency {
        hash: ChangeHash,
        name: String,
        missing: ChangeHash,
    },
    #[error(
        "change {hash} is {name}'s change number {seq}, but its change number {} is neither \
         stored nor in this batch", seq - 1
    )]
    MissingPredecessor {
        hash: ChangeHash,
        name: String,
        seq: u64,
    },
}

/// Two different changes signed by one author with one sequence number.
#[derive(Debug)]
pub struct Fork {
    pub author: String,
    pub name: String,
    pub seq: u64,
    /// The change already stored (or earlier in the batch).
    pub existing: ChangeHash,
    /// The change refused.
    pub conflicting: ChangeHash,
    /// The refused envelope, for the evidence record.
    pub evidence: Envelope,
}

/// A change that passed every check.
#[derive(Debug)]
pub struct Accepted {
    pub envelope: Envelope,
    pub change: Change,
    pub seq: u64,
}

/// The outcome of checking a batch: the new changes, and how many were
/// already known (a batch may be imported twice; that is not an error).
#[derive(Debug, Default)]
pub struct Checked {
    pub accepted: Vec<Accepted>,
    pub already_known: usize,
}

/// Checks a batch of decoded envelopes. Refuses the whole batch on the first
/// problem, so the caller applies all of it or nothing.
pub fn check_batch(
    envelopes: Vec<Envelope>,
    network: NetworkId,
    roster: &Roster,
    known: &impl Known,
) -> Result<Checked, IngestError> {
    let mut checked = Checked::default();
    let mut fresh = Vec::with_capacity(envelopes.len());
    let mut seen = HashSet::with_capacity(envelopes.len());
    for envelope in envelopes {
        if known.has_change(&envelope.hash()) || !seen.insert(envelope.hash()) {
            checked.already_known += 1;
            continue;
        }
        check_author(&envelope, roster)?;
        fresh.push(envelope);
    }
    verify_signatures(&fresh, network)?;

    // Signatures hold: now Automerge may look at the bytes.
    let mut chain: HashMap<(PublicKey, u64), ChangeHash> = HashMap::new();
    let mut parsed = Vec::with_capacity(fresh.len());
    for envelope in fresh {
        let hash = envelope.hash();
        let author = envelope.author();
        let change =
            parse_change(envelope.change_bytes()).map_err(|source| IngestError::Unparseable {
                hash,
                author: author.node_id().to_string(),
                source: Box::new(source),
            })?;
        if change.hash() != hash {
            return Err(IngestError::Unparseable {
                hash,
                author: author.node_id().to_string(),
                source: Box::new(DocError::BadChange(
                    "Automerge computes a different hash".into(),
                )),
            });
        }
        if change.actor_id().to_bytes() != author.as_bytes() {
            return Err(IngestError::ActorMismatch {
                hash,
                author: author.node_id().to_string(),
                actor: hex::encode(change.actor_id().to_bytes()),
            });
        }
        let seq = change.seq();
        if seq == 0 {
            return Err(IngestError::Unparseable {
                hash,
                author: author.node_id().to_string(),
                source: Box::new(DocError::BadChange("sequence number 0".into())),
            });
        }
        let existing = known
            .hash_at(&author, seq)
            .or_else(|| chain.get(&(author, seq)).copied());
        if let Some(existing) = existing.filter(|e| *e != hash) {
            return Err(IngestError::Fork(Box::new(Fork {
                author: author.node_id().to_string(),
                name: roster.display_name(&author),
                seq,
                existing,
                conflicting: hash,
                evidence: envelope,
            })));
        }
        chain.insert((author, seq), hash);
        parsed.push(Accepted {
            envelope,
            change,
            seq,
        });
    }

    let batch: HashSet<ChangeHash> = parsed.iter().map(|a| a.envelope.hash()).collect();
    for accepted in &parsed {
        let author = accepted.envelope.author();
        let hash = accepted.envelope.hash();
        let name = || roster.display_name(&author);
        if let Some(missing) = accepted
            .change
            .deps()
            .iter()
            .find(|d| !known.has_change(d) && !batch.contains(d))
        {
            return Err(IngestError::MissingDependency {
                hash,
                name: name(),
                missing: *missing,
            });
        }
        let seq = accepted.seq;
        if seq > 1
            && known.hash_at(&author, seq - 1).is_none()
            && !chain.contains_key(&(author, seq - 1))
        {
            return Err(IngestError::MissingPredecessor {
                hash,
                name: name(),
                seq,
            });
        }
    }
    checked.accepted = parsed;
    Ok(checked)
}

fn check_author(envelope: &Envelope, roster: &Roster) -> Result<(), IngestError> {
    let author = envelope.author();
    match roster.role_of(&author) {
        Some(Role::Member) => Ok(()),
        Some(Role::Observer) => Err(IngestError::Observer {
            hash: envelope.hash(),
            author: author.node_id().to_string(),
            name: roster.display_name(&author),
        }),
        None => Err(IngestError::NotOnRoster {
            hash: envelope.hash(),
            author: author.node_id().to_string(),
        }),
    }
}

/// Batches below this size are verified on the calling thread.
const PARALLEL_VERIFY_MIN: usize = 256;

/// Verifies every signature, spreading large batches over the cores.
///
/// Each signature is checked on its own with `verify_strict`: randomised batch
/// verification can accept a crafted signature that strict verification
/// refuses, and then nodes would disagree about what is valid.
pub fn verify_signatures(envelopes: &[Envelope], network: NetworkId) -> Result<(), IngestError> {
    let check = |chunk: &[Envelope]| -> Result<(), IngestError> {
        for e in chunk {
            e.verify(network).map_err(|source| IngestError::Signature {
                hash: e.hash(),
                source,
            })?;
        }
        Ok(())
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if envelopes.len() < PARALLEL_VERIFY_MIN || threads < 2 {
        return check(envelopes);
    }
    let chunk_len = envelopes.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = envelopes
            .chunks(chunk_len)
            .map(|chunk| scope.spawn(move || check(chunk)))
            .collect();
        // Report the first failure in batch order.
        let mut result = Ok(());
        for handle in handles {
            let outcome = handle.join().unwrap_or_else(|_| {
                Err(IngestError::Signature {
                    hash: ChangeHash([0; 32]),
                    source: EnvelopeError::BadChunk("signature check panicked"),
                })
            });
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    })
}
