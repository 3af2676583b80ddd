//! The local API: one typed request per CLI command, and [`execute`], which
//! carries a request out on a [`Replica`].
//!
//! The CLI builds a [`Request`] from its flags and either executes it on the
//! store itself (node stopped) or sends it to the running node over HTTP on
//! 127.0.0.1 (see [`server`]), where the node executes it on its own replica
//! and pushes any new change to its peers. Both paths run the same code, so a
//! command behaves the same either way. Only the types here cross the process
//! boundary, as JSON.

pub mod proof;
pub mod server;

use automerge::ChangeHash;
use serde::{Deserialize, Serialize};

use crate::ReplicaError;
use crate::checkpoint::{Briefing, Checkpoints};
use crate::doc::{AssessmentUpdate, NewAssessment, NewNote};
use crate::genesis::Genesis;
use crate::governance::{Governance, MotionKind, Op, Standing};
use crate::history::History;
use crate::identity::NodeId;
use crate::model::{
    AssessmentView, NoteKind, NoteView, Round, Score, Stance, Status, ValueError, format_time,
};
use crate::replica::{AssessmentFilter, Audit, IdentitySummary, ImportSummary, Replica};
use crate::report::{self, Report};
use crate::roster::{Departure, Role, Roster};
use crate::taxonomy::Category;

/// A new assessment as typed by a user; validated by [`execute`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AssessmentInput {
    pub category: String,
    pub title: String,
    pub summary: String,
    pub likelihood: Option<i64>,
    pub severity: Option<i64>,
    pub mitigations: Vec<String>,
    pub status: String,
}

/// Fields to change on an assessment, as typed; `None` keeps a field.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpdateInput {
    pub category: Option<String>,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub likelihood: Option<i64>,
    pub severity: Option<i64>,
    pub mitigations: Option<Vec<String>>,
    pub status: Option<String>,
}

/// A new note as typed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NoteInput {
    pub topic: String,
    pub body: String,
    pub kind: String,
    pub round: Option<String>,
    pub assessments: Vec<String>,
}

/// Every operation the CLI can ask of a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Identity,
    NetworkShow,
    Categories,
    AddCategory {
        key: String,
        group: String,
        title: String,
    },
    AddAssessment(AssessmentInput),
    ListAssessments {
        category: Option<String>,
        status: Option<String>,
    },
    ShowAssessment {
        id: String,
    },
    UpdateAssessment {
        id: String,
        update: UpdateInput,
    },
    Comment {
        id: String,
        text: String,
    },
    AddNote(NoteInput),
    ListNotes,
    ShowNote {
        id: String,
    },
    Position {
        id: String,
        position: String,
        comment: String,
    },
    /// `since` holds change hashes in hex.
    Export {
        since: Vec<String>,
    },
    /// A whole bundle file.
    Import {
        #[serde(with = "base64_bytes")]
        bundle: Vec<u8>,
    },
    Verify,
    Report,
    Status,
    Peers,
    /// `member propose ...`.
    Propose(ProposalInput),
    /// `member approve ID` (a unique prefix of the proposal id).
    /// `confirm_claims` signs it even when its claim about its target's
    /// chain is not what this node holds (absent: false).
    Approve {
        id: String,
        #[serde(default)]
        confirm_claims: bool,
    },
    /// `member proposals`; `all` includes settled ones.
    Proposals {
        all: bool,
    },
    /// `member list`.
    Members,
    /// `key rotate`.
    RotateKey,
    /// Several local writes (adds, updates, comments, notes, positions,
    /// categories) committed as one group with one flush. They run in order;
    /// the first that fails stops the batch, and its error names its index
    /// (the writes before it stand).
    Batch {
        requests: Vec<Request>,
    },
    /// Every checkpoint and how far it is attested.
    Checkpoints,
    /// Sign checkpoint `checkpoint` (an id), or the current state.
    SignCheckpoint {
        #[serde(default)]
        checkpoint: Option<String>,
    },
    /// The briefing for a round, at an attested checkpoint or now.
    Briefing {
        #[serde(default)]
        round: Option<String>,
        #[serde(default)]
        checkpoint: Option<String>,
    },
    /// Every change that touched one item.
    History {
        id: String,
    },
    /// The network's genesis file, for checks made with it.
    Genesis,
}

