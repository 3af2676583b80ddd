//! `concord init` and `concord id`.

use std::process::ExitCode;

use anyhow::bail;
use concord_node::Replica;
use concord_node::api::{Request, Response};
use concord_node::config::DataDir;

use super::unexpected;
use crate::output;
use crate::session::Session;

pub fn init(dir: &DataDir, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let summary = Replica::init(dir, name)?;
    if json {
        output::json(&summary)?;
        return Ok(ExitCode::SUCCESS);
    }
    output::text(&format!(
        "Created the identity of {name} in {dir}\n\
         node id:     {node_id}\n\
         fingerprint: {fp}\n\
         \n\
         Give your node id to the institution creating the network, and read\n\
         the fingerprint to them on a separate channel so they can check it.\n\
         The key is in {key} (mode 0600): back it up offline.",
        name = summary.name,
        dir = dir.root().display(),
        node_id = summary.node_id,
        fp = summary.fingerprint,
        key = dir.key_file().display(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub fn show(session: &mut Session, json: bool) -> anyhow::Result<ExitCode> {
    let summary = match session.call(Request::Identity)? {
        Response::Identity(s) => s,
        other => bail!(unexpected(&other)),
    };
    if json {
        output::json(&summary)?;
    } else {
        output::text(&format!(
            "name:        {}\nnode id:     {}\npublic key:  {}\nfingerprint: {}",
            summary.name, summary.node_id, summary.public_key, summary.fingerprint
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
