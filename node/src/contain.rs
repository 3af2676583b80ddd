//! Containing panics: a panic while answering one request, or while
//! handling one network event, fails that request or event alone. The node
//! loop catches it here, logs it with what was being done, reloads the
//! replica from the store when the panic may have come half-way through a
//! write, and serves on.
//!
//! A panic is a bug, never an answer: every read is meant to be total over
//! whatever a signed change carries. This is the net under that promise, so
//! one member's value can at worst fail the requests that meet it, and never
//! stop a node.

use std::any::Any;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};

use futures::FutureExt;

/// A caught panic, with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("panicked: {0}")]
pub struct Panicked(pub String);

impl Panicked {
    fn from_payload(payload: &(dyn Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        Self(clip(&message))
    }
}

/// Runs `f`, catching a panic.
pub fn run<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| Panicked::from_payload(&*payload))
}

/// Runs the future `f`, catching a panic in any of its polls.
pub async fn run_async<F: Future>(f: F) -> Result<F::Output, Panicked> {
    AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|payload| Panicked::from_payload(&*payload))
}

/// Longest label or panic message logged, in bytes.
const MAX_LABEL: usize = 300;

/// `value`'s `Debug` form, cut at about 300 bytes without formatting the
/// rest (a request may carry a bundle of 256 MiB).
pub fn label(value: &impl fmt::Debug) -> String {
    let mut out = Bounded {
        text: String::new(),
        full: false,
    };
    if write!(out, "{value:?}").is_err() || out.full {
        out.text.push('…');
    }
    out.text
}

fn clip(text: &str) -> String {
    let mut out = Bounded {
        text: String::new(),
        full: false,
    };
    if out.write_str(text).is_err() {
        out.text.push('…');
    }
    out.text
}

/// A `fmt::Write` that keeps the first [`MAX_LABEL`] bytes and then stops
/// the formatting with an error.
struct Bounded {
    text: String,
    full: bool,
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = MAX_LABEL.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
        self.full = true;
        Err(fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let caught = run(|| -> u8 { panic!("year {} is out of range", 10_000) });
        assert_eq!(caught, Err(Panicked("year 10000 is out of range".into())));
        assert_eq!(run(|| 7), Ok(7));
    }

    #[test]
    fn a_panic_in_a_future_becomes_an_error() {
        let caught = futures::executor::block_on(run_async(async {
            let v: Vec<u8> = Vec::new();
            v[3]
        }));
        let Err(Panicked(message)) = caught else {
            panic!("the panic was not caught");
        };
        assert!(message.contains("index out of bounds"), "{message}");
    }

    #[test]
    fn labels_stop_formatting_at_their_limit() {
        let huge = vec![0u8; 1 << 20];
        let shown = label(&huge);
        assert!(shown.len() <= MAX_LABEL + '…'.len_utf8(), "{}", shown.len());
        assert!(shown.ends_with('…'));
        assert_eq!(label(&"short"), "\"short\"");
        let wide = "é".repeat(400);
        assert!(label(&wide).ends_with('…'));
    }
}
