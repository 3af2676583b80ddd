//! The briefing: per category, the open assessments, the notes at consensus
//! and the points of divergence with every institution's position.
//!
//! A report is a pure function of the document and the roster (it names the
//! heads it was made from rather than the time), so two nodes holding the
//! same changes print the same report. No IO.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::doc::Document;
use crate::genesis::Genesis;
use crate::model::{AssessmentView, Institution, NoteView, Round, Stance, Standing};
use crate::roster::Roster;
use crate::taxonomy;
use crate::text::{self, markdown as md};

mod v1;

/// The whole briefing, as `report --format json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub network: String,
    pub network_id: String,
    /// The document heads the report was made from.
    pub heads: Vec<String>,
    pub members: Vec<Institution>,
    pub totals: Totals,
    /// Categories with any open assessment or note, in taxonomy order.
    pub categories: Vec<Section>,
    /// Notes linked to no assessment.
    pub general: Section,
    /// The dialogue round the notes are limited to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<String>,
    /// Which attested checkpoint the report shows, or that it shows a state
    /// no checkpoint attests yet.
    #[serde(default)]
    pub checkpoint: AttestedBy,
}

/// Whether the state a report or page shows is attested, and by what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedBy {
    /// True when a checkpoint signed by a quorum of members covers exactly
    /// the state shown.
    pub attested: bool,
    /// That checkpoint's id.
    pub checkpoint: Option<String>,
    /// The names of the members whose signatures count, by key.
    pub signers: Vec<String>,
    /// The canonical state hash of what is shown.
    pub state_hash: String,
    /// When not attested: the latest attested checkpoint of an earlier state.
    pub latest: Option<String>,
}

