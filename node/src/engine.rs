//! The sync engine: every decision of the sync protocol, per peer, with no
//! IO of its own.
//!
//! The engine owns the [`Replica`] and a table of roster peers. It is told
//! what happened (a peer connected or dropped, a request arrived, an answer
//! or a failure came back, time passed) and acts through a [`Transport`]:
//! send a request, disconnect a peer, allow or refuse a peer after a roster
//! change. The running node's transport is libp2p (see [`crate::node`]); a
//! test harness can drive the very same engine over an in-memory bus, with
//! its own clock, and replay a run exactly (peers are kept in a `BTreeMap`,
//! so the engine's own choices never depend on hashing).
//!
//! What the engine does:
//! - reconciles with every peer that connects (one `Pull` with our chain tips
//!   and records digest, answered with what we lack, pulled again while the
//!   answer says `more`), and again every [`RECONCILE_EVERY`];
//! - answers pulls and pushes; a push's roster records are taken before its
//!   envelopes, and new ones are relayed to every other connected peer
//!   before the store is flushed (every peer verifies on its own; the answer
//!   to the sender, which says we hold them, waits for the flush);
//! - sorts failures into misbehaviour (the peer is refused and disconnected)
//!   and mere gaps (we pull from the sender);
//! - follows the roster in force: entries that join are allowed, keys that
//!   leave are refused and disconnected;
//! - finds forks: where a peer's tip names another hash for a change it
//!   holds, it sends the peer its version; proofs of forks (and so the fork
//!   points that freeze their authors) are taken before anything else in a
//!   message, relayed to every peer, and sent to any peer that lacks them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::bundle::EnvelopeBytes;
use crate::fork::{Frozen, ProofBytes, frozen_from_wire, frozen_to_wire, lower_than};
use crate::genesis::NetworkId;
use crate::identity::PublicKey;
use crate::ingest::IngestError;
use crate::model::now_ms;
use crate::replica::{Replica, ReplicaError};
use crate::roster::{Role, Roster};
use crate::sync::{self, ChainTip, RESPONSE_TARGET_LEN, Tips, lacking, tips_from_wire};

/// Requests in flight to one peer; past this, pushes wait for the next pull.
pub const MAX_IN_FLIGHT_PER_PEER: usize = 16;
/// How often a connected peer is pulled from even when nothing was pushed.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// How long after a failed pull it is tried again, while the peer stays
/// connected (a lost answer must not wait for the next reconcile).
pub const PULL_RETRY: Duration = Duration::from_secs(2);
/// Roster-based refusals of one peer's changes tolerated while it holds our
/// roster records, before it is disconnected as misbehaving.
pub const ROSTER_REFUSALS_MAX: u32 = 3;

/// Why an outbound request was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Pull,
    Push,
}

/// How the engine reaches its peers. Every method hands the work over and
/// returns at once; the answer to a [`Transport::send`] comes back through
/// [`Engine::handle_outcome`].
pub trait Transport {
    /// How the transport names a peer.
    type Peer: Copy + Ord + fmt::Debug + fmt::Display;
    /// The peer a roster key is reached as, if it can be.
    fn peer_of(key: &PublicKey) -> Option<Self::Peer>;
    /// Sends `request` to `peer`.
    fn send(&mut self, peer: Self::Peer, purpose: Purpose, request: sync::Request);
    /// Closes every connection to `peer`.
    fn disconnect(&mut self, peer: Self::Peer);
    /// Lets `peer` connect from now on (it joined the roster).
    fn allow(&mut self, peer: Self::Peer, key: PublicKey);
    /// Refuses `peer` from now on and closes its connections (it left).
    fn disallow(&mut self, peer: Self::Peer);
    /// There is something new to show (a write, an ingest, a connection).
    fn changed(&mut self);
}

/// What the engine knows about one roster peer.
#[derive(Clone, Debug)]
pub struct PeerState {
    pub key: PublicKey,
    pub role: Role,
    pub connected: bool,
    /// Wall-clock time of the last exchange, for display.
    pub last_seen: Option<i64>,
    /// Their chain tips as of the last exchange.
    pub tips: Option<Tips>,
    /// Their fork points as of the last exchange.
    pub frozen: Option<Frozen>,
    pulling: bool,
    pull_again: bool,
    in_flight: usize,
    /// When this node last pulled from the peer.
    last_pull: Instant,
    /// When to pull again after a pull failed.
    retry_pull: Option<Instant>,
    /// The digest of the peer's roster records, from its last pull.
    records: Option<[u8; 32]>,
    /// The records digest we last pulled for because it differed from ours.
    pulled_for_records: Option<[u8; 32]>,
    /// Batches refused under the roster since the peer's last accepted one.
    roster_refusals: u32,
}

