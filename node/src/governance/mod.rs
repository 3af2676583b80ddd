//! Roster changes agreed by a quorum: the signed records (proposals,
//! approvals, key successions) and the one deterministic rule that folds any
//! set of them, with the genesis, into the roster in force.
//!
//! Records travel beside the envelopes (in sync messages and bundles) and are
//! checked on their own: each is signed by the key it names. The rule, in
//! [`resolve`], depends only on the *set* of records, never on the order they
//! arrived in, so every node holding the same records computes the same
//! roster, the same verdict on every proposal and the same write spans.
//!
//! The rule: start from the genesis roster. Repeatedly, among the records not
//! yet settled whose `after` record (the roster change the signer had last
//! seen) has taken effect, take them in order of record id and settle the
//! first that can be settled:
//! - a proposal whose operation no longer fits the roster (adding a key that
//!   is on it, removing one that is not, leaving fewer members than the
//!   quorum...) is **void**, for good, with the reason;
//! - a proposal signed (proposer included) by at least `quorum` distinct
//!   current members **takes effect**;
//! - a succession signed by a current key and a fresh key takes effect, or is
//!   void when either key no longer fits;
//! - a record whose `after` is void is void.
//!
//! It stops when no record can be settled; what is left is pending. No IO.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::genesis::{Genesis, MAX_NAME_LEN, NetworkId, serde_bytes_compat};
use crate::identity::{Identity, PublicKey};
use crate::roster::{Departure, Role, Roster, RosterEntry};

/// Version byte of the record layout.
pub const RECORD_VERSION: u8 = 1;
/// Domain-separation tag of a record signature and of its id.
const RECORD_SIGNING_TAG: &[u8] = b"concord-roster-v1\0";
/// Largest encoded record accepted.
pub const MAX_RECORD_LEN: usize = 64 * 1024;
/// Most document heads a record may name.
pub const MAX_HEADS: usize = 256;

/// Errors decoding or verifying a record, or building one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("roster record of {0} bytes is over the limit of {MAX_RECORD_LEN}")]
    TooLarge(usize),
    #[error("unsupported roster record version {0} (this build reads version {RECORD_VERSION})")]
    Version(u8),
    #[error("roster record is truncated or malformed: {0}")]
    Decode(String),
    #[error("roster record {id} does not carry the signatures it needs: {why}")]
    BadSignature { id: String, why: &'static str },
    #[error("roster record {id} belongs to network {theirs}, not {ours}")]
    OtherNetwork {
        id: String,
        theirs: String,
        ours: String,
    },
    #[error("invalid roster record: {0}")]
    Invalid(String),
}

/// The id of a record: SHA-256 over the tag and the body bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordId(pub [u8; 32]);

impl RecordId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits: what the CLI prints and accepts as a prefix.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({})", self.short())
    }
}

/// A roster operation put to the members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Admit a new key as a member or observer.
    Add {
        key: PublicKey,
        name: String,
        role: Role,
    },
    /// Take a key off the roster.
    Remove { key: PublicKey },
    /// Make a member an observer or the reverse.
    SetRole { key: PublicKey, role: Role },
    /// Change how many member signatures a roster change needs.
    SetQuorum { quorum: u32 },
}

impl Op {
    /// The key the operation is about, if any.
    pub fn target(&self) -> Option<PublicKey> {
        match self {
            Op::Add { key, .. } | Op::Remove { key } | Op::SetRole { key, .. } => Some(*key),
            Op::SetQuorum { .. } => None,
        }
    }

    /// A one-line description, with names looked up in `roster`.
    pub fn describe(&self, roster: &Roster) -> String {
        match self {
            Op::Add { key, name, role } => {
                format!("add {name} ({}) as {role}", key.node_id())
            }
            Op::Remove { key } => format!("remove {}", roster.display_name(key)),
            Op::SetRole { key, role } => {
                let role = match role {
                    Role::Member => "a member",
                    Role::Observer => "an observer",
                };
                format!("make {} {role}", roster.display_name(key))
            }
            Op::SetQuorum { quorum } => format!("set the quorum to {quorum}"),
        }
    }
}

