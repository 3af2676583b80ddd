//! Concord's fuzz entry points, shared by the cargo-fuzz targets in
//! `fuzz_targets/` and by the stable corpus replay in the workspace's
//! `tests` crate (which includes `entry.rs` by path).

pub mod entry;

/// Called once before the first input. libFuzzer's panic hook aborts on
/// every panic, even one caught further up; the node runs Automerge under
/// `catch_unwind` and turns its panics into typed errors
/// (`DocError::Panicked`), so those are refusals, not crashes. This puts
/// Rust's default hook back: a caught panic is printed and the run goes on,
/// and a panic that escapes the node still ends the run as a crash
/// (libfuzzer-sys aborts when the target unwinds).
pub fn init() {
    drop(std::panic::take_hook());
}
