//! Real S3-compatible servers on loopback for the end-to-end tests and the
//! s3 benchmark (which includes this file by path, so it stands alone):
//!
//! - moto_server: pages ListObjectsV2 like AWS (opaque continuation tokens,
//!   `encoding-type=url` honoured) and accepts any credentials;
//! - s3s-fs: a third-party implementation that verifies SigV4 signatures
//!   with the one key pair it is started with.
//!
//! Both are installed by `tests/s3/install.sh` into `target/s3-servers/`.
//! Buckets and objects are made with boto3 through `tests/s3/s3ctl.py`, so
//! the expected totals never come from meterd's own code.

#![allow(dead_code)] // each test binary uses a different part

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key pair s3s-fs is started with and enforces.
pub const S3S_ACCESS_KEY: &str = "s3s-test-key";
pub const S3S_SECRET_KEY: &str = "s3s-test-secret-0123456789";
/// moto checks no signature; any pair works.
pub const MOTO_ACCESS_KEY: &str = "moto-key";
pub const MOTO_SECRET_KEY: &str = "moto-secret";

/// moto imports for 1-2 s on an idle machine; give a loaded CI box room.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file under `target/s3-servers/`; missing means not installed, which is
/// a failure with the fix in the message, never a skipped test.
pub fn installed(relative: &str) -> PathBuf {
    let path = repo().join("target/s3-servers").join(relative);
    assert!(
        path.exists(),
        "{} is missing: the S3 test servers are not installed. Run `tests/s3/install.sh` \
         (or `make test`, which runs it) from the repository root.",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// True once something on the port answers HTTP (any status): listening
/// alone is not enough for a server that binds before it is ready.
fn answers_http(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 7];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && head == *b"HTTP/1."
}

/// The last lines of a log file (for failure messages).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running S3-compatible server, killed on drop.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`: path-style addressing.
    pub endpoint: String,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    name: &'static str,
    /// Holds `server.log` and, for s3s-fs, the stored objects in `data/`.
    dir: tempfile::TempDir,
}

impl S3Server {
    /// moto_server on a free loopback port.
    pub fn moto() -> Self {
        Self::start("moto_server", MOTO_ACCESS_KEY, MOTO_SECRET_KEY, |port, _dir| {
            // `python -m moto.server` rather than the venv's moto_server
            // script, whose #! line breaks if the repository moves.
            let mut command = Command::new(installed("venv/bin/python"));
            command.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()]);
            // Variables that would switch on moto's IAM auth or change
            // its behaviour must not leak in from a developer's shell.
            for (var, _) in std::env::vars() {
                if var.starts_with("MOTO_")
                    || var.starts_with("AWS_")
                    || var == "INITIAL_NO_AUTH_ACTION_COUNT"
                {
                    command.env_remove(var);
                }
            }
            command
        })
    }

    /// s3s-fs serving a fresh directory, enforcing [`S3S_ACCESS_KEY`] /
    /// [`S3S_SECRET_KEY`], on a free loopback port. `--domain
    /// localhost:PORT` makes `Host: BUCKET.localhost:PORT` address a bucket
    /// (virtual-hosted style) as on AWS; without it s3s-fs ignores such a
    /// Host and answers a bucket listing with ListBuckets. Path-style
    /// requests to 127.0.0.1:PORT or localhost:PORT work either way.
    pub fn s3s_fs() -> Self {
        Self::start("s3s-fs", S3S_ACCESS_KEY, S3S_SECRET_KEY, |port, dir| {
            let data = dir.join("data");
            std::fs::create_dir_all(&data).expect("s3s-fs data dir");
            let mut command = Command::new(installed("bin/s3s-fs"));
            command
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3S_ACCESS_KEY, "--secret-key", S3S_SECRET_KEY])
                .args(["--domain", &format!("localhost:{port}")])
                .arg(&data)
                .env("RUST_LOG", "info");
            command
        })
    }

    /// Spawns the server on a free port and waits until it answers HTTP.
    /// The port is free when chosen but not reserved, so a server that
    /// exits at once (another process took the port) is retried on a new one.
    fn start(
        name: &'static str,
        access_key: &str,
        secret_key: &str,
        command: impl Fn(u16, &Path) -> Command,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join("server.log");
        for attempt in 1..=3 {
            let port = free_port();
            let log = File::create(&log_path).expect("server log");
            let mut child = command(port, dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("server log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {name}: {e}"));
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    if attempt < 3
                        && std::fs::read_to_string(&log_path).unwrap_or_default().contains("in use")
                    {
                        break; // lost the port race: try another port
                    }
                    panic!(
                        "{name} exited at start ({status}); its log:\n{}\n(if target/s3-servers is broken, \
                         delete it and run `tests/s3/install.sh`)",
                        tail(&log_path, 30)
                    );
                }
                if answers_http(port) {
                    return Self {
                        child,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        port,
                        access_key: access_key.to_owned(),
                        secret_key: secret_key.to_owned(),
                        region: "us-east-1".to_owned(),
                        name,
                        dir,
                    };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{name} on port {port} did not answer within {} s; its log:\n{}",
                        START_TIMEOUT.as_secs(),
                        tail(&log_path, 30)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!("the third attempt panics instead of retrying")
    }

    /// The server's output so far (moto logs every request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Where s3s-fs keeps the objects: one directory per bucket, one file per
    /// object. `None` for moto (in memory).
    pub fn data_dir(&self) -> Option<PathBuf> {
        (self.name == "s3s-fs").then(|| self.dir.path().join("data"))
    }

    /// Runs `tests/s3/s3ctl.py ARGS` with this server's credentials and
    /// returns its one-line JSON answer; panics with its output on failure.
    /// (Untyped: the answer is the test script's, no `meterd::api` type.)
    pub fn ctl(&self, args: &[&str]) -> serde_json::Value {
        self.ctl_with_credentials(&self.access_key, &self.secret_key, args)
    }

    /// [`Self::ctl`] signed with another key pair (e.g. a wrong secret).
    pub fn ctl_with_credentials(
        &self,
        access_key: &str,
        secret_key: &str,
        args: &[&str],
    ) -> serde_json::Value {
        self.try_ctl(access_key, secret_key, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs s3ctl.py; `Err` holds a message with its stdout, stderr (one
    /// line naming the HTTP status and S3 error code) and the server's
    /// last log lines.
    pub fn try_ctl(
        &self,
        access_key: &str,
        secret_key: &str,
        args: &[&str],
    ) -> Result<serde_json::Value, String> {
        let mut command = Command::new(installed("venv/bin/python"));
        command
            .arg(repo().join("tests/s3/s3ctl.py"))
            .args(["--endpoint", &self.endpoint, "--access-key", access_key, "--secret-key", secret_key])
            .args(["--region", &self.region])
            .args(args)
            .stdin(Stdio::null());
        // boto3 reads AWS_* variables and ~/.aws/config (profiles, endpoint
        // overrides, retry modes); the test's arguments are the whole truth.
        for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            command.env_remove(var);
        }
        command.env("AWS_CONFIG_FILE", "/dev/null").env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
        let output = command.output().map_err(|e| format!("running s3ctl.py: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!(
                "s3ctl {args:?} against {} failed ({}):\n{stdout}{stderr}\n--- {} log (last lines) ---\n{}",
                self.name,
                output.status,
                self.name,
                tail(&self.dir.path().join("server.log"), 15)
            ));
        }
        serde_json::from_str(stdout.trim()).map_err(|e| format!("s3ctl {args:?} printed {stdout:?}: {e}"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