/// What a signer had seen of the document when it signed: the heads, and the
/// highest change number of the key the record is about (its target, or the
/// old key of a succession; 0 when there is none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub heads: Vec<[u8; 32]>,
    pub target_tip: u64,
}

/// The signed body of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A proposal; the proposer's signature counts as its first approval.
    Propose {
        network: NetworkId,
        proposer: PublicKey,
        after: Option<RecordId>,
        op: Op,
        seen: Seen,
        at_ms: i64,
    },
    /// An approval of a proposal.
    Approve {
        network: NetworkId,
        approver: PublicKey,
        proposal: RecordId,
        seen: Seen,
        at_ms: i64,
    },
    /// A key rotation: `new` takes `old`'s place; signed by both.
    Succeed {
        network: NetworkId,
        old: PublicKey,
        new: PublicKey,
        after: Option<RecordId>,
        seen: Seen,
        at_ms: i64,
    },
}

impl Body {
    pub fn network(&self) -> NetworkId {
        match self {
            Body::Propose { network, .. }
            | Body::Approve { network, .. }
            | Body::Succeed { network, .. } => *network,
        }
    }

    /// The keys that must sign, in signature order.
    pub fn signers(&self) -> Vec<PublicKey> {
        match self {
            Body::Propose { proposer, .. } => vec![*proposer],
            Body::Approve { approver, .. } => vec![*approver],
            Body::Succeed { old, new, .. } => vec![*old, *new],
        }
    }

    pub fn at_ms(&self) -> i64 {
        match self {
            Body::Propose { at_ms, .. }
            | Body::Approve { at_ms, .. }
            | Body::Succeed { at_ms, .. } => *at_ms,
        }
    }

    fn seen(&self) -> &Seen {
        match self {
            Body::Propose { seen, .. }
            | Body::Approve { seen, .. }
            | Body::Succeed { seen, .. } => seen,
        }
    }

    fn after(&self) -> Option<RecordId> {
        match self {
            Body::Propose { after, .. } | Body::Succeed { after, .. } => *after,
            Body::Approve { .. } => None,
        }
    }
}

/// A verified record: its body, exact bytes, signatures and id.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    body: Body,
    bytes: Vec<u8>,
    signatures: Vec<[u8; 64]>,
    id: RecordId,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("id", &self.id)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

/// The encoded layout after the version byte.
#[derive(Serialize, Deserialize)]
struct RecordWire {
    #[serde(with = "serde_bytes_compat")]
    body: Vec<u8>,
    signatures: Vec<Sig>,
}

