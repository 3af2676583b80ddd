//! The integration-test harness: builds the real `concord` binary once, runs
//! it in fresh temporary data directories, and sets up small federations.
//!
//! Every helper that expects success panics with the command, its exit code
//! and its stderr, so a failing test says what happened.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use concord_node::identity::Identity;
use serde_json::Value;
use tempfile::TempDir;

/// The `concord` binary, built once per test run in the same profile.
pub fn concord_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("CONCORD_BIN") {
            return PathBuf::from(path);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut build = escargot::CargoBuild::new()
            .manifest_path(manifest)
            .package("cli")
            .bin("concord")
            .current_release();
        // `cargo test` sets these for the test process; build scripts that
        // watch them (ring's) would otherwise rebuild on every run.
        for (key, _) in std::env::vars() {
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|p| key.starts_with(p))
                || key == "CARGO_TARGET_TMPDIR"
                || key == "CARGO_RUSTC_CURRENT_DIR"
            {
                build = build.env_remove(key);
            }
        }
        let run = build
            .run()
            .unwrap_or_else(|e| panic!("cannot build the concord binary: {e}"));
        run.path().to_path_buf()
    })
}

/// The result of running the binary.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// One node: a data directory and the binary pointed at it.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    dir: TempDir,
}

impl Node {
    /// A fresh directory with `concord init --name NAME` run in it.
    pub fn init(name: &str) -> Self {
        let node = Self::uninitialised(name);
        node.ok(&["init", "--name", name]);
        node
    }

    /// A fresh, empty data directory.
    pub fn uninitialised(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("concord-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        Self {
            name: name.to_string(),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `concord --data-dir DIR ARGS...`.
    pub fn run(&self, args: &[&str]) -> Run {
        Command::new(concord_bin())
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .env_remove("CONCORD_DATA_DIR")
            .env_remove("RUST_LOG")
            .output()
            .unwrap_or_else(|e| panic!("cannot run concord: {e}"))
            .into()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            run.code,
            Some(0),
            "`concord {}` on {} failed:\n{}",
            args.join(" "),
            self.name,
            run.stderr
        );
        run.stdout
    }

    /// Runs a command that must fail with exit code `code`; returns stderr.
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            run.code,
            Some(code),
            "`concord {}` on {} should exit {code}; stdout:\n{}\nstderr:\n{}",
            args.join(" "),
            self.name,
            run.stdout,
            run.stderr
        );
        run.stderr
    }

    /// Runs a command that must fail with exit code 1 and an error message
    /// containing `expected`; returns the whole of stderr.
    pub fn refuses(&self, args: &[&str], expected: &str) -> String {
        let stderr = self.fails(1, args);
        assert!(
            stderr.contains(expected),
            "`concord {}` should say {expected:?}; it said:\n{stderr}",
            args.join(" ")
        );
        stderr
    }

    /// Runs a command with `--json` appended and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.ok(&args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{out}"))
    }

    pub fn node_id(&self) -> String {
        self.json(&["id"])["node_id"]
            .as_str()
            .unwrap_or_else(|| panic!("id --json has no node_id"))
            .to_string()
    }

    /// The node's signing key, read from its key file.
    pub fn identity(&self) -> Identity {
        Identity::load(&self.dir.path().join("identity.key"))
            .unwrap_or_else(|e| panic!("cannot load {}'s key: {e}", self.name))
    }

    /// Everything a user can observe of the store: the audit (envelope
    /// count, heads, authors, forks) and the JSON of every list.
    pub fn state(&self) -> Value {
        serde_json::json!({
            "verify": self.json(&["verify"]),
            "assessments": self.json(&["assess", "list"]),
            "notes": self.json(&["note", "list"]),
        })
    }

    /// Exports everything into a file in this node's directory.
    pub fn export(&self, file_name: &str) -> PathBuf {
        let path = self.dir.path().join(file_name);
        self.ok(&["export", "--out", path_str(&path)]);
        path
    }

    pub fn import(&self, bundle: &Path) -> Value {
        self.json(&["import", path_str(bundle)])
    }
}

