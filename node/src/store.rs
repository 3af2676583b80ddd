//! The durable store: the genesis, every accepted envelope, the per-author
//! chain index and the evidence of forks, in one sled tree.
//!
//! Keys (one tree, so a single `apply_batch` is atomic across all of them):
//! - `g` → the genesis file bytes;
//! - `e` ‖ change hash (32) → envelope bytes;
//! - `s` ‖ author key (32) ‖ seq (u64 big-endian) → change hash;
//! - `x` ‖ author key (32) ‖ seq (u64 big-endian) → evidence record (see
//!   [`Evidence`]): one proof per equivocation (stores written before this
//!   layout keyed it by the refused change's hash; those are still read);
//! - `f` ‖ author key (32) → the proof of that author's lowest known fork
//!   (see [`crate::fork`]), which freezes its chain there;
//! - `r` ‖ record id (32) → roster record bytes (see [`crate::governance`]);
//! - `t` ‖ author key (32) → highest stored seq (u64 big-endian);
//! - `p` ‖ peer key (32) → remembered addresses;
//! - `d` → the document snapshot (see [`Snapshot`]);
//! - `k` → present while a store recovered empty re-syncs (see
//!   [`Store::set_resyncing`]);
//! - `o` → the key (32) whose chain this store is known to hold all of: made
//!   here, or learned from a member (see [`Store::set_chain_known`]).
//!
//! A batch of envelopes is written with one atomic `apply_batch` and then
//! flushed; nothing is reported stored before the flush returns. Only this
//! module imports sled.

use std::path::{Path, PathBuf};

use automerge::{Change, ChangeHash};
use serde::{Deserialize, Serialize};

use crate::doc::parse_change;
use crate::envelope::{ChangeHeader, Envelope, change_header};
use crate::identity::PublicKey;
use crate::ingest::Known;

const KEY_GENESIS: &[u8] = b"g";
const KEY_SNAPSHOT: &[u8] = b"d";
const KEY_RESYNCING: &[u8] = b"k";
const KEY_CHAIN_KNOWN: &[u8] = b"o";
const PREFIX_ENVELOPE: u8 = b'e';
const PREFIX_SEQ: u8 = b's';
const PREFIX_EVIDENCE: u8 = b'x';
const PREFIX_PEER: u8 = b'p';
const PREFIX_TIP: u8 = b't';
const PREFIX_RECORD: u8 = b'r';
const PREFIX_FORK: u8 = b'f';

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store at {0} is in use by another concord process (stop it, or run the command \
         against the running node)"
    )]
    Locked(PathBuf),
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(
        "the store at {path} is corrupt and was left untouched; to rebuild it from peers, run \
         `concord network recover GENESIS_FILE`: it moves the store aside and starts an empty \
         one that sync refills (see docs/reliability.md)"
    )]
    Corrupted {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("store operation failed")]
    Sled(#[from] sled::Error),
    #[error("the store is corrupt: {0}")]
    Corrupt(String),
}

/// A refused change kept as evidence of a fork.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The refused envelope, as received.
    pub envelope: Vec<u8>,
    /// The stored change it conflicts with.
    pub conflicts_with: [u8; 32],
    pub seq: u64,
    pub recorded_at_ms: i64,
}

/// A saved document, the chain tips of the changes stored when it was
/// saved, the roster records it was computed under and the stored changes it
/// leaves out as not valid under them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub tips: Vec<(PublicKey, u64)>,
    pub roster: [u8; 32],
    pub invalid: Vec<[u8; 32]>,
    pub doc: Vec<u8>,
}

