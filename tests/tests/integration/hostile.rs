//! Hostile peers against a real `concord run` process: a connection flood,
//! a message one byte over the limit, 10,000 replayed valid messages,
//! requests whose answers are never read, and streams left idle. The worst
//! case is a peer holding a member's key (strangers are refused by the
//! allow-list before any stream opens). Through each attack an honest
//! member must still catch up with the node, and the node's memory (VmHWM
//! from `/proc/<pid>/status`) must stay within a bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use concord_node::api::{AssessmentInput, Request, Response};
use concord_node::bundle::EnvelopeBytes;
use concord_node::genesis::NetworkId;
use concord_node::identity::Identity;
use concord_node::network::{Multiaddr, SyncCodec, WireRequest};
use concord_node::sync;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{PeerId, StreamProtocol, Swarm, identity};
use support::process::Proc;
use support::rogue::{self, Outcome};
use support::{Federation, forge};

/// Changes the node holds before an attack, so answers are not trivial.
const PRELOAD: usize = 1000;
/// How much the node's peak resident memory may grow during one attack.
const MEMORY_GROWTH_BOUND_KIB: u64 = 96 * 1024;
/// How much A's peak resident memory may grow while one peer floods it
/// with pushes: 4 times the bytes that peer may have in flight at once (on
/// each of the connections it may hold), plus the allowance every attack
/// here has for the node's own work (the honest member's catch-up, B's
/// connection, allocator slack).
const FLOOD_GROWTH_BOUND_KIB: u64 = 4
    * (concord_node::network::MAX_CONNECTIONS_PER_PEER as u64)
    * (concord_node::network::MAX_INBOUND_BYTES_PER_CONNECTION as u64)
    / 1024
    + 32 * 1024;
/// Any one attack or wait ends by then, whatever happens.
const DEADLINE: Duration = Duration::from_secs(60);

/// A federation of A (the node under attack, running), B (an honest
/// member, started during the attack), H (a member whose key the
/// hostile peer holds; H itself never runs) and O (an observer, whose key
/// the hostile peer holds in some tests; O never runs either).
struct Arena {
    fed: Federation,
    a: Proc,
    /// A's address ending in /p2p/<id>.
    addr: Multiaddr,
    peer: PeerId,
    network: NetworkId,
    hostile: Identity,
    observer: Identity,
    hwm_before: u64,
}

impl Arena {
    fn new() -> Self {
        let fed = Federation::new(&["A", "B", "H"], &["O"]);
        let a = Proc::start(fed.nodes[0].dir(), &[]).expect("A starts");
        let api = a.api();
        for chunk in 0..PRELOAD / 250 {
            let requests = (0..250)
                .map(|i| {
                    Request::AddAssessment(AssessmentInput {
                        category: "algorithmic-bias".into(),
                        title: format!("preloaded {chunk}-{i}"),
                        summary: "x".repeat(200),
                        status: "open".into(),
                        ..AssessmentInput::default()
                    })
                })
                .collect();
            match api.call(&Request::Batch { requests }) {
                Ok(Response::Batch(_)) => {}
                other => panic!("preload: {other:?}"),
            }
        }
        let status = api.status();
        let addr: Multiaddr = format!("{}/p2p/{}", status.listen[0], status.node_id)
            .parse()
            .expect("address");
        let (peer, _) = concord_node::network::split_peer(&addr).expect("peer id");
        let network = forge::read_genesis(&fed.genesis).network_id();
        let hostile = fed.nodes[2].identity();
        let observer = fed.nodes[3].identity();
        let (_, hwm_before) = a.memory_kib();
        Self {
            fed,
            a,
            addr,
            peer,
            network,
            hostile,
            observer,
            hwm_before,
        }
    }

