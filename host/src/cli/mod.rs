//! The `meterd` command line: arguments, logging and exit statuses here,
//! one module per command family; each command is thin glue over the
//! library.

mod keys;
mod plugins;
mod replay;
mod rollups;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meterd::config::Config;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Parser)]
#[command(
    name = "meterd",
    version,
    about = "Usage-metering gateway: provider plugins → exact meters per organization"
)]
struct Cli {
    /// Config file (default: ./meterd.toml if present, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log lines on stderr: `text` for people, `json` (one object a line)
    /// for log collectors.
    #[arg(long, global = true, value_enum, env = meterd::config::LOG_FORMAT_ENV, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr at `METERD_LOG` (default `info`) in the chosen format;
/// a `METERD_LOG` that does not parse is refused, not ignored.
fn init_logging(format: LogFormat) -> Result<(), String> {
    let filter = log_filter(std::env::var("METERD_LOG").ok().as_deref())?;
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.finish().with(filter).init(),
        // The event's fields at the top level, and the request span (its
        // id, method and route) under "span".
        LogFormat::Json => logs.json().flatten_event(true).with_span_list(false).finish().with(filter).init(),
    }
    Ok(())
}

/// The log filter `METERD_LOG` asks for: comma-separated `level` (the
/// default for every target) and `target=level` directives, e.g.
/// `meterd=debug,warn`; unset or empty is `info`. (Targets only: the
/// span and field directives of `RUST_LOG`-style filters would cost a
/// regex engine in every build, for filters no one here uses.)
fn log_filter(spec: Option<&str>) -> Result<Targets, String> {
    match spec.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(Targets::new().with_default(LevelFilter::INFO)),
        Some(spec) => spec.parse().map_err(|e| {
            format!(
                "METERD_LOG={spec:?} is not a log filter ({e}); expected e.g. `info` or `meterd=debug,warn`"
            )
        }),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Watch the plugins directory and the config file and apply
        /// changes while serving (the default when either is configured).
        #[arg(long, overrides_with = "no_watch")]
        watch: bool,
        /// Do not watch for changes.
        #[arg(long)]
        no_watch: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Inspect plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Manage API keys (in the configured database; running gateways see
    /// changes within a second).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Show an org's usage, read from the configured database through the
    /// same service as `GET /v1/orgs/{org}/usage` (the same numbers).
    Usage(UsageArgs),
    /// Re-run a plugin's stored webhook payloads through the plugin loaded
    /// now and correct the usage that changed (same audit trail as any
    /// correction). Runs inside a running gateway, which owns the standings
    /// the corrections must reach; progress on stderr, the report on
    /// stdout. Exit 0: every delivery replayed cleanly; 1: some failed or
    /// conflicted (listed); 2: the replay could not run.
    Replay(ReplayArgs),
    /// The pre-aggregated usage (rollups) that usage queries read.
    Rollups {
        #[command(subcommand)]
        command: RollupsCommand,
    },
}

#[derive(Subcommand)]
enum RollupsCommand {
    /// Recompute the rollups from the raw records and compare them with the
    /// stored ones; writes nothing. Exit 0: identical; 1: differences
    /// (listed). Record writes wait on SQLite while it runs.
    Check {
        /// How many differences to list.
        #[arg(long, default_value_t = 20)]
        examples: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the rollups by a recomputation from the raw records (one
    /// transaction; record writes wait).
    Rebuild,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The plugin whose stored payloads to replay.
    #[arg(long, value_name = "PLUGIN")]
    plugin: String,
    /// Deliveries received at or after this RFC 3339 time (default: the first kept).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Deliveries received before this RFC 3339 time (default: now).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Report what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// The gateway (default: the config's `listen`, on loopback when it is
    /// a wildcard address).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// An admin API key or the admin token (default: `admin_token` from the config).
    #[arg(long, value_name = "TOKEN", env = meterd::config::TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
    /// Print the finished job as JSON instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct UsageArgs {
    /// The organization.
    #[arg(long, value_name = "ORG")]
    org: String,
    /// One meter (default: every configured meter).
    #[arg(long, value_name = "M")]
    meter: Option<String>,
    /// Start of the range, RFC 3339 (default: the start of the month of
    /// --to, or of now).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// End of the range, exclusive, RFC 3339 (default: the end of the month
    /// of --from, or of now).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Also one row per window: hour, day or month (UTC boundaries).
    #[arg(long, value_name = "hour|day|month")]
    window: Option<String>,
    /// Print the API's JSON instead of a table: one answer with --meter,
    /// else an array of one per meter.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (shown this once; only its hash is kept).
    Create {
        /// A key for everything.
        #[arg(long, conflicts_with = "org")]
        admin: bool,
        /// An org the key may read (usage, entitlements, checks); repeatable.
        #[arg(long, value_name = "ORG")]
        org: Vec<String>,
        /// What the key is for.
        #[arg(long)]
        label: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by its id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// List plugins: name, version, modes, WIT version, load time, hash and
    /// the last reload error. Loads plugins_dir itself, or asks a running
    /// gateway with --url.
    List {
        /// A running gateway to ask (e.g. http://127.0.0.1:8080), using
        /// admin_token from the config when set.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Run a plugin against fixture pairs (`<case>.request.json`,
    /// `<case>.expected.json`) the way ingest runs it, without a database.
    /// Exit 0 if every case passes, 1 if any fails, 2 if the fixtures or
    /// the plugin cannot be used. Format: tests/conformance/README.md.
    Test {
        /// A component (`….wasm`) or the name of a plugin in plugins_dir.
        plugin: String,
        /// The directory holding the fixture pairs.
        #[arg(long, value_name = "DIR")]
        fixtures: PathBuf,
        /// Keep the compiled component in DIR and reuse it on the next run
        /// of the same component (the gateway's `cache_dir` format). Without
        /// it the kit compiles every run and leaves nothing behind.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Scaffold a Rust plugin crate NAME: a signed-webhook adapter on the
    /// plugin SDK with unit tests and conformance cases (`conformance/`)
    /// that `plugins test` runs against its component. Inside meterd's
    /// checkout it joins the workspace.
    New {
        /// The plugin's name: its ingest route and file name (a-z, 0-9, '-').
        name: String,
        /// Where to create the crate directory.
        #[arg(long, value_name = "DIR", default_value = "plugins")]
        dir: PathBuf,
        /// meterd's plugin SDK (plugins/sdk); found above DIR by default.
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
}

/// A failure that exits with its own status rather than 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Exit {
    code: u8,
    message: String,
}

/// Parses the arguments, runs the command, and turns its result into the
/// exit status (an [`Exit`] carries its own; any other error is 1).
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format) {
        eprintln!("meterd: {e}");
        return ExitCode::from(2);
    }
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("meterd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meterd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { watch, no_watch } => {
                let watch = match (watch, no_watch) {
                    (_, true) => meterd::server::Watch::Off,
                    (true, false) => meterd::server::Watch::On,
                    (false, false) => meterd::server::Watch::Default,
                };
                meterd::server::serve(config, watch).await
            }
            Command::Migrate => {
                meterd::server::open_store(&config).await?;
                println!("migrations applied to {}", meterd::store::redact_url(&config.database));
                Ok(())
            }
            Command::Plugins { command: PluginsCommand::List { url: None } } => plugins::list(&config).await,
            Command::Plugins { command: PluginsCommand::List { url: Some(url) } } => {
                plugins::list_remote(&config, &url).await
            }
            Command::Keys { command } => keys::manage(&config, command).await,
            Command::Plugins { command: PluginsCommand::Test { plugin, fixtures, cache_dir } } => {
                plugins::test(&config, &plugin, &fixtures, cache_dir)
            }
            Command::Plugins { command: PluginsCommand::New { name, dir, sdk } } => {
                plugins::new(&name, &dir, sdk.as_deref())
            }
            Command::Usage(args) => usage::show(&config, args).await,
            Command::Replay(args) => replay::run(&config, args).await,
            Command::Rollups { command } => rollups::run(&config, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Exit>() => {
            eprintln!("meterd: error: {e:#}");
            ExitCode::from(e.downcast_ref::<Exit>().map_or(1, |exit| exit.code))
        }
        Err(e) => {
            eprintln!("meterd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::log_filter;

    #[test]
    fn the_log_filter_defaults_to_info_and_reads_target_directives() {
        for unset in [None, Some(""), Some("  ")] {
            let filter = log_filter(unset).expect("the default");
            assert!(
                filter.would_enable("meterd", &Level::INFO) && !filter.would_enable("meterd", &Level::DEBUG)
            );
        }
        let filter = log_filter(Some("meterd=debug,warn")).expect("a valid filter");
        assert!(filter.would_enable("meterd::store", &Level::DEBUG));
        assert!(!filter.would_enable("sqlx", &Level::INFO) && filter.would_enable("sqlx", &Level::WARN));
    }

    #[test]
    fn a_log_filter_that_does_not_parse_is_refused_with_an_example() {
        let error = log_filter(Some("meterd=loud")).expect_err("not a level");
        assert!(error.starts_with("METERD_LOG=\"meterd=loud\" is not a log filter ("), "{error}");
        assert!(error.ends_with("expected e.g. `info` or `meterd=debug,warn`"), "{error}");
    }
}
