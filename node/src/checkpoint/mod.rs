//! Attested checkpoints: a member's signature over (network id, document
//! heads, hash of the canonical state at those heads), written into the
//! document as ordinary data so it syncs like every other change.
//!
//! A signature lives at the root key `k/<digest>/<signer node id>`, where
//! `digest` is the SHA-256 of the signed message, in a map the signer wrote
//! itself (`network`, `heads`, `state`, `signature`, `at`; only values the
//! signer wrote are read, as for positions). Signatures over the same
//! message form one checkpoint; a checkpoint signed by a quorum of distinct
//! current members whose state hash this node recomputes at its heads is
//! *attested*. The canonical state leaves out `k/`, so signing does not move
//! the state being signed. No IO; the roster is a parameter, so a roster
//! computed elsewhere (for example one that changed by quorum) can be used.

pub mod canonical;
pub mod verify;

use std::collections::{BTreeMap, HashMap};

use automerge::{Automerge, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::doc::{CheckpointEntry, DocError, Document, author_of};
use crate::genesis::{Genesis, NetworkId};
use crate::identity::{Identity, NodeId, PublicKey};
use crate::model::{Round, format_time};
use crate::report::{self, AttestedBy, Report};
use crate::roster::Roster;

/// Root keys of checkpoint signatures start with this.
pub const CHECKPOINT_PREFIX: &str = "k/";
/// Domain-separation tag of a checkpoint signature (22 bytes).
pub const CHECKPOINT_SIGNING_TAG: &[u8] = b"concord-checkpoint-v1\0";
/// How many state hashes [`StateMemo`] keeps before it starts over.
const MEMO_LIMIT: usize = 256;

/// Errors signing or choosing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "no checkpoint with id {}; `concord checkpoint list` shows them",
        crate::clip::quote(.0)
    )]
    Unknown(String),
    #[error("checkpoint id {} is ambiguous; give more of it", crate::clip::quote(.0))]
    Ambiguous(String),
    #[error("checkpoint {id} names change {head}, which this node does not hold")]
    MissingHead { id: String, head: String },
    #[error(
        "checkpoint {id} claims state hash {claimed}, but the state at its heads hashes to \
         {actual} here; not signing it"
    )]
    StateMismatch {
        id: String,
        claimed: String,
        actual: String,
    },
    #[error("this node has already signed checkpoint {0}, and the state has not changed since")]
    AlreadySigned(String),
    #[error(
        "checkpoint {id} is not attested: {signatures} valid member signature(s), quorum {quorum}"
    )]
    NotAttested {
        id: String,
        signatures: usize,
        quorum: u32,
    },
    #[error(transparent)]
    Doc(#[from] DocError),
}

/// What a checkpoint signature covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subject {
    pub network: NetworkId,
    /// Sorted ascending, no duplicates.
    pub heads: Vec<ChangeHash>,
    /// SHA-256 of the canonical state at `heads`.
    pub state: [u8; 32],
}

impl Subject {
    pub fn new(network: NetworkId, mut heads: Vec<ChangeHash>, state: [u8; 32]) -> Self {
        heads.sort();
        heads.dedup();
        Self {
            network,
            heads,
            state,
        }
    }

    /// The signed message: tag (22) ‖ network id (32) ‖ number of heads
    /// (u32, big-endian) ‖ each head (32, ascending) ‖ state hash (32).
    pub fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(22 + 32 + 4 + 32 * self.heads.len() + 32);
        m.extend_from_slice(CHECKPOINT_SIGNING_TAG);
        m.extend_from_slice(&self.network.0);
        m.extend_from_slice(
            &u32::try_from(self.heads.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for head in &self.heads {
            m.extend_from_slice(&head.0);
        }
        m.extend_from_slice(&self.state);
        m
    }

    /// SHA-256 of the message: names the checkpoint in its root keys.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.message()).into()
    }

    /// `ck-` and the first 16 hex digits of the digest.
    pub fn id(&self) -> String {
        format!("ck-{}", hex::encode(&self.digest()[..8]))
    }

