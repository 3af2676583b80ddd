//! `concord report`: the briefing in Markdown, HTML or JSON, for one round
//! or all, at the current state or at an attested checkpoint. A briefing of
//! an attested state embeds its attestation, for `concord checkpoint verify`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use concord_node::api::{Request, Response};
use concord_node::checkpoint::verify::{self, Format};

use super::unexpected;
use crate::args::ReportFormat;
use crate::output;
use crate::session::Session;

pub fn run(
    session: &mut Session,
    format: ReportFormat,
    round: Option<String>,
    checkpoint: Option<String>,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let checkpoint = match checkpoint.as_deref() {
        Some("latest") => Some(latest_attested(session)?),
        _ => checkpoint,
    };
    let briefing = match session.call(Request::Briefing { round, checkpoint })? {
        Response::Briefing(b) => b,
        other => bail!(unexpected(&other)),
    };
    let format = match format {
        ReportFormat::Markdown => Format::Markdown,
        ReportFormat::Html => Format::Html,
        ReportFormat::Json => Format::Json,
    };
    let text = verify::export(&briefing.report, briefing.attestation.as_ref(), format);
    match out {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => output::text(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The id of the latest attested checkpoint, or an error saying there is none.
fn latest_attested(session: &mut Session) -> anyhow::Result<String> {
    match session.call(Request::Checkpoints)? {
        Response::Checkpoints(list) => list.latest_attested.clone().context(
            "no checkpoint is attested yet: members sign one with `concord checkpoint sign` \
             until a quorum has signed",
        ),
        other => bail!(unexpected(&other)),
    }
}
