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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Future, StreamExt};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, block_in_place};
use tokio::time::Instant;

use crate::api::server::{ApiCall, ApiError, ApiFile};
use crate::api::{self, PeerView, Request, Response, StatusView};
use crate::config::DataDir;
use crate::contain::{self, Panicked};
use crate::engine::{Engine, Purpose, Transport, roster_peers};
use crate::faults::Faults;
use crate::identity::{NodeId, PublicKey};
use crate::model::format_time;
use crate::network::{self, Client, Event, NetworkConfig, NetworkError};
use crate::replica::{Replica, ReplicaError};
use crate::store::StoreError;
use crate::sync::{self, Tips, lacking};

/// Bound of the API call queue.
const API_QUEUE: usize = 64;
/// First and longest wait before redialling a peer.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
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
    /// Host names the web view answers to besides 127.0.0.1, localhost,
    /// [::1] and its listen address (`[web] hosts`).
    pub web_hosts: Vec<String>,
    /// Faults to inject into this node's own sync requests (tests only;
    /// see [`crate::faults`]).
    pub faults: Option<Faults>,
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
    if replica.genesis().is_none() {
        return Err(NodeError::NoNetwork);
    }
    let me = replica.identity().public();
    let my_peer = replica.identity().libp2p_keypair().public().to_peer_id();
    let mut dials: BTreeMap<PeerId, DialState> =
        roster_peers(replica.roster()?, &me, Libp2p::peer_of)
            .into_iter()
            .map(|(peer, (key, _))| (peer, DialState::new(key)))
            .collect();
    for (key, addrs) in replica
        .store()
        .peer_addresses()
        .map_err(ReplicaError::from)?
    {
        if let Some(dial) = Libp2p::peer_of(&key).and_then(|p| dials.get_mut(&p)) {
            dial.addrs
                .extend(addrs.iter().filter_map(|a| a.parse().ok()));
        }
    }
    for addr in &config.bootstrap {
        let (peer, addr) =
            network::split_peer(addr).ok_or_else(|| NodeError::BadBootstrap(addr.clone()))?;
        match dials.get_mut(&peer) {
            Some(dial) => {
                dial.addrs.insert(addr);
            }
            None => tracing::warn!(%peer, "bootstrap peer is not on the roster; ignoring it"),
        }
    }

    let (client, mut events, event_loop) = network::new(
        replica.identity().libp2p_keypair(),
        &NetworkConfig {
            listen: config.listen.clone(),
            mdns: config.mdns,
            allowed: dials.keys().copied().collect(),
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
                config.web_hosts.clone(),
                async move {
                    let _ = web_stop_rx.await;
                },
            ));
            (Some(bound), Some(task))
        }
        None => (None, None),
    };

    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let transport = Libp2p {
        client,
        inflight: FuturesUnordered::new(),
        dials,
        changed,
        faults: config.faults.clone(),
    };
    let node_loop = NodeLoop {
        engine: Engine::new(replica, transport, Instant::now().into_std())?,
        events,
        network_task: Some(network_task),
        mdns: config.mdns,
        listen: listen.clone(),
        api: api_addr,
        web: web_addr,
        panic_after: config.faults.as_ref().and_then(|f| f.panic.clone()),
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
    if let Some(faults) = &config.faults {
        tracing::warn!(%faults, "injecting faults into this node's sync requests");
    }
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

/// How the node dials one roster peer, and what the network says of it.
#[derive(Debug)]
struct DialState {
    key: PublicKey,
    addrs: BTreeSet<Multiaddr>,
    /// The addresses last written to the store.
    saved_addrs: BTreeSet<Multiaddr>,
    dialing: bool,
    next_dial: Instant,
    backoff: Duration,
    /// The last ping round trip.
    rtt: Option<Duration>,
}

impl DialState {
    fn new(key: PublicKey) -> Self {
        Self {
            key,
            addrs: BTreeSet::new(),
            saved_addrs: BTreeSet::new(),
            dialing: false,
            next_dial: Instant::now(),
            backoff: BACKOFF_START,
            rtt: None,
        }
    }

    fn dropped(&mut self) {
        self.dialing = false;
        self.next_dial = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

type Outcome = (PeerId, Purpose, Result<sync::Response, NetworkError>);

/// The engine's transport in a running node: the libp2p event loop, through
/// its [`Client`], plus the dialling state of every roster peer.
struct Libp2p {
    client: Client,
    inflight: FuturesUnordered<Pin<Box<dyn Future<Output = Outcome> + Send>>>,
    dials: BTreeMap<PeerId, DialState>,
    /// Bumped whenever there is something new to show, for the web view.
    changed: watch::Sender<u64>,
    faults: Option<Faults>,
}

impl std::fmt::Debug for Libp2p {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libp2p")
            .field("inflight", &self.inflight.len())
            .field("dials", &self.dials)
            .finish_non_exhaustive()
    }
}

impl Transport for Libp2p {
    type Peer = PeerId;

    fn peer_of(key: &PublicKey) -> Option<PeerId> {
        key.node_id().peer_id()
    }

    /// Hands the request to the event loop at once (it goes out even while
    /// the node loop goes on with other work, such as a flush) and polls the
    /// answer with the other requests in flight.
    fn send(&mut self, peer: PeerId, purpose: Purpose, request: sync::Request) {
        if let Some(faults) = &self.faults {
            // Injected faults: the request waits, then goes out or is lost.
            let client = self.client.clone();
            let fate = faults.draw();
            self.inflight.push(Box::pin(async move {
                let lost = |reason: String| Err(NetworkError::Request { peer, reason });
                let result = match fate {
                    Err(e) => lost(e.to_string()),
                    Ok(fate) => {
                        tokio::time::sleep(fate.wait).await;
                        if fate.lost {
                            lost("lost by injected fault".into())
                        } else {
                            client.start_request(peer, request).await
                        }
                    }
                };
                (peer, purpose, result)
            }));
            return;
        }
        let answer = self.client.start_request(peer, request);
        self.inflight.push(Box::pin(async move {
            let result = answer.await;
            (peer, purpose, result)
        }));
    }

    fn disconnect(&mut self, peer: PeerId) {
        // The engine disconnects a peer only for misbehaviour.
        let _ = self.client.ban(peer);
    }

    fn allow(&mut self, peer: PeerId, key: PublicKey) {
        self.dials.insert(peer, DialState::new(key));
        let _ = self.client.allow(peer);
    }

    fn disallow(&mut self, peer: PeerId) {
        self.dials.remove(&peer);
        let _ = self.client.disallow(peer);
    }

    fn changed(&mut self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

/// Runs one API request on the replica, off the async workers' hot path;
/// with `inject` (tests, `CONCORD_FAULTS=panic=OP`), panics once it is done.
fn execute(replica: &mut Replica, request: Request, inject: bool) -> Result<Response, ApiError> {
    let result = block_in_place(|| api::execute(replica, request));
    assert!(!inject, "injected panic after the request (CONCORD_FAULTS)");
    result.map_err(|e| ApiError::from_error(&e))
}

/// Whether the request labelled `what` is of the kind `panic_after` names.
fn injected_panic(panic_after: Option<&str>, what: &str) -> bool {
    panic_after.is_some_and(|op| {
        what.strip_prefix(op)
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric()))
    })
}

struct NodeLoop {
    engine: Engine<Libp2p>,
    /// Events from the network event loop (replaced when it restarts).
    events: mpsc::Receiver<Event>,
    network_task: Option<JoinHandle<()>>,
    mdns: bool,
    listen: Vec<Multiaddr>,
    api: SocketAddr,
    /// Where the web view listens, for `status`.
    web: Option<SocketAddr>,
    /// Injected: panic after executing every request of this kind (tests).
    panic_after: Option<String>,
}

impl NodeLoop {
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
            let inflight = &mut self.engine.transport_mut().inflight;
            let busy = !inflight.is_empty();
            tokio::select! {
                _ = &mut shutdown => break,
                Some(outcome) = inflight.next(), if busy => {
                    if let Err(panic) = contain::run(|| self.handle_outcome(outcome)) {
                        self.recover("handling a peer's answer", &panic, true);
                    }
                }
                event = self.events.recv() => match event {
                    Some(event) => {
                        let what = contain::label(&event);
                        if let Err(panic) = contain::run_async(self.handle_event(event)).await {
                            self.recover(&what, &panic, true);
                        }
                    }
                    None => break,
                },
                Some(call) = calls.recv() => self.handle_calls(call, &mut calls).await,
                _ = redial.tick() => {
                    if let Err(panic) = contain::run(|| self.redial()) {
                        self.recover("redialling", &panic, false);
                    }
                }
            }
        }
        tracing::info!("shutting down");
        let client = self.engine.transport().client.clone();
        let _ = client.shutdown().await;
        if let Some(task) = self.network_task.take() {
            let _ = task.await;
        }
        let replica = self.engine.into_replica();
        if let Err(e) = replica.save_snapshot() {
            tracing::warn!(error = %e, "cannot save the document snapshot");
        }
        replica.flush()?;
        Ok(())
    }

    async fn handle_event(&mut self, event: Event) {
        let now = Instant::now().into_std();
        match event {
            Event::Listening { addr } => {
                if !self.listen.contains(&addr) {
                    self.listen.push(addr);
                }
            }
            Event::Connected { peer, dialed } => {
                if self.engine.peer(&peer).is_none() {
                    // The allow-list refuses strangers; this is a safety net.
                    self.engine.transport_mut().disconnect(peer);
                    return;
                }
                if let Some(mut addr) = dialed {
                    if matches!(
                        addr.iter().last(),
                        Some(libp2p::multiaddr::Protocol::P2p(_))
                    ) {
                        addr.pop();
                    }
                    self.learn_addresses(peer, vec![addr]);
                }
                if let Some(dial) = self.engine.transport_mut().dials.get_mut(&peer) {
                    dial.dialing = false;
                    dial.backoff = BACKOFF_START;
                }
                block_in_place(|| self.engine.connected(peer, now));
            }
            Event::Disconnected { peer } => {
                if let Some(dial) = self.engine.transport_mut().dials.get_mut(&peer) {
                    dial.dropped();
                }
                self.engine.disconnected(peer);
            }
            Event::DialFailed { peer, error } => {
                let connected = |p: &PeerId| self.engine.peer(p).is_some_and(|s| s.connected);
                if let Some(peer) = peer
                    && !connected(&peer)
                    && let Some(dial) = self.engine.transport_mut().dials.get_mut(&peer)
                {
                    tracing::debug!(%peer, %error, "dial failed");
                    dial.dropped();
                }
            }
            Event::Addresses { peer, addrs } => self.learn_addresses(peer, addrs),
            Event::Request {
                peer,
                request,
                channel,
            } => {
                let response = block_in_place(|| self.engine.handle_request(peer, request, now));
                let refused = matches!(response, sync::Response::Refused { .. });
                let client = &self.engine.transport().client;
                let _ = client.respond(peer, channel, response, refused);
            }
            Event::Rtt { peer, rtt } => {
                if let Some(dial) = self.engine.transport_mut().dials.get_mut(&peer) {
                    dial.rtt = Some(rtt);
                }
            }
            Event::BadMessage { peer, error } => {
                tracing::warn!(%peer, %error, "peer sent an undecodable or oversized message; disconnecting");
                self.engine.transport_mut().disconnect(peer);
            }
        }
    }

    fn learn_addresses(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let connected = self.engine.peer(&peer).is_some_and(|s| s.connected);
        let (replica, transport) = self.engine.parts_mut();
        let Some(dial) = transport.dials.get_mut(&peer) else {
            return;
        };
        dial.addrs.extend(addrs);
        if dial.addrs != dial.saved_addrs {
            let text: Vec<String> = dial.addrs.iter().map(ToString::to_string).collect();
            match replica.store().set_peer_addresses(&dial.key, &text) {
                Ok(()) => dial.saved_addrs = dial.addrs.clone(),
                Err(e) => tracing::warn!(%peer, error = %e, "cannot remember the peer's addresses"),
            }
        }
        if !connected && !dial.dialing {
            dial.next_dial = Instant::now();
        }
    }

    fn handle_outcome(&mut self, (peer, purpose, result): Outcome) {
        let now = Instant::now().into_std();
        let result = result.map_err(|e| e.to_string());
        block_in_place(|| self.engine.handle_outcome(peer, purpose, result, now));
    }

    /// Reconciles with quiet peers now and then, and dials the dropped ones
    /// whose back-off is over.
    fn redial(&mut self) {
        let now = Instant::now();
        self.engine.tick(now.into_std());
        let connected: BTreeSet<PeerId> = self
            .engine
            .peers()
            .filter(|(_, s)| s.connected)
            .map(|(p, _)| *p)
            .collect();
        let transport = self.engine.transport_mut();
        for (peer, dial) in transport.dials.iter_mut() {
            if connected.contains(peer)
                || dial.dialing
                || dial.addrs.is_empty()
                || dial.next_dial > now
            {
                continue;
            }
            dial.dialing = true;
            tracing::debug!(%peer, "dialling");
            if transport
                .client
                .dial(*peer, dial.addrs.iter().cloned().collect())
                .is_err()
            {
                return;
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
        let records = self.engine.replica().records_wire();
        let network = self.engine.network();
        let client = self.engine.transport().client.clone();
        let pushes = self
            .engine
            .peers()
            .filter(|(_, s)| s.connected)
            .map(|(peer, _)| {
                let client = client.clone();
                let request = sync::Request::Push {
                    network,
                    records: records.clone(),
                    envelopes: Vec::new(),
                    proofs: Vec::new(),
                    versions: Vec::new(),
                };
                let peer = *peer;
                async move { client.request(peer, request).await }
            })
            .collect::<Vec<_>>();
        let answered = tokio::time::timeout(ROTATE_PUSH_WAIT, futures::future::join_all(pushes))
            .await
            .map_or(0, |all| all.iter().filter(|r| r.is_ok()).count());
        if answered == 0 {
            tracing::warn!(
                "no peer acknowledged the key succession; until one learns it (a bundle from \
                 `concord export` imported at a member carries it), peers refuse the new key"
            );
        }
        let _ = client.shutdown().await;
        if let Some(task) = self.network_task.take() {
            let _ = task.await;
        }
        drain.abort();
        let listen: Vec<Multiaddr> = std::mem::take(&mut self.listen);
        let built = network::new(
            self.engine.replica().identity().libp2p_keypair(),
            &NetworkConfig {
                listen,
                mdns: self.mdns,
                allowed: self.engine.peers().map(|(p, _)| *p).collect(),
            },
        );
        match built {
            Ok((client, events, event_loop)) => {
                let transport = self.engine.transport_mut();
                transport.client = client;
                // Answers to requests on the old network never come.
                transport.inflight = FuturesUnordered::new();
                for dial in transport.dials.values_mut() {
                    dial.dialing = false;
                    dial.next_dial = Instant::now();
                    dial.backoff = BACKOFF_START;
                }
                self.engine.reset_connections();
                self.events = events;
                self.network_task = Some(tokio::spawn(event_loop.run()));
                tracing::info!(node = %self.engine.replica().identity().node_id(), "network restarted under the new key");
            }
            Err(e) => tracing::error!(error = %e, "cannot restart the network under the new key"),
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
        let mut before = self.engine.replica().tips().clone();
        for call in batch {
            let plain_write = api::is_plain_write(&call.request);
            if !plain_write {
                self.settle_group(&mut group, &before);
                self.handle_call(call).await;
                before = self.engine.replica().tips().clone();
                continue;
            }
            let replica = self.engine.replica_mut();
            if group.is_empty() {
                replica.begin_group();
            }
            let ApiCall { request, reply } = call;
            let what = contain::label(&request);
            let inject = injected_panic(self.panic_after.as_deref(), &what);
            let result = match contain::run(|| execute(replica, request, inject)) {
                Ok(result) => result,
                Err(panic) => Err(self.recover(&what, &panic, true)),
            };
            group.push((reply, result));
        }
        self.settle_group(&mut group, &before);
    }

    /// Flushes a group of local writes, pushes what they added since
    /// `before`, and answers their callers (with an error for all if the
    /// flush failed: none of them is reported written before it is durable).
    fn settle_group(&mut self, group: &mut Vec<Answer>, before: &Tips) {
        if group.is_empty() {
            return;
        }
        match block_in_place(|| self.engine.replica_mut().end_group()) {
            Ok(()) => {
                tracing::debug!(writes = group.len(), "group committed with one flush");
                block_in_place(|| self.engine.committed(before));
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
            Request::RotateKey if !self.engine.any_connected() => Err(ApiError {
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
                let before = self.engine.replica().tips().clone();
                let records_before = self.engine.replica().records_digest();
                let what = contain::label(&request);
                let inject = injected_panic(self.panic_after.as_deref(), &what);
                let replica = self.engine.replica_mut();
                let result = match contain::run(|| execute(replica, request, inject)) {
                    Ok(result) => result,
                    Err(panic) => Err(self.recover(&what, &panic, write || roster_change)),
                };
                let now = Instant::now().into_std();
                if roster_change && self.engine.replica().records_digest() != records_before {
                    if rotate && result.is_ok() {
                        self.restart_network().await;
                        self.engine.follow_roster(now);
                    } else {
                        self.engine.records_changed(now);
                    }
                }
                // Pushes what the write stored; after a contained panic the
                // reloaded replica may hold it although the caller is told
                // the request failed, and peers must learn it too.
                if write && (result.is_ok() || self.engine.replica().tips() != &before) {
                    block_in_place(|| self.engine.committed(&before));
                }
                result
            }
        };
        let _ = reply.send(result);
    }

    /// After a panic in `what`: logs it and, when the panic may have come
    /// half-way through a write, reloads the replica from the store before
    /// anything else is served. Returns the error for the request's caller.
    fn recover(&mut self, what: &str, panic: &Panicked, reload: bool) -> ApiError {
        tracing::error!(%what, %panic, reload, "contained a panic: it fails this request or event alone");
        if reload && let Err(e) = block_in_place(|| self.engine.replica_mut().reload()) {
            tracing::error!(error = %e, "cannot reload the replica from the store after the panic");
        }
        ApiError {
            error: format!(
                "the node failed while answering this request ({panic}); it keeps running, \
                 nothing else was affected, and the fault is in its log"
            ),
            causes: Vec::new(),
        }
    }

    fn status(&self) -> StatusView {
        let replica = self.engine.replica();
        let mut status = api::stopped_status(replica);
        status.running = true;
        status.listen = self.listen.iter().map(ToString::to_string).collect();
        status.api = Some(self.api.to_string());
        status.connected = self
            .engine
            .peers()
            .filter(|(_, s)| s.connected)
            .map(|(_, s)| self.name_of(&s.key))
            .collect();
        status.connected.sort();
        status.last_sync = self.engine.last_sync().map(format_time);
        (status.bytes_sent, status.bytes_received) = self.engine.transport().client.traffic();
        status.web = self.web.map(|addr| format!("http://{addr}/"));
        status
    }

    fn name_of(&self, key: &PublicKey) -> String {
        self.engine
            .replica()
            .roster()
            .map(|r| r.display_name(key))
            .unwrap_or_default()
    }

    fn peer_views(&self) -> Vec<PeerView> {
        let ours = &self.engine.replica().counting_tips();
        let dials = &self.engine.transport().dials;
        let mut views = api::stopped_peers(self.engine.replica());
        for view in &mut views {
            let Some(peer) = view
                .node_id
                .parse::<NodeId>()
                .ok()
                .and_then(|n| n.peer_id())
            else {
                continue;
            };
            let Some(state) = self.engine.peer(&peer) else {
                continue;
            };
            view.connected = state.connected;
            view.last_seen = state.last_seen.map(format_time);
            view.role = state.role.to_string();
            if let Some(dial) = dials.get(&peer) {
                view.addresses = dial.addrs.iter().map(ToString::to_string).collect();
                view.rtt_ms = dial.rtt.map(|d| d.as_secs_f64() * 1000.0);
            }
            if let Some(theirs) = &state.tips {
                view.they_lack = Some(lacking(ours, theirs));
                view.we_lack = Some(lacking(theirs, ours));
            }
        }
        views
    }
}
