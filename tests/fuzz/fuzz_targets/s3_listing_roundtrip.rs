//! ListObjectsV2 answers written by this target from a known listing, in the
//! shapes real servers send (AWS, moto and s3s-fs element orders, pretty or
//! compact, namespaced or not, extra elements, keys raw or URL-encoded with
//! `%20` or `+`, either hex case, the s3s-fs quirk of echoing
//! `EncodingType=url` with raw keys), then read by `listing::parse_page`.
//!
//! Property: the page read is the listing written: every key (decoded),
//! size, common prefix and continuation token, in order; a token is read
//! only when `<IsTruncated>` is `true`. For the s3s-fs quirk a raw key that
//! happens to decode reads decoded (the documented price of that quirk).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meterd_fuzz::reference_url_decode;
use meterd_plugin_s3_storage::listing::{Page, parse_page};

#[derive(Debug, Arbitrary)]
enum Encoding {
    Raw,
    Url,
    UrlPlus,
    /// `<EncodingType>url</EncodingType>` with raw keys (s3s-fs 0.14).
    UrlClaimedRaw,
}

#[derive(Debug, Arbitrary)]
struct Listing {
    objects: Vec<(String, u64)>,
    prefixes: Vec<String>,
    token: Option<String>,
    /// A `<NextContinuationToken>` alongside `<IsTruncated>false` (ignored).
    stray_token: bool,
    encoding: Encoding,
    layout: u8,
}

/// Characters XML 1.0 cannot carry at all, not even as references.
fn xml_ok(text: &str) -> bool {
    text.chars()
        .all(|c| matches!(c, '\t' | '\n' | '\r' | ' '..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..))
}

fn escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

fn url_encode(text: &str, plus: bool, lower: bool) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(char::from(b))
            }
            b' ' if plus => out.push('+'),
            b if lower => out.push_str(&format!("%{b:02x}")),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fuzz_target!(|listing: Listing| {
    let Listing { objects, prefixes, token, stray_token, encoding, layout } = listing;
    let (pretty, namespaced, moto_order, extras) =
        (layout & 1 != 0, layout & 2 != 0, layout & 4 != 0, layout & 8 != 0);
    let lower_hex = layout & 16 != 0;
    let padded_numbers = layout & 32 != 0;
    let (nl, indent) = if pretty { ("\n", "  ") } else { ("", "") };

    // Raw keys that XML cannot carry are not listed raw (S3 says: use
    // encoding-type=url for them).
    let raw = matches!(encoding, Encoding::Raw | Encoding::UrlClaimedRaw);
    let objects: Vec<(String, u64)> = objects.into_iter().filter(|(k, _)| !raw || xml_ok(k)).collect();
    let prefixes: Vec<String> = prefixes.into_iter().filter(|p| !raw || xml_ok(p)).collect();
    let token = token.filter(|t| !t.is_empty() && xml_ok(t));
    let write_key = |key: &str| match encoding {
        Encoding::Raw | Encoding::UrlClaimedRaw => escape(key),
        Encoding::Url => url_encode(key, false, lower_hex),
        Encoding::UrlPlus => url_encode(key, true, lower_hex),
    };
    let read_key = |key: &str| match encoding {
        Encoding::Raw => key.to_owned(),
        Encoding::Url | Encoding::UrlPlus => key.to_owned(),
        Encoding::UrlClaimedRaw => reference_url_decode(key).unwrap_or_else(|| key.to_owned()),
    };
    let number = |n: u64| if padded_numbers { format!("{nl} {n}\t{nl}") } else { n.to_string() };

    let mut head = vec![
        "<Name>meter-bucket</Name>".to_owned(),
        "<Prefix>tenants/</Prefix>".to_owned(),
        format!("<KeyCount>{}</KeyCount>", objects.len() + prefixes.len()),
        "<MaxKeys>1000</MaxKeys>".to_owned(),
    ];
    if !matches!(encoding, Encoding::Raw) {
        head.push(
            if layout & 64 != 0 {
                "<EncodingType>URL</EncodingType>"
            } else {
                "<EncodingType>url</EncodingType>"
            }
            .to_owned(),
        );
    }
    let truncation = match (&token, stray_token) {
        (Some(t), _) => vec![
            format!("<IsTruncated>{}</IsTruncated>", if padded_numbers { " true\n" } else { "true" }),
            format!("<NextContinuationToken>{}</NextContinuationToken>", escape(t)),
        ],
        (None, true) => vec![
            "<IsTruncated>false</IsTruncated>".to_owned(),
            "<NextContinuationToken>ignored</NextContinuationToken>".to_owned(),
        ],
        (None, false) if layout & 128 != 0 => Vec::new(),
        (None, false) => vec!["<IsTruncated>false</IsTruncated>".to_owned()],
    };
    let mut body = Vec::new();
    for (key, size) in &objects {
        let mut fields =
            vec![format!("<Key>{}</Key>", write_key(key)), format!("<Size>{}</Size>", number(*size))];
        if extras {
            fields.push("<ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag>".to_owned());
            fields.push("<Owner><ID>x</ID><Key>not this one</Key></Owner>".to_owned());
            fields.push("<StorageClass>STANDARD</StorageClass>".to_owned());
        }
        if moto_order {
            fields.reverse();
        }
        body.push(format!(
            "<Contents>{nl}{indent}{indent}{}{nl}{indent}</Contents>",
            fields.join(&format!("{nl}{indent}{indent}"))
        ));
    }
    for prefix in &prefixes {
        body.push(format!("<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>", write_key(prefix)));
    }
    let mut children =
        if moto_order { [truncation, body, head].concat() } else { [head, truncation, body].concat() };
    if extras {
        children.insert(children.len() / 2, "<!-- a comment --><Delimiter>/</Delimiter>".to_owned());
    }
    let xmlns = if namespaced { r#" xmlns="http://s3.amazonaws.com/doc/2006-03-01/""# } else { "" };
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>{nl}<ListBucketResult{xmlns}>{nl}{indent}{}{nl}</ListBucketResult>{nl}"#,
        children.join(&format!("{nl}{indent}"))
    );

    let expected = Page {
        objects: objects.iter().map(|(k, s)| (read_key(k), *s)).collect(),
        common_prefixes: prefixes.iter().map(|p| read_key(p)).collect(),
        next_continuation_token: token,
    };
    assert_eq!(parse_page(xml.as_bytes()), Ok(expected), "{xml}");
});
