//! A test-only plugin built against `meterd:provider@1.0.0` (a copy of the
//! WIT with only the version changed): the host implements 0.1 and must
//! refuse it with a message naming both versions.

// Its bindings' `export!` is used only in the wasm32 build.
#![cfg_attr(not(target_arch = "wasm32"), allow(unused_imports))]

// The bindings of its `provider` world, committed and checked by
// meterd-plugin-build (its `bindings` module).
include!("bindings.rs");

use exports::meterd::provider::adapter::Guest;
use meterd::provider::types::{
    AdapterError, AdapterInfo, Capabilities, HttpRequest, PollOutcome, WebhookOutcome,
};

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct WitNext;

impl Guest for WitNext {
    fn info() -> AdapterInfo {
        AdapterInfo {
            name: "wit-next".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Capabilities::PUSH,
            description: "built against meterd:provider@1.0.0".to_owned(),
        }
    }

    fn handle_webhook(_req: HttpRequest) -> Result<WebhookOutcome, AdapterError> {
        Err(AdapterError::Unsupported("test plugin".to_owned()))
    }

    fn targets() -> Result<Vec<String>, AdapterError> {
        Ok(Vec::new())
    }

    fn poll(_target: String, _cursor: Option<String>) -> Result<PollOutcome, AdapterError> {
        Err(AdapterError::Unsupported("test plugin".to_owned()))
    }
}

#[cfg(target_arch = "wasm32")]
export!(WitNext);
