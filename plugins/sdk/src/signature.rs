//! Signature helpers shared by adapters: decoding base64 in whichever
//! alphabet a provider uses, and comparing digests in constant time.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

/// Decodes base64 in the standard or the URL-safe alphabet, padded or not.
/// Returns `None` for anything else (including a mix of both alphabets).
pub fn decode_base64_any(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.contains(['-', '_']) { URL_SAFE.decode(text).ok() } else { STANDARD.decode(text).ok() }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_alphabets_with_or_without_padding() {
        let bytes = [0xfbu8, 0xff, 0xbf];
        for text in ["+/+/", "-_-_", "+/+/\n"] {
            assert_eq!(decode_base64_any(text).as_deref(), Some(&bytes[..]), "{text:?}");
        }
        assert_eq!(decode_base64_any("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64_any("YQ").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64_any("+_"), None);
        assert_eq!(decode_base64_any("not base64!"), None);
    }

    #[test]
    fn constant_time_eq_compares_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
