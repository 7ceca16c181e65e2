//! What every end-to-end test needs: freshly built plugin components, a real
//! `meterd` process on an ephemeral loopback port with its own SQLite file,
//! an HTTP client, and E2B-style signing.

#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub mod daytona;
pub mod postgres;
pub mod s3;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use meterd_testkit::{E2B_SECRET, component, e2b_signature, fixture};

pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// How to start a gateway.
pub struct Options {
    pub plugins: Vec<&'static str>,
    /// More components, each placed as `<name>.wasm` (e.g. a test-only
    /// build standing in for a plugin).
    pub components: Vec<(&'static str, PathBuf)>,
    /// Extra top-level TOML for the generated config (placed before any table).
    pub extra_config: String,
    pub admin_token: Option<&'static str>,
    /// Extra TOML tables appended at the end (e.g. `[plugins.daytona]`).
    pub sections: String,
    /// Extra arguments to `meterd serve` (e.g. `--no-watch`).
    pub serve_args: Vec<&'static str>,
    /// A database URL instead of the gateway's own SQLite file.
    pub database: Option<String>,
    /// Write the gateway's stderr to a file (see [`Gateway::stderr_log`])
    /// instead of the test's stderr.
    pub capture_stderr: bool,
    /// Extra environment for `meterd serve`, set after `METERD_LOG=warn`
    /// (so it may override that).
    pub env: Vec<(&'static str, &'static str)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            plugins: vec!["e2b"],
            components: Vec::new(),
            extra_config: String::new(),
            admin_token: None,
            sections: String::new(),
            serve_args: Vec::new(),
            database: None,
            capture_stderr: false,
            env: Vec::new(),
        }
    }
}

/// A running `meterd serve` and the directory that holds its state.
pub struct Gateway {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub client: reqwest::Client,
    admin_token: Option<&'static str>,
    serve_args: Vec<&'static str>,
    capture_stderr: bool,
    env: Vec<(&'static str, &'static str)>,
}

pub fn meterd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_meterd")
}

/// The `meterd` command with every `METERD_*` variable of the caller's
/// environment removed: a test's config file is the whole truth.
pub fn meterd_command() -> Command {
    meterd_testkit::gateway::command(meterd_binary())
}

