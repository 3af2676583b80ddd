//! The command line, as clap definitions. Parsing only: every command is
//! carried out in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Concord: a federated, signed register of AI-risk assessments and consensus notes.
#[derive(Debug, Parser)]
#[command(name = "concord", version)]
pub struct Cli {
    /// The node's data directory [default: the platform's data dir, e.g. ~/.local/share/concord]
    #[arg(long, global = true, env = "CONCORD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log filter for diagnostics on stderr, e.g. `info` or `concord_node=debug`
    #[arg(
        long,
        global = true,
        env = "RUST_LOG",
        default_value = "warn",
        value_name = "FILTER"
    )]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this institution's key and config
    Init {
        /// The institution's display name
        #[arg(long)]
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Print this node's name, node id, public key and fingerprint
    Id(JsonFlag),
    /// Create, join or show the network
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Print the risk taxonomy, or extend it
    Categories(CategoriesArgs),
    /// Risk assessments
    #[command(subcommand)]
    Assess(AssessCommand),
    /// Consensus notes and positions
    #[command(subcommand)]
    Note(NoteCommand),
    /// Write a bundle of signed changes to a file, for another node to import
    Export {
        /// The bundle file to write
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Only changes not already known to a node at these heads (comma-separated hashes)
        #[arg(long, value_name = "HEADS", value_delimiter = ',')]
        since: Vec<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Verify a bundle and apply all of it or nothing
    Import {
        /// The bundle file to read
        file: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Re-verify every stored change and report per author
    Verify(JsonFlag),
    /// Print the briefing: open assessments, consensus and divergence per category
    Report {
        #[arg(long, value_enum, default_value_t = ReportFormat::Markdown)]
        format: ReportFormat,
        /// Only the notes of this dialogue round: track-ii, intergovernmental or multilateral
        #[arg(long, value_name = "ROUND")]
        round: Option<String>,
        /// Show the state of this attested checkpoint (an id, or `latest`) instead of the
        /// current one; the file then embeds the attestation for `checkpoint verify`
        #[arg(long, value_name = "ID")]
        checkpoint: Option<String>,
        /// Write to this file instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Sign, list and verify attested checkpoints of the shared state
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Every signed change that touched one item (assessment, note or category)
    History {
        /// ra-…, cn-… or a category key
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Run the node: sync with peers and serve the local API until stopped
    Run(RunArgs),
    /// Show the node: id, network, addresses, changes, peers, last sync
    Status(JsonFlag),
    /// Show every roster entry: role, connection, addresses, what each side lacks
    Peers(JsonFlag),
    /// Roster changes by quorum: propose, approve, list
    #[command(subcommand)]
    Member(MemberCommand),
    /// This node's key: rotate it
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run a live local federation on embedded defaults and show it converge
    Demo(DemoArgs),
    /// Measure ingest, restart, sync, reconciliation and footprint against raw baselines
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How many signed changes to generate (10000, 100000 and 1000000 are documented)
    #[arg(long, default_value_t = 100_000)]
    pub changes: usize,
    /// Run only these groups: store, sync, propagation, writers, durable, scale (comma-separated);
    /// sync is the store group's initial sync between two processes alone, for large --changes
    #[arg(long, value_delimiter = ',', value_name = "GROUPS")]
    pub only: Vec<String>,
    /// Nodes in the propagation line and mesh
    #[arg(long, default_value_t = 10)]
    pub propagation_nodes: usize,
    /// Changes timed in each propagation run
    #[arg(long, default_value_t = 200)]
    pub propagation_changes: usize,
    /// How long the many-writers run lasts, in seconds
    #[arg(long, default_value_t = 60)]
    pub writers_seconds: u64,
    /// Changes written through the local API in the durable-writes run
    #[arg(long, default_value_t = 500)]
    pub durable_changes: usize,
    /// Nodes in the scale run, each writing --scale-changes changes
    #[arg(long, default_value_t = 50)]
    pub scale_nodes: usize,
    #[arg(long, default_value_t = 100)]
    pub scale_changes: usize,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A libp2p address to listen on, e.g. /ip4/0.0.0.0/tcp/7411 (repeatable)
    /// [default: the config's, else TCP and QUIC on port 7411]
    #[arg(
        long,
        env = "CONCORD_LISTEN",
        value_delimiter = ',',
        value_name = "MULTIADDR"
    )]
    pub listen: Vec<String>,
    /// A peer to dial at start, ending in /p2p/<node id> (repeatable)
    #[arg(
        long,
        env = "CONCORD_BOOTSTRAP",
        value_delimiter = ',',
        value_name = "MULTIADDR"
    )]
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS
    #[arg(long, env = "CONCORD_MDNS")]
    pub mdns: bool,
    /// Address of the local API, loopback only [default: 127.0.0.1:0]
    #[arg(long, env = "CONCORD_API", value_name = "ADDR")]
    pub api: Option<std::net::SocketAddr>,
    /// Address of the read-only web view, e.g. 127.0.0.1:7412
    /// [default: the config's, else 127.0.0.1 on a port the OS picks]
    #[arg(
        long,
        env = "CONCORD_WEB",
        value_name = "ADDR",
        conflicts_with = "no_web"
    )]
    pub web: Option<std::net::SocketAddr>,
    /// Serve no web view
    #[arg(long)]
    pub no_web: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's data directories here instead of a temporary directory
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the nodes running after the story, print the observer's web view URL,
    /// and stop on Ctrl-C
    #[arg(long)]
    pub keep_running: bool,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON (stable field names, see docs/json.md)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Markdown,
    Html,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Sign the current state (co-signing a checkpoint of the same state if there is one),
    /// or the checkpoint given; members only. The signature syncs like any change
    Sign {
        /// Co-sign this checkpoint (its id, as `checkpoint list` prints it)
        #[arg(long, value_name = "ID")]
        checkpoint: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List checkpoints with their signers and whether each is attested
    List(JsonFlag),
    /// Check a bundle or an exported report against an attested checkpoint, offline,
    /// with only the genesis. Exit code 3 when the file does not verify
    Verify {
        /// A bundle (`concord export`) or a report (`concord report --checkpoint ...`)
        file: PathBuf,
        /// The network's genesis file [default: the genesis of the network this node joined]
        #[arg(long, value_name = "FILE")]
        genesis: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network with this node as founding member and write its genesis file
    Create {
        /// The network's name
        #[arg(long)]
        name: String,
        /// A founding member, as NODE_ID=NAME (repeatable; this node is added if absent)
        #[arg(long = "member", value_name = "ID=NAME")]
        members: Vec<String>,
        /// A founding observer, as NODE_ID=NAME (repeatable)
        #[arg(long = "observer", value_name = "ID=NAME")]
        observers: Vec<String>,
        /// Member signatures a roster change needs [default: a majority of members]
        #[arg(long)]
        quorum: Option<u32>,
        /// Where to write the genesis file
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Verify a genesis file and join its network
    Join {
        /// The genesis file
        file: PathBuf,
        /// Join although the founding roster does not name this node: a
        /// quorum of members admits it later with `member propose add`
        #[arg(long)]
        pending: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show the network and its roster
    Show(JsonFlag),
    /// Recover from a corrupt store: move it aside and start an empty one
    /// that sync refills from peers (the node must be stopped)
    Recover {
        /// The network's genesis file
        file: PathBuf,
        /// This node was admitted after the founding (as with `join --pending`)
        #[arg(long)]
        pending: bool,
    },
    /// After `network recover`, or in a directory restored from a copy of the
    /// key: say the node holds all of its key's changes (it has caught up, or
    /// the key never wrote), so it may write again
    Resynced,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CategoriesArgs {
    #[command(subcommand)]
    pub command: Option<CategoriesCommand>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum CategoriesCommand {
    /// Add a category to the shared taxonomy (signed and synced like any change)
    Add {
        /// Its key: 2-48 lowercase letters, digits and hyphens
        key: String,
        /// Its group: technological-safety, application-security or beneficial-use
        #[arg(long)]
        group: String,
        /// Its title
        #[arg(long)]
        title: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AssessCommand {
    /// Add a risk assessment; prints its id
    Add {
        /// Category key (see `concord categories`)
        #[arg(long)]
        category: String,
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        summary: String,
        /// 1 (rare) to 5 (almost certain)
        #[arg(long)]
        likelihood: Option<i64>,
        /// 1 (minor) to 5 (catastrophic)
        #[arg(long)]
        severity: Option<i64>,
        /// A mitigation (repeatable)
        #[arg(long = "mitigation", value_name = "TEXT")]
        mitigations: Vec<String>,
        /// draft, open, accepted or retired
        #[arg(long, default_value = "draft")]
        status: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List assessments
    List {
        #[arg(long)]
        category: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show one assessment, with its comments and any conflicting edits
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Change fields of an assessment
    Update {
        id: String,
        #[arg(long)]
        category: Option<String>,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        summary: Option<String>,
        #[arg(long)]
        likelihood: Option<i64>,
        #[arg(long)]
        severity: Option<i64>,
        /// Replaces the list of mitigations (repeatable)
        #[arg(long = "mitigation", value_name = "TEXT")]
        mitigations: Vec<String>,
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Comment on an assessment
    Comment {
        id: String,
        text: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum NoteCommand {
    /// Add a consensus note; prints its id
    Add {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        body: String,
        /// agenda, consensus, divergence or review
        #[arg(long, default_value = "agenda")]
        kind: String,
        /// track-ii, intergovernmental or multilateral
        #[arg(long)]
        round: Option<String>,
        /// An assessment the note concerns (repeatable)
        #[arg(long = "assessment", value_name = "ID")]
        assessments: Vec<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List notes with their derived standing
    List(JsonFlag),
    /// Show one note with every institution's position
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Record this institution's position on a note
    Position {
        id: String,
        /// agree, disagree, reservation or abstain
        position: String,
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Propose a roster change, signed by this member; prints the proposal id
    #[command(subcommand)]
    Propose(ProposeCommand),
    /// Sign a pending proposal (its id, or a unique prefix of 4 or more hex digits)
    Approve {
        id: String,
        /// Sign even if the proposal's claim about its target's last change
        /// is not what this node holds (changes this node has not seen count,
        /// or changes it holds are cut)
        #[arg(long)]
        confirm_claims: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List pending proposals with who signed them
    Proposals {
        /// Include proposals already in force or void
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show the roster in force: roles, since when, keys that left
    List(JsonFlag),
}

#[derive(Debug, Subcommand)]
pub enum ProposeCommand {
    /// Admit an institution's node as a member or observer
    Add {
        /// Its node id (from its `concord id`)
        id: String,
        #[arg(long)]
        name: String,
        /// member or observer
        #[arg(long, value_parser = ["member", "observer"])]
        role: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Take a node off the roster; its later changes are rejected everywhere
    Remove {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Make a member an observer, or an observer a member
    Role {
        id: String,
        #[arg(value_parser = ["member", "observer"])]
        role: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Change how many member signatures a roster change needs
    Quorum {
        quorum: u32,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Replace this node's key: a succession signed by the old and the new key
    /// is published, and the node goes on under the new identity
    Rotate(JsonFlag),
}
