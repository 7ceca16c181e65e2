//! Everything a meterd provider plugin is built on: the bindings to the
//! `meterd:provider` WIT world and the few helpers every adapter needs.
//!
//! A plugin implements [`Guest`] and registers it with
//! `meterd_plugin_sdk::export_adapter!(MyAdapter with_types_in meterd_plugin_sdk);`
//! under `#[cfg(target_arch = "wasm32")]` (the component's export names are
//! not valid native linker symbols).
//! The crate also compiles natively (host imports then panic if called), so
//! an adapter's pure logic is unit-tested with plain `cargo test`.

// The bindings of the `provider` world (what `wit_bindgen::generate!` would
// expand to), committed and checked by meterd-plugin-build: see its
// `bindings` module for why and how they are regenerated.
include!("bindings.rs");

pub use exports::meterd::provider::adapter::Guest;
pub use meterd::provider::host;
pub use meterd::provider::types::{
    AdapterError, AdapterInfo, Capabilities, HttpRequest, LogLevel, OutboundRequest, OutboundResponse,
    PollOutcome, UsageKind, UsageRecord, WebhookOutcome,
};

#[cfg(feature = "json")]
pub mod json;
pub mod signature;
pub mod time;

impl HttpRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}
