//! `meterd rollups check --json`: not an HTTP answer but a command's report
//! that scripts read, so a contract all the same. The store's check
//! produces it and the CLI prints it as it is.

pub use crate::store::RollupCheck;
