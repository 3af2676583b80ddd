//! Exported files and their offline check, with only the genesis at hand.
//!
//! A briefing rendered at an attested checkpoint carries an [`Attestation`]:
//! the checkpoint, its member signatures and the document at its heads
//! (Automerge's saved form). [`export`] writes it after the report body (an
//! HTML comment for Markdown and HTML, an `attestation` field for JSON);
//! [`verify_file`] checks the signatures against the roster, rebuilds the
//! document, recomputes the canonical state hash, renders the body again
//! and compares it with the file, naming the first difference. A bundle is
//! checked by verifying every envelope exactly as an import would, rebuilding
//! the document and finding its latest attested checkpoint. No IO.

use std::collections::BTreeSet;

use automerge::ChangeHash;
use serde::{Deserialize, Serialize};

use super::{CheckpointView, StateMemo, Subject, canonical, list};
use crate::bundle::{Bundle, BundleError};
use crate::doc::{DocError, Document};
use crate::envelope::{ChangeHeader, Envelope};
use crate::genesis::{Genesis, GenesisError};
use crate::identity::{NodeId, PublicKey};
use crate::ingest::{self, IngestError, Known};
use crate::model::Round;
use crate::report::{AttestedBy, Renderer, Report};
use crate::roster::Roster;

/// Version of the embedded attestation. Version 2 added `renderer`; a
/// version 1 attestation has none, and its report was rendered by renderer
/// 1 (`report::Renderer::V1`).
pub const ATTESTATION_VERSION: u32 = 2;
/// First line of the attestation block in Markdown and HTML reports.
pub const BLOCK_START: &str = "<!-- concord-attestation v1";
/// Last line of the block.
pub const BLOCK_END: &str = "-->";
/// Base64 line length inside the block.
const BLOCK_WIDTH: usize = 76;

/// Why a file does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "the file carries no attestation: it is neither a bundle nor a report rendered at an \
         attested checkpoint (`concord report --checkpoint latest` renders one)"
    )]
    NoAttestation,
    #[error("the attestation is malformed: {0}")]
    Malformed(String),
    #[error("the bundle does not decode")]
    Bundle(#[from] BundleError),
    #[error("a roster record in the bundle is refused")]
    Record(#[from] crate::governance::RecordError),
    #[error("the file's genesis does not verify")]
    Genesis(#[from] GenesisError),
    #[error("the file belongs to network {file}, not to the genesis's network {ours}")]
    OtherNetwork { file: String, ours: String },
    #[error("a change in the bundle does not verify")]
    Ingest(#[from] IngestError),
    #[error("the document does not rebuild")]
    Doc(#[from] DocError),
    #[error("the signature of {signer} does not count: {problem}")]
    BadSignature { signer: String, problem: String },
    #[error("only {signatures} valid member signature(s); the quorum is {quorum}")]
    BelowQuorum { signatures: usize, quorum: u32 },
    #[error("the embedded document's heads are {found}, not the checkpoint's {expected}")]
    HeadsDiffer { found: String, expected: String },
    #[error(
        "the embedded document's state hashes to {actual}, not to the signed {claimed}: it is not \
         the attested state"
    )]
    StateDiffers { claimed: String, actual: String },
    #[error(
        "the report was edited after export: line {line} reads {found:?}, but the attested state \
         renders {expected:?}"
    )]
    Edited {
        line: usize,
        found: String,
        expected: String,
    },
    #[error(
        "the report was edited after export: {path} is {found}, but the attested state gives \
         {expected}"
    )]
    EditedJson {
        path: String,
        found: String,
        expected: String,
    },
    #[error(
        "the bundle holds {checkpoints} checkpoint(s) but none attested by a quorum of members{detail}"
    )]
    NoAttestedCheckpoint { checkpoints: usize, detail: String },
}

/// The formats a briefing is exported in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Markdown,
    Html,
    Json,
}

/// One member's signature, as embedded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddedSignature {
    pub node_id: String,
    /// 128 hex digits.
    pub signature: String,
}

