//! `concord categories` and `concord assess ...`: the risk register.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::bail;
use concord_node::api::{AssessmentInput, Request, Response, UpdateInput, Written};
use concord_node::config::DataDir;
use concord_node::model::{AssessmentView, Conflict};
use concord_node::taxonomy;

use super::{unexpected, write};
use crate::args::{AssessCommand, CategoriesArgs, CategoriesCommand};
use crate::output;
use crate::session::Session;

pub fn categories(dir: &DataDir, args: CategoriesArgs) -> anyhow::Result<ExitCode> {
    if let Some(CategoriesCommand::Add { key, group, title }) = args.command {
        let w = write(
            &mut Session::open(dir)?,
            Request::AddCategory { key, group, title },
        )?;
        output::text(&format!(
            "Added category {} (change {})",
            w.id,
            short(&w.change)
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    // Without an initialised node only the built-in taxonomy exists.
    let categories = if dir.key_file().exists() {
        match Session::open(dir)?.call(Request::Categories)? {
            Response::Categories(c) => c,
            other => bail!(unexpected(&other)),
        }
    } else {
        taxonomy::builtin()
    };
    if args.json.json {
        output::json(&categories)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    for (group, title) in taxonomy::GROUPS {
        let _ = writeln!(out, "{title} ({group})");
        for c in categories.iter().filter(|c| c.group == group) {
            let mark = if c.builtin { "" } else { "  [added]" };
            let _ = writeln!(
                out,
                "  {:<28} {}{mark}",
                output::line(&c.key),
                output::line(&c.title)
            );
        }
    }
    output::text(&out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn run(session: &mut Session, cmd: AssessCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AssessCommand::Add {
            category,
            title,
            summary,
            likelihood,
            severity,
            mitigations,
            status,
            json,
        } => {
            let w = write(
                session,
                Request::AddAssessment(AssessmentInput {
                    category,
                    title,
                    summary,
                    likelihood,
                    severity,
                    mitigations,
                    status,
                }),
            )?;
            if json.json {
                output::json(&w)?;
            } else {
                output::text(&w.id)?;
            }
        }
        AssessCommand::List {
            category,
            status,
            json,
        } => {
            let list = match session.call(Request::ListAssessments { category, status })? {
                Response::Assessments(list) => list,
                other => bail!(unexpected(&other)),
            };
            if json.json {
                output::json(&list)?;
            } else if list.is_empty() {
                output::text("No assessments.")?;
            } else {
                let mut table = output::table(&[
                    "ID", "CATEGORY", "TITLE", "L", "S", "RISK", "STATUS", "AUTHOR",
                ]);
                for a in &list {
                    let n = |v: Option<u8>| v.map_or("-".into(), |v| v.to_string());
                    let flag = if a.conflicts.is_empty() { "" } else { " (!)" };
                    output::row(
                        &mut table,
                        [
                            a.id.clone(),
                            a.category.clone(),
                            format!("{}{flag}", a.title),
                            n(a.likelihood),
                            n(a.severity),
                            n(a.risk),
                            a.status.clone(),
                            a.author.name.clone(),
                        ],
                    );
                }
                if list.iter().any(|a| !a.conflicts.is_empty()) {
                    output::text(&format!(
                        "{table}\n(!) = concurrent edits: see `assess show ID`"
                    ))?;
                } else {
                    output::text(&table.to_string())?;
                }
            }
        }
        AssessCommand::Show { id, json } => {
            let a = match session.call(Request::ShowAssessment { id })? {
                Response::Assessment(a) => a,
                other => bail!(unexpected(&other)),
            };
            if json.json {
                output::json(&a)?;
            } else {
                output::text(&render(&a))?;
            }
        }
        AssessCommand::Update {
            id,
            category,
            title,
            summary,
            likelihood,
            severity,
            mitigations,
            status,
            json,
        } => {
            let update = UpdateInput {
                category,
                title,
                summary,
                likelihood,
                severity,
                mitigations: (!mitigations.is_empty()).then_some(mitigations),
                status,
            };
            if update.category.is_none()
                && update.title.is_none()
                && update.summary.is_none()
                && update.likelihood.is_none()
                && update.severity.is_none()
                && update.mitigations.is_none()
                && update.status.is_none()
            {
                bail!(
                    "nothing to update: give at least one of --category, --title, --summary, --likelihood, --severity, --mitigation, --status"
                );
            }
            let w = write(session, Request::UpdateAssessment { id, update })?;
            written(json.json, &w, "Updated")?;
        }
        AssessCommand::Comment { id, text, json } => {
            let w = write(session, Request::Comment { id, text })?;
            written(json.json, &w, "Commented on")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn short(change: &str) -> &str {
    &change[..16.min(change.len())]
}

pub fn written(json: bool, w: &Written, verb: &str) -> anyhow::Result<()> {
    if json {
        output::json(w)
    } else {
        output::text(&format!("{verb} {} (change {})", w.id, short(&w.change)))
    }
}

fn render(a: &AssessmentView) -> String {
    let n = |v: Option<u8>| v.map_or("-".into(), |v| v.to_string());
    let mut out = String::new();
    let line = output::line;
    let _ = writeln!(out, "{}  {}", line(&a.id), line(&a.title));
    let _ = writeln!(out, "category:   {}", line(&a.category));
    let _ = writeln!(out, "status:     {}", line(&a.status));
    let _ = writeln!(
        out,
        "likelihood: {}   severity: {}   risk: {}",
        n(a.likelihood),
        n(a.severity),
        n(a.risk)
    );
    let _ = writeln!(
        out,
        "author:     {} ({})",
        line(&a.author.name),
        line(&a.author.node_id)
    );
    let _ = writeln!(
        out,
        "created:    {}   updated: {}",
        line(&a.created_at),
        line(&a.updated_at)
    );
    if !a.summary.is_empty() {
        let _ = write!(out, "\n{}", output::quoted(&a.summary));
    }
    if !a.mitigations.is_empty() {
        let _ = writeln!(out, "\nmitigations:");
        for m in &a.mitigations {
            let _ = writeln!(out, "  - {}", line(m));
        }
    }
    if !a.comments.is_empty() {
        let _ = writeln!(out, "\ncomments:");
        for c in &a.comments {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                line(&c.at),
                line(&c.author.name),
                line(&c.text)
            );
        }
    }
    render_conflicts(&mut out, &a.conflicts);
    out
}

/// Lists concurrent values of a field and who wrote each.
pub fn render_conflicts(out: &mut String, conflicts: &[Conflict]) {
    if conflicts.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nconcurrent edits (all values kept; the one marked * is shown):"
    );
    for c in conflicts {
        let _ = writeln!(out, "  {}:", output::line(&c.field));
        for v in &c.values {
            let mark = if v.winner { "*" } else { " " };
            let _ = writeln!(
                out,
                "   {mark} {} by {}",
                output::line(&v.value.to_string()),
                output::line(&v.author.name)
            );
        }
    }
}