impl AttestedBy {
    /// One sentence for the page or the report.
    pub fn describe(&self) -> String {
        match (&self.checkpoint, &self.latest) {
            (Some(id), _) if self.attested => format!(
                "attested by checkpoint {id}, signed by {}",
                self.signers.join(", ")
            ),
            (_, Some(latest)) => format!(
                "not yet attested; the latest attested checkpoint, {latest}, covers an earlier state"
            ),
            _ => "not yet attested; no checkpoint has been attested".to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    pub assessments: usize,
    pub open_assessments: usize,
    pub notes: usize,
    pub consensus: usize,
    pub divergence: usize,
    pub open_notes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Section {
    pub key: String,
    pub group: String,
    pub title: String,
    /// Assessments whose status is draft or open, highest risk first.
    pub open_assessments: Vec<AssessmentView>,
    pub consensus: Vec<NoteView>,
    pub divergence: Vec<NoteView>,
    pub open_notes: Vec<NoteView>,
}

impl Section {
    fn is_empty(&self) -> bool {
        self.open_assessments.is_empty()
            && self.consensus.is_empty()
            && self.divergence.is_empty()
            && self.open_notes.is_empty()
    }

    fn push_note(&mut self, note: NoteView) {
        match note.standing {
            Standing::Consensus => self.consensus.push(note),
            Standing::Divergence => self.divergence.push(note),
            Standing::Open => self.open_notes.push(note),
        }
    }
}

/// Builds the briefing of every round, without saying whether it is attested.
pub fn build(doc: &Document, genesis: &Genesis, roster: &Roster) -> Report {
    build_with(doc, genesis, roster, None, AttestedBy::default())
}

/// Builds the briefing for `round` (every round when `None`), saying what
/// `attested` says about the state it shows.
pub fn build_with(
    doc: &Document,
    genesis: &Genesis,
    roster: &Roster,
    round: Option<Round>,
    attested: AttestedBy,
) -> Report {
    let assessments = doc.assessments(roster);
    let notes: Vec<NoteView> = doc
        .notes(roster)
        .into_iter()
        .filter(|n| round.is_none_or(|r| n.round.as_deref() == Some(r.as_str())))
        .collect();
    let mut totals = Totals {
        assessments: assessments.len(),
        notes: notes.len(),
        ..Totals::default()
    };
    let mut sections: Vec<Section> = doc
        .categories()
        .into_iter()
        .map(|c| Section {
            group: c.group,
            title: c.title,
            key: c.key,
            open_assessments: Vec::new(),
            consensus: Vec::new(),
            divergence: Vec::new(),
            open_notes: Vec::new(),
        })
        .collect();
    let mut general = Section {
        key: "general".into(),
        group: String::new(),
        title: "General".into(),
        open_assessments: Vec::new(),
        consensus: Vec::new(),
        divergence: Vec::new(),
        open_notes: Vec::new(),
    };
    for a in &assessments {
        if a.status == "draft" || a.status == "open" {
            totals.open_assessments += 1;
            if let Some(s) = sections.iter_mut().find(|s| s.key == a.category) {
                s.open_assessments.push(a.clone());
            }
        }
    }
    for s in &mut sections {
        s.open_assessments
            .sort_by(|a, b| b.risk.cmp(&a.risk).then_with(|| a.id.cmp(&b.id)));
    }
    for note in notes {
        match note.standing {
            Standing::Consensus => totals.consensus += 1,
            Standing::Divergence => totals.divergence += 1,
            Standing::Open => totals.open_notes += 1,
        }
        // A note appears under every category of the assessments it links.
        let mut keys: Vec<&str> = note
            .assessments
            .iter()
            .filter_map(|id| assessments.iter().find(|a| a.id == *id))
            .map(|a| a.category.as_str())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut placed = false;
        for key in keys {
            if let Some(s) = sections.iter_mut().find(|s| s.key == key) {
                s.push_note(note.clone());
                placed = true;
            }
        }
        if !placed {
            general.push_note(note);
        }
    }
    Report {
        network: genesis.name().to_string(),
        network_id: genesis.network_id().to_string(),
        heads: doc.heads().iter().map(ToString::to_string).collect(),
        members: roster
            .members()
            .map(|m| Institution {
                node_id: m.key.node_id().to_string(),
                name: m.name.clone(),
            })
            .collect(),
        totals,
        categories: sections.into_iter().filter(|s| !s.is_empty()).collect(),
        general,
        round: round.map(|r| r.as_str().to_string()),
        checkpoint: attested,
    }
}

/// The versions of the briefing's Markdown and HTML rendering. An exported
/// report names the version it was rendered with, and `checkpoint verify`
/// renders it again with the same one, so a report attested and exported
/// by an older build still verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Renderer {
    /// Document strings written as they are. Frozen: the reports exported
    /// before renderer versions existed carry none and are checked with it.
    V1,
    /// Every document string escaped for the format it is written into.
    V2,
}

impl Renderer {
    /// What new exports are rendered with.
    pub const CURRENT: Renderer = Renderer::V2;

    /// The version number written into an exported report.
    pub fn number(self) -> u32 {
        match self {
            Renderer::V1 => 1,
            Renderer::V2 => 2,
        }
    }

    pub fn from_number(number: u32) -> Option<Self> {
        match number {
            1 => Some(Renderer::V1),
            2 => Some(Renderer::V2),
            _ => None,
        }
    }

    pub fn markdown(self, report: &Report) -> String {
        match self {
            Renderer::V1 => v1::to_markdown(report),
            Renderer::V2 => markdown_v2(report),
        }
    }

    pub fn html(self, report: &Report) -> String {
        match self {
            Renderer::V1 => v1::to_html(report),
            Renderer::V2 => html_v2(report),
        }
    }
}

/// Renders the briefing as Markdown, fit to print, with the current
/// renderer: every string from the document escaped, so none can start a
/// heading, a list item (a position), a table row or HTML.
pub fn to_markdown(report: &Report) -> String {
    Renderer::CURRENT.markdown(report)
}

/// Renders the briefing as a standalone HTML page, fit to print, with the
/// current renderer.
pub fn to_html(report: &Report) -> String {
    Renderer::CURRENT.html(report)
}

/// The long name of the report's round, if it is limited to one.
fn round_name(report: &Report) -> Option<&'static str> {
    report
        .round
        .as_deref()
        .and_then(|r| r.parse::<Round>().ok())
        .map(Round::describe)
}

/// A hex id as a code span; anything else (never written by Concord) as
/// escaped text.
fn code(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        format!("`{s}`")
    } else {
        md(s)
    }
}

/// The first twelve characters of a head, for show.
fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