/// A network of initialised nodes that have all joined one genesis.
#[derive(Debug)]
pub struct Federation {
    pub nodes: Vec<Node>,
    pub genesis: PathBuf,
}

impl Federation {
    /// Members first (the first one creates the network), then observers.
    pub fn new(members: &[&str], observers: &[&str]) -> Self {
        let nodes: Vec<Node> = members
            .iter()
            .chain(observers)
            .map(|n| Node::init(n))
            .collect();
        let mut args: Vec<String> = vec![
            "network".into(),
            "create".into(),
            "--name".into(),
            "Test network".into(),
        ];
        for (i, node) in nodes.iter().enumerate() {
            let flag = if i < members.len() {
                "--member"
            } else {
                "--observer"
            };
            args.push(flag.into());
            args.push(format!("{}={}", node.node_id(), node.name));
        }
        let genesis = nodes[0].dir().join("genesis.concord");
        args.push("--out".into());
        args.push(path_str(&genesis).to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes[0].ok(&args);
        for node in &nodes[1..] {
            node.ok(&["network", "join", path_str(&genesis)]);
        }
        Self { nodes, genesis }
    }

    /// Every node exports; every node imports every other node's bundle.
    pub fn exchange_all(&self) {
        let bundles: Vec<PathBuf> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| n.export(&format!("exchange-{i}.bundle")))
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            for (j, bundle) in bundles.iter().enumerate() {
                if i != j {
                    node.import(bundle);
                }
            }
        }
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("test paths are UTF-8: {}", path.display()))
}

/// Adds a note on `assessment` through the CLI and returns its id.
pub fn add_note(node: &Node, topic: &str, assessment: &str) -> String {
    node.json(&[
        "note",
        "add",
        "--topic",
        topic,
        "--body",
        "b",
        "--assessment",
        assessment,
    ])["id"]
        .as_str()
        .unwrap_or_else(|| panic!("note add --json has no id"))
        .to_string()
}

/// Adds an assessment through the CLI and returns its id.
pub fn add_assessment(node: &Node, category: &str, title: &str) -> String {
    node.json(&[
        "assess",
        "add",
        "--category",
        category,
        "--title",
        title,
        "--likelihood",
        "3",
        "--severity",
        "4",
    ])["id"]
        .as_str()
        .unwrap_or_else(|| panic!("assess add --json has no id"))
        .to_string()
}

pub mod netlab;
pub mod sim;

/// Forging helpers: changes and bundles built with the library, for tests
/// that feed the binary what a hostile or broken peer might send.
pub mod forge {
    use std::path::{Path, PathBuf};

    use concord_node::bundle::{Bundle, EnvelopeBytes};
    use concord_node::doc::{Document, NewAssessment};
    use concord_node::envelope::Envelope;
    use concord_node::genesis::Genesis;
    use concord_node::identity::{Identity, PublicKey};
    use concord_node::model::Status;

    /// `count` chained changes written with `actor` as Automerge actor id,
    /// each adding an assessment titled after `label`; returns raw bytes.
    pub fn changes(actor: PublicKey, label: &str, count: usize) -> Vec<Vec<u8>> {
        let mut doc = Document::new(actor);
        (0..count)
            .map(|i| {
                let new = NewAssessment {
                    category: "algorithmic-bias".into(),
                    title: format!("{label} {i}"),
                    summary: String::new(),
                    likelihood: None,
                    severity: None,
                    mitigations: Vec::new(),
                    status: Status::Draft,
                };
                doc.add_assessment(
                    &format!("ra-{label}{i}"),
                    &new,
                    1_700_000_000_000 + i as i64,
                )
                .unwrap_or_else(|e| panic!("forge change: {e}"))
                .raw_bytes()
                .to_vec()
            })
            .collect()
    }

