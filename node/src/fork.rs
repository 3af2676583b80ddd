//! Proof of equivocation: two different changes an author signed with the
//! same sequence number.
//!
//! The actor id of every change is its author's key, so each author has one
//! chain of sequence numbers, and two signed changes with one number can
//! only come from an author that signed both: a [`ForkProof`] convicts its
//! author and nobody else, whoever passes it on. It is checked without
//! Automerge (the envelope's own hash and the change header are enough), so
//! a node can verify a proof about changes it will never apply.
//!
//! How nodes settle a fork: an author with a proof at sequence number `f`
//! is frozen at `f` on every node that holds the proof. None of its changes
//! numbered `f` or later count (both versions, and everything built on
//! either), whichever of them a node happened to receive first. Nodes
//! exchange the proof with the lowest number they hold per author, so every
//! honest node ends up with the same freeze point: the lowest fork any of
//! them has seen. The rule depends only on the two signed versions.
//!
//! No IO here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::{ChangeHeader, Envelope, EnvelopeError, change_header};
use crate::genesis::{NetworkId, serde_bytes_compat};
use crate::identity::PublicKey;

/// Why bytes are not a proof of a fork.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("fork proof does not decode: {0}")]
    Decode(String),
    #[error("fork proof's {which} envelope is invalid")]
    Envelope {
        which: &'static str,
        #[source]
        source: EnvelopeError,
    },
    #[error("fork proof names two authors ({first} and {second})")]
    TwoAuthors { first: String, second: String },
    #[error("fork proof holds the same change twice ({0})")]
    SameChange(automerge::ChangeHash),
    #[error("fork proof's {which} change has actor {actor}, not its signer's key")]
    Actor { which: &'static str, actor: String },
    #[error("fork proof's changes have different sequence numbers ({first} and {second})")]
    Seqs { first: u64, second: u64 },
}

/// Two different changes signed by one author with one sequence number,
/// ordered by hash (so one fork has one proof, whoever found it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkProof {
    first: Envelope,
    second: Envelope,
    seq: u64,
}

/// A proof's wire form: the two envelopes, each length-prefixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofBytes(#[serde(with = "serde_bytes_compat")] pub Vec<u8>);

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(with = "serde_bytes_compat")]
    first: Vec<u8>,
    #[serde(with = "serde_bytes_compat")]
    second: Vec<u8>,
}

impl ForkProof {
    /// Checks that `a` and `b` prove a fork in `network`: both signed by one
    /// author over this network, both changes that author's (actor id = key),
    /// with one sequence number, and different.
    pub fn new(a: Envelope, b: Envelope, network: NetworkId) -> Result<Self, ForkError> {
        if a.author() != b.author() {
            return Err(ForkError::TwoAuthors {
                first: a.author().node_id().to_string(),
                second: b.author().node_id().to_string(),
            });
        }
        if a.hash() == b.hash() {
            return Err(ForkError::SameChange(a.hash()));
        }
        let (first, second) = if a.hash().0 < b.hash().0 {
            (a, b)
        } else {
            (b, a)
        };
        let header = |which, e: &Envelope| -> Result<ChangeHeader, ForkError> {
            e.verify(network)
                .map_err(|source| ForkError::Envelope { which, source })?;
            let header = change_header(e.change_bytes())
                .map_err(|source| ForkError::Envelope { which, source })?;
            if header.actor != e.author().as_bytes() {
                return Err(ForkError::Actor {
                    which,
                    actor: hex::encode(&header.actor[..header.actor.len().min(64)]),
                });
            }
            Ok(header)
        };
        let one = header("first", &first)?;
        let two = header("second", &second)?;
        if one.seq != two.seq {
            return Err(ForkError::Seqs {
                first: one.seq,
                second: two.seq,
            });
        }
        Ok(Self {
            first,
            second,
            seq: one.seq,
        })
    }

    /// Decodes and checks a proof received from anyone.
    pub fn decode(bytes: &[u8], network: NetworkId) -> Result<Self, ForkError> {
        let wire: Wire = match postcard::take_from_bytes(bytes) {
            Ok((wire, [])) => wire,
            Ok((_, rest)) => {
                return Err(ForkError::Decode(format!(
                    "{} unexpected bytes after the proof",
                    rest.len()
                )));
            }
            Err(e) => return Err(ForkError::Decode(e.to_string())),
        };
        let decode = |which, bytes| {
            Envelope::decode(bytes).map_err(|source| ForkError::Envelope { which, source })
        };
        Self::new(
            decode("first", &wire.first)?,
            decode("second", &wire.second)?,
            network,
        )
    }

    pub fn encode(&self) -> ProofBytes {
        let wire = Wire {
            first: self.first.encode(),
            second: self.second.encode(),
        };
        // Serialising two byte strings into a Vec cannot fail.
        ProofBytes(postcard::to_stdvec(&wire).unwrap_or_default())
    }

    pub fn author(&self) -> PublicKey {
        self.first.author()
    }

    /// The sequence number both changes carry: the fork point.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The two versions, lower hash first.
    pub fn versions(&self) -> [&Envelope; 2] {
        [&self.first, &self.second]
    }
}

/// The fork point of every author proven to have forked: changes numbered
/// this or later do not count.
pub type Frozen = BTreeMap<PublicKey, u64>;

/// One author's fork point, as sync messages carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenAt {
    pub author: PublicKey,
    pub seq: u64,
}

pub fn frozen_to_wire(frozen: &Frozen) -> Vec<FrozenAt> {
    frozen
        .iter()
        .map(|(author, seq)| FrozenAt {
            author: *author,
            seq: *seq,
        })
        .collect()
}

/// A repeated author keeps its lowest fork point.
pub fn frozen_from_wire(wire: &[FrozenAt]) -> Frozen {
    let mut frozen = Frozen::new();
    for f in wire {
        let seq = frozen.entry(f.author).or_insert(f.seq);
        *seq = (*seq).min(f.seq);
    }
    frozen
}

/// The authors whose proof in `ours` is lower than what `theirs` knows: the
/// proofs worth sending.
pub fn lower_than(ours: &Frozen, theirs: &Frozen) -> Vec<PublicKey> {
    ours.iter()
        .filter(|(author, seq)| theirs.get(*author).is_none_or(|t| **seq < *t))
        .map(|(author, _)| *author)
        .collect()
}

/// A digest of fork points, for display and quick comparison.
pub fn digest(frozen: &Frozen) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"concord-forks-v1\0");
    for (author, seq) in frozen {
        hasher.update(author.as_bytes());
        hasher.update(seq.to_be_bytes());
    }
    hasher.finalize().into()
}
