//! Text taken from the document, on its way in and on its way out.
//!
//! Every string inside a signed change may have been written by a hostile
//! member. On write, [`refused`] names the first character Concord's own
//! writes never store (controls, DEL, C1 controls, bidi overrides); on
//! output, [`for_terminal`] and [`for_terminal_line`] show such characters as
//! visible escapes, and [`markdown`] and [`markdown_line`] escape a string so
//! that no Markdown construct and no raw HTML can form from it. Pure
//! functions, no IO.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether a field may hold several lines (a body, a summary, a comment) or
/// exactly one (a title, a topic, a name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    One,
    Many,
}

/// Whether `c` is shown escaped on a terminal, or refused on write, in a
/// field of this kind: C0 controls (in a multi-line field, except `\n` and
/// `\t`), DEL, C1 controls, and the Unicode bidi overrides and isolates that
/// reorder what a reader sees.
pub fn is_unsafe(c: char, lines: Lines) -> bool {
    match c {
        '\n' | '\t' => lines == Lines::One,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    }
}

/// The first character that a field of this kind must not hold, with its
/// byte offset.
pub fn refused(value: &str, lines: Lines) -> Option<(usize, char)> {
    value.char_indices().find(|&(_, c)| is_unsafe(c, lines))
}

/// How an unsafe character is shown: `\n`, `\t`, `\r`, else `\u{1b}`.
fn push_visible(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// `s` with every character unsafe in a field of this kind shown as a visible
/// escape (`\n`, `\t`, `\r`, else `\u{1b}`).
pub fn visible(s: &str, lines: Lines) -> Cow<'_, str> {
    if refused(s, lines).is_none() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c, lines) {
            push_visible(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Text fit to print on a terminal: line breaks and tabs kept, every other
/// control character (ESC, BEL, CR, C1, DEL) and every bidi override shown
/// as a visible escape such as `\u{1b}`, so nothing reaches the terminal
/// that it would obey.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    visible(s, Lines::Many)
}

/// One line fit to print on a terminal: as [`for_terminal`], and line breaks
/// and tabs shown as `\n` and `\t`, so a value cannot start a line of its own
/// (a table row, a field) that the program did not print.
pub fn for_terminal_line(s: &str) -> Cow<'_, str> {
    visible(s, Lines::One)
}

/// ASCII punctuation that is shown as is: inside a line it starts nothing
/// in CommonMark or its common extensions (`-` makes a list item, a rule or
/// a heading underline only at the start of a line). At the start of a line
/// every punctuation character is escaped, and `.` and `)` after leading
/// digits too (`1.` would start an ordered list).
const PLAIN_PUNCTUATION: &str = ",.':;?()/%\"-";

fn escape_markdown(s: &str, out: &mut String) {
    // Only blanks so far; then, only digits after them.
    let mut blanks_only = true;
    let mut digits_only = false;
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            // Leading blanks would indent the line into a code block.
            ' ' | '\t' if blanks_only => out.push_str("&#32;"),
            c if c.is_ascii_punctuation()
                && (blanks_only
                    || (digits_only && matches!(c, '.' | ')'))
                    || !PLAIN_PUNCTUATION.contains(c)) =>
            {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
        if blanks_only && (c == ' ' || c == '\t') {
            continue;
        }
        digits_only = c.is_ascii_digit() && (blanks_only || digits_only);
        blanks_only = false;
    }
}

/// One line of inline Markdown showing exactly `s`: control characters and
/// line breaks shown as visible escapes (`\n`, `\u{1b}`), Markdown's
/// punctuation backslash-escaped, `<`, `>` and `&` written as entities. It
/// can start no heading, list item, quote, table, link, emphasis or HTML,
/// wherever on a line it is written.
pub fn markdown(s: &str) -> String {
    let shown = visible(s, Lines::One);
    let mut out = String::with_capacity(shown.len() + 8);
    escape_markdown(&shown, &mut out);
    out
}

