//! The genesis of a network: its name, founding roster and quorum, signed by
//! the founding member. The network id is the hash of the genesis body, so
//! every signature that names the network id also names this roster.
//!
//! Encoding and verification only; reading and writing files is the caller's.
//! The byte layout is specified in `docs/protocol.md`.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{Identity, PublicKey};
use crate::roster::{Role, Roster, RosterEntry};

/// Prefix of every Concord file: magic, a kind byte and a format version.
pub(crate) const FILE_MAGIC: &[u8; 7] = b"CONCORD";
/// Kind byte of a genesis file.
const KIND_GENESIS: u8 = b'G';
/// Version of the genesis body layout.
const GENESIS_VERSION: u8 = 1;
/// Domain-separation tag of the genesis signature.
const GENESIS_SIGNING_TAG: &[u8] = b"concord-genesis-v1\0";
/// Domain-separation tag of the network id hash.
const NETWORK_ID_TAG: &[u8] = b"concord-network-id-v1\0";
/// Longest institution or network name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Errors found when building, decoding or verifying a genesis.
#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    #[error("not a Concord genesis file (bad magic or kind)")]
    NotGenesis,
    #[error("unsupported genesis version {0} (this build reads version {GENESIS_VERSION})")]
    Version(u8),
    #[error("genesis is truncated or malformed: {0}")]
    Decode(String),
    #[error("genesis signature does not verify against its creator's key")]
    BadSignature,
    #[error("invalid genesis: {0}")]
    Invalid(String),
}

/// The 32-byte id of a network: SHA-256 over a tag and the genesis body.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetworkId(pub [u8; 32]);

impl NetworkId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 16 hex digits, enough to tell networks apart in messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkId({})", self.short())
    }
}

/// What the founding member signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisBody {
    /// Human name of the network, e.g. "US-China Track II on AI risk".
    pub name: String,
    /// Milliseconds since the Unix epoch, from the creator's clock.
    pub created_at_ms: i64,
    /// The founding member who signs the genesis.
    pub creator: PublicKey,
    /// The founding roster, sorted by key.
    pub roster: Vec<RosterEntry>,
    /// Distinct member signatures a roster change needs.
    pub quorum: u32,
}

/// A verified genesis: the body, its exact bytes and the creator's signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Genesis {
    body: GenesisBody,
    body_bytes: Vec<u8>,
    signature: [u8; 64],
    network_id: NetworkId,
}

impl fmt::Debug for Genesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Genesis")
            .field("name", &self.body.name)
            .field("network_id", &self.network_id)
            .finish_non_exhaustive()
    }
}

/// The file layout after the magic: the body bytes and the signature.
#[derive(Serialize, Deserialize)]
struct GenesisWire {
    #[serde(with = "serde_bytes_compat")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes_compat")]
    signature: Vec<u8>,
}

/// Serialises a byte vector as one length-prefixed byte string in postcard.
pub(crate) mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let bytes: &[u8] = <&[u8]>::deserialize(d)?;
        Ok(bytes.to_vec())
    }
}

impl Genesis {
    /// Builds and signs a genesis. `members` and `observers` are the founding
    /// roster; the creator must be among the members.
    pub fn create(
        creator: &Identity,
        name: &str,
        roster: Vec<RosterEntry>,
        quorum: Option<u32>,
        created_at_ms: i64,
    ) -> Result<Self, GenesisError> {
        let mut roster = roster;
        roster.sort_by_key(|a| a.key);
        let members = roster.iter().filter(|e| e.role == Role::Member).count() as u32;
        let body = GenesisBody {
            name: name.trim().to_string(),
            created_at_ms,
            creator: creator.public(),
            roster,
            quorum: quorum.unwrap_or(members / 2 + 1),
        };
        validate(&body)?;
        let body_bytes =
            postcard::to_stdvec(&body).map_err(|e| GenesisError::Decode(e.to_string()))?;
        let signature = creator.sign(&signing_message(&body_bytes));
        Ok(Self {
            network_id: network_id_of(&body_bytes),
            body,
            body_bytes,
            signature,
        })
    }

    /// Decodes and verifies a genesis file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, GenesisError> {
        let rest = bytes
            .strip_prefix(FILE_MAGIC.as_slice())
            .and_then(|r| r.strip_prefix(&[KIND_GENESIS]))
            .ok_or(GenesisError::NotGenesis)?;
        let (&version, rest) = rest
            .split_first()
            .ok_or_else(|| GenesisError::Decode("no version byte".into()))?;
        if version != GENESIS_VERSION {
            return Err(GenesisError::Version(version));
        }
        let wire: GenesisWire = match postcard::take_from_bytes(rest) {
            Ok((wire, [])) => wire,
            Ok((_, extra)) => {
                return Err(GenesisError::Decode(format!(
                    "{} unexpected bytes after the signature",
                    extra.len()
                )));
            }
            Err(e) => return Err(GenesisError::Decode(e.to_string())),
        };
        Self::from_parts(wire.body, &wire.signature)
    }

    /// Verifies body bytes and a signature (also used by the store and bundles).
    pub(crate) fn from_parts(body_bytes: Vec<u8>, signature: &[u8]) -> Result<Self, GenesisError> {
        let body: GenesisBody = match postcard::take_from_bytes(&body_bytes) {
            Ok((body, [])) => body,
            Ok(_) => return Err(GenesisError::Decode("trailing bytes in the body".into())),
            Err(e) => return Err(GenesisError::Decode(e.to_string())),
        };
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| GenesisError::Decode("signature is not 64 bytes".into()))?;
        if !body
            .creator
            .verify(&signing_message(&body_bytes), &signature)
        {
            return Err(GenesisError::BadSignature);
        }
        validate(&body)?;
        Ok(Self {
            network_id: network_id_of(&body_bytes),
            body,
            body_bytes,
            signature,
        })
    }

    /// The file bytes: magic, kind, version, then body and signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body_bytes.len() + 80);
        out.extend_from_slice(FILE_MAGIC);
        out.push(KIND_GENESIS);
        out.push(GENESIS_VERSION);
        let wire = GenesisWire {
            body: self.body_bytes.clone(),
            signature: self.signature.to_vec(),
        };
        // Serialising two byte strings into a Vec cannot fail.
        out.extend(postcard::to_stdvec(&wire).unwrap_or_default());
        out
    }

    pub fn network_id(&self) -> NetworkId {
        self.network_id
    }

    pub fn body(&self) -> &GenesisBody {
        &self.body
    }

    pub fn name(&self) -> &str {
        &self.body.name
    }

    /// The roster as founded.
    pub fn roster(&self) -> Roster {
        Roster::new(self.body.roster.iter().cloned(), self.body.quorum)
            .founded_at(self.body.created_at_ms)
    }
}