    /// A writes one more change; an honest member B starts, bootstraps from
    /// A and must hold everything A holds before the deadline. Returns how
    /// long that took.
    fn honest_member_catches_up(&self, attack: &str) -> Duration {
        let started = Instant::now();
        let api = self.a.api();
        match api.call(&Request::AddAssessment(AssessmentInput {
            category: "algorithmic-bias".into(),
            title: format!("written during {attack}"),
            status: "open".into(),
            ..AssessmentInput::default()
        })) {
            Ok(Response::Written(_)) => {}
            other => panic!("A does not take a write during {attack}: {other:?}"),
        }
        let want = api.status().envelopes;
        let b = Proc::start(
            self.fed.nodes[1].dir(),
            &["--bootstrap", &self.addr.to_string()],
        )
        .unwrap_or_else(|f| panic!("B does not start: {f:?}"));
        let b_api = b.api();
        wait_for(&format!("B to catch up with A during {attack}"), || {
            b_api.status().envelopes >= want
        });
        assert_eq!(b.stop(), Some(0));
        started.elapsed()
    }

    /// A's peak resident memory grew less than `bound_kib`; returns
    /// (VmRSS, VmHWM) in KiB.
    fn memory_is_within(&self, attack: &str, bound_kib: u64) -> (u64, u64) {
        let (rss, hwm) = self.a.memory_kib();
        assert!(
            hwm <= self.hwm_before + bound_kib,
            "A's peak memory grew from {} KiB to {hwm} KiB during {attack}",
            self.hwm_before
        );
        (rss, hwm)
    }

    fn report(&self, attack: &str, honest: Duration, extra: &str) {
        self.report_within(attack, honest, extra, MEMORY_GROWTH_BOUND_KIB);
    }

    fn report_within(&self, attack: &str, honest: Duration, extra: &str, bound_kib: u64) {
        let (rss, hwm) = self.memory_is_within(attack, bound_kib);
        eprintln!(
            "hostile {attack}: honest member caught up in {honest:.1?}; A VmRSS {} MiB, \
             VmHWM {} MiB (before: {} MiB); {extra}",
            rss / 1024,
            hwm / 1024,
            self.hwm_before / 1024
        );
    }
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `attack` on its own runtime thread until `stop` is set (or the
/// deadline passes); returns its result.
fn spawn_attack<T: Send + 'static>(
    attack: impl FnOnce(Arc<AtomicBool>) -> std::pin::Pin<Box<dyn Future<Output = T> + Send>>
    + Send
    + 'static,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<T>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(attack(flag))
    });
    (stop, handle)
}

/// An attacker's swarm: the rogue's, outbound only, allowed many streams.
fn swarm<C>(key: identity::Keypair, codec: C) -> Swarm<request_response::Behaviour<C>>
where
    C: request_response::Codec<Protocol = StreamProtocol> + Clone + Send + 'static,
{
    support::rogue::swarm(
        key,
        codec,
        ProtocolSupport::Outbound,
        request_response::Config::default()
            .with_request_timeout(DEADLINE * 2)
            .with_max_concurrent_streams(1024),
        DEADLINE,
    )
}

/// Drives `swarm` until `done` says so, or `stop` is set, or the deadline.
async fn drive<C, S>(
    swarm: &mut Swarm<request_response::Behaviour<C>>,
    stop: &AtomicBool,
    state: &mut S,
    mut on_event: impl FnMut(
        &mut Swarm<request_response::Behaviour<C>>,
        &mut S,
        SwarmEvent<request_response::Event<C::Request, C::Response>>,
    ),
    mut done: impl FnMut(&S) -> bool,
) where
    C: request_response::Codec<Protocol = StreamProtocol> + Clone + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done(state) && !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
        if let Ok(event) =
            tokio::time::timeout(Duration::from_millis(100), swarm.select_next_some()).await
        {
            on_event(swarm, state, event);
        }
    }
}

/// A sync request that `hostile` sends and whose answer it wants to see.
fn pull(network: NetworkId) -> sync::Request {
    sync::Request::Pull {
        network,
        have: Vec::new(),
        records: [0; 32],
        frozen: Vec::new(),
    }
}

/// The hostile member is banned: a plain pull from it is refused at the
/// connection.
async fn is_banned(key: identity::Keypair, addr: Multiaddr, network: NetworkId) -> bool {
    let exchange = rogue::request(key, addr, pull(network)).await;
    matches!(exchange.outcome, Outcome::Failed(_))
}

