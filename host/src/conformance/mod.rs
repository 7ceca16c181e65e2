//! The plugin conformance kit behind `meterd plugins test`: a plugin author
//! states, per case, a webhook and what the gateway must make of it (exact
//! records, or a refusal of a given kind), and the kit runs the component
//! the way ingest does — the same [`Runtime`], the same checks of the
//! answer (`record::validate_all`) — but stops before the store, so no
//! database is needed. Fixture format: tests/conformance/README.md.

pub mod diff;
pub mod fixtures;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::http::rfc3339;
use crate::ingest::IngestError;
use crate::plugin::{AdapterError, InboundRequest, PluginSettings};
use crate::record::{self, UsageRecord};
use crate::runtime::{CallError, Compiled, LoadedPlugin, Runtime, RuntimeSettings};
use fixtures::{Case, Expected, FixtureError};

/// The kinds of refusal a case may expect: the plugin's own errors, the
/// sandbox stopping it, and the host refusing its answer.
pub const ERROR_KINDS: [&str; 11] = [
    "unauthorized",
    "malformed",
    "unsupported",
    "config",
    "upstream",
    "internal",
    "timeout",
    "out_of_memory",
    "trap",
    "instantiate",
    "invalid_output",
];

/// Why the kit could not run at all (as opposed to a case failing).
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error(transparent)]
    Fixture(#[from] FixtureError),
    #[error("plugin {file}: {problem}")]
    Plugin { file: PathBuf, problem: String },
    #[error("{0:?} is neither a .wasm file nor a plugin name with plugins_dir configured")]
    NoPluginsDir(String),
}

/// The component `plugin` names: a path (it ends in `.wasm` or has a
/// directory part), else `<plugins_dir>/<plugin>.wasm`.
pub fn plugin_file(plugin: &str, plugins_dir: Option<&Path>) -> Result<PathBuf, KitError> {
    let as_path = Path::new(plugin);
    if plugin.ends_with(".wasm") || as_path.components().count() > 1 {
        return Ok(as_path.to_owned());
    }
    plugins_dir
        .map(|dir| dir.join(format!("{plugin}.wasm")))
        .ok_or_else(|| KitError::NoPluginsDir(plugin.to_owned()))
}

/// Compiles the component once, loads it once per distinct case config and
/// checks every case.
/// Blocking (compiles and runs wasm): call it off the async threads.
pub fn run(settings: RuntimeSettings, file: &Path, cases: &[Case]) -> Result<Report, KitError> {
    let unusable = |problem: String| KitError::Plugin { file: file.to_owned(), problem };
    let bytes = std::fs::read(file).map_err(|e| unusable(format!("cannot read: {e}")))?;
    let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
    let runtime = Runtime::new(settings).map_err(|e| unusable(e.to_string()))?;
    let compiled = runtime.compile(&bytes).map_err(|e| unusable(e.to_string()))?;
    let mut loaded: BTreeMap<&PluginSettings, LoadedPlugin> = BTreeMap::new();
    let mut results = Vec::with_capacity(cases.len());
    for case in cases {
        let plugin = match loaded.entry(&case.config) {
            Entry::Occupied(plugin) => plugin.into_mut(),
            Entry::Vacant(slot) => {
                slot.insert(load(&runtime, &compiled, &name, &case.config).map_err(|problem| {
                    unusable(format!("{problem} (with the config of case {})", case.name))
                })?)
            }
        };
        let diff = verdict(&case.expected, &answer(plugin, &case.request));
        results.push(CaseResult { name: case.name.clone(), diff });
    }
    Ok(Report { plugin: name, results })
}

/// What the gateway's loader checks: the component loads and links, its
/// name is its file's (the route), and it takes webhooks.
fn load(
    runtime: &Runtime,
    compiled: &Compiled,
    name: &str,
    config: &PluginSettings,
) -> Result<LoadedPlugin, String> {
    let plugin = runtime.load_compiled(compiled, config.clone()).map_err(|e| e.to_string())?;
    let info = plugin.info();
    if info.name != name {
        return Err(format!(
            "the component calls itself {:?} but the file is named {name:?}.wasm; the gateway would refuse it",
            info.name
        ));
    }
    if !info.push {
        return Err(format!("plugin {name} does not accept webhooks (it polls); the kit tests webhooks"));
    }
    Ok(plugin)
}

/// What the gateway made of one webhook, short of storing it.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Accepted { event_id: String, records: Vec<UsageRecord> },
    Refused { kind: &'static str, message: String },
}

