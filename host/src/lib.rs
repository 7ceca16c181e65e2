//! meterd: a usage-metering gateway. Provider plugins (WebAssembly
//! components) verify and normalize what providers report; the meter engine
//! turns records into exact meters per organization and period.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the invariants.

pub mod clock;
pub mod config;
pub mod conformance;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod meter;
pub mod metrics;
pub mod notify;
pub mod orgs;
pub mod outbound;
pub mod plans;
pub mod plugin;
pub mod plugins;
pub mod poller;
pub mod quarantine;
pub mod record;
pub mod reload;
pub mod replay;
pub mod runtime;
pub mod server;
pub mod store;
pub mod table;
#[cfg(test)]
pub(crate) mod testing;
pub mod usage;
