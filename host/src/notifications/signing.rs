//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), the
//! scheme Svix uses: `webhook-signature: v1,<base64 HMAC-SHA256(key,
//! "{id}.{timestamp}.{body}")>`, the key being the bytes after `whsec_`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The `webhook-signature` value for one message.
pub fn sign(key: &[u8], message_id: &str, timestamp_s: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Svix's published vector (tests/fixtures/daytona/svix-signature-vector.docs.json).
    #[test]
    fn signs_the_published_vector() {
        let text = include_str!("../../../tests/fixtures/daytona/svix-signature-vector.docs.json");
        let vector: serde_json::Value = serde_json::from_str(text).unwrap();
        let secret = vector["secret"].as_str().unwrap();
        let key =
            base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let headers = &vector["headers"];
        let timestamp: i64 = headers["svix-timestamp"].as_str().unwrap().parse().unwrap();
        let signature = sign(
            &key,
            headers["svix-id"].as_str().unwrap(),
            timestamp,
            vector["payload"].as_str().unwrap().as_bytes(),
        );
        assert_eq!(signature, headers["svix-signature"].as_str().unwrap());
    }
}
