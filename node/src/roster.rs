//! The roster: who belongs to the network, in which role, since when, and
//! which of each key's changes count.
//!
//! The founding roster comes from the genesis; roster operations agreed by a
//! quorum (see [`crate::governance`]) fold into the same type, so every
//! lookup goes through [`Roster`]. Write rights are kept per key as spans of
//! sequence numbers: a member's change number `n` counts when `n` lies in one
//! of its member spans, which a removal, a demotion or a key rotation closes
//! at the last change its signers had seen. No IO here.

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

/// A run of one key's sequence numbers during which it was a member: change
/// numbers `after + 1 ..= until` (no upper end while it still is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub after: u64,
    pub until: Option<u64>,
}

impl Span {
    fn contains(&self, seq: u64) -> bool {
        seq > self.after && self.until.is_none_or(|u| seq <= u)
    }
}

/// How a key left the roster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Departure {
    /// Removed by a quorum.
    Removed,
    /// Replaced by a new key of the same institution.
    RotatedTo(PublicKey),
}

/// A key that was on the roster and is no longer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Former {
    pub name: String,
    pub role: Role,
    pub departure: Departure,
    /// When it left (the time of the record that made it leave).
    pub left_ms: i64,
    /// The highest change number every signer of its departure had seen;
    /// changes after it and up to the cut-off were seen by some signers
    /// only, so they may have been written while the departure was pending.
    pub seen_by_all: u64,
}

/// Why a change by a key does not count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAuthorized {
    #[error("its author is not on the roster")]
    Stranger,
    #[error("its author is an observer; observers cannot write")]
    Observer,
    #[error("its author was removed from the roster after its change number {last}")]
    Removed { last: u64 },
    #[error("its author's key was replaced after its change number {last}")]
    Rotated { last: u64 },
    #[error("its author was not a member when it made change number {seq}")]
    NotMemberThen { seq: u64 },
    #[error(
        "its author signed two different changes numbered {fork}, so none of its changes from \
         that number on count"
    )]
    Forked { fork: u64 },
}

/// The roster in force: entries by key, the quorum for roster changes, when
/// each entry joined, the keys that left, and every key's write spans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roster {
    entries: BTreeMap<PublicKey, RosterEntry>,
    quorum: u32,
    since: BTreeMap<PublicKey, i64>,
    former: BTreeMap<PublicKey, Former>,
    spans: BTreeMap<PublicKey, Vec<Span>>,
    /// Keys proven to have forked, and the change number where (see
    /// [`crate::fork`]): none of their changes from it on count.
    forked: BTreeMap<PublicKey, u64>,
}

impl Roster {
    /// A founding roster: every member may write from its first change.
    pub fn new(entries: impl IntoIterator<Item = RosterEntry>, quorum: u32) -> Self {
        let entries: BTreeMap<PublicKey, RosterEntry> =
            entries.into_iter().map(|e| (e.key, e)).collect();
        let spans = entries
            .values()
            .filter(|e| e.role == Role::Member)
            .map(|e| {
                (
                    e.key,
                    vec![Span {
                        after: 0,
                        until: None,
                    }],
                )
            })
            .collect();
        Self {
            entries,
            quorum,
            since: BTreeMap::new(),
            former: BTreeMap::new(),
            spans,
            forked: BTreeMap::new(),
        }
    }

    /// Stamps every current entry with `at_ms` as its start (the genesis time).
    pub(crate) fn founded_at(mut self, at_ms: i64) -> Self {
        self.since = self.entries.keys().map(|k| (*k, at_ms)).collect();
        self
    }

