//! The web view's pages, as maud templates over the API's views. Pure
//! functions from data to HTML; every value is escaped by maud.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use crate::api::{NetworkView, PeerView, StatusView};
use crate::checkpoint::{CheckpointView, Checkpoints};
use crate::history::History;
use crate::model::{AssessmentView, NoteKind, NoteView, Round, Standing, Status};
use crate::taxonomy::{self, Category};

/// What every page shows around its content.
#[derive(Debug)]
pub struct Frame {
    /// The node's change counter when the page was rendered.
    pub version: u64,
    pub status: StatusView,
    pub checkpoints: Checkpoints,
}

/// The register's filters, as GET query parameters.
#[derive(Debug, Default, Deserialize)]
pub struct RegisterFilter {
    /// A category key.
    pub category: Option<String>,
    /// draft, open, accepted or retired.
    pub status: Option<String>,
    /// The author institution's node id.
    pub institution: Option<String>,
}

/// The dialogue page's filter.
#[derive(Debug, Default, Deserialize)]
pub struct DialogueFilter {
    /// track-ii, intergovernmental or multilateral.
    pub round: Option<String>,
}

/// The item shown above a history.
#[derive(Debug)]
pub enum Detail {
    Assessment(Box<AssessmentView>),
    Note(Box<NoteView>),
    Other,
}

const CSS: &str = "\
*{box-sizing:border-box}\
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}\
header{background:#123b5c;color:#fff;padding:.6rem 1.5rem;display:flex;flex-wrap:wrap;gap:1.5rem;align-items:baseline}\
header a{color:#dfe9f3;text-decoration:none;font-weight:600}header a.here{color:#fff;border-bottom:2px solid #fff}\
header .net{font-weight:700;font-size:1.1rem;margin-right:auto}\
main{max-width:76rem;margin:0 auto;padding:1rem 1.5rem 3rem}\
h1{font-size:1.5rem;margin:.6rem 0}h2{font-size:1.15rem;margin:1.6rem 0 .4rem;border-bottom:1px solid #d5dae0;padding-bottom:.2rem}\
table{border-collapse:collapse;width:100%;background:#fff;margin:.4rem 0 1rem}\
th,td{border:1px solid #d5dae0;padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#eef1f4;font-weight:600}\
code{font-size:.85em;background:#eef1f4;padding:0 .2em;border-radius:3px;white-space:nowrap}\
.banner{padding:.6rem .9rem;border-radius:6px;margin:.8rem 0;border:1px solid}\
.banner.ok{background:#e7f5ea;border-color:#86c79a}.banner.no{background:#fff6e0;border-color:#e6c36a}\
.badge{display:inline-block;padding:.05rem .5rem;border-radius:999px;font-size:.8rem;font-weight:700;text-transform:uppercase;letter-spacing:.03em}\
.divergence{background:#fde2e1;color:#9b1c1c}.consensus{background:#def7e5;color:#14622f}.open{background:#e8eaed;color:#3c4043}\
.pos-agree{color:#14622f;font-weight:700}.pos-disagree{color:#9b1c1c;font-weight:700}.pos-reservation{color:#8a5a00;font-weight:700}.pos-abstain{color:#555;font-weight:700}.pos-none{color:#888;font-style:italic}\
article.note{background:#fff;border:1px solid #d5dae0;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}\
article.note.divergence-note{border-left:6px solid #c53030}article.note.consensus-note{border-left:6px solid #2f855a}article.note.open-note{border-left:6px solid #a0aec0}\
.sides{display:grid;grid-template-columns:repeat(auto-fit,minmax(14rem,1fr));gap:.6rem;margin-top:.6rem}\
.side{border:1px solid #d5dae0;border-radius:6px;padding:.5rem .7rem;background:#fafbfc}.side h4{margin:0 0 .2rem;font-size:.95rem}\
.muted{color:#5f6b76;font-size:.9rem}\
form.filters{display:flex;flex-wrap:wrap;gap:.8rem;align-items:end;background:#fff;border:1px solid #d5dae0;border-radius:6px;padding:.6rem .9rem}\
form.filters label{display:flex;flex-direction:column;font-size:.85rem;color:#5f6b76}\
.layout{display:grid;grid-template-columns:minmax(0,1fr) 19rem;gap:1.5rem}@media(max-width:60rem){.layout{grid-template-columns:1fr}}\
table.matrix{width:auto}table.matrix td{width:2.6rem;height:2.6rem;text-align:center;vertical-align:middle;font-weight:700}\
.r1{background:#e3f4e8}.r2{background:#fbf3d0}.r3{background:#fde0c2}.r4{background:#f9c0bd}\
.nowrap{white-space:nowrap}footer{color:#5f6b76;font-size:.85rem;margin-top:2rem}";