fn markdown_v2(report: &Report) -> String {
    let mut out = String::new();
    let t = &report.totals;
    let _ = writeln!(out, "# Briefing: {}\n", md(&report.network));
    if let Some(round) = round_name(report) {
        let _ = writeln!(out, "- Round: {}", md(round));
    }
    let _ = writeln!(out, "- Network id: {}", code(&report.network_id));
    let members: Vec<String> = report.members.iter().map(|m| md(&m.name)).collect();
    let _ = writeln!(out, "- Members: {}", members.join(", "));
    let heads: Vec<String> = report.heads.iter().map(|h| code(short(h))).collect();
    let _ = writeln!(
        out,
        "- Document heads: {}",
        if heads.is_empty() {
            "(empty)".into()
        } else {
            heads.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "- Assessments: {} ({} open); notes: {} ({} at consensus, {} diverging, {} open)",
        t.assessments, t.open_assessments, t.notes, t.consensus, t.divergence, t.open_notes
    );
    if !report.checkpoint.state_hash.is_empty() {
        let _ = writeln!(out, "- State: {}", md(&report.checkpoint.describe()));
    }
    let _ = writeln!(out);
    let mut group = "";
    let general = (!report.general.is_empty()).then_some(&report.general);
    for section in report.categories.iter().chain(general) {
        if section.group != group && !section.group.is_empty() {
            group = &section.group;
            let _ = writeln!(out, "## {}\n", md(taxonomy::group_title(group)));
        }
        let _ = writeln!(out, "### {}\n", md(&section.title));
        for (heading, notes) in [
            ("Points of divergence", &section.divergence),
            ("Consensus reached", &section.consensus),
            ("Notes still open", &section.open_notes),
        ] {
            if !notes.is_empty() {
                let _ = writeln!(out, "**{heading}**\n");
                for note in notes {
                    write_note(&mut out, note);
                }
            }
        }
        if !section.open_assessments.is_empty() {
            let _ = writeln!(out, "**Open assessments**\n");
            let _ = writeln!(out, "| id | title | L | S | risk | status | author |");
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            for a in &section.open_assessments {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    md(&a.id),
                    md(&a.title),
                    score(a.likelihood),
                    score(a.severity),
                    score(a.risk),
                    md(&a.status),
                    md(&a.author.name)
                );
            }
            let _ = writeln!(out);
            for a in section
                .open_assessments
                .iter()
                .filter(|a| !a.conflicts.is_empty())
            {
                for c in &a.conflicts {
                    let values: Vec<String> = c
                        .values
                        .iter()
                        .map(|v| md(&format!("{} by {}", v.value, v.author.name)))
                        .collect();
                    let _ = writeln!(
                        out,
                        "> Concurrent edits of {} on {}: {}.",
                        md(&c.field),
                        md(&a.id),
                        values.join("; ")
                    );
                }
                let _ = writeln!(out);
            }
        }
    }
    out
}

/// One note: its topic as the list item, its body quoted (every line
/// escaped and prefixed, so none can pass for a position or a heading),
/// then one nested item per position.
fn write_note(out: &mut String, note: &NoteView) {
    let round = note.round.as_deref().unwrap_or("no round");
    let _ = writeln!(
        out,
        "- **{}** ({}, {}, {})\n",
        md(&note.topic),
        md(&note.id),
        md(&note.kind),
        md(round)
    );
    out.push_str(&text::markdown_lines(&note.body, "  > "));
    let _ = writeln!(out);
    for p in &note.positions {
        let position = p.position.as_deref().unwrap_or("no position yet");
        let comment = if p.comment.is_empty() {
            String::new()
        } else {
            format!(": {}", md(&p.comment))
        };
        let counted = if p.counts {
            ""
        } else {
            " (not a current member)"
        };
        let _ = writeln!(
            out,
            "  - {}{}: **{}**{}",
            md(&p.institution.name),
            counted,
            md(position),
            comment
        );
    }
    let _ = writeln!(out);
}

