//! `concord report`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use concord_node::{Replica, ReplicaError, report};

use crate::args::ReportFormat;
use crate::output;

pub fn run(
    replica: &Replica,
    format: ReportFormat,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let genesis = replica.genesis().ok_or(ReplicaError::NoNetwork)?;
    let report = report::build(replica.document(), genesis, replica.roster()?);
    let text = match format {
        ReportFormat::Markdown => report::to_markdown(&report),
        ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
    };
    match out {
        Some(path) => {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => output::text(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}