#[test]
fn a_connection_flood_leaves_the_node_serving_honest_members() {
    let arena = Arena::new();
    let tcp_port = arena
        .addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("tcp port");
    let key = arena.hostile.libp2p_keypair();
    let (addr, peer, network) = (arena.addr.clone(), arena.peer, arena.network);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (stop, attack) = spawn_attack(move |stop| {
        Box::pin(async move {
            let began = Instant::now();
            // 40 connections at once under the member's key.
            let mut swarm = swarm(key, SyncCodec::default());
            for _ in 0..40 {
                let opts = DialOpts::peer_id(peer)
                    .condition(PeerCondition::Always)
                    .addresses(vec![addr.clone()])
                    .build();
                swarm.dial(opts).expect("dial");
            }
            // (open, resolved dials)
            let mut counts = (0usize, 0usize);
            drive(
                &mut swarm,
                &stop,
                &mut counts,
                |_, c, event| match event {
                    SwarmEvent::ConnectionEstablished { .. } => {
                        c.0 += 1;
                        c.1 += 1;
                    }
                    SwarmEvent::ConnectionClosed { .. } => c.0 = c.0.saturating_sub(1),
                    SwarmEvent::OutgoingConnectionError { .. } => c.1 += 1,
                    _ => {}
                },
                |c| c.1 >= 40 && c.0 <= 2,
            )
            .await;
            let member_open = counts.0;
            eprintln!(
                "flood: member connections settled after {:.1?}",
                began.elapsed()
            );
            // 20 strangers that complete the handshake and are refused.
            let mut strangers_answered = 0;
            for _ in 0..20 {
                let stranger = Identity::generate().expect("key").libp2p_keypair();
                if !is_banned(stranger, addr.clone(), network).await {
                    strangers_answered += 1;
                }
            }
            // 200 TCP connections that never say a word: they hold the
            // handshake slots until the transport's timeout.
            let mut silent = Vec::new();
            for _ in 0..200 {
                if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", tcp_port)).await {
                    silent.push(s);
                }
            }
            eprintln!("flood: in place after {:.1?}", began.elapsed());
            let _ = ready_tx.send(silent.len());
            // Hold everything until the honest member is through.
            drive(&mut swarm, &stop, &mut (), |_, _, _| {}, |_| false).await;
            drop(silent);
            (strangers_answered, member_open)
        })
    });
    let silent = ready.recv_timeout(DEADLINE).expect("the flood is in place");
    let honest = arena.honest_member_catches_up("a connection flood");
    stop.store(true, Ordering::Relaxed);
    let (strangers_answered, member_open) = attack.join().expect("attack");
    assert_eq!(strangers_answered, 0, "a stranger got an answer");
    assert!(
        member_open <= 2,
        "{member_open} connections of one member stayed open"
    );
    arena.report(
        "connection flood",
        honest,
        &format!(
            "member connections left open: {member_open} of 40; {silent} silent TCP \
             connections held; 20 strangers refused"
        ),
    );
}

#[test]
fn a_message_one_byte_over_the_limit_gets_the_sender_banned() {
    let arena = Arena::new();
    let key = arena.hostile.libp2p_keypair();
    let (addr, network) = (arena.addr.clone(), arena.network);
    let over = sync::MAX_MESSAGE_LEN + 1;
    let (_stop, attack) = spawn_attack(move |_| {
        Box::pin(async move {
            let mut bytes = (over as u32).to_be_bytes().to_vec();
            bytes.resize(4 + over, 0x5a);
            let exchange = rogue::raw(key.clone(), addr.clone(), bytes).await;
            let answered = matches!(&exchange.outcome, Outcome::Answered(b) if !b.is_empty());
            // It comes back at once with a valid request: refused.
            let banned = is_banned(key, addr, network).await;
            (answered, exchange.disconnected, banned)
        })
    });
    let (answered, disconnected, banned) = attack.join().expect("attack");
    assert!(!answered, "the node answered an oversized message");
    assert!(disconnected, "the sender stayed connected");
    assert!(banned, "the sender could reconnect and be served");
    let honest = arena.honest_member_catches_up("an oversized message");
    arena.report(
        "oversized message",
        honest,
        "sender disconnected and banned",
    );
}