impl Gateway {
    pub fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins_dir).expect("plugins dir");
        for name in &options.plugins {
            std::fs::copy(component(name), plugins_dir.join(format!("{name}.wasm")))
                .expect("copying a component");
        }
        for (name, path) in &options.components {
            std::fs::copy(path, plugins_dir.join(format!("{name}.wasm"))).expect("copying a component");
        }
        let admin = options.admin_token.map(|t| format!("admin_token = \"{t}\"\n")).unwrap_or_default();
        let database = options
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("meterd.db").display()));
        let top_level = format!("{admin}{}", options.extra_config);
        let config = format!(
            "{}\n{}\n",
            meterd_testkit::gateway::e2b_config(
                &database,
                &plugins_dir,
                &dir.path().join("cache"),
                &top_level
            ),
            options.sections
        );
        std::fs::write(dir.path().join("meterd.toml"), config).expect("writing config");
        let mut gateway = Self {
            child: None,
            dir,
            base: String::new(),
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client"),
            admin_token: options.admin_token,
            serve_args: options.serve_args,
            capture_stderr: options.capture_stderr,
            env: options.env,
        };
        gateway.spawn();
        gateway
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("meterd.toml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("meterd.db")
    }

    /// What the gateway wrote to stderr, with `capture_stderr` (every run of
    /// it, appended).
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).expect("reading stderr.log")
    }

    /// Starts the process and waits for its "listening on" line.
    fn spawn(&mut self) {
        let stderr = if self.capture_stderr {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join("stderr.log"));
            Stdio::from(log.expect("opening stderr.log"))
        } else {
            Stdio::inherit()
        };
        let mut child = meterd_command()
            .arg("serve")
            .args(&self.serve_args)
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .env("METERD_LOG", "warn")
            .envs(self.env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting meterd");
        let addr =
            meterd_testkit::gateway::listening(&mut child, Duration::from_secs(120)).unwrap_or_else(|e| {
                let _ = child.kill();
                panic!("{e}")
            });
        let base = format!("http://{addr}");
        self.child = Some(child);
        self.base = base;
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reaping");
        }
    }

    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "meterd did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a body to `/v1/ingest/{plugin}` with the given headers.
    pub async fn ingest(
        &self,
        plugin: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.post(self.url(&format!("/v1/ingest/{plugin}"))).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("POST ingest");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// POSTs an E2B webhook signed with the configured secret.
    pub async fn e2b(&self, body: &[u8]) -> (u16, serde_json::Value) {
        let signature = e2b_signature(E2B_SECRET, body);
        self.ingest("e2b", body, &[("e2b-signature", &signature), ("content-type", "application/json")]).await
    }

    /// GETs a path (with the admin token when one is configured).
    pub async fn get(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let mut request = self.client.get(self.url(path_and_query));
        if let Some(token) = self.admin_token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Sends a JSON body (with the admin token when one is configured).
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, self.url(path)).json(body);
        if let Some(token) = self.admin_token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("sending JSON");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn put_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.send_json(reqwest::Method::PUT, path, body).await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    /// Starts the gateway again after [`Gateway::stop`] or [`Gateway::kill9`].
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// The `total` of a usage query over August 2025 (where the test events live).
    pub async fn total(&self, org: &str, meter: &str) -> String {
        let (status, body) = self
            .get(&format!(
                "/v1/orgs/{org}/usage?meter={meter}&from=2025-08-01T00:00:00Z&to=2025-09-01T00:00:00Z"
            ))
            .await;
        assert_eq!(status, 200, "usage query failed: {body}");
        body["total"].as_str().expect("total is a string").to_owned()
    }

    /// The poll state of one plugin's target, from `GET /v1/plugins`.
    pub async fn poll_state(&self, plugin: &str, target: &str) -> Option<serde_json::Value> {
        let (status, body) = self.get("/v1/plugins").await;
        assert_eq!(status, 200, "{body}");
        let plugins = body["plugins"].as_array()?;
        let p = plugins.iter().find(|p| p["name"] == plugin)?;
        p["polls"].as_array()?.iter().find(|s| s["target"] == target).cloned()
    }

    /// Waits (up to 90 s) until `check` holds for a target's poll state; returns it.
    pub async fn wait_for_poll_state(
        &self,
        plugin: &str,
        target: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(state) = self.poll_state(plugin, target).await
                && check(&state)
            {
                return state;
            }
            assert!(Instant::now() < deadline, "poll state of {plugin} {target} never showed {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Rows in a table of the gateway's database, read directly from the file.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let url = format!("sqlite://{}?mode=ro", self.db_path().display());
        let pool = sqlx::SqlitePool::connect(&url).await.expect("opening the test database");
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An E2B v2 lifecycle event body.
pub fn e2b_event(
    id: &str,
    event_type: &str,
    timestamp: &str,
    sandbox: &str,
    org: &str,
    execution: Option<(u64, u64, u64)>,
) -> Vec<u8> {
    let mut event_data = serde_json::json!({ "sandbox_metadata": { "tenant": org } });
    if let Some((vcpu, memory_mb, ms)) = execution {
        event_data["execution"] = serde_json::json!({
            "started_at": "2025-08-06T00:00:00Z", "vcpu_count": vcpu, "memory_mb": memory_mb, "execution_time": ms,
        });
    }
    serde_json::json!({
        "id": id, "version": "v2", "type": format!("sandbox.lifecycle.{event_type}"), "timestamp": timestamp,
        "event_data": event_data, "sandbox_id": sandbox, "sandbox_template_id": "base",
        "sandbox_team_id": "team-1",
    })
    .to_string()
    .into_bytes()
}
