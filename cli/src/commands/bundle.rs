//! `concord export`, `concord import` and `concord verify`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use concord_node::api::{Request, Response};
use concord_node::replica::read_file;
use serde::Serialize;

use super::unexpected;
use crate::output;
use crate::session::Session;

/// Exit code of `verify` when a stored change fails to re-verify.
const EXIT_VERIFY_FAILED: u8 = 3;

#[derive(Serialize)]
struct Exported {
    file: String,
    changes: usize,
    heads: Vec<String>,
}

pub fn export(
    session: &mut Session,
    out: &Path,
    since: Vec<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let since: Vec<String> = since.into_iter().filter(|s| !s.trim().is_empty()).collect();
    let exported = match session.call(Request::Export { since })? {
        Response::Exported(e) => e,
        other => bail!(unexpected(&other)),
    };
    if out.is_dir() {
        bail!("{} is a directory", out.display());
    }
    // Write beside the target, then rename, so a failure never leaves half a bundle.
    let tmp = out.with_extension("partial");
    std::fs::write(&tmp, &exported.bundle)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    let report = Exported {
        file: out.display().to_string(),
        changes: exported.changes,
        heads: exported.heads,
    };
    if json {
        output::json(&report)?;
    } else {
        output::text(&format!(
            "Exported {} change(s) to {}",
            report.changes,
            out.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(session: &mut Session, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let bundle = read_file(file)?;
    let summary = match session
        .call(Request::Import { bundle })
        .with_context(|| format!("cannot import {}", file.display()))?
    {
        Response::Imported(s) => s,
        other => bail!(unexpected(&other)),
    };
    if json {
        output::json(&summary)?;
    } else {
        let records = match summary.records {
            0 => String::new(),
            n => format!(" and {n} new roster record(s)"),
        };
        output::text(&format!(
            "Imported {} new change(s){records} ({} already known)",
            summary.new, summary.already_known
        ))?;
        if summary.forks_proven > 0 {
            output::text(&format!(
                "The bundle proved {} fork(s): a member signed two different changes with one \
                 number; its changes from there on no longer count (see `concord verify`).",
                summary.forks_proven
            ))?;
        }
        if summary.left_out > 0 {
            output::text(&format!(
                "Left out {} change(s) by a member frozen by a proven fork, or built on one.",
                summary.left_out
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(session: &mut Session, json: bool) -> anyhow::Result<ExitCode> {
    let audit = match session.call(Request::Verify)? {
        Response::Audit(a) => a,
        other => bail!(unexpected(&other)),
    };
    if json {
        output::json(&audit)?;
    } else {
        let mut table = output::table(&[
            "AUTHOR", "ROLE", "CHANGES", "VERIFIED", "ACCEPTED", "REJECTED", "FLAGGED",
        ]);
        for a in &audit.authors {
            output::row(
                &mut table,
                [
                    a.name.clone(),
                    a.role.clone().unwrap_or_else(|| "not on roster".into()),
                    a.changes.to_string(),
                    a.verified.to_string(),
                    a.accepted.to_string(),
                    a.rejected.to_string(),
                    a.flagged.to_string(),
                ],
            );
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
        for r in &audit.rejections {
            text.push_str(&format!(
                "\nREJECTED change {} by {}: {}",
                r.change, r.author, r.problem
            ));
        }
        for f in &audit.flags {
            text.push_str(&format!(
                "\nFLAGGED change {} by {}: {}",
                f.change, f.author, f.problem
            ));
        }
        for f in &audit.forks {
            text.push_str(&format!(
                "\nFORK by {} ({}): change number {} was signed twice; kept {}, refused {} (recorded {})",
                f.name, f.author, f.seq, f.kept, f.refused, f.recorded_at
            ));
        }
        for f in &audit.frozen {
            text.push_str(&format!(
                "\nFROZEN {} ({}): signed two different changes numbered {} ({}); none of its \
                 changes from that number on count",
                output::line(&f.name),
                f.author,
                f.fork_at,
                f.versions.join(" and ")
            ));
        }
        text.push_str(if audit.ok {
            "\nEvery stored change verified (rejected ones are kept, verified, and left out \
             of the document by the roster)."
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
