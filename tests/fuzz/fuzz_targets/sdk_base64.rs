//! The SDK's lenient base64 (`decode_base64_any`), `constant_time_eq` and
//! `sha256`, on arbitrary bytes.
//!
//! Properties: any text decodes exactly when it is the canonical encoding
//! of some bytes in the alphabet its characters name, give or take padding
//! (at most canonical) and surrounding whitespace, and then to those bytes;
//! text mixing both alphabets never decodes; any bytes encoded in either alphabet, padded
//! or not, decode back to themselves; `constant_time_eq` is `==`; `sha256`
//! of parts is SHA-256 of their concatenation.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use meterd_plugin_sdk::signature::{constant_time_eq, decode_base64_any, sha256};
use sha2::Digest as _;

/// The rule the SDK documents, stated plainly: surrounding whitespace is
/// ignored; `-` or `_` anywhere selects the URL-safe alphabet, and then `+`
/// or `/` anywhere is refused; trailing `=` up to the canonical count (or
/// fewer) is padding; the rest must be the canonical unpadded encoding.
fn reference(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    let url = text.contains(['-', '_']);
    if url && text.contains(['+', '/']) {
        return None;
    }
    let unpadded = text.trim_end_matches('=');
    if text.len() - unpadded.len() > (4 - unpadded.len() % 4) % 4 {
        return None;
    }
    let engine = if url { &URL_SAFE_NO_PAD } else { &STANDARD_NO_PAD };
    engine.decode(unpadded).ok()
}

fuzz_target!(|data: &[u8]| {
    // Any text: decoded exactly when the reference rule accepts it, to the
    // same bytes.
    let text = String::from_utf8_lossy(data);
    assert_eq!(decode_base64_any(&text), reference(&text), "{text:?}");

    // Any bytes, encoded every way a provider might: round trip.
    for encoded in [
        STANDARD.encode(data),
        STANDARD_NO_PAD.encode(data),
        URL_SAFE.encode(data),
        URL_SAFE_NO_PAD.encode(data),
        format!(" {}\n", STANDARD.encode(data)),
        format!("\t{}\r\n", URL_SAFE_NO_PAD.encode(data)),
    ] {
        assert_eq!(decode_base64_any(&encoded).as_deref(), Some(data), "{encoded:?}");
    }

    // Two halves: comparison and hashing of parts.
    let (a, b) = data.split_at(data.len() / 2);
    assert_eq!(constant_time_eq(a, b), a == b);
    assert!(constant_time_eq(data, data));
    let whole: [u8; 32] = sha2::Sha256::digest(data).into();
    assert_eq!(sha256(&[a, b]), whole);
    assert_eq!(sha256(&[data]), whole);
    assert_eq!(sha256(&[a, &[], b]), whole);
});