    /// A change by `actor` adding assessment `id` whose `created_at` is
    /// `created_at_ms`, with an ordinary commit time: the shape of the
    /// year-10000 change a member once signed to panic every node.
    pub fn assessment_created_at(actor: PublicKey, id: &str, created_at_ms: i64) -> Vec<u8> {
        use automerge::transaction::{CommitOptions, Transactable};
        use automerge::{ActorId, Automerge, AutomergeError, ObjType, ROOT, ScalarValue};
        let mut doc = Automerge::new().with_actor(ActorId::from(actor.as_bytes().as_slice()));
        let options = CommitOptions::default()
            .with_time(1_700_000_000_000)
            .with_message(format!("add assessment {id}"));
        doc.transact_with::<_, _, AutomergeError, _>(
            |_| options,
            |tx| {
                let obj = tx.put_object(ROOT, format!("a/{id}"), ObjType::Map)?;
                tx.put(&obj, "category", "algorithmic-bias")?;
                tx.put(&obj, "title", "An ordinary-looking assessment")?;
                tx.put(&obj, "status", "open")?;
                tx.put(&obj, "created_at", ScalarValue::Timestamp(created_at_ms))?;
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("forge change: {e:?}"));
        doc.get_last_local_change()
            .unwrap_or_else(|| panic!("forge change: none made"))
            .raw_bytes()
            .to_vec()
    }

    /// Signs `change` with `signer` for the network of `genesis_file`.
    pub fn envelope(signer: &Identity, genesis_file: &Path, change: Vec<u8>) -> Envelope {
        let genesis = read_genesis(genesis_file);
        Envelope::sign(signer, genesis.network_id(), change).unwrap_or_else(|e| panic!("sign: {e}"))
    }

    pub fn read_genesis(path: &Path) -> Genesis {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read genesis: {e}"));
        Genesis::decode(&bytes).unwrap_or_else(|e| panic!("decode genesis: {e}"))
    }

    /// Writes a bundle of `envelopes` (as raw bytes) for `genesis_file`'s network.
    pub fn bundle(dir: &Path, name: &str, genesis_file: &Path, envelopes: Vec<Vec<u8>>) -> PathBuf {
        let genesis = std::fs::read(genesis_file).unwrap_or_else(|e| panic!("read genesis: {e}"));
        let bundle = Bundle {
            genesis,
            records: Vec::new(),
            envelopes: envelopes.into_iter().map(EnvelopeBytes).collect(),
        };
        let path = dir.join(name);
        std::fs::write(&path, bundle.encode()).unwrap_or_else(|e| panic!("write bundle: {e}"));
        path
    }
}

/// Live nodes in this process, on 127.0.0.1 with OS-chosen ports, and
/// waits on conditions with deadlines.
pub mod live {
    use std::future::Future;
    use std::time::Duration;

    use concord_node::api::{AssessmentInput, Request, Response, StatusView};
    use concord_node::config::DataDir;
    use concord_node::genesis::Genesis;
    use concord_node::network::Multiaddr;
    use concord_node::node::{self, NodeConfig, NodeHandle, RunningNode};
    use concord_node::replica::Replica;
    use concord_node::roster::{Role, RosterEntry};
    use tempfile::TempDir;

    /// How long any convergence may take before a test fails.
    pub const DEADLINE: Duration = Duration::from_secs(30);

    /// One node's data directory, and the node when it runs.
    #[derive(Debug)]
    pub struct LiveNode {
        pub name: String,
        pub dir: TempDir,
        pub running: Option<RunningNode>,
    }

    impl LiveNode {
        pub fn data_dir(&self) -> DataDir {
            DataDir::new(self.dir.path())
        }