fn signing_message(body_bytes: &[u8]) -> Vec<u8> {
    [GENESIS_SIGNING_TAG, body_bytes].concat()
}

fn network_id_of(body_bytes: &[u8]) -> NetworkId {
    let mut hasher = Sha256::new();
    hasher.update(NETWORK_ID_TAG);
    hasher.update(body_bytes);
    NetworkId(hasher.finalize().into())
}

fn validate(body: &GenesisBody) -> Result<(), GenesisError> {
    let invalid = |s: String| Err(GenesisError::Invalid(s));
    if body.name.is_empty() || body.name.len() > MAX_NAME_LEN {
        return invalid(format!("network name must be 1 to {MAX_NAME_LEN} bytes"));
    }
    let mut seen = BTreeSet::new();
    let mut names = BTreeSet::new();
    for entry in &body.roster {
        if !seen.insert(entry.key) {
            return invalid(format!("{} is on the roster twice", entry.key.node_id()));
        }
        let name = entry.name.trim();
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return invalid(format!(
                "the name of {} must be 1 to {MAX_NAME_LEN} bytes",
                entry.key.node_id()
            ));
        }
        if !names.insert(name.to_lowercase()) {
            return invalid(format!("two roster entries are named {name:?}"));
        }
    }
    if !body.roster.windows(2).all(|w| w[0].key < w[1].key) {
        return invalid("roster is not sorted by key".into());
    }
    let members = body
        .roster
        .iter()
        .filter(|e| e.role == Role::Member)
        .count() as u32;
    if members == 0 {
        return invalid("a network needs at least one member".into());
    }
    if !body
        .roster
        .iter()
        .any(|e| e.key == body.creator && e.role == Role::Member)
    {
        return invalid(format!(
            "the creator {} must be a member of the network it creates",
            body.creator.node_id()
        ));
    }
    if body.quorum == 0 || body.quorum > members {
        return invalid(format!(
            "quorum {} is impossible with {members} member(s): it must be 1 to {members}",
            body.quorum
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &Identity, name: &str, role: Role) -> RosterEntry {
        RosterEntry {
            key: id.public(),
            name: name.into(),
            role,
        }
    }

    fn sample() -> (Identity, Genesis) {
        let a = Identity::from_secret([1; 32]);
        let b = Identity::from_secret([2; 32]);
        let o = Identity::from_secret([3; 32]);
        let roster = vec![
            entry(&a, "Alpha", Role::Member),
            entry(&b, "Beta", Role::Member),
            entry(&o, "Observer", Role::Observer),
        ];
        let g = Genesis::create(&a, "Test", roster, None, 1_700_000_000_000).expect("genesis");
        (a, g)
    }

    #[test]
    fn round_trips_and_keeps_its_id() {
        let (_, g) = sample();
        let decoded = Genesis::decode(&g.encode()).expect("decode");
        assert_eq!(decoded, g);
        assert_eq!(decoded.network_id(), g.network_id());
        assert_eq!(g.body().quorum, 2, "majority of two members");
    }

    #[test]
    fn any_flipped_bit_is_rejected() {
        let (_, g) = sample();
        let bytes = g.encode();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                if let Ok(decoded) = Genesis::decode(&bad) {
                    panic!("flipping bit {bit:#x} of byte {i} still decoded: {decoded:?}");
                }
            }
        }
    }

    #[test]
    fn truncation_is_rejected() {
        let (_, g) = sample();
        let bytes = g.encode();
        for len in 0..bytes.len() {
            assert!(Genesis::decode(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn impossible_rosters_are_refused() {
        let a = Identity::from_secret([1; 32]);
        let b = Identity::from_secret([2; 32]);
        let bad_quorum = Genesis::create(&a, "T", vec![entry(&a, "A", Role::Member)], Some(2), 0);
        assert!(matches!(bad_quorum, Err(GenesisError::Invalid(m)) if m.contains("quorum")));
        let not_member = Genesis::create(&a, "T", vec![entry(&b, "B", Role::Member)], None, 0);
        assert!(matches!(not_member, Err(GenesisError::Invalid(m)) if m.contains("creator")));
        let dup_name = Genesis::create(
            &a,
            "T",
            vec![
                entry(&a, "Same", Role::Member),
                entry(&b, "same", Role::Member),
            ],
            None,
            0,
        );
        assert!(matches!(dup_name, Err(GenesisError::Invalid(m)) if m.contains("named")));
    }
}