fn html_v2(report: &Report) -> String {
    use maud::{DOCTYPE, html};
    // maud escapes every string it is given, in text and in attributes;
    // control characters and bidi overrides are shown as visible escapes.
    let line = |s: &str| text::visible(s, text::Lines::One).into_owned();
    let t = &report.totals;
    let general = (!report.general.is_empty()).then_some(&report.general);
    let title = match round_name(report) {
        Some(round) => format!("Briefing: {} ({round} round)", line(&report.network)),
        None => format!("Briefing: {}", line(&report.network)),
    };
    let notes = |heading: &str, notes: &[NoteView]| {
        html! {
            @if !notes.is_empty() {
                h4 { (heading) }
                @for note in notes {
                    section.note {
                        p {
                            strong { (line(&note.topic)) }
                            " (" (line(&note.id)) ", " (line(&note.kind)) ", "
                            (line(note.round.as_deref().unwrap_or("no round"))) ")"
                        }
                        p.body { (text::visible(&note.body, text::Lines::Many)) }
                        table.positions {
                            tr { th { "Institution" } th { "Position" } th { "Comment" } }
                            @for p in &note.positions {
                                @let stance = p.position.as_deref().and_then(|s| s.parse::<Stance>().ok());
                                tr {
                                    td {
                                        (line(&p.institution.name))
                                        @if !p.counts { " (not a current member)" }
                                    }
                                    td.(stance.map_or("none", Stance::as_str)) {
                                        (line(p.position.as_deref().unwrap_or("no position yet")))
                                    }
                                    td.body { (text::visible(&p.comment, text::Lines::Many)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (maud::PreEscaped(PRINT_CSS)) }
            }
            body {
                h1 { (title) }
                ul.facts {
                    li { "Network id: " code { (line(&report.network_id)) } }
                    li {
                        "Members: "
                        (report.members.iter().map(|m| line(&m.name)).collect::<Vec<_>>().join(", "))
                    }
                    li {
                        "Document heads: "
                        @if report.heads.is_empty() { "(empty)" }
                        @for h in &report.heads { code { (line(short(h))) } " " }
                    }
                    li {
                        "Assessments: " (t.assessments) " (" (t.open_assessments) " open); notes: "
                        (t.notes) " (" (t.consensus) " at consensus, " (t.divergence)
                        " diverging, " (t.open_notes) " open)"
                    }
                    @if !report.checkpoint.state_hash.is_empty() {
                        li.state { "State: " (line(&report.checkpoint.describe())) }
                    }
                }
                @for section in report.categories.iter().chain(general) {
                    h2 {
                        @if !section.group.is_empty() {
                            (line(taxonomy::group_title(&section.group))) ": "
                        }
                        (line(&section.title))
                    }
                    (notes("Points of divergence", &section.divergence))
                    (notes("Consensus reached", &section.consensus))
                    (notes("Notes still open", &section.open_notes))
                    @if !section.open_assessments.is_empty() {
                        h4 { "Open assessments" }
                        table {
                            tr {
                                th { "Id" } th { "Title" } th { "L" } th { "S" } th { "Risk" }
                                th { "Status" } th { "Author" }
                            }
                            @for a in &section.open_assessments {
                                tr {
                                    td { code { (line(&a.id)) } }
                                    td { (line(&a.title)) }
                                    td { (score(a.likelihood)) }
                                    td { (score(a.severity)) }
                                    td { (score(a.risk)) }
                                    td { (line(&a.status)) }
                                    td { (line(&a.author.name)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page.into_string() + "\n"
}

fn score(value: Option<u8>) -> String {
    value.map_or("-".to_string(), |v| v.to_string())
}

/// The printed briefing's style: plain, black on white, tables ruled; a
/// body keeps its line breaks.
const PRINT_CSS: &str = "body{font-family:Georgia,serif;max-width:50em;margin:2em auto;color:#111}\
table{border-collapse:collapse;width:100%;margin:.5em 0}\
td,th{border:1px solid #999;padding:.25em .5em;text-align:left;vertical-align:top}\
td.disagree{font-weight:bold}section.note{page-break-inside:avoid}\
.body{white-space:pre-line}code{font-size:.9em}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::NewNote;
    use crate::identity::Identity;
    use crate::model::NoteKind;
    use crate::roster::{Role, RosterEntry};

    #[test]
    fn a_round_keeps_only_its_notes_and_the_state_line_says_whether_attested() {
        let me = Identity::generate().expect("key");
        let entry = RosterEntry {
            key: me.public(),
            name: "A".into(),
            role: Role::Member,
        };
        let genesis = Genesis::create(&me, "Net", vec![entry], None, 0).expect("genesis");
        let roster = genesis.roster();
        let mut doc = Document::new(me.public());
        for (id, round) in [("cn-one", Round::TrackII), ("cn-two", Round::Multilateral)] {
            let note = NewNote {
                topic: format!("topic {id}"),
                body: "b".into(),
                kind: NoteKind::Agenda,
                round: Some(round),
                assessments: Vec::new(),
            };
            doc.add_note(id, &note, 1).expect("note");
        }
        let not_yet = AttestedBy {
            state_hash: "x".into(),
            latest: Some("ck-1".into()),
            ..AttestedBy::default()
        };
        let r = build_with(&doc, &genesis, &roster, Some(Round::TrackII), not_yet);
        let md = to_markdown(&r);
        assert!(
            md.contains("topic cn-one") && !md.contains("topic cn-two"),
            "{md}"
        );
        assert!(md.contains("- Round: Track II"));
        assert!(md.contains("- State: not yet attested; the latest attested checkpoint, ck-1"));
        assert!(to_html(&r).contains("(Track II round)"));
        let all = build(&doc, &genesis, &roster);
        assert_eq!(all.totals.notes, 2);
        assert!(
            !to_markdown(&all).contains("- State:"),
            "no claim either way"
        );
    }

    /// Counts what a Markdown parser sees: headings (by text), list items,
    /// and raw HTML events.
    fn structure(md: &str) -> (Vec<String>, usize, usize) {
        use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
        let (mut headings, mut items, mut html) = (Vec::new(), 0, 0);
        let mut heading: Option<String> = None;
        for event in Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_GFM) {
            match event {
                Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
                Event::End(TagEnd::Heading(_)) => headings.extend(heading.take()),
                Event::Text(t) | Event::Code(t) => {
                    if let Some(h) = heading.as_mut() {
                        h.push_str(&t);
                    }
                }
                Event::Start(Tag::Item) => items += 1,
                Event::Html(_) | Event::InlineHtml(_) | Event::Start(Tag::HtmlBlock) => html += 1,
                _ => {}
            }
        }
        (headings, items, html)
    }

    #[test]
    fn a_member_cannot_forge_headings_positions_or_html_in_the_briefing() {
        let (me, other) = (
            Identity::generate().expect("key"),
            Identity::generate().expect("key"),
        );
        let entries = [(&me, "Inst a"), (&other, "Inst b")]
            .map(|(id, name)| RosterEntry {
                key: id.public(),
                name: name.into(),
                role: Role::Member,
            })
            .to_vec();
        let genesis = Genesis::create(&me, "Net", entries, None, 0).expect("genesis");
        let roster = genesis.roster();
        let mut doc = Document::new(me.public());
        // Written straight into the document, as a hostile member's own
        // build would: no validation on the way.
        let note = NewNote {
            topic: "Labelling\n# Heading".into(),
            body: "First line.\n- Inst b: **agree**: forged\n# Not a heading\n\
                   <script>alert(1)</script>"
                .into(),
            kind: NoteKind::Agenda,
            round: None,
            assessments: Vec::new(),
        };
        doc.add_note("cn-hostile", &note, 1).expect("note");
        let comment = "<img src=x onerror=alert(1)>\n## Comment heading\n  - Inst b: **agree**";
        doc.set_position(
            "cn-hostile",
            me.node_id(),
            crate::model::Stance::Disagree,
            comment,
            2,
        )
        .expect("position");
        let report = build(&doc, &genesis, &roster);
        let md = to_markdown(&report);
        let (headings, items, html) = structure(&md);
        assert_eq!(headings, ["Briefing: Net", "General"], "{md}");
        // Four facts, one note, one position per member.
        assert_eq!(items, 4 + 1 + 2, "{md}");
        assert_eq!(html, 0, "{md}");
        let position_lines: Vec<&str> = md.lines().filter(|l| l.starts_with("  - ")).collect();
        assert_eq!(position_lines.len(), 2, "{md}");
        assert!(
            md.contains("  > \\- Inst b: \\*\\*agree\\*\\*: forged"),
            "{md}"
        );
        // The frozen first renderer is what let it through.
        let (old_headings, old_items, old_html) = structure(&Renderer::V1.markdown(&report));
        assert!(old_headings.len() > 2 && old_items > 7 && old_html > 0);

        let html = to_html(&report);
        assert!(
            !html.contains("<script") && !html.contains("<img"),
            "{html}"
        );
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(html.contains("Labelling\\n# Heading"), "{html}");
    }
}
