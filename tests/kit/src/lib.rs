//! What meterd's end-to-end tests, store tests and benchmarks share, so
//! each exists once: E2B webhook signing, the repository's fixtures, the
//! plugin components built from `plugins/`, a `meterd serve` process, its
//! listening line and the e2e tests' `Gateway` with its typed answers
//! ([`gateway`]), and a PostgreSQL database per test or
//! run ([`postgres`]). Dev-only: nothing here ships in the gateway.

pub mod gateway;
pub mod postgres;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The E2B signature secret every test and bench gateway is configured with.
pub const E2B_SECRET: &str = "test-signature-secret-1";

/// base64(SHA-256(secret ‖ body)): E2B's webhook signature.
pub fn e2b_signature(secret: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(secret.as_bytes());
    hasher.update(body);
    base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
}

/// `sha256=` + hex(HMAC-SHA256(secret, body)): the signature header of the
/// signed-JSON plugins (`plugins/signed-json-py`, `plugins/signed-json-js`).
pub fn signed_json_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A file under the repository's `tests/fixtures`.
pub fn fixture(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// Builds every plugin once per process (incremental: seconds when nothing
/// changed), so no test or benchmark runs a stale component, and returns
/// where `name` is.
pub fn component(name: &str) -> PathBuf {
    meterd_plugin_build::component(name).expect("building the plugins")
}

/// The component of a plugin in another language (Python, JavaScript),
/// built (or found unchanged by its inputs' hash) by meterd-plugin-build.
pub fn language_component(name: &str) -> PathBuf {
    meterd_plugin_build::languages::language_component(name).expect("building the other-language plugins")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a value computed outside Rust, so a change here cannot pass
    /// by agreeing with itself.
    #[test]
    fn e2b_signatures_are_base64_sha256_of_secret_then_body() {
        // echo -n 'secretbody' | sha256sum | xxd -r -p | base64
        assert_eq!(e2b_signature("secret", b"body"), "YuouM0o8pKJyrkZVR45vYimhIRzExMogPwMGjY/kzew=");
    }

    /// RFC 4231, test case 2.
    #[test]
    fn signed_json_signatures_are_hex_hmac_sha256() {
        assert_eq!(
            signed_json_signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
