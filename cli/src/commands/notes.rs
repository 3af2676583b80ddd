//! `concord note ...`: consensus notes and positions.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::bail;
use concord_node::api::{NoteInput, Request, Response};
use concord_node::model::{NoteView, Stance};

use super::register::{render_conflicts, written};
use super::{unexpected, write};
use crate::args::NoteCommand;
use crate::output;
use crate::session::Session;

pub fn run(session: &mut Session, cmd: NoteCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NoteCommand::Add {
            topic,
            body,
            kind,
            round,
            assessments,
            json,
        } => {
            let w = write(
                session,
                Request::AddNote(NoteInput {
                    topic,
                    body,
                    kind,
                    round,
                    assessments,
                }),
            )?;
            if json.json {
                output::json(&w)?;
            } else {
                output::text(&w.id)?;
            }
        }
        NoteCommand::List(flag) => {
            let notes = match session.call(Request::ListNotes)? {
                Response::Notes(notes) => notes,
                other => bail!(unexpected(&other)),
            };
            if flag.json {
                output::json(&notes)?;
            } else if notes.is_empty() {
                output::text("No notes.")?;
            } else {
                let mut table =
                    output::table(&["ID", "TOPIC", "KIND", "ROUND", "STANDING", "POSITIONS"]);
                for n in &notes {
                    output::row(
                        &mut table,
                        [
                            n.id.clone(),
                            n.topic.clone(),
                            n.kind.clone(),
                            n.round.clone().unwrap_or_else(|| "-".into()),
                            n.standing.to_string(),
                            tally(n),
                        ],
                    );
                }
                output::text(&table.to_string())?;
            }
        }
        NoteCommand::Show { id, json } => {
            let note = match session.call(Request::ShowNote { id })? {
                Response::Note(note) => note,
                other => bail!(unexpected(&other)),
            };
            if json.json {
                output::json(&note)?;
            } else {
                output::text(&render(&note))?;
            }
        }
        NoteCommand::Position {
            id,
            position,
            comment,
            json,
        } => {
            let verb = format!("Recorded {position} on");
            let w = write(
                session,
                Request::Position {
                    id,
                    position,
                    comment,
                },
            )?;
            written(json.json, &w, &verb)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "2 agree, 1 disagree, 1 pending" over the current members.
fn tally(note: &NoteView) -> String {
    let counted: Vec<_> = note.positions.iter().filter(|p| p.counts).collect();
    let mut parts = Vec::new();
    for stance in Stance::ALL {
        let n = counted
            .iter()
            .filter(|p| p.position.as_deref() == Some(stance.as_str()))
            .count();
        if n > 0 {
            parts.push(format!("{n} {stance}"));
        }
    }
    let pending = counted.iter().filter(|p| p.position.is_none()).count();
    if pending > 0 {
        parts.push(format!("{pending} pending"));
    }
    parts.join(", ")
}

fn render(n: &NoteView) -> String {
    let mut out = String::new();
    let line = output::line;
    let _ = writeln!(out, "{}  {}", line(&n.id), line(&n.topic));
    let _ = writeln!(out, "standing:    {}", n.standing);
    let _ = writeln!(out, "kind:        {}", line(&n.kind));
    let _ = writeln!(
        out,
        "round:       {}",
        line(n.round.as_deref().unwrap_or("-"))
    );
    if !n.assessments.is_empty() {
        let _ = writeln!(out, "assessments: {}", line(&n.assessments.join(", ")));
    }
    let _ = writeln!(
        out,
        "author:      {} ({})",
        line(&n.author.name),
        line(&n.author.node_id)
    );
    let _ = writeln!(
        out,
        "created:     {}   updated: {}",
        line(&n.created_at),
        line(&n.updated_at)
    );
    let _ = writeln!(out, "\n{}\npositions:", output::quoted(&n.body));
    for p in &n.positions {
        let position = p.position.as_deref().unwrap_or("(none yet)");
        let note = if p.counts {
            ""
        } else {
            "  [not a current member]"
        };
        let comment = if p.comment.is_empty() {
            String::new()
        } else {
            format!("  {:?}", p.comment)
        };
        let _ = writeln!(
            out,
            "  {:<28} {:<12}{comment}{note}",
            line(&p.institution.name),
            line(position)
        );
    }
    render_conflicts(&mut out, &n.conflicts);
    out
}
