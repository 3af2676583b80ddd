//! `concord init` and `concord id`.

use std::process::ExitCode;

use concord_node::Replica;
use concord_node::config::DataDir;
use concord_node::replica::IdentitySummary;

use crate::output;

pub fn init(dir: &DataDir, name: &str) -> anyhow::Result<ExitCode> {
    let summary = Replica::init(dir, name)?;
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

pub fn show(replica: &Replica, json: bool) -> anyhow::Result<ExitCode> {
    let summary: IdentitySummary = replica.summary();
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
