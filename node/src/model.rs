//! The domain: risk assessments, consensus notes, positions and the views
//! printed by the CLI. Views are what `--json` prints, so their field names are
//! a stable interface (documented in `docs/json.md`). No IO, no Automerge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::text::Lines;

/// Errors in values a user typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{field} must be an integer from 1 to 5, got {value}")]
    OutOfRange { field: &'static str, value: i64 },
    #[error("unknown {what} {}; expected one of: {expected}", crate::clip::quote(.value))]
    Unknown {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes, over the limit of {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "{field} contains a control character U+{code:04X} at byte {at}{hint}",
        hint = line_hint(.code)
    )]
    Control {
        field: &'static str,
        code: u32,
        at: usize,
    },
}

fn line_hint(code: &u32) -> &'static str {
    if *code == 0x0a {
        " (it must be one line)"
    } else {
        ""
    }
}

/// Longest title or topic, in bytes.
pub const MAX_TITLE_LEN: usize = 300;
/// Longest summary, body, comment or mitigation, in bytes.
pub const MAX_TEXT_LEN: usize = 20_000;

/// Checks a required text field of several lines (a body, a summary, a
/// comment): trimmed, non-empty, within `max` bytes, and no control
/// character but line breaks and tabs (see [`crate::text::is_unsafe`]).
pub fn required_text(field: &'static str, value: &str, max: usize) -> Result<String, ValueError> {
    required(field, value, max, Lines::Many)
}

/// Checks an optional text field of several lines: as [`required_text`],
/// but it may be empty.
pub fn optional_text(field: &'static str, value: &str, max: usize) -> Result<String, ValueError> {
    checked(field, value, max, Lines::Many)
}

/// Checks a required one-line field (a title, a topic, a name): as
/// [`required_text`], and no line break or tab either.
pub fn required_line(field: &'static str, value: &str, max: usize) -> Result<String, ValueError> {
    required(field, value, max, Lines::One)
}

fn required(
    field: &'static str,
    value: &str,
    max: usize,
    lines: Lines,
) -> Result<String, ValueError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ValueError::Empty { field });
    }
    checked(field, value, max, lines)
}

fn checked(
    field: &'static str,
    value: &str,
    max: usize,
    lines: Lines,
) -> Result<String, ValueError> {
    let value = value.trim();
    if value.len() > max {
        return Err(ValueError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if let Some((at, c)) = crate::text::refused(value, lines) {
        return Err(ValueError::Control {
            field,
            code: u32::from(c),
            at,
        });
    }
    Ok(value.to_string())
}

/// A likelihood or severity score, 1 (lowest) to 5 (highest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Score(u8);

impl Score {
    pub fn new(field: &'static str, value: i64) -> Result<Self, ValueError> {
        if (1..=5).contains(&value) {
            Ok(Self(value as u8))
        } else {
            Err(ValueError::OutOfRange { field, value })
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

macro_rules! keyword_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ValueError::Unknown {
                        what: $what,
                        value: s.to_string(),
                        expected: concat!($($text, " "),+),
                    }),
                }
            }
        }
    };
}

keyword_enum!(
    /// Where an assessment stands in its life.
    Status, "status", {
        Draft => "draft",
        Open => "open",
        Accepted => "accepted",
        Retired => "retired",
    }
);

keyword_enum!(
    /// What a consensus note is.
    NoteKind, "note kind", {
        Agenda => "agenda",
        Consensus => "consensus",
        Divergence => "divergence",
        Review => "review",
    }
);

keyword_enum!(
    /// The dialogue round a note belongs to.
    Round, "round", {
        TrackII => "track-ii",
        Intergovernmental => "intergovernmental",
        Multilateral => "multilateral",
    }
);

keyword_enum!(
    /// An institution's position on a note.
    Stance, "position", {
        Agree => "agree",
        Disagree => "disagree",
        Reservation => "reservation",
        Abstain => "abstain",
    }
);

keyword_enum!(
    /// Where a note stands, derived from the current members' positions.
    Standing, "standing", {
        Consensus => "consensus",
        Divergence => "divergence",
        Open => "open",
    }
);