fn layout(frame: &Frame, title: &str, here: &str, content: Markup) -> Markup {
    let network = frame.status.network.clone().unwrap_or_default();
    let nav = [
        ("/", "Register"),
        ("/dialogue", "Dialogue"),
        ("/network", "Network"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="concord-version" content=(frame.version);
                noscript { meta http-equiv="refresh" content="30"; }
                title { (title) " · " (network) }
                style { (PreEscaped(CSS)) }
                script src="/live.js" defer {}
            }
            body {
                header {
                    span.net { (network) }
                    @for (href, label) in nav {
                        a href=(href) class=[(here == href).then_some("here")] { (label) }
                    }
                }
                main {
                    (banner(&frame.checkpoints))
                    (content)
                    footer {
                        "Read-only view of " (frame.status.name) "'s node. "
                        (frame.status.envelopes) " signed changes; heads "
                        @for h in &frame.status.heads { code { (short(h)) } " " }
                        ". "
                        noscript { "Refreshes every 30 seconds. " }
                        a href="" { "Refresh now" }
                    }
                }
            }
        }
    }
}

/// Which attested checkpoint this state is, or that it is not yet attested.
fn banner(checkpoints: &Checkpoints) -> Markup {
    let current = checkpoints
        .current
        .as_deref()
        .and_then(|id| checkpoints.get(id));
    let latest = checkpoints
        .latest_attested
        .as_deref()
        .and_then(|id| checkpoints.get(id));
    html! {
        @match (current, latest) {
            (Some(c), _) => {
                div.banner.ok {
                    strong { "Attested state. " }
                    "What you see is attested by checkpoint " code { (c.id) } ", signed by "
                    (signers(c)) " (quorum " (c.quorum) "); state hash "
                    code { (short(&c.state_hash)) } "."
                }
            }
            (None, Some(l)) => {
                div.banner.no {
                    strong { "Not yet attested. " }
                    "The current state is not yet attested. The latest attested checkpoint, "
                    code { (l.id) } " (" (l.created_at) ", signed by " (signers(l))
                    "), covers an earlier state."
                }
            }
            (None, None) => {
                div.banner.no {
                    strong { "Not yet attested. " }
                    "The current state is not yet attested: no checkpoint has been signed by a quorum of members."
                }
            }
        }
    }
}