    /// The root key of `signer`'s signature of this subject.
    pub fn key(&self, signer: &PublicKey) -> String {
        format!(
            "{CHECKPOINT_PREFIX}{}/{}",
            hex::encode(self.digest()),
            signer.node_id()
        )
    }

    pub fn verify(&self, signer: &PublicKey, signature: &[u8; 64]) -> bool {
        signer.verify(&self.message(), signature)
    }

    fn heads_hex(&self) -> Vec<String> {
        self.heads.iter().map(ToString::to_string).collect()
    }
}

/// One valid signature found in the document.
#[derive(Clone, Debug)]
pub struct Signed {
    pub subject: Subject,
    pub signer: PublicKey,
    pub signature: [u8; 64],
    pub at: i64,
}

/// A `k/` entry that is not a valid signature, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidEntry {
    pub key: String,
    pub problem: String,
}

/// Signs `subject` as `identity`: the root key and the entry to write.
pub fn entry(identity: &Identity, subject: &Subject) -> (String, CheckpointEntry) {
    let signature = identity.sign(&subject.message());
    (
        subject.key(&identity.public()),
        CheckpointEntry {
            id: subject.id(),
            network: subject.network.to_hex(),
            heads: subject.heads_hex(),
            state: hex::encode(subject.state),
            signature: hex::encode(signature),
        },
    )
}

/// Every `k/` entry of the document: the valid signatures for `network`,
/// and the others with what is wrong with them.
pub fn read(doc: &Automerge, network: NetworkId) -> (Vec<Signed>, Vec<InvalidEntry>) {
    let mut signed = Vec::new();
    let mut invalid = Vec::new();
    for key in doc.keys(ROOT).filter(|k| k.starts_with(CHECKPOINT_PREFIX)) {
        match read_one(doc, &key, network) {
            Ok(s) => signed.push(s),
            Err(problem) => invalid.push(InvalidEntry { key, problem }),
        }
    }
    (signed, invalid)
}

fn read_one(doc: &Automerge, key: &str, network: NetworkId) -> Result<Signed, String> {
    let rest = &key[CHECKPOINT_PREFIX.len()..];
    let (digest, signer) = rest
        .split_once('/')
        .ok_or("the key is not k/<digest>/<node id>")?;
    let signer = signer
        .parse::<NodeId>()
        .map_err(|_| "the key does not end in a node id")?
        .public_key();
    let all = doc.get_all(ROOT, key).map_err(|e| e.to_string())?;
    let obj = all
        .iter()
        .rev()
        .find_map(|(value, id)| {
            (matches!(value, Value::Object(ObjType::Map)) && author_of(id) == Some(signer))
                .then(|| id.clone())
        })
        .ok_or("not written by the signer it names")?;
    let text = |field: &str| -> Result<String, String> {
        match by(doc, &obj, field, signer) {
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Str(s) => Ok(s.to_string()),
                _ => Err(format!("{field} is not text")),
            },
            _ => Err(format!("{field} is missing")),
        }
    };
    let theirs = text("network")?;
    if theirs != network.to_hex() {
        return Err(format!("signed for another network ({theirs})"));
    }
    let heads = match by(doc, &obj, "heads", signer) {
        Some((Value::Object(ObjType::List), list)) => (0..doc.length(&list))
            .map(|i| match doc.get(&list, i) {
                Ok(Some((Value::Scalar(s), _))) => s
                    .as_str()
                    .and_then(|h| h.parse::<ChangeHash>().ok())
                    .ok_or_else(|| format!("head {i} is not a change hash")),
                _ => Err(format!("head {i} is missing")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err("heads is missing".into()),
    };
    let state: [u8; 32] = hex::decode(text("state")?)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("state is not 64 hex digits")?;
    let signature: [u8; 64] = hex::decode(text("signature")?)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("signature is not 128 hex digits")?;
    let at = match by(doc, &obj, "at", signer) {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Timestamp(t) | ScalarValue::Int(t) => *t,
            _ => 0,
        },
        _ => 0,
    };
    let subject = Subject::new(network, heads, state);
    if hex::encode(subject.digest()) != digest {
        return Err("the key does not match the signed content".into());
    }
    if !subject.verify(&signer, &signature) {
        return Err("the signature does not verify".into());
    }
    Ok(Signed {
        subject,
        signer,
        signature,
        at,
    })
}

/// The value of `key` in `obj` that `author` wrote last, ignoring others'.
fn by<'a>(
    doc: &'a Automerge,
    obj: &ObjId,
    key: &str,
    author: PublicKey,
) -> Option<(Value<'a>, ObjId)> {
    doc.get_all(obj, key)
        .ok()?
        .into_iter()
        .rev()
        .find(|(_, id)| author_of(id) == Some(author))
}

