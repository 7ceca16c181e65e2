//! Builds every plugin crate of the workspace to a WebAssembly component:
//! the `meterd-plugin-build` command, and a library the end-to-end tests
//! call so they always run against freshly built plugins.
//!
//! 1. Finds the plugin crates: packages with `[package.metadata.meterd]
//!    plugin = "<name>"`, and optionally `file = "<stem>"` (default: the
//!    plugin name) naming the component's file, so several crates may build
//!    the same plugin (e.g. test-only variants of `e2b`). Those under
//!    `tests/` are test-only plugins. Two crates that would write the same
//!    file are refused.
//!    Checks that the committed WIT bindings were generated from the WIT on
//!    disk ([`bindings`]).
//! 2. Picks a wasm toolchain: an installed rustup `wasm32-unknown-unknown`
//!    target if there is one; else Debian's `rustc-web`/`cargo-web` with the
//!    standard library's sources (`rust-web-src`) and `lld-22`, installed with
//!    apt-get when missing, and `-Zbuild-std`.
//! 3. Builds all plugins in one cargo call into `target/wasm`, so the
//!    standard library is compiled once and later builds are incremental.
//! 4. Turns each core module into a component (wit-component) and writes it
//!    to `target/plugins/<stem>.wasm` (test-only: `target/test-plugins/`),
//!    atomically and only when its bytes changed, so a watching gateway
//!    never sees a half-written or needlessly touched file.
//!
//! Plugins in other languages (Python, JavaScript) are built by
//! [`languages`], on request: `--languages`, or [`languages::language_component`].
//!
//! Usage: `cargo run --release -p meterd-plugin-build [-- --languages]`.

pub mod bindings;
mod inputs;
pub mod languages;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

const WASM_TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_PACKAGES: [&str; 4] = ["rustc-web", "cargo-web", "rust-web-src", "lld-22"];
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_STD_SOURCES: &str = "/usr/lib/rustlib/src/rust/library/Cargo.lock";
const DEBIAN_WASM_LINKER: &str = "/usr/bin/wasm-ld-22";

/// One built component.
#[derive(Debug, Clone)]
pub struct BuiltPlugin {
    /// The plugin's name (its route and config section).
    pub name: String,
    /// The stem of its component's file name: `file` in the crate's
    /// `[package.metadata.meterd]`, by default the plugin's name.
    pub file: String,
    /// Where its component was written.
    pub path: PathBuf,
    /// Only for tests (the crate lives under `tests/`).
    pub test_only: bool,
}

/// The component of plugin `name`, building every plugin the first time a
/// process asks (tests and benchmarks never run a stale component). A
/// test-only plugin of the same name (a rebuilt variant) is not this one:
/// see [`test_component`].
pub fn component(name: &str) -> Result<PathBuf> {
    find_built(name, false)
}

/// The test-only component whose file is `target/test-plugins/<file>.wasm`
/// (from a crate under `tests/`; `file` defaults to the plugin's name, so
/// `test_component("e2b")` is the variant that does not set it).
pub fn test_component(file: &str) -> Result<PathBuf> {
    let built = built()?;
    find_test(built, file)
        .map(|p| p.path.clone())
        .with_context(|| format!("no plugin with the file stem {file} was built"))
}

/// Every built plugin, building them the first time a process asks.
fn built() -> Result<&'static [BuiltPlugin]> {
    static BUILT: std::sync::OnceLock<Result<Vec<BuiltPlugin>, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_all().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn find_built(name: &str, test_only: bool) -> Result<PathBuf> {
    let built = built()?;
    find_named(built, name, test_only)
        .map(|p| p.path.clone())
        .with_context(|| format!("no plugin named {name} was built"))
}

/// The plugin `name`, preferring one whose `test_only` matches.
fn find_named<'a>(built: &'a [BuiltPlugin], name: &str, test_only: bool) -> Option<&'a BuiltPlugin> {
    built
        .iter()
        .find(|p| p.name == name && p.test_only == test_only)
        .or_else(|| built.iter().find(|p| p.name == name))
}

