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

use crate::bundle::{Bundle, EnvelopeBytes};
use crate::checkpoint::{self, Briefing, Checkpoints, StateMemo};
use crate::config::{Config, DataDir};
use crate::doc::{AssessmentUpdate, DocError, Document, NewAssessment, NewNote, parse_change};
use crate::envelope::{Envelope, EnvelopeError};
use crate::fork::{self, Frozen};
use crate::genesis::{Genesis, NetworkId};
use crate::governance::{
    self, Body, Governance, Motion, MotionKind, Op, Record, RecordId, Seen, Standing,
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
mod error;
mod exchange;
mod forks;
mod load;
mod membership;
mod views;

use load::{
    OVERLAP_VERIFY_MIN, SNAPSHOT_AFTER, causal_order, load_document, load_membership, signing_time,
};

pub use audit::{Audit, AuthorAudit, ForkReport, FrozenReport, Problem};

pub use error::ReplicaError;

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