#[test]
fn ten_thousand_replayed_messages_are_answered_and_change_nothing() {
    let arena = Arena::new();
    let key = arena.hostile.libp2p_keypair();
    let (peer, addr, network) = (arena.peer, arena.addr.clone(), arena.network);
    // A valid change of H's, pushed once (new), then replayed.
    let change = forge::changes(arena.hostile.public(), "replayed", 1).remove(0);
    let envelope = forge::envelope(&arena.hostile, &arena.fed.genesis, change);
    let push = sync::Request::Push {
        network,
        records: Vec::new(),
        envelopes: vec![EnvelopeBytes(envelope.encode())],
        proofs: Vec::new(),
        versions: Vec::new(),
    };
    const REPLAYS: usize = 10_000;
    const IN_FLIGHT: usize = 16;
    let (stop, attack) = spawn_attack(move |stop| {
        Box::pin(async move {
            let mut swarm = swarm(key, SyncCodec::default());
            swarm.dial(addr).expect("dial");
            // (sent, acks with nothing new, other answers, failures)
            let mut s = (0usize, 0usize, 0usize, 0usize);
            for _ in 0..IN_FLIGHT {
                swarm
                    .behaviour_mut()
                    .send_request(&peer, WireRequest::Valid(push.clone()));
                s.0 += 1;
            }
            drive(
                &mut swarm,
                &stop,
                &mut s,
                |swarm, s, event| {
                    let answered = match event {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Response { response, .. },
                            ..
                        }) => {
                            match response {
                                sync::Response::Ack { accepted: 0, .. } => s.1 += 1,
                                _ => s.2 += 1,
                            }
                            true
                        }
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                            ..
                        }) => {
                            s.3 += 1;
                            true
                        }
                        _ => false,
                    };
                    if answered && s.0 < REPLAYS {
                        swarm
                            .behaviour_mut()
                            .send_request(&peer, WireRequest::Valid(push.clone()));
                        s.0 += 1;
                    }
                },
                |s| s.1 + s.2 + s.3 >= REPLAYS,
            )
            .await;
            s
        })
    });
    let honest = arena.honest_member_catches_up("10,000 replays");
    let started = Instant::now();
    let (sent, known, other, failed) = attack.join().expect("attack");
    stop.store(true, Ordering::Relaxed);
    assert_eq!(sent, REPLAYS, "every replay was sent");
    assert_eq!(known + other + failed, REPLAYS, "every replay was settled");
    // The first push is new (accepted 1); every replay after it is known.
    assert!(
        other <= 1 && failed == 0,
        "{other} other answers, {failed} failures"
    );
    let status = arena.a.api().status();
    // PRELOAD + the write during the attack + H's one change.
    assert_eq!(
        status.envelopes,
        PRELOAD + 2,
        "the replays stored nothing twice"
    );
    arena.report(
        "10,000 replays",
        honest,
        &format!(
            "{known} replays acknowledged as known; attack finished {:.1?} after the honest sync",
            started.elapsed()
        ),
    );
}

/// Writes a valid pull and never reads the answer.
#[derive(Clone, Debug, Default)]
struct NeverRead(Option<Vec<u8>>);

/// Writes one byte of a request and leaves the stream idle.
#[derive(Clone, Debug, Default)]
struct Idle;

async fn hang<T>() -> std::io::Result<T> {
    futures::future::pending().await
}

/// What a hostile codec writes on a fresh stream before it hangs.
trait Opening: Clone + Send + 'static {
    fn opening(&self) -> Vec<u8>;
}

impl Opening for NeverRead {
    fn opening(&self) -> Vec<u8> {
        let body = self.0.clone().unwrap_or_default();
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        bytes
    }
}

impl Opening for Idle {
    fn opening(&self) -> Vec<u8> {
        // One byte of a length prefix: enough to open the protocol.
        vec![0]
    }
}

/// Writes its opening bytes and never closes. With `answers`, goes on to
/// read the 4-byte length prefix of the answer (counting it) and then no
/// more; without, hangs after writing.
#[derive(Clone, Debug)]
struct Hanging<O> {
    opening: O,
    answers: Option<Arc<AtomicUsize>>,
}

