//! One module per command group. Every command that reads or writes the
//! document builds an `api::Request` and runs it through a [`Session`], so it
//! works the same whether the node is running or not.

mod bench;
mod bench_live;
mod bundle;
mod checkpoint;
mod demo;
mod id;
mod member;
mod network;
mod notes;
mod register;
mod report;
mod run;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use concord_node::api::{Request, Response};
use concord_node::config::DataDir;

use crate::args::{Cli, Command};
use crate::session::Session;

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = data_dir(cli.data_dir)?;
    match cli.command {
        Command::Init { name, json } => id::init(&dir, &name, json.json),
        Command::Id(flag) => id::show(&mut Session::open(&dir)?, flag.json),
        Command::Network(cmd) => network::run(&dir, cmd),
        Command::Categories(args) => register::categories(&dir, args),
        Command::Assess(cmd) => register::run(&mut Session::open(&dir)?, cmd),
        Command::Note(cmd) => notes::run(&mut Session::open(&dir)?, cmd),
        Command::Export { out, since, json } => {
            bundle::export(&mut Session::open(&dir)?, &out, since, json.json)
        }
        Command::Import { file, json } => {
            bundle::import(&mut Session::open(&dir)?, &file, json.json)
        }
        Command::Verify(flag) => bundle::verify(&mut Session::open(&dir)?, flag.json),
        Command::Report {
            format,
            round,
            checkpoint,
            out,
        } => report::run(
            &mut Session::open(&dir)?,
            format,
            round,
            checkpoint,
            out.as_deref(),
        ),
        Command::Checkpoint(cmd) => checkpoint::run(&dir, cmd),
        Command::History { id, json } => {
            checkpoint::history(&mut Session::open(&dir)?, id, json.json)
        }
        Command::Run(args) => run::run(&dir, args),
        Command::Status(flag) => status::status(&mut Session::open(&dir)?, flag.json),
        Command::Peers(flag) => status::peers(&mut Session::open(&dir)?, flag.json),
        Command::Member(cmd) => member::run(&mut Session::open(&dir)?, cmd),
        Command::Key(cmd) => member::key(&mut Session::open(&dir)?, cmd),
        Command::Demo(args) => demo::run(args.dir.as_deref(), args.keep_running),
        Command::Bench(args) => bench::run(args),
    }
}

/// `--data-dir`, else `CONCORD_DATA_DIR` (both handled by clap), else the
/// platform's data directory.
fn data_dir(flag: Option<PathBuf>) -> anyhow::Result<DataDir> {
    if let Some(dir) = flag {
        return Ok(DataDir::new(dir));
    }
    let dirs = directories::ProjectDirs::from("org", "Concord", "concord").context(
        "cannot find a home directory for the default data dir: pass --data-dir or set CONCORD_DATA_DIR",
    )?;
    Ok(DataDir::new(dirs.data_dir()))
}

/// Names the response a command did not expect (a version mismatch between
/// the CLI and a running node).
fn unexpected(response: &Response) -> anyhow::Error {
    anyhow::anyhow!("unexpected answer from the node: {response:?}")
}

/// Runs a request and insists on a `Written` answer.
fn write(session: &mut Session, request: Request) -> anyhow::Result<concord_node::api::Written> {
    match session.call(request)? {
        Response::Written(w) => Ok(w),
        other => bail!(unexpected(&other)),
    }
}
