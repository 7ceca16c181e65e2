//! The S3 adapter's response readers on arbitrary bytes: `listing::parse_page`
//! (ListObjectsV2), `listing::parse_error` (`<Error>`), `read_page` (status
//! and body → page or error), and `listing::url_decode`.
//!
//! Input: a body (seeds: the ListObjectsV2, error and ListBuckets answers
//! captured from moto and s3s-fs, and AWS's documented example).
//!
//! Properties: nothing panics; a page is read only from a
//! `<ListBucketResult>` root, and has a non-empty continuation token
//! exactly when `<IsTruncated>` says `true`, one object per `<Contents>` and
//! one prefix per `<CommonPrefixes>`, keys decoded (or kept as sent when they
//! do not decode) only under `<EncodingType>url`; an `<Error>` root is read
//! as an error and nothing else is; `read_page` gives the page for 2xx,
//! `Unauthorized` for 401/403 and `Upstream` otherwise, naming the error
//! code when there is one; `url_decode` agrees with a plain reference
//! decoder (`+` is a space, `%` takes two hex digits, UTF-8 result).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd_fuzz::reference_url_decode;
use meterd_plugin_s3_storage::listing::{parse_error, parse_page, url_decode};
use meterd_plugin_s3_storage::read_page;
use meterd_plugin_sdk::{AdapterError, OutboundResponse};

fn child<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name).map(|c| c.text().unwrap_or(""))
}

fuzz_target!(|body: &[u8]| {
    let text = String::from_utf8_lossy(body);
    assert_eq!(url_decode(&text).ok(), reference_url_decode(&text), "url_decode({text:?})");

    let doc = std::str::from_utf8(body).ok().and_then(|t| roxmltree::Document::parse(t).ok());
    let root = doc.as_ref().map(|d| d.root_element());
    let root_name = root.map(|r| r.tag_name().name().to_owned());

    let page = parse_page(body);
    match (&page, root) {
        (Ok(page), Some(root)) => {
            assert_eq!(root.tag_name().name(), "ListBucketResult");
            let elements = |name: &str| root.children().filter(|c| c.tag_name().name() == name).count();
            assert_eq!(page.objects.len(), elements("Contents"));
            assert_eq!(page.common_prefixes.len(), elements("CommonPrefixes"));
            let truncated = child(root, "IsTruncated").map(str::trim) == Some("true");
            assert_eq!(page.next_continuation_token.is_some(), truncated);
            assert!(page.next_continuation_token.as_ref().is_none_or(|t| !t.is_empty()));
            let encoded = child(root, "EncodingType").is_some_and(|t| t.eq_ignore_ascii_case("url"));
            let contents = root.children().filter(|c| c.is_element() && c.tag_name().name() == "Contents");
            for ((key, size), node) in page.objects.iter().zip(contents) {
                let raw = child(node, "Key").expect("a read object has a key");
                let decoded = if encoded { reference_url_decode(raw) } else { None };
                assert_eq!(key, decoded.as_deref().unwrap_or(raw));
                assert_eq!(Some(*size), child(node, "Size").and_then(|s| s.trim().parse().ok()));
            }
        }
        (Ok(page), None) => panic!("a page from a body that is not XML: {page:?}"),
        (Err(_), _) => {}
    }

    let error = parse_error(body);
    assert_eq!(error.is_some(), root_name.as_deref() == Some("Error"), "{error:?}");

    for status in [200, 204, 301, 401, 403, 404, 500, 503] {
        let response = OutboundResponse { status, headers: Vec::new(), body: body.to_vec() };
        let read = read_page("meter-bucket", &response);
        if (200..300).contains(&status) {
            match read {
                Ok(read) => assert_eq!(Ok(read), page),
                Err(AdapterError::Upstream(_)) => assert!(page.is_err()),
                Err(other) => panic!("{status}: {other:?}"),
            }
            continue;
        }
        let message = match (read, status) {
            (Err(AdapterError::Unauthorized(m)), 401 | 403) => m,
            (Err(AdapterError::Upstream(m)), 301 | 404 | 500 | 503) => m,
            (other, _) => panic!("{status}: {other:?}"),
        };
        if let Some(e) = &error {
            assert!(message.contains(&e.code), "{message:?} does not name {:?}", e.code);
        }
    }
});
