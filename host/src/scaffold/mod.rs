//! `meterd plugins new NAME`: a Rust plugin crate to start from — a working
//! signed-webhook adapter on the SDK, its unit tests, and conformance cases
//! that `meterd plugins test` runs against the built component — so a new
//! provider starts from something that passes, not from a blank file.
//!
//! Inside meterd's own workspace the crate becomes a member (the plugin
//! build then picks it up); anywhere else it is a workspace of its own with
//! a path dependency on the SDK.

use std::path::{Component, Path, PathBuf};

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

const CARGO_TEMPLATE: &str = include_str!("template/Cargo.toml.in");
const LIB_TEMPLATE: &str = include_str!("template/lib.rs.in");
/// The secret the scaffolded conformance cases are signed with.
pub const CASES_SECRET: &str = "scaffold-test-secret";

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "plugin name {0:?} must be 1-40 characters of a-z, 0-9 and '-', starting with a letter (it is the ingest route and the file name)"
    )]
    Name(String),
    #[error("{0} already exists; choose another name or directory")]
    Exists(PathBuf),
    #[error(
        "cannot find meterd's plugin SDK (plugins/sdk/Cargo.toml) above {0}; pass --sdk <path to plugins/sdk>"
    )]
    NoSdk(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What [`create`] wrote.
#[derive(Debug)]
pub struct Scaffold {
    /// The new crate's directory.
    pub dir: PathBuf,
    /// The cargo package: `meterd-plugin-<name>`.
    pub package: String,
    /// The workspace manifest the crate was added to as a member, if any.
    pub joined_workspace: Option<PathBuf>,
}

/// Whether `name` can name a plugin (route, file stem, crate suffix).
pub fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
}

/// Writes the crate `<parent>/<name>`. `sdk` is meterd's `plugins/sdk`; by
/// default the one above `parent`.
pub fn create(name: &str, parent: &Path, sdk: Option<&Path>) -> Result<Scaffold, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::Name(name.to_owned()));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ScaffoldError::Io { path, source }
    };
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let parent = parent.canonicalize().map_err(io(parent))?;
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let sdk = match sdk {
        Some(path) => path.canonicalize().map_err(io(path))?,
        None => find_sdk(&parent).ok_or_else(|| ScaffoldError::NoSdk(parent.clone()))?,
    };
    // meterd's workspace root: the SDK lives at <root>/plugins/sdk.
    let meterd_root = sdk.parent().and_then(Path::parent).map(Path::to_owned);
    let inside_meterd = meterd_root.as_deref().is_some_and(|root| dir.starts_with(root));
    let header = format!("x-{name}-signature");
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{header}}", &header)
            .replace("{{sdk}}", &relative(&dir, &sdk).to_string_lossy())
    };
    let mut cargo = fill(CARGO_TEMPLATE);
    if !inside_meterd {
        // meterd's release profile: a metering plugin stops rather than
        // wraps, and the same profile lets meterd-plugin-build reuse its
        // wasm standard library for this crate.
        cargo.push_str(
            "\n# A workspace of its own (outside meterd's), with meterd's release profile.\n[workspace]\n\n[profile.release]\noverflow-checks = true\n",
        );
    }
    let mut files = vec![(dir.join("Cargo.toml"), cargo), (dir.join("src/lib.rs"), fill(LIB_TEMPLATE))];
    for (case, request, expected) in conformance_cases(name, &header) {
        files.push((dir.join(format!("conformance/{case}.request.json")), pretty(&request)));
        files.push((dir.join(format!("conformance/{case}.expected.json")), pretty(&expected)));
    }
    for (path, text) in &files {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(io(folder))?;
        }
        std::fs::write(path, text).map_err(io(path))?;
    }
    let joined_workspace = match meterd_root.filter(|_| inside_meterd) {
        Some(root) => join_workspace(&root.join("Cargo.toml"), &relative(&root, &dir))?,
        None => None,
    };
    Ok(Scaffold { dir, package: format!("meterd-plugin-{name}"), joined_workspace })
}

