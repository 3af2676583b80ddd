//! The running node: the replica, the network event loop and the local API,
//! tied together by one node loop.
//!
//! [`start`] opens the replica, starts the libp2p [`EventLoop`] and the API
//! server, and spawns the node loop, which alone owns the [`Replica`]. The
//! loop reconciles with every roster peer that connects (pulling what it
//! lacks, in chunks), answers peers' pulls and pushes, pushes every new
//! change to connected peers (which relay it onwards), executes API calls,
//! and redials dropped peers with back-off. A peer that sends anything
//! invalid is logged and disconnected; the loop carries on serving the rest.
//!
//! Roster records travel the same way (records before envelopes). Whenever
//! the roster in force changes, the loop follows it: new entries are allowed
//! to connect, keys that left are refused and disconnected, and after a key
//! rotation the network layer restarts under the new identity.
//!
//! [`EventLoop`]: crate::network::EventLoop

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Future, StreamExt};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::server::{ApiCall, ApiError, ApiFile};
use crate::api::{self, PeerView, Request, Response, StatusView};
use crate::bundle::EnvelopeBytes;
use crate::config::DataDir;
use crate::genesis::NetworkId;
use crate::identity::{NodeId, PublicKey};
use crate::ingest::IngestError;
use crate::model::{format_time, now_ms};
use crate::network::{self, Client, Event, NetworkConfig, NetworkError};
use crate::replica::{Replica, ReplicaError};
use crate::roster::{Role, Roster};
use crate::store::StoreError;
use crate::sync::{self, RESPONSE_TARGET_LEN, Tips, lacking, tips_from_wire, tips_to_wire};

/// Bound of the API call queue.
const API_QUEUE: usize = 64;
/// Requests in flight to one peer; past this, pushes wait for the next pull.
const MAX_IN_FLIGHT_PER_PEER: usize = 16;
/// First and longest wait before redialling a peer.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a connected peer is pulled from even when nothing was pushed.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// How often dropped peers are considered for a redial.
const REDIAL_TICK: Duration = Duration::from_millis(250);
/// How long `start` waits for a command that holds the store to finish.
const LOCK_WAIT: Duration = Duration::from_secs(5);
const LOCK_POLL: Duration = Duration::from_millis(50);
/// An API caller waiting for its answer, and the answer.
type Answer = (
    oneshot::Sender<Result<Response, ApiError>>,
    Result<Response, ApiError>,
);

/// Roster-based refusals of one peer's changes tolerated while it holds our
/// roster records, before it is disconnected as misbehaving.
const ROSTER_REFUSALS_MAX: u32 = 3;
/// Most queued API calls committed as one group (one flush).
const GROUP_COMMIT_MAX: usize = 256;
/// How long a key rotation waits for peers to take the succession record
/// before the network restarts under the new key.
const ROTATE_PUSH_WAIT: Duration = Duration::from_secs(5);
/// How long `start` waits for the listeners to come up.
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("another concord node is already running on {0} (its store stayed locked)")]
    AlreadyRunning(String),
    #[error("this node has not joined a network: run `concord network join FILE` first")]
    NoNetwork,
    #[error("{0} is not a peer address: it must end in /p2p/<node id>")]
    BadBootstrap(Multiaddr),
    #[error("cannot serve the local API on {addr}")]
    Api {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no listen address came up within {0:?}")]
    ListenTimeout(Duration),
    #[error("cannot serve the web view on {addr}")]
    Web {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: DataDir,
    /// libp2p listen addresses, e.g. `/ip4/0.0.0.0/tcp/7411`.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start, each ending in `/p2p/<node id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Where the local API listens (always a loopback address).
    pub api: SocketAddr,
    /// Where the read-only web view listens; `None` serves none.
    pub web: Option<SocketAddr>,
}

/// A cloneable handle for API calls into a running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    calls: mpsc::Sender<ApiCall>,
}

