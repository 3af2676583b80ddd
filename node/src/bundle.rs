//! Bundles: a network's genesis and a set of envelopes in one file, for
//! air-gapped exchange. Encoding only; the replica verifies the contents.
//! The byte layout is specified in `docs/protocol.md`.
//!
//! Also [`EnvelopeBytes`], the length-prefixed envelope (or roster record)
//! of bundles and sync messages, whose decoding refuses any byte string
//! shorter than [`MIN_ENVELOPE_LEN`]: a list of them then costs memory in
//! proportion to its bytes, whoever sent it.

use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize};

use crate::envelope::MIN_ENVELOPE_LEN;
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
    #[error(
        "{list} {index} of the bundle is {len} bytes, shorter than the smallest \
         envelope or record ({MIN_ENVELOPE_LEN} bytes)"
    )]
    TooShort {
        list: &'static str,
        index: usize,
        len: usize,
    },
}

/// A decoded bundle: the genesis file bytes, the roster records and the
/// envelope bytes, all unverified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bundle {
    #[serde(with = "serde_bytes_compat")]
    pub genesis: Vec<u8>,
    /// Roster records (see [`crate::governance`]), so an offline site
    /// learns the roster changes with the changes they decide on.
    pub records: Vec<EnvelopeBytes>,
    pub envelopes: Vec<EnvelopeBytes>,
}

/// One envelope's (or roster record's) bytes, length-prefixed on the wire.
/// Decoding refuses one shorter than [`MIN_ENVELOPE_LEN`] at once, before
/// the rest of the message is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvelopeBytes(#[serde(with = "serde_bytes_compat")] pub Vec<u8>);

thread_local! {
    /// Why the last refusal on this thread was made (see
    /// [`decode_postcard`]): postcard keeps no message of a custom error,
    /// so the refusal is noted here to be named.
    static TOO_SHORT: Cell<Option<(&'static str, usize, usize)>> = const { Cell::new(None) };
}

impl<'de> Deserialize<'de> for EnvelopeBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        at_least(d, "an envelope or record", MIN_ENVELOPE_LEN).map(Self)
    }
}

/// Reads one length-prefixed byte string of at least `min` bytes; a
/// shorter one is refused before anything is allocated for it, and named.
pub(crate) fn at_least<'de, D: Deserializer<'de>>(
    d: D,
    what: &'static str,
    min: usize,
) -> Result<Vec<u8>, D::Error> {
    let bytes: &[u8] = <&[u8]>::deserialize(d)?;
    if bytes.len() < min {
        TOO_SHORT.set(Some((what, bytes.len(), min)));
        return Err(serde::de::Error::custom(too_short(what, bytes.len(), min)));
    }
    Ok(bytes.to_vec())
}

fn too_short(what: &str, len: usize, min: usize) -> String {
    format!("{what} of {len} bytes, shorter than the smallest one ({min} bytes)")
}

/// Decodes one postcard value from the start of `bytes` (returning the
/// bytes after it), with an error that names a too-short envelope or record
/// when that is what stopped the decoding.
pub(crate) fn decode_postcard<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<(T, &'a [u8]), String> {
    TOO_SHORT.set(None);
    postcard::take_from_bytes(bytes).map_err(|e| match (&e, TOO_SHORT.take()) {
        (postcard::Error::SerdeDeCustom, Some((what, len, min))) => too_short(what, len, min),
        _ => e.to_string(),
    })
}

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
        let mut reader = Reader(rest);
        let genesis = reader.bytes("the genesis")?.to_vec();
        let records = reader.list("record")?;
        let envelopes = reader.list("envelope")?;
        if !reader.0.is_empty() {
            return Err(BundleError::Decode(format!(
                "{} unexpected bytes after the last envelope",
                reader.0.len()
            )));
        }
        Ok(Bundle {
            genesis,
            records,
            envelopes,
        })
    }
}