/// The first `plugins/sdk` above `from` (meterd's checkout).
fn find_sdk(from: &Path) -> Option<PathBuf> {
    from.ancestors().map(|a| a.join("plugins/sdk")).find(|sdk| sdk.join("Cargo.toml").is_file())
}

/// `to` relative to `from` (both absolute and canonical).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for part in &to[common..] {
        out.push(part);
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

/// Adds `member` to the `members = [...]` list of the workspace manifest
/// `manifest`. Returns the manifest when it changed it.
fn join_workspace(manifest: &Path, member: &Path) -> Result<Option<PathBuf>, ScaffoldError> {
    let io = |source| ScaffoldError::Io { path: manifest.to_owned(), source };
    let text = std::fs::read_to_string(manifest).map_err(io)?;
    let member = member.to_string_lossy().replace('\\', "/");
    let Some(start) = text.find("members = [") else { return Ok(None) };
    let Some(end) = text[start..].find(']').map(|i| start + i) else { return Ok(None) };
    if text[start..end].contains(&format!("\"{member}\"")) {
        return Ok(None);
    }
    let list = text[start..end].trim_end();
    let separator = if list.ends_with('[') || list.ends_with(',') { "" } else { ", " };
    let updated = format!("{list}{separator}\"{member}\"{}", &text[end..]);
    std::fs::write(manifest, format!("{}{updated}", &text[..start])).map_err(io)?;
    Ok(Some(manifest.to_owned()))
}

fn pretty(value: &serde_json::Value) -> String {
    // A `Value` always serializes.
    serde_json::to_string_pretty(value).map(|s| s + "\n").unwrap_or_default()
}