#[derive(Serialize, Deserialize)]
struct Sig(#[serde(with = "serde_bytes_compat")] Vec<u8>);

impl Record {
    /// Signs `body` with `signers`, which must be exactly the keys it names,
    /// in order.
    pub fn sign(body: Body, signers: &[&Identity]) -> Result<Self, RecordError> {
        validate(&body)?;
        let bytes = postcard::to_stdvec(&body).map_err(|e| RecordError::Decode(e.to_string()))?;
        let id = id_of(&bytes);
        let keys: Vec<PublicKey> = signers.iter().map(|s| s.public()).collect();
        if keys != body.signers() {
            return Err(RecordError::BadSignature {
                id: id.short(),
                why: "signed by other keys than the record names",
            });
        }
        let message = signing_message(&bytes);
        let signatures = signers.iter().map(|s| s.sign(&message)).collect();
        Ok(Self {
            body,
            bytes,
            signatures,
            id,
        })
    }

    /// Decodes a record and verifies its signatures (not its network).
    pub fn decode(wire: &[u8]) -> Result<Self, RecordError> {
        if wire.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLarge(wire.len()));
        }
        let (&version, rest) = wire
            .split_first()
            .ok_or_else(|| RecordError::Decode("empty".into()))?;
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        let wire: RecordWire = match postcard::take_from_bytes(rest) {
            Ok((wire, [])) => wire,
            Ok((_, extra)) => {
                return Err(RecordError::Decode(format!(
                    "{} unexpected bytes at the end",
                    extra.len()
                )));
            }
            Err(e) => return Err(RecordError::Decode(e.to_string())),
        };
        let body: Body = match postcard::take_from_bytes(&wire.body) {
            Ok((body, [])) => body,
            Ok(_) => return Err(RecordError::Decode("trailing bytes in the body".into())),
            Err(e) => return Err(RecordError::Decode(e.to_string())),
        };
        validate(&body)?;
        let id = id_of(&wire.body);
        let signers = body.signers();
        if wire.signatures.len() != signers.len() {
            return Err(RecordError::BadSignature {
                id: id.short(),
                why: "wrong number of signatures",
            });
        }
        let message = signing_message(&wire.body);
        let mut signatures = Vec::with_capacity(signers.len());
        for (key, sig) in signers.iter().zip(&wire.signatures) {
            let sig: [u8; 64] =
                sig.0
                    .as_slice()
                    .try_into()
                    .map_err(|_| RecordError::BadSignature {
                        id: id.short(),
                        why: "a signature is not 64 bytes",
                    })?;
            if !key.verify(&message, &sig) {
                return Err(RecordError::BadSignature {
                    id: id.short(),
                    why: "a signature does not verify",
                });
            }
            signatures.push(sig);
        }
        Ok(Self {
            body,
            bytes: wire.body,
            signatures,
            id,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let wire = RecordWire {
            body: self.bytes.clone(),
            signatures: self.signatures.iter().map(|s| Sig(s.to_vec())).collect(),
        };
        let mut out = vec![RECORD_VERSION];
        out.extend(postcard::to_stdvec(&wire).unwrap_or_default());
        out
    }

    pub fn id(&self) -> RecordId {
        self.id
    }

    pub fn body(&self) -> &Body {
        &self.body
    }

    /// Checks the record names `network`.
    pub fn check_network(&self, network: NetworkId) -> Result<(), RecordError> {
        if self.body.network() == network {
            Ok(())
        } else {
            Err(RecordError::OtherNetwork {
                id: self.id.short(),
                theirs: self.body.network().short(),
                ours: network.short(),
            })
        }
    }
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(RECORD_SIGNING_TAG.len() + body.len());
    message.extend_from_slice(RECORD_SIGNING_TAG);
    message.extend_from_slice(body);
    message
}

fn id_of(body: &[u8]) -> RecordId {
    let mut hasher = Sha256::new();
    hasher.update(RECORD_SIGNING_TAG);
    hasher.update(body);
    RecordId(hasher.finalize().into())
}

fn validate(body: &Body) -> Result<(), RecordError> {
    let invalid = |m: &str| Err(RecordError::Invalid(m.to_string()));
    if body.seen().heads.len() > MAX_HEADS {
        return invalid("too many document heads");
    }
    match body {
        Body::Propose {
            op: Op::Add { name, .. },
            ..
        } if name.trim().is_empty()
            || name.len() > MAX_NAME_LEN
            || name.chars().any(char::is_control) =>
        {
            invalid("the new entry's name must be 1 to 200 bytes of text")
        }
        Body::Propose {
            op: Op::SetQuorum { quorum: 0 },
            ..
        } => invalid("the quorum must be at least 1"),
        Body::Succeed { old, new, .. } if old == new => {
            invalid("a succession must name two different keys")
        }
        _ => Ok(()),
    }
}

/// A digest of a set of records (SHA-256 over the sorted ids): two nodes
/// with the same digest hold the same records.
pub fn digest<'a>(ids: impl IntoIterator<Item = &'a RecordId>) -> [u8; 32] {
    let ids: BTreeSet<&RecordId> = ids.into_iter().collect();
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update(id.0);
    }
    hasher.finalize().into()
}

/// Where a proposal or succession stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Standing {
    /// Waiting for signatures (or for the change it builds on).
    Pending { needs: u32 },
    /// In force since the given step of the roster history.
    Applied { step: u32, at_ms: i64 },
    /// Can no longer take effect.
    Void { reason: String },
}

