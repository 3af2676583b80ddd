//! A node's local state: its identity, its store, the network it belongs to
//! and the document rebuilt from the stored envelopes.
//!
//! Every write goes: validate input → Automerge commit → sign → store commit
//! (atomic, flushed) → success. Every import goes: decode → [`ingest`] checks
//! → one batched `apply_changes` → store commit → success. If anything after
//! the document was touched fails, the document is rebuilt from the store, so
//! memory never holds what the store does not.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

use automerge::{Change, ChangeHash};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bundle::{Bundle, BundleError, EnvelopeBytes};
use crate::checkpoint::{self, Briefing, CheckpointError, Checkpoints, StateMemo};
use crate::config::{Config, ConfigError, DataDir};
use crate::doc::{AssessmentUpdate, DocError, Document, NewAssessment, NewNote, parse_change};
use crate::envelope::{Envelope, EnvelopeError};
use crate::fork::{self, ForkError, ForkProof, Frozen};
use crate::genesis::{Genesis, GenesisError, NetworkId};
use crate::governance::{
    self, Body, Governance, Motion, MotionKind, Op, Record, RecordError, RecordId, Seen, Standing,
};
use crate::history::{self, History};
use crate::identity::{Identity, IdentityError, NodeId, PublicKey};
use crate::ingest::{self, IngestError, Known};
use crate::model::{
    self, AssessmentView, MAX_TEXT_LEN, MAX_TITLE_LEN, NoteView, Stance, ValueError, now_ms,
};
use crate::opcheck::OpIndex;
use crate::roster::{Departure, Role, Roster, RosterEntry};
use crate::store::{Evidence, Snapshot, Store, StoreError};
use crate::sync::Tips;
use crate::taxonomy::{self, Category};

mod audit;
mod forks;

pub use audit::{Audit, AuthorAudit, ForkReport, FrozenReport, Problem};

/// Everything that can go wrong in a node's local operations.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(
        "this machine's clock reads {0}, outside years 2000 to 9999; every other node would \
         refuse a change signed now, so nothing was written: set the clock and write again"
    )]
    Clock(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Genesis(#[from] GenesisError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("import refused, no change was stored: {0}")]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Doc(#[from] DocError),
    #[error(transparent)]
    Value(#[from] ValueError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("roster record refused, nothing was stored: {0}")]
    Record(#[from] RecordError),
    #[error("fork proof refused: {0}")]
    Fork(#[from] ForkError),
    #[error(
        "this node's key signed two different changes numbered {seq} (a fork: perhaps this data \
         directory was restored from an older copy and wrote before it synced), so every node \
         stops counting this key's changes from number {seq} on; run `concord key rotate` to go \
         on writing under a new key"
    )]
    OwnKeyFrozen { seq: u64 },
    #[error("only members can propose or approve roster changes")]
    NotAMember,
    #[error(
        "no pending proposal has an id starting with {}; run `concord member proposals`",
        crate::clip::quote(.0)
    )]
    UnknownProposal(String),
    #[error("{} matches more than one proposal; give more of the id", crate::clip::quote(.0))]
    AmbiguousProposal(String),
    #[error("proposal {id} can no longer be approved: it is {state}")]
    ProposalSettled { id: String, state: String },
    #[error("this node has already signed proposal {0}")]
    AlreadySigned(String),
    #[error(transparent)]
    Claim(#[from] governance::ClaimError),
    #[error("{0}")]
    BadProposal(String),
    #[error("batch refused: {0}")]
    BadBatch(String),
    /// `start` is the id quoted and clipped ([`crate::clip::quote`]).
    #[error(
        "{what} of {len} bytes is too long: ids are at most {} bytes; it starts {start}",
        crate::api::MAX_ID_LEN
    )]
    IdTooLong {
        what: &'static str,
        len: usize,
        start: String,
    },
    #[error(
        "this node's change number {seq} builds on a change that no longer counts (its author \
         was removed, or proven to have forked), so no node counts it or anything after it in \
         this key's chain; run `concord key rotate`: the node then writes the effect of those \
         changes again under the new key, and goes on writing"
    )]
    TaintedChain { seq: u64 },
    #[error("cannot access {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "this node has not joined a network: run `concord network join FILE` (or `network create`)"
    )]
    NoNetwork,
    #[error(
        "this node already belongs to network {ours} ({name}); one data directory holds one network"
    )]
    AlreadyJoined { ours: String, name: String },
    #[error("bundle belongs to network {theirs}, but this node is in network {ours}")]
    OtherNetwork { ours: String, theirs: String },
    #[error("this node ({node_id}) is not on the roster of network {network}")]
    NotOnRoster { node_id: String, network: String },
    #[error(
        "this node ({node_id}) is not on the founding roster of network {network}; if a quorum \
         of members admits it (`concord member propose add`), join with `--pending` and \
         bootstrap from a member"
    )]
    NotOnFoundingRoster { node_id: String, network: String },
    #[error("this node is an observer of the network; observers cannot write")]
    ObserverCannotWrite,
    #[error(
        "unknown category {}; run `concord categories` for the list",
        crate::clip::quote(.0)
    )]
    UnknownCategory(String),
    #[error("category {} already exists", crate::clip::quote(.0))]
    CategoryExists(String),
    #[error(
        "invalid category key {}: use 2-48 lowercase letters, digits and hyphens",
        crate::clip::quote(.0)
    )]
    BadCategoryKey(String),
    #[error(
        "unknown group {}; expected technological-safety, application-security or beneficial-use",
        crate::clip::quote(.0)
    )]
    UnknownGroup(String),
    #[error("no assessment with id {}", crate::clip::quote(.0))]
    UnknownAssessment(String),
    #[error("no note with id {}", crate::clip::quote(.0))]
    UnknownNote(String),
    #[error("{} is not a change hash (64 hex digits)", crate::clip::quote(.0))]
    BadHash(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "no item with id {}: ids look like ra-…, cn-… or a category key",
        crate::clip::quote(.0)
    )]
    UnknownItem(String),
    #[error(
        "the store could not flush to disk, so the latest writes are not durable and were not \
         acknowledged; writes are refused until a flush succeeds (check the disk: space, \
         permissions, errors in the system log)"
    )]
    NotDurable(#[source] StoreError),
    #[error(
        "this node's store was recovered empty and is re-syncing from peers: it writes nothing \
         until then, so it cannot sign a change number it had already used. Once `concord peers` \
         shows a member with nothing lacking either way, stop the node and run \
         `concord network resynced`"
    )]
    Resyncing,
    #[error("the store at {0} opens and loads: there is nothing to recover")]
    NothingToRecover(std::path::PathBuf),
    #[error("this node's store is not being re-synced (see `concord network recover`)")]
    NotResyncing,
    #[error(
        "this data directory did not make this node's key and does not hold the key's changes \
         (a directory restored from a copy of `identity.key`?): it signs nothing until it has \
         caught up with a member once, so it cannot sign a change number the key already \
         used. Start the node with a member to bootstrap from (`concord run --bootstrap \
         ADDR`); or, if this key has never written anywhere, stop the node and run \
         `concord network resynced`"
    )]
    ChainUnknown,
}

/// What `concord init` created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentitySummary {
    pub name: String,
    pub node_id: String,
    pub public_key: String,
    pub fingerprint: String,
}

/// The result of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportSummary {
    /// Changes that were new to this node and are now stored.
    pub new: usize,
    /// Changes this node already had.
    pub already_known: usize,
    /// Roster records that were new and are now stored (bundles only).
    #[serde(default)]
    pub records: usize,
    /// Changes left out because their author is frozen by a proven fork
    /// from their number on, or because they build on such a change
    /// (bundles only; see [`crate::fork`]).
    #[serde(default)]
    pub left_out: usize,
    /// Forks the bundle proved (a version of a change this node holds with
    /// another hash), now frozen.
    #[serde(default)]
    pub forks_proven: usize,
}

/// The network this node belongs to: its genesis, the roster records held
/// and what they resolve to.
#[derive(Debug, Clone)]
struct Membership {
    genesis: Genesis,
    records: BTreeMap<RecordId, Record>,
    governance: Governance,
    /// Authors proven to have forked, and where (see [`crate::fork`]):
    /// their write spans are clamped below the fork point.
    frozen: Frozen,
}