        /// Starts the node, dialling `bootstrap` (each ending in /p2p/<id>).
        pub async fn start(&mut self, bootstrap: Vec<Multiaddr>) {
            assert!(self.running.is_none(), "{} is already running", self.name);
            let node = node::start(NodeConfig {
                data_dir: self.data_dir(),
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
                bootstrap,
                mdns: false,
                api: "127.0.0.1:0".parse().expect("addr"),
                web: Some("127.0.0.1:0".parse().expect("addr")),
                web_hosts: Vec::new(),
                faults: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{} does not start: {e}", self.name));
            self.running = Some(node);
        }

        pub async fn stop(&mut self) {
            let node = self.running.take().expect("running");
            node.shutdown()
                .await
                .unwrap_or_else(|e| panic!("{} does not stop cleanly: {e}", self.name));
        }

        pub fn handle(&self) -> NodeHandle {
            self.running.as_ref().expect("running").handle()
        }

        /// The URL of the node's web view, e.g. `http://127.0.0.1:PORT`.
        pub fn web_url(&self) -> String {
            let addr = self.running.as_ref().expect("running").web;
            format!("http://{}", addr.expect("live nodes serve the web view"))
        }

        /// Addresses to bootstrap from this node.
        pub fn addresses(&self) -> Vec<Multiaddr> {
            self.running.as_ref().expect("running").addresses()
        }

        pub async fn call(&self, request: Request) -> Response {
            self.handle()
                .call(request)
                .await
                .unwrap_or_else(|e| panic!("{}: {}", self.name, e.error))
        }

        pub async fn status(&self) -> StatusView {
            match self.call(Request::Status).await {
                Response::Status(s) => *s,
                other => panic!("unexpected {other:?}"),
            }
        }

        /// Adds an assessment through the node's API; returns its id.
        pub async fn write(&self, title: &str) -> String {
            match self
                .call(Request::AddAssessment(AssessmentInput {
                    category: "algorithmic-bias".into(),
                    title: title.into(),
                    status: "open".into(),
                    ..AssessmentInput::default()
                }))
                .await
            {
                Response::Written(w) => w.id,
                other => panic!("unexpected {other:?}"),
            }
        }

        /// Everything a user sees, as JSON text (identical on converged nodes).
        pub async fn state(&self) -> String {
            let a = self
                .call(Request::ListAssessments {
                    category: None,
                    status: None,
                })
                .await;
            let n = self.call(Request::ListNotes).await;
            let r = self.call(Request::Report).await;
            serde_json::to_string(&(a, n, r)).expect("json")
        }
    }

    /// Logs to the test output when `RUST_LOG` is set (e.g. `concord_node=debug`).
    fn init_logs() {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    }

    /// Initialised, joined data directories for `members` then `observers`.
    pub fn federation(members: &[&str], observers: &[&str]) -> (Vec<LiveNode>, Genesis) {
        federation_with_quorum(members, observers, None)
    }

    /// A node that is not on the founding roster: initialised, and joined to
    /// `genesis` as pending (a quorum may admit it later).
    pub fn outsider(name: &str, genesis: &Genesis) -> LiveNode {
        let dir = tempfile::Builder::new()
            .prefix("concord-live-")
            .tempdir()
            .expect("tempdir");
        let data = DataDir::new(dir.path());
        Replica::init(&data, name).expect("init");
        Replica::open(&data)
            .expect("open")
            .join_pending(genesis.clone())
            .expect("join");
        LiveNode {
            name: name.to_string(),
            dir,
            running: None,
        }
    }

    /// Like [`federation`], with the quorum given (default: a majority).
    pub fn federation_with_quorum(
        members: &[&str],
        observers: &[&str],
        quorum: Option<u32>,
    ) -> (Vec<LiveNode>, Genesis) {
        init_logs();
        let mut nodes: Vec<LiveNode> = members
            .iter()
            .chain(observers)
            .map(|name| {
                let dir = tempfile::Builder::new()
                    .prefix("concord-live-")
                    .tempdir()
                    .expect("tempdir");
                Replica::init(&DataDir::new(dir.path()), name).expect("init");
                LiveNode {
                    name: name.to_string(),
                    dir,
                    running: None,
                }
            })
            .collect();
        let mut replicas: Vec<Replica> = nodes
            .iter()
            .map(|n| Replica::open(&n.data_dir()).expect("open"))
            .collect();
        let roster = replicas
            .iter()
            .zip(&nodes)
            .enumerate()
            .map(|(i, (r, n))| RosterEntry {
                key: r.identity().public(),
                name: n.name.clone(),
                role: if i < members.len() {
                    Role::Member
                } else {
                    Role::Observer
                },
            })
            .collect();
        let genesis = replicas[0]
            .create_network("Live test", roster, quorum)
            .expect("create");
        for r in &mut replicas[1..] {
            r.join(genesis.clone()).expect("join");
        }
        drop(replicas);
        for n in &mut nodes {
            n.running = None;
        }
        (nodes, genesis)
    }

    /// Waits until `condition` holds, polling, or panics after [`DEADLINE`].
    pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if condition().await {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out after {DEADLINE:?} waiting until {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every node holds `count` changes and the same heads.
    pub async fn wait_converged(nodes: &[&LiveNode], count: usize) {
        wait_until(
            &format!("all nodes hold the same {count} changes"),
            || async {
                let mut heads = Vec::new();
                for n in nodes {
                    let s = n.status().await;
                    if s.envelopes != count {
                        return false;
                    }
                    heads.push(s.heads);
                }
                heads.windows(2).all(|w| w[0] == w[1])
            },
        )
        .await;
    }
}

/// A test-only peer that speaks the sync protocol (or sends raw bytes on
/// it), for what a stranger or a misbehaving member might send.
pub mod rogue {
    use std::time::Duration;

    use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;
    use libp2p::{Multiaddr, StreamProtocol, Swarm, identity, noise, tcp, yamux};

    use concord_node::network::{SyncCodec, WireRequest};
    use concord_node::sync;

    /// What came back.
    #[derive(Debug)]
    pub enum Outcome<R> {
        /// The node answered.
        Answered(R),
        /// The request failed (connection refused or closed, timeout).
        Failed(String),
    }

    /// The result of one rogue exchange.
    #[derive(Debug)]
    pub struct Exchange<R> {
        pub outcome: Outcome<R>,
        /// Whether the node closed the connection afterwards.
        pub disconnected: bool,
    }

    /// A libp2p peer speaking the sync protocol with `codec` over TCP,
    /// noise and yamux, as the node does: the rogue's, and the hostile
    /// tests' attackers'.
    pub fn swarm<C>(
        key: identity::Keypair,
        codec: C,
        support: ProtocolSupport,
        config: request_response::Config,
        idle: Duration,
    ) -> Swarm<request_response::Behaviour<C>>
    where
        C: request_response::Codec<Protocol = StreamProtocol> + Clone + Send + 'static,
    {
        libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap_or_else(|e| panic!("transport: {e}"))
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    codec,
                    [(StreamProtocol::new(sync::PROTOCOL), support)],
                    config,
                )
            })
            .unwrap_or_else(|e| panic!("behaviour: {e}"))
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build()
    }