/// The test-only plugin with file stem `file`, else any plugin with it.
fn find_test<'a>(built: &'a [BuiltPlugin], file: &str) -> Option<&'a BuiltPlugin> {
    built.iter().find(|p| p.file == file && p.test_only).or_else(|| built.iter().find(|p| p.file == file))
}

/// Builds every plugin of the workspace and returns where each component is.
pub fn build_all() -> Result<Vec<BuiltPlugin>> {
    let workspace = workspace_root()?;
    let plugins = find_plugins(&workspace)?;
    if plugins.is_empty() {
        bail!("no plugin crates found (packages with [package.metadata.meterd] plugin = \"…\")");
    }
    bindings::check_current(&workspace, &bindings::BINDINGS)?;
    let toolchain = Toolchain::detect()?;
    eprintln!(
        "meterd-plugin-build: building {} with {}",
        plugins.iter().map(PluginCrate::describe).collect::<Vec<_>>().join(", "),
        toolchain.describe()
    );
    let wasm_target_dir = workspace.join("target").join("wasm");
    let packages: Vec<&str> = plugins.iter().map(|p| p.package.as_str()).collect();
    toolchain.build(&workspace, &wasm_target_dir, &packages, BuildOptions { locked: true, config: None })?;
    let mut built = Vec::with_capacity(plugins.len());
    for plugin in &plugins {
        let core = wasm_target_dir
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", plugin.package.replace('-', "_")));
        let out = workspace.join(plugin.output());
        let changed = componentize(&core, &out)?;
        eprintln!("meterd-plugin-build: {} {}", if changed { "wrote" } else { "unchanged" }, out.display());
        built.push(BuiltPlugin {
            name: plugin.plugin.clone(),
            file: plugin.file.clone(),
            path: out,
            test_only: plugin.test_only,
        });
    }
    Ok(built)
}

/// Builds one plugin crate outside this workspace (e.g. one `meterd plugins
/// new` made) with the same toolchain, and returns its component:
/// `target/lone-plugins/<plugin>.wasm` of this workspace. Its dependencies
/// are resolved from this workspace's Cargo.lock (copied in when the crate
/// has none), so it builds with the versions meterd's plugins use.
pub fn build_lone_crate(crate_dir: &Path) -> Result<PathBuf> {
    let workspace = workspace_root()?;
    let crate_dir =
        crate_dir.canonicalize().with_context(|| format!("{} does not exist", crate_dir.display()))?;
    let manifest = crate_dir.join("Cargo.toml");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
        .arg(&manifest)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata on {} failed: {}", manifest.display(), String::from_utf8_lossy(&output.stderr));
    }
    let metadata: Metadata = serde_json::from_slice(&output.stdout).context("reading cargo metadata")?;
    let plugins = plugin_crates(metadata.packages, &workspace.join("tests"))?;
    let [plugin] = plugins.as_slice() else {
        bail!("{} holds {} plugin crates; expected one", crate_dir.display(), plugins.len());
    };
    let lock = crate_dir.join("Cargo.lock");
    if !lock.exists() {
        std::fs::copy(workspace.join("Cargo.lock"), &lock)
            .with_context(|| format!("seeding {}", lock.display()))?;
    }
    bindings::check_current(&workspace, &bindings::BINDINGS)?;
    let toolchain = Toolchain::detect()?;
    // The workspace's own wasm target directory and release profile: its
    // standard library (built from source with Debian's toolchain) and
    // shared dependencies are reused, so this takes seconds after the
    // workspace's plugins, and the crate builds as it would inside.
    let target_dir = workspace.join("target").join("wasm");
    let manifest = workspace.join("Cargo.toml");
    let manifest =
        std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let profile = target_dir.join("workspace-release-profile.toml");
    std::fs::create_dir_all(&target_dir).with_context(|| format!("creating {}", target_dir.display()))?;
    std::fs::write(&profile, shared_release_profile(&manifest))
        .with_context(|| format!("writing {}", profile.display()))?;
    toolchain.build(
        &crate_dir,
        &target_dir,
        &[&plugin.package],
        BuildOptions { locked: false, config: Some(&profile) },
    )?;
    let core = target_dir
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{}.wasm", plugin.package.replace('-', "_")));
    let out = workspace.join("target").join("lone-plugins").join(format!("{}.wasm", plugin.file));
    componentize(&core, &out)?;
    Ok(out)
}

