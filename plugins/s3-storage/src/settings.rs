//! The plugin's configuration (`[plugins.s3-storage]`), read through a
//! lookup function so it is tested without a host.

use meterd_plugin_sdk::AdapterError;
use meterd_units::parse_duration_ms;
use serde::Deserialize;

use crate::sigv4::Credentials;

const SECTION: &str = "[plugins.s3-storage]";

/// Path style (`{endpoint}/{bucket}?…`) or virtual-hosted style
/// (`{scheme}://{bucket}.{host}/?…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Path,
    Virtual,
}

/// The store and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`, without a default port.
    pub authority: String,
    pub region: String,
    pub addressing: Addressing,
    pub credentials: Credentials,
    /// `max-keys` of each ListObjectsV2 request (1–1000).
    pub max_keys: u32,
    /// Pages read in one `poll` call before handing back a cursor.
    pub pages_per_poll: u32,
    /// An unfinished scan older than this starts over (its continuation
    /// tokens and partial totals are stale).
    pub max_scan_age_ms: i64,
    pub scans: Vec<ScanSpec>,
}

/// One poll target: what is listed and whose usage it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanSpec {
    /// `(org, bucket, prefix)` from `targets`.
    Fixed { org: String, bucket: String, prefix: String },
    /// A `discover` entry: orgs are the folders matching
    /// `{root}{org}/` in `bucket`, and each org's usage is what lies under
    /// `{root}{org}/{rest}`.
    Discover { bucket: String, root: String, rest: String },
}

impl ScanSpec {
    /// The poll target's name: `bucket/prefix`, or `bucket/template` for discovery.
    pub fn target(&self) -> String {
        match self {
            ScanSpec::Fixed { bucket, prefix, .. } => format!("{bucket}/{prefix}"),
            ScanSpec::Discover { bucket, root, rest } => format!("{bucket}/{root}{{org}}/{rest}"),
        }
    }

    pub fn bucket(&self) -> &str {
        match self {
            ScanSpec::Fixed { bucket, .. } | ScanSpec::Discover { bucket, .. } => bucket,
        }
    }
}