/// State hashes already computed, by heads: recomputing the state at old
/// heads means rebuilding the document there.
#[derive(Debug, Default)]
pub struct StateMemo {
    hashes: HashMap<Vec<ChangeHash>, [u8; 32]>,
}

impl StateMemo {
    /// The canonical state hash of `doc` at `heads`.
    pub fn state_at(&mut self, doc: &Document, heads: &[ChangeHash]) -> Result<[u8; 32], DocError> {
        let mut heads = heads.to_vec();
        heads.sort();
        if let Some(hash) = self.hashes.get(&heads) {
            return Ok(*hash);
        }
        let hash = if heads == doc.heads() {
            canonical::state_hash(doc.automerge())
        } else {
            canonical::state_hash(doc.at(&heads)?.automerge())
        };
        if self.hashes.len() >= MEMO_LIMIT {
            self.hashes.clear();
        }
        self.hashes.insert(heads, hash);
        Ok(hash)
    }

    /// The hash of the document's state now.
    pub fn current(&mut self, doc: &Document) -> [u8; 32] {
        let heads = doc.heads();
        self.state_at(doc, &heads)
            .unwrap_or_else(|_| canonical::state_hash(doc.automerge()))
    }
}

/// One signature of a checkpoint, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureView {
    pub node_id: String,
    pub name: String,
    /// The signer's role now, if it is on the roster.
    pub role: Option<String>,
    /// True when it counts towards the quorum (a current member).
    pub counts: bool,
    /// When the signer says it signed (its own clock).
    pub at: String,
    /// The ed25519 signature, 128 hex digits.
    pub signature: String,
}

/// A checkpoint and how far it is attested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointView {
    pub id: String,
    pub network_id: String,
    pub heads: Vec<String>,
    pub state_hash: String,
    /// The earliest signature's time.
    pub created_at: String,
    /// Signatures that verify, ordered by signer key.
    pub signatures: Vec<SignatureView>,
    /// Distinct current members among the signers.
    pub member_signatures: usize,
    pub quorum: u32,
    /// Whether this node recomputed the state hash at the heads and got the
    /// signed one.
    pub state_verified: bool,
    /// Why the state could not be verified, if it could not.
    pub problem: Option<String>,
    /// Quorum reached and state verified.
    pub attested: bool,
}

/// `checkpoint list`: every checkpoint, oldest first, and what the current
/// state's hash is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoints {
    pub network_id: String,
    pub heads: Vec<String>,
    /// The canonical state hash of the document now.
    pub state_hash: String,
    /// The latest attested checkpoint of exactly the current state.
    pub current: Option<String>,
    /// The latest attested checkpoint of any state.
    pub latest_attested: Option<String>,
    pub checkpoints: Vec<CheckpointView>,
    /// `k/` entries that are not valid signatures.
    pub invalid: Vec<InvalidEntry>,
}

impl Checkpoints {
    pub fn get(&self, id: &str) -> Option<&CheckpointView> {
        self.checkpoints.iter().find(|c| c.id == id)
    }
}