impl NoteKind {
    /// The long name used in reports.
    pub fn describe(self) -> &'static str {
        match self {
            NoteKind::Agenda => "agenda item",
            NoteKind::Consensus => "preliminary consensus",
            NoteKind::Divergence => "point of divergence",
            NoteKind::Review => "post-dialogue review",
        }
    }
}

impl Round {
    pub fn describe(self) -> &'static str {
        match self {
            Round::TrackII => "Track II",
            Round::Intergovernmental => "intergovernmental",
            Round::Multilateral => "multilateral",
        }
    }
}

/// Derives a note's standing from the positions of the current members.
///
/// - divergence: at least one member disagrees;
/// - consensus: every member has a position, none disagrees, and at least
///   one agrees (with or without reservation);
/// - open: anything else (someone has not yet taken a position, or all abstain).
pub fn standing(member_stances: impl IntoIterator<Item = Option<Stance>>) -> Standing {
    let stances: Vec<Option<Stance>> = member_stances.into_iter().collect();
    if stances.contains(&Some(Stance::Disagree)) {
        return Standing::Divergence;
    }
    let all_positioned = stances.iter().all(Option::is_some);
    let some_support = stances
        .iter()
        .any(|s| matches!(s, Some(Stance::Agree | Stance::Reservation)));
    if all_positioned && some_support {
        Standing::Consensus
    } else {
        Standing::Open
    }
}

/// An institution, as views name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Institution {
    pub node_id: String,
    pub name: String,
}

/// One of several concurrent values of a field, and who wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictValue {
    pub value: serde_json::Value,
    pub author: Institution,
    /// True for the value Automerge's deterministic rule picked.
    pub winner: bool,
}

/// A field that two institutions set concurrently.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub field: String,
    pub values: Vec<ConflictValue>,
}

/// A comment on an assessment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommentView {
    pub author: Institution,
    pub text: String,
    pub at: String,
}

/// A risk assessment as printed by `assess show --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssessmentView {
    pub id: String,
    pub category: String,
    pub title: String,
    pub summary: String,
    pub likelihood: Option<u8>,
    pub severity: Option<u8>,
    /// likelihood × severity, when both are set.
    pub risk: Option<u8>,
    pub mitigations: Vec<String>,
    pub status: String,
    pub author: Institution,
    pub created_at: String,
    pub updated_at: String,
    pub comments: Vec<CommentView>,
    pub conflicts: Vec<Conflict>,
}

/// One institution's position on a note.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PositionView {
    pub institution: Institution,
    /// False for positions of institutions that are not current members; they
    /// are shown but do not count towards the standing.
    pub counts: bool,
    pub position: Option<String>,
    pub comment: String,
    pub at: Option<String>,
}

/// A consensus note as printed by `note show --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoteView {
    pub id: String,
    pub topic: String,
    pub body: String,
    pub kind: String,
    pub round: Option<String>,
    pub assessments: Vec<String>,
    pub standing: Standing,
    /// One entry per current member (with or without a position), then any
    /// other institution that recorded one.
    pub positions: Vec<PositionView>,
    pub author: Institution,
    pub created_at: String,
    pub updated_at: String,
    pub conflicts: Vec<Conflict>,
}

/// The earliest time a change may carry: 2000-01-01T00:00:00Z, in
/// milliseconds since the epoch. Concord never wrote an earlier one.
pub const MIN_TIME_MS: i64 = 946_684_800_000;
/// The latest time a change may carry: 9999-12-31T23:59:59.999Z. RFC 3339
/// has no later year.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Whether `ms` lies in the range a change may carry
/// ([`MIN_TIME_MS`]..=[`MAX_TIME_MS`]). A rule on the value alone, never on
/// the clock of the node that checks it, so every node decides alike.
pub fn valid_time(ms: i64) -> bool {
    (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms)
}

