//! Faults a node injects into its own sync traffic, for testing real
//! processes on a network where the kernel's `netem` (delay, loss) is not
//! available. Off unless `CONCORD_FAULTS` is set, e.g.
//! `CONCORD_FAULTS="delay=30ms,jitter=20ms,loss=0.05"`: every outbound sync
//! request waits `delay` plus up to `jitter`, and a `loss` fraction of them
//! fail after that wait, as if their connection had timed out.
//!
//! `panic=OP` makes the node panic right after it has executed each API
//! request of kind `OP` (the request's variant name, e.g. `AddAssessment`
//! or `Report`): a write is stored by then, so the test sees the node
//! contain the panic half-way through a write (see [`crate::contain`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The environment variable that turns fault injection on.
pub const ENV: &str = "CONCORD_FAULTS";

/// Errors reading a fault specification.
#[derive(Debug, thiserror::Error)]
pub enum FaultsError {
    #[error("{ENV}: `{0}` is not key=value (keys: delay, jitter, loss, panic)")]
    NotAPair(String),
    #[error("{ENV}: unknown key `{0}` (keys: delay, jitter, loss, panic)")]
    UnknownKey(String),
    #[error("{ENV}: {key}=`{value}` is not a duration like 30ms")]
    BadDuration { key: String, value: String },
    #[error("{ENV}: loss=`{0}` is not a fraction between 0 and 1")]
    BadLoss(String),
    #[error("{ENV}: cannot draw random numbers: {0}")]
    Random(String),
}

/// What to inject.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    pub delay: Duration,
    pub jitter: Duration,
    /// Fraction of requests that fail.
    pub loss: f64,
    /// The kind of API request after which the node panics.
    pub panic: Option<String>,
}

/// The fate of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fate {
    pub wait: Duration,
    pub lost: bool,
}

impl Faults {
    /// The faults `CONCORD_FAULTS` asks for, if it is set.
    pub fn from_env() -> Result<Option<Self>, FaultsError> {
        match std::env::var(ENV) {
            Ok(spec) if !spec.trim().is_empty() => spec.parse().map(Some),
            _ => Ok(None),
        }
    }

    /// Draws the fate of one request.
    pub fn draw(&self) -> Result<Fate, FaultsError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| FaultsError::Random(e.to_string()))?;
        let (a, b) = bytes.split_at(8);
        let unit = |half: &[u8]| {
            let n = u64::from_le_bytes(half.try_into().unwrap_or_default());
            (n >> 11) as f64 / (1u64 << 53) as f64
        };
        Ok(Fate {
            wait: self.delay + self.jitter.mul_f64(unit(a)),
            lost: unit(b) < self.loss,
        })
    }
}

impl FromStr for Faults {
    type Err = FaultsError;

    fn from_str(spec: &str) -> Result<Self, FaultsError> {
        let mut faults = Faults::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| FaultsError::NotAPair(part.to_string()))?;
            let (key, value) = (key.trim(), value.trim());
            let duration = || {
                humantime::parse_duration(value).map_err(|_| FaultsError::BadDuration {
                    key: key.to_string(),
                    value: value.to_string(),
                })
            };
            match key {
                "delay" => faults.delay = duration()?,
                "jitter" => faults.jitter = duration()?,
                "loss" => {
                    faults.loss = value
                        .parse::<f64>()
                        .ok()
                        .filter(|l| (0.0..=1.0).contains(l))
                        .ok_or_else(|| FaultsError::BadLoss(value.to_string()))?;
                }
                "panic" => faults.panic = Some(value.to_string()),
                other => return Err(FaultsError::UnknownKey(other.to_string())),
            }
        }
        Ok(faults)
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delay={:?}, jitter={:?}, loss={}",
            self.delay, self.jitter, self.loss
        )?;
        if let Some(op) = &self.panic {
            write!(f, ", panic after every {op} request")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_parses_and_bad_ones_name_what_is_wrong() {
        let faults: Faults = "delay=30ms, jitter=20ms,loss=0.05".parse().expect("parse");
        assert_eq!(
            faults,
            Faults {
                delay: Duration::from_millis(30),
                jitter: Duration::from_millis(20),
                loss: 0.05,
                panic: None,
            }
        );
        let err = |spec: &str| spec.parse::<Faults>().expect_err(spec).to_string();
        assert!(err("delay").contains("`delay` is not key=value"));
        assert!(err("latency=3ms").contains("unknown key `latency`"));
        assert!(err("delay=soon").contains("delay=`soon`"));
        assert!(err("loss=1.5").contains("loss=`1.5`"));
        let panics: Faults = "panic=Report".parse().expect("parse");
        assert_eq!(panics.panic.as_deref(), Some("Report"));
    }

    #[test]
    fn draws_stay_within_the_spec_and_loss_takes_its_share() {
        let faults: Faults = "delay=10ms,jitter=5ms,loss=0.25".parse().expect("parse");
        let fates: Vec<Fate> = (0..4000).map(|_| faults.draw().expect("draw")).collect();
        assert!(fates.iter().all(|f| {
            f.wait >= Duration::from_millis(10) && f.wait <= Duration::from_millis(15)
        }));
        let lost = fates.iter().filter(|f| f.lost).count();
        // 1000 expected; six standard deviations either side.
        assert!((840..=1160).contains(&lost), "{lost} of 4000 lost");
        let none: Faults = "delay=0ms".parse().expect("parse");
        assert!(!none.draw().expect("draw").lost);
    }
}
