//! The plugin's configuration, read through a lookup function so it is
//! tested without a host.

use meterd_plugin_sdk::AdapterError;
use meterd_plugin_sdk::time::parse_rfc3339_ms;
use meterd_units::parse_duration_ms;

use crate::windows::WindowSettings;

const MINUTE_MS: i64 = 60_000;

/// What polling needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Without a trailing `/`.
    pub analytics_url: String,
    /// Sent as a bearer token; never in an error or a log line.
    pub api_key: String,
    pub organizations: Vec<String>,
    /// Read `…GBSeconds` as GiB-seconds (default: decimal GB, converted).
    pub gb_is_gib: bool,
    pub windows: WindowSettings,
}

/// What webhook verification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// The Svix key: the base64 after `whsec_`, decoded.
    pub secret: Vec<u8>,
    pub tolerance_ms: i64,
}

fn config_error(key: &str, problem: impl std::fmt::Display) -> AdapterError {
    AdapterError::Config(format!("`{key}` in [plugins.daytona]: {problem}"))
}

/// A duration key in whole minutes (`zero_ok`: 0 is allowed).
fn minutes(
    lookup: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: &str,
    zero_ok: bool,
) -> Result<i64, AdapterError> {
    let text = lookup(key).unwrap_or_else(|| default.to_owned());
    let ms = parse_duration_ms(&text)
        .ok_or_else(|| config_error(key, format!("{text:?} is not a duration such as 15m")))?;
    if ms % MINUTE_MS != 0 || (ms == 0 && !zero_ok) {
        return Err(config_error(
            key,
            format!("{text:?} must be a whole number of minutes{}", if zero_ok { "" } else { " above 0" }),
        ));
    }
    Ok(ms)
}

/// The Daytona organizations to poll (`organizations`, a JSON list).
pub fn organizations(lookup: impl Fn(&str) -> Option<String>) -> Result<Vec<String>, AdapterError> {
    let text = lookup("organizations").ok_or_else(|| config_error("organizations", "is not set"))?;
    let orgs: Vec<String> = serde_json::from_str(&text)
        .map_err(|_| config_error("organizations", "must be a list of Daytona organization ids"))?;
    if orgs.iter().any(|o| o.trim().is_empty() || o.contains(['/', '?', '#'])) {
        return Err(config_error("organizations", "ids must be non-empty and contain no '/', '?' or '#'"));
    }
    Ok(orgs)
}

/// The meterd organization of a Daytona organization (`org_map.<id>`,
/// default the same id).
#[cfg_attr(not(any(target_arch = "wasm32", test)), allow(dead_code))]
pub fn meterd_org(lookup: impl Fn(&str) -> Option<String>, daytona_org: &str) -> String {
    lookup(&format!("org_map.{daytona_org}"))
        .filter(|o| !o.trim().is_empty())
        .unwrap_or_else(|| daytona_org.to_owned())
}

impl Settings {
    pub fn from_config(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AdapterError> {
        let analytics_url =
            lookup("analytics_url").ok_or_else(|| config_error("analytics_url", "is not set"))?;
        if !(analytics_url.starts_with("http://") || analytics_url.starts_with("https://")) {
            return Err(config_error("analytics_url", "must be an http:// or https:// URL"));
        }
        let api_key = lookup("api_key")
            .filter(|k| !k.is_empty())
            .ok_or_else(|| config_error("api_key", "is not set"))?;
        let gb_is_gib = match lookup("gb_is_gib").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(config_error("gb_is_gib", format!("{other:?} must be true or false"))),
        };
        let start_ms = match lookup("start") {
            None => None,
            Some(text) => Some(
                parse_rfc3339_ms(&text)
                    .ok_or_else(|| config_error("start", format!("{text:?} is not an RFC 3339 time")))?,
            ),
        };
        let max_new = match lookup("max_windows_per_poll") {
            None => 24,
            Some(text) => text.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                config_error("max_windows_per_poll", format!("{text:?} must be a whole number above 0"))
            })?,
        };
        Ok(Self {
            analytics_url: analytics_url.trim_end_matches('/').to_owned(),
            api_key,
            organizations: organizations(&lookup)?,
            gb_is_gib,
            windows: WindowSettings {
                window_ms: minutes(&lookup, "window", "15m", false)?,
                settle_lag_ms: minutes(&lookup, "settle_lag", "10m", true)?,
                lookback_ms: minutes(&lookup, "lookback", "2h", true)?,
                start_ms,
                max_new,
            },
        })
    }
}

impl WebhookSettings {
    pub fn from_config(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AdapterError> {
        let secret = lookup("webhook_secret").ok_or_else(|| config_error("webhook_secret", "is not set"))?;
        let encoded = secret
            .strip_prefix("whsec_")
            .ok_or_else(|| config_error("webhook_secret", "must start with whsec_"))?;
        let secret = meterd_plugin_sdk::signature::decode_base64_any(encoded)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| config_error("webhook_secret", "is not base64 after whsec_"))?;
        let text = lookup("webhook_tolerance").unwrap_or_else(|| "5m".to_owned());
        let tolerance_ms = parse_duration_ms(&text).filter(|ms| *ms > 0).ok_or_else(|| {
            config_error("webhook_tolerance", format!("{text:?} is not a duration such as 5m"))
        })?;
        Ok(Self { secret, tolerance_ms })
    }
}