impl PeerState {
    fn new(key: PublicKey, role: Role, now: Instant) -> Self {
        Self {
            key,
            role,
            connected: false,
            last_seen: None,
            tips: None,
            frozen: None,
            pulling: false,
            pull_again: false,
            in_flight: 0,
            last_pull: now,
            retry_pull: None,
            records: None,
            pulled_for_records: None,
            roster_refusals: 0,
        }
    }
}

/// The result of ingesting a peer's envelopes.
enum Ingested {
    /// Verified and applied; this many were new.
    Accepted(usize),
    /// Valid so far, but dependencies are missing: pull from the sender.
    Incomplete,
    /// Invalid: the peer is disconnected.
    Refused(String),
    /// Not applied, but not the sender's fault (a fork relayed, a local error).
    Kept(String),
}

/// The sync engine of one node.
#[derive(Debug)]
pub struct Engine<T: Transport> {
    replica: Replica,
    transport: T,
    network: NetworkId,
    peers: BTreeMap<T::Peer, PeerState>,
    /// Wall-clock time of the last completed catch-up or accepted change.
    last_sync: Option<i64>,
}

impl<T: Transport> Engine<T> {
    /// An engine for a replica that has joined a network. Its peers are the
    /// roster's entries but this node; the transport is expected to allow
    /// exactly those (see [`roster_peers`]).
    pub fn new(replica: Replica, transport: T, now: Instant) -> Result<Self, ReplicaError> {
        let network = replica.network_id()?;
        let me = replica.identity().public();
        let peers = roster_peers(replica.roster()?, &me, T::peer_of)
            .into_iter()
            .map(|(peer, (key, role))| (peer, PeerState::new(key, role, now)))
            .collect();
        Ok(Self {
            replica,
            transport,
            network,
            peers,
            last_sync: None,
        })
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn replica_mut(&mut self) -> &mut Replica {
        &mut self.replica
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The replica and the transport at once, for callers that update one
    /// from the other.
    pub fn parts_mut(&mut self) -> (&mut Replica, &mut T) {
        (&mut self.replica, &mut self.transport)
    }

    /// Gives the replica back (to close it).
    pub fn into_replica(self) -> Replica {
        self.replica
    }

    pub fn network(&self) -> NetworkId {
        self.network
    }

    pub fn peers(&self) -> impl Iterator<Item = (&T::Peer, &PeerState)> {
        self.peers.iter()
    }

    pub fn peer(&self, peer: &T::Peer) -> Option<&PeerState> {
        self.peers.get(peer)
    }

    pub fn last_sync(&self) -> Option<i64> {
        self.last_sync
    }

    /// Whether any peer is connected.
    pub fn any_connected(&self) -> bool {
        self.peers.values().any(|s| s.connected)
    }

    /// A connection to `peer` is up: reconcile with it. `false` when the
    /// peer is not on the roster (the caller should close the connection).
    pub fn connected(&mut self, peer: T::Peer, now: Instant) -> bool {
        let Some(state) = self.peers.get_mut(&peer) else {
            return false;
        };
        tracing::info!(%peer, "peer connected");
        state.connected = true;
        state.last_seen = Some(now_ms());
        self.transport.changed();
        self.start_pull(peer, now);
        true
    }

    /// Every connection to `peer` is gone. Requests in flight to it fail on
    /// their own (through [`Engine::handle_outcome`]).
    pub fn disconnected(&mut self, peer: T::Peer) {
        if let Some(state) = self.peers.get_mut(&peer) {
            tracing::info!(%peer, "peer disconnected");
            state.connected = false;
            state.pulling = false;
            state.tips = None;
            self.transport.changed();
        }
    }

    /// The transport was replaced (after a key rotation): no connection and
    /// no request survives.
    pub fn reset_connections(&mut self) {
        for state in self.peers.values_mut() {
            state.connected = false;
            state.pulling = false;
            state.in_flight = 0;
        }
    }

    /// Time passed: pulls from connected peers whose last pull failed
    /// [`PULL_RETRY`] ago, or that were not pulled from for
    /// [`RECONCILE_EVERY`], so a lost push is made good even on a quiet
    /// network (a few hundred bytes each).
    pub fn tick(&mut self, now: Instant) {
        let stale: Vec<T::Peer> = self
            .peers
            .iter()
            .filter(|(_, s)| {
                s.connected
                    && !s.pulling
                    && (s.retry_pull.is_some_and(|at| at <= now)
                        || now.duration_since(s.last_pull) >= RECONCILE_EVERY)
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in stale {
            self.start_pull(peer, now);
        }
    }

    /// Answers a peer's request. A `Refused` answer should close the
    /// connection once sent.
    pub fn handle_request(
        &mut self,
        peer: T::Peer,
        request: sync::Request,
        now: Instant,
    ) -> sync::Response {
        let response = self.answer(peer, request, now);
        self.follow_roster(now);
        response
    }

    fn answer(&mut self, peer: T::Peer, request: sync::Request, now: Instant) -> sync::Response {
        let Some(state) = self.peers.get_mut(&peer) else {
            return refused("not on the roster");
        };
        state.last_seen = Some(now_ms());
        match request {
            sync::Request::Pull {
                network,
                have,
                records,
                frozen,
            } => {
                if network != self.network {
                    tracing::warn!(%peer, "pull for another network; disconnecting");
                    return refused("wrong network");
                }
                let theirs = tips_from_wire(&have);
                let their_frozen = frozen_from_wire(&frozen);
                let ours = self.replica.records_digest();
                let records_differ = records != ours;
                // They may hold records or proofs we lack: pull once per
                // digest of theirs, and whenever they know a lower fork.
                let they_have_more = lacking(&theirs, &self.replica.counting_tips()) > 0
                    || (records_differ && state.pulled_for_records != Some(records))
                    || !lower_than(&their_frozen, self.replica.frozen()).is_empty();
                if records_differ {
                    state.pulled_for_records = Some(records);
                }
                state.records = Some(records);
                state.tips = Some(theirs.clone());
                state.frozen = Some(their_frozen.clone());
                let answer = self.changes_answer(&have, &theirs, &their_frozen, records_differ);
                if they_have_more {
                    self.start_pull(peer, now);
                }
                match answer {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::error!(%peer, error = %e, "cannot read changes to send");
                        refused("internal error")
                    }
                }
            }
            sync::Request::Push {
                network,
                records,
                envelopes,
                proofs,
                versions,
            } => {
                if network != self.network {
                    tracing::warn!(%peer, "push for another network; disconnecting");
                    return refused("wrong network");
                }
                if let Err(reason) = self.take_records(peer, &records) {
                    return refused(&reason);
                }
                if let Err(reason) = self.take_forks(peer, &proofs, &versions, now) {
                    return refused(&reason);
                }
                let accepted = match self.ingest(peer, &envelopes) {
                    Ingested::Accepted(accepted) => accepted,
                    Ingested::Incomplete => {
                        self.start_pull(peer, now);
                        0
                    }
                    Ingested::Refused(reason) => return refused(&reason),
                    Ingested::Kept(reason) => {
                        tracing::warn!(%peer, %reason, "push not applied");
                        0
                    }
                };
                sync::Response::Ack {
                    accepted: u32::try_from(accepted).unwrap_or(u32::MAX),
                    have: self.replica.wire_tips(),
                    frozen: frozen_to_wire(self.replica.frozen()),
                }
            }
        }
    }

    /// The answer to a request sent with [`Transport::send`], or why none
    /// came (the connection dropped, the peer timed out).
    pub fn handle_outcome(
        &mut self,
        peer: T::Peer,
        purpose: Purpose,
        result: Result<sync::Response, String>,
        now: Instant,
    ) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.in_flight = state.in_flight.saturating_sub(1);
            if purpose == Purpose::Pull {
                state.pulling = false;
            }
        }
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(%peer, error = %e, ?purpose, "request failed");
                match purpose {
                    // The peer may lack what we pushed: reconcile instead.
                    Purpose::Push => self.start_pull(peer, now),
                    // We may lack what it holds: try again shortly.
                    Purpose::Pull => {
                        if let Some(state) = self.peers.get_mut(&peer) {
                            state.retry_pull = Some(now + PULL_RETRY);
                        }
                    }
                }
                return;
            }
        };
        match response {
            sync::Response::Changes {
                records,
                envelopes,
                more,
                have,
                frozen,
                proofs,
                versions,
            } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.tips = Some(tips_from_wire(&have));
                    state.frozen = Some(frozen_from_wire(&frozen));
                    state.last_seen = Some(now_ms());
                }
                if self.take_records(peer, &records).is_err()
                    || self.take_forks(peer, &proofs, &versions, now).is_err()
                {
                    self.transport.disconnect(peer);
                    return;
                }
                self.compare_forks(peer, &have);
                self.follow_roster(now);
                if !self.peers.contains_key(&peer) {
                    return;
                }
                match self.ingest(peer, &envelopes) {
                    Ingested::Refused(_) => {
                        self.transport.disconnect(peer);
                        return;
                    }
                    Ingested::Incomplete | Ingested::Kept(_) => {
                        // Pulling again with the same tips would bring the
                        // same chunk: wait for the next exchange instead.
                        tracing::warn!(%peer, "catch-up chunk not applied; not pulling it again");
                        return;
                    }
                    Ingested::Accepted(_) => {}
                }
                let again = self.peers.get(&peer).is_some_and(|s| s.pull_again);
                if more || again {
                    self.start_pull(peer, now);
                } else {
                    self.last_sync = Some(now_ms());
                    tracing::debug!(%peer, "in sync");
                    // A member's whole state, our own chain included, is
                    // here now: a restored node may sign again.
                    if self
                        .peers
                        .get(&peer)
                        .is_some_and(|s| s.role == Role::Member)
                        && let Err(e) = self.replica.learned_own_chain()
                    {
                        tracing::error!(error = %e, "cannot record that this key's chain is known");
                    }
                }
            }
            sync::Response::Ack { have, frozen, .. } => {
                let pull = match self.peers.get_mut(&peer) {
                    Some(state) => {
                        state.tips = Some(tips_from_wire(&have));
                        state.frozen = Some(frozen_from_wire(&frozen));
                        state.last_seen = Some(now_ms());
                        state.pull_again && !state.pulling
                    }
                    None => false,
                };
                self.compare_forks(peer, &have);
                if pull {
                    self.start_pull(peer, now);
                }
            }
            sync::Response::Refused { reason } => {
                tracing::warn!(%peer, %reason, "peer refused our request");
            }
        }
    }

    /// Local writes were committed (and flushed): pushes every change added
    /// since `before` to the connected peers.
    pub fn committed(&mut self, before: &Tips) {
        match self.replica.changes_for(before, &Frozen::new(), usize::MAX) {
            Ok((new, _)) => {
                self.transport.changed();
                self.relay(&new, None);
            }
            Err(e) => tracing::error!(error = %e, "cannot read the new changes"),
        }
    }

    /// The local roster records changed (a proposal, an approval): pushes
    /// them to every connected peer and follows the roster.
    pub fn records_changed(&mut self, now: Instant) {
        let records = self.replica.records_wire();
        self.push_records(records, None, false);
        self.follow_roster(now);
    }

    /// Verifies and applies envelopes from `peer`, relays what was new, and
    /// sorts failures into misbehaviour and mere gaps.
    fn ingest(&mut self, peer: T::Peer, envelopes: &[EnvelopeBytes]) -> Ingested {
        if envelopes.is_empty() {
            return Ingested::Accepted(0);
        }
        // Staged, relayed, then flushed: relaying does not wait for our
        // disk (every peer verifies on its own), but the answer to the
        // sender, which says we hold the changes, does.
        self.replica.begin_group();
        let frozen_before = self.replica.frozen().clone();
        let ingested = self.replica.ingest_wire(envelopes);
        if let Ok((summary, accepted)) = &ingested
            && summary.new > 0
        {
            self.relay(accepted, Some(peer));
        }
        if let Err(e) = self.replica.end_group() {
            tracing::error!(%peer, error = %e, "cannot flush the store");
            return Ingested::Kept(e.to_string());
        }
        match ingested {
            Ok((summary, _)) => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.roster_refusals = 0;
                }
                if summary.new > 0 {
                    tracing::debug!(%peer, new = summary.new, "changes accepted");
                    self.last_sync = Some(now_ms());
                    self.transport.changed();
                }
                Ingested::Accepted(summary.new)
            }
            Err(ReplicaError::Ingest(
                IngestError::MissingDependency { .. } | IngestError::MissingPredecessor { .. },
            )) => Ingested::Incomplete,
            Err(ReplicaError::Ingest(e @ IngestError::Fork(_))) => {
                tracing::warn!(%peer, error = %e, "fork refused and kept as evidence");
                if self.replica.frozen() != &frozen_before {
                    // A proof was made: every peer should have it, and what
                    // else the sender holds may count now.
                    match self.replica.proofs_for(&frozen_before, usize::MAX) {
                        Ok(proofs) => self.push_forks(None, proofs, Vec::new()),
                        Err(e) => tracing::error!(error = %e, "cannot read fork proofs"),
                    }
                    if let Some(state) = self.peers.get_mut(&peer) {
                        state.pull_again = true;
                    }
                }
                Ingested::Kept(e.to_string())
            }
            Err(ReplicaError::Ingest(
                e @ (IngestError::NotAuthorized { .. }
                | IngestError::NotOnRoster { .. }
                | IngestError::Observer { .. }
                | IngestError::BuildsOnRejected { .. }),
            )) => {
                // The sender may not know the roster we know yet: send it our
                // records and pull again once it has them. A peer that holds
                // our very records and still sends such changes misbehaves.
                let ours = self.replica.records_digest();
                let our_frozen = self.replica.frozen().clone();
                let their_frozen = self.peers.get(&peer).and_then(|s| s.frozen.clone());
                // A change from a frozen author's fork point on is refused
                // here: a peer that lacks the proof gets it.
                match self
                    .replica
                    .proofs_for(their_frozen.as_ref().unwrap_or(&Frozen::new()), usize::MAX)
                {
                    Ok(proofs) => self.push_forks(Some(peer), proofs, Vec::new()),
                    Err(e) => tracing::error!(error = %e, "cannot read fork proofs"),
                }
                let Some(state) = self.peers.get_mut(&peer) else {
                    return Ingested::Refused(e.to_string());
                };
                // Its records push and a relayed change travel on separate
                // streams and may cross, so one such refusal is no proof.
                state.roster_refusals += 1;
                if state.records == Some(ours)
                    && state.frozen.as_ref() == Some(&our_frozen)
                    && state.roster_refusals > ROSTER_REFUSALS_MAX
                {
                    tracing::warn!(%peer, error = %e, "peer knows our roster yet keeps sending changes it refuses; disconnecting");
                    return Ingested::Refused(e.to_string());
                }
                tracing::info!(%peer, error = %e, "changes refused under our roster; sending it our roster records");
                state.pull_again = true;
                let records = self.replica.records_wire();
                self.push_records(records, Some(peer), true);
                Ingested::Kept(e.to_string())
            }
            Err(ReplicaError::Ingest(e)) => {
                tracing::warn!(%peer, error = %e, "peer sent an invalid envelope; disconnecting");
                Ingested::Refused(e.to_string())
            }
            Err(ReplicaError::Doc(e)) => {
                // Signed, but Automerge refused or panicked on it: drop the
                // session; the document was rebuilt from the store.
                tracing::warn!(%peer, error = %e, "peer's changes do not apply; disconnecting");
                Ingested::Refused(e.to_string())
            }
            Err(e) => {
                tracing::error!(%peer, error = %e, "cannot apply the peer's changes");
                Ingested::Kept(e.to_string())
            }
        }
    }

    /// Verifies and stores roster records from `peer` and relays the new
    /// ones. `Err` (a refusal reason) when the peer sent a record that is
    /// forged, malformed or of another network. Records signed by a key not
    /// known yet are left out without blame (see `governance::admit`); they
    /// come again with later exchanges.
    fn take_records(&mut self, peer: T::Peer, records: &[EnvelopeBytes]) -> Result<(), String> {
        if records.is_empty() {
            return Ok(());
        }
        match self.replica.add_records(records) {
            Ok((summary, new)) => {
                if summary.new > 0 {
                    tracing::info!(%peer, new = summary.new, changed = summary.roster_changed, "roster records accepted");
                    self.push_records(new, Some(peer), false);
                }
                Ok(())
            }
            Err(ReplicaError::Record(e)) => {
                tracing::warn!(%peer, error = %e, "peer sent a bad roster record; disconnecting");
                Err(e.to_string())
            }
            Err(e) => {
                tracing::error!(%peer, error = %e, "cannot store roster records");
                Ok(())
            }
        }
    }

    /// Pushes roster records to every connected peer except `peer` (or,
    /// with `only`, to `peer` alone).
    fn push_records(&mut self, records: Vec<EnvelopeBytes>, peer: Option<T::Peer>, only: bool) {
        if records.is_empty() {
            return;
        }
        let targets: Vec<T::Peer> = if only {
            peer.into_iter().collect()
        } else {
            self.connected_except(peer)
        };
        for target in targets {
            if let Some(state) = self.peers.get_mut(&target) {
                state.in_flight += 1;
            }
            let request = sync::Request::Push {
                network: self.network,
                records: records.clone(),
                envelopes: Vec::new(),
                proofs: Vec::new(),
                versions: Vec::new(),
            };
            self.transport.send(target, Purpose::Push, request);
        }
    }

    /// Makes the peer table and the transport's allow-list match the roster
    /// in force: entries that joined may connect, keys that left are refused
    /// and disconnected at once.
    pub fn follow_roster(&mut self, now: Instant) {
        let me = self.replica.identity().public();
        let Ok(roster) = self.replica.roster() else {
            return;
        };
        let wanted = roster_peers(roster, &me, T::peer_of);
        let gone: Vec<T::Peer> = self
            .peers
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for peer in gone {
            tracing::info!(%peer, "left the roster; disconnecting and refusing it from now on");
            self.peers.remove(&peer);
            self.transport.disallow(peer);
        }
        for (peer, (key, role)) in wanted {
            match self.peers.get_mut(&peer) {
                Some(state) => state.role = role,
                None => {
                    tracing::info!(%peer, %role, "joined the roster; allowing it to connect");
                    self.peers.insert(peer, PeerState::new(key, role, now));
                    self.transport.allow(peer, key);
                }
            }
        }
    }

    /// Pushes envelopes to every connected peer except `except`.
    fn relay(&mut self, envelopes: &[EnvelopeBytes], except: Option<T::Peer>) {
        if envelopes.is_empty() {
            return;
        }
        let targets = self.connected_except(except);
        for chunk in chunks(envelopes, RESPONSE_TARGET_LEN) {
            for peer in &targets {
                let Some(state) = self.peers.get_mut(peer) else {
                    continue;
                };
                if state.in_flight >= MAX_IN_FLIGHT_PER_PEER {
                    // It will get these with its next pull.
                    state.pull_again = true;
                    continue;
                }
                state.in_flight += 1;
                let request = sync::Request::Push {
                    network: self.network,
                    records: Vec::new(),
                    envelopes: chunk.to_vec(),
                    proofs: Vec::new(),
                    versions: Vec::new(),
                };
                self.transport.send(*peer, Purpose::Push, request);
            }
        }
    }

    /// Asks `peer` for what we lack, unless a pull is already under way.
    fn start_pull(&mut self, peer: T::Peer, now: Instant) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if !state.connected {
            return;
        }
        if state.pulling {
            state.pull_again = true;
            return;
        }
        state.pulling = true;
        state.pull_again = false;
        state.in_flight += 1;
        state.last_pull = now;
        state.retry_pull = None;
        let request = sync::Request::Pull {
            network: self.network,
            have: self.replica.wire_tips(),
            records: self.replica.records_digest(),
            frozen: frozen_to_wire(self.replica.frozen()),
        };
        self.transport.send(peer, Purpose::Pull, request);
    }

    /// The answer to a pull: first the proofs of forks the puller lacks,
    /// then our versions where its tips name other hashes, then the
    /// envelopes it lacks, all within one message's size target (the
    /// envelopes wait for the next pull when the others fill it).
    fn changes_answer(
        &mut self,
        have: &[ChainTip],
        theirs: &Tips,
        their_frozen: &Frozen,
        records_differ: bool,
    ) -> Result<sync::Response, ReplicaError> {
        let proofs = self.replica.proofs_for(their_frozen, RESPONSE_TARGET_LEN)?;
        let used: usize = proofs.iter().map(|p| p.0.len()).sum();
        let versions = self
            .replica
            .versions_for(have, RESPONSE_TARGET_LEN.saturating_sub(used))?;
        let used = used + versions.iter().map(|v| v.0.len()).sum::<usize>();
        let (envelopes, more) = if used == 0 {
            self.replica
                .changes_for(theirs, their_frozen, RESPONSE_TARGET_LEN)?
        } else {
            // Proofs and versions change what the puller holds and counts:
            // it pulls again for the rest.
            (Vec::new(), true)
        };
        Ok(sync::Response::Changes {
            records: if records_differ {
                self.replica.records_wire()
            } else {
                Vec::new()
            },
            envelopes,
            more,
            have: self.replica.wire_tips(),
            frozen: frozen_to_wire(self.replica.frozen()),
            proofs,
            versions,
        })
    }

    /// Takes a peer's fork proofs and versions (before its records'
    /// envelopes, which the new fork points may concern); new proofs are
    /// relayed to every other peer. `Err` (a refusal reason) when the peer
    /// sent a proof or version that does not verify.
    fn take_forks(
        &mut self,
        peer: T::Peer,
        proofs: &[ProofBytes],
        versions: &[EnvelopeBytes],
        now: Instant,
    ) -> Result<(), String> {
        if proofs.is_empty() && versions.is_empty() {
            return Ok(());
        }
        let mut new = Vec::new();
        for result in [
            self.replica.adopt_proofs(proofs),
            self.replica.take_versions(versions),
        ] {
            match result {
                Ok(adopted) => new.extend(adopted),
                Err(
                    e @ (ReplicaError::Fork(_)
                    | ReplicaError::Ingest(_)
                    | ReplicaError::Envelope(_)),
                ) => {
                    tracing::warn!(%peer, error = %e, "peer sent an invalid fork proof or version; disconnecting");
                    return Err(e.to_string());
                }
                Err(e) => {
                    tracing::error!(%peer, error = %e, "cannot keep a fork proof");
                    return Ok(());
                }
            }
        }
        if !new.is_empty() {
            self.transport.changed();
            // What counts here changed: every peer gets the proofs (the
            // sender too, when the versions were its own), and we pull
            // again from the sender.
            let except = if versions.is_empty() {
                Some(peer)
            } else {
                None
            };
            self.push_forks_except(except, new);
            self.start_pull(peer, now);
        }
        Ok(())
    }

    /// After an answer or acknowledgement: where the peer's tips name
    /// another hash for a change we hold, send it our version; and send it
    /// the proofs it lacks.
    fn compare_forks(&mut self, peer: T::Peer, have: &[ChainTip]) {
        let their_frozen = self
            .peers
            .get(&peer)
            .and_then(|s| s.frozen.clone())
            .unwrap_or_default();
        let proofs = self.replica.proofs_for(&their_frozen, usize::MAX);
        let versions = self.replica.versions_for(have, usize::MAX);
        match (proofs, versions) {
            (Ok(proofs), Ok(versions)) => {
                if !versions.is_empty() {
                    tracing::warn!(%peer, versions = versions.len(), "peer holds other versions of changes we hold; sending ours to prove the fork");
                }
                self.push_forks(Some(peer), proofs, versions);
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(%peer, error = %e, "cannot read fork proofs or versions")
            }
        }
    }

    /// Every connected peer but `except`.
    fn connected_except(&self, except: Option<T::Peer>) -> Vec<T::Peer> {
        self.peers
            .iter()
            .filter(|(p, s)| s.connected && Some(**p) != except)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Pushes proofs to every connected peer but `except`.
    fn push_forks_except(&mut self, except: Option<T::Peer>, proofs: Vec<ProofBytes>) {
        let targets = self.connected_except(except);
        for target in targets {
            self.push_forks(Some(target), proofs.clone(), Vec::new());
        }
    }

    /// Pushes proofs and versions to `peer` (or, with `None`, to every
    /// connected peer), in messages within the size target.
    fn push_forks(
        &mut self,
        peer: Option<T::Peer>,
        proofs: Vec<ProofBytes>,
        versions: Vec<EnvelopeBytes>,
    ) {
        if proofs.is_empty() && versions.is_empty() {
            return;
        }
        let Some(peer) = peer else {
            self.push_forks_except(None, proofs);
            return;
        };
        if !self.peers.get(&peer).is_some_and(|s| s.connected) {
            return;
        }
        let mut items: Vec<(bool, Vec<u8>)> = proofs
            .into_iter()
            .map(|p| (true, p.0))
            .chain(versions.into_iter().map(|v| (false, v.0)))
            .collect();
        while !items.is_empty() {
            let mut take = 0;
            let mut bytes = 0;
            while take < items.len()
                && (take == 0 || bytes + items[take].1.len() <= RESPONSE_TARGET_LEN)
            {
                bytes += items[take].1.len();
                take += 1;
            }
            let rest = items.split_off(take);
            let (mut proofs, mut versions) = (Vec::new(), Vec::new());
            for (is_proof, bytes) in std::mem::replace(&mut items, rest) {
                if is_proof {
                    proofs.push(ProofBytes(bytes));
                } else {
                    versions.push(EnvelopeBytes(bytes));
                }
            }
            if let Some(state) = self.peers.get_mut(&peer) {
                state.in_flight += 1;
            }
            let request = sync::Request::Push {
                network: self.network,
                records: Vec::new(),
                envelopes: Vec::new(),
                proofs,
                versions,
            };
            self.transport.send(peer, Purpose::Push, request);
        }
    }
}

