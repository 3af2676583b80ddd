//! `concord member ...` (roster changes by quorum) and `concord key rotate`.

use std::process::ExitCode;

use anyhow::bail;
use concord_node::api::{MembersView, ProposalInput, ProposalView, Request, Response};

use super::unexpected;
use crate::args::{KeyCommand, MemberCommand, ProposeCommand};
use crate::output;
use crate::session::Session;

pub fn run(session: &mut Session, command: MemberCommand) -> anyhow::Result<ExitCode> {
    match command {
        MemberCommand::Propose(propose) => {
            let (input, json) = match propose {
                ProposeCommand::Add {
                    id,
                    name,
                    role,
                    json,
                } => (
                    ProposalInput::Add {
                        node_id: id,
                        name,
                        role,
                    },
                    json,
                ),
                ProposeCommand::Remove { id, json } => {
                    (ProposalInput::Remove { node_id: id }, json)
                }
                ProposeCommand::Role { id, role, json } => {
                    (ProposalInput::Role { node_id: id, role }, json)
                }
                ProposeCommand::Quorum { quorum, json } => (ProposalInput::Quorum { quorum }, json),
            };
            let view = proposal(session.call(Request::Propose(input))?)?;
            print_outcome(&view, json.json, "Proposed")
        }
        MemberCommand::Approve {
            id,
            confirm_claims,
            json,
        } => {
            let view = proposal(session.call(Request::Approve { id, confirm_claims })?)?;
            print_outcome(&view, json.json, "Approved")
        }
        MemberCommand::Proposals { all, json } => {
            let list = match session.call(Request::Proposals { all })? {
                Response::Proposals(list) => list,
                other => bail!(unexpected(&other)),
            };
            if json.json {
                output::json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            if list.is_empty() {
                output::text(if all {
                    "No roster proposals."
                } else {
                    "No pending roster proposals."
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = output::table(&[
                "ID",
                "ACTION",
                "SIGNED BY",
                "STATE",
                "PROPOSED",
                "BUILDS ON",
                "CUT-OFF CLAIMED",
            ]);
            for p in &list {
                output::row(
                    &mut table,
                    [
                        p.id[..12].to_string(),
                        p.action.clone(),
                        signers(p),
                        state(p),
                        p.proposed_at.clone(),
                        p.after
                            .as_deref()
                            .map_or("genesis".into(), |a| a.get(..12).unwrap_or(a).to_string()),
                        cut_off(p),
                    ],
                );
            }
            output::text(&format!("{table}\n\n{}", claims(&list)))?;
            Ok(ExitCode::SUCCESS)
        }
        MemberCommand::List(json) => {
            let view = match session.call(Request::Members)? {
                Response::Members(view) => view,
                other => bail!(unexpected(&other)),
            };
            if json.json {
                output::json(&view)?;
                return Ok(ExitCode::SUCCESS);
            }
            print_members(&view)
        }
    }
}

pub fn key(session: &mut Session, command: KeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeyCommand::Rotate(json) => {
            let rotated = match session.call(Request::RotateKey)? {
                Response::Rotated(r) => r,
                other => bail!(unexpected(&other)),
            };
            if json.json {
                output::json(&rotated)?;
                return Ok(ExitCode::SUCCESS);
            }
            output::text(&format!(
                "Key rotated. {name} now signs as\n\
                 node id:     {id}\n\
                 fingerprint: {fp}\n\
                 The succession (signed by the old and the new key) goes to every peer;\n\
                 changes signed by the old key {old} after it are rejected everywhere.\n\
                 The old key file is kept beside the new one as identity.key.retired-*: keep\n\
                 it offline, or destroy it.",
                name = rotated.identity.name,
                id = rotated.identity.node_id,
                fp = rotated.identity.fingerprint,
                old = rotated.old_node_id,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn proposal(response: Response) -> anyhow::Result<ProposalView> {
    match response {
        Response::Proposal(view) => Ok(*view),
        other => bail!(unexpected(&other)),
    }
}

fn print_outcome(view: &ProposalView, json: bool, verb: &str) -> anyhow::Result<ExitCode> {
    if json {
        output::json(view)?;
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = match view.state.as_str() {
        "applied" => "It is in force now.".to_string(),
        "void" => format!(
            "It cannot take effect: {}.",
            view.reason.as_deref().unwrap_or("void")
        ),
        _ => format!(
            "It needs {} more member signature(s) of a quorum of {}: other members run\n\
             `concord member approve {}`.",
            view.needs.unwrap_or(0),
            view.quorum,
            &view.id[..12]
        ),
    };
    output::text(&format!(
        "{verb}: {}\nproposal id: {}\nsigned by:   {}\n{outcome}",
        view.action,
        view.id,
        signers(view)
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn signers(p: &ProposalView) -> String {
    p.signers
        .iter()
        .map(|s| {
            if s.counts {
                s.name.clone()
            } else {
                format!("{} (not counted)", s.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The record's claim about its target's last change, beside what this
/// node holds when they differ.
fn cut_off(p: &ProposalView) -> String {
    match &p.target {
        None => "-".into(),
        Some(t) if t.claimed_last_change == t.held_last_change => {
            format!("{}: {}", t.name, t.claimed_last_change)
        }
        Some(t) => format!(
            "{}: {} (this node holds {})",
            t.name, t.claimed_last_change, t.held_last_change
        ),
    }
}

/// Every signature's own claims: when, the target's last change it had
/// seen, and the document heads it named.
fn claims(list: &[ProposalView]) -> String {
    let mut table = output::table(&[
        "ID",
        "SIGNER",
        "SIGNED AT",
        "TARGET'S LAST CHANGE SEEN",
        "HEADS SEEN",
        "RECORD",
    ]);
    for p in list {
        for s in &p.signers {
            let seen = match &p.target {
                Some(_) => s.seen_last_change.to_string(),
                None => "-".into(),
            };
            let heads = match s.heads_not_held {
                0 => s.heads.len().to_string(),
                n => format!("{} ({n} not held here)", s.heads.len()),
            };
            output::row(
                &mut table,
                [
                    p.id[..12].to_string(),
                    s.name.clone(),
                    s.signed_at.clone(),
                    seen,
                    heads,
                    s.record.get(..12).unwrap_or(&s.record).to_string(),
                ],
            );
        }
    }
    format!("What each signature claims:\n{table}")
}

fn state(p: &ProposalView) -> String {
    match p.state.as_str() {
        "pending" => format!("pending: needs {} more", p.needs.unwrap_or(0)),
        "void" => format!("void: {}", p.reason.as_deref().unwrap_or("")),
        other => other.to_string(),
    }
}

fn print_members(view: &MembersView) -> anyhow::Result<ExitCode> {
    let mut table = output::table(&["NAME", "ROLE", "SINCE", "NODE ID", "FINGERPRINT"]);
    for e in &view.entries {
        let name = if e.this_node {
            format!("{} (this node)", e.name)
        } else {
            e.name.clone()
        };
        output::row(
            &mut table,
            [
                name,
                e.role.clone(),
                e.since.clone().unwrap_or_default(),
                e.node_id.clone(),
                e.fingerprint.clone(),
            ],
        );
    }
    let members = view.entries.iter().filter(|e| e.role == "member").count();
    let mut text = format!(
        "{table}\nQuorum: {} of {members} members sign a roster change.",
        view.quorum
    );
    if !view.former.is_empty() {
        let mut former = output::table(&["LEFT", "NAME", "HOW", "WHEN", "LAST CHANGE KEPT"]);
        for f in &view.former {
            output::row(
                &mut former,
                [
                    f.node_id.clone(),
                    f.name.clone(),
                    f.left.clone(),
                    f.left_at.clone(),
                    f.last_change.to_string(),
                ],
            );
        }
        text.push_str(&format!("\n\nKeys that left the roster:\n{former}"));
    }
    output::text(&text)?;
    Ok(ExitCode::SUCCESS)
}