/// One proposal or succession, and the verdict on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Motion {
    pub id: RecordId,
    pub kind: MotionKind,
    /// Who signed it (proposer and approvers, or old and new key), by key.
    pub signers: BTreeSet<PublicKey>,
    pub standing: Standing,
    pub at_ms: i64,
    /// The roster change it builds on (none: the genesis).
    pub after: Option<RecordId>,
    /// What the record itself claims (the proposer's or the old key's
    /// `seen`): its `target_tip` is the cut-off when it takes effect.
    pub seen: Seen,
    /// What each signer claimed when it signed, by key: the proposer's (or
    /// both keys' of a succession) is the record's own, each approver's the
    /// one of its approval that counts.
    pub claims: BTreeMap<PublicKey, Claim>,
}

/// One signer's claim: what it had seen, when it says it signed, and the
/// record that carries its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub seen: Seen,
    pub at_ms: i64,
    pub record: RecordId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MotionKind {
    Proposal { proposer: PublicKey, op: Op },
    Succession { old: PublicKey, new: PublicKey },
}

/// The outcome of [`resolve`]: the roster in force and every motion's fate.
#[derive(Clone, Debug)]
pub struct Governance {
    pub roster: Roster,
    /// Motions by id.
    pub motions: BTreeMap<RecordId, Motion>,
    /// Ids of the motions that took effect, in order.
    pub history: Vec<RecordId>,
}

impl Governance {
    /// The id of the last roster change in force (what a new record's
    /// `after` names).
    pub fn head(&self) -> Option<RecordId> {
        self.history.last().copied()
    }
}

