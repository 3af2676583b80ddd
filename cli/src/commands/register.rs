//! `concord categories` and `concord assess ...`: the risk register.

use std::fmt::Write as _;
use std::process::ExitCode;

use concord_node::config::DataDir;
use concord_node::doc::{AssessmentUpdate, NewAssessment};
use concord_node::model::{AssessmentView, Conflict, Score, Status};
use concord_node::replica::AssessmentFilter;
use concord_node::taxonomy;
use serde::Serialize;

use super::open;
use crate::args::{AssessCommand, CategoriesArgs, CategoriesCommand};
use crate::output;

/// What a write prints with `--json`.
#[derive(Serialize)]
pub struct Written {
    pub id: String,
    pub change: String,
}

pub fn categories(dir: &DataDir, args: CategoriesArgs) -> anyhow::Result<ExitCode> {
    if let Some(CategoriesCommand::Add { key, group, title }) = args.command {
        let change = open(dir)?.add_category(&key, &group, &title)?;
        output::text(&format!("Added category {key} (change {change})"))?;
        return Ok(ExitCode::SUCCESS);
    }
    // Without an initialised node only the built-in taxonomy exists.
    let categories = if dir.key_file().exists() {
        open(dir)?.categories()
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
            let _ = writeln!(out, "  {:<28} {}{mark}", c.key, c.title);
        }
    }
    output::text(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn score(field: &'static str, value: Option<i64>) -> anyhow::Result<Option<Score>> {
    Ok(value.map(|v| Score::new(field, v)).transpose()?)
}

pub fn run(dir: &DataDir, cmd: AssessCommand) -> anyhow::Result<ExitCode> {
    let mut replica = open(dir)?;
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
            let new = NewAssessment {
                category,
                title,
                summary,
                likelihood: score("likelihood", likelihood)?,
                severity: score("severity", severity)?,
                mitigations,
                status: status.parse()?,
            };
            let (id, change) = replica.add_assessment(new)?;
            if json.json {
                output::json(&Written {
                    id,
                    change: change.to_string(),
                })?;
            } else {
                output::text(&id)?;
            }
        }
        AssessCommand::List {
            category,
            status,
            json,
        } => {
            let filter = AssessmentFilter {
                category,
                status: status.map(|s| s.parse::<Status>()).transpose()?,
            };
            let list = replica.assessments(&filter)?;
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
                    table.add_row(vec![
                        a.id.clone(),
                        a.category.clone(),
                        format!("{}{flag}", a.title),
                        n(a.likelihood),
                        n(a.severity),
                        n(a.risk),
                        a.status.clone(),
                        a.author.name.clone(),
                    ]);
                }
                output::text(&format!(
                    "{table}\n(!) = concurrent edits: see `assess show ID`"
                ))?;
            }
        }
        AssessCommand::Show { id, json } => {
            let a = replica.assessment(&id)?;
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
            let update = AssessmentUpdate {
                category,
                title,
                summary,
                likelihood: score("likelihood", likelihood)?,
                severity: score("severity", severity)?,
                mitigations: (!mitigations.is_empty()).then_some(mitigations),
                status: status.map(|s| s.parse()).transpose()?,
            };
            if update.is_empty() {
                anyhow::bail!(
                    "nothing to update: give at least one of --category, --title, --summary, --likelihood, --severity, --mitigation, --status"
                );
            }
            let change = replica.update_assessment(&id, update)?;
            written(json.json, &id, &change.to_string(), "Updated")?;
        }
        AssessCommand::Comment { id, text, json } => {
            let change = replica.comment(&id, &text)?;
            written(json.json, &id, &change.to_string(), "Commented on")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn written(json: bool, id: &str, change: &str, verb: &str) -> anyhow::Result<()> {
    if json {
        output::json(&Written {
            id: id.to_string(),
            change: change.to_string(),
        })
    } else {
        output::text(&format!(
            "{verb} {id} (change {})",
            &change[..16.min(change.len())]
        ))
    }
}

fn render(a: &AssessmentView) -> String {
    let n = |v: Option<u8>| v.map_or("-".into(), |v| v.to_string());
    let mut out = String::new();
    let _ = writeln!(out, "{}  {}", a.id, a.title);
    let _ = writeln!(out, "category:   {}", a.category);
    let _ = writeln!(out, "status:     {}", a.status);
    let _ = writeln!(
        out,
        "likelihood: {}   severity: {}   risk: {}",
        n(a.likelihood),
        n(a.severity),
        n(a.risk)
    );
    let _ = writeln!(out, "author:     {} ({})", a.author.name, a.author.node_id);
    let _ = writeln!(
        out,
        "created:    {}   updated: {}",
        a.created_at, a.updated_at
    );
    if !a.summary.is_empty() {
        let _ = writeln!(out, "\n{}", a.summary);
    }
    if !a.mitigations.is_empty() {
        let _ = writeln!(out, "\nmitigations:");
        for m in &a.mitigations {
            let _ = writeln!(out, "  - {m}");
        }
    }
    if !a.comments.is_empty() {
        let _ = writeln!(out, "\ncomments:");
        for c in &a.comments {
            let _ = writeln!(out, "  [{}] {}: {}", c.at, c.author.name, c.text);
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
        let _ = writeln!(out, "  {}:", c.field);
        for v in &c.values {
            let mark = if v.winner { "*" } else { " " };
            let _ = writeln!(out, "   {mark} {} by {}", v.value, v.author.name);
        }
    }
}