/// Formats milliseconds since the epoch as RFC 3339 UTC, to the second.
///
/// Total over every `i64`: a time a signed change may still carry from
/// before the operation check bounded it (a year past 9999, a negative
/// number) is shown as `invalid time (N ms)`, never formatted, since the
/// formatter has no year past 9999. Times from 1970 up to 2000 still
/// format: local clocks (a peer's last sync) and defaults for a missing
/// field use them.
pub fn format_time(ms: i64) -> String {
    if !(0..=MAX_TIME_MS).contains(&ms) {
        return format!("invalid time ({ms} ms)");
    }
    let secs = ms.unsigned_abs() / 1000;
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// The current time in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_one_to_five() {
        assert!(Score::new("likelihood", 0).is_err());
        assert!(Score::new("likelihood", 6).is_err());
        assert_eq!(Score::new("severity", 5).map(Score::get), Ok(5));
        let msg = Score::new("likelihood", 6).expect_err("6").to_string();
        assert_eq!(msg, "likelihood must be an integer from 1 to 5, got 6");
    }

    #[test]
    fn keywords_parse_and_print() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(*s));
        }
        let err = "maybe".parse::<Stance>().expect_err("unknown");
        assert!(
            err.to_string()
                .contains("agree disagree reservation abstain")
        );
    }

    #[test]
    fn control_characters_are_refused_naming_the_field_and_the_byte() {
        let err = required_line("title", "Title\u{1b}[2J", 300).expect_err("escape");
        assert_eq!(
            err.to_string(),
            "title contains a control character U+001B at byte 5"
        );
        let err = required_line("topic", "a\n# b", 300).expect_err("newline");
        assert_eq!(
            err.to_string(),
            "topic contains a control character U+000A at byte 1 (it must be one line)"
        );
        assert!(required_text("body", "line one\n\tline two", 300).is_ok());
        for bad in [
            "a\rb",
            "a\u{7}b",
            "a\u{7f}b",
            "a\u{9b}b",
            "a\u{202e}b",
            "a\u{2066}b",
        ] {
            assert!(
                matches!(
                    optional_text("comment", bad, 300),
                    Err(ValueError::Control { at: 1, .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn standing_rules() {
        use Stance::*;
        assert_eq!(standing([Some(Agree), Some(Agree)]), Standing::Consensus);
        assert_eq!(
            standing([Some(Agree), Some(Reservation)]),
            Standing::Consensus
        );
        assert_eq!(standing([Some(Agree), None]), Standing::Open);
        assert_eq!(
            standing([Some(Agree), Some(Disagree)]),
            Standing::Divergence
        );
        assert_eq!(standing([None, Some(Disagree)]), Standing::Divergence);
        assert_eq!(standing([Some(Abstain), Some(Abstain)]), Standing::Open);
        assert_eq!(standing([Some(Abstain), Some(Agree)]), Standing::Consensus);
    }

    #[test]
    fn time_formats_as_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(MIN_TIME_MS), "2000-01-01T00:00:00Z");
        assert_eq!(format_time(MAX_TIME_MS), "9999-12-31T23:59:59Z");
    }

    /// The year-10000 timestamp a member signed panicked every node's
    /// first read; every i64 now formats, the bad ones as invalid.
    #[test]
    fn every_time_formats_and_bad_ones_say_so() {
        let year_10000 = MAX_TIME_MS + 1;
        assert_eq!(
            format_time(year_10000),
            format!("invalid time ({year_10000} ms)")
        );
        for ms in [i64::MIN, -1, MAX_TIME_MS + 1, i64::MAX] {
            assert!(format_time(ms).starts_with("invalid time"), "{ms}");
        }
        assert!(valid_time(MIN_TIME_MS) && valid_time(MAX_TIME_MS));
        assert!(!valid_time(MIN_TIME_MS - 1) && !valid_time(MAX_TIME_MS + 1));
    }

    proptest::proptest! {
        #[test]
        fn format_time_is_total(ms in proptest::prelude::any::<i64>()) {
            let shown = format_time(ms);
            proptest::prop_assert_eq!(shown.starts_with("invalid"), !(0..=MAX_TIME_MS).contains(&ms));
        }
    }
}
