//! How the CLI and its node recognise each other without the token on the
//! wire.
//!
//! `api.json` names a TCP port, and after a crash any local user may bind
//! that port. So the CLI never sends the token itself: each request carries
//! a fresh random nonce and an HMAC over it keyed with the token
//! (`Authorization: Concord-Hmac <nonce> <mac>`), and the node signs its
//! answer the same way (`Concord-Proof`: an HMAC over the nonce, the status
//! and the whole body). Only the node and the owner of the data directory
//! (who can read `api.json`) know the token, so a process that took over
//! the port learns nothing it can use and cannot forge an answer the CLI
//! accepts. The two MACs are domain-separated, so neither can stand for the
//! other, and every answer is bound to the one request that asked for it.

use sha2::{Digest, Sha256};

/// The `Authorization` scheme of a proven request.
pub const SCHEME: &str = "Concord-Hmac";
/// The header of a proven answer: the answer's MAC in hex.
pub const PROOF_HEADER: &str = "concord-proof";
/// Bytes of a request's nonce.
pub const NONCE_LEN: usize = 32;

const REQUEST_TAG: &[u8] = b"concord-api-request-v1\0";
const ANSWER_TAG: &[u8] = b"concord-api-answer-v1\0";

/// A request's fresh random nonce.
pub type Nonce = [u8; NONCE_LEN];

/// A fresh random nonce.
pub fn new_nonce() -> std::io::Result<Nonce> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(nonce)
}

/// The `Authorization` value of a request to `path`.
pub fn authorization(token: &str, nonce: &Nonce, path: &str) -> String {
    format!(
        "{SCHEME} {} {}",
        hex::encode(nonce),
        hex::encode(request_mac(token, nonce, path))
    )
}

/// The nonce of an `Authorization` value of this scheme whose MAC for
/// `path` is right; `None` for any other value.
pub fn check_authorization(value: &str, token: &str, path: &str) -> Option<Nonce> {
    let rest = value.strip_prefix(SCHEME)?.strip_prefix(' ')?;
    let (nonce, mac) = rest.split_once(' ')?;
    let nonce: Nonce = decode_32(nonce)?;
    let mac = decode_32(mac)?;
    constant_time_eq(&mac, &request_mac(token, &nonce, path)).then_some(nonce)
}

/// The `Concord-Proof` value of an answer to the request with `nonce`.
pub fn answer_proof(token: &str, nonce: &Nonce, status: u16, body: &[u8]) -> String {
    hex::encode(answer_mac(token, nonce, status, body))
}

/// Whether `proof` (the answer's `Concord-Proof`, if any) proves that the
/// answer `status`, `body` to the request with `nonce` comes from the node
/// holding `token`.
pub fn check_answer(
    token: &str,
    nonce: &Nonce,
    status: u16,
    body: &[u8],
    proof: Option<&str>,
) -> bool {
    proof
        .and_then(decode_32)
        .is_some_and(|mac| constant_time_eq(&mac, &answer_mac(token, nonce, status, body)))
}

fn request_mac(token: &str, nonce: &Nonce, path: &str) -> [u8; 32] {
    hmac_sha256(token.as_bytes(), &[REQUEST_TAG, nonce, path.as_bytes()])
}

fn answer_mac(token: &str, nonce: &Nonce, status: u16, body: &[u8]) -> [u8; 32] {
    hmac_sha256(
        token.as_bytes(),
        &[ANSWER_TAG, nonce, &status.to_be_bytes(), body],
    )
}

fn decode_32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

/// HMAC-SHA-256 (RFC 2104) of the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(text: &str) -> Vec<u8> {
        hex::decode(text).expect("hex")
    }

    #[test]
    fn hmac_matches_the_rfc_4231_vectors() {
        // Test cases 1, 2, 6 (a key longer than the block) and 7.
        let cases: [(&[u8], &[u8], &str); 4] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                &[0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than \
                  block-size data. The key needs to be hashed before being used by the \
                  HMAC algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(hmac_sha256(key, &[data]).to_vec(), unhex(expected));
            // Split input gives the same MAC as whole input.
            let (a, b) = data.split_at(data.len() / 2);
            assert_eq!(hmac_sha256(key, &[a, b]).to_vec(), unhex(expected));
        }
    }

    #[test]
    fn a_request_checks_only_with_its_token_path_and_mac() {
        let token = "ab".repeat(32);
        let nonce = new_nonce().expect("nonce");
        let value = authorization(&token, &nonce, "/v1/rpc");
        assert_eq!(check_authorization(&value, &token, "/v1/rpc"), Some(nonce));
        assert_eq!(check_authorization(&value, &token, "/v1/import"), None);
        assert_eq!(
            check_authorization(&value, &"cd".repeat(32), "/v1/rpc"),
            None
        );
        // Any other byte of the MAC, another nonce, or another scheme fails.
        let mut forged = value.clone();
        let last = if forged.ends_with('0') { "1" } else { "0" };
        forged.replace_range(forged.len() - 1.., last);
        assert_eq!(check_authorization(&forged, &token, "/v1/rpc"), None);
        let (_, mac) = value.rsplit_once(' ').expect("mac");
        let other = format!("{SCHEME} {} {mac}", hex::encode([7u8; NONCE_LEN]));
        assert_eq!(check_authorization(&other, &token, "/v1/rpc"), None);
        for bad in [
            format!("Bearer {token}"),
            SCHEME.to_string(),
            format!("{SCHEME} {}", hex::encode(nonce)),
            format!("{SCHEME} zz {mac}"),
            format!("{SCHEME}  {} {mac}", hex::encode(nonce)),
        ] {
            assert_eq!(check_authorization(&bad, &token, "/v1/rpc"), None, "{bad}");
        }
    }

    #[test]
    fn an_answer_checks_only_with_its_nonce_status_body_and_token() {
        let token = "ab".repeat(32);
        let nonce = new_nonce().expect("nonce");
        let body = br#"{"kind":"audit","value":{"ok":true}}"#;
        let proof = answer_proof(&token, &nonce, 200, body);
        assert!(check_answer(&token, &nonce, 200, body, Some(&proof)));
        assert!(!check_answer(&token, &nonce, 200, body, None));
        assert!(!check_answer(&token, &nonce, 422, body, Some(&proof)));
        assert!(!check_answer(&token, &nonce, 200, b"{}", Some(&proof)));
        assert!(!check_answer(
            &token,
            &[0; NONCE_LEN],
            200,
            body,
            Some(&proof)
        ));
        assert!(!check_answer(
            &"cd".repeat(32),
            &nonce,
            200,
            body,
            Some(&proof)
        ));
        assert!(!check_answer(&token, &nonce, 200, body, Some("not hex")));
        // A request's MAC is no answer's proof: the two are domain-separated.
        let request = authorization(&token, &nonce, "/v1/rpc");
        let (_, mac) = request.rsplit_once(' ').expect("mac");
        assert!(!check_answer(&token, &nonce, 200, b"", Some(mac)));
        assert_ne!(new_nonce().expect("nonce"), nonce);
    }
}
