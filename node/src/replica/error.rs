//! Everything that can go wrong in a node's local operations, gathered in
//! one enum: each boundary's own error, and the replica's refusals.

use crate::bundle::BundleError;
use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::doc::DocError;
use crate::envelope::EnvelopeError;
use crate::fork::ForkError;
use crate::genesis::GenesisError;
use crate::governance::{self, RecordError};
use crate::identity::IdentityError;
use crate::ingest::IngestError;
use crate::model::ValueError;
use crate::store::StoreError;

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