/// Folds the genesis and a set of records into the roster in force. Records
/// of another network are ignored; duplicates count once.
pub fn resolve<'a>(genesis: &Genesis, records: impl IntoIterator<Item = &'a Record>) -> Governance {
    let network = genesis.network_id();
    let mut roster = genesis.roster();
    let mut bodies: BTreeMap<RecordId, &Body> = BTreeMap::new();
    let mut approvals: BTreeMap<RecordId, BTreeMap<PublicKey, (&Seen, i64, RecordId)>> =
        BTreeMap::new();
    for record in records {
        if record.body.network() != network {
            continue;
        }
        match &record.body {
            Body::Approve {
                approver,
                proposal,
                seen,
                at_ms,
                ..
            } => {
                // Two approvals by one key (signed twice): the earlier
                // counts, and of two at the same time the lower record id.
                let slot = approvals.entry(*proposal).or_default();
                let earlier = slot
                    .get(approver)
                    .is_some_and(|(_, t, id)| (*t, *id) <= (*at_ms, record.id));
                if !earlier {
                    slot.insert(*approver, (seen, *at_ms, record.id));
                }
            }
            body => {
                bodies.insert(record.id, body);
            }
        }
    }
    let mut motions: BTreeMap<RecordId, Motion> = bodies
        .iter()
        .map(|(id, body)| {
            let own = Claim {
                seen: body.seen().clone(),
                at_ms: body.at_ms(),
                record: *id,
            };
            let (kind, claims) = match body {
                Body::Propose { proposer, op, .. } => {
                    let mut claims: BTreeMap<PublicKey, Claim> = approvals
                        .get(id)
                        .into_iter()
                        .flatten()
                        .map(|(key, (seen, at_ms, record))| {
                            let claim = Claim {
                                seen: (*seen).clone(),
                                at_ms: *at_ms,
                                record: *record,
                            };
                            (*key, claim)
                        })
                        .collect();
                    claims.insert(*proposer, own);
                    (
                        MotionKind::Proposal {
                            proposer: *proposer,
                            op: op.clone(),
                        },
                        claims,
                    )
                }
                Body::Succeed { old, new, .. } => (
                    MotionKind::Succession {
                        old: *old,
                        new: *new,
                    },
                    [(*old, own.clone()), (*new, own)].into_iter().collect(),
                ),
                Body::Approve { .. } => unreachable!("approvals are kept apart"),
            };
            let motion = Motion {
                id: *id,
                kind,
                signers: claims.keys().copied().collect(),
                standing: Standing::Pending { needs: 0 },
                at_ms: body.at_ms(),
                after: body.after(),
                seen: body.seen().clone(),
                claims,
            };
            (*id, motion)
        })
        .collect();
    let mut history: Vec<RecordId> = Vec::new();
    let mut settled: BTreeSet<RecordId> = BTreeSet::new();

    'fold: loop {
        for (id, body) in &bodies {
            if settled.contains(id) {
                continue;
            }
            if let Some(after) = body.after().filter(|a| !history.contains(a)) {
                // Settled but not in the history: void, and so is this.
                if settled.contains(&after) {
                    settle_void(
                        &mut motions,
                        &mut settled,
                        *id,
                        "it builds on a roster change that never took effect",
                    );
                    continue 'fold;
                }
                continue;
            }
            let verdict = match body {
                Body::Propose {
                    proposer,
                    op,
                    seen,
                    at_ms,
                    ..
                } => judge_proposal(&roster, *proposer, op, seen, *at_ms, approvals.get(id)),
                Body::Succeed {
                    old,
                    new,
                    seen,
                    at_ms,
                    ..
                } => judge_succession(&roster, *old, *new, seen.target_tip, *at_ms),
                Body::Approve { .. } => continue,
            };
            match verdict {
                Verdict::Wait => continue,
                Verdict::Void(reason) => {
                    settle_void(&mut motions, &mut settled, *id, &reason);
                    continue 'fold;
                }
                Verdict::Apply(change) => {
                    let at_ms = change.at_ms;
                    change.apply(&mut roster);
                    history.push(*id);
                    settled.insert(*id);
                    if let Some(m) = motions.get_mut(id) {
                        m.standing = Standing::Applied {
                            step: history.len() as u32,
                            at_ms,
                        };
                    }
                    continue 'fold;
                }
            }
        }
        break;
    }
    // What pending proposals still need, under the final roster.
    for motion in motions.values_mut() {
        if let (Standing::Pending { needs }, MotionKind::Proposal { .. }) =
            (&mut motion.standing, &motion.kind)
        {
            let have = motion
                .signers
                .iter()
                .filter(|k| roster.is_member(k))
                .count() as u32;
            *needs = roster.quorum().saturating_sub(have);
        }
    }
    // Records whose `after` is unknown here stay pending; a record whose
    // `after` is void was settled above.
    if roster.members().count() == 0 {
        tracing::warn!("the roster has no members left");
    }
    Governance {
        roster,
        motions,
        history,
    }
}

fn settle_void(
    motions: &mut BTreeMap<RecordId, Motion>,
    settled: &mut BTreeSet<RecordId>,
    id: RecordId,
    reason: &str,
) {
    settled.insert(id);
    if let Some(m) = motions.get_mut(&id) {
        m.standing = Standing::Void {
            reason: reason.to_string(),
        };
    }
}

enum Verdict {
    Wait,
    Void(String),
    Apply(Change),
}

/// A roster change ready to apply.
struct Change {
    kind: ChangeKind,
    at_ms: i64,
}

enum ChangeKind {
    Add(RosterEntry),
    Remove {
        key: PublicKey,
        handed: Vec<PublicKey>,
        mark: u64,
        seen_by_all: u64,
    },
    SetRole {
        key: PublicKey,
        handed: Vec<PublicKey>,
        role: Role,
        mark: u64,
    },
    SetQuorum(u32),
    Succeed {
        old: PublicKey,
        new: PublicKey,
        mark: u64,
    },
}