    /// Whether `key`'s change number `seq` counts under this roster.
    pub fn may_write(&self, key: &PublicKey, seq: u64) -> Result<(), NotAuthorized> {
        if self
            .spans
            .get(key)
            .is_some_and(|spans| spans.iter().any(|s| s.contains(seq)))
        {
            return Ok(());
        }
        let last = || {
            self.spans
                .get(key)
                .and_then(|s| s.iter().filter_map(|s| s.until).max())
                .unwrap_or(0)
        };
        if let Some(fork) = self.forked.get(key).filter(|f| seq >= **f) {
            return Err(NotAuthorized::Forked { fork: *fork });
        }
        Err(match (self.entries.get(key), self.former.get(key)) {
            (Some(e), _) if e.role == Role::Observer && !self.spans.contains_key(key) => {
                NotAuthorized::Observer
            }
            (Some(e), _) if e.role == Role::Observer && seq > last() => NotAuthorized::Observer,
            (Some(_), _) => NotAuthorized::NotMemberThen { seq },
            (None, Some(f)) => match f.departure {
                Departure::Removed => NotAuthorized::Removed { last: last() },
                Departure::RotatedTo(_) => NotAuthorized::Rotated { last: last() },
            },
            (None, None) => NotAuthorized::Stranger,
        })
    }

    /// Whether `key` is or was on the roster (its signatures may be stored).
    pub fn knows(&self, key: &PublicKey) -> bool {
        self.entries.contains_key(key) || self.former.contains_key(key)
    }

    /// When `key` joined the roster in its current role, if known.
    pub fn since(&self, key: &PublicKey) -> Option<i64> {
        self.since.get(key).copied()
    }

    /// How `key` left the roster, if it did.
    pub fn former_of(&self, key: &PublicKey) -> Option<&Former> {
        self.former.get(key)
    }

    /// Keys that left the roster, ordered by key.
    pub fn former(&self) -> impl Iterator<Item = (&PublicKey, &Former)> {
        self.former.iter()
    }

    /// The write spans of `key`.
    pub fn spans(&self, key: &PublicKey) -> &[Span] {
        self.spans.get(key).map_or(&[], Vec::as_slice)
    }

    /// The key that now speaks for `key`'s institution: `key` itself, or the
    /// last key in its chain of rotations.
    pub fn current_key(&self, key: &PublicKey) -> PublicKey {
        let mut key = *key;
        // A rotation chain never revisits a key; the bound is a safety net.
        for _ in 0..=self.former.len() {
            match self.former.get(&key).map(|f| &f.departure) {
                Some(Departure::RotatedTo(next)) => key = *next,
                _ => break,
            }
        }
        key
    }

    // Roster changes, used by `governance` only.

    pub(crate) fn set_quorum(&mut self, quorum: u32) {
        self.quorum = quorum;
    }

    pub(crate) fn admit(&mut self, entry: RosterEntry, at_ms: i64) {
        if entry.role == Role::Member {
            self.spans.entry(entry.key).or_default().push(Span {
                after: 0,
                until: None,
            });
        }
        self.since.insert(entry.key, at_ms);
        self.entries.insert(entry.key, entry);
    }

