//! Reading a fixture directory: `<case>.request.json` beside
//! `<case>.expected.json`, checked strictly (unknown keys, a missing partner
//! or an unreadable body file are errors), because a typo in a fixture must
//! not turn into a case that passes for the wrong reason. The format is
//! documented for plugin authors in tests/conformance/README.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::plugin::{InboundRequest, PluginSettings};

pub const REQUEST_SUFFIX: &str = ".request.json";
pub const EXPECTED_SUFFIX: &str = ".expected.json";

/// One case: the webhook to send, the plugin's config section for it, and
/// what the host must make of the answer.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub request: InboundRequest,
    pub config: PluginSettings,
    pub expected: Expected,
}

/// What a case must produce.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// Accepted with exactly these records, in this order (a record's
    /// position is part of its dedup key). The delivery's event id is
    /// compared only when given.
    Records { event_id: Option<String>, records: Vec<serde_json::Value> },
    /// Refused: the error kind, and a part of its message when given.
    Error { kind: String, message_contains: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read the fixture directory {dir}: {error}")]
    Dir { dir: PathBuf, error: std::io::Error },
    #[error("{dir} holds no `<case>{REQUEST_SUFFIX}` files")]
    NoCases { dir: PathBuf },
    #[error("{file} has no {partner} beside it")]
    Unpaired { file: PathBuf, partner: String },
    #[error("cannot read {file}: {error}")]
    Read { file: PathBuf, error: std::io::Error },
    #[error("{file}: {problem}")]
    Malformed { file: PathBuf, problem: String },
}

/// `<case>.request.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFile {
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_path")]
    path: String,
    query: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    body_file: Option<PathBuf>,
    #[serde(default)]
    config: PluginSettings,
}

fn default_method() -> String {
    "POST".to_owned()
}

fn default_path() -> String {
    "/".to_owned()
}

/// `<case>.expected.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedFile {
    event_id: Option<String>,
    records: Option<Vec<serde_json::Value>>,
    error: Option<ExpectedErrorFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedErrorFile {
    kind: String,
    message_contains: Option<String>,
}

/// Every case in `dir`, sorted by name.
pub fn read_dir(dir: &Path) -> Result<Vec<Case>, FixtureError> {
    let dir_error = |error| FixtureError::Dir { dir: dir.to_owned(), error };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_error)? {
        let file_name = entry.map_err(dir_error)?.file_name();
        let Some(file_name) = file_name.to_str() else { continue };
        if let Some(case) = file_name.strip_suffix(REQUEST_SUFFIX) {
            names.push(case.to_owned());
        } else if let Some(case) = file_name.strip_suffix(EXPECTED_SUFFIX)
            && !dir.join(format!("{case}{REQUEST_SUFFIX}")).is_file()
        {
            return Err(FixtureError::Unpaired {
                file: dir.join(file_name),
                partner: format!("{case}{REQUEST_SUFFIX}"),
            });
        }
    }
    if names.is_empty() {
        return Err(FixtureError::NoCases { dir: dir.to_owned() });
    }
    names.sort();
    names.into_iter().map(|name| read_case(dir, name)).collect()
}

fn read_case(dir: &Path, name: String) -> Result<Case, FixtureError> {
    let request_path = dir.join(format!("{name}{REQUEST_SUFFIX}"));
    let expected_path = dir.join(format!("{name}{EXPECTED_SUFFIX}"));
    if !expected_path.is_file() {
        return Err(FixtureError::Unpaired {
            file: request_path,
            partner: format!("{name}{EXPECTED_SUFFIX}"),
        });
    }
    let file: RequestFile = parse(&request_path)?;
    let malformed =
        |problem: &str| FixtureError::Malformed { file: request_path.clone(), problem: problem.to_owned() };
    let body = match (file.body, file.body_file) {
        (Some(_), Some(_)) => return Err(malformed("give `body` or `body_file`, not both")),
        (Some(text), None) => text.into_bytes(),
        (None, Some(relative)) => {
            let body_path = dir.join(relative);
            std::fs::read(&body_path).map_err(|error| FixtureError::Malformed {
                file: request_path.clone(),
                problem: format!("cannot read body_file {}: {error}", body_path.display()),
            })?
        }
        (None, None) => Vec::new(),
    };
    if !file.path.starts_with('/') {
        return Err(malformed("`path` must start with '/' (it is the part below /v1/ingest/{plugin})"));
    }
    let request = InboundRequest {
        method: file.method,
        path: file.path,
        query: file.query,
        // As the HTTP layer hands them over: lower-case names.
        headers: file.headers.into_iter().map(|(name, value)| (name.to_ascii_lowercase(), value)).collect(),
        body,
    };
    let expected = expected(&expected_path, parse(&expected_path)?)?;
    Ok(Case { name, request, config: file.config, expected })
}