impl Change {
    fn apply(self, roster: &mut Roster) {
        match self.kind {
            ChangeKind::Add(entry) => roster.admit(entry, self.at_ms),
            ChangeKind::Remove {
                key,
                handed,
                mark,
                seen_by_all,
            } => match handed.split_first() {
                // The signers named a key that has since rotated: its chain
                // closes at what they saw, its successors' chains at nothing.
                Some((named, rest)) => {
                    roster.clamp(named, mark);
                    for k in rest {
                        roster.clamp(k, 0);
                    }
                    roster.depart(&key, Departure::Removed, (0, 0), self.at_ms);
                }
                None => roster.depart(&key, Departure::Removed, (mark, seen_by_all), self.at_ms),
            },
            ChangeKind::SetRole {
                key,
                handed,
                role,
                mark,
            } => match handed.split_first() {
                Some((named, rest)) if role == Role::Observer => {
                    roster.clamp(named, mark);
                    for k in rest {
                        roster.clamp(k, 0);
                    }
                    roster.change_role(&key, role, 0, self.at_ms);
                }
                _ => roster.change_role(&key, role, mark, self.at_ms),
            },
            ChangeKind::SetQuorum(quorum) => roster.set_quorum(quorum),
            ChangeKind::Succeed { old, new, mark } => {
                let Some(entry) = roster.get(&old).cloned() else {
                    return;
                };
                roster.depart(&old, Departure::RotatedTo(new), (mark, mark), self.at_ms);
                roster.admit(RosterEntry { key: new, ..entry }, self.at_ms);
            }
        }
    }
}

/// Why an approving node should not sign a proposal as it stands: the
/// proposal's claim about its target's chain, which becomes the cut-off of
/// that chain, is not what this node holds. The operator may still sign it
/// knowingly (`--confirm-claims`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "proposal {id} claims {name}'s last change is {claimed}, but this node holds {}; \
         sync first, or approve with --confirm-claims if you know of changes this node has \
         not seen",
        held_up_to(*.held)
    )]
    AboveHeld {
        id: String,
        name: String,
        claimed: u64,
        held: u64,
    },
    #[error(
        "proposal {id} claims {name}'s last change is {claimed}, but this node holds its \
         changes up to {held}: approving would reject changes {} to {held} and every change \
         built on them; have a node that holds them propose again, or approve with \
         --confirm-claims to reject them",
        .claimed + 1
    )]
    BelowHeld {
        id: String,
        name: String,
        claimed: u64,
        held: u64,
    },
}

fn held_up_to(held: u64) -> String {
    if held == 0 {
        "none of its changes".into()
    } else {
        format!("only up to {held}")
    }
}

/// Checks the claim a proposal makes about its target's chain (`claimed`,
/// the last change number that is to count) against what the approving
/// node holds of that chain (`held`), for the operations that set a
/// cut-off: a removal or role change may not claim changes this node has
/// not seen, and a removal or demotion may not cut changes it holds.
/// `name` is the target's name on the roster.
pub fn check_claim(
    id: RecordId,
    op: &Op,
    name: &str,
    claimed: u64,
    held: u64,
) -> Result<(), ClaimError> {
    let closes = match op {
        Op::Remove { .. }
        | Op::SetRole {
            role: Role::Observer,
            ..
        } => true,
        Op::SetRole { .. } => false,
        Op::Add { .. } | Op::SetQuorum { .. } => return Ok(()),
    };
    let (id, name) = (id.short(), crate::clip::quote(name));
    if claimed > held {
        Err(ClaimError::AboveHeld {
            id,
            name,
            claimed,
            held,
        })
    } else if closes && claimed < held {
        Err(ClaimError::BelowHeld {
            id,
            name,
            claimed,
            held,
        })
    } else {
        Ok(())
    }
}

