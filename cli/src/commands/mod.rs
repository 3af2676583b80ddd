//! One module per command group; each uses the node crate's public API only.

mod bundle;
mod demo;
mod id;
mod network;
mod notes;
mod register;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use concord_node::Replica;
use concord_node::config::DataDir;

use crate::args::{Cli, Command};

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = data_dir(cli.data_dir)?;
    match cli.command {
        Command::Init { name } => id::init(&dir, &name),
        Command::Id(flag) => id::show(&open(&dir)?, flag.json),
        Command::Network(cmd) => network::run(&dir, cmd),
        Command::Categories(args) => register::categories(&dir, args),
        Command::Assess(cmd) => register::run(&dir, cmd),
        Command::Note(cmd) => notes::run(&dir, cmd),
        Command::Export { out, since, json } => {
            bundle::export(&open(&dir)?, &out, &since, json.json)
        }
        Command::Import { file, json } => bundle::import(&mut open(&dir)?, &file, json.json),
        Command::Verify(flag) => bundle::verify(&open(&dir)?, flag.json),
        Command::Report { format, out } => report::run(&open(&dir)?, format, out.as_deref()),
        Command::Demo { dir } => demo::run(dir.as_deref()),
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

/// Opens the node in `dir`, saying which directory when that fails.
fn open(dir: &DataDir) -> anyhow::Result<Replica> {
    Replica::open(dir).with_context(|| format!("cannot open the node in {}", dir.root().display()))
}