/// Every checkpoint in `doc`, assessed against `roster`.
pub fn list(
    doc: &Document,
    network: NetworkId,
    roster: &Roster,
    memo: &mut StateMemo,
) -> Checkpoints {
    let (signed, invalid) = read(doc.automerge(), network);
    let mut by_subject: BTreeMap<[u8; 32], Vec<Signed>> = BTreeMap::new();
    for s in signed {
        by_subject.entry(s.subject.digest()).or_default().push(s);
    }
    let mut checkpoints: Vec<(i64, CheckpointView)> = by_subject
        .into_values()
        .map(|mut sigs| {
            sigs.sort_by_key(|s| s.signer);
            let subject = sigs[0].subject.clone();
            let created = sigs.iter().map(|s| s.at).min().unwrap_or(0);
            (created, view(doc, &subject, &sigs, roster, memo))
        })
        .collect();
    checkpoints.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    let checkpoints: Vec<CheckpointView> = checkpoints.into_iter().map(|(_, c)| c).collect();
    let state = hex::encode(memo.current(doc));
    let latest = |f: &dyn Fn(&CheckpointView) -> bool| {
        checkpoints
            .iter()
            .rev()
            .find(|c| c.attested && f(c))
            .map(|c| c.id.clone())
    };
    Checkpoints {
        network_id: network.to_hex(),
        heads: doc.heads().iter().map(ToString::to_string).collect(),
        current: latest(&|c| c.state_hash == state),
        latest_attested: latest(&|_| true),
        state_hash: state,
        checkpoints,
        invalid,
    }
}

fn view(
    doc: &Document,
    subject: &Subject,
    sigs: &[Signed],
    roster: &Roster,
    memo: &mut StateMemo,
) -> CheckpointView {
    let signatures: Vec<SignatureView> = sigs
        .iter()
        .map(|s| SignatureView {
            node_id: s.signer.node_id().to_string(),
            name: roster.display_name(&s.signer),
            role: roster.role_of(&s.signer).map(|r| r.to_string()),
            counts: roster.is_member(&s.signer),
            at: format_time(s.at),
            signature: hex::encode(s.signature),
        })
        .collect();
    let member_signatures = signatures.iter().filter(|s| s.counts).count();
    let problem = match subject.heads.iter().find(|h| !doc.has_change(h)) {
        Some(head) => Some(format!(
            "names change {head}, which this node does not hold"
        )),
        None => match memo.state_at(doc, &subject.heads) {
            Ok(hash) if hash == subject.state => None,
            Ok(hash) => Some(format!(
                "the state at its heads hashes to {} here, not to the signed {}",
                hex::encode(hash),
                hex::encode(subject.state)
            )),
            Err(e) => Some(format!("cannot rebuild the state at its heads: {e}")),
        },
    };
    let state_verified = problem.is_none();
    CheckpointView {
        id: subject.id(),
        network_id: subject.network.to_hex(),
        heads: subject.heads_hex(),
        state_hash: hex::encode(subject.state),
        created_at: format_time(sigs.iter().map(|s| s.at).min().unwrap_or(0)),
        signatures,
        member_signatures,
        quorum: roster.quorum(),
        state_verified,
        problem,
        attested: state_verified && member_signatures >= roster.quorum() as usize,
    }
}

/// Finds a checkpoint by its id (`ck-` and hex digits, or a prefix of them).
pub fn find<'a>(list: &'a Checkpoints, id: &str) -> Result<&'a CheckpointView, CheckpointError> {
    let wanted = id.trim();
    let wanted = wanted.strip_prefix("ck-").unwrap_or(wanted).to_lowercase();
    if wanted.is_empty() {
        return Err(CheckpointError::Unknown(id.to_string()));
    }
    let mut found = list
        .checkpoints
        .iter()
        .filter(|c| c.id["ck-".len()..].starts_with(&wanted));
    match (found.next(), found.next()) {
        (Some(c), None) => Ok(c),
        (Some(_), Some(_)) => Err(CheckpointError::Ambiguous(id.to_string())),
        (None, _) => Err(CheckpointError::Unknown(id.to_string())),
    }
}

