//! Concord's integration tests. Each test runs the real `concord` binary in
//! fresh temporary data directories (see the `support` crate).

mod bad_input;
mod browser;
mod checkpoint;
mod cli;
mod convergence;
mod crash;
mod daemon;
mod fork;
mod fuzz_corpus;
mod hostile;
mod hostile_text;
mod netns;
mod roster;
mod simulation;
mod stale_api;
mod sync;
mod web;