/// What an exported report carries to be checked offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub version: u32,
    pub network_id: String,
    pub checkpoint: String,
    pub heads: Vec<String>,
    pub state_hash: String,
    /// The member signatures that count, ordered by signer key.
    pub signatures: Vec<EmbeddedSignature>,
    pub round: Option<String>,
    /// The document at the checkpoint's heads, in Automerge's saved form.
    #[serde(with = "crate::api::base64_bytes")]
    pub document: Vec<u8>,
    /// The roster records the signing node held, each base64 (see
    /// docs/protocol.md, Roster records): with the genesis they give the
    /// roster the signatures are counted against.
    #[serde(default)]
    pub records: Vec<String>,
    /// The version of the renderer the Markdown or HTML body was rendered
    /// with; absent (1) in version 1 attestations.
    #[serde(default = "renderer_v1", skip_serializing_if = "is_renderer_v1")]
    pub renderer: u32,
}

fn renderer_v1() -> u32 {
    Renderer::V1.number()
}

fn is_renderer_v1(renderer: &u32) -> bool {
    *renderer == Renderer::V1.number()
}

impl Attestation {
    pub fn new(view: &CheckpointView, round: Option<Round>, document: Vec<u8>) -> Self {
        Self {
            version: ATTESTATION_VERSION,
            network_id: view.network_id.clone(),
            checkpoint: view.id.clone(),
            heads: view.heads.clone(),
            state_hash: view.state_hash.clone(),
            signatures: view
                .signatures
                .iter()
                .filter(|s| s.counts)
                .map(|s| EmbeddedSignature {
                    node_id: s.node_id.clone(),
                    signature: s.signature.clone(),
                })
                .collect(),
            round: round.map(|r| r.as_str().to_string()),
            document,
            records: Vec::new(),
            renderer: Renderer::CURRENT.number(),
        }
    }

    /// The renderer its report body was rendered with.
    pub fn renderer(&self) -> Result<Renderer, VerifyError> {
        Renderer::from_number(self.renderer).ok_or_else(|| {
            VerifyError::Malformed(format!(
                "renderer version {} (this build renders versions 1 and 2)",
                self.renderer
            ))
        })
    }

    /// What the report says about its attestation.
    pub fn attested_by(&self, roster: &Roster) -> AttestedBy {
        AttestedBy {
            attested: true,
            checkpoint: Some(self.checkpoint.clone()),
            signers: self
                .signatures
                .iter()
                .map(|s| match s.node_id.parse::<NodeId>() {
                    Ok(id) => roster.display_name(&id.public_key()),
                    Err(_) => s.node_id.clone(),
                })
                .collect(),
            state_hash: self.state_hash.clone(),
            latest: None,
        }
    }

    /// The block appended to Markdown and HTML reports.
    pub fn block(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let encoded = data_encoding::BASE64.encode(&json);
        let mut out = format!("{BLOCK_START}\n");
        for line in encoded.as_bytes().chunks(BLOCK_WIDTH) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(BLOCK_END);
        out.push('\n');
        out
    }
}

/// Renders a briefing as a file: the body, then the attestation if any. The
/// body is rendered with the renderer the attestation names (the current one
/// for an attestation made by this build, or without one).
pub fn export(report: &Report, attestation: Option<&Attestation>, format: Format) -> String {
    match format {
        Format::Markdown | Format::Html => {
            let renderer = attestation
                .and_then(|a| a.renderer().ok())
                .unwrap_or(Renderer::CURRENT);
            let mut body = render_body(report, format, renderer);
            if let Some(a) = attestation {
                if !body.ends_with('\n') {
                    body.push('\n');
                }
                body.push('\n');
                body.push_str(&a.block());
            }
            body
        }
        Format::Json => {
            let mut value = serde_json::to_value(report).unwrap_or_default();
            if let (Some(a), Some(map)) = (attestation, value.as_object_mut()) {
                map.insert(
                    "attestation".into(),
                    serde_json::to_value(a).unwrap_or_default(),
                );
            }
            serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
        }
    }
}

fn render_body(report: &Report, format: Format, renderer: Renderer) -> String {
    match format {
        Format::Markdown => renderer.markdown(report),
        Format::Html => renderer.html(report),
        Format::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
    }
}

/// What a successful check established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// `bundle`, or `report` and its format.
    pub file: String,
    pub network_id: String,
    pub checkpoint: String,
    pub heads: Vec<String>,
    pub state_hash: String,
    /// Names of the members whose signatures counted.
    pub signers: Vec<String>,
    pub quorum: u32,
    /// For a bundle: how many signed changes verified.
    pub changes: Option<usize>,
    /// For a Markdown or HTML report: the renderer version it was checked
    /// with. Version 1 wrote document strings unescaped, so a member's text
    /// in such a report can imitate its structure.
    pub renderer: Option<u32>,
}