/// The tables of the workspace's `Cargo.toml` that apply to every package
/// of a release build (`[profile.release]`, `[profile.release.package."*"]`,
/// `[profile.release.build-override]`), as cargo config for a crate outside
/// the workspace. Without them cargo builds that crate's standard library
/// and dependencies with other settings, so all again (2 min 15 s in CI),
/// and without the workspace's overflow checks. Tables for named packages
/// are left out: they are about the workspace's own dependencies.
fn shared_release_profile(manifest: &str) -> String {
    const SHARED: [&str; 3] =
        ["[profile.release]", "[profile.release.package.\"*\"]", "[profile.release.build-override]"];
    let mut out = String::new();
    let mut keep = false;
    for line in manifest.lines() {
        let code = line.split('#').next().unwrap_or_default().trim();
        if code.starts_with('[') {
            keep = SHARED.contains(&code);
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The workspace root: this crate lives at `<root>/plugins/build`.
fn workspace_root() -> Result<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.ancestors().nth(2).context("plugins/build has no workspace root")?;
    Ok(root.to_path_buf())
}

#[derive(Debug)]
struct PluginCrate {
    /// The cargo package name, e.g. `meterd-plugin-e2b`.
    package: String,
    /// The plugin's name and route, e.g. `e2b`.
    plugin: String,
    /// The component's file stem, e.g. `e2b` or `e2b-ram-mb`.
    file: String,
    test_only: bool,
}

impl PluginCrate {
    /// Where its component goes, relative to the workspace root.
    fn output(&self) -> PathBuf {
        Path::new("target")
            .join(if self.test_only { "test-plugins" } else { "plugins" })
            .join(format!("{}.wasm", self.file))
    }

    fn describe(&self) -> String {
        if self.file == self.plugin {
            self.plugin.clone()
        } else {
            format!("{} as {}", self.plugin, self.file)
        }
    }
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    manifest_path: PathBuf,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

fn find_plugins(workspace: &Path) -> Result<Vec<PluginCrate>> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let metadata: Metadata = serde_json::from_slice(&output.stdout).context("reading cargo metadata")?;
    plugin_crates(metadata.packages, &workspace.join("tests"))
}

/// The plugin crates among `packages`, sorted by plugin name and file;
/// refuses two that would write the same component file.
fn plugin_crates(packages: Vec<Package>, tests_dir: &Path) -> Result<Vec<PluginCrate>> {
    let mut plugins = Vec::new();
    for p in packages {
        let Some(meterd) = p.metadata.as_ref().and_then(|m| m.get("meterd")) else { continue };
        let Some(plugin) = meterd.get("plugin").and_then(|v| v.as_str()) else { continue };
        let file = match meterd.get("file") {
            None => plugin.to_owned(),
            Some(serde_json::Value::String(file)) if is_file_stem(file) => file.clone(),
            Some(other) => bail!(
                "{}: [package.metadata.meterd] file must be a file stem of letters, digits, '-' and '_' (e.g. \"{plugin}-next\"), got {other}",
                p.name
            ),
        };
        plugins.push(PluginCrate {
            test_only: p.manifest_path.starts_with(tests_dir),
            package: p.name,
            plugin: plugin.to_owned(),
            file,
        });
    }
    plugins.sort_by(|a, b| (&a.plugin, &a.file, &a.package).cmp(&(&b.plugin, &b.file, &b.package)));
    let mut outputs: std::collections::BTreeMap<PathBuf, &str> = std::collections::BTreeMap::new();
    for plugin in &plugins {
        if let Some(other) = outputs.insert(plugin.output(), &plugin.package) {
            bail!(
                "plugin crates {other} and {} would both write {}: give one of them another `file = \"<stem>\"` in [package.metadata.meterd]",
                plugin.package,
                plugin.output().display()
            );
        }
    }
    Ok(plugins)
}

fn is_file_stem(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a wasm build adds to its cargo call.
struct BuildOptions<'a> {
    /// The Cargo.lock must not change.
    locked: bool,
    /// A cargo config file to apply (a lone crate's borrowed profile).
    config: Option<&'a Path>,
}

/// How to compile Rust for `wasm32-unknown-unknown` on this machine.
enum Toolchain {
    /// rustup's cargo with an installed wasm32 standard library.
    Rustup,
    /// Debian's rustc-web: nightly features unlocked, std built from source.
    DebianBuildStd,
}

impl Toolchain {
    fn detect() -> Result<Self> {
        if rustup_has_wasm_target() {
            return Ok(Self::Rustup);
        }
        if !debian_toolchain_present() {
            install_debian_toolchain()?;
            if !debian_toolchain_present() {
                bail!(
                    "after installing {} the toolchain is still incomplete (need {DEBIAN_CARGO}, {DEBIAN_RUSTC}, {DEBIAN_STD_SOURCES}, {DEBIAN_WASM_LINKER})",
                    DEBIAN_PACKAGES.join(" ")
                );
            }
        }
        Ok(Self::DebianBuildStd)
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Rustup => "rustup's wasm32-unknown-unknown target",
            Self::DebianBuildStd => "Debian's rustc-web and -Zbuild-std",
        }
    }

    /// Builds `packages` of the workspace (or lone crate) at `workspace`.
    fn build(
        &self,
        workspace: &Path,
        target_dir: &Path,
        packages: &[&str],
        options: BuildOptions,
    ) -> Result<()> {
        let mut cmd = match self {
            Self::Rustup => Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())),
            Self::DebianBuildStd => {
                let mut cmd = Command::new(DEBIAN_CARGO);
                let path = std::env::var("PATH").unwrap_or_default();
                // The outer `cargo run` exported rustup's tools; this build must
                // see only Debian's.
                cmd.env("PATH", format!("/usr/bin:{path}"))
                    .env("RUSTC", DEBIAN_RUSTC)
                    .env("RUSTC_BOOTSTRAP", "1")
                    // Debian's rustc names `rust-lld` for wasm32, which
                    // Debian does not ship; lld-22's wasm-ld is the same linker.
                    .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", DEBIAN_WASM_LINKER)
                    .env_remove("RUSTDOC")
                    .env_remove("RUSTUP_TOOLCHAIN")
                    .env_remove("RUSTC_WRAPPER")
                    .arg("-Zbuild-std=std,panic_abort")
                    // Without std's default `backtrace` feature: a wasm32
                    // plugin never symbolizes a backtrace, and its crates
                    // (object, gimli, addr2line, miniz_oxide) were ~20 s of
                    // CPU in every fresh build.
                    .arg("-Zbuild-std-features=");
                cmd
            }
        };
        cmd.current_dir(workspace)
            .env("CARGO_TARGET_DIR", target_dir)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .args(["build", "--release", "--target", WASM_TARGET]);
        if options.locked {
            cmd.arg("--locked");
        }
        if let Some(config) = options.config {
            cmd.arg("--config").arg(config);
        }
        for package in packages {
            cmd.args(["-p", package]);
        }
        let status = cmd.status().context("starting cargo for the wasm build")?;
        if !status.success() {
            bail!("building the plugins for {WASM_TARGET} failed ({status})");
        }
        Ok(())
    }
}

