//! `concord report`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use concord_node::api::{Request, Response};
use concord_node::report;

use super::unexpected;
use crate::args::ReportFormat;
use crate::output;
use crate::session::Session;

pub fn run(
    session: &mut Session,
    format: ReportFormat,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let report = match session.call(Request::Report)? {
        Response::Report(r) => r,
        other => bail!(unexpected(&other)),
    };
    let text = match format {
        ReportFormat::Markdown => report::to_markdown(&report),
        ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
    };
    match out {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => output::text(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}
