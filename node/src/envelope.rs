//! The signed envelope around every Automerge change.
//!
//! An envelope binds a change to the institution that made it: the author's
//! ed25519 key signs a domain-separation tag, the network id and the change
//! hash. The change hash is computed here, from the change's chunk header,
//! without handing a single byte to Automerge, so a forged or foreign change
//! is refused before Automerge parses it. No IO, no Automerge parsing.
//! The byte layout is specified in `docs/protocol.md`.

use std::fmt;

use automerge::ChangeHash;
use sha2::{Digest, Sha256};

use crate::genesis::NetworkId;
use crate::identity::{Identity, PublicKey};

/// Version byte of the envelope layout.
pub const ENVELOPE_VERSION: u8 = 1;
/// Domain-separation tag of a change signature.
pub const CHANGE_SIGNING_TAG: &[u8] = b"concord-change-v1\0";
/// Bytes before the change: version, author key, signature.
const HEADER_LEN: usize = 1 + 32 + 64;
/// The smallest change chunk: magic (4), checksum (4), type (1) and a
/// one-byte data length (of zero).
const MIN_CHUNK_LEN: usize = 4 + 4 + 1 + 1;
/// The smallest envelope [`Envelope::decode`] can accept: the header and
/// the smallest chunk. Every envelope and roster record on the wire or in a
/// bundle is at least this long (a record is longer still: a network id, a
/// key and a signature), so decoders refuse anything shorter as they read
/// it, and a list of them decodes into memory proportional to its bytes
/// (each entry costs a 24-byte vector header beside at least this many
/// bytes, rather than beside a single length byte).
pub const MIN_ENVELOPE_LEN: usize = HEADER_LEN + MIN_CHUNK_LEN;
/// Automerge's chunk magic bytes.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Automerge's chunk type of an uncompressed change.
const CHUNK_TYPE_CHANGE: u8 = 1;
/// Largest change an envelope may carry. Larger edits are split by the writer;
/// anything bigger from outside is refused before it is hashed.
pub const MAX_CHANGE_LEN: usize = 4 * 1024 * 1024;

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is truncated: {0} bytes, at least {MIN_ENVELOPE_LEN} needed")]
    Truncated(usize),
    #[error("unsupported envelope version {0} (this build reads version {ENVELOPE_VERSION})")]
    Version(u8),
    #[error("change is {0} bytes, over the limit of {MAX_CHANGE_LEN}")]
    TooLarge(usize),
    #[error("change is not an Automerge change chunk: {0}")]
    BadChunk(&'static str),
    #[error("signature of change {hash} by {author} does not verify")]
    BadSignature { hash: String, author: String },
}

/// A change with its author and signature. Built only by [`Envelope::sign`]
/// or [`Envelope::decode`], so its hash always matches its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    author: PublicKey,
    signature: [u8; 64],
    change: Vec<u8>,
    hash: ChangeHash,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("author", &self.author)
            .field("hash", &self.hash)
            .field("len", &self.change.len())
            .finish()
    }
}

impl Envelope {
    /// Signs a change (Automerge's uncompressed `raw_bytes`) for a network.
    pub fn sign(
        identity: &Identity,
        network: NetworkId,
        change: Vec<u8>,
    ) -> Result<Self, EnvelopeError> {
        let hash = change_hash(&change)?;
        let signature = identity.sign(&signing_message(network, hash));
        Ok(Self {
            author: identity.public(),
            signature,
            change,
            hash,
        })
    }

    /// Builds an envelope from parts without signing (tests forge with this).
    pub fn from_parts(
        author: PublicKey,
        signature: [u8; 64],
        change: Vec<u8>,
    ) -> Result<Self, EnvelopeError> {
        let hash = change_hash(&change)?;
        Ok(Self {
            author,
            signature,
            change,
            hash,
        })
    }

