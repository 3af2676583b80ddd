//! The sync protocol's messages and their encoding. No IO, no libp2p: the
//! network layer frames these bytes on a libp2p request-response stream.
//!
//! A node's state is summarised by its **chain tips**: for every author, the
//! highest sequence number it holds (for an author frozen by a fork, the
//! highest that counts) and the hash of that change. Acceptance requires each
//! author's chain to be stored without gaps, so the tips say exactly which
//! changes a node has. Reconciling is then one `Pull` carrying the puller's
//! tips, answered with the envelopes it lacks in causal order (in chunks,
//! `more` saying whether to pull again); new changes are `Push`ed to
//! connected peers and relayed onwards by every node that accepts them.
//!
//! The hashes in the tips are how a fork is found: when an author signs two
//! versions of one change number and gives one to each half of the network,
//! both halves hold the same numbers and would never see the other version.
//! A node that holds, at a peer's tip, a change with another hash sends the
//! peer its version (`versions`); the peer then holds two signed versions,
//! a [`crate::fork::ForkProof`], and freezes the author there. Proofs travel
//! beside the changes: every message carries the sender's fork points
//! (`frozen`), and a node sends the proofs a peer lacks or holds only at a
//! higher point. Each exchange lowers a fork point, so the halves find the
//! lowest fork between them in a few round trips.
//!
//! Roster records travel beside the envelopes: a `Pull` carries the digest of
//! the puller's records, and the answer carries every record the answerer
//! holds whenever the digests differ (records are few and small); new records
//! are pushed like new changes. A node applies proofs and records before
//! envelopes, so a change by a member the same message admits is accepted.
//! The byte layout is specified in `docs/protocol.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bundle::EnvelopeBytes;
use crate::fork::{FrozenAt, ProofBytes};
use crate::genesis::NetworkId;
use crate::identity::PublicKey;

/// The libp2p protocol id of the sync protocol, version 2 (version 1's tips
/// carried no hashes and it had no fork proofs; a node speaks one version,
/// so a version 1 peer's streams are not negotiated at all).
pub const PROTOCOL: &str = "/concord/sync/2";
/// Largest message (request or response body) accepted, in bytes: room for
/// one fork proof of two changes of the largest size.
pub const MAX_MESSAGE_LEN: usize = 9 * 1024 * 1024;
/// A `Changes` response holds at most this many bytes of envelopes (or one
/// envelope, at most 4 MiB), so a catch-up of any size travels in chunks that
/// stay under [`MAX_MESSAGE_LEN`].
pub const RESPONSE_TARGET_LEN: usize = 6 * 1024 * 1024;

/// Errors decoding a sync message.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("message of {0} bytes is over the limit of {MAX_MESSAGE_LEN}")]
    TooLarge(usize),
    #[error("message does not decode: {0}")]
    Decode(String),
}

/// One author's highest stored sequence number, and that change's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainTip {
    pub author: PublicKey,
    pub seq: u64,
    pub hash: [u8; 32],
}

/// A node's chain tips by author.
pub type Tips = BTreeMap<PublicKey, u64>;

/// Tips in their wire form, ordered by author, with no hashes (all zero):
/// for measuring messages, and for a node that holds no changes to compare.
pub fn tips_to_wire(tips: &Tips) -> Vec<ChainTip> {
    tips.iter()
        .map(|(author, seq)| ChainTip {
            author: *author,
            seq: *seq,
            hash: [0; 32],
        })
        .collect()
}

/// Converts wire tips to a map; a repeated author keeps its highest seq.
pub fn tips_from_wire(wire: &[ChainTip]) -> Tips {
    let mut tips = Tips::new();
    for tip in wire {
        let seq = tips.entry(tip.author).or_insert(0);
        *seq = (*seq).max(tip.seq);
    }
    tips
}

/// How many changes `ours` holds that `theirs` lacks, saturating at
/// `u64::MAX`: a peer's tips are whatever it sends, and two authors near
/// `u64::MAX` must not overflow the sum.
pub fn lacking(ours: &Tips, theirs: &Tips) -> u64 {
    ours.iter()
        .map(|(author, seq)| seq.saturating_sub(theirs.get(author).copied().unwrap_or(0)))
        .fold(0, u64::saturating_add)
}

/// A request from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// "Send me what I lack": the sender's network and chain tips.
    Pull {
        network: NetworkId,
        have: Vec<ChainTip>,
        /// Digest of the puller's roster records (see `governance::digest`).
        records: [u8; 32],
        /// The puller's fork points.
        frozen: Vec<FrozenAt>,
    },
    /// New roster records, envelopes and fork proofs, sent as soon as they
    /// are committed or accepted; and the sender's versions of changes where
    /// the receiver's tips showed another hash.
    Push {
        network: NetworkId,
        records: Vec<EnvelopeBytes>,
        envelopes: Vec<EnvelopeBytes>,
        proofs: Vec<ProofBytes>,
        versions: Vec<EnvelopeBytes>,
    },
}