/// The plugin call and the checks `Ingest` applies to its answer, in the
/// same order with the same limits.
fn answer(plugin: &LoadedPlugin, request: &InboundRequest) -> Answer {
    let outcome = match plugin.handle_webhook(request) {
        Ok(outcome) => outcome,
        Err(error) => return refusal(&error),
    };
    let invalid = |problem: String| Answer::Refused {
        kind: "invalid_output",
        message: IngestError::InvalidOutput { plugin: plugin.info().name.clone(), problem }.to_string(),
    };
    match record::validate_webhook(outcome) {
        Ok((event_id, records)) => Answer::Accepted { event_id, records },
        Err(problem) => invalid(problem),
    }
}

/// The kind of a failed call, and its message: the plugin's own text for
/// its errors (what the API answers), the host's description otherwise.
fn refusal(error: &CallError) -> Answer {
    let (kind, message) = match error {
        CallError::Adapter(adapter) => match adapter {
            AdapterError::Unauthorized(m) => ("unauthorized", m.clone()),
            AdapterError::Malformed(m) => ("malformed", m.clone()),
            AdapterError::Unsupported(m) => ("unsupported", m.clone()),
            AdapterError::Config(m) => ("config", m.clone()),
            AdapterError::Upstream(m) => ("upstream", m.clone()),
            AdapterError::Internal(m) => ("internal", m.clone()),
        },
        CallError::Timeout { .. } => ("timeout", error.to_string()),
        CallError::OutOfMemory { .. } => ("out_of_memory", error.to_string()),
        CallError::Trap { .. } => ("trap", error.to_string()),
        CallError::Instantiate { .. } => ("instantiate", error.to_string()),
        CallError::Quarantined { .. } => ("quarantined", error.to_string()),
    };
    Answer::Refused { kind, message }
}

/// A record as the kit shows it: quantities as exact decimal text, times in
/// RFC 3339 as the API prints them.
pub fn record_json(r: &UsageRecord) -> Value {
    json!({
        "event_id": r.event_id,
        "org_id": r.org_id,
        "subject": r.subject,
        "metric": r.metric,
        "kind": r.kind.as_str(),
        "quantity": meterd_units::format_quantity(r.quantity),
        "at": rfc3339(r.at_ms),
        "window_start": r.window_start_ms.map(rfc3339),
        "attributes": r.attributes,
    })
}

/// `None` if the answer is what the case expects, else the diff of the two
/// as pretty JSON. An expected refusal matches on its kind and, when given,
/// a part of the message; the answer is then shown with its whole message.
fn verdict(expected: &Expected, answer: &Answer) -> Option<String> {
    // The delivery's event id is compared when the case states it, and
    // shown when a refusal was expected (it says which event got through).
    let with_event_id = !matches!(expected, Expected::Records { event_id: None, .. });
    let got = answer_json(answer, with_event_id);
    let (want, passed) = match expected {
        Expected::Records { event_id, records } => {
            let mut want = json!({ "records": records });
            if let Some(id) = event_id {
                want["event_id"] = json!(id);
            }
            let passed = want == got;
            (want, passed)
        }
        Expected::Error { kind, message_contains } => {
            let mut want = json!({ "error": { "kind": kind } });
            if let Some(part) = message_contains {
                want["error"]["message_contains"] = json!(part);
            }
            let passed = matches!(answer, Answer::Refused { kind: got, message }
                if *got == kind.as_str() && message_contains.as_ref().is_none_or(|part| message.contains(part.as_str())));
            (want, passed)
        }
    };
    (!passed).then(|| diff::unified(&format!("{want:#}"), &format!("{got:#}")))
}

fn answer_json(answer: &Answer, with_event_id: bool) -> Value {
    match answer {
        Answer::Accepted { event_id, records } => {
            let mut got = json!({ "records": records.iter().map(record_json).collect::<Vec<_>>() });
            if with_event_id {
                got["event_id"] = json!(event_id);
            }
            got
        }
        Answer::Refused { kind, message } => json!({ "error": { "kind": kind, "message": message } }),
    }
}

/// One case's outcome: `diff` is `None` when it passed.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub diff: Option<String>,
}

