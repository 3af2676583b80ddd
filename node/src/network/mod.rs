//! The libp2p layer: transports (TCP and QUIC, noise, yamux), identify, ping,
//! mDNS, the roster allow-list, connection limits and the sync protocol's
//! request-response framing.
//!
//! Shaped after rust-libp2p's file-sharing example: [`new`] returns a
//! cloneable [`Client`], a bounded stream of [`Event`]s and the [`EventLoop`],
//! the only owner of the `Swarm`. The client sends [`Command`]s carrying
//! oneshot replies; the loop answers them and reports what the swarm sees. It
//! never interprets documents or envelopes: that is the node's job. A peer off
//! the allow-list has its connection denied as soon as the handshake names
//! it, before any protocol stream opens.
//!
//! A peer disconnected for misbehaviour (a message that does not decode or
//! is over the limit, a stream left without a request, anything the node
//! refuses and disconnects for) is banned: its connections are refused, in
//! both directions, for [`BAN_FIRST`], doubling with each repeat up to
//! [`BAN_MAX`], so it cannot reconnect and be refused over and over. Inbound
//! requests are capped per peer ([`MAX_INBOUND_PER_PEER`]); requests over
//! the cap go unanswered, so one peer cannot queue unbounded work. The bytes
//! of the messages a connection has in flight are bounded too
//! ([`MAX_INBOUND_BYTES_PER_CONNECTION`]): a message is read only once its
//! announced length fits, and a request keeps its share until it is
//! answered, so one peer's messages hold a bounded amount of memory however
//! many streams it opens.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{
    self, InboundRequestId, OutboundRequestId, ProtocolSupport, ResponseChannel,
};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, identify, identity, mdns,
    noise, ping, tcp, yamux,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::sync::{self, MAX_MESSAGE_LEN};

/// Bound of the event channel.
const CHANNEL_BOUND: usize = 256;
/// Established connections in total, and to one peer (a simultaneous dial
/// from both sides can briefly make two).
const MAX_CONNECTIONS: u32 = 256;
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Connections still in their handshake.
const MAX_PENDING: u32 = 64;
/// How long a connection may take to finish its handshake (TCP, noise,
/// yamux). A socket that never speaks holds a handshake slot this long, so
/// it is kept short: a handshake takes a few round trips.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent sync streams on one connection.
const MAX_STREAMS: usize = 32;
/// How long a sync request may take, large catch-up chunks included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections stay open while idle; the node closes them itself.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// After a refusal is sent, how long the peer has to read it before the
/// connection closes (closing at once would drop the answer in flight).
const REFUSAL_GRACE: Duration = Duration::from_millis(500);
/// A stream must carry its request's length prefix this soon after it
/// opens; honest peers write it at once. A stream left idle longer is
/// misbehaviour (it would hold one of the connection's stream slots).
pub const REQUEST_START_TIMEOUT: Duration = Duration::from_secs(5);
/// Inbound requests from one peer waiting for their answer to be sent. An
/// honest node keeps at most 16 requests in flight to a peer; requests over
/// this cap are dropped unanswered (each answer may hold up to
/// [`sync::RESPONSE_TARGET_LEN`] bytes until the peer reads it).
pub const MAX_INBOUND_PER_PEER: usize = 32;
/// Bytes of the messages read from one connection that may be in flight at
/// once: a request from the moment its length prefix is read until its
/// answer is written (or it is dropped), a response until it is decoded. A
/// message whose announced length does not fit waits (within the request
/// timeout) for earlier ones to finish; the stream waiting holds no memory.
/// Two full messages, so the next push is read while one is processed (the
/// node loop processes one at a time anyway); with
/// [`MAX_CONNECTIONS_PER_PEER`], one peer's messages hold at most 32 MiB of
/// bytes, and their decoded forms a small multiple of that (see
/// `bundle::EnvelopeBytes`).
pub const MAX_INBOUND_BYTES_PER_CONNECTION: usize = 2 * MAX_MESSAGE_LEN;
/// First ban of a misbehaving peer; each further one doubles, up to
/// [`BAN_MAX`]. A peer with no ban for [`BAN_FORGET`] starts afresh.
pub const BAN_FIRST: Duration = Duration::from_secs(30);
pub const BAN_MAX: Duration = Duration::from_secs(3600);
const BAN_FORGET: Duration = Duration::from_secs(24 * 3600);

/// Errors setting up the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot build the libp2p transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("the network task has stopped")]
    Stopped,
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
}

/// What the event loop is set up with.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub listen: Vec<Multiaddr>,
    pub mdns: bool,
    /// Peers allowed to connect (the roster, less this node).
    pub allowed: Vec<PeerId>,
}

