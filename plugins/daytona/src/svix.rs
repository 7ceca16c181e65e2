//! Svix webhook signatures: `v1,` base64(HMAC-SHA256(key, "id.timestamp.body")),
//! one or more space-separated in the signature header, with a timestamp
//! tolerance against replays.

use hmac::{Hmac, Mac};
use meterd_plugin_sdk::AdapterError;
use meterd_plugin_sdk::signature::{constant_time_eq, decode_base64_any};
use sha2::Sha256;

use crate::WebhookSettings;

fn unauthorized(message: impl Into<String>) -> AdapterError {
    AdapterError::Unauthorized(message.into())
}

/// Verifies a delivery; returns its message id (the dedup key). `header`
/// looks a header up by lower-case name; both the `svix-` and the `webhook-`
/// names are accepted.
pub fn verify_svix(
    settings: &WebhookSettings,
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
    now_ms: i64,
) -> Result<String, AdapterError> {
    let get = |name: &str| {
        header(&format!("svix-{name}"))
            .or_else(|| header(&format!("webhook-{name}")))
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| unauthorized(format!("missing svix-{name} header")))
    };
    let (id, timestamp, signatures) = (get("id")?, get("timestamp")?, get("signature")?);
    let seconds: i64 =
        timestamp.trim().parse().map_err(|_| unauthorized("svix-timestamp is not a number"))?;
    let skew = seconds.saturating_mul(1_000).saturating_sub(now_ms).saturating_abs();
    if skew > settings.tolerance_ms {
        return Err(unauthorized(format!(
            "svix-timestamp is {} s from now (tolerance {} s)",
            skew / 1_000,
            settings.tolerance_ms / 1_000
        )));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&settings.secret)
        .map_err(|_| AdapterError::Config("bad webhook_secret".to_owned()))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    let matches = signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(decode_base64_any)
        .any(|given| constant_time_eq(&given, &expected));
    if matches { Ok(id) } else { Err(unauthorized("svix-signature does not match the body")) }
}
