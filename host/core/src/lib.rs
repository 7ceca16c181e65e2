//! meterd-core: meterd's pure domain — meters and their rollups, plans,
//! validation of plugin output, and the types that cross the plugin
//! boundary. Nothing here does I/O or reads a clock; time is always an
//! argument. Its dependencies (Cargo.toml) keep it so: no async runtime,
//! database, HTTP or WebAssembly crate.
//!
//! The host crate (`meterd`) re-exports these modules under its own paths
//! (`meterd::meter`, `meterd::plans`, …). See ARCHITECTURE.md for the code
//! map and the invariants.

pub mod meter;
pub mod plans;
pub mod plugin;
pub mod record;
pub mod time;

/// Test helpers shared by this crate's unit tests and the host's (feature
/// `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
