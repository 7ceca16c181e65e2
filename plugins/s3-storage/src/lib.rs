//! S3-compatible storage adapter.
//!
//! Pull only: each poll target (a configured `(org, bucket, prefix)`, or a
//! discovery template such as `tenants/{org}/` in a bucket) is listed with
//! ListObjectsV2 ([`list_request`], signed with SigV4 by [`sigv4`]), page by
//! page ([`listing::parse_page`]), in resumable scans ([`scan::step`]); a
//! completed scan gives each org a `storage_bytes` and a `storage_objects`
//! level at the time the listing started.
//!
//! Config (`[plugins.s3-storage]`): see [`Settings`].

pub mod listing;
mod scan;
mod settings;
pub mod sigv4;

use meterd_plugin_sdk::{
    AdapterError, AdapterInfo, Capabilities, Guest, HttpRequest, LogLevel, OutboundRequest, OutboundResponse,
    PollOutcome, WebhookOutcome, host,
};

pub use scan::{Cursor, ListRequest, METRIC_BYTES, METRIC_OBJECTS, Step, step};
pub use settings::{Addressing, ScanSpec, Settings};

/// The signed ListObjectsV2 request for one page.
pub fn list_request(settings: &Settings, request: &ListRequest<'_>, now_ms: i64) -> OutboundRequest {
    let mut query = vec![
        ("list-type".to_owned(), "2".to_owned()),
        ("max-keys".to_owned(), settings.max_keys.to_string()),
        ("encoding-type".to_owned(), "url".to_owned()),
    ];
    if !request.prefix.is_empty() {
        query.push(("prefix".to_owned(), request.prefix.to_owned()));
    }
    if let Some(delimiter) = request.delimiter {
        query.push(("delimiter".to_owned(), delimiter.to_owned()));
    }
    if let Some(token) = request.continuation_token {
        query.push(("continuation-token".to_owned(), token.to_owned()));
    }
    let (host, path) = match settings.addressing {
        Addressing::Path => {
            (settings.authority.clone(), format!("/{}", sigv4::uri_encode(request.bucket, false)))
        }
        Addressing::Virtual => (format!("{}.{}", request.bucket, settings.authority), "/".to_owned()),
    };
    let content_sha = [("x-amz-content-sha256".to_owned(), sigv4::EMPTY_PAYLOAD_SHA256.to_owned())];
    let signed = sigv4::sign(
        &sigv4::Request {
            method: "GET",
            host: &host,
            path: &path,
            query: &query,
            headers: &content_sha,
            payload_sha256: sigv4::EMPTY_PAYLOAD_SHA256,
        },
        &settings.credentials,
        &settings.region,
        "s3",
        &sigv4::amz_date(now_ms),
    );
    let mut headers = content_sha.to_vec();
    headers.extend(signed.headers);
    OutboundRequest {
        method: "GET".to_owned(),
        url: format!("{}://{host}{path}?{}", settings.scheme, sigv4::canonical_query(&query)),
        headers,
        body: Vec::new(),
    }
}

/// Reads one page from a response, or says clearly why there is none.
pub fn read_page(bucket: &str, response: &OutboundResponse) -> Result<listing::Page, AdapterError> {
    if (200..300).contains(&response.status) {
        return listing::parse_page(&response.body)
            .map_err(|e| AdapterError::Upstream(format!("bucket {bucket:?}: {e}")));
    }
    let status = response.status;
    let detail = match listing::parse_error(&response.body) {
        Some(e) if e.message.is_empty() => e.code,
        Some(e) => format!("{}: {}", e.code, e.message),
        None => String::from_utf8_lossy(&response.body).chars().take(200).collect(),
    };
    if matches!(status, 401 | 403) {
        Err(AdapterError::Unauthorized(format!("S3 refused to list bucket {bucket:?} ({status} {detail})")))
    } else {
        Err(AdapterError::Upstream(format!("S3 answered {status} listing bucket {bucket:?}: {detail}")))
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct S3Storage;

impl Guest for S3Storage {
    fn info() -> AdapterInfo {
        AdapterInfo {
            name: "s3-storage".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: Capabilities::PULL,
            description:
                "Bytes and objects stored per organization in S3-compatible buckets (ListObjectsV2, SigV4)"
                    .to_owned(),
        }
    }

    fn handle_webhook(_: HttpRequest) -> Result<WebhookOutcome, AdapterError> {
        Err(AdapterError::Unsupported("s3-storage is polled; it takes no webhooks".to_owned()))
    }

    fn targets() -> Result<Vec<String>, AdapterError> {
        Ok(settings::scans(&host::config)?.iter().map(ScanSpec::target).collect())
    }

    fn poll(target: String, cursor: Option<String>) -> Result<PollOutcome, AdapterError> {
        let settings = Settings::from_config(host::config)?;
        let spec = settings.scan(&target)?;
        let cursor = match cursor.as_deref().map(serde_json::from_str::<Cursor>) {
            None => Cursor::default(),
            Some(Ok(cursor)) => cursor,
            Some(Err(e)) => {
                host::log(
                    LogLevel::Warn,
                    &format!("target {target}: unreadable cursor ({e}); starting a new scan"),
                );
                Cursor::default()
            }
        };
        let now_ms = host::now_ms();
        let step =
            step(spec, cursor, now_ms, settings.pages_per_poll, settings.max_scan_age_ms, |request| {
                let response = host::http_send(&list_request(&settings, request, host::now_ms()))
                    .map_err(AdapterError::Upstream)?;
                read_page(request.bucket, &response)
            })?;
        if step.restarted_stale {
            host::log(
                LogLevel::Warn,
                &format!("target {target}: unfinished scan older than max_scan_age; started over"),
            );
        }
        for folder in &step.skipped {
            host::log(
                LogLevel::Warn,
                &format!("target {target}: folder {folder:?} is not a valid org id; skipped"),
            );
        }
        let next_cursor = serde_json::to_string(&step.cursor)
            .map_err(|e| AdapterError::Internal(format!("cursor cannot be written: {e}")))?;
        Ok(PollOutcome { records: step.records, next_cursor: Some(next_cursor), more: step.more })
    }
}

#[cfg(target_arch = "wasm32")]
meterd_plugin_sdk::export_adapter!(S3Storage with_types_in meterd_plugin_sdk);

#[cfg(test)]
mod tests;