/// HMAC-SHA256 of `body` as the scaffold's header carries it.
fn signature(secret: &str, body: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// (case, request, expected) for the scaffolded adapter, in the format of
/// tests/conformance/README.md.
fn conformance_cases(name: &str, header: &str) -> Vec<(&'static str, serde_json::Value, serde_json::Value)> {
    let config = json!({ "signature_secret": CASES_SECRET });
    let body = r#"{"id":"evt-1","org":"acme","subject":"sbx-1","metric":"sandbox_cpu_core_seconds","quantity":"1.50","at":"2025-08-06T20:59:36.250Z"}"#;
    let bad_quantity = r#"{"id":"evt-2","org":"acme","subject":"sbx-1","metric":"sandbox_cpu_core_seconds","quantity":"1.5.0","at":"2025-08-06T20:59:36Z"}"#;
    let number_quantity = r#"{"id":"evt-3","org":"acme","subject":"sbx-1","metric":"sandbox_cpu_core_seconds","quantity":1.5,"at":"2025-08-06T20:59:36Z"}"#;
    vec![
        (
            "signed",
            json!({ "headers": { header: signature(CASES_SECRET, body) }, "body": body, "config": config }),
            json!({ "event_id": "evt-1", "records": [{
                "event_id": "evt-1", "org_id": "acme", "subject": "sbx-1",
                "metric": "sandbox_cpu_core_seconds", "kind": "delta", "quantity": "1.5",
                "at": "2025-08-06T20:59:36.250Z", "window_start": null, "attributes": {}
            }] }),
        ),
        (
            "unsigned",
            json!({ "body": body, "config": config }),
            json!({ "error": { "kind": "unauthorized", "message_contains": format!("missing {header} header") } }),
        ),
        (
            "wrong-secret",
            json!({ "headers": { header: signature("another-secret", body) }, "body": body, "config": config }),
            json!({ "error": { "kind": "unauthorized", "message_contains": "does not match the body" } }),
        ),
        (
            "no-secret-configured",
            json!({ "headers": { header: signature(CASES_SECRET, body) }, "body": body, "config": {} }),
            json!({ "error": { "kind": "config", "message_contains": format!("[plugins.{name}]") } }),
        ),
        (
            "quantity-as-a-json-number",
            json!({ "headers": { header: signature(CASES_SECRET, number_quantity) }, "body": number_quantity, "config": config }),
            json!({ "error": { "kind": "malformed", "message_contains": "at `quantity`" } }),
        ),
        (
            "quantity-the-host-refuses",
            json!({ "headers": { header: signature(CASES_SECRET, bad_quantity) }, "body": bad_quantity, "config": config }),
            json!({ "error": { "kind": "invalid_output" } }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_routes_and_file_stems() {
        for good in ["acme", "acme-cloud", "s3x", "a1-b2"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Acme", "1acme", "acme_cloud", "acme-", "a/b", &"a".repeat(41)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn relative_paths_walk_up_then_down() {
        assert_eq!(relative(Path::new("/r/plugins/x"), Path::new("/r/plugins/sdk")), Path::new("../sdk"));
        assert_eq!(
            relative(Path::new("/tmp/a/x"), Path::new("/r/plugins/sdk")),
            Path::new("../../../r/plugins/sdk")
        );
        assert_eq!(relative(Path::new("/r"), Path::new("/r/plugins/x")), Path::new("plugins/x"));
    }

    fn fake_meterd(root: &Path) {
        std::fs::create_dir_all(root.join("plugins/sdk")).unwrap();
        std::fs::write(root.join("plugins/sdk/Cargo.toml"), "[package]\nname = \"meterd-plugin-sdk\"\n")
            .unwrap();
        std::fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nresolver = \"3\"\nmembers = [\"host\", \"plugins/sdk\"]\n\n[workspace.package]\n",
        )
        .unwrap();
    }

    #[test]
    fn inside_meterd_the_crate_joins_the_workspace_once() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().canonicalize().unwrap();
        fake_meterd(&root);
        let made = create("acme-cloud", &root.join("plugins"), None).unwrap();
        assert_eq!(made.dir, root.join("plugins/acme-cloud"));
        assert_eq!(made.joined_workspace.as_deref(), Some(root.join("Cargo.toml").as_path()));
        let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(
            workspace.contains("members = [\"host\", \"plugins/sdk\", \"plugins/acme-cloud\"]"),
            "{workspace}"
        );
        let cargo = std::fs::read_to_string(made.dir.join("Cargo.toml")).unwrap();
        assert!(
            cargo.contains("meterd-plugin-sdk = { path = \"../sdk\", features = [\"json\"] }"),
            "{cargo}"
        );
        assert!(cargo.contains("plugin = \"acme-cloud\""));
        assert!(!cargo.contains("[workspace]"));
        let lib = std::fs::read_to_string(made.dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("x-acme-cloud-signature") && !lib.contains("{{"), "placeholders left");
        assert!(matches!(create("acme-cloud", &root.join("plugins"), None), Err(ScaffoldError::Exists(_))));
    }

    #[test]
    fn elsewhere_the_crate_is_its_own_workspace_and_needs_the_sdk() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().canonicalize().unwrap();
        fake_meterd(&root.join("meterd"));
        let elsewhere = root.join("work");
        assert!(matches!(create("acme", &elsewhere, None), Err(ScaffoldError::NoSdk(_))));
        let made = create("acme", &elsewhere, Some(&root.join("meterd/plugins/sdk"))).unwrap();
        assert!(made.joined_workspace.is_none());
        let cargo = std::fs::read_to_string(made.dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("path = \"../../meterd/plugins/sdk\""), "{cargo}");
        assert!(cargo.contains("\n[workspace]\n"));
    }

    #[test]
    fn the_cases_are_signed_with_the_case_secret() {
        let cases = conformance_cases("acme", "x-acme-signature");
        let (_, request, _) = &cases[0];
        let body = request["body"].as_str().unwrap();
        assert_eq!(request["headers"]["x-acme-signature"], signature(CASES_SECRET, body));
        // RFC 4231 case 2, so the signing itself is known right.
        assert_eq!(
            signature("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
