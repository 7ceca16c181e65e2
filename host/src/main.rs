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

/// Logs to stderr at `METERD_LOG` (default `info`) in the chosen format.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("METERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        // The event's fields at the top level, and the request span (its
        // id, method and route) under "span".
        LogFormat::Json => logs.json().flatten_event(true).with_span_list(false).init(),
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
            Command::Keys { command } => manage_keys(&config, command).await,
            Command::Plugins { command: PluginsCommand::Test { plugin, fixtures } } => {
                test_plugin(&config, &plugin, &fixtures)
            }
            Command::Usage(args) => show_usage(&config, args).await,
            Command::Replay(args) => replay(&config, args).await,
            Command::Rollups { command } => rollups(&config, command).await,
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

/// `rollups check` and `rollups rebuild`.
async fn rollups(config: &Config, command: RollupsCommand) -> anyhow::Result<()> {
    let store = meterd::server::open_store(config).await?;
    match command {
        RollupsCommand::Rebuild => {
            let records = store.rebuild_rollups().await?;
            println!("rollups rebuilt from {records} records");
            Ok(())
        }
        RollupsCommand::Check { examples, json } => {
            let report = store.check_rollups(examples).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} records; stored rollups: {} hours, {} steps, {} months, {} group hours; {} rows differ",
                    report.records,
                    report.hours,
                    report.steps,
                    report.months,
                    report.group_hours,
                    report.differences
                );
                for example in &report.examples {
                    println!("  {example}");
                }
            }
            if report.differences > 0 {
                return Err(Exit {
                    code: 1,
                    message: format!(
                        "{} rollup rows differ from the raw records (`meterd rollups rebuild` recomputes them)",
                        report.differences
                    ),
                }
                .into());
            }
            Ok(())
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
    let text = response.text().await.with_context(|| format!("reading {endpoint}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<meterd::api::ErrorBody>(&text).map(|e| e.error.message);
        anyhow::bail!("{endpoint} answered {status}: {}", message.unwrap_or(text));
    }
    let body: meterd::api::ops::Plugins =
        serde_json::from_str(&text).with_context(|| format!("reading {endpoint}: not a plugins answer"))?;
    println!("{}", plugin_row(["NAME", "VERSION", "MODES", "WIT", "LOADED", "HASH"]));
    for p in &body.plugins {
        println!("{}", plugin_row([&p.name, &p.version, &p.modes, &p.wit_version, &p.loaded_at.0, &p.hash]));
    }
    let failures = &body.failures;
    for f in failures {
        println!("refused {} at {}: {}", f.file, f.at, f.error);
    }
    if let Some(config_status) = body.reload.as_ref().map(|r| &r.config) {
        if let Some(error) = &config_status.last_error {
            let at = config_status.last_error_at.as_ref().map_or("-", |t| t.0.as_str());
            println!("config change refused at {at}: {error}");
        }
        for key in &config_status.restart_required {
            println!("needs a restart: {key}");
        }
    }
    if failures.is_empty() { Ok(()) } else { anyhow::bail!("{} plugin file(s) refused", failures.len()) }
}

