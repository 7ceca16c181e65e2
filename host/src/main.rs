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
    /// List plugins: name, version, modes, WIT version, load time, hash and
    /// the last reload error. Loads plugins_dir itself, or asks a running
    /// gateway with --url.
    List {
        /// A running gateway to ask (e.g. http://127.0.0.1:8080), using
        /// admin_token from the config when set.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
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
                println!("migrations applied to {}", meterd::store::redact_url(&config.database));
                Ok(())
            }
            Command::Plugins { command: PluginsCommand::List { url: None } } => list_plugins(&config).await,
            Command::Plugins { command: PluginsCommand::List { url: Some(url) } } => {
                list_remote_plugins(&config, &url).await
            }
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
    println!("{}", plugin_row(["NAME", "VERSION", "MODES", "WIT", "LOADED", "HASH"]));
    for p in registry.plugins() {
        println!(
            "{}",
            plugin_row([
                &p.info().name,
                &p.info().version,
                p.info().modes(),
                p.wit_version(),
                &meterd::http::rfc3339(p.loaded_at_ms),
                p.hash(),
            ])
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

fn plugin_row(cells: [&str; 6]) -> String {
    let [name, version, modes, wit, loaded, hash] = cells;
    format!("{name:<16} {version:<12} {modes:<10} {wit:<8} {loaded:<26} {hash}")
}

/// `plugins list --url`: what a running gateway serves, from `/v1/plugins`.
async fn list_remote_plugins(config: &Config, url: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let endpoint = format!("{}/v1/plugins", url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().get(&endpoint);
    if let Some(token) = &config.admin_token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(|| format!("asking {endpoint}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.with_context(|| format!("reading {endpoint}"))?;
    if !status.is_success() {
        anyhow::bail!("{endpoint} answered {status}: {}", body["error"]["message"].as_str().unwrap_or("?"));
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!("{}", plugin_row(["NAME", "VERSION", "MODES", "WIT", "LOADED", "HASH"]));
    let plugins = body["plugins"].as_array().cloned().unwrap_or_default();
    for p in &plugins {
        let cells = ["name", "version", "modes", "wit_version", "loaded_at", "hash"].map(|k| text(&p[k]));
        println!("{}", plugin_row([&cells[0], &cells[1], &cells[2], &cells[3], &cells[4], &cells[5]]));
    }
    let failures = body["failures"].as_array().cloned().unwrap_or_default();
    for f in &failures {
        println!("refused {} at {}: {}", text(&f["file"]), text(&f["at"]), text(&f["error"]));
    }
    let config_status = &body["reload"]["config"];
    if let Some(error) = config_status["last_error"].as_str() {
        println!("config change refused at {}: {error}", text(&config_status["last_error_at"]));
    }
    for key in config_status["restart_required"].as_array().cloned().unwrap_or_default() {
        println!("needs a restart: {}", text(&key));
    }
    if failures.is_empty() { Ok(()) } else { anyhow::bail!("{} plugin file(s) refused", failures.len()) }
}
