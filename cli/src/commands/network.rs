//! `concord network create|join|show|recover|resynced`.

use std::fs;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use concord_node::api::{NetworkView, Request, Response};
use concord_node::config::DataDir;
use concord_node::genesis::Genesis;
use concord_node::replica::{Replica, parse_node_id, read_file};
use concord_node::roster::{Role, RosterEntry};

use super::unexpected;
use crate::args::NetworkCommand;
use crate::output;
use crate::session::Session;

pub fn run(dir: &DataDir, cmd: NetworkCommand) -> anyhow::Result<ExitCode> {
    // The store does not open when it needs recovering: no session.
    if let NetworkCommand::Recover { file, pending } = &cmd {
        let bytes = read_file(file)?;
        let genesis = Genesis::decode(&bytes)
            .with_context(|| format!("{} is not a valid genesis", file.display()))?;
        let network = genesis.network_id();
        let aside = Replica::recover_store(dir, genesis, *pending)?;
        output::text(&format!(
            "The corrupt store was moved to {}.\n\
             An empty store joined to network {network} is in its place. Start the node with \
             `concord run --bootstrap <a member's address>`: sync refills the store. Writes are \
             refused until you run `concord network resynced` (node stopped), once \
             `concord peers` shows a member with nothing lacking either way.",
            aside.display()
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut session = Session::open(dir)?;
    match cmd {
        NetworkCommand::Create {
            name,
            members,
            observers,
            quorum,
            out,
            json,
        } => {
            let Some(replica) = session.local() else {
                bail!(
                    "the node is running with its network already set: stop it before creating a network"
                );
            };
            let mut roster = Vec::new();
            for (specs, role) in [(&members, Role::Member), (&observers, Role::Observer)] {
                for spec in specs {
                    roster.push(roster_entry(spec, role)?);
                }
            }
            if out.exists() {
                bail!("{} already exists; choose another --out", out.display());
            }
            let genesis = replica.create_network(&name, roster, quorum)?;
            fs::write(&out, genesis.encode())
                .with_context(|| format!("cannot write the genesis to {}", out.display()))?;
            if json.json {
                output::json(&NetworkView::of(&genesis, &genesis.roster()))?;
                return Ok(ExitCode::SUCCESS);
            }
            output::text(&format!(
                "Created network {:?}\nnetwork id: {}\nquorum:     {} of {} members\n\
                 Genesis written to {}: give it to every institution on the roster,\n\
                 who join with `concord network join {}`.",
                genesis.name(),
                genesis.network_id(),
                genesis.body().quorum,
                genesis.roster().members().count(),
                out.display(),
                out.display(),
            ))?;
        }
        NetworkCommand::Join {
            file,
            pending,
            json,
        } => {
            let bytes = read_file(&file)?;
            let genesis = Genesis::decode(&bytes)
                .with_context(|| format!("{} is not a valid genesis", file.display()))?;
            let Some(replica) = session.local() else {
                bail!(
                    "the node is running with its network already set: stop it before joining a network"
                );
            };
            if pending {
                replica.join_pending(genesis.clone())?;
            } else {
                replica.join(genesis.clone())?;
            }
            if json.json {
                output::json(&NetworkView::of(&genesis, &genesis.roster()))?;
                return Ok(ExitCode::SUCCESS);
            }
            output::text(&format!(
                "Joined network {:?} ({})",
                genesis.name(),
                genesis.network_id()
            ))?;
            if !replica.chain_known() {
                output::text(
                    "This data directory did not make this node's key (restored from a copy?): \
                     the node signs nothing until it has caught up with a member once, so it \
                     cannot reuse one of the key's change numbers. Start it with a member to \
                     bootstrap from; if the key has never written anywhere, run \
                     `concord network resynced` instead.",
                )?;
            }
        }
        NetworkCommand::Recover { .. } => {}
        NetworkCommand::Resynced => {
            let Some(replica) = session.local() else {
                bail!("the node is running: stop it, then run `concord network resynced`");
            };
            replica.finish_resync()?;
            output::text("This node holds its key's whole chain, as you said: it writes again.")?;
        }
        NetworkCommand::Show(flag) => {
            let view = match session.call(Request::NetworkShow)? {
                Response::Network(view) => view,
                other => bail!(unexpected(&other)),
            };
            if flag.json {
                output::json(&view)?;
            } else {
                let mut table = output::table(&["NAME", "ROLE", "NODE ID", "FINGERPRINT"]);
                for e in &view.roster {
                    output::row(&mut table, [&e.name, &e.role, &e.node_id, &e.fingerprint]);
                }
                output::text(&format!(
                    "network:    {}\nnetwork id: {}\ncreated:    {} by {}\nquorum:     {}\n\n{table}",
                    output::line(&view.name),
                    view.network_id,
                    view.created_at,
                    view.created_by,
                    view.quorum
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn roster_entry(spec: &str, role: Role) -> anyhow::Result<RosterEntry> {
    let Some((id, name)) = spec.split_once('=') else {
        bail!("--{role} {spec:?} must be NODE_ID=NAME");
    };
    let node = parse_node_id(id)?;
    Ok(RosterEntry {
        key: node.public_key(),
        name: name.trim().to_string(),
        role,
    })
}
