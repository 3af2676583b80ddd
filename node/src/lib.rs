//! Concord's node library: a federated, signed, CRDT-backed register of AI-risk
//! assessments and consensus notes.
//!
//! Modules, in reading order:
//! - [`clip`]: user-provided text quoted and clipped for error messages;
//! - [`identity`]: the institution's ed25519 key, node id and fingerprint;
//! - [`roster`]: who is a member or an observer;
//! - [`genesis`]: the signed founding record; its hash is the network id;
//! - [`envelope`]: the signed wrapper around every Automerge change;
//! - [`taxonomy`] and [`model`]: the domain and the views printed as JSON;
//! - [`doc`]: the Automerge document and its typed reads and writes;
//! - [`ingest`]: the single verification path for changes from outside;
//! - [`fork`]: proofs that an author signed two changes with one number;
//! - [`store`]: the sled store of envelopes;
//! - [`bundle`]: the file format for exchanging envelopes offline;
//! - [`config`]: the data directory and the config file;
//! - [`replica`]: a node's local state tying all of the above together;
//! - [`text`]: text from the document refused on write, escaped on output
//!   (terminal, Markdown);
//! - [`report`]: the briefing of consensus and divergence;
//! - [`checkpoint`]: attested checkpoints, the canonical state, and the
//!   offline check of exported reports and bundles;
//! - [`history`]: every change that touched one item;
//! - [`sync`]: the sync protocol's messages;
//! - [`engine`]: the sync protocol's decisions, per peer, behind a transport;
//! - [`network`]: the libp2p event loop that owns the swarm;
//! - [`node`]: the running node: the engine on libp2p, the local API;
//! - [`faults`]: injected delay and loss, for tests of real processes;
//! - [`web`]: the read-only web view a running node serves.
//!
//! Boundaries: only `store` imports sled; only `identity` (for the `PeerId`
//! form of a key), `network` and `node` import libp2p; `identity`,
//! `genesis`, `envelope`, `doc`, `ingest`, `model`, `text`, `report`,
//! `checkpoint` and `history` do no IO and spawn nothing; `engine` does IO only through
//! its replica and its transport.

pub mod api;
pub mod bundle;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod contain;
pub mod doc;
pub mod engine;
pub mod envelope;
pub mod faults;
pub mod fork;
pub mod genesis;
pub mod governance;
pub mod history;
pub mod identity;
pub mod ingest;
pub mod model;
pub mod network;
pub mod node;
pub mod opcheck;
pub mod replica;
pub mod report;
pub mod roster;
pub mod schema;
pub mod store;
pub mod sync;
pub mod taxonomy;
pub mod text;
#[cfg(test)]
mod totality;
pub mod web;

pub use replica::{Replica, ReplicaError};