/// A roster change as typed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ProposalInput {
    Add {
        node_id: String,
        name: String,
        role: String,
    },
    Remove {
        node_id: String,
    },
    Role {
        node_id: String,
        role: String,
    },
    Quorum {
        quorum: u32,
    },
}

impl ProposalInput {
    fn to_op(&self) -> Result<Op, ReplicaError> {
        let key = |id: &str| -> Result<crate::identity::PublicKey, ReplicaError> {
            Ok(id.trim().parse::<NodeId>()?.public_key())
        };
        Ok(match self {
            ProposalInput::Add {
                node_id,
                name,
                role,
            } => Op::Add {
                key: key(node_id)?,
                name: name.trim().to_string(),
                role: parse_role(role)?,
            },
            ProposalInput::Remove { node_id } => Op::Remove { key: key(node_id)? },
            ProposalInput::Role { node_id, role } => Op::SetRole {
                key: key(node_id)?,
                role: parse_role(role)?,
            },
            ProposalInput::Quorum { quorum } => Op::SetQuorum { quorum: *quorum },
        })
    }
}

fn parse_role(text: &str) -> Result<Role, ReplicaError> {
    match text.trim() {
        "member" => Ok(Role::Member),
        "observer" => Ok(Role::Observer),
        other => Err(ReplicaError::BadProposal(format!(
            "unknown role {}; expected member or observer",
            crate::clip::quote(other)
        ))),
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Response {
    Identity(IdentitySummary),
    Network(NetworkView),
    Categories(Vec<Category>),
    Written(Written),
    Assessments(Vec<AssessmentView>),
    Assessment(Box<AssessmentView>),
    Notes(Vec<NoteView>),
    Note(Box<NoteView>),
    Exported(Exported),
    Imported(ImportSummary),
    Audit(Box<Audit>),
    Report(Box<Report>),
    Status(Box<StatusView>),
    Peers(Vec<PeerView>),
    Proposal(Box<ProposalView>),
    Proposals(Vec<ProposalView>),
    Members(Box<MembersView>),
    Rotated(Rotated),
    Batch(Vec<Response>),
    Checkpoints(Box<Checkpoints>),
    Briefing(Box<Briefing>),
    History(Box<History>),
    Genesis(GenesisFile),
}

/// A genesis file, as `Request::Genesis` returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenesisFile {
    #[serde(with = "base64_bytes")]
    pub bytes: Vec<u8>,
}

/// A roster proposal (or key succession) and where it stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProposalView {
    /// The full record id (64 hex digits); any unique prefix of 4 or more
    /// digits names it on the command line.
    pub id: String,
    /// `proposal` or `succession`.
    pub kind: String,
    /// What it does, in words.
    pub action: String,
    pub proposed_by: String,
    pub proposed_at: String,
    /// Everyone who signed it, proposer first.
    pub signers: Vec<SignerView>,
    /// Signatures that count now (distinct current members).
    pub counted: u32,
    pub quorum: u32,
    /// `pending`, `applied` or `void`.
    pub state: String,
    /// For a pending proposal, how many more member signatures it needs.
    pub needs: Option<u32>,
    /// Why a void proposal can no longer take effect.
    pub reason: Option<String>,
    /// The roster change it builds on (full record id; null: the genesis).
    #[serde(default)]
    pub after: Option<String>,
    /// The key whose chain it cuts or reopens (a removal, a role change, a
    /// succession's old key); null for the others.
    #[serde(default)]
    pub target: Option<TargetClaim>,
}

/// What a record claims of its target's chain, beside what this node holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetClaim {
    pub name: String,
    pub node_id: String,
    /// The record's claim: the target's last change number that counts once
    /// it takes effect (its cut-off).
    pub claimed_last_change: u64,
    /// The target's highest change number that counts on this node now.
    pub held_last_change: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignerView {
    pub name: String,
    pub node_id: String,
    /// Whether the signature counts toward the quorum (a current member's).
    pub counts: bool,
    /// When it says it signed (RFC 3339).
    #[serde(default)]
    pub signed_at: String,
    /// The record carrying its signature (the proposal, or its approval).
    #[serde(default)]
    pub record: String,
    /// The target's last change number it claimed to have seen (0 when the
    /// record has no target).
    #[serde(default)]
    pub seen_last_change: u64,
    /// The document heads it claimed to have seen (change hashes in hex).
    #[serde(default)]
    pub heads: Vec<String>,
    /// How many of those heads this node does not hold.
    #[serde(default)]
    pub heads_not_held: usize,
}

