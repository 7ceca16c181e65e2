//! A `meterd serve` process: its command, the config it starts from, and
//! the line that says where it listens.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use crate::E2B_SECRET;

/// `binary` (a test's `env!("CARGO_BIN_EXE_meterd")`) with every `METERD_*`
/// variable of the caller's environment removed: meterd reads them all as
/// configuration and refuses unknown ones, so a test's or bench's own knobs
/// (or anything `make` exported) must not reach it; its config file is
/// the whole truth.
pub fn command(binary: &str) -> Command {
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("METERD_") {
            command.env_remove(name);
        }
    }
    command
}

/// The config tests and benches start from: loopback on a port of the
/// system's choosing, `database`, the two directories, and the E2B plugin
/// with [`E2B_SECRET`] taking the org from the `tenant` metadata key.
/// Top-level keys may follow it; tables go after `[plugins.e2b]`.
pub fn e2b_config(database: &str, plugins_dir: &Path, cache_dir: &Path, top_level: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndatabase = \"{database}\"\nplugins_dir = \"{plugins}\"\ncache_dir = \"{cache}\"\n{top_level}\n\n[plugins.e2b]\nsignature_secret = \"{E2B_SECRET}\"\norg_metadata_key = \"tenant\"\n",
        plugins = plugins_dir.display(),
        cache = cache_dir.display(),
    )
}

/// Why no listening line came.
#[derive(Debug)]
pub enum NotListening {
    /// Nothing within the wait.
    Timeout(Duration),
    /// The process closed its stdout (exited) first.
    Exited,
}

impl std::fmt::Display for NotListening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout(within) => write!(f, "meterd did not start listening within {within:?}"),
            Self::Exited => f.write_str("meterd exited before listening (its stderr is above)"),
        }
    }
}

/// Reads the child's piped stdout until `meterd listening on http://ADDR …`
/// and returns ADDR; keeps draining stdout afterwards on a thread of its
/// own, so the child never blocks on a full pipe.
pub fn listening(child: &mut Child, within: Duration) -> Result<SocketAddr, NotListening> {
    let stdout = child.stdout.take().ok_or(NotListening::Exited)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("meterd listening on http://")
                && let Ok(addr) = rest.split_whitespace().next().unwrap_or_default().parse()
            {
                let _ = tx.send(addr);
            }
        }
    });
    rx.recv_timeout(within).map_err(|e| match e {
        std::sync::mpsc::RecvTimeoutError::Timeout => NotListening::Timeout(within),
        std::sync::mpsc::RecvTimeoutError::Disconnected => NotListening::Exited,
    })
}

/// Sends a signal (`TERM`, `KILL`, `HUP`, …) to a process the caller
/// started.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
}
