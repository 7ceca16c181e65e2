//! The `meterd` command: see `cli` for its commands.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::run()
}