async fn manage_keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    use meterd::keys::{self, Scope};
    let store = meterd::server::open_store(config).await?;
    let now = meterd::clock::now_ms();
    match command {
        KeysCommand::Create { admin, org, label } => {
            let scope = keys::scope(admin, org)?;
            let (token, key) = keys::create(store.as_ref(), scope, label, now).await?;
            println!("{token}");
            eprintln!("created key {} ({}); it is shown only this once", key.id, scope_text(&key.scope));
        }
        KeysCommand::List => {
            println!("{:<14} {:<8} {:<26} {:<26} {:<16} ORGS", "ID", "SCOPE", "CREATED", "REVOKED", "LABEL");
            for key in store.api_keys().await? {
                let (scope, orgs) = match &key.scope {
                    Scope::Admin => ("admin", "-".to_owned()),
                    Scope::Orgs(orgs) => ("orgs", orgs.iter().cloned().collect::<Vec<_>>().join(",")),
                };
                let revoked = key.revoked_at_ms.map(meterd::http::rfc3339).unwrap_or_else(|| "-".to_owned());
                println!(
                    "{:<14} {scope:<8} {:<26} {revoked:<26} {:<16} {orgs}",
                    key.id,
                    meterd::http::rfc3339(key.created_at_ms),
                    key.label.as_deref().unwrap_or("-"),
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_api_key(&id, now).await? {
                anyhow::bail!("no active key {id:?} (see `meterd keys list`)");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

fn scope_text(scope: &meterd::keys::Scope) -> String {
    match scope {
        meterd::keys::Scope::Admin => "admin".to_owned(),
        meterd::keys::Scope::Orgs(orgs) => {
            format!("orgs: {}", orgs.iter().cloned().collect::<Vec<_>>().join(", "))
        }
    }
}

/// A failure that exits with its own status rather than 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Exit {
    code: u8,
    message: String,
}

/// `plugins test`: each case's verdict and a summary on stdout; exit 1 if a
/// case failed, 2 if the kit could not run (fixtures, plugin).
fn test_plugin(config: &Config, plugin: &str, fixtures: &std::path::Path) -> anyhow::Result<()> {
    use meterd::conformance::{self, KitError};
    let cannot_run = |e: KitError| Exit { code: 2, message: e.to_string() };
    let file = conformance::plugin_file(plugin, config.plugins_dir.as_deref()).map_err(cannot_run)?;
    let cases = conformance::fixtures::read_dir(fixtures).map_err(|e| cannot_run(e.into()))?;
    // The gateway's limits; no compiled-code cache: the kit leaves nothing behind.
    let settings =
        meterd::runtime::RuntimeSettings { cache_dir: None, ..meterd::server::runtime_settings(config) };
    let report =
        tokio::task::block_in_place(|| conformance::run(settings, &file, &cases)).map_err(cannot_run)?;
    print!("{report}");
    match report.failed() {
        0 => Ok(()),
        failed => {
            Err(Exit { code: 1, message: format!("{failed} of {} cases failed", report.results.len()) }
                .into())
        }
    }
}

/// `replay`: starts the job on the gateway, follows it, prints the report.
async fn replay(config: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    use meterd::replay::client::{self, StderrProgress};
    let url = args.url.unwrap_or_else(|| {
        let mut listen = config.listen;
        if listen.ip().is_unspecified() {
            listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{listen}")
    });
    let request = client::ReplayArgs {
        url,
        token: args.token.or_else(|| config.admin_token.clone()),
        plugin: args.plugin,
        from: args.from,
        to: args.to,
        dry_run: args.dry_run,
    };
    let mut progress = StderrProgress::default();
    let job = client::run(&request, if args.json { None } else { Some(&mut progress) })
        .await
        .map_err(|e| Exit { code: 2, message: e.to_string() })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        print!("{}", client::render(&job));
    }
    if job.state != meterd::api::replays::ReplayState::Done {
        let error = job.error.as_deref().unwrap_or("unknown error");
        return Err(Exit { code: 2, message: format!("the replay stopped: {error}") }.into());
    }
    let (failed, conflicts) = (job.report.deliveries.failed, job.report.records.conflicts);
    if failed + conflicts > 0 {
        return Err(Exit {
            code: 1,
            message: format!(
                "{failed} deliveries could not be replayed and {conflicts} records conflict (listed above)"
            ),
        }
        .into());
    }
    Ok(())
}

/// `usage`: the API's answers for one org, computed by the same
/// `UsageService` over the configured database. Arguments are checked
/// before the database is opened.
async fn show_usage(config: &Config, args: UsageArgs) -> anyhow::Result<()> {
    use meterd::usage::{self, UsageRequest, UsageService};
    if !meterd::orgs::valid_org_id(&args.org) {
        anyhow::bail!("--org {:?}: {}", args.org, meterd::orgs::OrgError::BadOrgId);
    }
    let now_ms = meterd::clock::now_ms();
    let range = usage::range(args.from.as_deref(), args.to.as_deref(), now_ms)?;
    let window = args.window.as_deref().map(usage::parse_window).transpose()?;
    let meters = match &args.meter {
        Some(meter) => vec![meter.clone()],
        None => config.meters.iter().map(|m| m.name.clone()).collect(),
    };
    let service = UsageService::new(meterd::server::open_store(config).await?, config.meters.clone());
    let mut answers = Vec::with_capacity(meters.len());
    for meter in meters {
        let request = UsageRequest { org_id: args.org.clone(), meter, range, window, group_by: None };
        let answer = service.usage(&request, now_ms).await?;
        answers.push((request, answer));
    }
    if args.json {
        let mut values: Vec<meterd::api::usage::Usage> =
            answers.iter().map(|(r, a)| meterd::api::usage::Usage::new(r, a)).collect();
        let shown = match (args.meter, values.pop()) {
            (Some(_), Some(one)) => serde_json::to_string_pretty(&one)?,
            (_, last) => {
                values.extend(last);
                serde_json::to_string_pretty(&values)?
            }
        };
        println!("{shown}");
    } else {
        print!("{}", usage_table(&answers, args.window.as_deref()));
    }
    Ok(())
}

/// One row per meter (its total over the range), followed with a window
/// size by one indented row per window; columns aligned to their widest cell.
fn usage_table(
    answers: &[(meterd::usage::UsageRequest, meterd::usage::UsageAnswer)],
    window: Option<&str>,
) -> String {
    use meterd::http::rfc3339;
    let quantity = meterd_units::format_quantity;
    let mut rows = vec![["METER", "UNIT", "FROM", "TO", "TOTAL"].map(str::to_owned)];
    for (request, answer) in answers {
        rows.push([
            answer.meter.name.clone(),
            answer.meter.unit.clone(),
            rfc3339(request.range.from_ms),
            rfc3339(request.range.to_ms),
            quantity(answer.total),
        ]);
        if let Some(size) = window {
            for w in &answer.windows {
                let label = format!("  {size}");
                rows.push([label, String::new(), rfc3339(w.start_ms), rfc3339(w.end_ms), quantity(w.value)]);
            }
        }
    }
    meterd::table::render(&rows)
}