impl NodeHandle {
    /// Executes a request on the node, as the CLI does through HTTP.
    pub async fn call(&self, request: Request) -> Result<Response, ApiError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || ApiError {
            error: "the node has stopped".into(),
            causes: Vec::new(),
        };
        self.calls
            .send(ApiCall { request, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// A node that is running.
#[derive(Debug)]
pub struct RunningNode {
    handle: NodeHandle,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
    pub node_id: PeerId,
    pub listen: Vec<Multiaddr>,
    pub api: SocketAddr,
    /// Where the web view listens, if it runs.
    pub web: Option<SocketAddr>,
}

impl RunningNode {
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Every listen address with `/p2p/<node id>` appended, for bootstrapping.
    pub fn addresses(&self) -> Vec<Multiaddr> {
        self.listen
            .iter()
            .map(|a| {
                a.clone()
                    .with(libp2p::multiaddr::Protocol::P2p(self.node_id))
            })
            .collect()
    }

    /// Stops the node: closes connections, flushes the store, removes the
    /// API file. Returns the node loop's outcome.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(NodeError::Replica(ReplicaError::Store(
                StoreError::Corrupt(format!("the node task failed: {e}")),
            ))),
        }
    }
}

/// Opens the node in `config.data_dir` and starts it.
pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
    let dir = config.data_dir.clone();
    // A CLI command may hold the store for a moment; a running node holds it
    // for good. Wait out the first, report the second.
    let deadline = Instant::now() + LOCK_WAIT;
    let replica = loop {
        match tokio::task::block_in_place(|| Replica::open(&dir)) {
            Err(ReplicaError::Store(StoreError::Locked(_))) if Instant::now() < deadline => {
                tokio::time::sleep(LOCK_POLL).await;
            }
            Err(ReplicaError::Store(StoreError::Locked(_))) => {
                return Err(NodeError::AlreadyRunning(dir.root().display().to_string()));
            }
            other => break other?,
        }
    };
    let genesis = replica.genesis().ok_or(NodeError::NoNetwork)?.clone();
    let roster = replica.roster()?.clone();
    let me = replica.identity().public();
    let my_peer = replica.identity().libp2p_keypair().public().to_peer_id();
    let mut peers: HashMap<PeerId, PeerState> = roster_peers(&roster, &me)
        .into_iter()
        .map(|(peer, (key, role))| (peer, PeerState::new(key, role)))
        .collect();
    for (key, addrs) in replica
        .store()
        .peer_addresses()
        .map_err(ReplicaError::from)?
    {
        if let Some(state) = key.node_id().peer_id().and_then(|p| peers.get_mut(&p)) {
            state
                .addrs
                .extend(addrs.iter().filter_map(|a| a.parse().ok()));
        }
    }
    for addr in &config.bootstrap {
        let (peer, addr) =
            network::split_peer(addr).ok_or_else(|| NodeError::BadBootstrap(addr.clone()))?;
        match peers.get_mut(&peer) {
            Some(state) => {
                state.addrs.insert(addr);
            }
            None => tracing::warn!(%peer, "bootstrap peer is not on the roster; ignoring it"),
        }
    }

    let (client, mut events, event_loop) = network::new(
        replica.identity().libp2p_keypair(),
        &NetworkConfig {
            listen: config.listen.clone(),
            mdns: config.mdns,
            allowed: peers.keys().copied().collect(),
        },
    )?;
    let network_task = tokio::spawn(event_loop.run());

    // Wait until every listener has an address, keeping other early events.
    let mut listen = Vec::new();
    let mut early = Vec::new();
    let deadline = Instant::now() + LISTEN_DEADLINE;
    while listen.len() < config.listen.len() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Listening { addr })) => listen.push(addr),
            Ok(Some(other)) => early.push(other),
            Ok(None) | Err(_) => return Err(NodeError::ListenTimeout(LISTEN_DEADLINE)),
        }
    }

    // Bind the web view before the API file is published, so a port that
    // is taken fails the start cleanly.
    let web_listener = match config.web {
        Some(addr) => {
            let web = |source| NodeError::Web { addr, source };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(web)?;
            let bound = listener.local_addr().map_err(web)?;
            Some((listener, bound))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(|source| NodeError::Api {
            addr: config.api,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| NodeError::Api {
        addr: config.api,
        source,
    })?;
    let token = api::server::new_token().map_err(|source| NodeError::Api {
        addr: api_addr,
        source,
    })?;
    ApiFile {
        address: api_addr,
        token: token.clone(),
        pid: std::process::id(),
    }
    .write(dir.root())
    .map_err(|source| NodeError::Api {
        addr: api_addr,
        source,
    })?;
    let (calls_tx, calls_rx) = mpsc::channel(API_QUEUE);
    let (api_stop_tx, api_stop_rx) = oneshot::channel::<()>();
    let api_task = tokio::spawn(api::server::serve(
        listener,
        token,
        calls_tx.clone(),
        async move {
            let _ = api_stop_rx.await;
        },
    ));

    // The web view reads through the node loop like the CLI, and watches a
    // counter the loop bumps whenever there is something new to show.
    let (changed, version) = watch::channel(0u64);
    let (web_stop_tx, web_stop_rx) = oneshot::channel::<()>();
    let (web_addr, web_task) = match web_listener {
        Some((listener, bound)) => {
            let task = tokio::spawn(crate::web::serve(
                listener,
                NodeHandle {
                    calls: calls_tx.clone(),
                },
                version,
                async move {
                    let _ = web_stop_rx.await;
                },
            ));
            (Some(bound), Some(task))
        }
        None => (None, None),
    };

    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let node_loop = NodeLoop {
        replica,
        client,
        events,
        network_task: Some(network_task),
        mdns: config.mdns,
        network: genesis.network_id(),
        peers,
        listen: listen.clone(),
        api: api_addr,
        last_sync: None,
        inflight: FuturesUnordered::new(),
        changed,
        web: web_addr,
    };
    let data_dir = dir.clone();
    let task = tokio::spawn(async move {
        let result = node_loop.run(early, calls_rx, shutdown_rx).await;
        let _ = api_stop_tx.send(());
        let _ = api_task.await;
        let _ = web_stop_tx.send(());
        if let Some(task) = web_task {
            let _ = task.await;
        }
        ApiFile::remove(data_dir.root());
        result
    });
    tracing::info!(node = %my_peer, api = %api_addr, "node started");
    Ok(RunningNode {
        handle: NodeHandle { calls: calls_tx },
        shutdown: Some(shutdown_tx),
        task,
        node_id: my_peer,
        listen,
        api: api_addr,
        web: web_addr,
    })
}

/// What the node knows about one roster peer.
#[derive(Debug)]
struct PeerState {
    key: PublicKey,
    role: Role,
    addrs: BTreeSet<Multiaddr>,
    /// The addresses last written to the store.
    saved_addrs: BTreeSet<Multiaddr>,
    connected: bool,
    dialing: bool,
    next_dial: Instant,
    backoff: Duration,
    last_seen: Option<i64>,
    /// Their chain tips as of the last exchange.
    tips: Option<Tips>,
    pulling: bool,
    pull_again: bool,
    in_flight: usize,
    /// When this node last pulled from the peer.
    last_pull: Instant,
    /// The digest of the peer's roster records, from its last pull.
    records: Option<[u8; 32]>,
    /// The records digest we last pulled for because it differed from ours.
    pulled_for_records: Option<[u8; 32]>,
    /// The last ping round trip.
    rtt: Option<Duration>,
    /// Batches refused under the roster since the peer's last accepted one.
    roster_refusals: u32,
}

impl PeerState {
    fn new(key: PublicKey, role: Role) -> Self {
        Self {
            key,
            role,
            addrs: BTreeSet::new(),
            saved_addrs: BTreeSet::new(),
            connected: false,
            dialing: false,
            next_dial: Instant::now(),
            backoff: BACKOFF_START,
            last_seen: None,
            tips: None,
            pulling: false,
            pull_again: false,
            in_flight: 0,
            last_pull: Instant::now(),
            records: None,
            pulled_for_records: None,
            rtt: None,
            roster_refusals: 0,
        }
    }

    fn dropped(&mut self) {
        self.connected = false;
        self.dialing = false;
        self.next_dial = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// Why an outbound request was sent.
#[derive(Clone, Copy, Debug)]
enum Purpose {
    Pull,
    Push,
}

type Outcome = (PeerId, Purpose, Result<sync::Response, NetworkError>);

struct NodeLoop {
    replica: Replica,
    client: Client,
    /// Events from the network event loop (replaced when it restarts).
    events: mpsc::Receiver<Event>,
    network_task: Option<JoinHandle<()>>,
    mdns: bool,
    network: NetworkId,
    peers: HashMap<PeerId, PeerState>,
    listen: Vec<Multiaddr>,
    api: SocketAddr,
    last_sync: Option<i64>,
    inflight: FuturesUnordered<Pin<Box<dyn Future<Output = Outcome> + Send>>>,
    /// Bumped after every local write, ingest and peer (dis)connection, so
    /// the web view knows there is something new to show.
    changed: watch::Sender<u64>,
    /// Where the web view listens, for `status`.
    web: Option<SocketAddr>,
}

impl NodeLoop {
    /// Tells the web view there is something new to show.
    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    async fn run(
        mut self,
        early: Vec<Event>,
        mut calls: mpsc::Receiver<ApiCall>,
        mut shutdown: oneshot::Receiver<()>,
    ) -> Result<(), NodeError> {
        for event in early {
            self.handle_event(event).await;
        }
        let mut redial = tokio::time::interval(REDIAL_TICK);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = self.events.recv() => match event {
                    Some(event) => self.handle_event(event).await,
                    None => break,
                },
                Some(call) = calls.recv() => self.handle_calls(call, &mut calls).await,
                Some(outcome) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.handle_outcome(outcome).await;
                }
                _ = redial.tick() => self.redial().await,
            }
        }
        tracing::info!("shutting down");
        let _ = self.client.shutdown().await;
        if let Some(task) = self.network_task.take() {
            let _ = task.await;
        }
        if let Err(e) = self.replica.save_snapshot() {
            tracing::warn!(error = %e, "cannot save the document snapshot");
        }
        self.replica.flush()?;
        Ok(())
    }

    async fn handle_event(&mut self, event: Event) {
        match event {
            Event::Listening { addr } => {
                if !self.listen.contains(&addr) {
                    self.listen.push(addr);
                }
            }
            Event::Connected { peer, dialed } => {
                if !self.peers.contains_key(&peer) {
                    // The allow-list refuses strangers; this is a safety net.
                    let _ = self.client.disconnect(peer).await;
                    return;
                }
                if let Some(addr) = dialed {
                    let mut addr = addr;
                    if matches!(
                        addr.iter().last(),
                        Some(libp2p::multiaddr::Protocol::P2p(_))
                    ) {
                        addr.pop();
                    }
                    self.learn_addresses(peer, vec![addr]).await;
                }
                let Some(state) = self.peers.get_mut(&peer) else {
                    return;
                };
                tracing::info!(%peer, "peer connected");
                self.changed.send_modify(|v| *v += 1);
                state.connected = true;
                state.dialing = false;
                state.backoff = BACKOFF_START;
                state.last_seen = Some(now_ms());
                self.start_pull(peer);
            }
            Event::Disconnected { peer } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    tracing::info!(%peer, "peer disconnected");
                    self.changed.send_modify(|v| *v += 1);
                    state.dropped();
                    state.pulling = false;
                    state.tips = None;
                }
            }
            Event::DialFailed { peer, error } => {
                if let Some(state) = peer.and_then(|p| self.peers.get_mut(&p)) {
                    tracing::debug!(peer = ?peer, %error, "dial failed");
                    if !state.connected {
                        state.dropped();
                    }
                }
            }
            Event::Addresses { peer, addrs } => self.learn_addresses(peer, addrs).await,
            Event::Request {
                peer,
                request,
                channel,
            } => {
                let response = self.handle_request(peer, request);
                let refused = matches!(response, sync::Response::Refused { .. });
                let _ = self.client.respond(peer, channel, response, refused).await;
                self.follow_roster();
            }
            Event::Rtt { peer, rtt } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.rtt = Some(rtt);
                }
            }
            Event::BadMessage { peer, error } => {
                tracing::warn!(%peer, %error, "peer sent an undecodable or oversized message; disconnecting");
                let _ = self.client.disconnect(peer).await;
            }
        }
    }

    async fn learn_addresses(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        state.addrs.extend(addrs);
        if state.addrs != state.saved_addrs {
            let text: Vec<String> = state.addrs.iter().map(ToString::to_string).collect();
            match self.replica.store().set_peer_addresses(&state.key, &text) {
                Ok(()) => state.saved_addrs = state.addrs.clone(),
                Err(e) => tracing::warn!(%peer, error = %e, "cannot remember the peer's addresses"),
            }
        }
        if !state.connected && !state.dialing {
            state.next_dial = Instant::now();
        }
    }

    /// Answers a peer's request. A `Refused` answer closes the connection.
    fn handle_request(&mut self, peer: PeerId, request: sync::Request) -> sync::Response {
        let Some(state) = self.peers.get_mut(&peer) else {
            return refused("not on the roster");
        };
        state.last_seen = Some(now_ms());
        match request {
            sync::Request::Pull {
                network,
                have,
                records,
            } => {
                if network != self.network {
                    tracing::warn!(%peer, "pull for another network; disconnecting");
                    return refused("wrong network");
                }
                let theirs = tips_from_wire(&have);
                let ours = self.replica.records_digest();
                let records_differ = records != ours;
                // They may hold records we lack: pull once per digest of theirs.
                let they_have_more = lacking(&theirs, self.replica.tips()) > 0
                    || (records_differ && state.pulled_for_records != Some(records));
                if records_differ {
                    state.pulled_for_records = Some(records);
                }
                state.records = Some(records);
                state.tips = Some(theirs.clone());
                let answer = tokio::task::block_in_place(|| {
                    self.replica.changes_for(&theirs, RESPONSE_TARGET_LEN)
                });
                if they_have_more {
                    self.start_pull(peer);
                }
                match answer {
                    Ok((envelopes, more)) => sync::Response::Changes {
                        records: if records_differ {
                            self.replica.records_wire()
                        } else {
                            Vec::new()
                        },
                        envelopes,
                        more,
                        have: tips_to_wire(self.replica.tips()),
                    },
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
            } => {
                if network != self.network {
                    tracing::warn!(%peer, "push for another network; disconnecting");
                    return refused("wrong network");
                }
                if let Err(reason) = self.take_records(peer, &records) {
                    return refused(&reason);
                }
                match self.ingest(peer, &envelopes) {
                    Ingested::Accepted(accepted) => sync::Response::Ack {
                        accepted: u32::try_from(accepted).unwrap_or(u32::MAX),
                        have: tips_to_wire(self.replica.tips()),
                    },
                    Ingested::Incomplete => {
                        self.start_pull(peer);
                        sync::Response::Ack {
                            accepted: 0,
                            have: tips_to_wire(self.replica.tips()),
                        }
                    }
                    Ingested::Refused(reason) => refused(&reason),
                    Ingested::Kept(reason) => sync::Response::Ack {
                        accepted: 0,
                        have: {
                            tracing::warn!(%peer, %reason, "push not applied");
                            tips_to_wire(self.replica.tips())
                        },
                    },
                }
            }
        }
    }

    /// Verifies and applies envelopes from `peer`, relays what was new, and
    /// sorts failures into misbehaviour and mere gaps.
    fn ingest(&mut self, peer: PeerId, envelopes: &[EnvelopeBytes]) -> Ingested {
        if envelopes.is_empty() {
            return Ingested::Accepted(0);
        }
        // Staged, relayed, then flushed: relaying does not wait for our
        // disk (every peer verifies on its own), but the answer to the
        // sender, which says we hold the changes, does.
        self.replica.begin_group();
        let ingested = tokio::task::block_in_place(|| self.replica.ingest_wire(envelopes));
        if let Ok((summary, accepted)) = &ingested
            && summary.new > 0
        {
            self.relay(accepted, Some(peer));
        }
        if let Err(e) = tokio::task::block_in_place(|| self.replica.end_group()) {
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
                    self.notify();
                }
                Ingested::Accepted(summary.new)
            }
            Err(ReplicaError::Ingest(
                IngestError::MissingDependency { .. } | IngestError::MissingPredecessor { .. },
            )) => Ingested::Incomplete,
            Err(ReplicaError::Ingest(e @ IngestError::Fork(_))) => {
                tracing::warn!(%peer, error = %e, "fork refused and kept as evidence");
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
                let Some(state) = self.peers.get_mut(&peer) else {
                    return Ingested::Refused(e.to_string());
                };
                // Its records push and a relayed change travel on separate
                // streams and may cross, so one such refusal is no proof.
                state.roster_refusals += 1;
                if state.records == Some(ours) && state.roster_refusals > ROSTER_REFUSALS_MAX {
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

    /// Verifies and stores roster records from `peer`, relays the new ones
    /// and follows the roster. `Err` (a refusal reason) when the peer sent a
    /// record that is forged, malformed or of another network. Records signed
    /// by a key not known yet are left out without blame (see
    /// `governance::admit`); they come again with later exchanges.
    fn take_records(&mut self, peer: PeerId, records: &[EnvelopeBytes]) -> Result<(), String> {
        if records.is_empty() {
            return Ok(());
        }
        match tokio::task::block_in_place(|| self.replica.add_records(records)) {
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

    /// Pushes roster records to every connected peer except `except` (or,
    /// with `only`, to `except` alone).
    fn push_records(&mut self, records: Vec<EnvelopeBytes>, peer: Option<PeerId>, only: bool) {
        if records.is_empty() {
            return;
        }
        let targets: Vec<PeerId> = if only {
            peer.into_iter().collect()
        } else {
            self.peers
                .iter()
                .filter(|(p, s)| s.connected && Some(**p) != peer)
                .map(|(p, _)| *p)
                .collect()
        };
        for target in targets {
            if let Some(state) = self.peers.get_mut(&target) {
                state.in_flight += 1;
            }
            let request = sync::Request::Push {
                network: self.network,
                records: records.clone(),
                envelopes: Vec::new(),
            };
            self.send(target, Purpose::Push, request);
        }
    }

    /// Makes the peer table and the network allow-list match the roster in
    /// force: entries that joined may connect, keys that left are refused
    /// and disconnected at once.
    fn follow_roster(&mut self) {
        let me = self.replica.identity().public();
        let Ok(roster) = self.replica.roster() else {
            return;
        };
        let wanted = roster_peers(roster, &me);
        let gone: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for peer in gone {
            tracing::info!(%peer, "left the roster; disconnecting and refusing it from now on");
            self.peers.remove(&peer);
            let _ = self.client.disallow(peer);
        }
        for (peer, (key, role)) in wanted {
            match self.peers.get_mut(&peer) {
                Some(state) => state.role = role,
                None => {
                    tracing::info!(%peer, %role, "joined the roster; allowing it to connect");
                    self.peers.insert(peer, PeerState::new(key, role));
                    let _ = self.client.allow(peer);
                }
            }
        }
    }

    /// Restarts the network layer under the replica's (new) identity, on
    /// the addresses it listened on, after pushing our roster records to
    /// every connected peer so they know the new key before it dials.
    async fn restart_network(&mut self) {
        // The old event loop must never block on a full event channel while
        // we wait for it: drain (and drop) its events from here on. Peers'
        // requests meanwhile go unanswered and are retried after the restart.
        let (_, placeholder) = mpsc::channel(1);
        let mut old_events = std::mem::replace(&mut self.events, placeholder);
        let drain = tokio::spawn(async move { while old_events.recv().await.is_some() {} });
        let records = self.replica.records_wire();
        let connected: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, s)| s.connected)
            .map(|(p, _)| *p)
            .collect();
        let pushes = connected.iter().map(|peer| {
            let client = self.client.clone();
            let request = sync::Request::Push {
                network: self.network,
                records: records.clone(),
                envelopes: Vec::new(),
            };
            let peer = *peer;
            async move { client.request(peer, request).await }
        });
        let answered = tokio::time::timeout(ROTATE_PUSH_WAIT, futures::future::join_all(pushes))
            .await
            .map_or(0, |all| all.iter().filter(|r| r.is_ok()).count());
        if answered == 0 {
            tracing::warn!(
                "no peer acknowledged the key succession; until one learns it (a bundle from \
                 `concord export` imported at a member carries it), peers refuse the new key"
            );
        }
        let _ = self.client.shutdown().await;
        if let Some(task) = self.network_task.take() {
            let _ = task.await;
        }
        drain.abort();
        let listen: Vec<Multiaddr> = std::mem::take(&mut self.listen);
        let built = network::new(
            self.replica.identity().libp2p_keypair(),
            &NetworkConfig {
                listen,
                mdns: self.mdns,
                allowed: self.peers.keys().copied().collect(),
            },
        );
        match built {
            Ok((client, events, event_loop)) => {
                self.client = client;
                self.events = events;
                self.network_task = Some(tokio::spawn(event_loop.run()));
                for state in self.peers.values_mut() {
                    state.connected = false;
                    state.dialing = false;
                    state.pulling = false;
                    state.in_flight = 0;
                    state.next_dial = Instant::now();
                    state.backoff = BACKOFF_START;
                }
                tracing::info!(node = %self.replica.identity().node_id(), "network restarted under the new key");
            }
            Err(e) => tracing::error!(error = %e, "cannot restart the network under the new key"),
        }
    }

    /// Pushes envelopes to every connected peer except `except`.
    fn relay(&mut self, envelopes: &[EnvelopeBytes], except: Option<PeerId>) {
        if envelopes.is_empty() {
            return;
        }
        let targets: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(p, s)| s.connected && Some(**p) != except)
            .map(|(p, _)| *p)
            .collect();
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
                };
                self.send(*peer, Purpose::Push, request);
            }
        }
    }

    /// Sends a request at once (the event loop takes it even while this
    /// loop goes on with other work, such as a flush) and polls the answer
    /// with the other requests in flight.
    fn send(&mut self, peer: PeerId, purpose: Purpose, request: sync::Request) {
        let answer = self.client.start_request(peer, request);
        self.inflight.push(Box::pin(async move {
            let result = answer.await;
            (peer, purpose, result)
        }));
    }

    /// Asks `peer` for what we lack, unless a pull is already under way.
    fn start_pull(&mut self, peer: PeerId) {
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
        state.last_pull = Instant::now();
        let request = sync::Request::Pull {
            network: self.network,
            have: tips_to_wire(self.replica.tips()),
            records: self.replica.records_digest(),
        };
        self.send(peer, Purpose::Pull, request);
    }

    async fn handle_outcome(&mut self, (peer, purpose, result): Outcome) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.in_flight = state.in_flight.saturating_sub(1);
            if matches!(purpose, Purpose::Pull) {
                state.pulling = false;
            }
        }
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(%peer, error = %e, ?purpose, "request failed");
                if matches!(purpose, Purpose::Push) {
                    // The peer may lack what we pushed: reconcile instead.
                    self.start_pull(peer);
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
            } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.tips = Some(tips_from_wire(&have));
                    state.last_seen = Some(now_ms());
                }
                if self.take_records(peer, &records).is_err() {
                    let _ = self.client.disconnect(peer).await;
                    return;
                }
                self.follow_roster();
                if !self.peers.contains_key(&peer) {
                    return;
                }
                let outcome = self.ingest(peer, &envelopes);
                match outcome {
                    Ingested::Refused(_) => {
                        let _ = self.client.disconnect(peer).await;
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
                    self.start_pull(peer);
                } else {
                    self.last_sync = Some(now_ms());
                    tracing::debug!(%peer, "in sync");
                }
            }
            sync::Response::Ack { have, .. } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.tips = Some(tips_from_wire(&have));
                    state.last_seen = Some(now_ms());
                    if state.pull_again && !state.pulling {
                        self.start_pull(peer);
                    }
                }
            }
            sync::Response::Refused { reason } => {
                tracing::warn!(%peer, %reason, "peer refused our request");
            }
        }
    }

    async fn redial(&mut self) {
        let now = Instant::now();
        // Reconcile with connected peers now and then, so a lost push is
        // made good even on a quiet network (a few hundred bytes each).
        let stale: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, s)| s.connected && !s.pulling && now - s.last_pull >= RECONCILE_EVERY)
            .map(|(p, _)| *p)
            .collect();
        for peer in stale {
            self.start_pull(peer);
        }
        let due: Vec<(PeerId, Vec<Multiaddr>)> = self
            .peers
            .iter_mut()
            .filter(|(_, s)| {
                !s.connected && !s.dialing && !s.addrs.is_empty() && s.next_dial <= now
            })
            .map(|(p, s)| {
                s.dialing = true;
                (*p, s.addrs.iter().cloned().collect())
            })
            .collect();
        for (peer, addrs) in due {
            tracing::debug!(%peer, "dialling");
            if self.client.dial(peer, addrs).await.is_err() {
                return;
            }
        }
    }

    /// Executes `first` and the calls already queued behind it, in order,
    /// committing the plain local writes among them as a group: each is
    /// stored atomically, one flush then makes them all durable, and only
    /// then are they pushed to peers and their callers answered. Any other
    /// call first settles the group, then runs on its own.
    async fn handle_calls(&mut self, first: ApiCall, calls: &mut mpsc::Receiver<ApiCall>) {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match calls.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        let mut group: Vec<Answer> = Vec::new();
        let mut before = self.replica.tips().clone();
        for call in batch {
            let plain_write = api::is_plain_write(&call.request);
            if !plain_write {
                self.settle_group(&mut group, &before).await;
                self.handle_call(call).await;
                before = self.replica.tips().clone();
                continue;
            }
            if group.is_empty() {
                self.replica.begin_group();
            }
            let ApiCall { request, reply } = call;
            let result = tokio::task::block_in_place(|| api::execute(&mut self.replica, request))
                .map_err(|e| ApiError::from_error(&e));
            group.push((reply, result));
        }
        self.settle_group(&mut group, &before).await;
    }

    /// Flushes a group of local writes, pushes what they added since
    /// `before`, and answers their callers (with an error for all if the
    /// flush failed: none of them is reported written before it is durable).
    async fn settle_group(&mut self, group: &mut Vec<Answer>, before: &Tips) {
        if group.is_empty() {
            return;
        }
        let flushed = tokio::task::block_in_place(|| self.replica.end_group());
        match flushed {
            Ok(()) => {
                tracing::debug!(writes = group.len(), "group committed with one flush");
                match self.replica.changes_for(before, usize::MAX) {
                    Ok((new, _)) => self.relay(&new, None),
                    Err(e) => tracing::error!(error = %e, "cannot read the new changes"),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot flush the store; the group's writes are not acknowledged");
                let failed = ApiError::from_error(&e);
                for (_, result) in group.iter_mut() {
                    if result.is_ok() {
                        *result = Err(failed.clone());
                    }
                }
            }
        }
        for (reply, result) in group.drain(..) {
            let _ = reply.send(result);
        }
    }

    async fn handle_call(&mut self, call: ApiCall) {
        let ApiCall { request, reply } = call;
        let result = match request {
            Request::Status => Ok(Response::Status(Box::new(self.status()))),
            Request::Peers => Ok(Response::Peers(self.peer_views())),
            Request::RotateKey if !self.peers.values().any(|s| s.connected) => Err(ApiError {
                error: "no peer is connected, so no node would learn the new key and this node \
                        could not reconnect under it; wait until a peer is connected (see \
                        `concord peers`), or stop the node, rotate, and carry the succession \
                        to a member with `concord export` / `concord import`"
                    .into(),
                causes: Vec::new(),
            }),
            request => {
                let write = api::is_write(&request);
                let roster_change = api::is_roster_change(&request);
                let rotate = matches!(request, Request::RotateKey);
                let before = self.replica.tips().clone();
                let records_before = self.replica.records_digest();
                let result =
                    tokio::task::block_in_place(|| api::execute(&mut self.replica, request));
                if roster_change && self.replica.records_digest() != records_before {
                    let records = self.replica.records_wire();
                    if rotate && result.is_ok() {
                        self.restart_network().await;
                    } else {
                        self.push_records(records, None, false);
                    }
                    self.follow_roster();
                }
                if write && result.is_ok() {
                    self.notify();
                    match self.replica.changes_for(&before, usize::MAX) {
                        Ok((new, _)) => self.relay(&new, None),
                        Err(e) => tracing::error!(error = %e, "cannot read the new changes"),
                    }
                }
                result.map_err(|e| ApiError::from_error(&e))
            }
        };
        let _ = reply.send(result);
    }

    fn status(&self) -> StatusView {
        let mut status = api::stopped_status(&self.replica);
        status.running = true;
        status.listen = self.listen.iter().map(ToString::to_string).collect();
        status.api = Some(self.api.to_string());
        status.connected = self
            .peers
            .values()
            .filter(|s| s.connected)
            .map(|s| self.name_of(&s.key))
            .collect();
        status.connected.sort();
        status.last_sync = self.last_sync.map(format_time);
        (status.bytes_sent, status.bytes_received) = self.client.traffic();
        status.web = self.web.map(|addr| format!("http://{addr}/"));
        status
    }

    fn name_of(&self, key: &PublicKey) -> String {
        self.replica
            .roster()
            .map(|r| r.display_name(key))
            .unwrap_or_default()
    }

    fn peer_views(&self) -> Vec<PeerView> {
        let ours = self.replica.tips();
        let mut views = api::stopped_peers(&self.replica);
        for view in &mut views {
            let Some(state) = view
                .node_id
                .parse::<NodeId>()
                .ok()
                .and_then(|n| n.peer_id())
                .and_then(|p| self.peers.get(&p))
            else {
                continue;
            };
            view.connected = state.connected;
            view.addresses = state.addrs.iter().map(ToString::to_string).collect();
            view.last_seen = state.last_seen.map(format_time);
            view.role = state.role.to_string();
            view.rtt_ms = state.rtt.map(|d| d.as_secs_f64() * 1000.0);
            if let Some(theirs) = &state.tips {
                view.they_lack = Some(lacking(ours, theirs));
                view.we_lack = Some(lacking(theirs, ours));
            }
        }
        views
    }
}

/// Every roster entry but this node's own, by peer id: whom this node lets
/// connect and syncs with.
fn roster_peers(roster: &Roster, me: &PublicKey) -> HashMap<PeerId, (PublicKey, Role)> {
    roster
        .entries()
        .filter(|e| e.key != *me)
        .filter_map(|e| Some((e.key.node_id().peer_id()?, (e.key, e.role))))
        .collect()
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