impl Membership {
    fn new(genesis: Genesis, records: BTreeMap<RecordId, Record>, frozen: Frozen) -> Self {
        let mut governance = governance::resolve(&genesis, records.values());
        for (author, seq) in &frozen {
            governance.roster.freeze(author, *seq);
        }
        Self {
            genesis,
            records,
            governance,
            frozen,
        }
    }

    /// What a saved document was computed under: the records and the fork
    /// points (the records' digest alone while no fork is known, as stores
    /// written before forks froze anything have it).
    fn snapshot_key(&self) -> [u8; 32] {
        if self.frozen.is_empty() {
            return self.digest();
        }
        let mut hasher = Sha256::new();
        hasher.update(self.digest());
        hasher.update(fork::digest(&self.frozen));
        hasher.finalize().into()
    }

    fn roster(&self) -> &Roster {
        &self.governance.roster
    }

    /// The digest of the records held (see [`governance::digest`]).
    fn digest(&self) -> [u8; 32] {
        governance::digest(self.records.keys())
    }
}

/// What adding roster records did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecordsSummary {
    /// Records that were new and are now stored.
    pub new: usize,
    /// Whether the roster in force changed.
    pub roster_changed: bool,
}

/// Filters for `assess list`.
#[derive(Debug, Clone, Default)]
pub struct AssessmentFilter {
    pub category: Option<String>,
    pub status: Option<model::Status>,
}

/// A node's local state.
#[derive(Debug)]
pub struct Replica {
    dir: DataDir,
    identity: Identity,
    config: Config,
    store: Store,
    membership: Option<Membership>,
    doc: Document,
    /// Highest stored sequence number per author (see `sync`).
    tips: Tips,
    /// Every change as (hash, author, seq) in causal order, built on first
    /// use and then appended to; answers pulls without asking Automerge.
    log: Option<Vec<(ChangeHash, PublicKey, u64)>>,
    /// Stored changes that do not count under the roster in force (and so
    /// are not in the document): see [`Replica::add_records`].
    invalid: HashSet<ChangeHash>,
    /// While set, local writes are staged without a flush; see
    /// [`Replica::begin_group`].
    grouping: bool,
    /// Whether the open group staged anything (else ending it needs no flush).
    staged: bool,
    /// Set when a store write or flush failed: sled may hold (and the
    /// document shows) changes that are not on disk and were never
    /// acknowledged. Every write is refused until a flush succeeds, so
    /// nothing is built on them and nothing is acknowledged before they are
    /// durable; see [`Replica::require_durable`].
    unflushed: bool,
    /// The store was recovered empty (`concord network recover`) and
    /// re-syncs: local writes are refused until the operator says it has
    /// caught up, see [`Replica::finish_resync`].
    resyncing: bool,
    /// This store holds every change this node's key has signed: the key
    /// was made here (`concord init`, a rotation), the network was created
    /// here, the node has written, or it caught up with a member once. Until
    /// then it signs nothing, so a data directory restored from a copy of
    /// the key cannot sign a change number the key already used.
    chain_known: bool,
    /// Canonical state hashes already computed, for checkpoints.
    checkpoint_memo: StateMemo,
    /// The operations of stored changes met by the ingest checks, so a
    /// batch's references to earlier batches need no store lookups. Holds
    /// only what is in the document: emptied whenever it is rebuilt.
    op_index: OpIndex,
}

/// The store as the ingest checks see it: stored changes, of which those in
/// `invalid` are rejected.
struct Holding<'a> {
    store: &'a Store,
    invalid: &'a HashSet<ChangeHash>,
}

impl Known for Holding<'_> {
    fn has_change(&self, hash: &ChangeHash) -> bool {
        self.store.has_change(hash)
    }
    fn hash_at(&self, author: &PublicKey, seq: u64) -> Option<ChangeHash> {
        self.store.hash_at(author, seq)
    }
    fn header_of(&self, hash: &ChangeHash) -> Option<crate::envelope::ChangeHeader> {
        self.store.header_of(hash)
    }
    fn is_rejected(&self, hash: &ChangeHash) -> bool {
        self.invalid.contains(hash)
    }
    fn change(&self, hash: &ChangeHash) -> Option<Change> {
        self.store.change(hash)
    }
}

impl Replica {
    /// Creates a new identity and config in `dir`; refuses an existing identity.
    pub fn init(dir: &DataDir, name: &str) -> Result<IdentitySummary, ReplicaError> {
        let config = Config::new(name)?;
        // The config refuses controls; the bidi overrides too, here.
        model::required_line("name", name, crate::genesis::MAX_NAME_LEN)?;
        if dir.key_file().exists() {
            return Err(IdentityError::Exists(dir.key_file()).into());
        }
        dir.create()?;
        let identity = Identity::generate()?;
        identity.save_new(&dir.key_file())?;
        // A key made here has signed nothing anywhere yet.
        Store::open(&dir.store_dir())?.set_chain_known(&identity.public())?;
        if !dir.config_file().exists() {
            config.write_new(&dir.config_file())?;
        }
        Ok(summary(&identity, &config))
    }