impl<O: Opening> request_response::Codec for Hanging<O> {
    type Protocol = StreamProtocol;
    type Request = ();
    type Response = ();

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> std::io::Result<()> {
        hang().await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<()> {
        if let Some(answers) = &self.answers {
            let mut len = [0u8; 4];
            io.read_exact(&mut len).await?;
            answers.fetch_add(1, Ordering::Relaxed);
        }
        hang().await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        _: (),
    ) -> std::io::Result<()> {
        io.write_all(&self.opening.opening()).await?;
        io.flush().await?;
        if self.answers.is_some() {
            // On to reading the answer (without closing the stream).
            return Ok(());
        }
        hang().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: (),
    ) -> std::io::Result<()> {
        hang().await
    }
}

/// Opens `streams` request streams with `codec` under the hostile key and
/// holds them until stopped; returns whether the node closed the
/// connection (and when, after the first stream).
fn hold_streams<O: Opening>(
    arena: &Arena,
    opening: O,
    streams: usize,
    until_closed: bool,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Option<Duration>>) {
    let codec = Hanging {
        opening,
        answers: None,
    };
    let key = arena.hostile.libp2p_keypair();
    let (peer, addr) = (arena.peer, arena.addr.clone());
    spawn_attack(move |stop| {
        Box::pin(async move {
            let mut swarm = swarm(key, codec);
            swarm.dial(addr).expect("dial");
            for _ in 0..streams {
                swarm.behaviour_mut().send_request(&peer, ());
            }
            let started = Instant::now();
            let mut closed = None;
            // Waiting for the node to close, the honest member's progress
            // does not stop the wait (the deadline does).
            let never = AtomicBool::new(false);
            drive(
                &mut swarm,
                if until_closed { &never } else { &stop },
                &mut closed,
                |_, closed, event| {
                    if let SwarmEvent::ConnectionClosed {
                        num_established: 0, ..
                    } = event
                    {
                        *closed = Some(started.elapsed());
                    }
                },
                |closed| closed.is_some(),
            )
            .await;
            // Keep whatever is still open until the honest member is through.
            drive(&mut swarm, &stop, &mut (), |_, _, _| {}, |_| false).await;
            closed
        })
    })
}

#[test]
fn requests_whose_answers_are_never_read_do_not_hold_the_node() {
    const STREAMS: usize = 64;
    let arena = Arena::new();
    let answers = Arc::new(AtomicUsize::new(0));
    let codec = Hanging {
        opening: NeverRead(Some(sync::encode_request(&pull(arena.network)))),
        answers: Some(Arc::clone(&answers)),
    };
    let key = arena.hostile.libp2p_keypair();
    let (peer, addr) = (arena.peer, arena.addr.clone());
    let counted = Arc::clone(&answers);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (stop, attack) = spawn_attack(move |stop| {
        Box::pin(async move {
            // Two connections (the most one peer may hold), 32 streams each
            // (the most one connection may carry): 64 pulls of everything.
            let mut swarm = swarm(key, codec);
            for _ in 0..2 {
                let opts = DialOpts::peer_id(peer)
                    .condition(PeerCondition::Always)
                    .addresses(vec![addr.clone()])
                    .build();
                swarm.dial(opts).expect("dial");
            }
            let mut established = 0usize;
            drive(
                &mut swarm,
                &stop,
                &mut established,
                |_, n, event| {
                    if let SwarmEvent::ConnectionEstablished { .. } = event {
                        *n += 1;
                    }
                },
                |n| *n >= 2,
            )
            .await;
            let began = Instant::now();
            for _ in 0..STREAMS {
                swarm.behaviour_mut().send_request(&peer, ());
            }
            // Each pull is either answered (and the answer left unread) or
            // dropped by the node, which the peer sees as a failure.
            let mut dropped = 0usize;
            let never = AtomicBool::new(false);
            drive(
                &mut swarm,
                &never,
                &mut dropped,
                |_, d, event| {
                    if let SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        ..
                    }) = event
                    {
                        *d += 1;
                    }
                },
                |d| *d + counted.load(Ordering::Relaxed) >= STREAMS,
            )
            .await;
            eprintln!(
                "unread answers: {} answered, {dropped} dropped after {:.1?}",
                counted.load(Ordering::Relaxed),
                began.elapsed()
            );
            let _ = ready_tx.send(());
            // Hold the unread answers until the honest member is through.
            drive(&mut swarm, &stop, &mut (), |_, _, _| {}, |_| false).await;
            (established, dropped)
        })
    });
    ready
        .recv_timeout(DEADLINE * 2)
        .expect("every pull answered or dropped");
    let honest = arena.honest_member_catches_up("unread answers");
    stop.store(true, Ordering::Relaxed);
    let (established, dropped) = attack.join().expect("attack");
    let answered = answers.load(Ordering::Relaxed);
    assert_eq!(established, 2, "two connections");
    assert_eq!(answered + dropped, STREAMS, "every pull settled");
    assert!(
        answered <= concord_node::network::MAX_INBOUND_PER_PEER,
        "{answered} answers wait for one peer at once"
    );
    arena.report(
        "unread answers",
        honest,
        &format!(
            "{STREAMS} pulls of {PRELOAD} changes on 2 connections: {answered} answered and \
             left unread, {dropped} dropped by the node"
        ),
    );
}

