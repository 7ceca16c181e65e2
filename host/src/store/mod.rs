//! Persistence: the engines are the `meterd_store` crate (re-exported
//! here whole, so the gateway names them `crate::store::…`); what only the
//! gateway needs lives beside them.
//!
//! Writes arrive only through [`GroupCommitter`], which batches concurrent
//! deliveries into one transaction (one fsync for many requests).

mod group_commit;

pub use group_commit::GroupCommitter;
pub use meterd_store::*;

#[cfg(test)]
mod tests;
