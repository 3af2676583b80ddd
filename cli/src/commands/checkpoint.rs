//! `concord checkpoint sign|list|verify` and `concord history`.
//!
//! `sign` and `list` run through a [`Session`] like every command that
//! touches the document; `verify` needs no node at all: only the file and
//! the genesis, so anyone can run it anywhere.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use concord_node::api::{Request, Response};
use concord_node::checkpoint::Checkpoints;
use concord_node::checkpoint::verify::verify_file;
use concord_node::config::DataDir;
use concord_node::genesis::Genesis;
use concord_node::history::History;

use super::{unexpected, write};
use crate::args::CheckpointCommand;
use crate::output;
use crate::session::Session;

/// Exit code of `checkpoint verify` when the file does not verify.
const DOES_NOT_VERIFY: u8 = 3;

pub fn run(dir: &DataDir, cmd: CheckpointCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CheckpointCommand::Sign { checkpoint, json } => {
            let mut session = Session::open(dir)?;
            let w = write(&mut session, Request::SignCheckpoint { checkpoint })?;
            if json.json {
                output::json(&w)?;
                return Ok(ExitCode::SUCCESS);
            }
            let list = checkpoints(&mut session)?;
            let mut out = format!("Signed checkpoint {} (change {}).\n", w.id, &w.change[..12]);
            if let Some(c) = list.get(&w.id) {
                if c.attested {
                    let _ = writeln!(
                        out,
                        "It is attested: {} of quorum {} member signatures.",
                        c.member_signatures, c.quorum
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "Not yet attested: {} of quorum {} member signatures; other members \
                         attest it with `concord checkpoint sign` once they hold this state.",
                        c.member_signatures, c.quorum
                    );
                }
            }
            output::text(&out)?;
        }
        CheckpointCommand::List(flag) => {
            let list = checkpoints(&mut Session::open(dir)?)?;
            if flag.json {
                output::json(&list)?;
            } else {
                output::text(&render_list(&list))?;
            }
        }
        CheckpointCommand::Verify {
            file,
            genesis,
            json,
        } => {
            let genesis = match genesis {
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Genesis::decode(&bytes).with_context(|| {
                        format!("{} is not a valid genesis file", path.display())
                    })?
                }
                None => joined_genesis(dir)?,
            };
            return verify(&file, &genesis, json.json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn checkpoints(session: &mut Session) -> anyhow::Result<Box<Checkpoints>> {
    match session.call(Request::Checkpoints)? {
        Response::Checkpoints(c) => Ok(c),
        other => bail!(unexpected(&other)),
    }
}

fn render_list(list: &Checkpoints) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "current state hash: {}", list.state_hash);
    let _ = writeln!(
        out,
        "current state:      {}",
        match (&list.current, &list.latest_attested) {
            (Some(id), _) => format!("attested by {id}"),
            (None, Some(id)) => format!("not yet attested (latest attested checkpoint: {id})"),
            (None, None) => "not yet attested (no checkpoint is attested)".to_string(),
        }
    );
    if list.checkpoints.is_empty() {
        let _ = writeln!(out, "\nNo checkpoints.");
    } else {
        let mut table = output::table(&[
            "CHECKPOINT",
            "CREATED",
            "SIGNED BY",
            "SIGNATURES",
            "STATE",
            "ATTESTED",
        ]);
        for c in &list.checkpoints {
            output::row(
                &mut table,
                [
                    c.id.clone(),
                    c.created_at.clone(),
                    c.signatures
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    format!("{} of quorum {}", c.member_signatures, c.quorum),
                    match &c.problem {
                        None => format!("verified {}", &c.state_hash[..12]),
                        Some(p) => p.clone(),
                    },
                    if c.attested { "yes" } else { "no" }.to_string(),
                ],
            );
        }
        let _ = writeln!(out, "\n{table}");
    }
    for bad in &list.invalid {
        let _ = writeln!(out, "ignored entry {}: {}", bad.key, bad.problem);
    }
    out
}

/// The genesis of the network the node in `dir` joined, running or not.
fn joined_genesis(dir: &DataDir) -> anyhow::Result<Genesis> {
    let no_node = || {
        format!(
            "no --genesis given and no node in {} to take it from: pass --genesis FILE, the \
             network's genesis file",
            dir.root().display()
        )
    };
    if !dir.key_file().exists() {
        bail!(no_node());
    }
    match Session::open(dir)
        .with_context(no_node)?
        .call(Request::Genesis)?
    {
        Response::Genesis(g) => Ok(Genesis::decode(&g.bytes)?),
        other => bail!(unexpected(&other)),
    }
}

fn verify(file: &Path, genesis: &Genesis, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    // A bundle carries its roster records and is checked under them; a
    // report is checked against the founding roster.
    let roster = genesis.roster();
    match verify_file(&bytes, genesis, &roster) {
        Ok(verified) => {
            if json {
                output::json(&serde_json::json!({ "ok": true, "verified": verified }))?;
            } else {
                let mut out = format!(
                    "OK: {} {} matches attested checkpoint {} of network {}.\n",
                    verified.file,
                    file.display(),
                    verified.checkpoint,
                    output::line(genesis.name())
                );
                let _ = writeln!(
                    out,
                    "signed by {} (quorum {}); state hash {}",
                    output::line(&verified.signers.join(", ")),
                    verified.quorum,
                    verified.state_hash
                );
                if verified.renderer == Some(1) {
                    let _ = writeln!(
                        out,
                        "note: it was rendered by renderer 1, which wrote the members' text \
                         unescaped: text in it may imitate headings or other institutions' \
                         positions; `concord report --checkpoint {}` renders it escaped",
                        verified.checkpoint
                    );
                }
                if let Some(n) = verified.changes {
                    let _ = writeln!(out, "every one of its {n} signed changes verified");
                }
                output::text(&out)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let mut chain = vec![e.to_string()];
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                chain.push(cause.to_string());
                source = cause.source();
            }
            if json {
                output::json(&serde_json::json!({ "ok": false, "error": chain }))?;
            } else {
                eprintln!(
                    "{} does not verify: {}",
                    file.display(),
                    concord_node::text::for_terminal(&chain.join(": "))
                );
            }
            Ok(ExitCode::from(DOES_NOT_VERIFY))
        }
    }
}

/// `concord history ID`.
pub fn history(session: &mut Session, id: String, json: bool) -> anyhow::Result<ExitCode> {
    let history: Box<History> = match session.call(Request::History { id })? {
        Response::History(h) => h,
        other => bail!(unexpected(&other)),
    };
    if json {
        output::json(&history)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(&["WHEN", "INSTITUTION", "CHANGE", "FIELDS", "SIGNATURE"]);
    for c in &history.changes {
        output::row(
            &mut table,
            [
                c.at.clone(),
                c.author.name.clone(),
                c.change[..12].to_string(),
                c.fields.join(", "),
                match &c.problem {
                    None => "verified".to_string(),
                    Some(p) => format!("FAILED: {p}"),
                },
            ],
        );
    }
    output::text(&format!(
        "{} {}: {}\n\n{table}",
        history.kind,
        output::line(&history.id),
        output::line(&history.title)
    ))?;
    Ok(ExitCode::SUCCESS)
}
