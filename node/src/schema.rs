//! The values Concord's document may hold, field by field: the rules the
//! operation check ([`crate::opcheck`]) applies to every value an incoming
//! change puts, on top of its structural rules.
//!
//! A member's signature says who wrote a change, not that the change is one
//! Concord could have made. Every rule here refuses a value that Concord's
//! own writes never produce: a time outside years 2000–9999, a string where
//! a score goes, a 4 MB title, a status that is no status. Each rule looks at
//! the change alone, never at the checking node's clock or state, so every
//! node decides alike and none splits from the others.
//!
//! Fields Concord does not know (a key no version writes yet) are left to
//! later versions: any plain value goes there, within the limits every
//! value keeps (times in range, strings and byte strings at most
//! [`MAX_TEXT_LEN`], keys at most [`MAX_KEY_LEN`]). Readers never look at
//! them. Objects are made only where the schema has them, so the document
//! is never deeper than Concord's own layout (four levels): a reader that
//! walks it (the canonical state, an item's history) cannot be made to
//! recurse or build paths without bound.

use automerge::{ObjType, ScalarValue};

use crate::identity::NodeId;
use crate::model::{MAX_TEXT_LEN, MAX_TITLE_LEN, NoteKind, Round, Stance, Status, valid_time};
use crate::taxonomy;

/// Longest map key any change may use, in bytes. Concord's longest is a
/// checkpoint signature's root key, about 80 bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest item id (after `a/` or `n/`); Concord's own are 11 bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest change message, in bytes; Concord's own name one item.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Longest hex string in a checkpoint entry (a signature is 128).
const MAX_HEX_LEN: usize = 256;
const ID_RULE: &str = "an id of 1 to 64 lowercase letters, digits and hyphens";

/// What an object is in Concord's document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Root,
    Assessment,
    Mitigations,
    Comments,
    Comment,
    Note,
    NoteAssessments,
    Positions,
    Position,
    Category,
    Checkpoint,
    CheckpointHeads,
    /// Under a key no version of Concord writes yet: not read, not checked
    /// beyond the limits every value keeps.
    Unknown,
}

/// What one field (a map key, or a list's elements) may hold.
#[derive(Clone, Copy, Debug)]
enum Field {
    /// A string of at most this many bytes.
    Text(usize),
    /// One of a keyword enum's words.
    Keyword(fn(&str) -> bool),
    /// An integer from 1 to 5.
    Score,
    /// A timestamp in years 2000–9999.
    Time,
    /// An object of this type and role.
    Object(ObjType, Role),
    /// Anything within the limits every value keeps.
    Free,
    /// Nothing: Concord never writes here (what it would hold instead).
    Never(&'static str),
}

/// Why a value is refused: `field` names where it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("puts into {field} a value Concord never writes there; {field} holds {expected}")]
pub struct BadValue {
    pub field: &'static str,
    pub expected: &'static str,
}

/// One operation's effect, as the schema sees it.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    Put(&'a ScalarValue),
    Make(ObjType),
}