/// `member list`: the roster in force and the keys that left it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MembersView {
    pub quorum: u32,
    pub entries: Vec<MemberView>,
    pub former: Vec<FormerView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    pub role: String,
    pub node_id: String,
    pub fingerprint: String,
    /// Since when it holds this role (RFC 3339).
    pub since: Option<String>,
    pub this_node: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FormerView {
    pub name: String,
    pub node_id: String,
    /// `removed`, or `replaced by <node id>`.
    pub left: String,
    pub left_at: String,
    /// The last of its change numbers that counts.
    pub last_change: u64,
}

/// `key rotate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rotated {
    pub old_node_id: String,
    pub identity: IdentitySummary,
}

impl ProposalView {
    fn of(replica: &Replica, g: &Governance, motion: &crate::governance::Motion) -> Self {
        let roster = &g.roster;
        let doc = replica.document();
        let (kind, action, first) = match &motion.kind {
            MotionKind::Proposal { proposer, op } => ("proposal", op.describe(roster), *proposer),
            MotionKind::Succession { old, new } => (
                "succession",
                format!(
                    "replace the key of {} with {}",
                    roster.display_name(old),
                    new.node_id()
                ),
                *old,
            ),
        };
        let target = match &motion.kind {
            MotionKind::Proposal { op, .. } => match op {
                Op::Remove { key } | Op::SetRole { key, .. } => Some(*key),
                Op::Add { .. } | Op::SetQuorum { .. } => None,
            },
            MotionKind::Succession { old, .. } => Some(*old),
        };
        let mut signers: Vec<SignerView> = motion
            .claims
            .iter()
            .map(|(k, claim)| SignerView {
                name: roster.display_name(k),
                node_id: k.node_id().to_string(),
                counts: roster.is_member(k),
                signed_at: format_time(claim.at_ms),
                record: claim.record.to_hex(),
                seen_last_change: claim.seen.target_tip,
                heads: claim.seen.heads.iter().map(hex::encode).collect(),
                heads_not_held: claim
                    .seen
                    .heads
                    .iter()
                    .filter(|h| !doc.has_change(&ChangeHash(**h)))
                    .count(),
            })
            .collect();
        signers.sort_by_key(|s| s.node_id != first.node_id().to_string());
        let (state, needs, reason) = match &motion.standing {
            Standing::Pending { needs } => ("pending", Some(*needs), None),
            Standing::Applied { .. } => ("applied", None, None),
            Standing::Void { reason } => ("void", None, Some(reason.clone())),
        };
        Self {
            id: motion.id.to_hex(),
            kind: kind.into(),
            action,
            proposed_by: roster.display_name(&first),
            proposed_at: format_time(motion.at_ms),
            counted: signers.iter().filter(|s| s.counts).count() as u32,
            signers,
            quorum: roster.quorum(),
            state: state.into(),
            needs,
            reason,
            after: motion.after.map(|a| a.to_hex()),
            target: target.map(|key| TargetClaim {
                name: roster.display_name(&key),
                node_id: key.node_id().to_string(),
                claimed_last_change: motion.seen.target_tip,
                held_last_change: replica.held_tip(&key),
            }),
        }
    }
}

impl MembersView {
    fn of(roster: &Roster, me: &crate::identity::PublicKey) -> Self {
        Self {
            quorum: roster.quorum(),
            entries: roster
                .entries()
                .map(|e| MemberView {
                    name: e.name.clone(),
                    role: e.role.to_string(),
                    node_id: e.key.node_id().to_string(),
                    fingerprint: e.key.fingerprint(),
                    since: roster.since(&e.key).map(format_time),
                    this_node: e.key == *me,
                })
                .collect(),
            former: roster
                .former()
                .map(|(key, f)| FormerView {
                    name: f.name.clone(),
                    node_id: key.node_id().to_string(),
                    left: match f.departure {
                        Departure::Removed => "removed".into(),
                        Departure::RotatedTo(next) => format!("replaced by {}", next.node_id()),
                    },
                    left_at: format_time(f.left_ms),
                    last_change: roster
                        .spans(key)
                        .iter()
                        .filter_map(|s| s.until)
                        .max()
                        .unwrap_or(0),
                })
                .collect(),
        }
    }
}

