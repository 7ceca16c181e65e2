//! `meterd plugins list|test|new`.

use meterd::config::Config;

use super::Exit;

pub(super) async fn list(config: &Config) -> anyhow::Result<()> {
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
pub(super) async fn list_remote(config: &Config, url: &str) -> anyhow::Result<()> {
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

/// `plugins test`: each case's verdict and a summary on stdout; exit 1 if a
/// case failed, 2 if the kit could not run (fixtures, plugin).
pub(super) fn test(
    config: &Config,
    plugin: &str,
    fixtures: &std::path::Path,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use meterd::conformance::{self, KitError};
    let cannot_run = |e: KitError| Exit { code: 2, message: e.to_string() };
    let file = conformance::plugin_file(plugin, config.plugins_dir.as_deref()).map_err(cannot_run)?;
    let cases = conformance::fixtures::read_dir(fixtures).map_err(|e| cannot_run(e.into()))?;
    // The gateway's limits; its compiled-code cache only when asked for
    // (`--cache-dir`): by default the kit leaves nothing behind.
    let settings = meterd::runtime::RuntimeSettings { cache_dir, ..meterd::server::runtime_settings(config) };
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

/// `plugins new`: writes the crate and says how to build and test it;
/// exit 2 when it cannot (bad name, existing directory, no SDK).
pub(super) fn new(name: &str, dir: &std::path::Path, sdk: Option<&std::path::Path>) -> anyhow::Result<()> {
    let made =
        meterd::scaffold::create(name, dir, sdk).map_err(|e| Exit { code: 2, message: e.to_string() })?;
    println!("created {} ({})", made.dir.display(), made.package);
    let conformance = made.dir.join("conformance");
    match &made.joined_workspace {
        Some(manifest) => {
            println!("added it to the workspace members in {}", manifest.display());
            println!("next: make plugins   # builds target/plugins/{name}.wasm");
            println!(
                "      meterd plugins test target/plugins/{name}.wasm --fixtures {}",
                conformance.display()
            );
        }
        None => {
            println!("next: in meterd's checkout:");
            println!("      cargo run --release -p meterd-plugin-build -- --crate {}", made.dir.display());
            println!(
                "      meterd plugins test target/lone-plugins/{name}.wasm --fixtures {}",
                conformance.display()
            );
        }
    }
    println!("      cargo test --manifest-path {}   # its unit tests", made.dir.join("Cargo.toml").display());
    Ok(())
}
