//! E2B's webhook signature check (`verify_signature`): base64(SHA-256(secret
//! ‖ body)) in the `e2b-signature` header.
//!
//! Input: a flags byte, a 16-bit position, a length-prefixed secret, then
//! the body (seeds: the signature vector's secret and the signed fixture).
//!
//! Properties: the signature this target computes verifies in both
//! alphabets, padded or not, with or without `e2b-signature-version: v1`;
//! a missing header or another version is refused; changing any one byte
//! of the body, the secret, or the digest is refused; so is a digest of
//! the wrong length. Every refusal is `Unauthorized`.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use meterd_fuzz::Reader;
use meterd_plugin_e2b::verify_signature;
use meterd_plugin_sdk::AdapterError;
use sha2::Digest as _;

fn refused(r: Result<(), AdapterError>, what: &str) {
    assert!(matches!(r, Err(AdapterError::Unauthorized(_))), "{what}: expected Unauthorized, got {r:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Reader::new(data);
    let flags = input.byte();
    let position = input.u16() as usize;
    let secret = String::from_utf8_lossy(input.short()).into_owned();
    let body = input.rest();

    let digest: [u8; 32] =
        sha2::Sha256::new().chain_update(secret.as_bytes()).chain_update(body).finalize().into();
    for signature in [
        STANDARD.encode(digest),
        STANDARD_NO_PAD.encode(digest),
        URL_SAFE.encode(digest),
        URL_SAFE_NO_PAD.encode(digest),
        format!(" {}\n", STANDARD.encode(digest)),
    ] {
        assert_eq!(verify_signature(&secret, body, Some(&signature), None), Ok(()), "{signature:?}");
        assert_eq!(verify_signature(&secret, body, Some(&signature), Some("v1")), Ok(()), "{signature:?}");
    }
    let good = if flags & 1 == 0 { STANDARD.encode(digest) } else { URL_SAFE_NO_PAD.encode(digest) };

    refused(verify_signature(&secret, body, None, None), "no header");
    let version = ["v2", "", "V1", "v1 "][usize::from(flags >> 1) % 4];
    refused(verify_signature(&secret, body, Some(&good), Some(version)), "another version");

    // One byte of the body changed (or one added to an empty body).
    let mut changed = body.to_vec();
    match changed.get_mut(position % body.len().max(1)) {
        Some(b) => *b ^= flags | 1,
        None => changed.push(flags),
    }
    refused(verify_signature(&secret, &changed, Some(&good), None), "changed body");

    // The secret with one character more, or one fewer.
    let mut other = secret.clone();
    if flags & 0x80 == 0 || other.pop().is_none() {
        other.push(char::from(b'a' + flags % 26));
    }
    refused(verify_signature(&other, body, Some(&good), None), "changed secret");

    // One byte of the digest changed; the digest cut short or made longer.
    let mut wrong = digest;
    wrong[position % 32] ^= flags | 1;
    refused(verify_signature(&secret, body, Some(&STANDARD.encode(wrong)), None), "changed digest");
    let cut = &digest[..position % 32];
    refused(verify_signature(&secret, body, Some(&STANDARD.encode(cut)), None), "short digest");
    let long = [&digest[..], &[flags]].concat();
    refused(verify_signature(&secret, body, Some(&STANDARD.encode(long)), None), "long digest");

    // The body's own bytes as the header: verifies only if they are an
    // encoding of the digest.
    let text = String::from_utf8_lossy(body);
    if meterd_plugin_sdk::signature::decode_base64_any(&text).as_deref() != Some(&digest[..]) {
        refused(verify_signature(&secret, body, Some(&text), None), "arbitrary header");
    }
});