/// Why `op` does not fit `roster` as it stands, if it does not: adding a key
/// that is (or was) on it or a name it uses, removing or changing the role of
/// a key that is not on it, leaving fewer members than the quorum, setting a
/// role or quorum already in force, or a quorum outside 1..=members. The
/// rule voids such a proposal; `Replica::propose` refuses it at once.
pub fn misfit(op: &Op, roster: &Roster) -> Option<String> {
    let members = roster.members().count() as u32;
    let quorum = roster.quorum();
    match op {
        Op::Add { key, name, .. } => {
            if roster.get(key).is_some() {
                Some(format!("{} is already on the roster", key.node_id()))
            } else if roster.knows(key) {
                Some(format!(
                    "{} was on the roster before; a removed or replaced key cannot come back \
                     (admit the institution with a new key)",
                    key.node_id()
                ))
            } else if roster.entries().any(|e| e.name == name.trim()) {
                Some(format!("an entry named {name:?} is already on the roster"))
            } else {
                None
            }
        }
        Op::Remove { key } => match roster.role_of(key) {
            None => Some(format!("{} is not on the roster", key.node_id())),
            Some(Role::Member) if members - 1 < quorum => Some(format!(
                "removing {} would leave {} members, fewer than the quorum of {quorum}; lower \
                 the quorum first",
                roster.display_name(key),
                members - 1
            )),
            _ => None,
        },
        Op::SetRole { key, role } => match roster.role_of(key) {
            None => Some(format!("{} is not on the roster", key.node_id())),
            Some(r) if r == *role => Some(format!(
                "{} already has the role {role}",
                roster.display_name(key)
            )),
            Some(Role::Member) if members - 1 < quorum => Some(format!(
                "making {} an observer would leave {} members, fewer than the quorum of {quorum}",
                roster.display_name(key),
                members - 1
            )),
            _ => None,
        },
        Op::SetQuorum { quorum: q } => {
            if *q == 0 || *q > members {
                Some(format!(
                    "a quorum of {q} is not between 1 and the {members} members"
                ))
            } else if *q == quorum {
                Some(format!("the quorum is already {q}"))
            } else {
                None
            }
        }
    }
}

fn judge_proposal(
    roster: &Roster,
    proposer: PublicKey,
    original: &Op,
    seen: &Seen,
    at_ms: i64,
    approvals: Option<&BTreeMap<PublicKey, (&Seen, i64, RecordId)>>,
) -> Verdict {
    let quorum = roster.quorum();
    // A removal or role change follows its target through key rotations, so
    // a key cannot escape one by handing its place to a successor.
    let op = &match original {
        Op::Remove { key } => Op::Remove {
            key: roster.current_key(key),
        },
        Op::SetRole { key, role } => Op::SetRole {
            key: roster.current_key(key),
            role: *role,
        },
        other => other.clone(),
    };
    // Keys the original target handed its place on to, oldest first (empty
    // when it did not rotate): their spans close too (see `Change::apply`).
    let named = original.target();
    let mut handed: Vec<PublicKey> = Vec::new();
    if let (Some(named), Some(target)) = (named, op.target())
        && named != target
    {
        let mut key = named;
        while key != target && handed.len() <= roster.former().count() {
            handed.push(key);
            key = match roster.former_of(&key) {
                Some(f) => match f.departure {
                    Departure::RotatedTo(next) => next,
                    Departure::Removed => break,
                },
                None => break,
            };
        }
    }
    let misfit = misfit(op, roster);
    if let Some(reason) = misfit {
        return Verdict::Void(reason);
    }
    // Counted signers: distinct current members, never the key a removal or
    // role change is about (nor one it rotated from), so it cannot set its
    // own cut-off.
    let excluded = |key: &PublicKey| op.target() == Some(*key) || handed.contains(key);
    let mut counted: Vec<(&PublicKey, &Seen, i64)> = Vec::new();
    if roster.is_member(&proposer) && !excluded(&proposer) {
        counted.push((&proposer, seen, at_ms));
    }
    if let Some(approvals) = approvals {
        for (key, (seen, signed_ms, _)) in approvals {
            if *key != proposer && roster.is_member(key) && !excluded(key) {
                counted.push((key, seen, *signed_ms));
            }
        }
    }
    if (counted.len() as u32) < quorum {
        return Verdict::Wait;
    }
    // The signatures that completed the quorum (earliest first, ties by
    // key) decide when the change is in force: from the last of them.
    // Later approvals change nothing.
    counted.sort_by(|a, b| (a.2, a.0).cmp(&(b.2, b.0)));
    counted.truncate(quorum.max(1) as usize);
    // The cut-off is the proposal's own claim about the target's chain: the
    // one number every signature of the quorum covers (an approval signs
    // the proposal's id, which hashes it). An approver's own `seen` is its
    // word alone, so one signer cannot lift (or lower) the cut-off by it,
    // nor by dating its approval early; an approving node checks the claim
    // against what it holds before it signs (`check_claim`).
    let mark = seen.target_tip;
    let at_ms = counted.last().map_or(at_ms, |c| c.2);
    let kind = match op {
        Op::Add { key, name, role } => ChangeKind::Add(RosterEntry {
            key: *key,
            name: name.trim().to_string(),
            role: *role,
        }),
        Op::Remove { key } => ChangeKind::Remove {
            key: *key,
            handed: handed.clone(),
            mark,
            seen_by_all: counted
                .iter()
                .map(|(_, s, _)| s.target_tip)
                .min()
                .unwrap_or(0),
        },
        Op::SetRole { key, role } => ChangeKind::SetRole {
            key: *key,
            handed,
            role: *role,
            mark,
        },
        Op::SetQuorum { quorum } => ChangeKind::SetQuorum(*quorum),
    };
    Verdict::Apply(Change { kind, at_ms })
}