    /// Decodes the wire layout and hashes the change. Does not verify the
    /// signature: see [`Envelope::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() < MIN_ENVELOPE_LEN {
            return Err(EnvelopeError::Truncated(bytes.len()));
        }
        if bytes[0] != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(bytes[0]));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[1..33]);
        // Not decompressed here: ingest refuses any author that is not a
        // roster key, and roster keys were checked when the genesis was.
        let author = PublicKey::from_checked(key);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[33..HEADER_LEN]);
        Self::from_parts(author, signature, bytes[HEADER_LEN..].to_vec())
    }

    /// The wire layout: version, author, signature, change.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.change.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(self.author.as_bytes());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.change);
        out
    }

    /// Checks the signature over (tag, network id, change hash).
    pub fn verify(&self, network: NetworkId) -> Result<(), EnvelopeError> {
        if self
            .author
            .verify(&signing_message(network, self.hash), &self.signature)
        {
            Ok(())
        } else {
            Err(EnvelopeError::BadSignature {
                hash: self.hash.to_string(),
                author: self.author.node_id().to_string(),
            })
        }
    }

    pub fn author(&self) -> PublicKey {
        self.author
    }

    pub fn hash(&self) -> ChangeHash {
        self.hash
    }

    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The change bytes, for Automerge once [`Envelope::verify`] has passed.
    pub fn change_bytes(&self) -> &[u8] {
        &self.change
    }

    /// Size of the encoded envelope.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.change.len()
    }
}

/// What a change signature covers: tag, network id and change hash.
pub fn signing_message(network: NetworkId, hash: ChangeHash) -> [u8; 82] {
    let mut message = [0u8; 82];
    message[..18].copy_from_slice(CHANGE_SIGNING_TAG);
    message[18..50].copy_from_slice(&network.0);
    message[50..].copy_from_slice(&hash.0);
    message
}

/// The first fields of a change, read without Automerge: what the ingest
/// path needs to follow hash links before any signature is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeHeader {
    pub deps: Vec<ChangeHash>,
    pub actor: Vec<u8>,
    pub seq: u64,
    /// The counter of the change's first operation (Automerge's `startOp`).
    pub start_op: u64,
}

/// Reads the dependencies, actor id, sequence number and start op at the
/// start of a change chunk's data (Automerge's layout: LEB128 count then
/// 32-byte hashes; LEB128 length then actor bytes; LEB128 seq; LEB128 start
/// op). Bounded: a count or length
/// larger than the bytes left is refused before anything is allocated.
pub fn change_header(chunk: &[u8]) -> Result<ChangeHeader, EnvelopeError> {
    let bad = |what| EnvelopeError::BadChunk(what);
    let mut rest = chunk.get(9..).ok_or(bad("shorter than a chunk header"))?;
    leb128::read::unsigned(&mut rest).map_err(|_| bad("bad length field"))?;
    let count = leb128::read::unsigned(&mut rest).map_err(|_| bad("bad dependency count"))?;
    let count = usize::try_from(count).map_err(|_| bad("bad dependency count"))?;
    if count > rest.len() / 32 {
        return Err(bad("more dependencies than bytes"));
    }
    let mut deps = Vec::with_capacity(count);
    for _ in 0..count {
        let (hash, tail) = rest.split_at(32);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(hash);
        deps.push(ChangeHash(bytes));
        rest = tail;
    }
    let len = leb128::read::unsigned(&mut rest).map_err(|_| bad("bad actor length"))?;
    let len = usize::try_from(len).map_err(|_| bad("bad actor length"))?;
    if len > rest.len() {
        return Err(bad("actor longer than the change"));
    }
    let (actor, mut tail) = rest.split_at(len);
    let seq = leb128::read::unsigned(&mut tail).map_err(|_| bad("bad sequence number"))?;
    let start_op = leb128::read::unsigned(&mut tail).map_err(|_| bad("bad start op"))?;
    Ok(ChangeHeader {
        deps,
        actor: actor.to_vec(),
        seq,
        start_op,
    })
}

