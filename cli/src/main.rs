//! The `concord` binary: parses the command line, sets up logging and runs
//! one command. Errors print with their whole chain and a non-zero exit code:
//! 1 for an error, 2 for a usage error (from clap), 3 when `verify` finds a
//! problem in the store.

mod args;
mod commands;
mod output;
mod session;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's allocator: a node catching up on 100,000
/// changes peaked at 850 MiB instead of 1,070 MiB (glibc's per-thread arenas
/// keep freed memory), and a restart loads the document about a third faster.
/// See docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let mut stderr = std::io::stderr().lock();
            // An error may echo a document string: no control character
            // reaches the terminal.
            let shown = |e: &dyn std::fmt::Display| {
                concord_node::text::for_terminal(&e.to_string()).into_owned()
            };
            let _ = writeln!(stderr, "error: {}", shown(&err));
            for cause in err.chain().skip(1) {
                let _ = writeln!(stderr, "  caused by: {}", shown(&cause));
            }
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
