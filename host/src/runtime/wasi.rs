//! The WASI p2 a plugin is lent, so components built by other languages'
//! toolchains (componentize-py, componentize-js), which import WASI for
//! their runtime, can load. It gives nothing the `host` interface does not
//! already give:
//!
//! - no environment variables, arguments, files or directories (no
//!   preopens), and no sockets (TCP, UDP and name lookup are all off);
//! - stdin is empty; stdout and stderr are lines in the gateway's log,
//!   tagged with the plugin (stdout at info, stderr at warn), cut at
//!   [`MAX_LOG_LINE`](super::bindings::MAX_LOG_LINE) bytes as `host.log` lines are;
//! - the wall clock is the host's `now-ms` clock, pinned as it is (a replay
//!   sees the time the payload was first received), so a plugin cannot learn
//!   another time through WASI than through `now-ms`;
//! - memory and the CPU deadline are the store's, as for every plugin.
//!
//! Rust plugins import none of it; linking it costs them nothing.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostWallClock, ResourceTable, WasiCtx};

/// A pinned `now-ms` shared by the `host` interface and the WASI wall clock:
/// [`PinnedClock::REAL`] means the real clock.
#[derive(Debug, Clone)]
pub struct PinnedClock(Arc<AtomicI64>);

/// The real clock (a derived default would pin it to 1970).
impl Default for PinnedClock {
    fn default() -> Self {
        Self::new()
    }
}

impl PinnedClock {
    const REAL: i64 = i64::MIN;

    pub fn new() -> Self {
        Self(Arc::new(AtomicI64::new(Self::REAL)))
    }

    /// Pins the clock for the next call (`None`: the real clock).
    pub fn pin(&self, at_ms: Option<i64>) {
        self.0.store(at_ms.unwrap_or(Self::REAL), Ordering::Relaxed);
    }

    pub fn now_ms(&self) -> i64 {
        match self.0.load(Ordering::Relaxed) {
            Self::REAL => crate::clock::now_ms(),
            pinned => pinned,
        }
    }
}

impl HostWallClock for PinnedClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        // Before 1970 cannot be said in WASI's wall clock; plugins see 0.
        Duration::from_millis(u64::try_from(self.now_ms()).unwrap_or(0))
    }
}

/// The WASI state of one plugin store.
pub struct Wasi {
    pub ctx: WasiCtx,
    pub table: ResourceTable,
}

impl Wasi {
    pub fn new(plugin: &Arc<str>, clock: &PinnedClock) -> Self {
        let mut builder = WasiCtx::builder();
        builder
            .stdout(LogStream::new(plugin.clone(), Stream::Stdout))
            .stderr(LogStream::new(plugin.clone(), Stream::Stderr))
            .wall_clock(clock.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        Self { ctx: builder.build(), table: ResourceTable::new() }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// stdout or stderr of a plugin: bytes gathered into lines, each line one
/// log event. Clones share the pending line (WASI may open several handles).
#[derive(Clone)]
struct LogStream {
    plugin: Arc<str>,
    stream: Stream,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl LogStream {
    fn new(plugin: Arc<str>, stream: Stream) -> Self {
        Self { plugin, stream, pending: Arc::default() }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let message = super::bindings::cut_log_line(text.trim_end_matches('\r').to_owned());
        let plugin = &*self.plugin;
        match self.stream {
            Stream::Stdout => tracing::info!(plugin, stream = "stdout", "{message}"),
            Stream::Stderr => tracing::warn!(plugin, stream = "stderr", "{message}"),
        }
    }

    /// Logs every complete line of `bytes` (and a pending part longer than
    /// a log line may be), keeping the rest for the next write.
    fn push(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend_from_slice(bytes);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            self.emit(&line[..end]);
        }
        if pending.len() > super::bindings::MAX_LOG_LINE {
            let line = std::mem::take(&mut *pending);
            self.emit(&line);
        }
    }

    fn flush_pending(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            let line = std::mem::take(&mut *pending);
            self.emit(&line);
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.flush_pending();
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.flush_pending();
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.flush_pending();
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_clock_is_what_wasi_reads_and_real_otherwise() {
        let unpinned = HostWallClock::now(&PinnedClock::default()).as_millis() as i64;
        assert!((unpinned - crate::clock::now_ms()).abs() < 5_000, "a new clock reads the real time");
        let clock = PinnedClock::new();
        clock.pin(Some(1_754_513_976_123));
        assert_eq!(HostWallClock::now(&clock), Duration::from_millis(1_754_513_976_123));
        clock.pin(None);
        let real = HostWallClock::now(&clock).as_millis() as i64;
        assert!((real - crate::clock::now_ms()).abs() < 5_000);
    }

    #[test]
    fn lines_are_gathered_across_writes_and_long_ones_cut() {
        let stream = LogStream::new(Arc::from("p"), Stream::Stdout);
        stream.push(b"hel");
        assert_eq!(stream.pending.lock().unwrap().as_slice(), b"hel");
        stream.push(b"lo\nwor");
        assert_eq!(stream.pending.lock().unwrap().as_slice(), b"wor");
        stream.push(&vec![b'x'; super::super::bindings::MAX_LOG_LINE + 1]);
        assert!(stream.pending.lock().unwrap().is_empty());
    }
}