/// What a write returns: the item's id and the hash of the signed change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Written {
    pub id: String,
    pub change: String,
}

/// An exported bundle and what it holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exported {
    #[serde(with = "base64_bytes")]
    pub bundle: Vec<u8>,
    pub changes: usize,
    pub heads: Vec<String>,
}

/// `network show`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkView {
    pub name: String,
    pub network_id: String,
    pub created_at: String,
    pub created_by: String,
    pub quorum: u32,
    pub roster: Vec<RosterView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RosterView {
    pub name: String,
    pub role: String,
    pub node_id: String,
    pub fingerprint: String,
}

impl NetworkView {
    /// The network's genesis with the roster in force.
    pub fn of(genesis: &Genesis, roster: &Roster) -> Self {
        Self {
            name: genesis.name().to_string(),
            network_id: genesis.network_id().to_string(),
            created_at: format_time(genesis.body().created_at_ms),
            created_by: roster.display_name(&genesis.body().creator),
            quorum: roster.quorum(),
            roster: roster
                .entries()
                .map(|e| RosterView {
                    name: e.name.clone(),
                    role: e.role.to_string(),
                    node_id: e.key.node_id().to_string(),
                    fingerprint: e.key.fingerprint(),
                })
                .collect(),
        }
    }
}

/// `concord status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusView {
    /// False when the node is not running (the CLI read the store directly).
    pub running: bool,
    pub node_id: String,
    pub name: String,
    pub network: Option<String>,
    pub network_id: Option<String>,
    pub listen: Vec<String>,
    pub api: Option<String>,
    pub envelopes: usize,
    pub heads: Vec<String>,
    pub connected: Vec<String>,
    pub last_sync: Option<String>,
    /// Every author's highest stored change number, by node id.
    pub tips: std::collections::BTreeMap<String, u64>,
    /// Sync bytes sent and received since the node started (0 when stopped).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Store flushes since the node started (one per acknowledged group of
    /// local writes, one per batch of changes from peers).
    pub flushes: u64,
    /// The web view's URL, when the running node serves one.
    #[serde(default)]
    pub web: Option<String>,
    /// The store was recovered empty (`concord network recover`) and
    /// re-syncs from peers: local writes are refused until the operator runs
    /// `concord network resynced`.
    #[serde(default)]
    pub resyncing: bool,
    /// Members proven to have signed two versions of one change number,
    /// and where: none of their changes from there on count.
    #[serde(default)]
    pub forks: Vec<ForkView>,
    /// This node's first change that no longer counts, when its chain ends
    /// in such changes: it writes nothing more until its key is rotated,
    /// which carries them over.
    #[serde(default)]
    pub tainted_from: Option<u64>,
    /// This data directory did not make the node's key and has not yet
    /// learned the key's chain from a member: it signs nothing until then.
    #[serde(default)]
    pub chain_unknown: bool,
}

/// A key frozen by a proven fork (see `concord_node::fork`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ForkView {
    pub node_id: String,
    pub name: String,
    /// The change number it signed twice; its changes from here on do not
    /// count.
    pub fork_at: u64,
}

/// The forks a replica holds proofs of, for display.
pub fn fork_views(replica: &Replica) -> Vec<ForkView> {
    let roster = replica.roster().ok();
    replica
        .frozen()
        .iter()
        .map(|(key, seq)| ForkView {
            node_id: key.node_id().to_string(),
            name: roster.map(|r| r.display_name(key)).unwrap_or_default(),
            fork_at: *seq,
        })
        .collect()
}

/// One roster entry as `concord peers` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerView {
    pub node_id: String,
    pub name: String,
    pub role: String,
    /// True for this node's own entry.
    pub this_node: bool,
    pub connected: bool,
    pub addresses: Vec<String>,
    pub last_seen: Option<String>,
    /// Changes we hold that the peer lacks, as of the last exchange (None
    /// when we have never exchanged with it).
    pub they_lack: Option<u64>,
    /// Changes the peer holds that we lack, as of the last exchange.
    pub we_lack: Option<u64>,
    /// The last ping round trip to the peer, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The change number this key signed twice, when a fork is proven:
    /// its changes from there on do not count.
    #[serde(default)]
    pub forked_at: Option<u64>,
}

