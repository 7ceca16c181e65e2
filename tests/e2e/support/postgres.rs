//! A fresh PostgreSQL database per test (see `meterd_testkit::postgres`).

pub use meterd_testkit::postgres::TestDatabase;