fn expected(path: &Path, file: ExpectedFile) -> Result<Expected, FixtureError> {
    let malformed = |problem: String| FixtureError::Malformed { file: path.to_owned(), problem };
    match (file.records, file.error) {
        (Some(records), None) => {
            if let Some(i) = records.iter().position(|r| !r.is_object()) {
                return Err(malformed(format!("`records[{i}]` must be an object")));
            }
            Ok(Expected::Records { event_id: file.event_id, records })
        }
        (None, Some(error)) if file.event_id.is_none() => {
            if !super::ERROR_KINDS.contains(&error.kind.as_str()) {
                return Err(malformed(format!(
                    "`error.kind` {:?} is not one of {}",
                    error.kind,
                    super::ERROR_KINDS.join(", ")
                )));
            }
            Ok(Expected::Error { kind: error.kind, message_contains: error.message_contains })
        }
        (None, Some(_)) => Err(malformed("`event_id` goes with `records`, not with `error`".to_owned())),
        _ => Err(malformed("give exactly one of `records` (accepted) or `error` (refused)".to_owned())),
    }
}

/// Reads and deserializes one JSON file; the message names the key at fault.
fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FixtureError> {
    let text = std::fs::read(path).map_err(|error| FixtureError::Read { file: path.to_owned(), error })?;
    let mut json = serde_json::Deserializer::from_slice(&text);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let at = match e.path().to_string() {
            path if path == "." => String::new(),
            path => format!("`{path}`: "),
        };
        FixtureError::Malformed { file: path.to_owned(), problem: format!("{at}{}", e.inner()) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("writing a test fixture");
    }

    #[test]
    fn reads_requests_with_inline_and_file_bodies() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "body.bin", "raw bytes");
        write(
            dir.path(),
            "b.request.json",
            r#"{"headers":{"X-Sig":"s"},"body_file":"body.bin","config":{"secret":"k"}}"#,
        );
        write(dir.path(), "b.expected.json", r#"{"records":[],"event_id":"e"}"#);
        write(dir.path(), "a.request.json", r#"{"method":"PUT","path":"/x","query":"q=1","body":"{}"}"#);
        write(dir.path(), "a.expected.json", r#"{"error":{"kind":"malformed"}}"#);
        let cases = read_dir(dir.path()).expect("valid fixtures");
        assert_eq!(cases.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let (a, b) = (&cases[0], &cases[1]);
        assert_eq!((a.request.method.as_str(), a.request.path.as_str()), ("PUT", "/x"));
        assert_eq!(a.request.query.as_deref(), Some("q=1"));
        assert_eq!(a.expected, Expected::Error { kind: "malformed".into(), message_contains: None });
        assert_eq!(b.request.method, "POST");
        assert_eq!(b.request.path, "/");
        assert_eq!(b.request.headers, [("x-sig".to_owned(), "s".to_owned())]);
        assert_eq!(b.request.body, b"raw bytes");
        assert_eq!(b.config["secret"], "k");
        assert_eq!(b.expected, Expected::Records { event_id: Some("e".into()), records: vec![] });
    }

    #[test]
    fn refuses_bad_fixtures_naming_the_file_and_the_problem() {
        let cases: [(&[(&str, &str)], &str); 9] = [
            (&[], "holds no `<case>.request.json` files"),
            (&[("a.request.json", "{}")], "has no a.expected.json"),
            (&[("a.expected.json", r#"{"records":[]}"#)], "has no a.request.json"),
            (
                &[("a.request.json", "{\"body\": "), ("a.expected.json", "{}")],
                "a.request.json: `body`: EOF while parsing",
            ),
            (&[("a.request.json", r#"{"bdy":""}"#), ("a.expected.json", "{}")], "unknown field `bdy`"),
            (&[("a.request.json", r#"{"body":"","body_file":"x"}"#), ("a.expected.json", "{}")], "not both"),
            (
                &[("a.request.json", r#"{"body_file":"gone"}"#), ("a.expected.json", "{}")],
                "cannot read body_file",
            ),
            (&[("a.request.json", "{}"), ("a.expected.json", "{}")], "exactly one of `records`"),
            (
                &[("a.request.json", "{}"), ("a.expected.json", r#"{"error":{"kind":"nope"}}"#)],
                "is not one of unauthorized",
            ),
        ];
        for (files, expected) in cases {
            let dir = tempfile::tempdir().expect("temp dir");
            for (name, text) in files {
                write(dir.path(), name, text);
            }
            let error = read_dir(dir.path()).expect_err(expected).to_string();
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
        let error = read_dir(Path::new("/nonexistent/fixtures")).expect_err("no dir").to_string();
        assert!(error.contains("cannot read the fixture directory /nonexistent/fixtures"), "{error}");
    }
}