/// What the swarm reports to the node.
#[derive(Debug)]
pub enum Event {
    Listening {
        addr: Multiaddr,
    },
    Connected {
        peer: PeerId,
        /// The address dialled, when this node dialled (a listen address of
        /// the peer); `None` for an inbound connection.
        dialed: Option<Multiaddr>,
    },
    /// The last connection to `peer` closed.
    Disconnected {
        peer: PeerId,
    },
    DialFailed {
        peer: Option<PeerId>,
        error: String,
    },
    /// Addresses a peer listens on, from identify or mDNS.
    Addresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// A sync request that needs an answer through [`Client::respond`].
    Request {
        peer: PeerId,
        request: sync::Request,
        channel: ResponseChannel<sync::Response>,
    },
    /// A ping round trip to `peer` on its connection.
    Rtt {
        peer: PeerId,
        rtt: std::time::Duration,
    },
    /// A peer sent a message that did not decode or was over the size limit.
    BadMessage {
        peer: PeerId,
        error: String,
    },
}

/// What the client asks of the event loop.
#[derive(Debug)]
enum Command {
    Dial {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    Request {
        peer: PeerId,
        request: sync::Request,
        reply: oneshot::Sender<Result<sync::Response, NetworkError>>,
    },
    Respond {
        peer: PeerId,
        channel: ResponseChannel<sync::Response>,
        response: sync::Response,
        /// Close the connection once the response is sent (a refusal).
        then_disconnect: bool,
    },
    /// Closes `peer`'s connections and bans it for misbehaviour.
    Ban {
        peer: PeerId,
    },
    /// Lets `peer` connect from now on (it joined the roster).
    Allow {
        peer: PeerId,
    },
    /// Refuses `peer` from now on and closes its connections (it left).
    Disallow {
        peer: PeerId,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A cloneable handle to the event loop.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    traffic: Traffic,
}

impl Client {
    /// Sync bytes sent and received by this event loop so far.
    pub fn traffic(&self) -> (u64, u64) {
        self.traffic.totals()
    }

    /// Hands a command to the event loop (the queue is unbounded, so this
    /// never waits).
    fn command(&self, command: Command) -> Result<(), NetworkError> {
        self.commands
            .send(command)
            .map_err(|_| NetworkError::Stopped)
    }

    /// Dials `peer` at `addrs`; the outcome comes as an [`Event`].
    pub fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NetworkError> {
        self.command(Command::Dial { peer, addrs })
    }

    /// Sends a request; the returned future resolves with the answer.
    pub async fn request(
        &self,
        peer: PeerId,
        request: sync::Request,
    ) -> Result<sync::Response, NetworkError> {
        self.start_request(peer, request).await
    }

    /// Hands `request` to the event loop now, before the returned future is
    /// first polled, so it goes out even while the caller is busy; the
    /// future resolves to the answer.
    pub fn start_request(
        &self,
        peer: PeerId,
        request: sync::Request,
    ) -> impl Future<Output = Result<sync::Response, NetworkError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .commands
            .send(Command::Request {
                peer,
                request,
                reply,
            })
            .map_err(|_| NetworkError::Stopped);
        async move {
            sent?;
            answer.await.map_err(|_| NetworkError::Stopped)?
        }
    }

    /// Answers a request; with `then_disconnect`, closes the connection to
    /// `peer` once the answer has been sent.
    pub fn respond(
        &self,
        peer: PeerId,
        channel: ResponseChannel<sync::Response>,
        response: sync::Response,
        then_disconnect: bool,
    ) -> Result<(), NetworkError> {
        self.command(Command::Respond {
            peer,
            channel,
            response,
            then_disconnect,
        })
    }

    /// Disconnects `peer` for misbehaviour and bans it (see
    /// [`BAN_FIRST`]): its connections are refused both ways until the ban
    /// ends. The node calls this only for peers that misbehaved; roster
    /// departures go through [`Client::disallow`].
    pub fn ban(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.command(Command::Ban { peer })
    }

    /// Follows the roster: lets `peer` connect.
    pub fn allow(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.command(Command::Allow { peer })
    }

    /// Follows the roster: refuses `peer` and closes its connections.
    pub fn disallow(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.command(Command::Disallow { peer })
    }

    /// Stops the event loop after closing its connections.
    pub async fn shutdown(&self) -> Result<(), NetworkError> {
        let (reply, done) = oneshot::channel();
        self.command(Command::Shutdown { reply })?;
        done.await.map_err(|_| NetworkError::Stopped)
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    // First, so a connection from a peer off the roster is refused before any
    // other behaviour sees it.
    allowed: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    // Peers banned for misbehaviour, even if on the roster.
    banned: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Builds the swarm and starts listening.
pub fn new(
    keypair: identity::Keypair,
    config: &NetworkConfig,
) -> Result<(Client, mpsc::Receiver<Event>, EventLoop), NetworkError> {
    let transport = |e: &dyn std::fmt::Display| NetworkError::Transport(e.to_string());
    let mdns_enabled = config.mdns;
    let traffic = Traffic::default();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport(&e))?
        .with_quic()
        .with_behaviour(|key| {
            let mdns = if mdns_enabled {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    key.public().to_peer_id(),
                )?)
            } else {
                None
            };
            Ok(Behaviour {
                allowed: allow_block_list::Behaviour::default(),
                banned: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(MAX_CONNECTIONS))
                        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                        .with_max_pending_incoming(Some(MAX_PENDING))
                        .with_max_pending_outgoing(Some(MAX_PENDING)),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new("/concord/id/1".into(), key.public())
                        .with_agent_version(format!("concord/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::default(),
                sync: request_response::Behaviour::with_codec(
                    SyncCodec {
                        traffic: traffic.clone(),
                        budget: None,
                        held: None,
                    },
                    [(StreamProtocol::new(sync::PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(REQUEST_TIMEOUT)
                        .with_max_concurrent_streams(MAX_STREAMS),
                ),
                mdns: mdns.into(),
            })
        })
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .with_connection_timeout(HANDSHAKE_TIMEOUT)
        .build();
    for peer in &config.allowed {
        swarm.behaviour_mut().allowed.allow_peer(*peer);
    }
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetworkError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    // Commands are unbounded so the node loop never blocks on the event loop
    // while the event loop blocks on the node loop; their number is bounded
    // by the node's in-flight limits per peer and libp2p's stream limits.
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (events, event_rx) = mpsc::channel(CHANNEL_BOUND);
    Ok((
        Client { commands, traffic },
        event_rx,
        EventLoop {
            swarm,
            commands: command_rx,
            events,
            pending: HashMap::new(),
            close_after_response: HashSet::new(),
            closing: FuturesUnordered::new(),
            bans: HashMap::new(),
            unbanning: FuturesUnordered::new(),
            inbound: HashMap::new(),
        },
    ))
}

/// The only owner of the swarm.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<sync::Response, NetworkError>>>,
    /// Peers whose connection closes once their pending answer is sent.
    close_after_response: HashSet<PeerId>,
    /// Disconnections waiting out [`REFUSAL_GRACE`].
    closing: FuturesUnordered<Pin<Box<dyn Future<Output = PeerId> + Send>>>,
    /// Peers banned within the last [`BAN_FORGET`] (see [`EventLoop::ban`]);
    /// in practice bounded by the roster, since only peers that got through
    /// the allow-list can misbehave.
    bans: HashMap<PeerId, Ban>,
    /// Bans waiting to expire.
    unbanning: FuturesUnordered<Pin<Box<dyn Future<Output = PeerId> + Send>>>,
    /// Inbound requests whose answer is not sent yet, and their peer.
    inbound: HashMap<InboundRequestId, PeerId>,
}

/// A peer's ban record.
#[derive(Clone, Copy, Debug)]
struct Ban {
    /// Bans so far (since the last time it was forgotten).
    strikes: u32,
    until: Instant,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer", self.swarm.local_peer_id())
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// Runs until [`Client::shutdown`] or until every client is dropped.
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.handle_swarm_event(event).await,
                Some(peer) = self.closing.next(), if !self.closing.is_empty() => {
                    self.ban(peer, "refused");
                }
                Some(peer) = self.unbanning.next(), if !self.unbanning.is_empty() => {
                    self.unban(peer);
                }
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                        for peer in peers {
                            let _ = self.swarm.disconnect_peer_id(peer);
                        }
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.handle_command(command),
                    None => return,
                },
            }
        }
    }

    async fn emit(&mut self, event: Event) {
        // The node may be busy ingesting; waiting here is the back-pressure.
        let _ = self.events.send(event).await;
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Dial { peer, addrs } => {
                let opts = DialOpts::peer_id(peer).addresses(addrs).build();
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::debug!(%peer, error = %e, "dial refused");
                    let events = self.events.clone();
                    let error = e.to_string();
                    tokio::spawn(async move {
                        let _ = events
                            .send(Event::DialFailed {
                                peer: Some(peer),
                                error,
                            })
                            .await;
                    });
                }
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer, WireRequest::Valid(request));
                self.pending.insert(id, reply);
            }
            Command::Respond {
                peer,
                channel,
                response,
                then_disconnect,
            } => {
                let sent = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, response)
                    .is_ok();
                if !sent {
                    tracing::debug!(%peer, "response dropped: the peer's stream is closed");
                }
                if then_disconnect {
                    if sent {
                        self.close_after_response.insert(peer);
                    } else {
                        self.ban(peer, "refused");
                    }
                }
            }
            Command::Ban { peer } => self.ban(peer, "misbehaved"),
            Command::Allow { peer } => {
                self.swarm.behaviour_mut().allowed.allow_peer(peer);
            }
            Command::Disallow { peer } => {
                self.swarm.behaviour_mut().allowed.disallow_peer(peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Shutdown { .. } => {}
        }
    }

    /// Closes `peer`'s connections and refuses new ones, in both directions,
    /// for a while that doubles with each ban (see [`BAN_FIRST`]). A peer
    /// already banned is only disconnected again: one offence, one strike.
    fn ban(&mut self, peer: PeerId, why: &str) {
        let now = Instant::now();
        let _ = self.swarm.disconnect_peer_id(peer);
        // Records past forgiving are of no use: drop them, so the map holds
        // only peers banned within the last day.
        self.bans
            .retain(|_, b| now.saturating_duration_since(b.until) <= BAN_FORGET);
        let ban = self.bans.entry(peer).or_insert(Ban {
            strikes: 0,
            until: now,
        });
        if ban.until > now {
            return;
        }
        ban.strikes += 1;
        let length = BAN_FIRST
            .saturating_mul(1 << (ban.strikes - 1).min(16))
            .min(BAN_MAX);
        ban.until = now + length;
        tracing::warn!(%peer, reason = why, strikes = ban.strikes, ban = ?length, "peer banned: its connections are refused until the ban ends");
        self.swarm.behaviour_mut().banned.block_peer(peer);
        self.unbanning.push(Box::pin(async move {
            tokio::time::sleep(length).await;
            peer
        }));
    }

    fn unban(&mut self, peer: PeerId) {
        if self
            .bans
            .get(&peer)
            .is_some_and(|b| b.until <= Instant::now())
        {
            tracing::info!(%peer, "ban ended");
            self.swarm.behaviour_mut().banned.unblock_peer(peer);
        }
    }

    async fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.emit(Event::Listening { addr: address }).await;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let dialed = match endpoint {
                    ConnectedPoint::Dialer { address, .. } => Some(address),
                    ConnectedPoint::Listener { .. } => None,
                };
                tracing::debug!(peer = %peer_id, ?dialed, "connected");
                self.emit(Event::Connected {
                    peer: peer_id,
                    dialed,
                })
                .await;
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                tracing::debug!(peer = %peer_id, "disconnected");
                self.emit(Event::Disconnected { peer: peer_id }).await;
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.emit(Event::DialFailed {
                    peer: peer_id,
                    error: error.to_string(),
                })
                .await;
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection refused");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let addrs: Vec<Multiaddr> =
                    info.listen_addrs.into_iter().filter(dialable).collect();
                if !addrs.is_empty() {
                    self.emit(Event::Addresses {
                        peer: peer_id,
                        addrs,
                    })
                    .await;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    self.emit(Event::Addresses { peer, addrs }).await;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.handle_sync(event).await,
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => self.emit(Event::Rtt { peer, rtt }).await,
            _ => {}
        }
    }

    async fn handle_sync(&mut self, event: request_response::Event<WireRequest, sync::Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: WireRequest::Valid(request),
                    channel,
                    request_id,
                } => {
                    let waiting = self.inbound.values().filter(|p| **p == peer).count();
                    if waiting >= MAX_INBOUND_PER_PEER {
                        // Dropping the channel answers nothing.
                        tracing::debug!(%peer, waiting, "too many requests waiting; one dropped");
                        return;
                    }
                    self.inbound.insert(request_id, peer);
                    self.emit(Event::Request {
                        peer,
                        request,
                        channel,
                    })
                    .await;
                }
                request_response::Message::Request {
                    request: WireRequest::Invalid(error),
                    ..
                } => {
                    // Dropping the channel answers nothing; the peer is
                    // banned and the node is told.
                    self.ban(peer, "sent a bad message");
                    self.emit(Event::BadMessage { peer, error }).await;
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(NetworkError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                tracing::debug!(%peer, %error, "inbound sync request failed");
                self.inbound.remove(&request_id);
                if self.close_after_response.remove(&peer) {
                    self.ban(peer, "refused");
                }
            }
            request_response::Event::ResponseSent {
                peer, request_id, ..
            } => {
                self.inbound.remove(&request_id);
                if self.close_after_response.remove(&peer) {
                    self.closing.push(Box::pin(async move {
                        tokio::time::sleep(REFUSAL_GRACE).await;
                        peer
                    }));
                }
            }
        }
    }
}

/// Addresses worth remembering: not unspecified (0.0.0.0 / ::).
fn dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// Addresses are libp2p multiaddrs; re-exported so callers need not depend on libp2p.
pub use libp2p::Multiaddr;

/// Splits `/…/p2p/<id>` into the peer id and the address before it.
pub fn split_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut addr = addr.clone();
    match addr.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, addr)),
        _ => None,
    }
}

mod codec;
pub use codec::{SyncCodec, Traffic, WireRequest};

#[cfg(test)]
mod tests;
