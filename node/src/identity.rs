//! The institution's identity: its ed25519 key, the node id derived from it and
//! a short fingerprint people can read to each other over the phone.
//!
//! One key is both the signing key for every change and the libp2p identity, so
//! a node id (a libp2p `PeerId`) names exactly one public key. This module owns
//! the key file; it never logs or prints the secret.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// First line of a key file; names the format so a later version can change it.
const KEY_FILE_TAG: &str = "concord-ed25519-secret-v1";

/// Errors about keys, key files and node ids.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("an identity already exists at {0} (refusing to overwrite it)")]
    Exists(PathBuf),
    #[error("no identity at {0}: run `concord init --name NAME` first")]
    Missing(PathBuf),
    #[error("cannot access key file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("invalid node id {}: {reason}", crate::clip::quote(.id))]
    InvalidNodeId { id: String, reason: String },
    #[error("public key {0} is not a valid ed25519 point or is of small order")]
    WeakKey(String),
    #[error("cannot read the system's random number generator: {0}")]
    Random(String),
}

/// An ed25519 public key: the institution's identity on the network and the
/// prefix of every Automerge actor id it writes with.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PublicKey([u8; 32]);

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = <[u8; 32]>::deserialize(d)?;
        PublicKey::from_bytes(bytes).map_err(serde::de::Error::custom)
    }
}

impl PublicKey {
    /// Wraps raw key bytes after checking they are a usable ed25519 key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdentityError> {
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| IdentityError::WeakKey(hex::encode(bytes)))?;
        if key.is_weak() {
            return Err(IdentityError::WeakKey(hex::encode(bytes)));
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Wraps bytes without decompressing the point: for keys read from the
    /// store (checked when they were written) and for envelope authors, which
    /// must then match a roster key before anything else is done with them.
    /// Decompressing a point costs about as much as verifying a signature.
    pub(crate) fn from_checked(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The dalek key, for verification. Infallible for keys built by
    /// [`PublicKey::from_bytes`]; a key decoded from the wire is checked there.
    pub fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::WeakKey(hex::encode(self.0)))
    }

    /// Verifies `signature` over `message` with the strict rules (no
    /// malleable signatures, no small-order points), the same on every node.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = self.verifying_key() else {
            return false;
        };
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    /// The libp2p peer id of this key, as printed by `concord id`.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.0)
    }

    /// A short, human-checkable fingerprint: the first 80 bits of SHA-256 of
    /// the key in base32, in four groups of four.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0);
        let text = data_encoding::BASE32_NOPAD.encode(&digest[..10]);
        text.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("-")
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A node id: the libp2p `PeerId` of an institution's ed25519 key, in its
/// usual base58 text form (`12D3KooW...`). It carries the whole public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 32]);