/// Computes an Automerge change hash from the chunk's own header, the way
/// Automerge does: SHA-256 over the chunk type, the LEB128 data length and the
/// data. Also checks the magic, the type, that the length covers exactly the
/// bytes given, and the four-byte checksum.
pub fn change_hash(chunk: &[u8]) -> Result<ChangeHash, EnvelopeError> {
    if chunk.len() > MAX_CHANGE_LEN {
        return Err(EnvelopeError::TooLarge(chunk.len()));
    }
    if chunk.len() < MIN_CHUNK_LEN {
        return Err(EnvelopeError::BadChunk("shorter than a chunk header"));
    }
    if chunk[..4] != CHUNK_MAGIC {
        return Err(EnvelopeError::BadChunk("wrong magic bytes"));
    }
    let checksum = &chunk[4..8];
    let chunk_type = chunk[8];
    if chunk_type != CHUNK_TYPE_CHANGE {
        return Err(EnvelopeError::BadChunk(
            "not an uncompressed change (chunk type must be 1)",
        ));
    }
    let mut rest = &chunk[9..];
    let before = rest.len();
    let data_len = leb128::read::unsigned(&mut rest)
        .map_err(|_| EnvelopeError::BadChunk("bad length field"))?;
    let len_bytes = before - rest.len();
    if data_len != rest.len() as u64 {
        return Err(EnvelopeError::BadChunk(
            "length field does not match the bytes present",
        ));
    }
    let mut hasher = Sha256::new();
    hasher.update([chunk_type]);
    hasher.update(&chunk[9..9 + len_bytes]);
    hasher.update(rest);
    let hash = ChangeHash(hasher.finalize().into());
    if hash.0[..4] != *checksum {
        return Err(EnvelopeError::BadChunk(
            "checksum does not match the contents",
        ));
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, Automerge, ROOT};
    use proptest::prelude::*;

    fn make_change(actor: &[u8], text: &str) -> (ChangeHash, Vec<u8>) {
        let mut doc = Automerge::new().with_actor(ActorId::from(actor));
        let mut tx = doc.transaction();
        tx.put(ROOT, "k", text).expect("put");
        tx.commit();
        let change = doc.get_last_local_change().expect("change");
        (change.hash(), change.raw_bytes().to_vec())
    }

    fn network() -> NetworkId {
        NetworkId([5; 32])
    }

    #[test]
    fn our_hash_is_automerges_hash() {
        for text in ["", "a", &"x".repeat(300), &"y".repeat(70_000)] {
            let (hash, bytes) = make_change(b"actor", text);
            assert_eq!(change_hash(&bytes).expect("hash"), hash);
        }
    }

    #[test]
    fn our_header_reader_agrees_with_automerge() {
        let mut doc = Automerge::new().with_actor(ActorId::from(b"actor-one".as_slice()));
        let mut other = Automerge::new().with_actor(ActorId::from(b"actor-two".as_slice()));
        for i in 0..5 {
            let mut tx = doc.transaction();
            tx.put(ROOT, "k", i).expect("put");
            tx.commit();
            let mut tx = other.transaction();
            tx.put(ROOT, "j", i).expect("put");
            tx.commit();
            doc.merge(&mut other).expect("merge");
        }
        for change in doc.get_changes(&[]) {
            let header = change_header(change.raw_bytes()).expect("header");
            assert_eq!(header.deps, change.deps());
            assert_eq!(header.actor, change.actor_id().to_bytes());
            assert_eq!(header.seq, change.seq());
        }
    }

    #[test]
    fn sign_verify_round_trip() {
        let id = Identity::from_secret([1; 32]);
        let (_, bytes) = make_change(id.public().as_bytes(), "hello");
        let env = Envelope::sign(&id, network(), bytes).expect("sign");
        let decoded = Envelope::decode(&env.encode()).expect("decode");
        assert_eq!(decoded, env);
        decoded.verify(network()).expect("verifies");
        assert!(decoded.verify(NetworkId([6; 32])).is_err(), "other network");
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let id = Identity::from_secret([1; 32]);
        let (_, bytes) = make_change(id.public().as_bytes(), "hello");
        let wire = Envelope::sign(&id, network(), bytes)
            .expect("sign")
            .encode();
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x04;
            let accepted = Envelope::decode(&bad).and_then(|e| e.verify(network()));
            assert!(accepted.is_err(), "flip in byte {i} was accepted");
        }
    }

    #[test]
    fn truncations_are_refused() {
        let id = Identity::from_secret([1; 32]);
        let (_, bytes) = make_change(id.public().as_bytes(), "hello");
        let wire = Envelope::sign(&id, network(), bytes)
            .expect("sign")
            .encode();
        for len in 0..wire.len() {
            assert!(Envelope::decode(&wire[..len]).is_err(), "length {len}");
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(secret in any::<[u8; 32]>(), text in ".{0,200}", net in any::<[u8; 32]>()) {
            let id = Identity::from_secret(secret);
            let (hash, bytes) = make_change(id.public().as_bytes(), &text);
            let env = Envelope::sign(&id, NetworkId(net), bytes).expect("sign");
            prop_assert_eq!(env.hash(), hash);
            let decoded = Envelope::decode(&env.encode()).expect("decode");
            prop_assert_eq!(&decoded, &env);
            prop_assert!(decoded.verify(NetworkId(net)).is_ok());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Envelope::decode(&bytes).map(|e| e.verify(network()));
            let _ = change_header(&bytes);
        }
    }
}