fn rustup_has_wasm_target() -> bool {
    Command::new("rustup").args(["target", "list", "--installed"]).output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == WASM_TARGET)
    })
}

fn debian_toolchain_present() -> bool {
    [DEBIAN_CARGO, DEBIAN_RUSTC, DEBIAN_STD_SOURCES, DEBIAN_WASM_LINKER].iter().all(|p| Path::new(p).exists())
}

fn install_debian_toolchain() -> Result<()> {
    eprintln!(
        "meterd-plugin-build: no wasm32 target in rustup; installing Debian's {}",
        DEBIAN_PACKAGES.join(" ")
    );
    let as_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = |args: &[&str]| -> Result<bool> {
        let mut cmd = if as_root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        // Another apt-get (`make test`'s chromium install, say) may hold
        // dpkg's lock for a while: wait for it rather than fail.
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(["-o", "DPkg::Lock::Timeout=300"]).args(args);
        Ok(cmd.status().context("starting apt-get")?.success())
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(DEBIAN_PACKAGES);
    // A fresh machine's package lists may be empty or stale: update once, then retry.
    let installed = apt(&install)? || (apt(&["update"])? && apt(&install)?);
    if !installed {
        bail!(
            "could not install {} with apt-get (as root, or with passwordless sudo); install them, or add rustup's {WASM_TARGET} target",
            DEBIAN_PACKAGES.join(" ")
        );
    }
    Ok(())
}

/// Encodes a core module (with the component-type section wit-bindgen
/// embedded) as a component at `out`. Returns whether the file changed.
fn componentize(core: &Path, out: &Path) -> Result<bool> {
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{} is not a module built with wit-bindgen", core.display()))?
        .validate(true)
        .encode()
        .with_context(|| format!("turning {} into a component", core.display()))?;
    if std::fs::read(out).is_ok_and(|existing| existing == component) {
        return Ok(false);
    }
    write_atomically(out, &component)?;
    Ok(true)
}

/// Writes `bytes` beside `out` and renames it into place, so a watching
/// gateway never reads a partial file.
fn write_atomically(out: &Path, bytes: &[u8]) -> Result<()> {
    let dir = out.parent().context("output path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", out.file_name().and_then(|n| n.to_str()).unwrap_or("plugin")));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/ws";

    fn package(name: &str, dir: &str, meterd: serde_json::Value) -> Package {
        Package {
            name: name.to_owned(),
            manifest_path: Path::new(ROOT).join(dir).join("Cargo.toml"),
            metadata: Some(serde_json::json!({ "meterd": meterd })),
        }
    }

    fn crates(packages: Vec<Package>) -> Result<Vec<PluginCrate>> {
        plugin_crates(packages, &Path::new(ROOT).join("tests"))
    }

    fn workspace_packages() -> Vec<Package> {
        vec![
            package(
                "meterd-plugin-e2b-ram-mb",
                "tests/plugins/e2b-ram-mb",
                serde_json::json!({"plugin": "e2b", "file": "e2b-ram-mb"}),
            ),
            package("meterd-plugin-e2b", "plugins/e2b", serde_json::json!({"plugin": "e2b"})),
            package("meterd-plugin-e2b-next", "tests/plugins/e2b-next", serde_json::json!({"plugin": "e2b"})),
            Package {
                name: "meterd-units".to_owned(),
                manifest_path: "/ws/plugins/units/Cargo.toml".into(),
                metadata: None,
            },
        ]
    }

    #[test]
    fn a_lone_crate_borrows_only_the_profile_tables_every_package_gets() {
        let manifest = r#"[workspace]
members = ["a"]

[profile.release]
overflow-checks = true # kept

[profile.release.package."*"]
codegen-units = 1

[profile.release.package.libsqlite3-sys]
opt-level = "s"

[profile.release.build-override]
opt-level = 1

[profile.dev.package."*"]
opt-level = 2
"#;
        assert_eq!(
            shared_release_profile(manifest),
            "[profile.release]\noverflow-checks = true # kept\n\n[profile.release.package.\"*\"]\ncodegen-units = 1\n\n[profile.release.build-override]\nopt-level = 1\n\n"
        );
        assert_eq!(shared_release_profile("[package]\nname = \"x\"\n"), "");
    }

    #[test]
    fn file_defaults_to_the_plugin_name_and_sets_the_output() {
        let plugins = crates(workspace_packages()).unwrap();
        let summary: Vec<_> = plugins
            .iter()
            .map(|p| (p.package.as_str(), p.plugin.as_str(), p.file.as_str(), p.test_only, p.output()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("meterd-plugin-e2b", "e2b", "e2b", false, PathBuf::from("target/plugins/e2b.wasm")),
                ("meterd-plugin-e2b-next", "e2b", "e2b", true, PathBuf::from("target/test-plugins/e2b.wasm")),
                (
                    "meterd-plugin-e2b-ram-mb",
                    "e2b",
                    "e2b-ram-mb",
                    true,
                    PathBuf::from("target/test-plugins/e2b-ram-mb.wasm")
                ),
            ]
        );
    }

    #[test]
    fn two_crates_writing_the_same_file_are_refused() {
        let mut packages = workspace_packages();
        packages.push(package(
            "meterd-plugin-e2b-other",
            "tests/plugins/e2b-other",
            serde_json::json!({"plugin": "e2b"}),
        ));
        let err = format!("{:#}", crates(packages).expect_err("a collision"));
        assert!(err.contains("meterd-plugin-e2b-next") && err.contains("meterd-plugin-e2b-other"), "{err}");
        assert!(err.contains("target/test-plugins/e2b.wasm"), "{err}");

        // Another plugin's name used as a file stem collides too.
        let mut packages = workspace_packages();
        packages.push(package(
            "meterd-plugin-x",
            "tests/plugins/x",
            serde_json::json!({"plugin": "x", "file": "e2b-ram-mb"}),
        ));
        assert!(crates(packages).is_err());
    }

    #[test]
    fn a_file_that_is_not_a_plain_stem_is_refused() {
        for file in [
            serde_json::json!(""),
            serde_json::json!("../e2b"),
            serde_json::json!("e2b.wasm"),
            serde_json::json!(7),
        ] {
            let packages = vec![package(
                "meterd-plugin-e2b",
                "plugins/e2b",
                serde_json::json!({"plugin": "e2b", "file": file}),
            )];
            let err = format!("{:#}", crates(packages).expect_err("refused"));
            assert!(err.contains("meterd-plugin-e2b") && err.contains("file"), "{err}");
        }
    }

    fn built(plugins: &[PluginCrate]) -> Vec<BuiltPlugin> {
        plugins
            .iter()
            .map(|p| BuiltPlugin {
                name: p.plugin.clone(),
                file: p.file.clone(),
                path: Path::new(ROOT).join(p.output()),
                test_only: p.test_only,
            })
            .collect()
    }

    #[test]
    fn components_are_found_by_name_and_test_components_by_file() {
        let mut packages = workspace_packages();
        packages.push(package(
            "meterd-plugin-wit-next",
            "tests/plugins/wit-next",
            serde_json::json!({"plugin": "wit-next"}),
        ));
        let built = built(&crates(packages).unwrap());
        let path = |p: Option<&BuiltPlugin>| p.map(|p| p.path.to_str().unwrap().to_owned());
        assert_eq!(path(find_named(&built, "e2b", false)).as_deref(), Some("/ws/target/plugins/e2b.wasm"));
        assert_eq!(
            path(find_named(&built, "wit-next", false)).as_deref(),
            Some("/ws/target/test-plugins/wit-next.wasm")
        );
        assert_eq!(path(find_test(&built, "e2b")).as_deref(), Some("/ws/target/test-plugins/e2b.wasm"));
        assert_eq!(
            path(find_test(&built, "e2b-ram-mb")).as_deref(),
            Some("/ws/target/test-plugins/e2b-ram-mb.wasm")
        );
        assert_eq!(
            path(find_test(&built, "wit-next")).as_deref(),
            Some("/ws/target/test-plugins/wit-next.wasm")
        );
        assert_eq!(find_test(&built, "nope").map(|p| &p.path), None);
    }
}
