//! Daytona's Svix webhook verification (`verify_svix`): `v1,`
//! base64(HMAC-SHA256(key, "id.timestamp.body")) among the space-separated
//! entries of `svix-signature` (or `webhook-signature`), within a timestamp
//! tolerance.
//!
//! Input: a flags byte, a 16-bit position, a clock-skew byte, then a
//! length-prefixed key, a length-prefixed message id, and the body (seeds:
//! the Svix documentation vector and the constructed Daytona delivery).
//!
//! Properties: a delivery signed by this target verifies (either header
//! prefix, among other entries, with whitespace around the timestamp) and
//! returns its message id exactly when the id is not blank and the
//! timestamp is within the tolerance; changing one byte of the body, the
//! id, the timestamp or the key, or dropping the `v1,` tag, is refused;
//! an arbitrary signature header verifies only if one of its `v1,` entries
//! decodes to the HMAC. Every refusal is `Unauthorized`.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use meterd_fuzz::Reader;
use meterd_plugin_daytona::{WebhookSettings, verify_svix};
use meterd_plugin_sdk::AdapterError;
use meterd_plugin_sdk::signature::decode_base64_any;
use sha2::Sha256;

const NOW_MS: i64 = 1_766_140_200_000;
const TOLERANCE_MS: i64 = 300_000;

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn verify(
    settings: &WebhookSettings,
    prefix: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
) -> Result<String, AdapterError> {
    let headers = [
        (format!("{prefix}-id"), id.to_owned()),
        (format!("{prefix}-timestamp"), timestamp.to_owned()),
        (format!("{prefix}-signature"), signature.to_owned()),
    ];
    let lookup = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    verify_svix(settings, lookup, body, NOW_MS)
}

fn refused(r: Result<String, AdapterError>, what: &str) {
    assert!(matches!(r, Err(AdapterError::Unauthorized(_))), "{what}: expected Unauthorized, got {r:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Reader::new(data);
    let flags = input.byte();
    let position = input.u16() as usize;
    // Up to ±635 s from now, in 5 s steps: inside and outside 300 s.
    let skew_s = i64::from(input.byte() as i8) * 5;
    let key = input.short().to_vec();
    let id = String::from_utf8_lossy(input.short()).into_owned();
    let body = input.rest();
    let settings = WebhookSettings { secret: key.clone(), tolerance_ms: TOLERANCE_MS };
    let prefix = if flags & 1 == 0 { "svix" } else { "webhook" };

    let timestamp = (NOW_MS / 1000 + skew_s).to_string();
    let good = mac(&key, &id, &timestamp, body);
    let encode = |m: &[u8]| if flags & 2 == 0 { STANDARD.encode(m) } else { URL_SAFE_NO_PAD.encode(m) };
    let signature = format!("v1,{}", encode(&good));
    let should_verify = !id.trim().is_empty() && skew_s.abs() * 1000 <= TOLERANCE_MS;

    let result = verify(&settings, prefix, &id, &timestamp, &signature, body);
    if should_verify {
        assert_eq!(result, Ok(id.clone()));
        // Among other entries, and with whitespace around the timestamp.
        let several = format!("v1,{} v2,abc {signature}  v1,", encode(&[flags; 32]));
        assert_eq!(verify(&settings, prefix, &id, &timestamp, &several, body), Ok(id.clone()));
        let padded = format!(" {timestamp}\t");
        assert_eq!(verify(&settings, prefix, &id, &padded, &signature, body), Ok(id.clone()));
    } else {
        refused(result, "blank id or timestamp outside the tolerance");
        return;
    }

    let mut changed = body.to_vec();
    match changed.get_mut(position % body.len().max(1)) {
        Some(b) => *b ^= flags | 1,
        None => changed.push(flags),
    }
    refused(verify(&settings, prefix, &id, &timestamp, &signature, &changed), "changed body");
    let other_id = format!("{id}{}", char::from(b'a' + flags % 26));
    refused(verify(&settings, prefix, &other_id, &timestamp, &signature, body), "changed id");
    let other_timestamp = (NOW_MS / 1000 + skew_s + 1).to_string();
    refused(verify(&settings, prefix, &id, &other_timestamp, &signature, body), "changed timestamp");
    let mut other_key = key.clone();
    match other_key.get_mut(position % key.len().max(1)) {
        Some(b) => *b ^= flags | 1,
        None => other_key.push(flags | 1),
    }
    let other = WebhookSettings { secret: other_key, tolerance_ms: TOLERANCE_MS };
    refused(verify(&other, prefix, &id, &timestamp, &signature, body), "changed key");
    let untagged = encode(&good);
    refused(verify(&settings, prefix, &id, &timestamp, &untagged, body), "no v1, tag");

    // The body's bytes as the signature header.
    let header = String::from_utf8_lossy(body);
    let matches = header
        .split_whitespace()
        .filter_map(|e| e.strip_prefix("v1,"))
        .any(|e| decode_base64_any(e).as_deref() == Some(&good[..]));
    let r = verify(&settings, prefix, &id, &timestamp, &header, body);
    if matches {
        assert_eq!(r, Ok(id.clone()));
    } else {
        refused(r, "arbitrary header");
    }
});