    async fn exchange<C>(
        key: identity::Keypair,
        codec: C,
        addr: Multiaddr,
        request: C::Request,
    ) -> Exchange<C::Response>
    where
        C: request_response::Codec<Protocol = StreamProtocol> + Clone + Send + 'static,
    {
        let mut swarm = swarm(
            key,
            codec,
            ProtocolSupport::Full,
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            Duration::from_secs(60),
        );
        let (peer, _) = concord_node::network::split_peer(&addr).expect("address ends in /p2p");
        swarm.dial(addr).unwrap_or_else(|e| panic!("dial: {e}"));
        swarm.behaviour_mut().send_request(&peer, request);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut outcome = None;
        let mut disconnected = false;
        while tokio::time::Instant::now() < deadline && !(outcome.is_some() && disconnected) {
            let event = match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
                Ok(event) => event,
                Err(_) => break,
            };
            match event {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => outcome = Some(Outcome::Answered(response)),
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => {
                    outcome.get_or_insert(Outcome::Failed(error.to_string()));
                }
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                }
                | SwarmEvent::OutgoingConnectionError { .. } => disconnected = true,
                _ => {}
            }
            // A node that keeps the connection open is not going to drop it:
            // after an answer, give it a short while, then report.
            // (The node's own requests to this peer keep events coming, so
            // the grace is one span, not one per event.)
            if matches!(outcome, Some(Outcome::Answered(_))) && !disconnected {
                let grace = tokio::time::Instant::now() + Duration::from_secs(3);
                while let Ok(event) = tokio::time::timeout_at(grace, swarm.select_next_some()).await
                {
                    if let SwarmEvent::ConnectionClosed {
                        num_established: 0, ..
                    } = event
                    {
                        disconnected = true;
                        break;
                    }
                }
                break;
            }
        }
        Exchange {
            outcome: outcome.unwrap_or(Outcome::Failed("no answer before the deadline".into())),
            disconnected,
        }
    }

