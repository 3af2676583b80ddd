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
            envelopes: envelopes.into_iter().map(EnvelopeBytes).collect(),
        };
        let path = dir.join(name);
        std::fs::write(&path, bundle.encode()).unwrap_or_else(|e| panic!("write bundle: {e}"));
        path
    }
}
