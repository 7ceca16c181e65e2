//! The wall clock, in one place so every "now" in the gateway agrees.

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
