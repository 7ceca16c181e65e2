//! Reading a JSON body as one object (feature `json`).

use serde::Deserialize;

/// Reads `body` as one JSON object of type `T`, with nothing after it but
/// whitespace. An error starts with `what` and says where the body went
/// wrong (for example "at `event_data.execution.vcpu_count`"). serde would
/// also read a struct from an array of its fields in order (`[]` as all
/// defaults): an array is refused.
///
/// A body that reads is read once, without tracking paths: the tracking
/// made an E2B event's normalization about a third slower (BENCHMARKS.md,
/// `normalize`). Only a refused body is read again, to say where.
pub fn read_object<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, String> {
    if body.iter().find(|b| !b" \t\r\n".contains(b)) == Some(&b'[') {
        return Err(format!("{what}: a JSON array, not an object"));
    }
    serde_json::from_slice(body).map_err(|_| explain_refusal::<T>(body, what))
}

/// Why serde_json refused `body` as a `T`: the path of the first bad
/// field, or what follows the object.
fn explain_refusal<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> String {
    let mut json = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut json) {
        Err(e) => {
            let at = match e.path().to_string() {
                path if path == "." => String::new(),
                path => format!(" at `{path}`"),
            };
            format!("{what}{at}: {}", e.inner())
        }
        Ok(_) => match json.end() {
            Err(e) => format!("{what}: {e} after the JSON value"),
            // Both reads are serde_json's, so they agree; said plainly anyway.
            Ok(()) => format!("{what}: refused by the JSON reader"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        id: String,
        inner: Inner,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        count: u64,
    }

    #[test]
    fn a_well_formed_object_reads_and_anything_else_says_where_it_went_wrong() {
        let read = |body: &str| read_object::<Outer>(body.as_bytes(), "not an outer");
        assert_eq!(
            read(r#" {"id": "a", "inner": {"count": 2}} "#),
            Ok(Outer { id: "a".to_owned(), inner: Inner { count: 2 } })
        );
        let cases = [
            (r#"{"id": "a", "inner": {"count": -1}}"#, "not an outer at `inner.count`: invalid value"),
            (r#"{"id": "a"}"#, "not an outer: missing field `inner`"),
            (r#"{"id": "a", "inner": {"count": 2}} {}"#, "not an outer: trailing characters"),
            (r#"["a", {"count": 2}]"#, "not an outer: a JSON array, not an object"),
            (r#"{"id": 5, "inner": {"count": 2}}"#, "not an outer at `id`: invalid type: integer `5`"),
        ];
        for (body, start) in cases {
            let error = read(body).expect_err(body);
            assert!(error.starts_with(start), "{body}: {error}");
        }
        let trailing = read(r#"{"id": "a", "inner": {"count": 2}} {}"#).expect_err("trailing");
        assert!(trailing.ends_with("after the JSON value"), "{trailing}");
    }
}
