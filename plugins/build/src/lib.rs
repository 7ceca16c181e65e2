//! Builds every plugin crate of the workspace to a WebAssembly component:
//! the `meterd-plugin-build` command, and a library the end-to-end tests
//! call so they always run against freshly built plugins.
//!
//! 1. Finds the plugin crates: packages with `[package.metadata.meterd]
//!    plugin = "<name>"`. Those under `tests/` are test-only plugins.
//! 2. Picks a wasm toolchain: an installed rustup `wasm32-unknown-unknown`
//!    target if there is one; else Debian's `rustc-web`/`cargo-web` with the
//!    standard library's sources (`rust-web-src`) and `lld-22`, installed with
//!    apt-get when missing, and `-Zbuild-std`.
//! 3. Builds all plugins in one cargo call into `target/wasm`, so the
//!    standard library is compiled once and later builds are incremental.
//! 4. Turns each core module into a component (wit-component) and writes it
//!    to `target/plugins/<name>.wasm` (test-only: `target/test-plugins/`),
//!    atomically and only when its bytes changed, so a watching gateway
//!    never sees a half-written or needlessly touched file.
//!
//! Usage: `cargo run --release -p meterd-plugin-build`.

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

/// The test-only component named `name` (from a crate under `tests/`).
pub fn test_component(name: &str) -> Result<PathBuf> {
    find_built(name, true)
}

fn find_built(name: &str, test_only: bool) -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<Vec<BuiltPlugin>, String>> = std::sync::OnceLock::new();
    let built = BUILT
        .get_or_init(|| build_all().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    built
        .iter()
        .find(|p| p.name == name && p.test_only == test_only)
        .or_else(|| built.iter().find(|p| p.name == name))
        .map(|p| p.path.clone())
        .with_context(|| format!("no plugin named {name} was built"))
}

/// Builds every plugin of the workspace and returns where each component is.
pub fn build_all() -> Result<Vec<BuiltPlugin>> {
    let workspace = workspace_root()?;
    let plugins = find_plugins(&workspace)?;
    if plugins.is_empty() {
        bail!("no plugin crates found (packages with [package.metadata.meterd] plugin = \"…\")");
    }
    let toolchain = Toolchain::detect()?;
    eprintln!(
        "meterd-plugin-build: building {} with {}",
        plugins.iter().map(|p| p.plugin.as_str()).collect::<Vec<_>>().join(", "),
        toolchain.describe()
    );
    let wasm_target_dir = workspace.join("target").join("wasm");
    toolchain.build(&workspace, &wasm_target_dir, &plugins)?;
    let mut built = Vec::with_capacity(plugins.len());
    for plugin in &plugins {
        let core = wasm_target_dir
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", plugin.package.replace('-', "_")));
        let out_dir =
            workspace.join("target").join(if plugin.test_only { "test-plugins" } else { "plugins" });
        let out = out_dir.join(format!("{}.wasm", plugin.plugin));
        let changed = componentize(&core, &out)?;
        eprintln!("meterd-plugin-build: {} {}", if changed { "wrote" } else { "unchanged" }, out.display());
        built.push(BuiltPlugin { name: plugin.plugin.clone(), path: out, test_only: plugin.test_only });
    }
    Ok(built)
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
    test_only: bool,
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
    let tests_dir = workspace.join("tests");
    let mut plugins: Vec<PluginCrate> = metadata
        .packages
        .into_iter()
        .filter_map(|p| {
            let plugin = p.metadata.as_ref()?.get("meterd")?.get("plugin")?.as_str()?.to_owned();
            Some(PluginCrate { test_only: p.manifest_path.starts_with(&tests_dir), package: p.name, plugin })
        })
        .collect();
    plugins.sort_by(|a, b| a.plugin.cmp(&b.plugin));
    Ok(plugins)
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

    fn build(&self, workspace: &Path, target_dir: &Path, plugins: &[PluginCrate]) -> Result<()> {
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
                    .arg("-Zbuild-std=std,panic_abort");
                cmd
            }
        };
        cmd.current_dir(workspace)
            .env("CARGO_TARGET_DIR", target_dir)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTFLAGS")
            .args(["build", "--release", "--locked", "--target", WASM_TARGET]);
        for plugin in plugins {
            cmd.args(["-p", &plugin.package]);
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
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
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
    let dir = out.parent().context("output path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Write beside the target and rename: readers never see a partial file.
    let tmp = dir.join(format!(".{}.tmp", out.file_name().and_then(|n| n.to_str()).unwrap_or("plugin")));
    std::fs::write(&tmp, &component).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))?;
    Ok(true)
}
