//! The local API: one typed request per CLI command, and [`execute`], which
//! carries a request out on a [`Replica`].
//!
//! The CLI builds a [`Request`] from its flags and either executes it on the
//! store itself (node stopped) or sends it to the running node over HTTP on
//! 127.0.0.1 (see [`server`]), where the node executes it on its own replica
//! and pushes any new change to its peers. Both paths run the same code, so a
//! command behaves the same either way. Only the types here cross the process
//! boundary, as JSON.

pub mod server;

use serde::{Deserialize, Serialize};

use crate::ReplicaError;
use crate::checkpoint::{Briefing, Checkpoints};
use crate::doc::{AssessmentUpdate, NewAssessment, NewNote};
use crate::genesis::Genesis;
use crate::history::History;
use crate::model::{
    AssessmentView, NoteKind, NoteView, Round, Score, Stance, Status, ValueError, format_time,
};
use crate::replica::{AssessmentFilter, Audit, IdentitySummary, ImportSummary, Replica};
use crate::report::{self, Report};
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
    pub fn of(genesis: &Genesis) -> Self {
        let roster = genesis.roster();
        Self {
            name: genesis.name().to_string(),
            network_id: genesis.network_id().to_string(),
            created_at: format_time(genesis.body().created_at_ms),
            created_by: roster.display_name(&genesis.body().creator),
            quorum: genesis.body().quorum,
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
    /// The web view's URL, when the running node serves one.
    #[serde(default)]
    pub web: Option<String>,
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
}

/// Carries out a request on a replica. `Status` and `Peers` describe a
/// stopped node here; the running node answers them itself.
pub fn execute(replica: &mut Replica, request: Request) -> Result<Response, ReplicaError> {
    Ok(match request {
        Request::Identity => Response::Identity(replica.summary()),
        Request::NetworkShow => {
            let genesis = replica.genesis().ok_or(ReplicaError::NoNetwork)?;
            Response::Network(NetworkView::of(genesis))
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
        web: None,
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
    )
}

/// Bundles travel as base64 inside JSON.
mod base64_bytes {
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
