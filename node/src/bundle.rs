//! Bundles: a network's genesis and a set of envelopes in one file, for
//! air-gapped exchange. Encoding only; the replica verifies the contents.
//! The byte layout is specified in `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use crate::genesis::{FILE_MAGIC, serde_bytes_compat};

/// Kind byte of a bundle file.
const KIND_BUNDLE: u8 = b'B';
/// Version of the bundle layout.
const BUNDLE_VERSION: u8 = 2;

/// Errors decoding a bundle file.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a Concord bundle (bad magic or kind)")]
    NotBundle,
    #[error("unsupported bundle version {0} (this build reads version {BUNDLE_VERSION})")]
    Version(u8),
    #[error("bundle is truncated or malformed: {0}")]
    Decode(String),
}

/// A decoded bundle: the genesis file bytes, the roster records and the
/// envelope bytes, all unverified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    #[serde(with = "serde_bytes_compat")]
    pub genesis: Vec<u8>,
    /// Roster records (see [`crate::governance`]), so an offline site
    /// learns the roster changes with the changes they decide on.
    pub records: Vec<EnvelopeBytes>,
    pub envelopes: Vec<EnvelopeBytes>,
}

/// One envelope's (or roster record's) bytes, length-prefixed on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeBytes(#[serde(with = "serde_bytes_compat")] pub Vec<u8>);

impl Bundle {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(FILE_MAGIC);
        out.push(KIND_BUNDLE);
        out.push(BUNDLE_VERSION);
        // Serialising byte strings into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BundleError> {
        let rest = bytes
            .strip_prefix(FILE_MAGIC.as_slice())
            .and_then(|r| r.strip_prefix(&[KIND_BUNDLE]))
            .ok_or(BundleError::NotBundle)?;
        let (&version, rest) = rest
            .split_first()
            .ok_or_else(|| BundleError::Decode("no version byte".into()))?;
        if version != BUNDLE_VERSION {
            return Err(BundleError::Version(version));
        }
        match postcard::take_from_bytes::<Bundle>(rest) {
            Ok((bundle, [])) => Ok(bundle),
            Ok((_, extra)) => Err(BundleError::Decode(format!(
                "{} unexpected bytes after the last envelope",
                extra.len()
            ))),
            Err(e) => Err(BundleError::Decode(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(genesis in proptest::collection::vec(any::<u8>(), 0..100),
                       envs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let records = envs.iter().take(2).cloned().map(EnvelopeBytes).collect();
            let bundle = Bundle { genesis, records, envelopes: envs.into_iter().map(EnvelopeBytes).collect() };
            let bytes = bundle.encode();
            prop_assert_eq!(Bundle::decode(&bytes).expect("decode"), bundle.clone());
            for len in 0..bytes.len() {
                prop_assert!(Bundle::decode(&bytes[..len]).is_err());
            }
        }
    }
}
