//! A `meterd serve` process: its command, the config it starts from, the
//! line that says where it listens, and stopping it ([`serve`],
//! [`listening`], [`terminate`]); and on top of those the [`Gateway`] the
//! end-to-end tests drive: started from [`Options`] in a directory of its
//! own, stopped, killed and restarted, called over HTTP, its answers
//! ([`Body`]) read as the API's types.
//!
//! The kit does not depend on `meterd` itself (it is a dev-dependency of
//! it): the binary's path is passed in (`env!("CARGO_BIN_EXE_meterd")`
//! exists only in meterd's test and bench targets), and answers are read
//! into whatever type the caller names, `meterd::api`'s.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{E2B_SECRET, component, e2b_signature};

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

/// `binary serve --config CONFIG` run in `dir` ([`command`]'s clean
/// environment), logging warnings (`METERD_LOG=warn`, which a later `env`
/// may override), stdout piped for [`listening`]. Stderr and further
/// arguments are the caller's.
pub fn serve(binary: &str, config: &Path, dir: &Path) -> Command {
    let mut command = command(binary);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .env("METERD_LOG", "warn")
        .stdout(Stdio::piped());
    command
}

/// SIGTERM, then waits up to `within` for the exit: its status, or `None`
/// when the process still runs then (or cannot be waited for).
pub fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    signal(child.id(), "TERM");
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
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

/// How to start a [`Gateway`].
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
    /// A compiled-component cache shared with other tests instead of one
    /// of the gateway's own (see `meterd_plugin_build::languages::compile_cache_lease`).
    pub cache_dir: Option<PathBuf>,
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
            cache_dir: None,
        }
    }
}

/// A running `meterd serve` and the directory that holds its state: its
/// config (`meterd.toml`), plugins, cache, SQLite file and captured stderr.
/// Killed when dropped.
pub struct Gateway {
    binary: String,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    /// `http://ADDR` of the running process.
    pub base: String,
    pub client: reqwest::Client,
    admin_token: Option<&'static str>,
    serve_args: Vec<&'static str>,
    capture_stderr: bool,
    env: Vec<(&'static str, &'static str)>,
}

impl Gateway {
    /// Writes the config and plugins for `options` into a new temporary
    /// directory and starts `binary` (the `meterd` that cargo built) there,
    /// waiting for its listening line.
    pub fn start(binary: &str, options: Options) -> Self {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let plugins_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins_dir).expect("creating the plugins dir");
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
            e2b_config(
                &database,
                &plugins_dir,
                &options.cache_dir.clone().unwrap_or_else(|| dir.path().join("cache")),
                &top_level
            ),
            options.sections
        );
        std::fs::write(dir.path().join("meterd.toml"), config).expect("writing the config");
        let mut gateway = Self {
            binary: binary.to_owned(),
            child: None,
            dir,
            base: String::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("building the HTTP client"),
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
        let mut child = serve(&self.binary, &self.config_path(), self.dir.path())
            .args(&self.serve_args)
            .envs(self.env.iter().copied())
            .stderr(stderr)
            .spawn()
            .expect("starting meterd");
        let addr = listening(&mut child, Duration::from_secs(120)).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("{e}")
        });
        self.child = Some(child);
        self.base = format!("http://{addr}");
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

    /// SIGTERM, then waits for the exit (panics after 30 s).
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("the gateway is running");
        let status = terminate(child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("meterd did not stop within 30 s of SIGTERM"));
        self.child = None;
        status
    }

    /// Starts the gateway again: stopped first (SIGTERM) if it runs.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a body to `/v1/ingest/{plugin}` with the given headers.
    pub async fn ingest(&self, plugin: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Body) {
        let mut request = self.client.post(self.url(&format!("/v1/ingest/{plugin}"))).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Body::of(request.send().await.expect("POST ingest")).await
    }

    /// POSTs an E2B webhook signed with [`E2B_SECRET`].
    pub async fn e2b(&self, body: &[u8]) -> (u16, Body) {
        let signature = e2b_signature(E2B_SECRET, body);
        self.ingest("e2b", body, &[("e2b-signature", &signature), ("content-type", "application/json")]).await
    }

    /// GETs a path (with the admin token when one is configured).
    pub async fn get(&self, path_and_query: &str) -> (u16, Body) {
        let mut request = self.client.get(self.url(path_and_query));
        if let Some(token) = self.admin_token {
            request = request.bearer_auth(token);
        }
        Body::of(request.send().await.expect("GET")).await
    }

    /// Sends a JSON body (with the admin token when one is configured).
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, Body) {
        let mut request = self.client.request(method, self.url(path)).json(body);
        if let Some(token) = self.admin_token {
            request = request.bearer_auth(token);
        }
        Body::of(request.send().await.expect("sending JSON")).await
    }

    pub async fn put_json(&self, path: &str, body: &serde_json::Value) -> (u16, Body) {
        self.send_json(reqwest::Method::PUT, path, body).await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, Body) {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    /// Rows in a table of the gateway's SQLite database, read directly from
    /// the file.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let url = format!("sqlite://{}?mode=ro", self.db_path().display());
        let pool = sqlx::SqlitePool::connect(&url).await.expect("opening the test database");
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .expect("counting rows");
        pool.close().await;
        n
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An answer's body as it came over the wire, to be read as the type the
/// API says it is ([`Body::json`]); shown as its text (`"{body}"` in an
/// assertion's message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body(pub String);

impl Body {
    /// The status and the whole body of `response` (a body that cannot be
    /// read, e.g. cut off, is empty).
    pub async fn of(response: reqwest::Response) -> (u16, Self) {
        let status = response.status().as_u16();
        (status, Self(response.text().await.unwrap_or_default()))
    }

    pub fn text(&self) -> &str {
        &self.0
    }

    /// The body read as `T`. Panics, showing the body, unless it is JSON of
    /// exactly `T`'s shape: `T` must read it and, written back, give the
    /// same JSON, so an answer with a field `T` does not know fails too,
    /// not only one missing a field `T` needs.
    pub fn json<T: Serialize + DeserializeOwned>(&self) -> T {
        let type_name = std::any::type_name::<T>();
        let sent: serde_json::Value = serde_json::from_str(&self.0)
            .unwrap_or_else(|e| panic!("the answer is not JSON ({e}), expected a {type_name}: {}", self.0));
        let value: T = serde_json::from_value(sent.clone())
            .unwrap_or_else(|e| panic!("the answer is not a {type_name} ({e}): {}", self.0));
        let again = serde_json::to_value(&value)
            .unwrap_or_else(|e| panic!("a {type_name} does not serialize ({e}): {}", self.0));
        assert_eq!(again, sent, "the answer has more than a {type_name} holds: {}", self.0);
        value
    }

    /// The body as untyped JSON, for the tests that check the wire shape
    /// itself (or answers no API type describes). Panics, showing the
    /// body, when it is not JSON.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {}", self.0))
    }
}

impl std::fmt::Display for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