#[test]
fn streams_left_idle_get_the_peer_banned() {
    let arena = Arena::new();
    let (stop, attack) = hold_streams(&arena, Idle, 64, true);
    let honest = arena.honest_member_catches_up("idle streams");
    stop.store(true, Ordering::Relaxed);
    let closed = attack.join().expect("attack");
    let closed = closed.expect("the node closed the idle peer's connection");
    assert!(
        closed >= concord_node::network::REQUEST_START_TIMEOUT / 2,
        "closed after {closed:?}, before the idle timeout"
    );
    let key = arena.hostile.libp2p_keypair();
    let (addr, network) = (arena.addr.clone(), arena.network);
    let (_, check) = spawn_attack(move |_| Box::pin(is_banned(key, addr, network)));
    assert!(
        check.join().expect("check"),
        "the idle peer could reconnect"
    );
    arena.report(
        "idle streams",
        honest,
        &format!(
            "64 idle streams; the node closed the connection after {closed:.1?} and banned the peer"
        ),
    );
}

/// The body of a `Push` of as many copies of `envelope` as fit in one
/// message, built byte by byte (postcard: variant 1, the network, no
/// records, the envelope count, then each envelope length-prefixed), so
/// the test does not hold millions of decoded envelopes itself.
fn push_filling_a_message(network: NetworkId, envelope: &[u8]) -> (Vec<u8>, usize) {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut one = Vec::new();
    varint(envelope.len(), &mut one);
    one.extend_from_slice(envelope);
    // Variant, network, record count, and up to 5 bytes of envelope count.
    let count = (sync::MAX_MESSAGE_LEN - 1 - 32 - 1 - 5) / one.len();
    let mut body = vec![1];
    body.extend_from_slice(&network.0);
    body.push(0);
    varint(count, &mut body);
    for _ in 0..count {
        body.extend_from_slice(&one);
    }
    assert!(body.len() <= sync::MAX_MESSAGE_LEN);
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    (framed, count)
}

/// The smallest envelope the format allows: version, `author`, a zero
/// signature and a change chunk with no data but a valid checksum, so it
/// decodes and is refused only by the checks after decoding.
fn smallest_envelope(author: &Identity) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest([1u8, 0]);
    let mut bytes = vec![1];
    bytes.extend_from_slice(author.public().as_bytes());
    bytes.extend_from_slice(&[0; 64]);
    bytes.extend_from_slice(&[0x85, 0x6f, 0x4a, 0x83]);
    bytes.extend_from_slice(&hash[..4]);
    bytes.extend_from_slice(&[1, 0]);
    bytes
}

/// What a push flood came to.
#[derive(Debug, Default)]
struct Flood {
    /// Answered `Refused`.
    refused: usize,
    /// Answered anything else.
    other: usize,
    /// Failed without an answer (dropped, or the connection closed).
    failed: usize,
    /// Connections A closed.
    closed: usize,
}

