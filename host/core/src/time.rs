//! Instants as the API and notices show them.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch as RFC 3339 in UTC (`Z`), with as many
/// fractional digits as needed; an instant chrono cannot represent is shown
/// as its number.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| ms.to_string())
}
