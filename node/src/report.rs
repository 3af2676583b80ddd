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
use crate::model::{AssessmentView, Institution, NoteView, Standing};
use crate::roster::Roster;
use crate::taxonomy;

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

/// Builds the briefing.
pub fn build(doc: &Document, genesis: &Genesis, roster: &Roster) -> Report {
    let assessments = doc.assessments(roster);
    let notes = doc.notes(roster);
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
    }
}

/// Renders the briefing as Markdown, fit to print.
pub fn to_markdown(report: &Report) -> String {
    let mut out = String::new();
    let t = &report.totals;
    let _ = writeln!(out, "# Briefing: {}\n", report.network);
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
