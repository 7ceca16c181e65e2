//! ListObjectsV2 answers read without relying on element order (moto and
//! AWS order elements differently), with `encoding-type=url` decoded, and
//! S3 error bodies (`<Error><Code>…`) turned into sentences.

use roxmltree::{Document, Node};

/// One page of a ListObjectsV2 answer: only what metering needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Object keys and sizes in bytes (keys decoded).
    pub objects: Vec<(String, u64)>,
    /// `CommonPrefixes/Prefix` values (decoded), when listed with a delimiter.
    pub common_prefixes: Vec<String>,
    /// Where the next page starts; `Some` exactly when the listing is truncated.
    pub next_continuation_token: Option<String>,
}

/// An S3 `<Error>` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub code: String,
    pub message: String,
}

fn children<'a, 'input>(
    node: Node<'a, 'input>,
    name: &'a str,
) -> impl Iterator<Item = Node<'a, 'input>> + 'a {
    node.children().filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn child_text<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name).map(|c| c.text().unwrap_or(""))
}

/// Decodes `application/x-www-form-urlencoded`-style text (`+` is a space),
/// as S3 encodes keys and prefixes under `encoding-type=url`.
pub fn url_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits: `from_str_radix` alone would also take a
                // sign ("%+5" as 0x05).
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                let byte = hex
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
                    .ok_or_else(|| format!("{text:?} has a bad %-escape"))?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} does not decode to UTF-8"))
}

/// Parses a ListObjectsV2 answer (`<ListBucketResult>`).
pub fn parse_page(body: &[u8]) -> Result<Page, String> {
    let text = std::str::from_utf8(body).map_err(|_| "ListObjectsV2 answer is not UTF-8".to_owned())?;
    let doc = Document::parse(text).map_err(|e| format!("ListObjectsV2 answer is not XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "ListBucketResult" {
        return Err(format!("expected <ListBucketResult>, got <{}>", root.tag_name().name()));
    }
    let encoded = child_text(root, "EncodingType").is_some_and(|t| t.eq_ignore_ascii_case("url"));
    // Some servers (s3s-fs 0.14) echo `EncodingType=url` but send keys raw;
    // a key that does not decode is kept as sent. Sizes never depend on it.
    let decode =
        |t: &str| if encoded { url_decode(t).unwrap_or_else(|_| t.to_owned()) } else { t.to_owned() };
    let mut page = Page::default();
    for contents in children(root, "Contents") {
        let key = child_text(contents, "Key").ok_or("a <Contents> has no <Key>")?;
        let size = child_text(contents, "Size").ok_or_else(|| format!("object {key:?} has no <Size>"))?;
        let size =
            size.trim().parse::<u64>().map_err(|_| format!("object {key:?} has a bad <Size> {size:?}"))?;
        page.objects.push((decode(key), size));
    }
    for common in children(root, "CommonPrefixes") {
        let prefix = child_text(common, "Prefix").ok_or("a <CommonPrefixes> has no <Prefix>")?;
        page.common_prefixes.push(decode(prefix));
    }
    let truncated = match child_text(root, "IsTruncated").map(str::trim) {
        Some("true") => true,
        Some("false") | None => false,
        Some(other) => return Err(format!("<IsTruncated> is {other:?}")),
    };
    if truncated {
        let token = child_text(root, "NextContinuationToken")
            .filter(|t| !t.is_empty())
            .ok_or("the listing is truncated but has no <NextContinuationToken>")?;
        page.next_continuation_token = Some(token.to_owned());
    }
    Ok(page)
}

/// Reads an S3 `<Error>` body; `None` when the body is not one.
pub fn parse_error(body: &[u8]) -> Option<S3Error> {
    let text = std::str::from_utf8(body).ok()?;
    let doc = Document::parse(text).ok()?;
    let root = doc.root_element();
    if root.tag_name().name() != "Error" {
        return None;
    }
    Some(S3Error {
        code: child_text(root, "Code").unwrap_or("").trim().to_owned(),
        message: child_text(root, "Message").unwrap_or("").trim().to_owned(),
    })
}