/// `x` ‖ author ‖ seq: where the proof of one equivocation is kept.
fn evidence_key(author: &PublicKey, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 32 + 8);
    key.push(PREFIX_EVIDENCE);
    key.extend_from_slice(author.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The node's store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    /// How many flushes this handle made (group commit makes fewer).
    flushes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Unit tests set this to make every flush fail, as a full or failing
    /// disk would.
    #[cfg(test)]
    failing_flushes: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Store {
    /// Opens (or creates) the store in `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        match sled::Config::new().path(path).open() {
            Ok(db) => Ok(Self {
                db,
                flushes: Default::default(),
                #[cfg(test)]
                failing_flushes: Default::default(),
            }),
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
            {
                Err(StoreError::Locked(path.to_path_buf()))
            }
            Err(source @ sled::Error::Corruption { .. }) => {
                tracing::error!(path = %path.display(), error = %source, "the store is corrupt");
                Err(StoreError::Corrupted {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(source) => Err(StoreError::Open {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn genesis(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(KEY_GENESIS)?.map(|v| v.to_vec()))
    }

    /// Marks (or unmarks) the store as recovered empty and re-syncing, and
    /// flushes.
    pub fn set_resyncing(&self, resyncing: bool) -> Result<(), StoreError> {
        if resyncing {
            self.db.insert(KEY_RESYNCING, &[1u8])?;
        } else {
            self.db.remove(KEY_RESYNCING)?;
        }
        self.sync()
    }

    /// Records that this store holds every change `key` has signed (the key
    /// was made here, or its chain was learned from a member), and flushes.
    pub fn set_chain_known(&self, key: &PublicKey) -> Result<(), StoreError> {
        self.db.insert(KEY_CHAIN_KNOWN, key.as_bytes().as_slice())?;
        self.sync()
    }

    /// The key whose whole chain this store is known to hold, if any.
    pub fn chain_known(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self
            .db
            .get(KEY_CHAIN_KNOWN)?
            .and_then(|v| <[u8; 32]>::try_from(v.as_ref()).ok()))
    }

    /// Whether the store was recovered empty and is re-syncing.
    pub fn resyncing(&self) -> Result<bool, StoreError> {
        Ok(self.db.contains_key(KEY_RESYNCING)?)
    }

    /// Installs the genesis and flushes.
    pub fn set_genesis(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.db.insert(KEY_GENESIS, bytes)?;
        self.sync()?;
        Ok(())
    }

    /// Writes accepted envelopes atomically (with their chain index entries)
    /// and flushes. Either all are durable when this returns or none is stored.
    pub fn commit<'a>(
        &self,
        batch: impl IntoIterator<Item = (&'a Envelope, u64)>,
    ) -> Result<usize, StoreError> {
        let count = self.stage(batch)?;
        self.sync()?;
        Ok(count)
    }

    /// Writes envelopes atomically like [`Store::commit`] but does not flush:
    /// they are durable after the next [`Store::flush`] (group commit).
    pub fn stage<'a>(
        &self,
        batch: impl IntoIterator<Item = (&'a Envelope, u64)>,
    ) -> Result<usize, StoreError> {
        let mut writes = sled::Batch::default();
        let mut count = 0;
        let mut tips: std::collections::BTreeMap<PublicKey, u64> = Default::default();
        for (envelope, seq) in batch {
            writes.insert(envelope_key(&envelope.hash()).as_slice(), envelope.encode());
            writes.insert(
                seq_key(&envelope.author(), seq).as_slice(),
                envelope.hash().0.as_slice(),
            );
            let tip = tips.entry(envelope.author()).or_insert(0);
            *tip = (*tip).max(seq);
            count += 1;
        }
        // Ingest only stores an author's changes after all earlier ones, so
        // the batch's highest seq is the author's new tip.
        for (author, seq) in tips {
            let mut key = vec![PREFIX_TIP];
            key.extend_from_slice(author.as_bytes());
            writes.insert(key, seq.to_be_bytes().as_slice());
        }
        self.db.apply_batch(writes)?;
        Ok(count)
    }

    /// Records a refused fork by `author` and flushes: one record per
    /// (author, sequence number), replacing any earlier one.
    pub fn record_evidence(
        &self,
        author: &PublicKey,
        evidence: &Evidence,
    ) -> Result<(), StoreError> {
        let key = evidence_key(author, evidence.seq);
        let value = postcard::to_stdvec(evidence)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode evidence: {e}")))?;
        self.db.insert(key, value)?;
        self.sync()?;
        Ok(())
    }

    /// The proof kept of `author`'s fork at `seq`, if any.
    pub fn evidence_for(
        &self,
        author: &PublicKey,
        seq: u64,
    ) -> Result<Option<Evidence>, StoreError> {
        self.db
            .get(evidence_key(author, seq))?
            .map(|value| {
                postcard::from_bytes(&value)
                    .map_err(|e| StoreError::Corrupt(format!("evidence record: {e}")))
            })
            .transpose()
    }

    /// Keeps `proof` (encoded, see [`crate::fork::ForkProof`]) as the proof
    /// of `author`'s lowest known fork, replacing any earlier one, and
    /// flushes.
    pub fn put_fork_proof(&self, author: &PublicKey, proof: &[u8]) -> Result<(), StoreError> {
        let mut key = vec![PREFIX_FORK];
        key.extend_from_slice(author.as_bytes());
        self.db.insert(key, proof)?;
        self.sync()?;
        Ok(())
    }

    /// Every fork proof kept, one per author, undecoded.
    pub fn fork_proofs(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.db
            .scan_prefix([PREFIX_FORK])
            .map(|item| Ok(item?.1.to_vec()))
            .collect()
    }

    /// Every fork recorded.
    pub fn evidence(&self) -> Result<Vec<Evidence>, StoreError> {
        self.db
            .scan_prefix([PREFIX_EVIDENCE])
            .map(|item| {
                let (_, value) = item?;
                postcard::from_bytes(&value)
                    .map_err(|e| StoreError::Corrupt(format!("evidence record: {e}")))
            })
            .collect()
    }

    /// Stores roster records (id, encoded bytes) in one atomic batch and
    /// flushes.
    pub fn add_records(&self, records: &[([u8; 32], Vec<u8>)]) -> Result<(), StoreError> {
        let mut writes = sled::Batch::default();
        for (id, bytes) in records {
            let mut key = vec![PREFIX_RECORD];
            key.extend_from_slice(id);
            writes.insert(key, bytes.as_slice());
        }
        self.db.apply_batch(writes)?;
        self.sync()?;
        Ok(())
    }

    /// Every stored roster record's bytes, in id order.
    pub fn records(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.db
            .scan_prefix([PREFIX_RECORD])
            .map(|item| Ok(item?.1.to_vec()))
            .collect()
    }

    /// Replaces the document snapshot and flushes.
    pub fn set_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let value = postcard::to_stdvec(snapshot)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode the snapshot: {e}")))?;
        self.db.insert(KEY_SNAPSHOT, value)?;
        self.sync()?;
        Ok(())
    }

    /// The document snapshot, if one was saved and still decodes.
    pub fn snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        Ok(self
            .db
            .get(KEY_SNAPSHOT)?
            .and_then(|v| postcard::from_bytes(&v).ok()))
    }

    /// Remembers the addresses learned for a peer (replacing older ones).
    pub fn set_peer_addresses(&self, peer: &PublicKey, addrs: &[String]) -> Result<(), StoreError> {
        let mut key = vec![PREFIX_PEER];
        key.extend_from_slice(peer.as_bytes());
        let value = postcard::to_stdvec(addrs)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode addresses: {e}")))?;
        self.db.insert(key, value)?;
        Ok(())
    }

    /// Every peer's remembered addresses.
    pub fn peer_addresses(&self) -> Result<Vec<(PublicKey, Vec<String>)>, StoreError> {
        self.db
            .scan_prefix([PREFIX_PEER])
            .map(|item| {
                let (key, value) = item?;
                let bytes: [u8; 32] = key[1..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("peer key is not 33 bytes".into()))?;
                let peer = PublicKey::from_bytes(bytes)
                    .map_err(|_| StoreError::Corrupt("peer key is not a valid key".into()))?;
                let addrs: Vec<String> = postcard::from_bytes(&value)
                    .map_err(|e| StoreError::Corrupt(format!("peer addresses: {e}")))?;
                Ok((peer, addrs))
            })
            .collect()
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.sync()
    }

    /// Flushes to disk, counting the flush.
    fn sync(&self) -> Result<(), StoreError> {
        #[cfg(test)]
        if self
            .failing_flushes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(sled::Error::Io(std::io::Error::other("injected flush failure")).into());
        }
        self.db.flush()?;
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Makes every flush fail (`true`) or work again (`false`).
    #[cfg(test)]
    pub(crate) fn fail_flushes(&self, fail: bool) {
        self.failing_flushes
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }

    /// Overwrites a stored envelope's bytes as they are, for tests that need
    /// a store whose contents do not decode.
    #[cfg(test)]
    pub(crate) fn put_envelope_bytes(
        &self,
        hash: &ChangeHash,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.db.insert(envelope_key(hash), bytes)?;
        Ok(())
    }

    /// How many flushes this store handle has made.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn envelope(&self, hash: &ChangeHash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(envelope_key(hash))?.map(|v| v.to_vec()))
    }

    /// Every stored envelope as (hash, bytes), in hash order.
    pub fn envelopes(
        &self,
    ) -> impl Iterator<Item = Result<(ChangeHash, Vec<u8>), StoreError>> + '_ {
        self.db.scan_prefix([PREFIX_ENVELOPE]).map(|item| {
            let (key, value) = item?;
            let hash: [u8; 32] = key[1..]
                .try_into()
                .map_err(|_| StoreError::Corrupt("envelope key is not 33 bytes".into()))?;
            Ok((ChangeHash(hash), value.to_vec()))
        })
    }

    /// Every author's highest stored sequence number.
    pub fn tips(&self) -> Result<std::collections::BTreeMap<PublicKey, u64>, StoreError> {
        let mut tips = std::collections::BTreeMap::new();
        for item in self.db.scan_prefix([PREFIX_TIP]) {
            let (key, value) = item?;
            let corrupt = || StoreError::Corrupt("tip entry is malformed".into());
            let author: [u8; 32] = key
                .get(1..33)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?;
            let seq: [u8; 8] = value.as_ref().try_into().map_err(|_| corrupt())?;
            tips.insert(PublicKey::from_checked(author), u64::from_be_bytes(seq));
        }
        Ok(tips)
    }
}