    /// Opens the node in `dir` and rebuilds its document from the store.
    pub fn open(dir: &DataDir) -> Result<Self, ReplicaError> {
        let started = std::time::Instant::now();
        dir.restrict()?;
        let identity = Identity::load(&dir.key_file())?;
        let config = Config::load(&dir.config_file())?;
        let store = Store::open(&dir.store_dir())?;
        tracing::debug!(elapsed = ?started.elapsed(), "store opened");
        let membership = load_membership(&store)?;
        let identity = finish_rotation(dir, identity, membership.as_ref())?;
        tracing::debug!(elapsed = ?started.elapsed(), "roster records read");
        let (doc, tips, invalid) = load_document(&store, identity.public(), membership.as_ref())?;
        let resyncing = store.resyncing()?;
        let me = identity.public();
        let chain_known =
            store.chain_known()? == Some(*me.as_bytes()) || tips.get(&me).is_some_and(|t| *t > 0);
        tracing::debug!(elapsed = ?started.elapsed(), "replica open");
        Ok(Self {
            dir: dir.clone(),
            identity,
            config,
            store,
            membership,
            doc,
            tips,
            log: None,
            invalid,
            grouping: false,
            staged: false,
            unflushed: false,
            resyncing,
            chain_known,
            checkpoint_memo: StateMemo::default(),
            op_index: OpIndex::default(),
        })
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.dir
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn summary(&self) -> IdentitySummary {
        summary(&self.identity, &self.config)
    }

    pub fn genesis(&self) -> Option<&Genesis> {
        self.membership.as_ref().map(|m| &m.genesis)
    }

    /// The roster in force, or the error telling the user to join a network.
    pub fn roster(&self) -> Result<&Roster, ReplicaError> {
        self.membership
            .as_ref()
            .map(Membership::roster)
            .ok_or(ReplicaError::NoNetwork)
    }

    /// The roster records and their verdicts.
    pub fn governance(&self) -> Result<&Governance, ReplicaError> {
        self.membership
            .as_ref()
            .map(|m| &m.governance)
            .ok_or(ReplicaError::NoNetwork)
    }

    /// The digest of the roster records held (sent in every pull).
    pub fn records_digest(&self) -> [u8; 32] {
        self.membership.as_ref().map_or([0; 32], Membership::digest)
    }

    /// Every roster record held, encoded.
    pub fn records_wire(&self) -> Vec<EnvelopeBytes> {
        self.membership.as_ref().map_or_else(Vec::new, |m| {
            m.records
                .values()
                .map(|r| EnvelopeBytes(r.encode()))
                .collect()
        })
    }

    /// Whether a stored change is rejected under the roster in force.
    pub fn is_rejected(&self, hash: &ChangeHash) -> bool {
        self.invalid.contains(hash)
    }

    pub fn network_id(&self) -> Result<NetworkId, ReplicaError> {
        self.membership
            .as_ref()
            .map(|m| m.genesis.network_id())
            .ok_or(ReplicaError::NoNetwork)
    }

    pub fn document(&self) -> &Document {
        &self.doc
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a network with this node as founding member, installs it, and
    /// returns the genesis to hand to the other institutions.
    pub fn create_network(
        &mut self,
        name: &str,
        mut roster: Vec<RosterEntry>,
        quorum: Option<u32>,
    ) -> Result<Genesis, ReplicaError> {
        self.refuse_if_joined(None)?;
        // Names are shown on every member's terminal and in every report:
        // one line, no control character.
        let max = crate::genesis::MAX_NAME_LEN;
        model::required_line("network name", name, max)?;
        for entry in &roster {
            model::required_line("institution name", &entry.name, max)?;
        }
        let me = self.identity.public();
        if !roster.iter().any(|e| e.key == me) {
            roster.push(RosterEntry {
                key: me,
                name: self.config.name.clone(),
                role: Role::Member,
            });
        }
        let genesis = Genesis::create(&self.identity, name, roster, quorum, now_ms())?;
        self.join(genesis.clone())?;
        // Nobody has written in a network made just now.
        self.mark_chain_known()?;
        Ok(genesis)
    }

    /// Recovers from a corrupt store: moves it aside to
    /// `store.corrupt-<unix seconds>` (kept for inspection), starts an empty
    /// store joined to `genesis` (as pending with `pending`), and marks it
    /// re-syncing so that it writes nothing until [`Replica::finish_resync`].
    /// Refuses a store that opens and loads. Returns where the old store is.
    pub fn recover_store(
        dir: &DataDir,
        genesis: Genesis,
        pending: bool,
    ) -> Result<std::path::PathBuf, ReplicaError> {
        match Self::open(dir) {
            Ok(_) => return Err(ReplicaError::NothingToRecover(dir.store_dir())),
            Err(ReplicaError::Store(StoreError::Corrupted { .. } | StoreError::Corrupt(_))) => {}
            Err(e) => return Err(e),
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let store = dir.store_dir();
        let aside = store.with_file_name(format!("store.corrupt-{secs}"));
        fs::rename(&store, &aside).map_err(|source| ReplicaError::Io {
            path: store.clone(),
            source,
        })?;
        tracing::warn!(store = %store.display(), aside = %aside.display(), "corrupt store moved aside; starting empty");
        let mut replica = Self::open(dir)?;
        replica.join_as(genesis, pending)?;
        replica.store.set_resyncing(true)?;
        Ok(aside)
    }

    /// Whether the store was recovered empty and still re-syncs.
    pub fn is_resyncing(&self) -> bool {
        self.resyncing
    }

    /// Ends the re-sync after a recovery: the operator saw a member with
    /// nothing lacking either way, so this node holds its own chain as far
    /// as any peer does, and writes may go on from its tip.
    pub fn finish_resync(&mut self) -> Result<(), ReplicaError> {
        if !self.resyncing && self.chain_known {
            return Err(ReplicaError::NotResyncing);
        }
        self.store.set_resyncing(false)?;
        self.resyncing = false;
        self.mark_chain_known()
    }

    /// Whether this store is known to hold all of this node's key's chain
    /// (see [`ReplicaError::ChainUnknown`]).
    pub fn chain_known(&self) -> bool {
        self.chain_known
    }

    /// This node caught up with a member, so it holds its own chain as far
    /// as the network knows it: it may sign again.
    pub fn learned_own_chain(&mut self) -> Result<(), ReplicaError> {
        if self.chain_known {
            return Ok(());
        }
        let seq = self.tips.get(&self.identity.public()).copied().unwrap_or(0);
        tracing::info!(
            seq,
            "caught up with a member: this key's chain is known here; writes allowed"
        );
        self.mark_chain_known()
    }

    /// Records that this node's key was made for this data directory and
    /// has signed nothing anywhere (what `concord init` records; for tools
    /// that write a key file themselves).
    pub fn key_is_new(&mut self) -> Result<(), ReplicaError> {
        self.mark_chain_known()
    }

    fn mark_chain_known(&mut self) -> Result<(), ReplicaError> {
        self.store.set_chain_known(&self.identity.public())?;
        self.chain_known = true;
        Ok(())
    }

    /// Installs a verified genesis. Joining the same network again is a no-op.
    pub fn join(&mut self, genesis: Genesis) -> Result<(), ReplicaError> {
        self.join_as(genesis, false)
    }

    /// Installs a verified genesis that need not name this node: for an
    /// institution a quorum admits (or will admit) after the founding. Until
    /// the records admitting it arrive from a peer, it can write nothing and
    /// peers refuse its connections.
    pub fn join_pending(&mut self, genesis: Genesis) -> Result<(), ReplicaError> {
        self.join_as(genesis, true)
    }

    fn join_as(&mut self, genesis: Genesis, pending: bool) -> Result<(), ReplicaError> {
        if self.refuse_if_joined(Some(genesis.network_id()))? {
            return Ok(());
        }
        let roster = genesis.roster();
        if !pending && roster.get(&self.identity.public()).is_none() {
            return Err(ReplicaError::NotOnFoundingRoster {
                node_id: self.identity.node_id().to_string(),
                network: genesis.network_id().to_string(),
            });
        }
        self.store.set_genesis(&genesis.encode())?;
        self.membership = Some(Membership::new(genesis, BTreeMap::new(), Frozen::new()));
        Ok(())
    }

    /// Ok(true) when already in `network`, Ok(false) when in none, Err when
    /// in another.
    fn refuse_if_joined(&self, network: Option<NetworkId>) -> Result<bool, ReplicaError> {
        match &self.membership {
            None => Ok(false),
            Some(m) if Some(m.genesis.network_id()) == network => Ok(true),
            Some(m) => Err(ReplicaError::AlreadyJoined {
                ours: m.genesis.network_id().to_string(),
                name: m.genesis.name().to_string(),
            }),
        }
    }

    /// The categories in force: built-in plus operator-added.
    pub fn categories(&self) -> Vec<Category> {
        self.doc.categories()
    }

    fn require_category(&self, key: &str) -> Result<(), ReplicaError> {
        if self.categories().iter().any(|c| c.key == key) {
            Ok(())
        } else {
            Err(ReplicaError::UnknownCategory(key.to_string()))
        }
    }

    fn require_writer(&self) -> Result<NetworkId, ReplicaError> {
        let membership = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
        if self.resyncing {
            return Err(ReplicaError::Resyncing);
        }
        let me = self.identity.public();
        match membership.roster().role_of(&me) {
            Some(Role::Member) => {
                if !self.chain_known {
                    return Err(ReplicaError::ChainUnknown);
                }
                if let Some(seq) = membership.frozen.get(&me) {
                    return Err(ReplicaError::OwnKeyFrozen { seq: *seq });
                }
                // Writing on top of a rejected change of our own would fork
                // our chain: every node holds the rejected one.
                let tip = self.tips.get(&me).copied().unwrap_or(0);
                if let Some(hash) = self.store.hash_at(&me, tip)
                    && self.invalid.contains(&hash)
                {
                    return Err(ReplicaError::TaintedChain { seq: tip });
                }
                Ok(membership.genesis.network_id())
            }
            Some(Role::Observer) => Err(ReplicaError::ObserverCannotWrite),
            None => Err(ReplicaError::NotOnRoster {
                node_id: self.identity.node_id().to_string(),
                network: membership.genesis.network_id().to_string(),
            }),
        }
    }

    /// Commits a local edit: sign, store atomically, flush. On a store
    /// failure the document is rebuilt so it matches the store again.
    fn write(
        &mut self,
        edit: impl FnOnce(&mut Document, i64) -> Result<Change, DocError>,
    ) -> Result<ChangeHash, ReplicaError> {
        let network = self.require_writer()?;
        self.require_durable()?;
        let now = signing_time(now_ms())?;
        let change = edit(&mut self.doc, now)?;
        let stored = Envelope::sign(&self.identity, network, change.raw_bytes().to_vec())
            .map_err(ReplicaError::from)
            .and_then(|envelope| {
                if self.grouping {
                    self.store.stage([(&envelope, change.seq())])?;
                    self.staged = true;
                } else {
                    self.store.commit([(&envelope, change.seq())])?;
                }
                Ok(envelope.hash())
            });
        match &stored {
            Ok(hash) => {
                tracing::debug!(change = %hash, seq = change.seq(), "local change stored");
                self.tips.insert(self.identity.public(), change.seq());
                if let Some(log) = &mut self.log {
                    log.push((*hash, self.identity.public(), change.seq()));
                }
            }
            Err(e) => {
                // A failed store write may have left the batch in sled
                // without its being on disk.
                if matches!(e, ReplicaError::Store(_)) {
                    self.unflushed = true;
                }
                self.rebuild()?;
            }
        }
        stored
    }

    /// Refuses writes while an earlier flush has failed, retrying the flush
    /// first: once it succeeds, everything stored is durable again and
    /// writes resume.
    fn require_durable(&mut self) -> Result<(), ReplicaError> {
        if self.unflushed {
            self.store.flush().map_err(ReplicaError::NotDurable)?;
            self.unflushed = false;
            tracing::info!("the store flushes again; writes resume");
        }
        Ok(())
    }

    /// Reads the roster records and the document afresh from the store,
    /// dropping whatever this replica held in memory: after a request
    /// panicked half-way through a write, what is stored is what counts.
    /// Writes staged for a group stay staged, and are flushed with it.
    pub fn reload(&mut self) -> Result<(), ReplicaError> {
        self.membership = load_membership(&self.store)?;
        self.checkpoint_memo = StateMemo::default();
        self.rebuild()
    }

    fn rebuild(&mut self) -> Result<(), ReplicaError> {
        self.op_index.clear();
        let (doc, tips, invalid) = load_document(
            &self.store,
            self.identity.public(),
            self.membership.as_ref(),
        )?;
        self.doc = doc;
        self.tips = tips;
        self.invalid = invalid;
        self.log = None;
        Ok(())
    }

    /// Saves the document and its chain tips, so the next start loads them
    /// instead of replaying every envelope.
    pub fn save_snapshot(&self) -> Result<(), ReplicaError> {
        self.store.set_snapshot(&Snapshot {
            tips: self.tips.iter().map(|(k, s)| (*k, *s)).collect(),
            roster: self
                .membership
                .as_ref()
                .map_or([0; 32], Membership::snapshot_key),
            invalid: self.invalid.iter().map(|h| h.0).collect(),
            doc: self.doc.save(),
        })?;
        Ok(())
    }

    /// Verifies roster records (from a peer or a bundle) and stores the new
    /// ones, all or nothing. A record must name this network, carry valid
    /// signatures, and be signed by a key that is or was on the roster (the
    /// roster as these very records may extend it). If the roster's write
    /// rights change, the document is rebuilt from the stored changes that
    /// count under the new roster: it stays a function of (changes, records),
    /// whatever order they arrived in. Returns what was new, for relaying.
    pub fn add_records(
        &mut self,
        wire: &[EnvelopeBytes],
    ) -> Result<(RecordsSummary, Vec<EnvelopeBytes>), ReplicaError> {
        let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
        let network = m.genesis.network_id();
        let mut fresh: Vec<Record> = Vec::new();
        for bytes in wire {
            let record = Record::decode(&bytes.0)?;
            record.check_network(network)?;
            if !m.records.contains_key(&record.id()) && !fresh.iter().any(|r| r.id() == record.id())
            {
                fresh.push(record);
            }
        }
        if fresh.is_empty() {
            return Ok((RecordsSummary::default(), Vec::new()));
        }
        // Only records signed by a known key are held (see
        // `governance::admit`); the others are left out, not refused: they
        // may come again once their signer is known.
        let candidates: Vec<Record> = m.records.values().cloned().chain(fresh).collect();
        let offered = candidates.len();
        let admitted = governance::admit(&m.genesis, candidates);
        let accepted: Vec<Record> = admitted
            .iter()
            .filter(|r| !m.records.contains_key(&r.id()))
            .cloned()
            .collect();
        if admitted.len() < offered {
            tracing::debug!(
                left_out = offered - admitted.len(),
                "roster records signed by keys not known yet were left out"
            );
        }
        if accepted.is_empty() {
            return Ok((RecordsSummary::default(), Vec::new()));
        }
        let mut all = m.records.clone();
        for r in &accepted {
            all.insert(r.id(), r.clone());
        }
        let rows: Vec<([u8; 32], Vec<u8>)> =
            accepted.iter().map(|r| (r.id().0, r.encode())).collect();
        let before = m.roster().clone();
        let next = Membership::new(m.genesis.clone(), all, m.frozen.clone());
        let summary = RecordsSummary {
            new: accepted.len(),
            roster_changed: &before != next.roster(),
        };
        // Rebuild only when some stored author's rights moved; into
        // temporaries, before anything is stored, so a failed rebuild leaves
        // the store, the records and the document as they were.
        let moved = self
            .tips
            .keys()
            .any(|author| before.spans(author) != next.roster().spans(author));
        let rebuilt = if moved {
            tracing::info!("write rights changed; rebuilding the document from the store");
            Some(load_document(
                &self.store,
                self.identity.public(),
                Some(&next),
            )?)
        } else {
            None
        };
        self.require_durable()?;
        if let Err(e) = self.store.add_records(&rows) {
            self.unflushed = true;
            return Err(e.into());
        }
        self.membership = Some(next);
        if let Some((doc, tips, invalid)) = rebuilt {
            self.doc = doc;
            self.tips = tips;
            self.invalid = invalid;
            self.log = None;
            self.op_index.clear();
            // The snapshot only speeds up the next start; without it the
            // next start rebuilds from the envelopes.
            if let Err(e) = self.save_snapshot() {
                tracing::warn!(error = %e, "cannot save the rebuilt document's snapshot");
            }
        }
        Ok((
            summary,
            rows.into_iter().map(|(_, b)| EnvelopeBytes(b)).collect(),
        ))
    }

    /// What this node had seen of `target`'s chain: its highest change number
    /// that counts here (0 for none).
    fn seen_of(&self, target: Option<PublicKey>) -> Seen {
        Seen {
            heads: self.doc.heads().iter().map(|h| h.0).collect(),
            target_tip: target.map_or(0, |key| self.held_tip(&key)),
        }
    }

    /// The highest change number of `key` that counts here (0 for none):
    /// what this node would claim of its chain in a roster record.
    pub fn held_tip(&self, key: &PublicKey) -> u64 {
        let mut seq = self.tips.get(key).copied().unwrap_or(0);
        while seq > 0
            && self
                .store
                .hash_at(key, seq)
                .is_some_and(|h| self.invalid.contains(&h))
        {
            seq -= 1;
        }
        seq
    }

    fn require_member(&self) -> Result<(&Membership, NetworkId), ReplicaError> {
        let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
        if self.resyncing {
            return Err(ReplicaError::Resyncing);
        }
        if !m.roster().is_member(&self.identity.public()) {
            return Err(ReplicaError::NotAMember);
        }
        Ok((m, m.genesis.network_id()))
    }

    /// Proposes a roster change, signed by this member (its first approval).
    pub fn propose(&mut self, op: Op) -> Result<RecordId, ReplicaError> {
        let (m, network) = self.require_member()?;
        check_fits(&op, m.roster())?;
        let body = Body::Propose {
            network,
            proposer: self.identity.public(),
            after: m.governance.head(),
            seen: self.seen_of(op.target()),
            op,
            at_ms: now_ms(),
        };
        let record = Record::sign(body, &[&self.identity])?;
        self.add_records(&[EnvelopeBytes(record.encode())])?;
        Ok(record.id())
    }

    /// Approves a pending proposal, named by its id or a unique prefix.
    /// Refused when the proposal's claim about its target's chain (its
    /// cut-off) is not what this node holds, unless `confirm_claims`.
    pub fn approve(
        &mut self,
        prefix: &str,
        confirm_claims: bool,
    ) -> Result<RecordId, ReplicaError> {
        let (m, network) = self.require_member()?;
        let motion = find_motion(&m.governance, prefix)?;
        let MotionKind::Proposal { op, .. } = &motion.kind else {
            return Err(ReplicaError::UnknownProposal(prefix.to_string()));
        };
        match &motion.standing {
            Standing::Pending { .. } => {}
            Standing::Applied { .. } => {
                return Err(ReplicaError::ProposalSettled {
                    id: motion.id.short(),
                    state: "already in force".into(),
                });
            }
            Standing::Void { reason } => {
                return Err(ReplicaError::ProposalSettled {
                    id: motion.id.short(),
                    state: format!("void: {reason}"),
                });
            }
        }
        if motion.signers.contains(&self.identity.public()) {
            return Err(ReplicaError::AlreadySigned(motion.id.short()));
        }
        let seen = self.seen_of(op.target());
        if let (Some(target), false) = (op.target(), confirm_claims) {
            let name = m.roster().display_name(&target);
            let claimed = motion.seen.target_tip;
            governance::check_claim(motion.id, op, &name, claimed, seen.target_tip)?;
        }
        let body = Body::Approve {
            network,
            approver: self.identity.public(),
            proposal: motion.id,
            seen,
            at_ms: now_ms(),
        };
        let record = Record::sign(body, &[&self.identity])?;
        let id = motion.id;
        self.add_records(&[EnvelopeBytes(record.encode())])?;
        Ok(id)
    }

    /// Replaces this node's key: a new key is made, a succession signed by
    /// the old and the new key is stored, the new key file is installed (the
    /// old one is kept beside it, renamed) and the node writes as the new key
    /// from now on. Returns the new identity's summary.
    pub fn rotate_key(&mut self) -> Result<IdentitySummary, ReplicaError> {
        let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
        let me = self.identity.public();
        if m.roster().get(&me).is_none() {
            return Err(ReplicaError::NotOnRoster {
                node_id: self.identity.node_id().to_string(),
                network: m.genesis.network_id().to_string(),
            });
        }
        let new = Identity::generate()?;
        let body = Body::Succeed {
            network: m.genesis.network_id(),
            old: me,
            new: new.public(),
            after: m.governance.head(),
            seen: self.seen_of(Some(me)),
            at_ms: now_ms(),
        };
        let record = Record::sign(body, &[&self.identity, &new])?;
        // New key first, beside the old one; then the record; then swap.
        let key_file = self.dir.key_file();
        let staged = key_file.with_extension("key.new");
        if staged.exists() {
            fs::remove_file(&staged).map_err(|source| ReplicaError::Io {
                path: staged.clone(),
                source,
            })?;
        }
        new.save_new(&staged)?;
        self.add_records(&[EnvelopeBytes(record.encode())])?;
        let retired = retired_key_file(&key_file, &me);
        fs::rename(&key_file, &retired)
            .and_then(|()| fs::rename(&staged, &key_file))
            .map_err(|source| ReplicaError::Io {
                path: key_file.clone(),
                source,
            })?;
        self.identity = new;
        self.doc.set_actor(self.identity.public());
        self.log = None;
        tracing::info!(old = %me.node_id(), new = %self.identity.node_id(), "key rotated");
        // The new key was made here and has signed nothing.
        self.mark_chain_known()?;
        match self.carry_over(me) {
            Ok(None) => {}
            Ok(Some(c)) => tracing::warn!(
                changes = c.changes,
                written = c.written,
                operations = c.replayed,
                left_behind = c.left_behind,
                "changes of the old key that no longer counted were written again under the new key"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot carry the old key's uncounted changes over")
            }
        }
        self.resign_pending(me);
        Ok(summary(&self.identity, &self.config))
    }

    /// Signs again, with this node's current key, every pending proposal
    /// its previous key `old` had signed: only current members' signatures
    /// count, so a rotation would otherwise drop the institution's pending
    /// proposals and approvals. The old key vouched for each claim already.
    fn resign_pending(&mut self, old: PublicKey) {
        let Some(m) = self.membership.as_ref() else {
            return;
        };
        let pending: Vec<String> = m
            .governance
            .motions
            .values()
            .filter(|motion| {
                matches!(motion.standing, Standing::Pending { .. })
                    && matches!(motion.kind, MotionKind::Proposal { .. })
                    && motion.signers.contains(&old)
            })
            .map(|motion| motion.id.to_hex())
            .collect();
        for id in pending {
            match self.approve(&id, true) {
                Ok(_) => {
                    tracing::info!(proposal = %id, "pending proposal signed again under the new key")
                }
                Err(e) => {
                    tracing::warn!(proposal = %id, error = %e, "cannot sign a pending proposal again under the new key")
                }
            }
        }
    }

    /// Adds an assessment; returns its new id and the change that made it.
    pub fn add_assessment(
        &mut self,
        new: NewAssessment,
    ) -> Result<(String, ChangeHash), ReplicaError> {
        self.require_writer()?;
        let new = NewAssessment {
            title: model::required_line("title", &new.title, MAX_TITLE_LEN)?,
            summary: model::optional_text("summary", &new.summary, MAX_TEXT_LEN)?,
            mitigations: clean_list("mitigation", &new.mitigations)?,
            ..new
        };
        self.require_category(&new.category)?;
        let id = new_id("ra")?;
        let change = self.write(|doc, now| doc.add_assessment(&id, &new, now))?;
        Ok((id, change))
    }

    pub fn update_assessment(
        &mut self,
        id: &str,
        update: AssessmentUpdate,
    ) -> Result<ChangeHash, ReplicaError> {
        self.require_writer()?;
        if !self.doc.has_assessment(id) {
            return Err(ReplicaError::UnknownAssessment(id.to_string()));
        }
        if let Some(category) = &update.category {
            self.require_category(category)?;
        }
        let update = AssessmentUpdate {
            title: update
                .title
                .map(|t| model::required_line("title", &t, MAX_TITLE_LEN))
                .transpose()?,
            summary: update
                .summary
                .map(|s| model::optional_text("summary", &s, MAX_TEXT_LEN))
                .transpose()?,
            mitigations: update
                .mitigations
                .map(|m| clean_list("mitigation", &m))
                .transpose()?,
            ..update
        };
        self.write(|doc, now| doc.update_assessment(id, &update, now))
    }

    pub fn comment(&mut self, id: &str, text: &str) -> Result<ChangeHash, ReplicaError> {
        self.require_writer()?;
        if !self.doc.has_assessment(id) {
            return Err(ReplicaError::UnknownAssessment(id.to_string()));
        }
        let text = model::required_text("comment", text, MAX_TEXT_LEN)?;
        self.write(|doc, now| doc.comment(id, &text, now))
    }

    /// Adds a note; returns its new id and the change that made it.
    pub fn add_note(&mut self, new: NewNote) -> Result<(String, ChangeHash), ReplicaError> {
        self.require_writer()?;
        let new = NewNote {
            topic: model::required_line("topic", &new.topic, MAX_TITLE_LEN)?,
            body: model::required_text("body", &new.body, MAX_TEXT_LEN)?,
            ..new
        };
        if let Some(missing) = new.assessments.iter().find(|a| !self.doc.has_assessment(a)) {
            return Err(ReplicaError::UnknownAssessment(missing.clone()));
        }
        let id = new_id("cn")?;
        let change = self.write(|doc, now| doc.add_note(&id, &new, now))?;
        Ok((id, change))
    }

    pub fn set_position(
        &mut self,
        id: &str,
        stance: Stance,
        comment: &str,
    ) -> Result<ChangeHash, ReplicaError> {
        self.require_writer()?;
        if !self.doc.has_note(id) {
            return Err(ReplicaError::UnknownNote(id.to_string()));
        }
        let comment = model::optional_text("comment", comment, MAX_TEXT_LEN)?;
        let me = self.identity.node_id();
        self.write(|doc, now| doc.set_position(id, me, stance, &comment, now))
    }

    /// Adds an operator-defined category to the shared taxonomy.
    pub fn add_category(
        &mut self,
        key: &str,
        group: &str,
        title: &str,
    ) -> Result<ChangeHash, ReplicaError> {
        self.require_writer()?;
        if !taxonomy::valid_key(key) {
            return Err(ReplicaError::BadCategoryKey(key.to_string()));
        }
        if !taxonomy::GROUPS.iter().any(|(g, _)| *g == group) {
            return Err(ReplicaError::UnknownGroup(group.to_string()));
        }
        if self.categories().iter().any(|c| c.key == key) {
            return Err(ReplicaError::CategoryExists(key.to_string()));
        }
        let title = model::required_line("title", title, MAX_TITLE_LEN)?;
        self.write(|doc, now| doc.add_category(key, group, &title, now))
    }

    pub fn assessment(&self, id: &str) -> Result<AssessmentView, ReplicaError> {
        self.doc
            .assessment(id, self.roster()?)
            .ok_or_else(|| ReplicaError::UnknownAssessment(id.to_string()))
    }

    pub fn assessments(
        &self,
        filter: &AssessmentFilter,
    ) -> Result<Vec<AssessmentView>, ReplicaError> {
        if let Some(category) = &filter.category {
            self.require_category(category)?;
        }
        Ok(self
            .doc
            .assessments(self.roster()?)
            .into_iter()
            .filter(|a| filter.category.as_ref().is_none_or(|c| *c == a.category))
            .filter(|a| filter.status.is_none_or(|s| s.as_str() == a.status))
            .collect())
    }

    pub fn note(&self, id: &str) -> Result<NoteView, ReplicaError> {
        self.doc
            .note(id, self.roster()?)
            .ok_or_else(|| ReplicaError::UnknownNote(id.to_string()))
    }

    pub fn notes(&self) -> Result<Vec<NoteView>, ReplicaError> {
        Ok(self.doc.notes(self.roster()?))
    }

    /// Verifies a bundle and applies all of it or nothing. A fork is refused
    /// and recorded as evidence.
    pub fn import(&mut self, bytes: &[u8]) -> Result<ImportSummary, ReplicaError> {
        let network = self.network_id()?;
        let bundle = Bundle::decode(bytes)?;
        let theirs = Genesis::decode(&bundle.genesis)?;
        if theirs.network_id() != network {
            return Err(ReplicaError::OtherNetwork {
                ours: network.to_string(),
                theirs: theirs.network_id().to_string(),
            });
        }
        let (records, _) = self.add_records(&bundle.records)?;
        // The other side of a fork (a bundle exported where the other
        // version went) proves it; then what the freeze leaves out is left
        // out, and the rest imports.
        let proven = self.forks_in(&bundle.envelopes)?;
        let (envelopes, left_out) = self.without_frozen(bundle.envelopes)?;
        let (mut summary, _) = self.ingest_wire(&envelopes)?;
        summary.records = records.new;
        summary.left_out = left_out;
        summary.forks_proven = proven;
        // A large import is worth a snapshot; a running node saves one when
        // it stops, which covers catch-ups over the network.
        if summary.new >= SNAPSHOT_AFTER {
            self.save_snapshot()?;
        }
        Ok(summary)
    }

    /// Verifies and applies envelopes received from a peer (all or nothing);
    /// returns what was new, for relaying.
    pub fn ingest_wire(
        &mut self,
        wire: &[EnvelopeBytes],
    ) -> Result<(ImportSummary, Vec<EnvelopeBytes>), ReplicaError> {
        let (network, roster) = {
            let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
            (m.genesis.network_id(), m.roster().clone())
        };
        let envelopes = wire
            .iter()
            .enumerate()
            .map(|(index, e)| {
                Envelope::decode(&e.0).map_err(|source| IngestError::Malformed { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (summary, accepted) = self.ingest(envelopes, network, &roster)?;
        Ok((
            summary,
            accepted.iter().map(|e| EnvelopeBytes(e.encode())).collect(),
        ))
    }

    /// Number of changes that count: every author's chain is stored without
    /// gaps, so this is the sum of the chain tips (no scan of the store),
    /// less the stored changes rejected under the roster in force.
    pub fn change_count(&self) -> usize {
        let stored: usize = self.tips.values().map(|s| *s as usize).sum();
        stored - self.invalid.len().min(stored)
    }

    /// Highest stored sequence number per author.
    pub fn tips(&self) -> &Tips {
        &self.tips
    }

    /// The envelopes a node with `have` lacks, in causal order, at most
    /// `max_bytes` of them (but always at least one). `true` when more remain.
    ///
    /// `frozen` holds the node's fork points: it is not sent an author's
    /// changes from its fork point on, which it would refuse.
    pub fn changes_for(
        &mut self,
        have: &Tips,
        frozen: &Frozen,
        max_bytes: usize,
    ) -> Result<(Vec<EnvelopeBytes>, bool), ReplicaError> {
        let wanted = |author: &PublicKey, seq: u64| {
            seq > have.get(author).copied().unwrap_or(0)
                && frozen.get(author).is_none_or(|f| seq < *f)
        };
        let behind = self.tips.iter().any(|(author, seq)| {
            let from = have.get(author).copied().unwrap_or(0) + 1;
            from <= *seq && wanted(author, from)
        });
        if !behind {
            return Ok((Vec::new(), false));
        }
        let log = self.log.get_or_insert_with(|| self.doc.change_log());
        let mut out = Vec::new();
        let mut bytes = 0;
        for &(hash, author, seq) in log.iter() {
            if !wanted(&author, seq) {
                continue;
            }
            let envelope = self.store.envelope(&hash)?.ok_or_else(|| {
                StoreError::Corrupt(format!("change {hash} is in the document but not stored"))
            })?;
            // Stop before the limit, so a chunk never outgrows a message.
            if !out.is_empty() && bytes + envelope.len() > max_bytes {
                return Ok((out, true));
            }
            bytes += envelope.len();
            out.push(EnvelopeBytes(envelope));
        }
        Ok((out, false))
    }

    /// Makes everything stored so far durable (used at shutdown).
    pub fn flush(&self) -> Result<(), ReplicaError> {
        Ok(self.store.flush()?)
    }

    /// Starts a group commit: local writes from now on are stored atomically
    /// but not flushed, until [`Replica::end_group`] flushes them all at
    /// once. The caller must not report any of them written before that.
    pub fn begin_group(&mut self) {
        self.grouping = true;
    }

    /// Whether a group commit is open.
    pub fn in_group(&self) -> bool {
        self.grouping
    }

    /// Ends a group commit with one flush; after `Ok` every write of the
    /// group is durable.
    /// If the flush fails, the group's writes stay in memory (and perhaps in
    /// sled's cache) without being durable: further writes are refused with
    /// [`ReplicaError::NotDurable`] until a flush succeeds.
    pub fn end_group(&mut self) -> Result<(), ReplicaError> {
        self.grouping = false;
        if std::mem::take(&mut self.staged)
            && let Err(e) = self.store.flush()
        {
            self.unflushed = true;
            return Err(ReplicaError::NotDurable(e));
        }
        Ok(())
    }

    /// The shared path for changes from outside (bundles now, peers later).
    fn ingest(
        &mut self,
        envelopes: Vec<Envelope>,
        network: NetworkId,
        roster: &Roster,
    ) -> Result<(ImportSummary, Vec<Envelope>), ReplicaError> {
        self.require_durable()?;
        let started = std::time::Instant::now();
        let holding = Holding {
            store: &self.store,
            invalid: &self.invalid,
        };
        let checked = match ingest::check_batch_indexed(
            envelopes,
            network,
            roster,
            &holding,
            &mut self.op_index,
        ) {
            Ok(checked) => checked,
            Err(IngestError::Fork(fork)) => return Err(self.keep_evidence(fork)),
            Err(e) => return Err(e.into()),
        };
        let summary = ImportSummary {
            new: checked.accepted.len(),
            already_known: checked.already_known,
            ..ImportSummary::default()
        };
        if checked.accepted.is_empty() {
            return Ok((summary, Vec::new()));
        }
        let checked_in = started.elapsed();
        let changes: Vec<Change> = checked.accepted.iter().map(|a| a.change.clone()).collect();
        // Apply while the remaining signatures are verified on other cores;
        // store only once both have succeeded. A batch with few of them
        // (every push of a live change) verifies them first, on this
        // thread: starting a thread costs more than it saves.
        let overlap = checked.unchecked.len() >= OVERLAP_VERIFY_MIN;
        if !overlap {
            // Nothing applied yet: a bad signature leaves the document as it was.
            ingest::verify_rest(&checked, network)?;
        }
        let doc = &mut self.doc;
        let (applied, verified) = std::thread::scope(|scope| {
            let verifier = overlap.then(|| scope.spawn(|| ingest::verify_rest(&checked, network)));
            let applied = doc.apply(changes);
            let verified = verifier.map_or(Ok(()), |v| {
                v.join().unwrap_or_else(|_| {
                    Err(IngestError::Malformed {
                        index: 0,
                        source: EnvelopeError::BadChunk("signature check panicked"),
                    })
                })
            });
            (applied, verified)
        });
        let applied_in = started.elapsed();
        let applied = verified
            .map_err(ReplicaError::from)
            .and(applied.map_err(ReplicaError::from))
            .and_then(|()| {
                let batch = checked.accepted.iter().map(|a| (&a.envelope, a.seq));
                if self.grouping {
                    self.store.stage(batch)?;
                    self.staged = true;
                } else {
                    self.store.commit(batch)?;
                }
                Ok(())
            });
        if let Err(e) = applied {
            if matches!(e, ReplicaError::Store(_)) {
                self.unflushed = true;
            }
            self.rebuild()?;
            return Err(e);
        }
        self.op_index.keep();
        for a in &checked.accepted {
            let tip = self.tips.entry(a.envelope.author()).or_insert(0);
            *tip = (*tip).max(a.seq);
        }
        if let Some(log) = &mut self.log {
            log.extend(
                causal_order(&checked.accepted)
                    .into_iter()
                    .map(|a| (a.envelope.hash(), a.envelope.author(), a.seq)),
            );
        }

        tracing::debug!(
            new = summary.new,
            known = summary.already_known,
            checked = ?checked_in,
            applied = ?applied_in - checked_in,
            stored = ?started.elapsed() - applied_in,
            "changes ingested"
        );
        Ok((
            summary,
            checked.accepted.into_iter().map(|a| a.envelope).collect(),
        ))
    }

    /// Keeps one proof of `fork`'s equivocation per (author, sequence
    /// number): the first variant refused is stored; the same one again
    /// changes nothing; any further variant is not stored, and its error
    /// ([`IngestError::ForkAgain`]) has the sender disconnected and banned,
    /// so endless variants of one change cost a node nothing but the ban.
    fn keep_evidence(&mut self, fork: Box<ingest::Fork>) -> ReplicaError {
        let author = fork.evidence.author();
        let kept = match self.store.evidence_for(&author, fork.seq) {
            Ok(kept) => kept,
            Err(e) => return e.into(),
        };
        match kept {
            None => {
                tracing::warn!(author = %fork.author, seq = fork.seq, refused = %fork.conflicting, "fork refused and kept as evidence");
                if let Err(e) = self.adopt_fork(&fork) {
                    return e;
                }
                let evidence = Evidence {
                    envelope: fork.evidence.encode(),
                    conflicts_with: fork.existing.0,
                    seq: fork.seq,
                    recorded_at_ms: now_ms(),
                };
                if let Err(e) = self.store.record_evidence(&author, &evidence) {
                    return e.into();
                }
                IngestError::Fork(fork).into()
            }
            Some(kept)
                if Envelope::decode(&kept.envelope).map(|e| e.hash()) == Ok(fork.conflicting) =>
            {
                // Kept before proofs froze forks: freeze now.
                if let Err(e) = self.adopt_fork(&fork) {
                    return e;
                }
                IngestError::Fork(fork).into()
            }
            Some(_) => {
                tracing::warn!(author = %fork.author, seq = fork.seq, refused = %fork.conflicting, "yet another variant of a change already proven forked; not kept");
                IngestError::ForkAgain(fork).into()
            }
        }
    }

    /// A bundle of the genesis and every change not in the causal past of
    /// `since` (all changes when `since` is empty), in causal order.
    pub fn export(&self, since: &[ChangeHash]) -> Result<(Vec<u8>, usize), ReplicaError> {
        let m = self.membership.as_ref().ok_or(ReplicaError::NoNetwork)?;
        let hashes = self.doc.changes_since(since)?;
        let mut envelopes = Vec::with_capacity(hashes.len());
        for hash in &hashes {
            let bytes = self.store.envelope(hash)?.ok_or_else(|| {
                StoreError::Corrupt(format!("change {hash} is in the document but not stored"))
            })?;
            envelopes.push(EnvelopeBytes(bytes));
        }
        let count = envelopes.len();
        let bundle = Bundle {
            genesis: m.genesis.encode(),
            records: m
                .records
                .values()
                .map(|r| EnvelopeBytes(r.encode()))
                .collect(),
            envelopes,
        };
        Ok((bundle.encode(), count))
    }
}

/// Checkpoints, briefings and item histories.
impl Replica {
    /// Signs a checkpoint (see [`checkpoint::plan`] for which one); returns
    /// its id and the change that carries the signature.
    pub fn sign_checkpoint(
        &mut self,
        target: Option<&str>,
    ) -> Result<(String, ChangeHash), ReplicaError> {
        let network = self.require_writer()?;
        let roster = self.roster()?.clone();
        let subject = checkpoint::plan(
            &self.doc,
            network,
            &roster,
            self.identity.public(),
            target,
            &mut self.checkpoint_memo,
        )?;
        let (key, entry) = checkpoint::entry(&self.identity, &subject);
        let change = self.write(|doc, now| doc.put_checkpoint(&key, &entry, now))?;
        Ok((subject.id(), change))
    }

    /// Every checkpoint and how far it is attested.
    pub fn checkpoints(&mut self) -> Result<Checkpoints, ReplicaError> {
        let network = self.network_id()?;
        let roster = self.roster()?.clone();
        Ok(checkpoint::list(
            &self.doc,
            network,
            &roster,
            &mut self.checkpoint_memo,
        ))
    }

    /// The briefing for `round`, at checkpoint `target` or the current state.
    pub fn briefing(
        &mut self,
        round: Option<model::Round>,
        target: Option<&str>,
    ) -> Result<Briefing, ReplicaError> {
        let genesis = self.genesis().ok_or(ReplicaError::NoNetwork)?.clone();
        let roster = self.roster()?.clone();
        let mut briefing = checkpoint::briefing(
            &self.doc,
            &genesis,
            &roster,
            round,
            target,
            &mut self.checkpoint_memo,
        )?;
        // With its roster records an attested report checks out offline
        // under the roster it was signed in, not only the founding one.
        if let Some(attestation) = &mut briefing.attestation {
            attestation.records = self
                .records_wire()
                .iter()
                .map(|r| data_encoding::BASE64.encode(&r.0))
                .collect();
        }
        Ok(briefing)
    }

    /// Every change that touched item `id`, each stored signature verified.
    pub fn history(&self, id: &str) -> Result<History, ReplicaError> {
        let network = self.network_id()?;
        let roster = self.roster()?;
        let check = |hash: &ChangeHash| -> Result<(), String> {
            let bytes = self
                .store
                .envelope(hash)
                .map_err(|e| e.to_string())?
                .ok_or("not in the store")?;
            let envelope = Envelope::decode(&bytes).map_err(|e| e.to_string())?;
            envelope.verify(network).map_err(|e| e.to_string())?;
            if self.invalid.contains(hash) {
                return Err("rejected under the roster in force".into());
            }
            Ok(())
        };
        history::of(&self.doc, id, roster, check)
            .ok_or_else(|| ReplicaError::UnknownItem(id.to_string()))
    }
}

/// Refuses, at once, a proposal that could not take effect now.
fn check_fits(op: &Op, roster: &Roster) -> Result<(), ReplicaError> {
    if let Op::Add { name, .. } = op {
        model::required_line("name", name, crate::genesis::MAX_NAME_LEN)?;
    }
    match governance::misfit(op, roster) {
        Some(reason) => Err(ReplicaError::BadProposal(reason)),
        None => Ok(()),
    }
}

/// The motion whose id starts with `prefix` (hex, any case).
fn find_motion<'a>(g: &'a Governance, prefix: &str) -> Result<&'a Motion, ReplicaError> {
    let wanted = prefix.trim().to_lowercase();
    if wanted.len() < 4 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ReplicaError::UnknownProposal(prefix.to_string()));
    }
    let mut found = g
        .motions
        .values()
        .filter(|m| m.id.to_hex().starts_with(&wanted));
    match (found.next(), found.next()) {
        (Some(m), None) => Ok(m),
        (Some(_), Some(_)) => Err(ReplicaError::AmbiguousProposal(prefix.to_string())),
        (None, _) => Err(ReplicaError::UnknownProposal(prefix.to_string())),
    }
}

fn summary(identity: &Identity, config: &Config) -> IdentitySummary {
    IdentitySummary {
        name: config.name.clone(),
        node_id: identity.node_id().to_string(),
        public_key: identity.public().to_hex(),
        fingerprint: identity.public().fingerprint(),
    }
}

/// Where a replaced key is kept, beside the key file.
fn retired_key_file(key_file: &Path, key: &PublicKey) -> std::path::PathBuf {
    key_file.with_extension(format!(
        "key.retired-{}",
        key.fingerprint().replace([':', ' '], "")
    ))
}

/// Completes a key rotation that stopped between storing the succession and
/// swapping the key files: if a staged new key exists and the roster says
/// the loaded key was replaced by it, the staged key is installed (the old
/// one kept beside it) and returned.
fn finish_rotation(
    dir: &DataDir,
    identity: Identity,
    membership: Option<&Membership>,
) -> Result<Identity, ReplicaError> {
    let key_file = dir.key_file();
    let staged = key_file.with_extension("key.new");
    let Some(m) = membership.filter(|_| staged.exists()) else {
        return Ok(identity);
    };
    let new = Identity::load(&staged)?;
    let replaced = m
        .roster()
        .former_of(&identity.public())
        .is_some_and(|f| matches!(f.departure, Departure::RotatedTo(n) if n == new.public()));
    if !replaced {
        return Ok(identity);
    }
    let retired = retired_key_file(&key_file, &identity.public());
    fs::rename(&key_file, &retired)
        .and_then(|()| fs::rename(&staged, &key_file))
        .map_err(|source| ReplicaError::Io {
            path: key_file.clone(),
            source,
        })?;
    tracing::warn!(new = %new.node_id(), "finished a key rotation that was interrupted");
    Ok(new)
}

/// Every stored roster record, decoded (they were verified when stored).
fn load_records(store: &Store) -> Result<BTreeMap<RecordId, Record>, ReplicaError> {
    store
        .records()?
        .into_iter()
        .map(|bytes| {
            let record = Record::decode(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("roster record: {e}")))?;
            Ok((record.id(), record))
        })
        .collect()
}

/// Rebuilds the document from the store: from the snapshot if there is one
/// saved under the same roster records, plus every envelope past its tips,
/// else from every envelope, in one batch either way. Only changes that count
/// under the roster go in; the rest are returned as invalid. The store holds
/// only envelopes that passed ingest, so they are not re-verified here.
/// Returns the document, the chain tips and the invalid changes.
fn load_document(
    store: &Store,
    actor: PublicKey,
    membership: Option<&Membership>,
) -> Result<(Document, Tips, HashSet<ChangeHash>), ReplicaError> {
    let started = std::time::Instant::now();
    let tips: Tips = store.tips()?;
    let roster = membership.map(Membership::roster);
    let digest = membership.map_or([0; 32], Membership::snapshot_key);
    let parse = |hash: &ChangeHash, bytes: &[u8]| -> Result<Change, ReplicaError> {
        let envelope = Envelope::decode(bytes)
            .map_err(|e| StoreError::Corrupt(format!("envelope {hash}: {e}")))?;
        Ok(parse_change(envelope.change_bytes())
            .map_err(|e| StoreError::Corrupt(format!("change {hash}: {e}")))?)
    };
    tracing::debug!(elapsed = ?started.elapsed(), "chain tips read");
    if let Some(snapshot) = store.snapshot()?.filter(|s| s.roster == digest) {
        tracing::debug!(elapsed = ?started.elapsed(), bytes = snapshot.doc.len(), "snapshot read");
        match Document::load(&snapshot.doc, actor) {
            Ok(mut doc) => {
                let saved: Tips = snapshot.tips.into_iter().collect();
                let mut invalid: HashSet<ChangeHash> =
                    snapshot.invalid.into_iter().map(ChangeHash).collect();
                let mut missing = Vec::new();
                for (author, tip) in &tips {
                    for seq in saved.get(author).copied().unwrap_or(0) + 1..=*tip {
                        let hash = store.hash_at(author, seq).ok_or_else(|| {
                            StoreError::Corrupt(format!("chain index lacks change {seq}"))
                        })?;
                        let bytes = store.envelope(&hash)?.ok_or_else(|| {
                            StoreError::Corrupt(format!("change {hash} is indexed but not stored"))
                        })?;
                        missing.push(parse(&hash, &bytes)?);
                    }
                }
                tracing::debug!(elapsed = ?started.elapsed(), missing = missing.len(), "snapshot loaded");
                doc.apply(admit(missing, roster, &mut invalid))?;
                return Ok((doc, tips, invalid));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the snapshot does not load; rebuilding from the envelopes")
            }
        }
    }
    let mut changes = Vec::new();
    for item in store.envelopes() {
        let (hash, bytes) = item?;
        changes.push(parse(&hash, &bytes)?);
    }
    let mut invalid = HashSet::new();
    let mut doc = Document::new(actor);
    doc.apply(admit(changes, roster, &mut invalid))?;
    Ok((doc, tips, invalid))
}

/// Keeps the changes that count under `roster` (their author may write that
/// change number, and none of their dependencies is invalid), in causal
/// order; the others join `invalid`. With no roster, all count.
fn admit(
    changes: Vec<Change>,
    roster: Option<&Roster>,
    invalid: &mut HashSet<ChangeHash>,
) -> Vec<Change> {
    let Some(roster) = roster else {
        return changes;
    };
    let author_ok = |c: &Change| {
        <[u8; 32]>::try_from(c.actor_id().to_bytes()).is_ok_and(|a| {
            roster
                .may_write(&PublicKey::from_checked(a), c.seq())
                .is_ok()
        })
    };
    // Fast path: nothing rejected so far and every author in its rights.
    if invalid.is_empty() && changes.iter().all(author_ok) {
        return changes;
    }
    let hashes: Vec<ChangeHash> = changes.iter().map(Change::hash).collect();
    let order = ingest::causal_indices(&hashes, |i| changes[i].deps());
    let mut keep = vec![false; changes.len()];
    for &i in &order {
        let c = &changes[i];
        if author_ok(c) && !c.deps().iter().any(|d| invalid.contains(d)) {
            keep[i] = true;
        } else {
            invalid.insert(hashes[i]);
        }
    }
    changes
        .into_iter()
        .zip(keep)
        .filter_map(|(c, k)| k.then_some(c))
        .collect()
}

/// Importing at least this many changes at once refreshes the snapshot.
const SNAPSHOT_AFTER: usize = 1000;

/// Below this many signatures left to verify, an ingest verifies them before
/// it applies the batch instead of beside it on another thread.
const OVERLAP_VERIFY_MIN: usize = 64;

/// The accepted changes sorted so every change follows its dependencies in
/// the batch (batches from peers usually arrive sorted).
fn causal_order(accepted: &[ingest::Accepted]) -> Vec<&ingest::Accepted> {
    let hashes: Vec<ChangeHash> = accepted.iter().map(|a| a.envelope.hash()).collect();
    ingest::causal_indices(&hashes, |i| accepted[i].change.deps())
        .into_iter()
        .map(|i| &accepted[i])
        .collect()
}

/// `now` if a change may carry it: a node whose clock reads before 2000
/// (a board without a real-time clock boots in 1970) must not sign a
/// change every other node's operation check would refuse, and on which
/// every later change of its chain would then hang.
fn signing_time(now: i64) -> Result<i64, ReplicaError> {
    if model::valid_time(now) {
        Ok(now)
    } else {
        Err(ReplicaError::Clock(model::format_time(now)))
    }
}

/// The genesis and roster records in the store, if the node has joined.
fn load_membership(store: &Store) -> Result<Option<Membership>, ReplicaError> {
    let Some(bytes) = store.genesis()? else {
        return Ok(None);
    };
    // It was verified when installed: not decoding now means the store is
    // damaged.
    let genesis =
        Genesis::decode(&bytes).map_err(|e| StoreError::Corrupt(format!("stored genesis: {e}")))?;
    let records = load_records(store)?;
    let mut frozen = Frozen::new();
    for bytes in store.fork_proofs()? {
        let proof = ForkProof::decode(&bytes, genesis.network_id())
            .map_err(|e| StoreError::Corrupt(format!("stored fork proof: {e}")))?;
        frozen.insert(proof.author(), proof.seq());
    }
    Ok(Some(Membership::new(genesis, records, frozen)))
}

/// A short random id with a type prefix, e.g. `ra-k3j9x2qd`.
fn new_id(prefix: &str) -> Result<String, ReplicaError> {
    let mut bytes = [0u8; 5];
    getrandom::fill(&mut bytes).map_err(|e| IdentityError::Random(e.to_string()))?;
    Ok(format!(
        "{prefix}-{}",
        data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase()
    ))
}

fn clean_list(field: &'static str, items: &[String]) -> Result<Vec<String>, ValueError> {
    items
        .iter()
        .map(|i| model::required_text(field, i, MAX_TEXT_LEN))
        .collect()
}

/// Parses a node id given on the command line, e.g. in `--member ID=NAME`.
pub fn parse_node_id(text: &str) -> Result<NodeId, ReplicaError> {
    Ok(text.parse::<NodeId>()?)
}

/// Reads a file into memory, naming the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, ReplicaError> {
    fs::read(path).map_err(|source| ReplicaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