    /// Changes `key`'s role; `mark` is the last change number that counts
    /// before a demotion, or after which a promotion starts.
    pub(crate) fn change_role(&mut self, key: &PublicKey, role: Role, mark: u64, at_ms: i64) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if entry.role == role {
            return;
        }
        entry.role = role;
        self.since.insert(*key, at_ms);
        let spans = self.spans.entry(*key).or_default();
        match role {
            Role::Member => spans.push(Span {
                after: mark,
                until: None,
            }),
            Role::Observer => close(spans, mark),
        }
    }

    /// Freezes `key` at its fork at change number `fork` (see
    /// [`crate::fork`]): none of its changes from `fork` on count.
    pub(crate) fn freeze(&mut self, key: &PublicKey, fork: u64) {
        self.clamp(key, fork.saturating_sub(1));
        self.forked.insert(*key, fork);
    }

    /// Where `key` is frozen by a fork, if it is.
    pub fn forked_at(&self, key: &PublicKey) -> Option<u64> {
        self.forked.get(key).copied()
    }

    /// Lets none of `key`'s changes after `mark` count, whatever its spans.
    pub(crate) fn clamp(&mut self, key: &PublicKey, mark: u64) {
        if let Some(spans) = self.spans.get_mut(key) {
            for span in spans.iter_mut() {
                span.until = Some(span.until.map_or(mark, |u| u.min(mark)));
            }
            spans.retain(|s| s.until.is_none_or(|u| u > s.after));
        }
    }

    /// Takes `key` off the roster; its changes after `mark` no longer count.
    /// `seen_by_all` is the highest change number all signers had seen.
    pub(crate) fn depart(
        &mut self,
        key: &PublicKey,
        departure: Departure,
        (mark, seen_by_all): (u64, u64),
        at_ms: i64,
    ) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        self.since.remove(key);
        if let Some(spans) = self.spans.get_mut(key) {
            close(spans, mark);
        }
        self.former.insert(
            *key,
            Former {
                name: entry.name,
                role: entry.role,
                departure,
                left_ms: at_ms,
                seen_by_all: seen_by_all.min(mark),
            },
        );
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

    /// A display name for any key: the roster name (also for a key that has
    /// left), or the fingerprint of a key never on the roster.
    pub fn display_name(&self, key: &PublicKey) -> String {
        match (self.entries.get(key), self.former.get(key)) {
            (Some(entry), _) => entry.name.clone(),
            (None, Some(former)) => match former.departure {
                Departure::Removed => format!("{} (removed)", former.name),
                Departure::RotatedTo(_) => format!("{} (former key)", former.name),
            },
            (None, None) => format!("unknown key {}", key.fingerprint()),
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

/// Closes the open span at `mark` (an empty span is dropped).
fn close(spans: &mut Vec<Span>, mark: u64) {
    if let Some(open) = spans.iter_mut().find(|s| s.until.is_none()) {
        open.until = Some(mark.max(open.after));
    }
    spans.retain(|s| s.until.is_none_or(|u| u > s.after));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn key(n: u8) -> PublicKey {
        Identity::from_secret([n; 32]).public()
    }

    fn roster() -> Roster {
        let entry = |n, role| RosterEntry {
            key: key(n),
            name: format!("I{n}"),
            role,
        };
        Roster::new([entry(1, Role::Member), entry(2, Role::Observer)], 1)
    }

    #[test]
    fn founding_members_write_and_observers_do_not() {
        let r = roster();
        assert!(r.may_write(&key(1), 1).is_ok());
        assert_eq!(r.may_write(&key(2), 1), Err(NotAuthorized::Observer));
        assert_eq!(r.may_write(&key(3), 1), Err(NotAuthorized::Stranger));
    }

    #[test]
    fn removal_keeps_changes_up_to_the_mark() {
        let mut r = roster();
        r.depart(&key(1), Departure::Removed, (5, 5), 10);
        assert!(r.may_write(&key(1), 5).is_ok());
        assert_eq!(
            r.may_write(&key(1), 6),
            Err(NotAuthorized::Removed { last: 5 })
        );
        assert!(r.knows(&key(1)));
        assert_eq!(r.display_name(&key(1)), "I1 (removed)");
    }

    #[test]
    fn demotion_and_promotion_make_spans() {
        let mut r = roster();
        r.change_role(&key(1), Role::Observer, 3, 10);
        r.change_role(&key(1), Role::Member, 7, 20);
        assert!(r.may_write(&key(1), 3).is_ok());
        assert!(r.may_write(&key(1), 5).is_err());
        assert!(r.may_write(&key(1), 8).is_ok());
        r.change_role(&key(2), Role::Member, 0, 30);
        assert!(r.may_write(&key(2), 1).is_ok());
    }

    #[test]
    fn rotation_points_to_the_new_key() {
        let mut r = roster();
        r.depart(&key(1), Departure::RotatedTo(key(4)), (2, 2), 10);
        r.admit(
            RosterEntry {
                key: key(4),
                name: "I1".into(),
                role: Role::Member,
            },
            10,
        );
        assert_eq!(r.current_key(&key(1)), key(4));
        assert_eq!(
            r.may_write(&key(1), 3),
            Err(NotAuthorized::Rotated { last: 2 })
        );
        assert!(r.may_write(&key(4), 1).is_ok());
    }
}
