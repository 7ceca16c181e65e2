//! meterd: a usage-metering gateway. Provider plugins (WebAssembly
//! components) verify and normalize what providers report; the meter engine
//! turns records into exact meters per organization and period.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the invariants.

// The pure domain lives in its own crate (`host/core`, `meterd-core`), which
// cannot depend on I/O crates; its modules keep their paths here.
pub use meterd_core::{meter, plans, plugin, record};

pub mod api;
pub mod clock;
pub mod config;
pub mod conformance;
pub mod http;
pub mod ingest;
pub mod inline_calls;
pub mod keys;
pub mod metrics;
pub mod notifications;
pub mod orgs;
pub mod outbound;
pub mod poller;
pub mod quarantine;
pub mod registry;
pub mod reload;
pub mod replay;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod table;
pub mod usage;