fn subject_of(view: &CheckpointView, network: NetworkId) -> Result<Subject, CheckpointError> {
    let heads = view
        .heads
        .iter()
        .map(|h| {
            h.parse::<ChangeHash>()
                .map_err(|_| CheckpointError::MissingHead {
                    id: view.id.clone(),
                    head: h.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let state: [u8; 32] = hex::decode(&view.state_hash)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| CheckpointError::Unknown(view.id.clone()))?;
    Ok(Subject::new(network, heads, state))
}

/// What `checkpoint sign` signs: `target` if given (after recomputing its
/// state here); else the latest checkpoint of exactly the current state
/// that `me` has not signed (co-signing it); else a new checkpoint of the
/// current heads.
pub fn plan(
    doc: &Document,
    network: NetworkId,
    roster: &Roster,
    me: PublicKey,
    target: Option<&str>,
    memo: &mut StateMemo,
) -> Result<Subject, CheckpointError> {
    let list = list(doc, network, roster, memo);
    let signed_by_me = |c: &CheckpointView| {
        c.signatures
            .iter()
            .any(|s| s.node_id == me.node_id().to_string())
    };
    if let Some(target) = target {
        let view = find(&list, target)?;
        let subject = subject_of(view, network)?;
        if let Some(head) = subject.heads.iter().find(|h| !doc.has_change(h)) {
            return Err(CheckpointError::MissingHead {
                id: view.id.clone(),
                head: head.to_string(),
            });
        }
        let actual = memo.state_at(doc, &subject.heads)?;
        if actual != subject.state {
            return Err(CheckpointError::StateMismatch {
                id: view.id.clone(),
                claimed: view.state_hash.clone(),
                actual: hex::encode(actual),
            });
        }
        if signed_by_me(view) {
            return Err(CheckpointError::AlreadySigned(view.id.clone()));
        }
        return Ok(subject);
    }
    let same_state: Vec<&CheckpointView> = list
        .checkpoints
        .iter()
        .filter(|c| c.state_hash == list.state_hash && c.state_verified)
        .collect();
    if let Some(mine) = same_state.iter().rev().find(|c| signed_by_me(c)) {
        return Err(CheckpointError::AlreadySigned(mine.id.clone()));
    }
    if let Some(theirs) = same_state.last() {
        return subject_of(theirs, network);
    }
    let heads = doc.heads();
    let state = memo.state_at(doc, &heads)?;
    Ok(Subject::new(network, heads, state))
}

/// A briefing ready to print, and the attestation to embed when it shows an
/// attested state (see [`verify`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Briefing {
    pub report: Report,
    pub attestation: Option<verify::Attestation>,
}

/// The briefing for `round` (all rounds when `None`). With `target`, the
/// state of that attested checkpoint; otherwise the current state, which is
/// shown at the latest attested checkpoint of the same state if there is
/// one, so it carries its attestation.
pub fn briefing(
    doc: &Document,
    genesis: &Genesis,
    roster: &Roster,
    round: Option<Round>,
    target: Option<&str>,
    memo: &mut StateMemo,
) -> Result<Briefing, CheckpointError> {
    let network = genesis.network_id();
    let list = list(doc, network, roster, memo);
    let chosen = match target {
        Some(target) => {
            let view = find(&list, target)?;
            if !view.attested {
                return Err(CheckpointError::NotAttested {
                    id: view.id.clone(),
                    signatures: view.member_signatures,
                    quorum: view.quorum,
                });
            }
            Some(view)
        }
        None => list.current.as_deref().and_then(|id| list.get(id)),
    };
    let Some(view) = chosen else {
        let attested = AttestedBy {
            attested: false,
            checkpoint: None,
            signers: Vec::new(),
            state_hash: list.state_hash.clone(),
            latest: list.latest_attested.clone(),
        };
        return Ok(Briefing {
            report: report::build_with(doc, genesis, roster, round, attested),
            attestation: None,
        });
    };
    let subject = subject_of(view, network)?;
    let at = doc.at(&subject.heads)?;
    let attestation = verify::Attestation::new(view, round, at.save());
    let report = report::build_with(&at, genesis, roster, round, attestation.attested_by(roster));
    Ok(Briefing {
        report,
        attestation: Some(attestation),
    })
}

#[cfg(test)]
mod tests;
