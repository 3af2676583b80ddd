//! `concord export`, `concord import` and `concord verify`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use concord_node::Replica;
use concord_node::replica::read_file;
use serde::Serialize;

use crate::output;

/// Exit code of `verify` when a stored change fails to re-verify.
const EXIT_VERIFY_FAILED: u8 = 3;

#[derive(Serialize)]
struct Exported {
    file: String,
    changes: usize,
    heads: Vec<String>,
}

pub fn export(
    replica: &Replica,
    out: &Path,
    since: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let since = since
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("--since: {s:?} is not a change hash (64 hex digits)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (bytes, changes) = replica.export(&since)?;
    if out.exists() && out.is_dir() {
        bail!("{} is a directory", out.display());
    }
    // Write beside the target, then rename, so a failure never leaves half a bundle.
    let tmp = out.with_extension("partial");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    let heads = replica
        .document()
        .heads()
        .iter()
        .map(ToString::to_string)
        .collect();
    let report = Exported {
        file: out.display().to_string(),
        changes,
        heads,
    };
    if json {
        output::json(&report)?;
    } else {
        output::text(&format!(
            "Exported {changes} change(s) to {}",
            out.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(replica: &mut Replica, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = read_file(file)?;
    let summary = replica
        .import(&bytes)
        .with_context(|| format!("cannot import {}", file.display()))?;
    if json {
        output::json(&summary)?;
    } else {
        output::text(&format!(
            "Imported {} new change(s) ({} already known)",
            summary.new, summary.already_known
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(replica: &Replica, json: bool) -> anyhow::Result<ExitCode> {
    let audit = replica.audit()?;
    if json {
        output::json(&audit)?;
    } else {
        let mut table = output::table(&["AUTHOR", "ROLE", "CHANGES", "VERIFIED", "REJECTED"]);
        for a in &audit.authors {
            table.add_row(vec![
                a.name.clone(),
                a.role.clone().unwrap_or_else(|| "not on roster".into()),
                a.changes.to_string(),
                a.verified.to_string(),
                a.rejected.to_string(),
            ]);
        }
        let mut text = format!(
            "network {}: {} stored change(s)\n\n{table}\n",
            audit.network_id, audit.envelopes
        );
        for p in &audit.problems {
            text.push_str(&format!(
                "\nPROBLEM change {} by {}: {}",
                p.change, p.author, p.problem
            ));
        }
        for f in &audit.forks {
            text.push_str(&format!(
                "\nFORK by {} ({}): change number {} was signed twice; kept {}, refused {} (recorded {})",
                f.name, f.author, f.seq, f.kept, f.refused, f.recorded_at
            ));
        }
        text.push_str(if audit.ok {
            "\nEvery stored change verified."
        } else {
            "\nSome stored changes failed verification."
        });
        output::text(&text)?;
    }
    Ok(if audit.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_VERIFY_FAILED)
    })
}