impl NodeId {
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0)
    }

    /// The libp2p peer id. An ed25519 peer id is the identity multihash of
    /// the protobuf-encoded key (field 1, key type 1 = Ed25519; field 2,
    /// the 32 key bytes), built here from the bytes: libp2p's own path
    /// decompresses the curve point first, which cost about 20 µs for every
    /// roster entry each time the engine followed the roster (every
    /// message), and the point is already valid (every constructor of
    /// [`PublicKey`] checks it). A test compares both paths.
    pub fn peer_id(&self) -> Option<libp2p::identity::PeerId> {
        let mut multihash = [0u8; 38];
        multihash[..6].copy_from_slice(&[0x00, 36, 0x08, 0x01, 0x12, 32]);
        multihash[6..].copy_from_slice(&self.0);
        libp2p::identity::PeerId::from_bytes(&multihash).ok()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer_id() {
            Some(peer) => f.write_str(&peer.to_base58()),
            None => write!(f, "invalid-key-{}", hex::encode(self.0)),
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| IdentityError::InvalidNodeId {
            id: s.to_string(),
            reason: reason.to_string(),
        };
        let peer = libp2p::identity::PeerId::from_str(s.trim())
            .map_err(|e| invalid(&format!("not a libp2p peer id ({e})")))?;
        let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
        // Ed25519 peer ids use the identity multihash (code 0), so the digest
        // is the protobuf-encoded public key itself.
        if multihash.code() != 0 {
            return Err(invalid(
                "not an ed25519 peer id (its key is hashed, not embedded)",
            ));
        }
        let key = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest())
            .map_err(|_| invalid("its embedded public key does not decode"))?
            .try_into_ed25519()
            .map_err(|_| invalid("not an ed25519 key"))?;
        let public = PublicKey::from_bytes(key.to_bytes()).map_err(|_| invalid("weak key"))?;
        Ok(public.node_id())
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The institution's signing key. Cloning it is deliberate and rare.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Self::from_secret(secret))
    }

    /// A key from its 32 secret bytes (tests and the demo use fixed seeds).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&secret),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    pub fn node_id(&self) -> NodeId {
        self.public().node_id()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// The same key as a libp2p keypair, for the network layer.
    pub fn libp2p_keypair(&self) -> libp2p::identity::Keypair {
        let mut secret = self.key.to_bytes();
        libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
            .unwrap_or_else(|_| unreachable!("a dalek secret key is always 32 valid bytes"))
    }

    /// Reads a key file written by [`Identity::save_new`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::Missing(path.to_path_buf()));
            }
            Err(source) => {
                return Err(IdentityError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let malformed = |reason: &str| IdentityError::Malformed {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| malformed("no key line"))?;
        let hex_secret = line
            .strip_prefix(KEY_FILE_TAG)
            .ok_or_else(|| malformed(&format!("expected a line starting with {KEY_FILE_TAG}")))?
            .trim();
        let mut secret = [0u8; 32];
        hex::decode_to_slice(hex_secret, &mut secret)
            .map_err(|_| malformed("the secret is not 64 hexadecimal digits"))?;
        Ok(Self::from_secret(secret))
    }

    /// Writes the key file with mode 0600, refusing to replace an existing one.
    pub fn save_new(&self, path: &Path) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists(path.to_path_buf())
            } else {
                io(e)
            }
        })?;
        let body = format!(
            "# Concord institution key (ed25519). Anyone holding this file can sign as\n\
             # your institution: keep it private and back it up offline.\n\
             {KEY_FILE_TAG} {}\n",
            hex::encode(self.key.to_bytes())
        );
        file.write_all(body.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_through_text() {
        let id = Identity::from_secret([7; 32]);
        let text = id.node_id().to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        let parsed: NodeId = text.parse().expect("parse");
        assert_eq!(parsed.public_key(), id.public());
    }

    #[test]
    fn node_id_matches_libp2p_peer_id() {
        for secret in 0..=255u8 {
            let id = Identity::from_secret([secret; 32]);
            let peer = id.libp2p_keypair().public().to_peer_id();
            assert_eq!(id.node_id().peer_id(), Some(peer), "key {secret}");
            assert_eq!(peer.to_base58(), id.node_id().to_string());
        }
    }

    #[test]
    fn bad_node_ids_are_named() {
        for bad in [
            "",
            "hello",
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
        ] {
            let err = bad.parse::<NodeId>().expect_err(bad);
            assert!(err.to_string().contains("invalid node id"), "{err}");
        }
    }

    #[test]
    fn fingerprint_is_grouped_and_stable() {
        let id = Identity::from_secret([1; 32]);
        let fp = id.public().fingerprint();
        assert_eq!(fp.len(), 19);
        assert_eq!(fp.matches('-').count(), 3);
        assert_eq!(fp, Identity::from_secret([1; 32]).public().fingerprint());
        assert_ne!(fp, Identity::from_secret([2; 32]).public().fingerprint());
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("identity.key");
        let id = Identity::generate().expect("generate");
        id.save_new(&path).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Identity::generate().expect("generate");
        assert!(matches!(
            again.save_new(&path),
            Err(IdentityError::Exists(_))
        ));
        assert_eq!(Identity::load(&path).expect("load").public(), id.public());
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let id = Identity::from_secret([3; 32]);
        let sig = id.sign(b"hello");
        assert!(id.public().verify(b"hello", &sig));
        assert!(!id.public().verify(b"hellO", &sig));
        let other = Identity::from_secret([4; 32]);
        assert!(!other.public().verify(b"hello", &sig));
    }
}