    /// Sends one sync request as the holder of `key`.
    pub async fn request(
        key: identity::Keypair,
        addr: Multiaddr,
        request: sync::Request,
    ) -> Exchange<sync::Response> {
        exchange(key, SyncCodec::default(), addr, WireRequest::Valid(request)).await
    }

    /// Sends `bytes` as-is on the sync protocol and reads whatever comes back.
    pub async fn raw(key: identity::Keypair, addr: Multiaddr, bytes: Vec<u8>) -> Exchange<Vec<u8>> {
        exchange(key, RawCodec, addr, bytes).await
    }

    /// Writes a request's bytes unframed; reads a response to its end.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct RawCodec;

    async fn read_all<T: AsyncRead + Unpin + Send>(io: &mut T) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(1 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn write_all<T: AsyncWrite + Unpin + Send>(
        io: &mut T,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        io.write_all(bytes).await?;
        io.close().await
    }

    impl request_response::Codec for RawCodec {
        type Protocol = StreamProtocol;
        type Request = Vec<u8>;
        type Response = Vec<u8>;

        async fn read_request<T>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
        ) -> std::io::Result<Vec<u8>>
        where
            T: AsyncRead + Unpin + Send,
        {
            read_all(io).await
        }

        async fn read_response<T>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
        ) -> std::io::Result<Vec<u8>>
        where
            T: AsyncRead + Unpin + Send,
        {
            read_all(io).await
        }

        async fn write_request<T>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            req: Vec<u8>,
        ) -> std::io::Result<()>
        where
            T: AsyncWrite + Unpin + Send,
        {
            write_all(io, &req).await
        }

        async fn write_response<T>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            res: Vec<u8>,
        ) -> std::io::Result<()>
        where
            T: AsyncWrite + Unpin + Send,
        {
            write_all(io, &res).await
        }
    }
}

/// `concord run` as a separate process, driven through its local API over
/// HTTP (no CLI process per call), killable with SIGKILL, and measurable
/// through `/proc/<pid>/status`.
pub mod process {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use concord_node::api::server::{ApiError, ApiFile, IMPORT_PATH, RPC_PATH};
    use concord_node::api::{Request, Response};

    use super::concord_bin;

    /// How long a node may take to serve its API after it was spawned.
    pub const START_DEADLINE: Duration = Duration::from_secs(30);

    /// A running `concord run`.
    #[derive(Debug)]
    pub struct Proc {
        child: Child,
        dir: PathBuf,
        stderr: PathBuf,
        api: Api,
    }

    /// Why a node did not come up.
    #[derive(Debug)]
    pub struct StartFailure {
        pub code: Option<i32>,
        pub stderr: String,
    }

