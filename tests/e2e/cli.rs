//! The command line for people, against the real binary: `meterd plugins
//! test` (the conformance kit, with the E2B fixtures of tests/conformance)
//! and `meterd usage` (the API's numbers, read from a gateway's database).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Output;

use meterd::api::usage::Usage;
use support::{Body, Gateway, Options, component, e2b_event, meterd_command};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn meterd(args: &[&str], dir: &Path) -> Output {
    meterd_command().args(args).current_dir(dir).env("METERD_LOG", "error").output().expect("running meterd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory with `plugins/e2b.wasm` and a `meterd.toml` naming it.
fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    std::fs::copy(component("e2b"), plugins.join("e2b.wasm")).expect("copying the component");
    std::fs::write(dir.path().join("meterd.toml"), format!("plugins_dir = \"{}\"\n", plugins.display()))
        .expect("writing the config");
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creating a copy");
    for entry in std::fs::read_dir(from).expect("listing fixtures") {
        let path = entry.expect("a fixture").path();
        std::fs::copy(&path, to.join(path.file_name().expect("a file name"))).expect("copying a fixture");
    }
}

#[test]
fn the_e2b_plugin_passes_its_conformance_fixtures_by_name_and_by_path() {
    let dir = plugin_dir();
    let fixtures = repo_path("tests/conformance/e2b");
    let fixtures = fixtures.to_str().expect("a UTF-8 path");
    let plugin_path = dir.path().join("plugins/e2b.wasm");
    for plugin in ["e2b", plugin_path.to_str().expect("a UTF-8 path")] {
        let out = meterd(&["plugins", "test", plugin, "--fixtures", fixtures], dir.path());
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{plugin}: {stdout}{}", text(&out.stderr));
        for case in
            ["killed-with-execution", "killed-wrong-secret", "truncated-json", "created-org-from-team"]
        {
            assert!(stdout.lines().any(|l| l == format!("ok {case}")), "{case} in {stdout}");
        }
        assert!(!stdout.contains("FAIL"), "{stdout}");
        assert!(stdout.ends_with("e2b: 9 cases, 9 ok, 0 failed\n"), "{stdout}");
    }
}

/// The files in `dir` and their modification times.
fn files_with_mtimes(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("listing the cache")
        .map(|e| {
            let path = e.expect("an entry").path();
            let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).expect("a modification time");
            (path, mtime)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_kit_leaves_nothing_behind_unless_given_a_cache_dir_which_the_next_run_reuses() {
    let dir = plugin_dir();
    let fixtures = repo_path("tests/conformance/e2b");
    let fixtures = fixtures.to_str().expect("a UTF-8 path");
    let run = |extra: &[&str]| {
        let out = meterd(&[&["plugins", "test", "e2b", "--fixtures", fixtures], extra].concat(), dir.path());
        assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
        assert!(text(&out.stdout).ends_with("e2b: 9 cases, 9 ok, 0 failed\n"), "{}", text(&out.stdout));
    };
    let before = files_with_mtimes(dir.path());
    run(&[]);
    assert_eq!(files_with_mtimes(dir.path()), before, "no cache, no file, without --cache-dir");

    let cache = dir.path().join("compiled");
    run(&["--cache-dir", cache.to_str().expect("a UTF-8 path")]);
    let compiled = files_with_mtimes(&cache);
    assert_eq!(compiled.len(), 1, "one compiled component: {compiled:?}");
    assert!(compiled[0].0.extension().is_some_and(|e| e == "cwasm"), "{compiled:?}");
    // The second run loads it: a compile would have replaced the file.
    run(&["--cache-dir", cache.to_str().expect("a UTF-8 path")]);
    assert_eq!(files_with_mtimes(&cache), compiled, "the artifact was reused, not rewritten");
}

#[test]
fn a_changed_expected_quantity_fails_with_a_diff_naming_it() {
    let dir = plugin_dir();
    // The same layout as the repository, so `body_file` paths still resolve.
    let copy = dir.path().join("tests");
    copy_dir(&repo_path("tests/fixtures/e2b"), &copy.join("fixtures/e2b"));
    copy_dir(&repo_path("tests/conformance/e2b"), &copy.join("conformance/e2b"));
    let expected = copy.join("conformance/e2b/killed-with-execution.expected.json");
    // A fixture file edited in place, not an API answer: read and written
    // as untyped JSON so nothing else in it changes.
    let mut case: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&expected).expect("reading")).expect("JSON");
    assert_eq!(case["records"][0]["quantity"], "144.246");
    case["records"][0]["quantity"] = "144.247".into();
    std::fs::write(&expected, format!("{case:#}")).expect("writing");

    let fixtures = copy.join("conformance/e2b");
    let out =
        meterd(&["plugins", "test", "e2b", "--fixtures", fixtures.to_str().expect("UTF-8")], dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("FAIL killed-with-execution\n--- expected"), "{stdout}");
    let diff: Vec<&str> = stdout.lines().filter(|l| l.starts_with("- ") || l.starts_with("+ ")).collect();
    assert_eq!(
        diff,
        ["-       \"quantity\": \"144.247\",", "+       \"quantity\": \"144.246\","],
        "only the changed quantity differs:\n{stdout}"
    );
    assert!(stdout.lines().any(|l| l == "ok killed-urlsafe-signature"), "{stdout}");
    assert!(stdout.ends_with("e2b: 9 cases, 8 ok, 1 failed\n"), "{stdout}");
    assert_eq!(stderr.trim(), "meterd: error: 1 of 9 cases failed");
}

#[test]
fn unusable_fixtures_or_plugins_exit_2_with_one_clear_line() {
    let dir = plugin_dir();
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    let good = repo_path("tests/conformance/e2b");
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm not really").expect("writing");
    // (fixture files in `bad`, plugin, fixture dir, words the line must hold)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a Path, &'a str);
    let cases: [Case; 6] = [
        (&[], "e2b", &dir.path().join("missing"), "cannot read the fixture directory"),
        (&[], "e2b", &bad, "holds no `<case>.request.json` files"),
        (&[("a.request.json", "{}")], "e2b", &bad, "a.request.json has no a.expected.json beside it"),
        (
            &[("a.expected.json", "{\"records\": [")],
            "e2b",
            &bad,
            "a.expected.json: `records`: EOF while parsing a list",
        ),
        (&[], broken.to_str().expect("UTF-8"), &good, "broken.wasm: not a valid WebAssembly component"),
        (&[], "nope", &good, "nope.wasm: cannot read"),
    ];
    for (files, plugin, fixtures, expected) in cases {
        for (name, content) in files {
            std::fs::write(bad.join(name), content).expect("writing a fixture");
        }
        let out =
            meterd(&["plugins", "test", plugin, "--fixtures", fixtures.to_str().expect("UTF-8")], dir.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{expected}: {stderr}{}", text(&out.stdout));
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("meterd: error: ") && stderr.contains(expected),
            "{stderr:?} / {expected:?}"
        );
        assert!(out.stdout.is_empty(), "no verdicts when the kit cannot run");
    }
}

const AUGUST: [&str; 4] = ["--from", "2025-08-01T00:00:00Z", "--to", "2025-09-01T00:00:00Z"];

/// The HTTP API's answer for org-a over August.
async fn api(gw: &Gateway, meter: &str, extra: &str) -> Usage {
    let query = format!(
        "/v1/orgs/org-a/usage?meter={meter}&from=2025-08-01T00:00:00Z&to=2025-09-01T00:00:00Z{extra}"
    );
    let (status, body) = gw.get(&query).await;
    assert_eq!(status, 200, "{body}");
    body.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_shows_the_apis_numbers_from_the_database() {
    let gw = Gateway::start(Options::default());
    let events = [
        e2b_event("a1", "created", "2025-08-10T10:00:00Z", "sbx-1", "org-a", None),
        e2b_event("a2", "killed", "2025-08-10T11:00:00Z", "sbx-1", "org-a", Some((2, 512, 3_600_000))),
        e2b_event("a3", "created", "2025-08-12T00:00:00Z", "sbx-2", "org-a", None),
        e2b_event("a4", "killed", "2025-08-12T00:00:07Z", "sbx-2", "org-a", Some((8, 3_000, 7_001))),
        e2b_event("b1", "killed", "2025-08-11T00:00:07Z", "sbx-3", "org-b", Some((1, 1, 7))),
    ];
    for body in &events {
        let (status, receipt) = gw.e2b(body).await;
        assert_eq!(status, 200, "{receipt}");
    }
    let config = gw.config_path();
    let config = config.to_str().expect("UTF-8");
    let usage = |args: &[&str]| {
        let mut all = vec!["--config", config, "usage"];
        all.extend_from_slice(args);
        meterd(&all, gw.dir.path())
    };

    // The table: every meter's exact total.
    let out = usage(&[&["--org", "org-a"][..], &AUGUST].concat());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["METER", "UNIT", "FROM", "TO", "TOTAL"]);
    assert_eq!(rows.len(), 11, "a header and the ten built-in meters:\n{stdout}");
    let total = |meter: &str| {
        let row = rows.iter().find(|r| r[0] == meter).unwrap_or_else(|| panic!("no {meter} row in {stdout}"));
        assert_eq!(row[2..4], ["2025-08-01T00:00:00Z", "2025-09-01T00:00:00Z"]);
        row[4]
    };
    // 2 × 3600 + 8 × 7.001; 0.5 × 3600 + (3000/1024) × 7.001; 3600 + 7 sandbox-seconds.
    assert_eq!(total("sandbox_cpu_core_seconds"), "7256.008");
    assert_eq!(total("sandbox_ram_gibi_seconds"), "1820.5107421875");
    assert_eq!(total("sandbox_active_seconds"), "3607");
    assert_eq!(total("sandbox_active_max"), "1");
    assert_eq!(total("storage_bytes"), "0");

    // --json is the API's answer (exactly its JSON: `Body::json` checks
    // that the output holds nothing a `Usage` does not), for one meter and
    // for all of them.
    let json = |args: &[&str]| -> Body {
        let out = usage(&[&["--org", "org-a", "--json"][..], &AUGUST, args].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        Body(text(&out.stdout))
    };
    assert_eq!(
        json(&["--meter", "sandbox_cpu_core_seconds"]).json::<Usage>(),
        api(&gw, "sandbox_cpu_core_seconds", "").await
    );
    let all: Vec<Usage> = json(&[]).json();
    assert_eq!(all.len(), 10);
    for answer in &all {
        assert_eq!(*answer, api(&gw, &answer.meter, "").await, "{}", answer.meter);
    }
    assert_eq!(
        json(&["--meter", "sandbox_ram_gibi_seconds", "--window", "day"]).json::<Usage>(),
        api(&gw, "sandbox_ram_gibi_seconds", "&window=day").await
    );

    // --window day: one row per day of August under the total.
    let out = usage(
        &[&["--org", "org-a", "--meter", "sandbox_cpu_core_seconds", "--window", "day"][..], &AUGUST]
            .concat(),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let days: Vec<Vec<&str>> =
        stdout.lines().filter(|l| l.starts_with("  day ")).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(days.len(), 31, "{stdout}");
    assert_eq!(days[0], ["day", "2025-08-01T00:00:00Z", "2025-08-02T00:00:00Z", "0"]);
    assert_eq!(days[9], ["day", "2025-08-10T00:00:00Z", "2025-08-11T00:00:00Z", "7200"]);
    assert_eq!(days[11], ["day", "2025-08-12T00:00:00Z", "2025-08-13T00:00:00Z", "56.008"]);
    assert!(stdout.lines().nth(1).is_some_and(|l| l.starts_with("sandbox_cpu_core_seconds ")), "{stdout}");

    // Another org's numbers are its own.
    let out = usage(&[&["--org", "org-b", "--meter", "sandbox_cpu_core_seconds"][..], &AUGUST].concat());
    assert!(text(&out.stdout).lines().any(|l| l.ends_with(" 0.007")), "{}", text(&out.stdout));

    // Bad input: a non-zero exit and one line saying what is wrong.
    let cases: [(&[&str], &str); 6] = [
        (
            &["--org", "org-a", "--meter", "nope"],
            "unknown meter \"nope\"; known meters: sandbox_cpu_core_seconds",
        ),
        (&["--org", "org-a", "--from", "yesterday"], "`from` \"yesterday\" is not an RFC 3339 time"),
        (
            &["--org", "org-a", "--to", "2025-08-32T00:00:00Z"],
            "`to` \"2025-08-32T00:00:00Z\" is not an RFC 3339",
        ),
        (&["--org", "org-a", "--from", "2025-09-01T00:00:00Z", "--to", "2025-08-01T00:00:00Z"], "bad range"),
        (&["--org", "org-a", "--window", "week"], "`window` \"week\" must be hour, day or month"),
        (&["--org", " "], "--org \" \": org id must be 1-256 bytes and not blank"),
    ];
    for (args, expected) in cases {
        let out = usage(args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.starts_with("meterd: error: ") && stderr.contains(expected), "{args:?}: {stderr:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