/// Every roster entry but this node's own, by the transport's peer name:
/// whom this node lets connect and syncs with.
pub fn roster_peers<P: Ord>(
    roster: &Roster,
    me: &PublicKey,
    peer_of: impl Fn(&PublicKey) -> Option<P>,
) -> BTreeMap<P, (PublicKey, Role)> {
    roster
        .entries()
        .filter(|e| e.key != *me)
        .filter_map(|e| Some((peer_of(&e.key)?, (e.key, e.role))))
        .collect()
}

fn refused(reason: &str) -> sync::Response {
    sync::Response::Refused {
        reason: reason.to_string(),
    }
}

/// Splits envelopes into chunks of at most `target` bytes (a single larger
/// envelope, up to the 4 MiB change limit, travels alone).
fn chunks(envelopes: &[EnvelopeBytes], target: usize) -> Vec<&[EnvelopeBytes]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, e) in envelopes.iter().enumerate() {
        if i > start && bytes + e.0.len() > target {
            out.push(&envelopes[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += e.0.len();
    }
    if start < envelopes.len() {
        out.push(&envelopes[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataDir;
    use crate::identity::Identity;
    use crate::roster::RosterEntry;

    /// Records what the engine sends; peers are named by their keys.
    #[derive(Debug, Default)]
    struct Recorder {
        sent: Vec<(PublicKey, Purpose)>,
    }

    impl Transport for Recorder {
        type Peer = PublicKey;
        fn peer_of(key: &PublicKey) -> Option<PublicKey> {
            Some(*key)
        }
        fn send(&mut self, peer: PublicKey, purpose: Purpose, _request: sync::Request) {
            self.sent.push((peer, purpose));
        }
        fn disconnect(&mut self, _peer: PublicKey) {}
        fn allow(&mut self, _peer: PublicKey, _key: PublicKey) {}
        fn disallow(&mut self, _peer: PublicKey) {}
        fn changed(&mut self) {}
    }

    /// An engine for a fresh member of a two-member network, and the other
    /// member's key.
    fn engine(now: Instant) -> (tempfile::TempDir, Engine<Recorder>, PublicKey) {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(dir.path());
        Replica::init(&data, "Me").expect("init");
        let mut replica = Replica::open(&data).expect("open");
        let other = Identity::generate().expect("key").public();
        let roster = vec![RosterEntry {
            key: other,
            name: "Other".into(),
            role: Role::Member,
        }];
        replica
            .create_network("Engine test", roster, None)
            .expect("create");
        let engine = Engine::new(replica, Recorder::default(), now).expect("engine");
        (dir, engine, other)
    }

    #[test]
    fn a_failed_pull_is_tried_again_soon_while_the_peer_stays_connected() {
        // Found by the simulation: a pull whose answer was lost waited for
        // the next periodic reconcile, so convergence after a heal could
        // take over a minute.
        let t0 = Instant::now();
        let (_dir, mut engine, other) = engine(t0);
        assert!(engine.connected(other, t0));
        assert_eq!(engine.transport().sent, vec![(other, Purpose::Pull)]);
        engine.handle_outcome(other, Purpose::Pull, Err("timed out".into()), t0);
        engine.tick(t0 + PULL_RETRY / 2);
        assert_eq!(engine.transport().sent.len(), 1, "retried too early");
        engine.tick(t0 + PULL_RETRY);
        assert_eq!(
            engine.transport().sent,
            vec![(other, Purpose::Pull), (other, Purpose::Pull)]
        );
        // Once the retry is under way, ticks do not pile more pulls on it.
        engine.tick(t0 + PULL_RETRY * 2);
        assert_eq!(engine.transport().sent.len(), 2);
        // A dropped peer is not pulled from.
        engine.handle_outcome(other, Purpose::Pull, Err("timed out".into()), t0);
        engine.disconnected(other);
        engine.tick(t0 + RECONCILE_EVERY * 2);
        assert_eq!(engine.transport().sent.len(), 2);
    }

    #[test]
    fn a_stranger_is_refused_and_gets_nothing() {
        let t0 = Instant::now();
        let (_dir, mut engine, _) = engine(t0);
        let stranger = Identity::generate().expect("key").public();
        assert!(!engine.connected(stranger, t0));
        let pull = sync::Request::Pull {
            network: engine.network(),
            have: Vec::new(),
            records: [0; 32],
            frozen: Vec::new(),
        };
        let answer = engine.handle_request(stranger, pull, t0);
        assert!(
            matches!(&answer, sync::Response::Refused { reason } if reason == "not on the roster"),
            "{answer:?}"
        );
        assert!(engine.transport().sent.is_empty());
    }

    #[test]
    fn chunks_stay_under_the_target_unless_one_envelope_is_larger() {
        let sizes = [3, 3, 3, 10, 1, 1, 5];
        let envelopes: Vec<EnvelopeBytes> =
            sizes.iter().map(|&n| EnvelopeBytes(vec![0; n])).collect();
        let chunks = chunks(&envelopes, 6);
        let lens: Vec<Vec<usize>> = chunks
            .iter()
            .map(|c| c.iter().map(|e| e.0.len()).collect())
            .collect();
        assert_eq!(
            lens,
            vec![vec![3, 3], vec![3], vec![10], vec![1, 1], vec![5]]
        );
        assert_eq!(
            chunks.iter().map(|c| c.len()).sum::<usize>(),
            envelopes.len()
        );
    }
}
