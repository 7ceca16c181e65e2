//! The S3 adapter's SigV4 signing (`sigv4::uri_encode`, `canonical_query`,
//! `amz_date`, `signing_key`, `sign`) and the signed ListObjectsV2 request
//! built from them (`list_request`).
//!
//! Properties: `uri_encode` keeps only unreserved characters (and `/` when
//! asked) and decodes back to its input; `canonical_query` is the input
//! pairs, each name and value encoded so that `&` and `=` split it
//! unambiguously, sorted; `amz_date` is the compact form of the RFC 3339
//! time; `sign` states its canonical request (method, path, query, sorted
//! lower-case headers with whitespace runs collapsed, signed-header list,
//! payload hash) and string to sign exactly, and its signature is the
//! HMAC chain of AWS's spec computed here independently; collapsing
//! whitespace in a header value does not change it, while changing a
//! query value, a header value, the secret, the date or the payload hash
//! does; the `authorization` header names the credential scope, the
//! signed headers and the signature; `list_request` sends exactly the query
//! it signed (list-type, max-keys, encoding-type, prefix, delimiter,
//! continuation token), for the bucket in the path or the host name.
#![no_main]

use arbitrary::Arbitrary;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use meterd_fuzz::reference_url_decode;
use meterd_plugin_s3_storage::sigv4::{
    Credentials, EMPTY_PAYLOAD_SHA256, Request, amz_date, canonical_query, sign, signing_key, uri_encode,
};
use meterd_plugin_s3_storage::{Addressing, ListRequest, ScanSpec, Settings, list_request};
use meterd_plugin_sdk::time::format_rfc3339_ms;
use sha2::{Digest, Sha256};

/// 2000-01-01 and 2200-01-01, the host's accepted times.
const FROM_MS: i64 = 946_684_800_000;
const SPAN_MS: i64 = 7_258_118_400_000 - FROM_MS;

#[derive(Debug, Arbitrary)]
struct Input {
    method: u8,
    host: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(u8, String)>,
    payload: [u8; 32],
    access_key: String,
    secret: String,
    token: Option<String>,
    region: u8,
    now: u64,
    // list_request
    bucket: u8,
    prefix: String,
    delimiter: bool,
    continuation: Option<String>,
    virtual_host: bool,
    https: bool,
    port: Option<u16>,
    max_keys: u16,
}

const HEADER_NAMES: [&str; 6] =
    ["x-amz-content-sha256", "Content-Type", "x-amz-meta-a", "range", "X-Amz-Meta-B", "accept"];
const REGIONS: [&str; 4] = ["us-east-1", "eu-central-1", "auto", "garage"];
const BUCKETS: [&str; 4] = ["meter-bucket", "a.b.c", "x_y-z", "abc"];

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn check_encoding(text: &str) {
    for keep_slash in [false, true] {
        let encoded = uri_encode(text, keep_slash);
        let mut bytes = encoded.bytes();
        while let Some(b) = bytes.next() {
            match b {
                b'%' => {
                    let (h, l) = (bytes.next().unwrap_or(0), bytes.next().unwrap_or(0));
                    assert!(h.is_ascii_hexdigit() && !h.is_ascii_lowercase(), "{encoded:?}");
                    assert!(l.is_ascii_hexdigit() && !l.is_ascii_lowercase(), "{encoded:?}");
                }
                b'/' => assert!(keep_slash, "{encoded:?}"),
                b => assert!(unreserved(b), "{encoded:?}"),
            }
        }
        assert_eq!(reference_url_decode(&encoded).as_deref(), Some(text), "{encoded:?}");
    }
}

fn check_query(query: &[(String, String)]) {
    let canonical = canonical_query(query);
    if query.is_empty() {
        assert_eq!(canonical, "");
        return;
    }
    let pairs: Vec<(&str, &str)> =
        canonical.split('&').map(|p| p.split_once('=').expect("name=value")).collect();
    assert_eq!(pairs.len(), query.len(), "{canonical:?}");
    assert!(pairs.windows(2).all(|w| w[0] <= w[1]), "not sorted: {canonical:?}");
    let mut decoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (reference_url_decode(k).unwrap(), reference_url_decode(v).unwrap()))
        .collect();
    let mut given = query.to_vec();
    decoded.sort();
    given.sort();
    assert_eq!(decoded, given);
}

