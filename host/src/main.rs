//! The `meterd` command: thin glue from arguments to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meterd::config::Config;

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
    #[command(subcommand)]
    command: Command,
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
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Load every plugin in plugins_dir and list name, version, hash, modes.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("METERD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
                println!("migrations applied to {}", config.database);
                Ok(())
            }
            Command::Plugins { command: PluginsCommand::List } => list_plugins(&config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meterd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn list_plugins(config: &Config) -> anyhow::Result<()> {
    let registry = tokio::task::block_in_place(|| meterd::server::load_plugins(config))?;
    let polls = meterd::server::open_store(config).await?.poll_states().await?;
    println!("{:<16} {:<12} {:<10} {:<8} HASH", "NAME", "VERSION", "MODES", "WIT");
    for p in registry.plugins() {
        println!(
            "{:<16} {:<12} {:<10} {:<8} {}",
            p.info().name,
            p.info().version,
            p.info().modes(),
            p.wit_version(),
            p.hash()
        );
    }
    for f in registry.failures() {
        println!("refused {}: {}", f.file.display(), f.error);
    }
    if !polls.is_empty() {
        println!();
        println!("{:<16} {:<24} {:<24} {:<24} LAST ERROR", "POLLS", "TARGET", "LAST SUCCESS", "NEXT RUN");
        let time = |ms: Option<i64>| ms.map(meterd::http::rfc3339).unwrap_or_else(|| "-".to_owned());
        for s in &polls {
            println!(
                "{:<16} {:<24} {:<24} {:<24} {}",
                s.plugin,
                s.target,
                time(s.last_success_ms),
                time(Some(s.next_run_ms)),
                s.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    if registry.failures().is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} plugin file(s) refused", registry.failures().len())
    }
}