/// Checks a bundle or an exported report against `genesis` and `roster`.
pub fn verify_file(
    bytes: &[u8],
    genesis: &Genesis,
    roster: &Roster,
) -> Result<Verified, VerifyError> {
    if bytes.starts_with(b"CONCORDB") {
        return verify_bundle(bytes, genesis, roster);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| VerifyError::NoAttestation)?;
    if text.trim_start().starts_with('{') {
        return verify_json(text, genesis, roster);
    }
    let start = text.rfind(BLOCK_START).ok_or(VerifyError::NoAttestation)?;
    let (body, block) = text.split_at(start);
    let attestation = parse_block(block)?;
    // The exporter puts one blank line between the body and the block.
    let body = body.strip_suffix('\n').unwrap_or(body);
    let format = if body.trim_start().starts_with("<!DOCTYPE html>") {
        Format::Html
    } else {
        Format::Markdown
    };
    let renderer = attestation.renderer()?;
    let (report, mut verified) = check_attestation(&attestation, genesis, roster, format)?;
    let expected = render_body(&report, format, renderer);
    compare_lines(body, &expected)?;
    verified.renderer = Some(renderer.number());
    Ok(verified)
}

fn parse_block(block: &str) -> Result<Attestation, VerifyError> {
    let inner = block[BLOCK_START.len()..]
        .trim_end()
        .strip_suffix(BLOCK_END)
        .ok_or_else(|| VerifyError::Malformed("the block does not end with -->".into()))?;
    let encoded: String = inner.split_whitespace().collect();
    let json = data_encoding::BASE64
        .decode(encoded.as_bytes())
        .map_err(|e| VerifyError::Malformed(format!("not base64: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| VerifyError::Malformed(e.to_string()))
}

fn verify_json(text: &str, genesis: &Genesis, roster: &Roster) -> Result<Verified, VerifyError> {
    let mut value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| VerifyError::Malformed(format!("the JSON report does not parse: {e}")))?;
    let attestation = value
        .as_object_mut()
        .and_then(|m| m.remove("attestation"))
        .ok_or(VerifyError::NoAttestation)?;
    let attestation: Attestation =
        serde_json::from_value(attestation).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let (report, verified) = check_attestation(&attestation, genesis, roster, Format::Json)?;
    let expected = serde_json::to_value(&report).unwrap_or_default();
    if let Some((path, found, expected)) = first_difference("", &value, &expected) {
        return Err(VerifyError::EditedJson {
            path: if path.is_empty() { "/".into() } else { path },
            found,
            expected,
        });
    }
    Ok(verified)
}

/// Checks signatures, rebuilds the attested document and builds the report
/// it renders.
fn check_attestation(
    a: &Attestation,
    genesis: &Genesis,
    roster: &Roster,
    format: Format,
) -> Result<(Report, Verified), VerifyError> {
    let malformed = |what: &str| VerifyError::Malformed(what.to_string());
    let known = match a.version {
        1 => a.renderer == Renderer::V1.number(),
        ATTESTATION_VERSION => true,
        _ => false,
    };
    if !known {
        return Err(VerifyError::Malformed(format!(
            "version {} with renderer {} (this build reads versions 1 and \
             {ATTESTATION_VERSION})",
            a.version, a.renderer
        )));
    }
    let network = genesis.network_id();
    if a.network_id != network.to_hex() {
        return Err(VerifyError::OtherNetwork {
            file: a.network_id.clone(),
            ours: network.to_hex(),
        });
    }
    let resolved;
    let roster = if a.records.is_empty() {
        roster
    } else {
        let wire = a
            .records
            .iter()
            .map(|text| data_encoding::BASE64.decode(text.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| malformed("a roster record is not base64"))?;
        resolved = crate::governance::roster_from_wire(genesis, &wire)?;
        &resolved
    };
    let heads = a
        .heads
        .iter()
        .map(|h| h.parse::<ChangeHash>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| malformed("a head is not a change hash"))?;
    let state: [u8; 32] = hex::decode(&a.state_hash)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("the state hash is not 64 hex digits"))?;
    let subject = Subject::new(network, heads, state);
    if subject.id() != a.checkpoint {
        return Err(VerifyError::Malformed(format!(
            "checkpoint id {} does not match its content ({})",
            a.checkpoint,
            subject.id()
        )));
    }
    let mut seen = BTreeSet::new();
    for s in &a.signatures {
        let bad = |problem: &str| VerifyError::BadSignature {
            signer: s.node_id.clone(),
            problem: problem.to_string(),
        };
        let key: PublicKey = s
            .node_id
            .parse::<NodeId>()
            .map_err(|_| bad("not a node id"))?
            .public_key();
        if !roster.is_member(&key) {
            return Err(bad("not a current member of the network"));
        }
        if !seen.insert(key) {
            return Err(bad("it appears twice"));
        }
        let signature: [u8; 64] = hex::decode(&s.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("not 128 hex digits"))?;
        if !subject.verify(&key, &signature) {
            return Err(bad("it does not verify over the checkpoint"));
        }
    }
    if seen.len() < roster.quorum() as usize {
        return Err(VerifyError::BelowQuorum {
            signatures: seen.len(),
            quorum: roster.quorum(),
        });
    }
    let doc = Document::load(&a.document, genesis.body().creator)?;
    if doc.heads() != subject.heads {
        return Err(VerifyError::HeadsDiffer {
            found: join(&doc.heads()),
            expected: join(&subject.heads),
        });
    }
    let actual = canonical::state_hash(doc.automerge());
    if actual != state {
        return Err(VerifyError::StateDiffers {
            claimed: a.state_hash.clone(),
            actual: hex::encode(actual),
        });
    }
    let round = a
        .round
        .as_deref()
        .map(str::parse::<Round>)
        .transpose()
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let report = crate::report::build_with(&doc, genesis, roster, round, a.attested_by(roster));
    let verified = Verified {
        file: format!(
            "report ({})",
            match format {
                Format::Markdown => "markdown",
                Format::Html => "html",
                Format::Json => "json",
            }
        ),
        network_id: network.to_hex(),
        checkpoint: a.checkpoint.clone(),
        heads: a.heads.clone(),
        state_hash: a.state_hash.clone(),
        signers: a.attested_by(roster).signers,
        quorum: roster.quorum(),
        changes: None,
        renderer: None,
    };
    Ok((report, verified))
}

fn join(heads: &[ChangeHash]) -> String {
    heads
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn compare_lines(found: &str, expected: &str) -> Result<(), VerifyError> {
    let mut f = found.lines();
    let mut e = expected.lines();
    let mut line = 0;
    loop {
        line += 1;
        match (f.next(), e.next()) {
            (None, None) => return Ok(()),
            (a, b) if a == b => continue,
            (a, b) => {
                return Err(VerifyError::Edited {
                    line,
                    found: a.unwrap_or("(end of the report)").to_string(),
                    expected: b.unwrap_or("(end of the report)").to_string(),
                });
            }
        }
    }
}

/// The first place two JSON values differ, as (path, found, expected).
fn first_difference(
    path: &str,
    found: &serde_json::Value,
    expected: &serde_json::Value,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    match (found, expected) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|k| {
                let null = Value::Null;
                let p = format!("{path}/{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => first_difference(&p, x, y),
                    (x, y) => Some((
                        p,
                        x.unwrap_or(&null).to_string(),
                        y.unwrap_or(&null).to_string(),
                    )),
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(&format!("{path}/{i}"), x, y)),
        (a, b) if a == b => None,
        (a, b) => Some((path.to_string(), a.to_string(), b.to_string())),
    }
}

/// Nothing is known yet: a bundle checked offline must carry every change.
struct Nothing;

impl Known for Nothing {
    fn has_change(&self, _: &ChangeHash) -> bool {
        false
    }
    fn hash_at(&self, _: &PublicKey, _: u64) -> Option<ChangeHash> {
        None
    }
    fn header_of(&self, _: &ChangeHash) -> Option<ChangeHeader> {
        None
    }
}

fn verify_bundle(
    bytes: &[u8],
    genesis: &Genesis,
    roster: &Roster,
) -> Result<Verified, VerifyError> {
    let network = genesis.network_id();
    let bundle = Bundle::decode(bytes)?;
    let theirs = Genesis::decode(&bundle.genesis)?;
    if theirs.network_id() != network {
        return Err(VerifyError::OtherNetwork {
            file: theirs.network_id().to_hex(),
            ours: network.to_hex(),
        });
    }
    // The bundle's own roster records, checked against the genesis, decide
    // who was a member; without any, the roster given is used.
    let resolved;
    let roster = if bundle.records.is_empty() {
        roster
    } else {
        resolved =
            crate::governance::roster_from_wire(genesis, bundle.records.iter().map(|r| &r.0))?;
        &resolved
    };
    let envelopes = bundle
        .envelopes
        .iter()
        .enumerate()
        .map(|(index, e)| {
            Envelope::decode(&e.0).map_err(|source| IngestError::Malformed { index, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let checked = ingest::check_batch(envelopes, network, roster, &Nothing)?;
    ingest::verify_rest(&checked, network)?;
    let count = checked.accepted.len();
    let mut doc = Document::new(genesis.body().creator);
    doc.apply(checked.accepted.into_iter().map(|a| a.change).collect())?;
    let list = list(&doc, network, roster, &mut StateMemo::default());
    let Some(view) = list.latest_attested.as_deref().and_then(|id| list.get(id)) else {
        let detail: Vec<String> = list
            .checkpoints
            .iter()
            .map(|c| match &c.problem {
                Some(p) => format!("{}: {p}", c.id),
                None => format!(
                    "{}: {} of {} member signatures",
                    c.id, c.member_signatures, c.quorum
                ),
            })
            .collect();
        return Err(VerifyError::NoAttestedCheckpoint {
            checkpoints: list.checkpoints.len(),
            detail: if detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", detail.join("; "))
            },
        });
    };
    Ok(Verified {
        file: "bundle".into(),
        network_id: network.to_hex(),
        checkpoint: view.id.clone(),
        heads: view.heads.clone(),
        state_hash: view.state_hash.clone(),
        signers: view
            .signatures
            .iter()
            .filter(|s| s.counts)
            .map(|s| s.name.clone())
            .collect(),
        quorum: view.quorum,
        changes: Some(count),
        renderer: None,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn attestation(heads: Vec<String>, round: Option<String>, document: Vec<u8>) -> Attestation {
        Attestation {
            version: ATTESTATION_VERSION,
            network_id: "ab".repeat(32),
            checkpoint: "ck-0011223344556677".into(),
            heads,
            state_hash: "cd".repeat(32),
            signatures: vec![EmbeddedSignature {
                node_id: "12D3KooWexample".into(),
                signature: "ef".repeat(64),
            }],
            round,
            document,
            records: Vec::new(),
            renderer: Renderer::CURRENT.number(),
        }
    }

    proptest! {
        /// The block written after a report reads back as the same attestation.
        #[test]
        fn the_attestation_block_round_trips(
            heads in proptest::collection::vec("[0-9a-f]{64}", 0..4),
            round in proptest::option::of("[a-z-]{1,20}"),
            document in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let a = attestation(heads, round, document);
            let block = a.block();
            prop_assert!(block.starts_with(BLOCK_START) && block.ends_with("-->\n"));
            prop_assert!(block.lines().all(|l| l.len() <= BLOCK_WIDTH.max(BLOCK_START.len())));
            prop_assert_eq!(parse_block(&block).expect("parses"), a);
        }
    }

    #[test]
    fn a_damaged_block_is_named_malformed() {
        let block = attestation(Vec::new(), None, vec![1, 2, 3]).block();
        let cut = block.replace("-->", "");
        assert!(matches!(parse_block(&cut), Err(VerifyError::Malformed(m)) if m.contains("-->")));
        let garbled = block.replacen("\ney", "\n!!", 1);
        assert_ne!(garbled, block);
        assert!(matches!(
            parse_block(&garbled),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn the_first_json_difference_is_named_by_its_path() {
        let found = serde_json::json!({"a": [1, {"b": "x"}], "c": true});
        let expected = serde_json::json!({"a": [1, {"b": "y"}], "c": true});
        assert_eq!(
            first_difference("", &found, &expected),
            Some(("/a/1/b".into(), "\"x\"".into(), "\"y\"".into()))
        );
        assert_eq!(first_difference("", &found, &found), None);
    }
}
