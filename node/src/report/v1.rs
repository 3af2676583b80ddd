//! The briefing's renderer version 1, frozen: reports exported before
//! document strings were escaped carry no renderer version, and
//! `checkpoint verify` re-renders them with this code to compare. It writes
//! document strings as they are, so it must never change and never be used
//! for a new export (see [`super::Renderer`]).

use std::fmt::Write as _;

use super::{Report, round_name};
use crate::model::NoteView;
use crate::taxonomy;

/// Renders the briefing as Markdown, fit to print.
pub fn to_markdown(report: &Report) -> String {
    let mut out = String::new();
    let t = &report.totals;
    let _ = writeln!(out, "# Briefing: {}\n", report.network);
    if let Some(round) = round_name(report) {
        let _ = writeln!(out, "- Round: {round}");
    }
    let _ = writeln!(out, "- Network id: `{}`", report.network_id);
    let members: Vec<&str> = report.members.iter().map(|m| m.name.as_str()).collect();
    let _ = writeln!(out, "- Members: {}", members.join(", "));
    let heads: Vec<String> = report
        .heads
        .iter()
        .map(|h| format!("`{}`", &h[..12.min(h.len())]))
        .collect();
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
        "- Assessments: {} ({} open); notes: {} ({} at consensus, {} diverging, {} open)\n",
        t.assessments, t.open_assessments, t.notes, t.consensus, t.divergence, t.open_notes
    );
    if !report.checkpoint.state_hash.is_empty() {
        // Remove the blank line above: the attestation belongs to the list.
        out.pop();
        let _ = writeln!(out, "- State: {}\n", report.checkpoint.describe());
    }
    let mut group = "";
    let general = (!report.general.is_empty()).then_some(&report.general);
    for section in report.categories.iter().chain(general) {
        if section.group != group && !section.group.is_empty() {
            group = &section.group;
            let _ = writeln!(out, "## {}\n", taxonomy::group_title(group));
        }
        let _ = writeln!(out, "### {}\n", section.title);
        if !section.divergence.is_empty() {
            let _ = writeln!(out, "**Points of divergence**\n");
            for note in &section.divergence {
                write_note(&mut out, note);
            }
        }
        if !section.consensus.is_empty() {
            let _ = writeln!(out, "**Consensus reached**\n");
            for note in &section.consensus {
                write_note(&mut out, note);
            }
        }
        if !section.open_notes.is_empty() {
            let _ = writeln!(out, "**Notes still open**\n");
            for note in &section.open_notes {
                write_note(&mut out, note);
            }
        }
        if !section.open_assessments.is_empty() {
            let _ = writeln!(out, "**Open assessments**\n");
            let _ = writeln!(out, "| id | title | L | S | risk | status | author |");
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            for a in &section.open_assessments {
                let n = |v: Option<u8>| v.map_or("-".to_string(), |v| v.to_string());
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    a.id,
                    cell(&a.title),
                    n(a.likelihood),
                    n(a.severity),
                    n(a.risk),
                    a.status,
                    cell(&a.author.name)
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
                        .map(|v| format!("{} by {}", v.value, v.author.name))
                        .collect();
                    let _ = writeln!(
                        out,
                        "> Concurrent edits of {} on {}: {}.",
                        c.field,
                        a.id,
                        values.join("; ")
                    );
                }
                let _ = writeln!(out);
            }
        }
    }
    out
}

fn write_note(out: &mut String, note: &NoteView) {
    let round = note.round.as_deref().unwrap_or("no round");
    let _ = writeln!(
        out,
        "- **{}** ({}, {}, {})",
        note.topic, note.id, note.kind, round
    );
    let _ = writeln!(out, "  {}", note.body.replace('\n', "\n  "));
    for p in &note.positions {
        let position = p.position.as_deref().unwrap_or("no position yet");
        let comment = if p.comment.is_empty() {
            String::new()
        } else {
            format!(": {}", p.comment)
        };
        let counted = if p.counts {
            ""
        } else {
            " (not a current member)"
        };
        let _ = writeln!(
            out,
            "  - {}{}: **{}**{}",
            p.institution.name, counted, position, comment
        );
    }
    let _ = writeln!(out);
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Renders the briefing as a standalone HTML page, fit to print.
pub fn to_html(report: &Report) -> String {
    use maud::{DOCTYPE, html};
    let t = &report.totals;
    let general = (!report.general.is_empty()).then_some(&report.general);
    let title = match round_name(report) {
        Some(round) => format!("Briefing: {} ({round} round)", report.network),
        None => format!("Briefing: {}", report.network),
    };
    let notes = |heading: &str, notes: &[NoteView]| {
        html! {
            @if !notes.is_empty() {
                h4 { (heading) }
                @for note in notes {
                    section.note {
                        p {
                            strong { (note.topic) }
                            " (" (note.id) ", " (note.kind) ", "
                            (note.round.as_deref().unwrap_or("no round")) ")"
                        }
                        p { (note.body) }
                        table.positions {
                            tr { th { "Institution" } th { "Position" } th { "Comment" } }
                            @for p in &note.positions {
                                tr {
                                    td {
                                        (p.institution.name)
                                        @if !p.counts { " (not a current member)" }
                                    }
                                    td.(p.position.as_deref().unwrap_or("none")) {
                                        (p.position.as_deref().unwrap_or("no position yet"))
                                    }
                                    td { (p.comment) }
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
                    li { "Network id: " code { (report.network_id) } }
                    li {
                        "Members: "
                        (report.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "))
                    }
                    li {
                        "Document heads: "
                        @if report.heads.is_empty() { "(empty)" }
                        @for h in &report.heads { code { (&h[..12.min(h.len())]) } " " }
                    }
                    li {
                        "Assessments: " (t.assessments) " (" (t.open_assessments) " open); notes: "
                        (t.notes) " (" (t.consensus) " at consensus, " (t.divergence)
                        " diverging, " (t.open_notes) " open)"
                    }
                    @if !report.checkpoint.state_hash.is_empty() {
                        li.state { "State: " (report.checkpoint.describe()) }
                    }
                }
                @for section in report.categories.iter().chain(general) {
                    h2 {
                        @if !section.group.is_empty() {
                            (taxonomy::group_title(&section.group)) ": "
                        }
                        (section.title)
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
                                    td { code { (a.id) } }
                                    td { (a.title) }
                                    td { (score(a.likelihood)) }
                                    td { (score(a.severity)) }
                                    td { (score(a.risk)) }
                                    td { (a.status) }
                                    td { (a.author.name) }
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

/// The printed briefing's style: plain, black on white, tables ruled.
const PRINT_CSS: &str = "body{font-family:Georgia,serif;max-width:50em;margin:2em auto;color:#111}\
table{border-collapse:collapse;width:100%;margin:.5em 0}\
td,th{border:1px solid #999;padding:.25em .5em;text-align:left;vertical-align:top}\
td.disagree{font-weight:bold}section.note{page-break-inside:avoid}\
code{font-size:.9em}";
