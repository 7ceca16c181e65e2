//! Real S3-compatible servers on loopback for the end-to-end tests and the
//! s3 benchmark: moto_server (pages like AWS; accepts any credentials) and
//! s3s-fs (verifies SigV4 with the one key pair it is given). Both are
//! installed by `tests/s3/install.sh` into `target/s3-servers/`; objects are
//! made with boto3 through `tests/s3/s3ctl.py`.

#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn installed(relative: &str) -> PathBuf {
    let path = repo().join("target/s3-servers").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run tests/s3/install.sh (make test does) to install the S3 test servers",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A running S3-compatible server, stopped on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    _dir: Option<tempfile::TempDir>,
}

impl S3Server {
    /// moto_server: real ListObjectsV2 paging; signatures are not checked.
    pub fn moto() -> Self {
        let port = free_port();
        let child = Command::new(installed("venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        Self::ready(child, port, "moto-key", "moto-secret", None)
    }

    /// s3s-fs on a fresh directory, enforcing one access key and secret.
    pub fn s3s_fs() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let (key, secret) = ("s3s-test-key", "s3s-test-secret-0123456789");
        let child = Command::new(installed("bin/s3s-fs"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                key,
                "--secret-key",
                secret,
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        Self::ready(child, port, key, secret, Some(dir))
    }

    /// Waits until the server accepts connections.
    fn ready(mut child: Child, port: u16, key: &str, secret: &str, dir: Option<tempfile::TempDir>) -> Self {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the S3 server on port {port} exited at start ({status})");
            }
            assert!(Instant::now() < deadline, "the S3 server on port {port} did not start within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key: key.to_owned(),
            secret_key: secret.to_owned(),
            region: "us-east-1".to_owned(),
            _dir: dir,
        }
    }

    /// Runs `s3ctl.py` against this server; its one-line JSON answer.
    pub fn ctl(&self, args: &[&str]) -> serde_json::Value {
        let output = Command::new(installed("venv/bin/python"))
            .arg(repo().join("tests/s3/s3ctl.py"))
            .args(["--endpoint", &self.endpoint, "--access-key", &self.access_key])
            .args(["--secret-key", &self.secret_key, "--region", &self.region])
            .args(args)
            .output()
            .expect("running s3ctl.py");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "s3ctl {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("s3ctl {args:?} printed {stdout:?}: {e}"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
