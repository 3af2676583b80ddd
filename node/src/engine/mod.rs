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

mod forks;

#[cfg(test)]
mod tests;
