//! `concord status` and `concord peers`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::bail;
use concord_node::api::{Request, Response};

use super::unexpected;
use crate::output;
use crate::session::Session;

pub fn status(session: &mut Session, json: bool) -> anyhow::Result<ExitCode> {
    let status = match session.call(Request::Status)? {
        Response::Status(s) => s,
        other => bail!(unexpected(&other)),
    };
    if json {
        output::json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    let state = if status.running {
        "running"
    } else {
        "not running"
    };
    let _ = writeln!(out, "node:       {} ({state})", output::line(&status.name));
    let _ = writeln!(out, "node id:    {}", status.node_id);
    match (&status.network, &status.network_id) {
        (Some(name), Some(id)) => {
            let _ = writeln!(out, "network:    {} ({id})", output::line(name));
        }
        _ => {
            let _ = writeln!(out, "network:    none joined");
        }
    }
    for addr in &status.listen {
        let _ = writeln!(out, "listening:  {addr}");
    }
    if let Some(api) = &status.api {
        let _ = writeln!(out, "local API:  {api}");
    }
    if let Some(web) = &status.web {
        let _ = writeln!(out, "web view:   {web}");
    }
    let _ = writeln!(out, "changes:    {}", status.envelopes);
    if status.resyncing {
        let _ = writeln!(
            out,
            "writes:     refused: the store was recovered and re-syncs from peers; once a \
             member's changes are all here, stop the node and run `concord network resynced`"
        );
    }
    if status.chain_unknown {
        let _ = writeln!(
            out,
            "writes:     refused until this node has caught up with a member once: this data \
             directory did not make its key and does not hold the key's changes (restored \
             from a copy?); if the key has never written anywhere, stop the node and run \
             `concord network resynced`"
        );
    }
    if let Some(seq) = status.tainted_from {
        let _ = writeln!(
            out,
            "writes:     refused: this node's changes from number {seq} on were built on a \
             change that no longer counts (a removal, or a proven fork); run `concord key \
             rotate` to write their effect again under a new key and go on writing"
        );
    }
    for f in &status.forks {
        let _ = writeln!(
            out,
            "fork:       {} ({}) signed two different changes numbered {}; its changes from \
             that number on do not count",
            output::line(&f.name),
            f.node_id,
            f.fork_at
        );
    }
    let heads: Vec<&str> = status.heads.iter().map(|h| &h[..12.min(h.len())]).collect();
    let _ = writeln!(out, "heads:      {}", heads.join(", "));
    if status.running {
        let connected = if status.connected.is_empty() {
            "none".to_string()
        } else {
            status.connected.join(", ")
        };
        let _ = writeln!(out, "connected:  {connected}");
        let _ = writeln!(
            out,
            "last sync:  {}",
            status.last_sync.as_deref().unwrap_or("never")
        );
    }
    output::text(&out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn peers(session: &mut Session, json: bool) -> anyhow::Result<ExitCode> {
    let peers = match session.call(Request::Peers)? {
        Response::Peers(p) => p,
        other => bail!(unexpected(&other)),
    };
    if json {
        output::json(&peers)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(&[
        "NAME",
        "ROLE",
        "CONNECTED",
        "LAST SEEN",
        "THEY LACK",
        "WE LACK",
        "FORKED AT",
        "ADDRESSES",
    ]);
    let n = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    for p in &peers {
        let connected = if p.this_node {
            "(this node)".to_string()
        } else if p.connected {
            "yes".to_string()
        } else {
            "no".to_string()
        };
        output::row(
            &mut table,
            [
                p.name.clone(),
                p.role.clone(),
                connected,
                p.last_seen.clone().unwrap_or_else(|| "-".into()),
                n(p.they_lack),
                n(p.we_lack),
                p.forked_at.map_or("-".to_string(), |f| f.to_string()),
                p.addresses.join(" "),
            ],
        );
    }
    output::text(&table.to_string())?;
    Ok(ExitCode::SUCCESS)
}
