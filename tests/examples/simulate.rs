//! Runs the deterministic simulation (see `support::sim`) for many seeds, or
//! replays one: `cargo run --release -p tests --example simulate -- --seeds 1000`
//! or `... -- --seed 17`. Exits non-zero if any seed fails, naming them.

use anyhow::{Result, bail};
use clap::Parser;
use support::sim::{self, Plan};

#[derive(Debug, Parser)]
#[command(about = "Deterministic simulation of a five-node Concord federation")]
struct Args {
    /// How many seeds to run, starting at --first.
    #[arg(long, default_value_t = 50)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Replay this one seed (overrides --seeds and --first).
    #[arg(long)]
    seed: Option<u64>,
    /// Changes the members write per run.
    #[arg(long, default_value_t = Plan::default().writes)]
    writes: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let plan = Plan {
        writes: args.writes,
        ..Plan::default()
    };
    let seeds = match args.seed {
        Some(seed) => seed..seed + 1,
        None => args.first..args.first + args.seeds,
    };
    let started = std::time::Instant::now();
    let mut passed = 0;
    let mut failed = Vec::new();
    for seed in seeds {
        match sim::run(seed, &plan) {
            Ok(outcome) => {
                println!("{outcome}");
                passed += 1;
            }
            Err(e) => {
                println!("FAILED {e}");
                failed.push(seed);
            }
        }
    }
    println!(
        "{passed} passed, {} failed (in {:.1} s)",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(seed) = failed.first() {
        bail!(
            "failing seeds: {failed:?}; replay one with: cargo run -p tests --example simulate -- \
             --seed {seed}"
        );
    }
    Ok(())
}