impl Known for Store {
    fn has_change(&self, hash: &ChangeHash) -> bool {
        // A read error counts as "not known": the batch is then checked again
        // against what it carries, and the write that follows surfaces the error.
        self.db.contains_key(envelope_key(hash)).unwrap_or(false)
    }

    fn header_of(&self, hash: &ChangeHash) -> Option<ChangeHeader> {
        change_header(self.stored_envelope(hash)?.change_bytes()).ok()
    }

    fn hash_at(&self, author: &PublicKey, seq: u64) -> Option<ChangeHash> {
        let value = self.db.get(seq_key(author, seq)).ok()??;
        let bytes: [u8; 32] = value.as_ref().try_into().ok()?;
        Some(ChangeHash(bytes))
    }

    fn change(&self, hash: &ChangeHash) -> Option<Change> {
        parse_change(self.stored_envelope(hash)?.change_bytes()).ok()
    }
}

impl Store {
    /// A stored envelope, decoded; `None` when absent or unreadable (the
    /// ingest checks then treat it as not held).
    fn stored_envelope(&self, hash: &ChangeHash) -> Option<Envelope> {
        let bytes = self.db.get(envelope_key(hash)).ok()??;
        Envelope::decode(&bytes).ok()
    }
}

fn envelope_key(hash: &ChangeHash) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = PREFIX_ENVELOPE;
    key[1..].copy_from_slice(&hash.0);
    key
}

fn seq_key(author: &PublicKey, seq: u64) -> [u8; 41] {
    let mut key = [0u8; 41];
    key[0] = PREFIX_SEQ;
    key[1..33].copy_from_slice(author.as_bytes());
    key[33..].copy_from_slice(&seq.to_be_bytes());
    key
}