fn config_error(key: &str, problem: impl std::fmt::Display) -> AdapterError {
    AdapterError::Config(format!("`{key}` in {SECTION}: {problem}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixedEntry {
    org: String,
    bucket: String,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoverEntry {
    bucket: String,
    template: String,
}

/// S3 bucket names: 3–63 of a-z, 0-9, '.', '-' (and '_' for old buckets).
fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

/// Whether a name can be a meterd organization id (also used for names
/// found by discovery: a folder with another name is skipped).
pub fn valid_org(org: &str) -> bool {
    !org.trim().is_empty()
        && org.len() <= 128
        && !org.chars().any(|c| c.is_control() || matches!(c, '/' | '?' | '#'))
}

fn parse_template(bucket: &str, template: &str) -> Result<ScanSpec, AdapterError> {
    let key = "discover";
    let (root, rest) = template
        .split_once("{org}/")
        .ok_or_else(|| config_error(key, format!("template {template:?} must contain `{{org}}/`")))?;
    if root.contains("{org}") || rest.contains("{org}") {
        return Err(config_error(key, format!("template {template:?} must contain `{{org}}` once")));
    }
    if !(root.is_empty() || root.ends_with('/')) {
        return Err(config_error(key, format!("template {template:?}: `{{org}}` must start a folder name")));
    }
    Ok(ScanSpec::Discover { bucket: bucket.to_owned(), root: root.to_owned(), rest: rest.to_owned() })
}

/// What to list: `targets` (a list of `{org, bucket, prefix}`) and
/// `discover` (a list of `{bucket, template}`).
pub fn scans(lookup: &impl Fn(&str) -> Option<String>) -> Result<Vec<ScanSpec>, AdapterError> {
    let mut scans = Vec::new();
    if let Some(text) = lookup("targets") {
        let entries: Vec<FixedEntry> = serde_json::from_str(&text).map_err(|e| {
            config_error("targets", format!("must be a list of {{org, bucket, prefix}} tables ({e})"))
        })?;
        for e in entries {
            if !valid_org(&e.org) {
                return Err(config_error(
                    "targets",
                    format!("org {:?} is not a valid organization id", e.org),
                ));
            }
            scans.push(ScanSpec::Fixed { org: e.org, bucket: e.bucket, prefix: e.prefix });
        }
    }
    if let Some(text) = lookup("discover") {
        let entries: Vec<DiscoverEntry> = serde_json::from_str(&text).map_err(|e| {
            config_error("discover", format!("must be a list of {{bucket, template}} tables ({e})"))
        })?;
        for e in entries {
            scans.push(parse_template(&e.bucket, &e.template)?);
        }
    }
    if scans.is_empty() {
        return Err(config_error("targets", "neither `targets` nor `discover` lists anything to meter"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for scan in &scans {
        if !valid_bucket(scan.bucket()) {
            return Err(config_error("targets", format!("{:?} is not an S3 bucket name", scan.bucket())));
        }
        if !seen.insert(scan.target()) {
            return Err(config_error("targets", format!("{} is listed twice", scan.target())));
        }
    }
    Ok(scans)
}

fn whole_number(
    lookup: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: u32,
    max: u32,
) -> Result<u32, AdapterError> {
    match lookup(key) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| config_error(key, format!("{text:?} must be a whole number from 1 to {max}"))),
    }
}

/// Splits `http(s)://host[:port][/]` into scheme and authority, dropping a
/// default port (the `Host` header the client sends, which is signed).
fn parse_endpoint(endpoint: &str) -> Result<(String, String), AdapterError> {
    let (scheme, rest) =
        endpoint.split_once("://").filter(|(s, _)| matches!(*s, "http" | "https")).ok_or_else(|| {
            config_error("endpoint", format!("{endpoint:?} must be an http:// or https:// URL"))
        })?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(config_error(
            "endpoint",
            format!("{endpoint:?} must be scheme://host[:port] with no path"),
        ));
    }
    let default_port = if scheme == "http" { ":80" } else { ":443" };
    let authority = authority.strip_suffix(default_port).unwrap_or(authority).to_ascii_lowercase();
    Ok((scheme.to_owned(), authority))
}

impl Settings {
    pub fn from_config(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AdapterError> {
        let required =
            |key: &str| lookup(key).filter(|v| !v.is_empty()).ok_or_else(|| config_error(key, "is not set"));
        let (scheme, authority) = parse_endpoint(&required("endpoint")?)?;
        let region = lookup("region").unwrap_or_else(|| "us-east-1".to_owned());
        if region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(config_error("region", format!("{region:?} is not a region name such as us-east-1")));
        }
        let addressing = match lookup("addressing").as_deref() {
            None | Some("path") => Addressing::Path,
            Some("virtual") => Addressing::Virtual,
            Some(other) => {
                return Err(config_error("addressing", format!("{other:?} must be \"path\" or \"virtual\"")));
            }
        };
        let max_scan_age = lookup("max_scan_age").unwrap_or_else(|| "6h".to_owned());
        let max_scan_age_ms = parse_duration_ms(&max_scan_age).filter(|ms| *ms > 0).ok_or_else(|| {
            config_error("max_scan_age", format!("{max_scan_age:?} is not a duration such as 6h"))
        })?;
        let scans = scans(&lookup)?;
        if addressing == Addressing::Virtual
            && let Some(scan) = scans.iter().find(|s| s.bucket().contains(['.', '_']))
        {
            return Err(config_error(
                "addressing",
                format!("bucket {:?} cannot be a host name; use addressing = \"path\"", scan.bucket()),
            ));
        }
        Ok(Self {
            scheme,
            authority,
            region,
            addressing,
            credentials: Credentials {
                access_key_id: required("access_key_id")?,
                secret_access_key: required("secret_access_key")?,
                session_token: lookup("session_token").filter(|t| !t.is_empty()),
            },
            max_keys: whole_number(&lookup, "max_keys", 1000, 1000)?,
            pages_per_poll: whole_number(&lookup, "pages_per_poll", 4, 1000)?,
            max_scan_age_ms,
            scans,
        })
    }

    /// The scan a poll target names.
    pub fn scan(&self, target: &str) -> Result<&ScanSpec, AdapterError> {
        self.scans.iter().find(|s| s.target() == target).ok_or_else(|| {
            AdapterError::Config(format!("{target:?} is no longer in `targets` or `discover` of {SECTION}"))
        })
    }
}
