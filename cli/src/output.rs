//! Printing data: JSON for `--json`, tables and text otherwise. Data goes to
//! stdout; diagnostics go to stderr through `tracing`.
//!
//! Every string printed as text may come from a hostile member's change, so
//! this is the edge where it is neutralised: [`text`] shows every control
//! character but line breaks and tabs as a visible escape (`\u{1b}`), table
//! cells and one-line fields ([`row`], [`line`]) show line breaks too, and
//! multi-line values are quoted line by line ([`quoted`]) so that none of
//! their lines can pass for a line the program printed. JSON is escaped by
//! serde.

use std::borrow::Cow;
use std::io::Write;

use comfy_table::{ContentArrangement, Table, presets};
use concord_node::text;
use serde::Serialize;

/// Prints a value as pretty JSON followed by a newline.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints text to stdout, control characters shown as visible escapes.
pub fn text(s: &str) -> anyhow::Result<()> {
    let s = text::for_terminal(s);
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())?;
    if !s.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}

/// A borderless table with a header row, sized to the terminal.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

/// Adds a row whose cells are each shown on one line.
pub fn row<S: AsRef<str>>(table: &mut Table, cells: impl IntoIterator<Item = S>) {
    table.add_row(
        cells
            .into_iter()
            .map(|c| line(c.as_ref()).into_owned())
            .collect::<Vec<_>>(),
    );
}

/// A one-line field (a title, a name, an id): line breaks, tabs and other
/// control characters shown as visible escapes.
pub fn line(s: &str) -> Cow<'_, str> {
    text::for_terminal_line(s)
}

/// A multi-line value (a body, a summary), every line prefixed with `> `
/// and indented, so that none of it reads as a field or a position.
pub fn quoted(s: &str) -> String {
    let mut out = String::new();
    for l in s.lines() {
        out.push_str("  > ");
        out.push_str(l);
        out.push('\n');
    }
    out
}
