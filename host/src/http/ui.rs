//! `/ui`: the dashboard, a static single page over the JSON API (`host/ui/`,
//! with uPlot vendored in `host/ui/vendor/`). Its files are embedded in the
//! binary, so nothing is built or fetched at run time and nothing comes
//! from a CDN. The page holds no key: the user pastes one, and every call it
//! makes is an ordinary API request with that bearer token, scoped as any
//! other (a tenant key sees only its orgs).
//!
//! Every file is answered with its content type, `nosniff`, a CSP of
//! `default-src 'self'` (the page has no inline script or style), and an
//! `ETag` with `Cache-Control: no-cache`: browsers revalidate each load and
//! get a 304 until a new binary serves other bytes.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};

/// The policy every dashboard file is served with: only this origin, no
/// framing, no `<base>`, no form posts (the key form is handled by script,
/// so a key can never land in a URL).
pub const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    /// Under `/ui/`; "" is the page itself.
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { name: "", content_type: "text/html; charset=utf-8", body: include_bytes!("../../ui/index.html") },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/app.css"),
    },
    Asset {
        name: "vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uPlot.min.css"),
    },
    Asset {
        name: "vendor/uPlot.LICENSE",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uPlot.LICENSE"),
    },
];

/// Each asset's strong ETag, computed once: a quoted prefix of its SHA-256.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS.iter().map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..32])).collect()
});

/// The dashboard's routes (not in the OpenAPI document: they are a page,
/// not the API).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/{*file}", get(file))
}

async fn page(headers: HeaderMap) -> Response {
    serve("", &headers)
}

async fn file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&file, &headers)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        return with_headers(ApiError::not_found("no such dashboard file").into_response(), None);
    };
    let asset = &ASSETS[index];
    let etag = ETAGS[index].as_str();
    let matches = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').any(|tag| tag.trim().trim_start_matches("W/") == etag || tag.trim() == "*")
    });
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    with_headers(response, Some("no-cache"))
}

fn with_headers(mut response: Response, cache: Option<&'static str>) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache.unwrap_or("no-store")));
    response
}