fn signers(c: &CheckpointView) -> String {
    c.signatures
        .iter()
        .filter(|s| s.counts)
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(hash: &str) -> &str {
    &hash[..12.min(hash.len())]
}

fn score(v: Option<u8>) -> String {
    v.map_or("–".to_string(), |v| v.to_string())
}

/// Risk band of likelihood × severity: 1 low … 4 critical.
fn band(risk: u8) -> u8 {
    match risk {
        0..=4 => 1,
        5..=9 => 2,
        10..=15 => 3,
        _ => 4,
    }
}

pub fn register(
    frame: &Frame,
    network: &NetworkView,
    categories: &[Category],
    assessments: &[AssessmentView],
    notes: &[NoteView],
    filter: &RegisterFilter,
) -> Markup {
    let content = html! {
        h1 { "Risk register" }
        form.filters method="get" action="/" {
            label {
                "Category"
                select name="category" {
                    option value="" { "All categories" }
                    @for c in categories {
                        option value=(c.key) selected[filter.category.as_deref() == Some(c.key.as_str())] {
                            (taxonomy::group_title(&c.group)) ": " (c.title)
                        }
                    }
                }
            }
            label {
                "Status"
                select name="status" {
                    option value="" { "Any status" }
                    @for s in Status::ALL {
                        option value=(s.as_str()) selected[filter.status.as_deref() == Some(s.as_str())] { (s.as_str()) }
                    }
                }
            }
            label {
                "Institution"
                select name="institution" {
                    option value="" { "Any institution" }
                    @for e in &network.roster {
                        option value=(e.node_id) selected[filter.institution.as_deref() == Some(e.node_id.as_str())] { (e.name) }
                    }
                }
            }
            button type="submit" { "Filter" }
            a href="/" { "Clear" }
        }
        div.layout {
            div {
                @if assessments.is_empty() {
                    p.muted { "No assessments match." }
                }
                @for c in categories {
                    @let rows: Vec<&AssessmentView> = assessments.iter().filter(|a| a.category == c.key).collect();
                    @if !rows.is_empty() {
                        h2 { (c.title) " " span.muted { "(" (taxonomy::group_title(&c.group)) ")" } }
                        table {
                            tr {
                                th { "Assessment" } th title="likelihood" { "L" } th title="severity" { "S" }
                                th title="likelihood × severity" { "L×S" } th { "Status" } th { "Author" } th { "Updated" }
                            }
                            @for a in rows {
                                tr {
                                    td {
                                        a href={ "/item/" (a.id) } { (a.title) }
                                        br; span.muted { code { (a.id) } }
                                        @if !a.conflicts.is_empty() { " " span.badge.open { "concurrent edits" } }
                                    }
                                    td { (score(a.likelihood)) }
                                    td { (score(a.severity)) }
                                    td class=[a.risk.map(|r| format!("r{}", band(r)))] { (score(a.risk)) }
                                    td { (a.status) }
                                    td { (a.author.name) }
                                    td.muted.nowrap { (a.updated_at.replace('T', " ").trim_end_matches('Z')) }
                                }
                            }
                        }
                    }
                }
            }
            aside {
                h2 { "Likelihood × severity" }
                (matrix(assessments))
                h2 { "Points of divergence" }
                @let diverging: Vec<&NoteView> = notes.iter().filter(|n| n.standing == Standing::Divergence).collect();
                @if diverging.is_empty() { p.muted { "None: no member disagrees with any note." } }
                @for n in diverging {
                    div.side {
                        h4 { a href={ "/item/" (n.id) } { (n.topic) } }
                        @for p in n.positions.iter().filter(|p| p.counts) {
                            div {
                                (p.institution.name) ": "
                                @match p.position.as_deref() {
                                    Some(pos) => span class={ "pos-" (pos) } { (pos) },
                                    None => span."pos-none" { "no position yet" },
                                }
                            }
                        }
                    }
                }
                p { a href="/dialogue" { "Every note, side by side →" } }
            }
        }
    };
    layout(frame, "Register", "/", content)
}

/// A 5 × 5 table: likelihood down (5 at the top), severity across; each
/// cell counts the assessments shown with that score.
fn matrix(assessments: &[AssessmentView]) -> Markup {
    let unscored = assessments
        .iter()
        .filter(|a| a.likelihood.is_none() || a.severity.is_none())
        .count();
    html! {
        table.matrix aria-label="likelihood by severity matrix" {
            tr { th {} th colspan="5" { "severity →" } }
            @for l in (1..=5u8).rev() {
                tr {
                    th title="likelihood" { (l) }
                    @for s in 1..=5u8 {
                        @let here: Vec<&AssessmentView> = assessments
                            .iter()
                            .filter(|a| a.likelihood == Some(l) && a.severity == Some(s))
                            .collect();
                        @let titles = here.iter().map(|a| a.title.as_str()).collect::<Vec<_>>().join("; ");
                        td class={ "r" (band(l * s)) } title=(titles) {
                            @if !here.is_empty() { (here.len()) }
                        }
                    }
                }
            }
            tr { th { "↑ L" } @for s in 1..=5u8 { th { (s) } } }
        }
        @if unscored > 0 {
            p.muted { (unscored) " assessment(s) without both scores are not in the matrix." }
        }
    }
}

fn standing_rank(s: Standing) -> u8 {
    match s {
        Standing::Divergence => 0,
        Standing::Open => 1,
        Standing::Consensus => 2,
    }
}

pub fn dialogue(frame: &Frame, notes: &[NoteView], filter: &DialogueFilter) -> Markup {
    let mut sorted: Vec<&NoteView> = notes.iter().collect();
    // Divergence first, then open, then consensus; oldest first within each.
    sorted.sort_by_key(|n| standing_rank(n.standing));
    let content = html! {
        h1 { "Dialogue" }
        form.filters method="get" action="/dialogue" {
            label {
                "Round"
                select name="round" {
                    option value="" { "All rounds" }
                    @for r in Round::ALL {
                        option value=(r.as_str()) selected[filter.round.as_deref() == Some(r.as_str())] { (r.describe()) }
                    }
                }
            }
            button type="submit" { "Filter" }
            a href="/dialogue" { "Clear" }
        }
        @if sorted.is_empty() { p.muted { "No notes." } }
        @for n in sorted {
            article class={ "note " (n.standing.as_str()) "-note" } {
                h2 {
                    span class={ "badge " (n.standing.as_str()) } { (n.standing.as_str()) }
                    " " (n.topic)
                }
                p.muted {
                    (n.kind.parse::<NoteKind>().map(NoteKind::describe).unwrap_or(n.kind.as_str()))
                    " · "
                    (n.round.as_deref().and_then(|r| r.parse::<Round>().ok()).map(Round::describe).unwrap_or("no round"))
                    " · by " (n.author.name) " · " a href={ "/item/" (n.id) } { "history of " (n.id) }
                    @for a in &n.assessments { " · " a href={ "/item/" (a) } { (a) } }
                }
                p { (n.body) }
                div.sides {
                    @for p in &n.positions {
                        div.side {
                            h4 { (p.institution.name) @if !p.counts { " " span.muted { "(not a current member)" } } }
                            @match p.position.as_deref() {
                                Some(pos) => span class={ "pos-" (pos) } { (pos) },
                                None => span."pos-none" { "no position yet" },
                            }
                            @if !p.comment.is_empty() { p { (p.comment) } }
                            @if let Some(at) = &p.at { div.muted { (at) } }
                        }
                    }
                }
            }
        }
    };
    layout(frame, "Dialogue", "/dialogue", content)
}

pub fn item(frame: &Frame, history: &History, detail: &Detail) -> Markup {
    let content = html! {
        h1 { (history.title) " " span.muted { code { (history.id) } } }
        @match detail {
            Detail::Assessment(a) => {
                table {
                    tr { th { "Category" } td { (a.category) } }
                    tr { th { "Likelihood × severity" } td { (score(a.likelihood)) " × " (score(a.severity)) " = " (score(a.risk)) } }
                    tr { th { "Status" } td { (a.status) } }
                    tr { th { "Author" } td { (a.author.name) } }
                    tr { th { "Created / updated" } td { (a.created_at) " / " (a.updated_at) } }
                    tr { th { "Summary" } td { (a.summary) } }
                    tr { th { "Mitigations" } td { ul { @for m in &a.mitigations { li { (m) } } } } }
                }
                @if !a.comments.is_empty() {
                    h2 { "Comments" }
                    @for c in &a.comments { p { strong { (c.author.name) } " (" (c.at) "): " (c.text) } }
                }
                @for c in &a.conflicts {
                    p.muted {
                        "Concurrent edits of " strong { (c.field) } ": "
                        @for v in &c.values { (v.value) " by " (v.author.name) @if v.winner { " (shown)" } "; " }
                    }
                }
            }
            Detail::Note(n) => {
                p { span class={ "badge " (n.standing.as_str()) } { (n.standing.as_str()) } " " (n.body) }
                table {
                    tr { th { "Institution" } th { "Position" } th { "Comment" } th { "When" } }
                    @for p in &n.positions {
                        tr {
                            td { (p.institution.name) }
                            td { (p.position.as_deref().unwrap_or("no position yet")) }
                            td { (p.comment) }
                            td.muted { (p.at.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            Detail::Other => {}
        }
        h2 { "History" }
        p.muted { "Every signed change that touched this " (history.kind) ", oldest first." }
        table {
            tr { th { "When" } th { "Institution" } th { "Change" } th { "Fields" } th { "Signature" } }
            @for c in &history.changes {
                tr {
                    td.muted { (c.at) }
                    td { (c.author.name) }
                    td { code title=(c.change) { (short(&c.change)) } br; span.muted { (c.message) } }
                    td { (c.fields.join(", ")) }
                    td {
                        @if c.verified { span."pos-agree" { "✓ verified" } }
                        @else { span."pos-disagree" { "✗ " (c.problem.as_deref().unwrap_or("does not verify")) } }
                    }
                }
            }
        }
    };
    layout(frame, &history.title, "", content)
}

pub fn network(frame: &Frame, network: &NetworkView, peers: &[PeerView]) -> Markup {
    let s = &frame.status;
    let content = html! {
        h1 { (network.name) }
        table {
            tr { th { "Network id" } td { code { (network.network_id) } } }
            tr { th { "Created" } td { (network.created_at) " by " (network.created_by) } }
            tr { th { "Quorum" } td { (network.quorum) " member signatures" } }
            tr { th { "This node" } td { (s.name) " " code { (s.node_id) } } }
            tr { th { "Signed changes" } td { (s.envelopes) } }
            tr { th { "Heads" } td { @for h in &s.heads { code { (h) } br; } } }
            tr { th { "Last sync" } td { (s.last_sync.as_deref().unwrap_or("never")) } }
            tr { th { "Connected" } td { @if s.connected.is_empty() { "none" } @else { (s.connected.join(", ")) } } }
        }
        @if !s.forks.is_empty() {
            h2 { "Forks" }
            p.muted { "Each of these members signed two different changes with one number. None of its changes from that number on count, on every node that holds the proof." }
            table {
                tr { th { "Institution" } th { "Node id" } th { "Signed twice" } }
                @for f in &s.forks {
                    tr { td { (f.name) } td { code { (f.node_id) } } td.pos-disagree { "change " (f.fork_at) } }
                }
            }
        }
        h2 { "Roster" }
        table {
            tr { th { "Institution" } th { "Role" } th { "Node id" } th { "Fingerprint" } th { "Connected" } th { "Last seen" } }
            @for e in &network.roster {
                @let peer = peers.iter().find(|p| p.node_id == e.node_id);
                tr {
                    td { (e.name) }
                    td { (e.role) }
                    td { code { (e.node_id) } }
                    td { code { (e.fingerprint) } }
                    td {
                        @match peer {
                            Some(p) if p.this_node => "this node",
                            Some(p) if p.connected => span."pos-agree" { "connected" },
                            _ => "no",
                        }
                    }
                    td.muted { (peer.and_then(|p| p.last_seen.as_deref()).unwrap_or("–")) }
                }
            }
        }
        h2 { "Checkpoints" }
        p.muted { "Current state hash " code { (frame.checkpoints.state_hash) } }
        @if frame.checkpoints.checkpoints.is_empty() { p.muted { "No checkpoint has been signed." } }
        @else {
            table {
                tr { th { "Checkpoint" } th { "Created" } th { "Signed by" } th { "Signatures" } th { "State" } th { "Attested" } }
                @for c in frame.checkpoints.checkpoints.iter().rev() {
                    tr {
                        td { code { (c.id) } }
                        td.muted { (c.created_at) }
                        td { (c.signatures.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")) }
                        td { (c.member_signatures) " of quorum " (c.quorum) }
                        td {
                            @if c.state_verified { "verified " code { (short(&c.state_hash)) } }
                            @else { span."pos-disagree" { (c.problem.as_deref().unwrap_or("not verified")) } }
                        }
                        td { @if c.attested { span.badge.consensus { "attested" } } @else { span.badge.open { "not yet" } } }
                    }
                }
            }
        }
    };
    layout(frame, "Network", "/network", content)
}

/// A page for a refused request (bad filter, unknown item, node stopped).
pub fn error(status: axum::http::StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                style { (PreEscaped(CSS)) }
            }
            body {
                main {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p { (message) }
                    p { a href="/" { "Back to the register" } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Institution, PositionView};

    fn frame() -> Frame {
        Frame {
            version: 7,
            status: StatusView {
                running: true,
                node_id: "12D3KooWobserver".into(),
                name: "Observer".into(),
                network: Some("Net".into()),
                envelopes: 3,
                heads: vec!["ab".repeat(32)],
                ..StatusView::default()
            },
            checkpoints: Checkpoints {
                network_id: "00".into(),
                heads: Vec::new(),
                state_hash: "cd".repeat(32),
                current: None,
                latest_attested: None,
                checkpoints: Vec::new(),
                invalid: Vec::new(),
            },
        }
    }

    fn who(name: &str) -> Institution {
        Institution {
            node_id: format!("id-{name}"),
            name: name.into(),
        }
    }

    fn assessment(id: &str, title: &str, l: u8, s: u8) -> AssessmentView {
        AssessmentView {
            id: id.into(),
            category: "reliability".into(),
            title: title.into(),
            summary: String::new(),
            likelihood: Some(l),
            severity: Some(s),
            risk: Some(l * s),
            mitigations: Vec::new(),
            status: "open".into(),
            author: who("A"),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            comments: Vec::new(),
            conflicts: Vec::new(),
        }
    }

    fn note(id: &str, standing: Standing, stances: &[(&str, &str)]) -> NoteView {
        NoteView {
            id: id.into(),
            topic: format!("topic {id}"),
            body: "body".into(),
            kind: "agenda".into(),
            round: None,
            assessments: Vec::new(),
            standing,
            positions: stances
                .iter()
                .map(|(name, stance)| PositionView {
                    institution: who(name),
                    counts: true,
                    position: Some(stance.to_string()),
                    comment: format!("{name} says so"),
                    at: None,
                })
                .collect(),
            author: who("A"),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            conflicts: Vec::new(),
        }
    }

    fn network() -> NetworkView {
        NetworkView {
            name: "Net".into(),
            network_id: "00".into(),
            created_at: String::new(),
            created_by: "A".into(),
            quorum: 1,
            roster: Vec::new(),
        }
    }

    #[test]
    fn text_from_members_is_escaped() {
        let evil = assessment("ra-evil0000", "<script>alert(1)</script>", 1, 1);
        let html = register(
            &frame(),
            &network(),
            &crate::taxonomy::builtin(),
            &[evil],
            &[],
            &RegisterFilter::default(),
        )
        .into_string();
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>alert"));
        assert!(html.contains(r#"<meta name="concord-version" content="7">"#));
        assert!(html.contains("Not yet attested"));
    }

    #[test]
    fn the_matrix_counts_each_cell() {
        let shown = [
            assessment("ra-a", "a", 3, 5),
            assessment("ra-b", "b", 3, 5),
            assessment("ra-c", "c", 1, 2),
        ];
        let html = matrix(&shown).into_string();
        assert!(
            html.contains(r#"<td class="r3" title="a; b">2</td>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<td class="r1" title="c">1</td>"#),
            "{html}"
        );
    }

    #[test]
    fn divergence_comes_first_with_every_position_side_by_side() {
        let notes = [
            note(
                "cn-agreed",
                Standing::Consensus,
                &[("A", "agree"), ("B", "agree")],
            ),
            note(
                "cn-split",
                Standing::Divergence,
                &[("A", "agree"), ("B", "disagree")],
            ),
        ];
        let html = dialogue(&frame(), &notes, &DialogueFilter::default()).into_string();
        let split = html.find("topic cn-split").expect("split");
        let agreed = html.find("topic cn-agreed").expect("agreed");
        assert!(split < agreed, "divergence first");
        assert!(html.contains(r#"<span class="pos-disagree">disagree</span>"#));
        assert!(html.contains("B says so"));
    }
}