fuzz_target!(|input: Input| {
    check_encoding(&input.path);
    check_encoding(&input.host);
    check_query(&input.query);

    let now_ms = FROM_MS + (input.now % SPAN_MS as u64) as i64;
    let date = amz_date(now_ms);
    let rfc = format_rfc3339_ms(now_ms);
    let compact: String = rfc[..19].chars().filter(|c| *c != '-' && *c != ':').collect();
    assert_eq!(date, format!("{compact}Z"));
    assert_eq!(date.len(), 16);

    let method = ["GET", "HEAD", "PUT"][usize::from(input.method % 3)];
    let region = REGIONS[usize::from(input.region % 4)];
    let headers: Vec<(String, String)> =
        input.headers.iter().map(|(n, v)| (HEADER_NAMES[usize::from(n % 6)].to_owned(), v.clone())).collect();
    let payload = hex(&input.payload);
    let credentials = Credentials {
        access_key_id: input.access_key.clone(),
        secret_access_key: input.secret.clone(),
        session_token: input.token.clone(),
    };
    // The path as callers give it: already URI-encoded.
    let encoded_path = uri_encode(&input.path, true);
    let request = Request {
        method,
        host: &input.host,
        path: &encoded_path,
        query: &input.query,
        headers: &headers,
        payload_sha256: &payload,
    };
    let signed = sign(&request, &credentials, region, "s3", &date);

    // The canonical request, stated.
    let mut canonical: Vec<(String, String)> =
        vec![("host".to_owned(), input.host.clone()), ("x-amz-date".to_owned(), date.clone())];
    if let Some(token) = &input.token {
        canonical.push(("x-amz-security-token".to_owned(), token.clone()));
    }
    canonical.extend(headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())));
    let canonical: Vec<(String, String)> = canonical
        .into_iter()
        .map(|(n, v)| (n, v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let lines = signed.canonical_request.split('\n').collect::<Vec<_>>();
    let signed_headers = canonical.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");
    let header_count = canonical.len();
    // Repeated (name, value) pairs collapse in a set; compare counts first.
    let total = 2 + usize::from(input.token.is_some()) + headers.len();
    if header_count == total {
        let mut expected = vec![method.to_owned(), encoded_path.clone(), canonical_query(&input.query)];
        expected.extend(canonical.iter().map(|(n, v)| format!("{n}:{v}")));
        expected.extend([String::new(), signed_headers.clone(), payload.clone()]);
        assert_eq!(lines, expected);
    }
    let scope = format!("{}/{region}/s3/aws4_request", &date[..8]);
    assert_eq!(
        signed.string_to_sign,
        format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            hex(&Sha256::digest(signed.canonical_request.as_bytes()))
        )
    );
    let k_date = hmac(format!("AWS4{}", input.secret).as_bytes(), &date[..8]);
    let k_signing = hmac(&hmac(&hmac(&k_date, region), "s3"), "aws4_request");
    assert_eq!(signing_key(&input.secret, &date[..8], region, "s3").to_vec(), k_signing);
    assert_eq!(signed.signature, hex(&hmac(&k_signing, &signed.string_to_sign)));
    let authorization = signed.headers.iter().find(|(n, _)| n == "authorization").map(|(_, v)| v.as_str());
    let listed_headers = signed.canonical_request.lines().rev().nth(1).unwrap_or("");
    assert_eq!(
        authorization,
        Some(format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={listed_headers}, Signature={}",
            input.access_key, signed.signature
        ))
        .as_deref()
    );
    assert_eq!(
        signed.headers.iter().find(|(n, _)| n == "x-amz-security-token").map(|(_, v)| v),
        input.token.as_ref()
    );

    // Whitespace runs in a header value do not count; other changes do.
    let resign = |request: &Request<'_>, secret: &str, date: &str| {
        let credentials = Credentials { secret_access_key: secret.to_owned(), ..credentials.clone() };
        sign(request, &credentials, region, "s3", date).signature
    };
    let spaced: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.clone(), format!("  {}\t ", v.split_whitespace().collect::<Vec<_>>().join("   "))))
        .collect();
    assert_eq!(
        resign(&Request { headers: &spaced, ..request.clone() }, &input.secret, &date),
        signed.signature
    );
    if let Some((name, value)) = input.query.first() {
        let changed = [vec![(name.clone(), format!("{value}x"))], input.query[1..].to_vec()].concat();
        assert_ne!(
            resign(&Request { query: &changed, ..request.clone() }, &input.secret, &date),
            signed.signature
        );
    }
    if let Some((name, value)) = headers.first() {
        let changed = [vec![(name.clone(), format!("{value}x"))], headers[1..].to_vec()].concat();
        assert_ne!(
            resign(&Request { headers: &changed, ..request.clone() }, &input.secret, &date),
            signed.signature
        );
    }
    assert_ne!(resign(&request, &format!("{}x", input.secret), &date), signed.signature);
    let later = amz_date(now_ms + 1_000);
    assert_ne!(resign(&request, &input.secret, &later), signed.signature);
    let other_payload = hex(&Sha256::digest(input.payload));
    assert_ne!(
        resign(&Request { payload_sha256: &other_payload, ..request.clone() }, &input.secret, &date),
        signed.signature
    );

    // A ListObjectsV2 request sends exactly the query it signed.
    let bucket = BUCKETS[usize::from(input.bucket % 4)];
    let virtual_host = input.virtual_host && !bucket.contains(['.', '_']);
    let scheme = if input.https { "https" } else { "http" };
    let authority = match input.port {
        Some(port) => format!("s3.example.test:{port}"),
        None => "s3.example.test".to_owned(),
    };
    let max_keys = u32::from(input.max_keys % 1000) + 1;
    let settings = Settings {
        scheme: scheme.to_owned(),
        authority: authority.clone(),
        region: region.to_owned(),
        addressing: if virtual_host { Addressing::Virtual } else { Addressing::Path },
        credentials: credentials.clone(),
        max_keys,
        pages_per_poll: 4,
        max_scan_age_ms: 3_600_000,
        scans: vec![ScanSpec::Fixed {
            org: "acme".to_owned(),
            bucket: bucket.to_owned(),
            prefix: input.prefix.clone(),
        }],
    };
    let list = ListRequest {
        bucket,
        prefix: &input.prefix,
        delimiter: input.delimiter.then_some("/"),
        continuation_token: input.continuation.as_deref(),
    };
    let out = list_request(&settings, &list, now_ms);
    assert_eq!(out.method, "GET");
    assert!(out.body.is_empty());
    let (host, path) = if virtual_host {
        (format!("{bucket}.{authority}"), "/".to_owned())
    } else {
        (authority.clone(), format!("/{bucket}"))
    };
    let (start, query) = out.url.split_once('?').expect("a query");
    assert_eq!(start, format!("{scheme}://{host}{path}"));
    let mut expected = vec![
        ("list-type".to_owned(), "2".to_owned()),
        ("max-keys".to_owned(), max_keys.to_string()),
        ("encoding-type".to_owned(), "url".to_owned()),
    ];
    if !input.prefix.is_empty() {
        expected.push(("prefix".to_owned(), input.prefix.clone()));
    }
    if input.delimiter {
        expected.push(("delimiter".to_owned(), "/".to_owned()));
    }
    if let Some(token) = &input.continuation {
        expected.push(("continuation-token".to_owned(), token.clone()));
    }
    assert_eq!(query, canonical_query(&expected));
    let content_sha = [("x-amz-content-sha256".to_owned(), EMPTY_PAYLOAD_SHA256.to_owned())];
    let resigned = sign(
        &Request {
            method: "GET",
            host: &host,
            path: &path,
            query: &expected,
            headers: &content_sha,
            payload_sha256: EMPTY_PAYLOAD_SHA256,
        },
        &credentials,
        region,
        "s3",
        &date,
    );
    for (name, value) in content_sha.iter().chain(&resigned.headers) {
        assert!(
            out.headers.contains(&(name.clone(), value.clone())),
            "{name} missing from {:?}",
            out.headers
        );
    }
});