/// Pushes `framed` (one whole framed message) on `streams` streams of each
/// of `connections` connections under `key`, and waits until every one is
/// answered or failed. Returns what came of them.
fn push_flood(
    arena: &Arena,
    key: identity::Keypair,
    framed: Vec<u8>,
    connections: usize,
    streams: usize,
) -> Flood {
    let (peer, addr) = (arena.peer, arena.addr.clone());
    let (_stop, attack) = spawn_attack(move |stop| {
        Box::pin(async move {
            let mut swarm = swarm(key, rogue::RawCodec);
            for _ in 0..connections {
                let opts = DialOpts::peer_id(peer)
                    .condition(PeerCondition::Always)
                    .addresses(vec![addr.clone()])
                    .build();
                swarm.dial(opts).expect("dial");
            }
            let mut established = 0usize;
            drive(
                &mut swarm,
                &stop,
                &mut established,
                |_, n, event| {
                    if let SwarmEvent::ConnectionEstablished { .. } = event {
                        *n += 1;
                    }
                },
                |n| *n >= connections,
            )
            .await;
            for _ in 0..connections * streams {
                swarm.behaviour_mut().send_request(&peer, framed.clone());
            }
            let mut flood = Flood::default();
            drive(
                &mut swarm,
                &stop,
                &mut flood,
                |_, f, event| match event {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    }) => match response.get(4..).map(sync::decode_response) {
                        Some(Ok(sync::Response::Refused { .. })) => f.refused += 1,
                        Some(Ok(_)) => f.other += 1,
                        // An empty answer: the stream closed unanswered.
                        _ => f.failed += 1,
                    },
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => {
                        f.failed += 1
                    }
                    SwarmEvent::ConnectionClosed { .. } => f.closed += 1,
                    _ => {}
                },
                |f| f.refused + f.other + f.failed >= connections * streams,
            )
            .await;
            flood
        })
    });
    attack.join().expect("attack")
}

/// Issue 14, item 7: an 8 MiB push of empty envelopes (one length byte
/// each) decoded into a 24-byte vector header per byte received, and
/// sixteen such pushes from an observer's key took a node past 1 GB. Now
/// a byte string shorter than the smallest envelope is refused as it
/// decodes, and the bytes one connection may have in flight are bounded,
/// so A's peak memory grows by at most 4 times what it may hold from the
/// peer at once, plus the allowance every hostile test has.
#[test]
fn pushes_of_empty_envelopes_from_an_observer_cost_memory_in_proportion_to_their_bytes() {
    let arena = Arena::new();
    let (framed, count) = push_filling_a_message(arena.network, &[]);
    let flood = push_flood(&arena, arena.observer.libp2p_keypair(), framed, 1, 16);
    assert_eq!(
        flood.other, 0,
        "a push of empty envelopes was taken: {flood:?}"
    );
    assert!(
        flood.closed >= 1,
        "the observer stayed connected: {flood:?}"
    );
    let honest = arena.honest_member_catches_up("pushes of empty envelopes");
    arena.report_within(
        "empty envelopes",
        honest,
        &format!("16 pushes of {count} empty envelopes (8 MiB each) from an observer: {flood:?}"),
        FLOOD_GROWTH_BOUND_KIB,
    );
}

/// The same flood with the smallest envelopes the format allows, each
/// well formed up to its (bogus) signature, from a member's key on both
/// the connections it may hold: these decode, so every later stage of the
/// ingest must stay proportional too.
#[test]
fn pushes_of_the_smallest_envelopes_cost_memory_in_proportion_to_their_bytes() {
    let arena = Arena::new();
    let (framed, count) = push_filling_a_message(arena.network, &smallest_envelope(&arena.hostile));
    let flood = push_flood(&arena, arena.hostile.libp2p_keypair(), framed, 2, 16);
    assert_eq!(
        flood.other, 0,
        "a push of forged envelopes was taken: {flood:?}"
    );
    assert!(flood.closed >= 1, "the member stayed connected: {flood:?}");
    let honest = arena.honest_member_catches_up("pushes of the smallest envelopes");
    arena.report_within(
        "smallest envelopes",
        honest,
        &format!(
            "32 pushes of {count} envelopes of {} bytes (8 MiB each) from a member on 2 \
             connections: {flood:?}",
            smallest_envelope(&arena.hostile).len()
        ),
        FLOOD_GROWTH_BOUND_KIB,
    );
}
