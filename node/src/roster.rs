//! The roster: who belongs to the network and in which role.
//!
//! Today the roster is the founding roster of the genesis; later roster
//! operations (signed by a quorum) fold into the same type, which is why every
//! lookup goes through [`Roster`] rather than the genesis. No IO here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::{NodeId, PublicKey};

/// What an institution may do on the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Writes changes and records positions.
    Member,
    /// Syncs and verifies everything; none of its changes are ever accepted.
    Observer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Member => "member",
            Role::Observer => "observer",
        })
    }
}

/// One institution on the roster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub key: PublicKey,
    pub name: String,
    pub role: Role,
}

/// The roster in force: entries by key, and the quorum for roster changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roster {
    entries: BTreeMap<PublicKey, RosterEntry>,
    quorum: u32,
}

impl Roster {
    pub fn new(entries: impl IntoIterator<Item = RosterEntry>, quorum: u32) -> Self {
        Self {
            entries: entries.into_iter().map(|e| (e.key, e)).collect(),
            quorum,
        }
    }

    pub fn get(&self, key: &PublicKey) -> Option<&RosterEntry> {
        self.entries.get(key)
    }

    pub fn role_of(&self, key: &PublicKey) -> Option<Role> {
        self.entries.get(key).map(|e| e.role)
    }

    pub fn is_member(&self, key: &PublicKey) -> bool {
        self.role_of(key) == Some(Role::Member)
    }

    /// A display name for any key: the roster name, or the fingerprint of a
    /// key that is not on the roster.
    pub fn display_name(&self, key: &PublicKey) -> String {
        match self.entries.get(key) {
            Some(entry) => entry.name.clone(),
            None => format!("unknown key {}", key.fingerprint()),
        }
    }

    /// Every entry, ordered by key.
    pub fn entries(&self) -> impl Iterator<Item = &RosterEntry> {
        self.entries.values()
    }

    /// Current members, ordered by key.
    pub fn members(&self) -> impl Iterator<Item = &RosterEntry> {
        self.entries.values().filter(|e| e.role == Role::Member)
    }

    pub fn quorum(&self) -> u32 {
        self.quorum
    }

    /// Looks an entry up by the text form of its node id.
    pub fn by_node_id(&self, node_id: &NodeId) -> Option<&RosterEntry> {
        self.entries.get(&node_id.public_key())
    }
}