/// Reads a bundle's postcard layout field by field, so a refusal can name
/// the record or envelope concerned, and a list is allocated only for as
/// many entries as its remaining bytes can hold.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<T: Deserialize<'a>>(&mut self, what: &str) -> Result<T, BundleError> {
        let (value, rest) = postcard::take_from_bytes::<T>(self.0)
            .map_err(|e| BundleError::Decode(format!("{what}: {e}")))?;
        self.0 = rest;
        Ok(value)
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], BundleError> {
        self.take::<&[u8]>(what)
    }

    /// A `Vec<bytes>` of records or envelopes, each at least
    /// [`MIN_ENVELOPE_LEN`] bytes.
    fn list(&mut self, name: &'static str) -> Result<Vec<EnvelopeBytes>, BundleError> {
        let count: usize = self.take(&format!("the {name} count"))?;
        // Each entry takes its length prefix and MIN_ENVELOPE_LEN bytes, so
        // no more fit in the bytes left; a count over that fails below, on
        // the entry that is short or missing.
        let room = self.0.len() / (MIN_ENVELOPE_LEN + 1);
        let mut list = Vec::with_capacity(count.min(room));
        for index in 0..count {
            let bytes = self.bytes(&format!("{name} {index}"))?;
            if bytes.len() < MIN_ENVELOPE_LEN {
                return Err(BundleError::TooShort {
                    list: name,
                    index,
                    len: bytes.len(),
                });
            }
            list.push(EnvelopeBytes(bytes.to_vec()));
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesis::NetworkId;
    use crate::sync::{self, MAX_MESSAGE_LEN, Request};
    use proptest::prelude::*;

    /// Memory a decoded list of envelopes holds: each vector's header and
    /// its heap capacity, and the list's own capacity.
    fn held(list: &[EnvelopeBytes], capacity: usize) -> usize {
        let each = std::mem::size_of::<EnvelopeBytes>();
        capacity * each + list.iter().map(|e| e.0.capacity()).sum::<usize>()
    }

    /// A push holding as many copies of a `len`-byte envelope as fit in one
    /// message, encoded.
    fn full_push(len: usize) -> Vec<u8> {
        // Each envelope takes a one-byte length prefix (under 128 bytes).
        let count = (MAX_MESSAGE_LEN - 64) / (len + 1);
        let push = Request::Push {
            network: NetworkId([7; 32]),
            records: Vec::new(),
            envelopes: vec![EnvelopeBytes(vec![0x5a; len]); count],
            proofs: Vec::new(),
            versions: Vec::new(),
        };
        sync::encode_request(&push)
    }

    /// Issue 14, item 7: an 8 MiB push of empty envelopes decoded into a
    /// 24-byte vector header per byte received (24 times the bytes, and
    /// twice that while the list grew). The smallest envelope the format
    /// allows now bounds the decoded form to a small multiple of the bytes.
    #[test]
    fn a_message_of_the_smallest_envelopes_decodes_into_memory_proportional_to_its_bytes() {
        // Whatever decodes of a full message of empty envelopes (nothing,
        // now) or of the smallest ones.
        for len in [0, MIN_ENVELOPE_LEN] {
            let bytes = full_push(len);
            assert!(bytes.len() > MAX_MESSAGE_LEN - 1024 && bytes.len() <= MAX_MESSAGE_LEN);
            let Ok(Request::Push {
                records, envelopes, ..
            }) = sync::decode_request(&bytes)
            else {
                continue;
            };
            let decoded = std::mem::size_of::<Request>()
                + held(&records, records.capacity())
                + held(&envelopes, envelopes.capacity());
            assert!(
                decoded <= 4 * bytes.len(),
                "{} bytes of {len}-byte envelopes decoded into {decoded} bytes of memory",
                bytes.len()
            );
        }
    }

    #[test]
    fn empty_and_short_envelopes_are_refused_as_a_message_decodes() {
        for len in [0, 1, MIN_ENVELOPE_LEN - 1] {
            let Err(error) = sync::decode_request(&full_push(len)) else {
                panic!("a push of {len}-byte envelopes decoded");
            };
            assert_eq!(
                error.to_string(),
                format!(
                    "message does not decode: an envelope or record of {len} bytes, shorter \
                     than the smallest one ({MIN_ENVELOPE_LEN} bytes)"
                )
            );
        }
        // One short envelope among valid ones is enough.
        let push = Request::Push {
            network: NetworkId([7; 32]),
            records: vec![EnvelopeBytes(vec![1; 200])],
            envelopes: vec![EnvelopeBytes(vec![1; 200]), EnvelopeBytes(Vec::new())],
            proofs: Vec::new(),
            versions: Vec::new(),
        };
        let error = sync::decode_request(&sync::encode_request(&push)).expect_err("refused");
        assert!(error.to_string().contains("of 0 bytes"), "{error}");
    }

    fn bundle_of(records: Vec<usize>, envelopes: Vec<usize>) -> Vec<u8> {
        let list = |lens: Vec<usize>| {
            lens.into_iter()
                .map(|n| EnvelopeBytes(vec![3; n]))
                .collect()
        };
        Bundle {
            genesis: vec![9; 50],
            records: list(records),
            envelopes: list(envelopes),
        }
        .encode()
    }

    #[test]
    fn a_bundle_with_a_short_envelope_or_record_is_refused_naming_it() {
        let ok = MIN_ENVELOPE_LEN;
        for (records, envelopes, message) in [
            (
                vec![],
                vec![ok, ok, 0],
                "envelope 2 of the bundle is 0 bytes",
            ),
            (vec![ok, 1], vec![ok], "record 1 of the bundle is 1 bytes"),
            (
                vec![],
                vec![ok - 1],
                "envelope 0 of the bundle is 106 bytes",
            ),
        ] {
            let Err(error) = Bundle::decode(&bundle_of(records, envelopes)) else {
                panic!("a bundle with a short envelope or record decoded (wanted {message})");
            };
            assert!(
                error.to_string().starts_with(message),
                "{error} (wanted {message})"
            );
        }
        assert!(Bundle::decode(&bundle_of(vec![ok], vec![ok, ok + 1])).is_ok());
    }

    /// A 20 MB bundle of empty envelopes took an import to 808 MB.
    #[test]
    fn a_bundle_of_the_smallest_envelopes_decodes_into_memory_proportional_to_its_bytes() {
        let count = 20_000_000 / (MIN_ENVELOPE_LEN + 1);
        let bytes = bundle_of(vec![MIN_ENVELOPE_LEN], vec![MIN_ENVELOPE_LEN; count]);
        let bundle = Bundle::decode(&bytes).expect("decodes");
        let decoded = std::mem::size_of::<Bundle>()
            + bundle.genesis.capacity()
            + held(&bundle.records, bundle.records.capacity())
            + held(&bundle.envelopes, bundle.envelopes.capacity());
        assert!(
            decoded <= 4 * bytes.len(),
            "{} bytes decoded into {decoded} bytes of memory",
            bytes.len()
        );
    }

    #[test]
    fn a_bundle_announcing_more_envelopes_than_it_holds_is_refused_at_the_first_missing() {
        let mut bytes = bundle_of(vec![], vec![]);
        // Replace the envelope count (0, the last byte) by a huge one, and
        // give it three envelopes.
        bytes.pop();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        for _ in 0..3 {
            bytes.push(MIN_ENVELOPE_LEN as u8);
            bytes.extend_from_slice(&[0; MIN_ENVELOPE_LEN]);
        }
        let error = Bundle::decode(&bytes).expect_err("refused");
        assert!(error.to_string().contains("envelope 3: "), "{error}");
    }

    proptest! {
        #[test]
        fn round_trips(genesis in proptest::collection::vec(any::<u8>(), 0..100),
                       envs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), MIN_ENVELOPE_LEN..300), 0..20)) {
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
