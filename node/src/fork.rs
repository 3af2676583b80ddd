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

use crate::envelope::{ChangeHeader, Envelope, EnvelopeError, MIN_ENVELOPE_LEN, change_header};
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

/// A proof's wire form: the two envelopes, each length-prefixed. Decoding
/// refuses one shorter than [`MIN_PROOF_LEN`] at once, so a list of proofs
/// costs memory in proportion to its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProofBytes(#[serde(with = "serde_bytes_compat")] pub Vec<u8>);

/// The shortest proof: two of the smallest envelopes, each with a one-byte
/// length prefix.
pub const MIN_PROOF_LEN: usize = 2 * (MIN_ENVELOPE_LEN + 1);

impl<'de> Deserialize<'de> for ProofBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::bundle::at_least(d, "a fork proof", MIN_PROOF_LEN).map(Self)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::EnvelopeBytes;
    use crate::doc::{Document, NewAssessment};
    use crate::identity::Identity;
    use crate::sync::{self, Request};

    fn network() -> NetworkId {
        NetworkId([7; 32])
    }

    /// `signer` signs change number 1 of a document whose actor is `actor`.
    fn version(signer: &Identity, actor: PublicKey, title: &str) -> Envelope {
        let mut doc = Document::new(actor);
        let change = doc
            .add_assessment(
                "ra-x",
                &NewAssessment::draft("reliability", title),
                1_700_000_000_000,
            )
            .expect("change");
        Envelope::sign(signer, network(), change.raw_bytes().to_vec()).expect("sign")
    }

    #[test]
    fn two_versions_of_one_number_prove_a_fork_whoever_passes_them_on() {
        let a = Identity::from_secret([1; 32]);
        let (x, y) = (version(&a, a.public(), "x"), version(&a, a.public(), "y"));
        let proof = ForkProof::new(x.clone(), y.clone(), network()).expect("a fork");
        assert_eq!((proof.author(), proof.seq()), (a.public(), 1));
        // One fork, one proof, whichever order it was found in.
        let again = ForkProof::new(y, x, network()).expect("a fork");
        assert_eq!(again.encode(), proof.encode());
        let decoded = ForkProof::decode(&proof.encode().0, network()).expect("decodes");
        assert_eq!(decoded, proof);
        // Not in another network.
        assert!(matches!(
            ForkProof::decode(&proof.encode().0, NetworkId([8; 32])),
            Err(ForkError::Envelope { .. })
        ));
    }

    #[test]
    fn nothing_else_passes_for_a_proof() {
        let (a, b) = (
            Identity::from_secret([1; 32]),
            Identity::from_secret([2; 32]),
        );
        let x = version(&a, a.public(), "x");
        // The same change twice.
        assert!(matches!(
            ForkProof::new(x.clone(), x.clone(), network()),
            Err(ForkError::SameChange(_))
        ));
        // Two authors.
        assert!(matches!(
            ForkProof::new(x.clone(), version(&b, b.public(), "y"), network()),
            Err(ForkError::TwoAuthors { .. })
        ));
        // A change signed by A but made as B's: it is not A's chain, so it
        // cannot convict anyone.
        assert!(matches!(
            ForkProof::new(x.clone(), version(&a, b.public(), "y"), network()),
            Err(ForkError::Actor { .. })
        ));
        // Different numbers.
        let mut doc = Document::new(a.public());
        let new = NewAssessment::draft("reliability", "x");
        doc.add_assessment("ra-1", &new, 1_700_000_000_000)
            .expect("1");
        let second = doc
            .add_assessment("ra-2", &new, 1_700_000_000_001)
            .expect("2");
        let two = Envelope::sign(&a, network(), second.raw_bytes().to_vec()).expect("sign");
        assert!(matches!(
            ForkProof::new(x, two, network()),
            Err(ForkError::Seqs {
                first: 1,
                second: 2
            } | ForkError::Seqs {
                first: 2,
                second: 1
            })
        ));
        // Bytes that are not a proof at all.
        assert!(ForkProof::decode(&[0; 300], network()).is_err());
    }

    /// As for envelopes (issue 14, item 7): a list of empty proofs would
    /// decode into 24 bytes of memory per byte received.
    #[test]
    fn a_short_proof_is_refused_as_the_message_decodes() {
        let push = Request::Push {
            network: network(),
            records: Vec::new(),
            envelopes: Vec::<EnvelopeBytes>::new(),
            proofs: vec![ProofBytes(vec![0; 10])],
            versions: Vec::new(),
        };
        let err = sync::decode_request(&sync::encode_request(&push)).expect_err("refused");
        assert!(
            err.to_string()
                .contains("a fork proof of 10 bytes, shorter than the smallest one"),
            "{err}"
        );
    }
}
