//! AWS Signature Version 4 for the requests this plugin sends: the
//! canonical request, the string to sign, the signing-key chain and the
//! `Authorization` header, exactly as AWS specifies them. Pure functions,
//! tested against AWS's own test-suite vectors (`tests/fixtures/sigv4/`).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use meterd_plugin_sdk::time::format_rfc3339_ms;

/// SHA-256 of an empty payload: every GET this plugin sends.
pub const EMPTY_PAYLOAD_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Who signs. `session_token` is set for temporary credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    /// Never prints the secret or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// A request about to be signed. `path` is already URI-encoded (S3 does
/// not encode it twice); query values are raw and encoded here.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// `host[:port]` as the HTTP client will send it in `Host`.
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    /// Headers to sign besides `host`, `x-amz-date` and the session token.
    pub headers: &'a [(String, String)],
    pub payload_sha256: &'a str,
}

/// What `sign` produced: the headers to send, and the intermediate strings
/// (kept for tests and for debugging a server's `SignatureDoesNotMatch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signature: String,
    /// `authorization`, `x-amz-date`, and `x-amz-security-token` if any.
    pub headers: Vec<(String, String)>,
}

/// RFC 3986 percent-encoding as SigV4 wants it: everything but
/// `A-Z a-z 0-9 - _ . ~` is encoded (upper-case hex); `/` too unless
/// `keep_slash`.
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The query string exactly as signed (and as it must be sent): each name
/// and value encoded, sorted by name then value.
pub fn canonical_query(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> =
        query.iter().map(|(k, v)| (uri_encode(k, false), uri_encode(v, false))).collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// `YYYYMMDDTHHMMSSZ` of a millisecond time.
pub fn amz_date(now_ms: i64) -> String {
    // RFC 3339 "2015-08-30T12:36:00.000Z" → "20150830T123600Z".
    let rfc = format_rfc3339_ms(now_ms);
    let digits: String = rfc[..19].chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect();
    format!("{digits}Z")
}

fn hmac(key: &[u8], data: &str) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date);
    let k_region = hmac(&k_date, region);
    let k_service = hmac(&k_region, service);
    hmac(&k_service, "aws4_request")
}

/// Signs `request` at `amz_date` (`YYYYMMDDTHHMMSSZ`) for `region` and
/// `service` with the header method.
pub fn sign(
    request: &Request<'_>,
    credentials: &Credentials,
    region: &str,
    service: &str,
    amz_date: &str,
) -> Signed {
    let mut headers: Vec<(String, String)> =
        vec![("host".to_owned(), request.host.to_owned()), ("x-amz-date".to_owned(), amz_date.to_owned())];
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token".to_owned(), token.clone()));
    }
    headers.extend(request.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())));
    // Canonical headers: lower-case names, trimmed values with inner runs
    // of spaces collapsed, sorted by name.
    let mut canonical: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.clone(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    canonical.sort();
    let signed_headers = canonical.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");
    let canonical_headers: String = canonical.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method,
        request.path,
        canonical_query(request.query),
        request.payload_sha256
    );
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign =
        format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical_request.as_bytes())));
    let key = signing_key(&credentials.secret_access_key, date, region, service);
    let signature = hex(&hmac(&key, &string_to_sign));
    let mut out = vec![
        (
            "authorization".to_owned(),
            format!(
                "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                credentials.access_key_id
            ),
        ),
        ("x-amz-date".to_owned(), amz_date.to_owned()),
    ];
    if let Some(token) = &credentials.session_token {
        out.push(("x-amz-security-token".to_owned(), token.clone()));
    }
    Signed { canonical_request, string_to_sign, signature, headers: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_encoding_keeps_only_unreserved_characters() {
        assert_eq!(uri_encode("tenants/a b+c~d_e.f-g", true), "tenants/a%20b%2Bc~d_e.f-g");
        assert_eq!(uri_encode("a/b=c&d", false), "a%2Fb%3Dc%26d");
        assert_eq!(uri_encode("é", false), "%C3%A9");
    }

    #[test]
    fn query_is_sorted_by_encoded_name_then_value() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(canonical_query(&q(&[("b", "2"), ("a", "z"), ("a", "y")])), "a=y&a=z&b=2");
        assert_eq!(
            canonical_query(&q(&[("prefix", "t/x y"), ("list-type", "2")])),
            "list-type=2&prefix=t%2Fx%20y"
        );
        assert_eq!(canonical_query(&[]), "");
    }

    #[test]
    fn amz_date_is_compact_utc() {
        assert_eq!(amz_date(1_440_938_160_000), "20150830T123600Z");
    }
}