/// Carries out a request on a replica. `Status` and `Peers` describe a
/// stopped node here; the running node answers them itself.
pub fn execute(replica: &mut Replica, request: Request) -> Result<Response, ReplicaError> {
    check_ids(&request)?;
    Ok(match request {
        Request::Identity => Response::Identity(replica.summary()),
        Request::NetworkShow => {
            let genesis = replica.genesis().ok_or(ReplicaError::NoNetwork)?;
            Response::Network(NetworkView::of(genesis, replica.roster()?))
        }
        Request::Categories => Response::Categories(replica.categories()),
        Request::AddCategory { key, group, title } => {
            let change = replica.add_category(&key, &group, &title)?;
            Response::Written(Written {
                id: key,
                change: change.to_string(),
            })
        }
        Request::AddAssessment(input) => {
            let new = NewAssessment {
                likelihood: score("likelihood", input.likelihood)?,
                severity: score("severity", input.severity)?,
                status: input.status.parse::<Status>()?,
                category: input.category,
                title: input.title,
                summary: input.summary,
                mitigations: input.mitigations,
            };
            let (id, change) = replica.add_assessment(new)?;
            Response::Written(Written {
                id,
                change: change.to_string(),
            })
        }
        Request::ListAssessments { category, status } => {
            let filter = AssessmentFilter {
                category,
                status: status.map(|s| s.parse::<Status>()).transpose()?,
            };
            Response::Assessments(replica.assessments(&filter)?)
        }
        Request::ShowAssessment { id } => Response::Assessment(Box::new(replica.assessment(&id)?)),
        Request::UpdateAssessment { id, update } => {
            let update = AssessmentUpdate {
                likelihood: score("likelihood", update.likelihood)?,
                severity: score("severity", update.severity)?,
                status: update.status.map(|s| s.parse::<Status>()).transpose()?,
                category: update.category,
                title: update.title,
                summary: update.summary,
                mitigations: update.mitigations,
            };
            let change = replica.update_assessment(&id, update)?;
            Response::Written(Written {
                id,
                change: change.to_string(),
            })
        }
        Request::Comment { id, text } => {
            let change = replica.comment(&id, &text)?;
            Response::Written(Written {
                id,
                change: change.to_string(),
            })
        }
        Request::AddNote(input) => {
            let new = NewNote {
                kind: input.kind.parse::<NoteKind>()?,
                round: input.round.map(|r| r.parse::<Round>()).transpose()?,
                topic: input.topic,
                body: input.body,
                assessments: input.assessments,
            };
            let (id, change) = replica.add_note(new)?;
            Response::Written(Written {
                id,
                change: change.to_string(),
            })
        }
        Request::ListNotes => Response::Notes(replica.notes()?),
        Request::ShowNote { id } => Response::Note(Box::new(replica.note(&id)?)),
        Request::Position {
            id,
            position,
            comment,
        } => {
            let stance = position.parse::<Stance>()?;
            let change = replica.set_position(&id, stance, &comment)?;
            Response::Written(Written {
                id,
                change: change.to_string(),
            })
        }
        Request::Export { since } => {
            let since = since
                .iter()
                .map(|h| {
                    h.trim()
                        .parse()
                        .map_err(|_| ReplicaError::BadHash(h.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (bundle, changes) = replica.export(&since)?;
            Response::Exported(Exported {
                bundle,
                changes,
                heads: heads(replica),
            })
        }
        Request::Import { bundle } => Response::Imported(replica.import(&bundle)?),
        Request::Verify => Response::Audit(Box::new(replica.audit()?)),
        Request::Report => {
            let genesis = replica.genesis().ok_or(ReplicaError::NoNetwork)?;
            Response::Report(Box::new(report::build(
                replica.document(),
                genesis,
                replica.roster()?,
            )))
        }
        Request::Status => Response::Status(Box::new(stopped_status(replica))),
        Request::Peers => Response::Peers(stopped_peers(replica)),
        Request::Propose(input) => {
            let id = replica.propose(input.to_op()?)?;
            proposal_response(replica, id)?
        }
        Request::Approve { id, confirm_claims } => {
            let id = replica.approve(&id, confirm_claims)?;
            proposal_response(replica, id)?
        }
        Request::Proposals { all } => {
            let g = replica.governance()?;
            let mut list: Vec<_> = g
                .motions
                .values()
                .filter(|m| all || matches!(m.standing, Standing::Pending { .. }))
                .map(|m| ProposalView::of(replica, g, m))
                .collect();
            list.sort_by(|a, b| (&a.proposed_at, &a.id).cmp(&(&b.proposed_at, &b.id)));
            Response::Proposals(list)
        }
        Request::Members => Response::Members(Box::new(MembersView::of(
            replica.roster()?,
            &replica.identity().public(),
        ))),
        Request::Batch { requests } => {
            if let Some(i) = requests
                .iter()
                .position(|r| matches!(r, Request::Batch { .. }))
            {
                return Err(ReplicaError::BadBatch(format!(
                    "request #{i} is itself a batch; batches do not nest: put its requests \
                     in the outer batch"
                )));
            }
            if let Some(i) = requests.iter().position(|r| !is_plain_write(r)) {
                return Err(ReplicaError::BadBatch(format!(
                    "request #{i} is not a local write; a batch holds only adds, updates, \
                     comments, notes, positions and categories"
                )));
            }
            // Inside a running node's group the node flushes; alone, we do.
            let own_group = !replica.in_group();
            replica.begin_group();
            let mut answers = Vec::with_capacity(requests.len());
            let mut failed = None;
            for (i, request) in requests.into_iter().enumerate() {
                match execute(replica, request) {
                    Ok(answer) => answers.push(answer),
                    Err(e) => {
                        failed = Some(ReplicaError::BadBatch(format!("request #{i}: {e}")));
                        break;
                    }
                }
            }
            if own_group {
                replica.end_group()?;
            }
            if let Some(e) = failed {
                return Err(e);
            }
            Response::Batch(answers)
        }
        Request::RotateKey => {
            let old_node_id = replica.identity().node_id().to_string();
            let identity = replica.rotate_key()?;
            Response::Rotated(Rotated {
                old_node_id,
                identity,
            })
        }
        Request::Checkpoints => Response::Checkpoints(Box::new(replica.checkpoints()?)),
        Request::SignCheckpoint { checkpoint } => {
            let (id, change) = replica.sign_checkpoint(checkpoint.as_deref())?;
            Response::Written(Written {
                id,
                change: change.to_string(),
            })
        }
        Request::Briefing { round, checkpoint } => {
            let round = round.map(|r| r.parse::<Round>()).transpose()?;
            Response::Briefing(Box::new(replica.briefing(round, checkpoint.as_deref())?))
        }
        Request::History { id } => Response::History(Box::new(replica.history(&id)?)),
        Request::Genesis => Response::Genesis(GenesisFile {
            bytes: replica.genesis().ok_or(ReplicaError::NoNetwork)?.encode(),
        }),
    })
}

/// The longest id a request may name. Ids are short (`ra-…`, 64 hex digits
/// for a change, record or checkpoint, 52 characters for a node id); a
/// longer one is refused before anything looks it up, and no message
/// repeats it in full.
pub const MAX_ID_LEN: usize = 128;

/// Refuses a request naming an id (of an item, a change, a proposal, a
/// checkpoint, a node, a category) longer than [`MAX_ID_LEN`].
fn check_ids(request: &Request) -> Result<(), ReplicaError> {
    let check = |what: &'static str, id: &str| {
        if id.len() > MAX_ID_LEN {
            Err(ReplicaError::IdTooLong {
                what,
                len: id.len(),
                start: crate::clip::quote(id),
            })
        } else {
            Ok(())
        }
    };
    match request {
        Request::ShowAssessment { id }
        | Request::UpdateAssessment { id, .. }
        | Request::Comment { id, .. }
        | Request::ShowNote { id }
        | Request::Position { id, .. }
        | Request::History { id } => check("id", id)?,
        Request::Approve { id, .. } => check("proposal id", id)?,
        Request::SignCheckpoint { checkpoint } | Request::Briefing { checkpoint, .. } => {
            if let Some(id) = checkpoint {
                check("checkpoint id", id)?;
            }
        }
        Request::Export { since } => {
            for hash in since {
                check("change hash", hash)?;
            }
        }
        Request::AddCategory { key, .. } => check("category key", key)?,
        Request::AddAssessment(input) => check("category", &input.category)?,
        Request::ListAssessments {
            category: Some(key),
            ..
        } => check("category", key)?,
        Request::AddNote(input) => {
            for id in &input.assessments {
                check("assessment id", id)?;
            }
        }
        Request::Propose(
            ProposalInput::Add { node_id, .. }
            | ProposalInput::Remove { node_id }
            | ProposalInput::Role { node_id, .. },
        ) => check("node id", node_id)?,
        Request::Batch { requests } => {
            for request in requests {
                check_ids(request)?;
            }
        }
        _ => {}
    }
    if let Request::UpdateAssessment { update, .. } = request
        && let Some(key) = &update.category
    {
        check("category", key)?;
    }
    Ok(())
}

fn proposal_response(
    replica: &Replica,
    id: crate::governance::RecordId,
) -> Result<Response, ReplicaError> {
    let g = replica.governance()?;
    let motion = g
        .motions
        .get(&id)
        .ok_or_else(|| ReplicaError::UnknownProposal(id.short()))?;
    Ok(Response::Proposal(Box::new(ProposalView::of(
        replica, g, motion,
    ))))
}

fn score(field: &'static str, value: Option<i64>) -> Result<Option<Score>, ValueError> {
    value.map(|v| Score::new(field, v)).transpose()
}

fn heads(replica: &Replica) -> Vec<String> {
    replica
        .document()
        .heads()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The status of a node that is not running.
pub fn stopped_status(replica: &Replica) -> StatusView {
    let summary = replica.summary();
    StatusView {
        running: false,
        node_id: summary.node_id,
        name: summary.name,
        network: replica.genesis().map(|g| g.name().to_string()),
        network_id: replica.genesis().map(|g| g.network_id().to_string()),
        listen: Vec::new(),
        api: None,
        envelopes: replica.change_count(),
        heads: heads(replica),
        connected: Vec::new(),
        last_sync: None,
        tips: replica
            .tips()
            .iter()
            .map(|(k, s)| (k.node_id().to_string(), *s))
            .collect(),
        bytes_sent: 0,
        bytes_received: 0,
        flushes: replica.store().flush_count(),
        web: None,
        resyncing: replica.is_resyncing(),
        forks: fork_views(replica),
        tainted_from: replica.tainted_from(),
        chain_unknown: replica.genesis().is_some() && !replica.chain_known(),
    }
}

/// The roster as seen by a node that is not running.
pub fn stopped_peers(replica: &Replica) -> Vec<PeerView> {
    let me = replica.identity().public();
    let Ok(roster) = replica.roster() else {
        return Vec::new();
    };
    let remembered = replica.store().peer_addresses().unwrap_or_default();
    roster
        .entries()
        .map(|e| PeerView {
            node_id: e.key.node_id().to_string(),
            name: e.name.clone(),
            role: e.role.to_string(),
            this_node: e.key == me,
            connected: false,
            addresses: remembered
                .iter()
                .find(|(k, _)| *k == e.key)
                .map(|(_, a)| a.clone())
                .unwrap_or_default(),
            last_seen: None,
            they_lack: None,
            we_lack: None,
            rtt_ms: None,
            forked_at: replica.frozen().get(&e.key).copied(),
        })
        .collect()
}

/// Whether a request may change the document (the node then pushes).
pub fn is_write(request: &Request) -> bool {
    matches!(
        request,
        Request::AddCategory { .. }
            | Request::AddAssessment(_)
            | Request::UpdateAssessment { .. }
            | Request::Comment { .. }
            | Request::AddNote(_)
            | Request::Position { .. }
            | Request::Import { .. }
            | Request::SignCheckpoint { .. }
            | Request::Batch { .. }
    )
}

/// Whether a request is a local write that a group commit may hold.
pub fn is_plain_write(request: &Request) -> bool {
    is_write(request) && !is_roster_change(request)
}

/// Whether a request may add roster records (the node then pushes them and
/// follows the roster).
pub fn is_roster_change(request: &Request) -> bool {
    matches!(
        request,
        Request::Propose(_) | Request::Approve { .. } | Request::RotateKey | Request::Import { .. }
    )
}

/// Byte strings (bundles, genesis files, saved documents) travel as base64
/// inside JSON.
pub(crate) mod base64_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&data_encoding::BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        data_encoding::BASE64
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