/// Every case's outcome, printed as `ok CASE` / `FAIL CASE` + diff lines,
/// then a summary.
#[derive(Debug, Clone)]
pub struct Report {
    pub plugin: String,
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| r.diff.is_some()).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for result in &self.results {
            match &result.diff {
                None => writeln!(f, "ok {}", result.name)?,
                Some(diff) => {
                    writeln!(f, "FAIL {}", result.name)?;
                    writeln!(f, "--- expected ({}{})", result.name, fixtures::EXPECTED_SUFFIX)?;
                    writeln!(f, "+++ actual")?;
                    write!(f, "{diff}")?;
                }
            }
        }
        let failed = self.failed();
        let total = self.results.len();
        writeln!(f, "{}: {total} cases, {} ok, {failed} failed", self.plugin, total - failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Kind;

    fn record() -> UsageRecord {
        UsageRecord {
            event_id: "ev".into(),
            org_id: "acme".into(),
            subject: "sbx".into(),
            metric: "sandbox_cpu_core_seconds".into(),
            kind: Kind::Delta,
            quantity: rust_decimal::Decimal::new(1_442_460, 4),
            at_ms: 1_754_513_976_123,
            window_start_ms: Some(1_754_513_904_000),
            attributes: [("template_id".to_owned(), "t".to_owned())].into(),
        }
    }

    #[test]
    fn records_are_shown_with_exact_quantities_and_rfc3339_times() {
        assert_eq!(
            record_json(&record()),
            json!({
                "event_id": "ev", "org_id": "acme", "subject": "sbx", "metric": "sandbox_cpu_core_seconds",
                "kind": "delta", "quantity": "144.246", "at": "2025-08-06T20:59:36.123Z",
                "window_start": "2025-08-06T20:58:24Z", "attributes": { "template_id": "t" },
            })
        );
    }

    #[test]
    fn a_wrong_quantity_fails_with_its_lines_in_the_diff() {
        let mut shown = record_json(&record());
        let accepted = Answer::Accepted { event_id: "ev".into(), records: vec![record()] };
        let expected = Expected::Records { event_id: Some("ev".into()), records: vec![shown.clone()] };
        assert_eq!(verdict(&expected, &accepted), None);
        shown["quantity"] = json!("144.247");
        let expected = Expected::Records { event_id: None, records: vec![shown] };
        let diff = verdict(&expected, &accepted).expect("a failure");
        assert!(
            diff.contains("-       \"quantity\": \"144.247\",\n+       \"quantity\": \"144.246\",\n"),
            "{diff}"
        );
        assert_eq!(answer_json(&accepted, false).get("event_id"), None, "compared only when stated");
    }

    #[test]
    fn refusals_match_on_kind_and_part_of_the_message() {
        let refused =
            Answer::Refused { kind: "unauthorized", message: "e2b-signature does not match".into() };
        let expect = |kind: &str, part: Option<&str>| Expected::Error {
            kind: kind.to_owned(),
            message_contains: part.map(str::to_owned),
        };
        assert_eq!(verdict(&expect("unauthorized", None), &refused), None);
        assert_eq!(verdict(&expect("unauthorized", Some("does not match")), &refused), None);
        let diff = verdict(&expect("unauthorized", Some("missing")), &refused).expect("a failure");
        assert!(
            diff.contains("-     \"message_contains\": \"missing\"") && diff.contains("+     \"message\""),
            "{diff}"
        );
        let diff = verdict(&expect("malformed", None), &refused).expect("a failure");
        assert!(
            diff.contains("-     \"kind\": \"malformed\"")
                && diff.contains("+     \"kind\": \"unauthorized\"")
        );
        let accepted = Answer::Accepted { event_id: "ev".into(), records: vec![] };
        let diff = verdict(&expect("malformed", None), &accepted).expect("a failure");
        assert!(diff.contains("+   \"records\": []"), "{diff}");
    }

    #[test]
    fn call_errors_have_kinds_the_fixtures_may_name() {
        let errors = [
            CallError::Adapter(AdapterError::Unauthorized("u".into())),
            CallError::Adapter(AdapterError::Malformed("m".into())),
            CallError::Adapter(AdapterError::Unsupported("s".into())),
            CallError::Adapter(AdapterError::Config("c".into())),
            CallError::Adapter(AdapterError::Upstream("up".into())),
            CallError::Adapter(AdapterError::Internal("i".into())),
            CallError::Timeout { plugin: "p".into(), deadline_ms: 100 },
            CallError::OutOfMemory { plugin: "p".into(), limit_bytes: 1 },
            CallError::Trap { plugin: "p".into(), message: "unreachable".into() },
            CallError::Instantiate { plugin: "p".into(), message: "no slot".into() },
        ];
        for (error, kind) in errors.iter().zip(ERROR_KINDS) {
            let Answer::Refused { kind: got, message } = refusal(error) else { panic!("{error:?}") };
            assert_eq!(got, kind);
            assert!(!message.is_empty());
        }
        assert_eq!(refusal(&errors[0]), Answer::Refused { kind: "unauthorized", message: "u".into() });
    }

    #[test]
    fn plugins_are_named_by_path_or_by_name_in_the_plugins_dir() {
        let dir = Path::new("/srv/plugins");
        assert_eq!(plugin_file("e2b", Some(dir)).ok(), Some(dir.join("e2b.wasm")));
        assert_eq!(plugin_file("target/plugins/e2b.wasm", None).ok(), Some("target/plugins/e2b.wasm".into()));
        assert_eq!(plugin_file("e2b.wasm", Some(dir)).ok(), Some("e2b.wasm".into()));
        assert_eq!(plugin_file("./e2b", None).ok(), Some("./e2b".into()));
        assert!(matches!(plugin_file("e2b", None), Err(KitError::NoPluginsDir(_))));
    }
}