    impl Proc {
        /// Spawns `concord --data-dir DIR run --listen /ip4/127.0.0.1/tcp/0
        /// EXTRA...` and waits until its API answers. Its stderr goes to
        /// `DIR/run-stderr.log` (replaced at each start).
        pub fn start(dir: &Path, extra: &[&str]) -> Result<Self, StartFailure> {
            let stderr_path = dir.join("run-stderr.log");
            let stderr = std::fs::File::create(&stderr_path).expect("stderr log");
            let mut child = Command::new(concord_bin())
                .arg("--data-dir")
                .arg(dir)
                .args(["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
                .args(extra)
                .env_remove("CONCORD_DATA_DIR")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn concord run");
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    return Err(StartFailure {
                        code: status.code(),
                        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                    });
                }
                // A file left by an earlier (killed) run names another pid.
                if let Some(file) = ApiFile::read(dir).filter(|f| f.pid == child.id()) {
                    let api = Api::new(&file);
                    if api.call(&Request::Status).is_ok() {
                        return Ok(Self {
                            child,
                            dir: dir.to_path_buf(),
                            stderr: stderr_path,
                            api,
                        });
                    }
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "concord run in {} did not serve its API within {START_DEADLINE:?}:\n{}",
                        dir.display(),
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        pub fn dir(&self) -> &Path {
            &self.dir
        }

        /// A client of this node's API, usable from other threads.
        pub fn api(&self) -> Api {
            self.api.clone()
        }

        /// What the node wrote to stderr so far.
        pub fn stderr(&self) -> String {
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        }

        /// SIGKILL, then reaps the process.
        pub fn kill(mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        /// SIGTERM, then waits for the exit code.
        pub fn stop(mut self) -> Option<i32> {
            sigterm_and_wait(&mut self.child, Duration::from_secs(30))
        }

        /// Whether the process is still running.
        pub fn alive(&mut self) -> bool {
            matches!(self.child.try_wait(), Ok(None))
        }

        /// (VmRSS, VmHWM) of the process, in KiB, from `/proc/<pid>/status`.
        pub fn memory_kib(&self) -> (u64, u64) {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
                .expect("/proc/<pid>/status");
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in /proc status"))
            };
            (field("VmRSS:"), field("VmHWM:"))
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }

    /// The local API of a running node.
    #[derive(Clone, Debug)]
    pub struct Api {
        agent: ureq::Agent,
        /// `http://ADDRESS`, to which the route is appended.
        base: String,
        token: String,
    }

    impl Api {
        fn new(file: &ApiFile) -> Self {
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(2)))
                // A full list or verify of a large store in the debug build.
                .timeout_global(Some(Duration::from_secs(120)))
                .build();
            Self {
                agent: config.into(),
                base: format!("http://{}", file.address),
                token: file.token.clone(),
            }
        }

        /// One call; `Err` holds the node's error or the transport failure.
        /// An import goes as the bundle's bytes to its own route, as the
        /// CLI sends it.
        pub fn call(&self, request: &Request) -> Result<Response, String> {
            let authorization = format!("Bearer {}", self.token);
            let sent = match request {
                Request::Import { bundle } => self
                    .agent
                    .post(&format!("{}{IMPORT_PATH}", self.base))
                    .header("Authorization", &authorization)
                    .send(&bundle[..]),
                other => self
                    .agent
                    .post(&format!("{}{RPC_PATH}", self.base))
                    .header("Authorization", &authorization)
                    .send_json(other),
            };
            let mut answer = sent.map_err(|e| format!("no answer: {e}"))?;
            let status = answer.status();
            let body = answer
                .body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_vec()
                .map_err(|e| format!("answer cut short: {e}"))?;
            if status.is_success() {
                serde_json::from_slice(&body).map_err(|e| format!("malformed answer: {e}"))
            } else {
                Err(serde_json::from_slice::<ApiError>(&body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| format!("HTTP {status}")))
            }
        }

        /// The node's status; panics if it does not answer.
        pub fn status(&self) -> concord_node::api::StatusView {
            match self.call(&Request::Status) {
                Ok(Response::Status(s)) => *s,
                other => panic!("status: {other:?}"),
            }
        }
    }

    /// Sends SIGTERM to `child` and waits up to `limit` for its exit code;
    /// panics if it is still running then.
    pub fn sigterm_and_wait(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the process did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A seeded generator, seeded from `var` if set, else from the clock;
    /// prints the seed, so a failing run can be replayed.
    pub fn seeded_rng(var: &str) -> rand_pcg::Pcg64 {
        use rand::SeedableRng;
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("seed: {var}={seed}");
        rand_pcg::Pcg64::seed_from_u64(seed)
    }
}