/// The lines of a multi-line value, each escaped as [`markdown`] and
/// prefixed with `prefix` (for example `"  > "`, a quote inside a list
/// item), so that no line of it can pass for a line of the report. Empty
/// lines keep their prefix, trimmed.
pub fn markdown_lines(s: &str, prefix: &str) -> String {
    let mut out = String::new();
    for line in s.split('\n') {
        if line.trim().is_empty() {
            out.push_str(prefix.trim_end());
        } else {
            out.push_str(prefix);
            // Trailing blanks would make a hard line break.
            out.push_str(&markdown(line.trim_end()));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

    use super::*;

    #[test]
    fn unsafe_characters_are_named_and_shown() {
        assert_eq!(refused("ab\u{1b}[2J", Lines::One), Some((2, '\u{1b}')));
        assert_eq!(refused("a\nb\tc", Lines::Many), None);
        assert_eq!(refused("a\nb", Lines::One), Some((1, '\n')));
        assert_eq!(refused("x\u{202e}y", Lines::Many), Some((1, '\u{202e}')));
        assert_eq!(refused("\u{85}", Lines::Many), Some((0, '\u{85}')));
        assert_eq!(refused("\u{7f}", Lines::Many), Some((0, '\u{7f}')));
        assert_eq!(refused("Café — naïve ✓", Lines::One), None);
        assert_eq!(
            for_terminal("a\u{1b}[31mb\u{7}\r\n"),
            "a\\u{1b}[31mb\\u{7}\\r\n"
        );
        assert_eq!(for_terminal_line("a\nb\tc"), "a\\nb\\tc");
        assert!(matches!(for_terminal("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn markdown_escapes_what_could_start_anything() {
        assert_eq!(markdown("# Heading"), "\\# Heading");
        assert_eq!(markdown("a\n# b"), "a\\\\n\\# b");
        assert_eq!(
            markdown("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(markdown("1. first"), "1\\. first");
        assert_eq!(markdown("Risk 1. first"), "Risk 1. first");
        assert_eq!(markdown("a | b"), "a \\| b");
        assert_eq!(
            markdown_lines("x\n- Inst b: **agree**\n\n    code", "  > "),
            "  > x\n  > \\- Inst b: \\*\\*agree\\*\\*\n  >\n  > &#32;&#32;&#32;&#32;code\n"
        );
    }

    /// Every option pulldown-cmark has that changes structure.
    fn options() -> Options {
        Options::ENABLE_TABLES
            | Options::ENABLE_FOOTNOTES
            | Options::ENABLE_STRIKETHROUGH
            | Options::ENABLE_TASKLISTS
            | Options::ENABLE_HEADING_ATTRIBUTES
            | Options::ENABLE_MATH
            | Options::ENABLE_GFM
            | Options::ENABLE_DEFINITION_LIST
            | Options::ENABLE_SUPERSCRIPT
            | Options::ENABLE_SUBSCRIPT
            | Options::ENABLE_WIKILINKS
    }

    /// The text of a Markdown document, failing on anything but paragraphs,
    /// the given container and plain text.
    fn only_text(doc: &str) -> Result<String, String> {
        let mut text = String::new();
        for event in Parser::new_ext(doc, options()) {
            match event {
                Event::Text(t) => text.push_str(&t),
                Event::SoftBreak | Event::End(TagEnd::Paragraph) => text.push('\n'),
                Event::Start(Tag::Paragraph | Tag::BlockQuote(_) | Tag::List(None) | Tag::Item)
                | Event::End(TagEnd::BlockQuote(_) | TagEnd::List(false) | TagEnd::Item) => {}
                other => return Err(format!("{other:?} in {doc:?}")),
            }
        }
        Ok(text)
    }

    proptest! {
        /// Whatever a string holds, escaped it reads back as its visible
        /// form and nothing else: no heading, list, quote, code, link,
        /// emphasis, table or HTML, as a line of its own or after a marker.
        #[test]
        fn escaped_markdown_is_only_its_text(
            s in "[ -~\\n\\t\\r\u{1b}\u{202e}é]{0,40}|[-#>*+=_`|<&!\\[\\]()1. ]{0,20}"
        ) {
            let shown = visible(&s, Lines::One).into_owned();
            let escaped = markdown(&s);
            prop_assert!(!escaped.contains('\n'));
            let item = only_text(&format!("- {escaped}\n")).map_err(TestCaseError::fail)?;
            prop_assert_eq!(item.trim(), shown.trim());
            let quoted = markdown_lines(&s, "> ");
            // Blank lines are kept empty and trailing blanks dropped.
            let lines: Vec<String> = s
                .split('\n')
                .map(|l| visible(l.trim_end(), Lines::One).trim().to_string())
                .collect();
            let read = only_text(&quoted).map_err(TestCaseError::fail)?;
            let read: Vec<&str> = read.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect();
            let lines: Vec<&str> = lines.iter().map(String::as_str).filter(|l| !l.is_empty()).collect();
            prop_assert_eq!(read, lines);
        }
    }
}