fn judge_succession(
    roster: &Roster,
    old: PublicKey,
    new: PublicKey,
    mark: u64,
    at_ms: i64,
) -> Verdict {
    if roster.get(&old).is_none() {
        return Verdict::Void(format!("{} is not on the roster", old.node_id()));
    }
    if roster.knows(&new) {
        return Verdict::Void(format!(
            "the new key {} is or was on the roster already",
            new.node_id()
        ));
    }
    Verdict::Apply(Change {
        kind: ChangeKind::Succeed { old, new, mark },
        at_ms,
    })
}

/// The roster that `genesis` and the encoded records of a file (a bundle or
/// an attested report) resolve to: each record decoded and verified, of
/// this network, and admitted as a node would (see [`admit`]).
pub fn roster_from_wire<B: AsRef<[u8]>>(
    genesis: &Genesis,
    wire: impl IntoIterator<Item = B>,
) -> Result<Roster, RecordError> {
    let network = genesis.network_id();
    let mut records = Vec::new();
    for bytes in wire {
        let record = Record::decode(bytes.as_ref())?;
        record.check_network(network)?;
        records.push(record);
    }
    Ok(resolve(genesis, &admit(genesis, records)).roster)
}

/// The records of `candidates` a node may hold with `genesis`: those of its
/// network signed by a **known** key. The founding roster's keys are known,
/// and so is every key an admitted record names as added (`Add`) or as a
/// successor (`Succeed`). The known set only grows as records are added, so
/// nodes that see the same candidates, in any order and in any batches,
/// admit the same records; strangers' records are never stored. (A key
/// named by a proposal that never takes effect stays known: only members can
/// name one.)
pub fn admit(genesis: &Genesis, candidates: Vec<Record>) -> Vec<Record> {
    let network = genesis.network_id();
    let mut known: BTreeSet<PublicKey> = genesis.body().roster.iter().map(|e| e.key).collect();
    let mut admitted: Vec<Record> = Vec::new();
    let mut pending: Vec<Record> = candidates
        .into_iter()
        .filter(|r| r.body.network() == network)
        .collect();
    loop {
        let (fits, rest): (Vec<Record>, Vec<Record>) = pending
            .into_iter()
            .partition(|r| known.contains(&r.body.signers()[0]));
        pending = rest;
        if fits.is_empty() {
            return admitted;
        }
        for record in &fits {
            match &record.body {
                Body::Propose {
                    op: Op::Add { key, .. },
                    ..
                } => {
                    known.insert(*key);
                }
                Body::Succeed { new, .. } => {
                    known.insert(*new);
                }
                _ => {}
            }
        }
        admitted.extend(fits);
    }
}

#[cfg(test)]
mod tests;
