//! The E2B adapter, compiled from `plugins/e2b/src/lib.rs` unchanged, as
//! version 0.1.1-next: the "rebuilt plugin" the hot-reload tests swap in.

#[path = "../../../../plugins/e2b/src/lib.rs"]
mod e2b;

pub use e2b::*;