impl Request {
    /// A push of envelopes alone.
    pub fn push_envelopes(network: NetworkId, envelopes: Vec<EnvelopeBytes>) -> Self {
        Self::Push {
            network,
            records: Vec::new(),
            envelopes,
            proofs: Vec::new(),
            versions: Vec::new(),
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Envelopes the puller lacks, in causal order; `more` when the chunk
    /// stopped at the size target and the puller should pull again.
    Changes {
        /// Every roster record the answerer holds, when the puller's digest
        /// differs from its own; otherwise empty.
        records: Vec<EnvelopeBytes>,
        envelopes: Vec<EnvelopeBytes>,
        more: bool,
        have: Vec<ChainTip>,
        /// The answerer's fork points.
        frozen: Vec<FrozenAt>,
        /// Proofs of forks the puller does not know, or knows only at a
        /// higher change number.
        proofs: Vec<ProofBytes>,
        /// The answerer's versions of changes at the puller's tips where its
        /// hash differs.
        versions: Vec<EnvelopeBytes>,
    },
    /// A push was received: how many envelopes were new, and the receiver's
    /// tips and fork points afterwards.
    Ack {
        accepted: u32,
        have: Vec<ChainTip>,
        frozen: Vec<FrozenAt>,
    },
    /// The request was refused (wrong network, invalid envelope); the
    /// connection is closed after this.
    Refused { reason: String },
}

/// Encodes a request body (the network layer adds the length prefix).
pub fn encode_request(request: &Request) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    postcard::to_stdvec(request).unwrap_or_default()
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, SyncError> {
    decode(bytes)
}

pub fn encode_response(response: &Response) -> Vec<u8> {
    postcard::to_stdvec(response).unwrap_or_default()
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, SyncError> {
    decode(bytes)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, SyncError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(SyncError::TooLarge(bytes.len()));
    }
    // Refuses an envelope or record shorter than the smallest one as it
    // reads it (see `bundle::EnvelopeBytes`).
    match crate::bundle::decode_postcard(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(SyncError::Decode(format!(
            "{} unexpected bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(SyncError::Decode(e)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::identity::Identity;

    fn key(n: u8) -> PublicKey {
        Identity::from_secret([n; 32]).public()
    }

    #[test]
    fn lacking_counts_per_author() {
        let ours = Tips::from([(key(1), 5), (key(2), 3)]);
        let theirs = Tips::from([(key(1), 2), (key(3), 9)]);
        assert_eq!(lacking(&ours, &theirs), 3 + 3);
        assert_eq!(lacking(&theirs, &ours), 9);
        assert_eq!(lacking(&ours, &ours), 0);
    }

    /// Found by the `sync_request` fuzz target: a `Pull` whose tips name
    /// two authors at huge sequence numbers overflowed the sum (a panic in
    /// the event loop with overflow checks, a wrong answer without).
    #[test]
    fn lacking_saturates_on_a_peers_huge_tips() {
        let theirs = Tips::from([(key(1), u64::MAX), (key(2), u64::MAX - 1)]);
        assert_eq!(lacking(&theirs, &Tips::new()), u64::MAX);
        assert_eq!(lacking(&Tips::new(), &theirs), 0);
        let wire = [
            ChainTip {
                author: key(1),
                seq: u64::MAX,
                hash: [1; 32],
            },
            ChainTip {
                author: key(2),
                seq: 1 << 63,
                hash: [2; 32],
            },
        ];
        let pull = Request::Pull {
            network: NetworkId([0; 32]),
            have: wire.to_vec(),
            records: [0; 32],
            frozen: Vec::new(),
        };
        let Request::Pull { have, .. } = decode_request(&encode_request(&pull)).expect("decode")
        else {
            panic!("a pull decodes as a pull");
        };
        assert_eq!(lacking(&tips_from_wire(&have), &Tips::new()), u64::MAX);
    }

    proptest! {
        #[test]
        fn requests_and_responses_round_trip(
            seqs in proptest::collection::vec((1u8..20, any::<u64>()), 0..10),
            envs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), crate::envelope::MIN_ENVELOPE_LEN..300), 0..10),
            more: bool,
            net in any::<[u8; 32]>(),
        ) {
            let have: Vec<ChainTip> = seqs.iter().map(|(k, s)| ChainTip { author: key(*k), seq: *s, hash: net }).collect();
            let frozen: Vec<FrozenAt> = seqs.iter().map(|(k, s)| FrozenAt { author: key(*k), seq: *s }).collect();
            let envelopes: Vec<EnvelopeBytes> = envs.into_iter().map(EnvelopeBytes).collect();
            let proofs: Vec<ProofBytes> = envelopes.iter().map(|e| ProofBytes([e.0.clone(), e.0.clone(), vec![0, 0]].concat())).collect();
            for request in [
                Request::Pull { network: NetworkId(net), have: have.clone(), records: net, frozen: frozen.clone() },
                Request::Push { network: NetworkId(net), records: envelopes.clone(), envelopes: envelopes.clone(), proofs: proofs.clone(), versions: envelopes.clone() },
            ] {
                let bytes = encode_request(&request);
                prop_assert_eq!(decode_request(&bytes).expect("decode"), request);
                for cut in 0..bytes.len() {
                    prop_assert!(decode_request(&bytes[..cut]).is_err());
                }
            }
            for response in [
                Response::Changes { records: envelopes.clone(), envelopes: envelopes.clone(), more, have: have.clone(), frozen: frozen.clone(), proofs, versions: envelopes },
                Response::Ack { accepted: 3, have, frozen },
                Response::Refused { reason: "no".into() },
            ] {
                let bytes = encode_response(&response);
                prop_assert_eq!(decode_response(&bytes).expect("decode"), response);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