fn keyword<T: std::str::FromStr>(s: &str) -> bool {
    s.parse::<T>().is_ok()
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The field `key` of an object of role `parent` (`None`: a list's
/// element): its name for messages and what it may hold.
fn field(parent: Role, key: Option<&str>) -> (&'static str, Field) {
    use Field::*;
    let text = Text(MAX_TEXT_LEN);
    let title = Text(MAX_TITLE_LEN);
    let time = Time;
    match (parent, key) {
        (Role::Root, Some(k)) => {
            if let Some(id) = k.strip_prefix("a/") {
                if valid_id(id) {
                    return (
                        "an assessment's key",
                        Object(ObjType::Map, Role::Assessment),
                    );
                }
                return ("an assessment's key", Never(ID_RULE));
            }
            if let Some(id) = k.strip_prefix("n/") {
                if valid_id(id) {
                    return ("a note's key", Object(ObjType::Map, Role::Note));
                }
                return ("a note's key", Never(ID_RULE));
            }
            if let Some(key) = k.strip_prefix("c/") {
                if taxonomy::valid_key(key) {
                    return ("a category's key", Object(ObjType::Map, Role::Category));
                }
                return (
                    "a category's key",
                    Never("2 to 48 lowercase letters, digits and hyphens"),
                );
            }
            if k.starts_with("k/") {
                return ("a checkpoint's key", Object(ObjType::Map, Role::Checkpoint));
            }
            ("an unknown field", Free)
        }
        (Role::Assessment, Some(k)) => match k {
            "category" => ("an assessment's category", Keyword(taxonomy::valid_key)),
            "title" => ("an assessment's title", title),
            "summary" => ("an assessment's summary", text),
            "likelihood" => ("an assessment's likelihood", Score),
            "severity" => ("an assessment's severity", Score),
            "status" => ("an assessment's status", Keyword(keyword::<Status>)),
            "mitigations" => (
                "an assessment's mitigations",
                Object(ObjType::List, Role::Mitigations),
            ),
            "comments" => (
                "an assessment's comments",
                Object(ObjType::List, Role::Comments),
            ),
            "created_at" => ("an assessment's created_at", time),
            "updated_at" => ("an assessment's updated_at", time),
            _ => ("an unknown field", Free),
        },
        (Role::Mitigations, None) => ("a mitigation", text),
        (Role::Comments, None) => ("a comment", Object(ObjType::Map, Role::Comment)),
        (Role::Comment, Some(k)) => match k {
            "text" => ("a comment's text", text),
            "at" => ("a comment's time", time),
            _ => ("an unknown field", Free),
        },
        (Role::Note, Some(k)) => match k {
            "topic" => ("a note's topic", title),
            "body" => ("a note's body", text),
            "kind" => ("a note's kind", Keyword(keyword::<NoteKind>)),
            "round" => ("a note's round", Keyword(keyword::<Round>)),
            "assessments" => (
                "a note's assessments",
                Object(ObjType::List, Role::NoteAssessments),
            ),
            "positions" => ("a note's positions", Object(ObjType::Map, Role::Positions)),
            "created_at" => ("a note's created_at", time),
            "updated_at" => ("a note's updated_at", time),
            _ => ("an unknown field", Free),
        },
        (Role::NoteAssessments, None) => ("a note's assessment id", Keyword(valid_id)),
        (Role::Positions, Some(k)) => {
            if k.parse::<NodeId>().is_ok() {
                ("a position", Object(ObjType::Map, Role::Position))
            } else {
                ("a position's key", Never("a node id"))
            }
        }
        (Role::Position, Some(k)) => match k {
            "position" => ("a position's stance", Keyword(keyword::<Stance>)),
            "comment" => ("a position's comment", text),
            "at" => ("a position's time", time),
            _ => ("an unknown field", Free),
        },
        (Role::Category, Some(k)) => match k {
            "group" => ("a category's group", title),
            "title" => ("a category's title", title),
            _ => ("an unknown field", Free),
        },
        (Role::Checkpoint, Some(k)) => match k {
            "network" | "state" | "signature" => ("a checkpoint's hex field", Text(MAX_HEX_LEN)),
            "heads" => (
                "a checkpoint's heads",
                Object(ObjType::List, Role::CheckpointHeads),
            ),
            "at" => ("a checkpoint's time", time),
            _ => ("an unknown field", Free),
        },
        (Role::CheckpointHeads, None) => ("a checkpoint's head", Text(MAX_HEX_LEN)),
        // A map addressed as a list or the other way round is refused by
        // the structural rules before the schema is asked.
        _ => ("an unknown field", Free),
    }
}

/// The role of the object made under `key` of an object of role `parent`.
pub fn child(parent: Role, key: Option<&str>) -> Role {
    match field(parent, key) {
        (_, Field::Object(_, role)) => role,
        _ => Role::Unknown,
    }
}

/// Checks what one operation puts or makes under `key` of an object of
/// role `parent` (`key` is `None` for a list's element).
pub fn check(parent: Role, key: Option<&str>, action: Action<'_>) -> Result<(), BadValue> {
    if let Some(k) = key
        && k.len() > MAX_KEY_LEN
    {
        return Err(BadValue {
            field: "a map key",
            expected: "at most 256 bytes",
        });
    }
    if parent == Role::Unknown {
        return free(action);
    }
    let (name, spec) = field(parent, key);
    let bad = |expected| {
        Err(BadValue {
            field: name,
            expected,
        })
    };
    match (spec, action) {
        (Field::Free, action) => free(action),
        (Field::Never(instead), _) => bad(instead),
        (Field::Object(want, _), Action::Make(got)) if want == got => Ok(()),
        (Field::Object(ObjType::Map, _), _) => bad("a map"),
        (Field::Object(_, _), _) => bad("a list"),
        (Field::Text(max), Action::Put(ScalarValue::Str(s))) if s.len() <= max => Ok(()),
        (Field::Text(MAX_TITLE_LEN), _) => bad("a string of at most 300 bytes"),
        (Field::Text(MAX_TEXT_LEN), _) => bad("a string of at most 20000 bytes"),
        (Field::Text(_), _) => bad("a short string"),
        (Field::Keyword(ok), Action::Put(ScalarValue::Str(s))) if ok(s) => Ok(()),
        (Field::Keyword(_), _) => bad("one of its keywords"),
        (Field::Score, Action::Put(ScalarValue::Int(n))) if (1..=5).contains(n) => Ok(()),
        (Field::Score, _) => bad("an integer from 1 to 5"),
        (Field::Time, Action::Put(ScalarValue::Timestamp(t))) if valid_time(*t) => Ok(()),
        (Field::Time, _) => bad("a timestamp in years 2000 to 9999"),
    }
}

/// The limits every value keeps, wherever it goes.
fn free(action: Action<'_>) -> Result<(), BadValue> {
    let bad = |expected| {
        Err(BadValue {
            field: "an unknown field",
            expected,
        })
    };
    match action {
        Action::Make(_) => {
            bad("plain values only: objects go only where Concord's layout has them")
        }
        Action::Put(ScalarValue::Unknown { .. }) => bad("only values of a type Automerge knows"),
        Action::Put(ScalarValue::Timestamp(t)) if !valid_time(*t) => {
            bad("timestamps in years 2000 to 9999")
        }
        Action::Put(ScalarValue::Str(s)) if s.len() > MAX_TEXT_LEN => {
            bad("strings of at most 20000 bytes")
        }
        Action::Put(ScalarValue::Bytes(b)) if b.len() > MAX_TEXT_LEN => {
            bad("byte strings of at most 20000 bytes")
        }
        _ => Ok(()),
    }
}

/// Checks a change's header: its time and its message.
pub fn check_header(time_ms: i64, message: Option<&str>) -> Result<(), BadValue> {
    if !valid_time(time_ms) {
        return Err(BadValue {
            field: "its commit time",
            expected: "a time in years 2000 to 9999",
        });
    }
    if message.is_some_and(|m| m.len() > MAX_MESSAGE_LEN) {
        return Err(BadValue {
            field: "its message",
            expected: "at most 1024 bytes",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MAX_TIME_MS, MIN_TIME_MS};

    fn put(v: ScalarValue) -> Result<(), BadValue> {
        check(Role::Assessment, Some("created_at"), Action::Put(&v))
    }

    #[test]
    fn times_must_lie_in_years_2000_to_9999() {
        assert!(put(ScalarValue::Timestamp(MIN_TIME_MS)).is_ok());
        assert!(put(ScalarValue::Timestamp(MAX_TIME_MS)).is_ok());
        let err = put(ScalarValue::Timestamp(MAX_TIME_MS + 1)).expect_err("year 10000");
        assert_eq!(
            err.to_string(),
            "puts into an assessment's created_at a value Concord never writes there; \
             an assessment's created_at holds a timestamp in years 2000 to 9999"
        );
        assert!(put(ScalarValue::Timestamp(MIN_TIME_MS - 1)).is_err());
        assert!(put(ScalarValue::Int(1_700_000_000_000)).is_err(), "an int");
        // Anywhere, even in a field no version reads.
        let far = ScalarValue::Timestamp(i64::MAX);
        assert!(check(Role::Comment, Some("later"), Action::Put(&far)).is_err());
        assert!(check(Role::Unknown, Some("x"), Action::Put(&far)).is_err());
        assert!(check(Role::Root, Some("x"), Action::Put(&far)).is_err());
    }

    #[test]
    fn each_known_field_holds_its_type() {
        let s = |t: &str| ScalarValue::Str(t.into());
        let ok = [
            (Role::Assessment, "title", s("t")),
            (Role::Assessment, "status", s("open")),
            (Role::Assessment, "category", s("algorithmic-bias")),
            (Role::Assessment, "likelihood", ScalarValue::Int(5)),
            (Role::Note, "kind", s("divergence")),
            (Role::Note, "round", s("track-ii")),
            (Role::Position, "position", s("agree")),
            (Role::Category, "group", s("beneficial use")),
        ];
        for (role, key, v) in ok {
            assert_eq!(check(role, Some(key), Action::Put(&v)), Ok(()), "{key}");
        }
        let bad = [
            (Role::Assessment, "title", ScalarValue::Int(1)),
            (Role::Assessment, "title", s(&"x".repeat(MAX_TITLE_LEN + 1))),
            (
                Role::Assessment,
                "summary",
                s(&"x".repeat(MAX_TEXT_LEN + 1)),
            ),
            (Role::Assessment, "status", s("final")),
            (Role::Assessment, "category", s("Not A Key")),
            (Role::Assessment, "likelihood", ScalarValue::Int(6)),
            (Role::Assessment, "likelihood", ScalarValue::Uint(3)),
            (Role::Assessment, "severity", ScalarValue::F64(3.0)),
            (Role::Note, "kind", s("verdict")),
            (Role::Position, "position", s("veto")),
            (Role::Position, "comment", ScalarValue::Boolean(true)),
            (Role::Unknown, "x", s(&"x".repeat(MAX_TEXT_LEN + 1))),
        ];
        for (role, key, v) in bad {
            assert!(
                check(role, Some(key), Action::Put(&v)).is_err(),
                "{key} {v:?}"
            );
        }
        // Objects where values go, and values where objects go.
        assert!(check(Role::Assessment, Some("title"), Action::Make(ObjType::Map)).is_err());
        let v = s("x");
        assert!(check(Role::Assessment, Some("comments"), Action::Put(&v)).is_err());
        assert!(
            check(
                Role::Assessment,
                Some("comments"),
                Action::Make(ObjType::Map)
            )
            .is_err()
        );
        assert!(check(Role::Comments, None, Action::Make(ObjType::Map)).is_ok());
        assert!(check(Role::Comments, None, Action::Put(&v)).is_err());
        assert!(check(Role::Root, Some("a/ra-1"), Action::Put(&v)).is_err());
        assert!(check(Role::Mitigations, None, Action::Make(ObjType::List)).is_err());
        // Keys no version writes yet stay open to plain values within the
        // common limits, but never to objects: nesting has no bound there.
        assert!(check(Role::Assessment, Some("later"), Action::Put(&v)).is_ok());
        assert!(check(Role::Assessment, Some("later"), Action::Make(ObjType::Map)).is_err());
        assert!(check(Role::Root, Some("z"), Action::Make(ObjType::List)).is_err());
        assert!(check(Role::Unknown, Some("z"), Action::Make(ObjType::Map)).is_err());
        assert!(check(Role::Root, Some("z/1"), Action::Put(&v)).is_ok());
        let long_key = "k".repeat(MAX_KEY_LEN + 1);
        assert!(check(Role::Unknown, Some(&long_key), Action::Put(&v)).is_err());
    }

    #[test]
    fn roles_follow_the_layout() {
        assert_eq!(child(Role::Root, Some("a/ra-abc")), Role::Assessment);
        assert_eq!(child(Role::Root, Some("a/Ra X")), Role::Unknown);
        let map = Action::Make(ObjType::Map);
        assert!(check(Role::Root, Some("a/Ra X"), map).is_err());
        assert!(check(Role::Root, Some(&format!("n/{}", "x".repeat(65))), map).is_err());
        assert!(check(Role::Positions, Some("not a node"), map).is_err());
        assert_eq!(child(Role::Root, Some("n/cn-abc")), Role::Note);
        assert_eq!(child(Role::Root, Some("c/bio")), Role::Category);
        assert_eq!(child(Role::Root, Some("k/ck-1/x")), Role::Checkpoint);
        assert_eq!(child(Role::Assessment, Some("comments")), Role::Comments);
        assert_eq!(child(Role::Comments, None), Role::Comment);
        assert_eq!(child(Role::Note, Some("positions")), Role::Positions);
        assert_eq!(child(Role::Assessment, Some("title")), Role::Unknown);
    }

    #[test]
    fn headers_carry_a_time_in_range_and_a_short_message() {
        assert!(check_header(MIN_TIME_MS, Some("add assessment ra-1")).is_ok());
        assert!(check_header(MAX_TIME_MS + 1, None).is_err());
        assert!(check_header(0, None).is_err());
        assert!(check_header(MIN_TIME_MS, Some(&"m".repeat(MAX_MESSAGE_LEN + 1))).is_err());
    }
}
