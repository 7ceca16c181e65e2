//! Outbound HTTP lent to plugins (`http-send`): only to allowlisted
//! scheme/host/port, refused before any connection otherwise; a timeout and
//! a response-size cap per request; redirects returned, never followed.
//!
//! Plugin config keys (in `[plugins.<name>]`):
//! `http_allow` — patterns `scheme://host[:port]`; `*.example.com` matches
//! subdomains, port `*` any port, no port the scheme's default;
//! `http_timeout_ms` (default 10000); `http_max_response_bytes` (default 4 MiB).

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::Url;

use crate::plugin::{OutboundRequest, OutboundResponse, PluginSettings};

pub const ALLOW_KEY: &str = "http_allow";
pub const TIMEOUT_KEY: &str = "http_timeout_ms";
pub const MAX_RESPONSE_KEY: &str = "http_max_response_bytes";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Where a plugin may send requests, and within which bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPolicy {
    allow: Vec<AllowPattern>,
    pub timeout: Duration,
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowPattern {
    scheme: String,
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` → subdomains of `example.com` (not itself).
    Subdomains(String),
}

impl HttpPolicy {
    /// Reads the policy from a plugin's settings; an error names the key.
    pub fn from_settings(settings: &PluginSettings) -> Result<Self, String> {
        let allow = match settings.get(ALLOW_KEY) {
            None => Vec::new(),
            Some(text) => {
                let patterns: Vec<String> = serde_json::from_str(text).map_err(|_| {
                    format!("`{ALLOW_KEY}` must be a list of \"scheme://host[:port]\" patterns")
                })?;
                patterns.iter().map(|p| AllowPattern::parse(p)).collect::<Result<_, _>>()?
            }
        };
        let number = |key: &str| -> Result<Option<u64>, String> {
            settings
                .get(key)
                .map(|v| v.parse::<u64>().map_err(|_| format!("`{key}` must be a whole number, got {v:?}")))
                .transpose()
        };
        let timeout = number(TIMEOUT_KEY)?.map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let max_response_bytes = match number(MAX_RESPONSE_KEY)? {
            Some(n) => usize::try_from(n).map_err(|_| format!("`{MAX_RESPONSE_KEY}` is too large"))?,
            None => DEFAULT_MAX_RESPONSE_BYTES,
        };
        if timeout.is_zero() || max_response_bytes == 0 {
            return Err(format!("`{TIMEOUT_KEY}` and `{MAX_RESPONSE_KEY}` must be greater than 0"));
        }
        Ok(Self { allow, timeout, max_response_bytes })
    }

    /// Whether the plugin may reach no host at all: its calls then never
    /// wait on the network, only compute.
    pub fn allows_none(&self) -> bool {
        self.allow.is_empty()
    }

    /// Checks a URL against the allowlist; the error says why, without
    /// echoing the query string (it may carry credentials).
    pub fn check(&self, url: &Url) -> Result<(), String> {
        let origin = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{origin}: only http and https are allowed"));
        }
        if self.allow.iter().any(|p| p.matches(url)) {
            Ok(())
        } else {
            Err(format!("{origin} is not allowed by this plugin's `{ALLOW_KEY}`"))
        }
    }
}

impl AllowPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{ALLOW_KEY}` entry {text:?}: {why} (expected scheme://host[:port])");
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if !matches!(scheme, "http" | "https") {
            return Err(bad("scheme must be http or https"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, "*")) => (host, None),
            Some((host, port)) => (host, Some(port.parse::<u16>().map_err(|_| bad("bad port"))?)),
            None => (rest, Some(if scheme == "https" { 443 } else { 80 })),
        };
        if host.is_empty() || host.contains(['/', '?', '#', '@']) {
            return Err(bad("bad host"));
        }
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() => HostPattern::Subdomains(domain.to_owned()),
            _ => HostPattern::Exact(host),
        };
        Ok(Self { scheme: scheme.to_owned(), host, port })
    }

    fn matches(&self, url: &Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else { return false };
        let host_ok = match &self.host {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Subdomains(domain) => {
                host.strip_suffix(domain.as_str()).is_some_and(|sub| sub.ends_with('.') && sub.len() > 1)
            }
        };
        url.scheme() == self.scheme
            && host_ok
            && self.port.is_none_or(|p| url.port_or_known_default() == Some(p))
    }
}

fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("meterd/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot create the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Sends one request under `policy`.
pub async fn send(policy: &HttpPolicy, request: OutboundRequest) -> Result<OutboundResponse, String> {
    let url = Url::parse(&request.url).map_err(|e| format!("bad URL: {e}"))?;
    policy.check(&url)?;
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("bad method {:?}", request.method))?;
    let mut builder = client()?.request(method, url.clone()).timeout(policy.timeout).body(request.body);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let origin = url.origin().ascii_serialization();
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            format!("{origin}: timed out after {} ms", policy.timeout.as_millis())
        } else {
            format!("{origin}: {}", e.without_url())
        }
    };
    let mut response = builder.send().await.map_err(failed)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > policy.max_response_bytes {
            return Err(format!("{origin}: response larger than {} bytes", policy.max_response_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(OutboundResponse { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &str) -> HttpPolicy {
        let settings = PluginSettings::from([(ALLOW_KEY.to_owned(), allow.to_owned())]);
        HttpPolicy::from_settings(&settings).unwrap()
    }

    fn allowed(p: &HttpPolicy, url: &str) -> bool {
        p.check(&Url::parse(url).unwrap()).is_ok()
    }

    #[test]
    fn matches_scheme_host_and_port() {
        let p = policy(r#"["https://api.daytona.io", "http://127.0.0.1:*", "https://*.example.com:8443"]"#);
        assert!(allowed(&p, "https://api.daytona.io/analytics?x=1"));
        assert!(allowed(&p, "https://API.daytona.io:443/"));
        assert!(!allowed(&p, "http://api.daytona.io/"), "scheme");
        assert!(!allowed(&p, "https://api.daytona.io:8443/"), "port");
        assert!(!allowed(&p, "https://api.daytona.io.evil.com/"), "host suffix");
        assert!(allowed(&p, "http://127.0.0.1:9999/"));
        assert!(!allowed(&p, "http://127.0.0.2:9999/"));
        assert!(allowed(&p, "https://a.example.com:8443/"));
        assert!(!allowed(&p, "https://example.com:8443/"), "subdomains only");
        assert!(!allowed(&p, "https://evilexample.com:8443/"));
        assert!(!allowed(&policy("[]"), "http://127.0.0.1:1/"), "nothing is allowed by default");
    }

    #[test]
    fn refusals_name_the_origin_but_not_the_query() {
        let e = policy("[]").check(&Url::parse("http://10.0.0.1:8080/x?token=secret").unwrap()).unwrap_err();
        assert!(e.contains("http://10.0.0.1:8080") && !e.contains("secret"), "{e}");
        let e = policy(r#"["http://*:*"]"#).check(&Url::parse("file:///etc/passwd").unwrap()).unwrap_err();
        assert!(e.contains("only http and https"), "{e}");
    }

    #[test]
    fn bad_settings_name_the_key() {
        for (key, value) in [
            (ALLOW_KEY, "\"x\""),
            (ALLOW_KEY, r#"["ftp://x"]"#),
            (ALLOW_KEY, r#"["http://h:port"]"#),
            (TIMEOUT_KEY, "soon"),
            (MAX_RESPONSE_KEY, "0"),
        ] {
            let settings = PluginSettings::from([(key.to_owned(), value.to_owned())]);
            let e = HttpPolicy::from_settings(&settings).unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }
}
