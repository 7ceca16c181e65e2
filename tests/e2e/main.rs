//! The end-to-end tests: one binary, a module per area, sharing `support`
//! (and through it `meterd-testkit`). Each test starts real processes — the
//! `meterd` binary cargo built, S3-compatible servers, PostgreSQL databases
//! — on loopback ports and in directories of its own, so tests run side by
//! side.

mod support;

mod cli;
mod daytona;
mod ingest;
mod keys;
mod languages;
mod metrics;
mod openapi;
mod operations;
mod plans;
mod reload;
mod replay;
mod replicas;
mod rollups;
mod s3;
mod sandbox;
mod ui;
