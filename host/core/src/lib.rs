//! meterd-core: meterd's pure domain. Nothing here does I/O or reads a
//! clock; time is always an argument. The host crate (`meterd`) re-exports
//! these modules under their old paths.
//!
//! See ARCHITECTURE.md for the code map and the invariants.

pub mod time;
