//! Text that a caller or a peer gave, put into an error message or a log
//! line: quoted and clipped, so an id a megabyte long makes a message of a
//! few dozen bytes, and control characters are escaped, never printed raw.
//!
//! Every error message that names a user-provided string goes through
//! [`quote`]; a longer text that may contain one (a parser's message)
//! through [`message`]. No IO.

/// How many characters of a user-provided string a message quotes.
pub const QUOTE_LEN: usize = 64;
/// How many characters of a parser's message (which may quote its input)
/// an error message keeps.
pub const MESSAGE_LEN: usize = 200;

/// `text` in double quotes with Rust's escapes (as `{:?}` writes it), cut
/// after [`QUOTE_LEN`] characters; a cut one ends in `…` and says how long
/// the whole was.
pub fn quote(text: &str) -> String {
    match cut(text, QUOTE_LEN) {
        None => format!("{text:?}"),
        Some(head) => format!(
            "{:?} (cut, {} bytes in all)",
            format!("{head}…"),
            text.len()
        ),
    }
}

/// `text` cut after `max` characters, with control characters escaped; a
/// cut one ends in `…` and says how long the whole was.
pub fn message(text: &str, max: usize) -> String {
    match cut(text, max) {
        None => escape_controls(text),
        Some(head) => format!(
            "{}… (cut, {} bytes in all)",
            escape_controls(head),
            text.len()
        ),
    }
}

/// The first `max` characters of `text`, if it has more.
fn cut(text: &str, max: usize) -> Option<&str> {
    text.char_indices().nth(max).map(|(at, _)| &text[..at])
}

fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_whole_and_long_text_is_cut_with_its_length() {
        assert_eq!(quote("ra-1234"), "\"ra-1234\"");
        assert_eq!(quote("a\u{1b}[2Jb"), "\"a\\u{1b}[2Jb\"");
        let long = "x".repeat(1_000_000);
        let quoted = quote(&long);
        assert!(quoted.len() < 120, "{quoted}");
        assert!(quoted.contains("1000000 bytes"), "{quoted}");
        // Cut on a character boundary, never inside one.
        let wide = "é".repeat(100);
        assert!(quote(&wide).contains(&"é".repeat(QUOTE_LEN)));
    }

    #[test]
    fn messages_are_cut_and_their_control_characters_escaped() {
        assert_eq!(message("line\nbreak", 50), "line\\nbreak");
        let long = format!("unknown variant `{}`", "y".repeat(10_000));
        let cut = message(&long, MESSAGE_LEN);
        assert!(cut.len() < MESSAGE_LEN + 40, "{cut}");
        assert!(cut.ends_with(&format!("(cut, {} bytes in all)", long.len())));
    }
}
