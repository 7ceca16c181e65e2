//! Plugins written in other languages than Rust: a directory with a
//! `meterd-plugin.json` manifest (`{"plugin": "<name>", "language":
//! "python" | "javascript", "entry": "<module or file>"}`) under `plugins/`
//! (or `tests/plugins/`, test-only), built to
//! `target/language-plugins/<name>.wasm` by the language's own component
//! toolchain, which this module installs on first use:
//!
//! - Python: componentize-py ([`COMPONENTIZE_PY`], from PyPI into a venv
//!   under `target/toolchains/`); `entry` is the module defining `Adapter`.
//! - JavaScript: componentize-js, pinned by the plugin's own
//!   `package-lock.json` (`npm ci`); `entry` is the ES module, and the
//!   plugin's `build.mjs` calls `componentize()` (jco's CLI does not work
//!   here; the API does).
//!
//! A build takes 10–30 s (an interpreter is baked into the component), so
//! its inputs — the toolchain's version, the WIT package and every file of
//! the plugin's directory — are hashed and a component is rebuilt only when
//! they changed. These components import WASI p2, which the host lends
//! locked down (host/src/runtime/wasi.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::inputs::{hash_tree, hex};
use crate::{BuiltPlugin, is_file_stem, workspace_root, write_atomically};

/// The componentize-py release the Python plugins are built with.
pub const COMPONENTIZE_PY: &str = "0.25.1";
const MANIFEST: &str = "meterd-plugin.json";
const OUTPUT_DIR: &str = "target/language-plugins";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Javascript,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    plugin: String,
    language: Language,
    entry: String,
}

/// One plugin directory with its manifest.
#[derive(Debug)]
struct LanguagePlugin {
    dir: PathBuf,
    manifest: Manifest,
    test_only: bool,
}

/// The component of the other-language plugin `name`, building every such
/// plugin the first time a process asks (cached across processes by their
/// inputs' hash, so this is quick when nothing changed).
pub fn language_component(name: &str) -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<Vec<BuiltPlugin>, String>> = std::sync::OnceLock::new();
    let built = BUILT
        .get_or_init(|| build_languages().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    built
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.path.clone())
        .with_context(|| format!("no plugin named {name} in another language was built"))
}

/// A compiled-component cache (`target/language-plugins/compiled/`) that
/// the tests of one process share, so each language component is compiled
/// once per run, not once per test: an 18 MB Python component takes ~30 s
/// of CPU to compile. Emptied on a process's first lease, so every run
/// compiles them once, as a fresh checkout does. Hold the lease while
/// loading: a test that asks meanwhile waits, then loads what was compiled.
pub struct CompileCacheLease {
    pub dir: PathBuf,
    _loading: std::sync::MutexGuard<'static, ()>,
}

pub fn compile_cache_lease() -> Result<CompileCacheLease> {
    static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    // A test that panicked while holding the lease leaves nothing half-done
    // behind: the cache only ever holds whole files.
    let loading = LOADING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = DIR
        .get_or_init(|| {
            let dir = workspace_root().map_err(|e| format!("{e:#}"))?.join(OUTPUT_DIR).join("compiled");
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("emptying {}: {e}", dir.display())),
            }
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            Ok(dir)
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(CompileCacheLease { dir, _loading: loading })
}

/// Builds every other-language plugin of the repository whose inputs
/// changed, and returns where each component is.
pub fn build_languages() -> Result<Vec<BuiltPlugin>> {
    let workspace = workspace_root()?;
    let plugins = find(&workspace)?;
    let mut built = Vec::with_capacity(plugins.len());
    for plugin in &plugins {
        let out = workspace.join(OUTPUT_DIR).join(format!("{}.wasm", plugin.manifest.plugin));
        let changed = build_one(&workspace, plugin, &out)
            .with_context(|| format!("building {} ({})", plugin.manifest.plugin, plugin.dir.display()))?;
        eprintln!("meterd-plugin-build: {} {}", if changed { "wrote" } else { "unchanged" }, out.display());
        built.push(BuiltPlugin {
            name: plugin.manifest.plugin.clone(),
            file: plugin.manifest.plugin.clone(),
            path: out,
            test_only: plugin.test_only,
        });
    }
    Ok(built)
}

/// Every directory directly under `plugins/` and `tests/plugins/` with a
/// manifest, sorted by plugin name.
fn find(workspace: &Path) -> Result<Vec<LanguagePlugin>> {
    let mut plugins = Vec::new();
    for (parent, test_only) in [(workspace.join("plugins"), false), (workspace.join("tests/plugins"), true)] {
        let Ok(entries) = std::fs::read_dir(&parent) else { continue };
        for entry in entries {
            let dir = entry.with_context(|| format!("listing {}", parent.display()))?.path();
            let manifest_path = dir.join(MANIFEST);
            if !manifest_path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&manifest_path)
                .with_context(|| format!("reading {}", manifest_path.display()))?;
            let manifest: Manifest = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a plugin manifest", manifest_path.display()))?;
            if !is_file_stem(&manifest.plugin) {
                bail!("{}: plugin {:?} is not a valid plugin name", manifest_path.display(), manifest.plugin);
            }
            plugins.push(LanguagePlugin { dir, manifest, test_only });
        }
    }
    plugins.sort_by(|a, b| a.manifest.plugin.cmp(&b.manifest.plugin));
    if let Some(pair) = plugins.windows(2).find(|w| w[0].manifest.plugin == w[1].manifest.plugin) {
        bail!(
            "two directories build plugin {}: {} and {}",
            pair[0].manifest.plugin,
            pair[0].dir.display(),
            pair[1].dir.display()
        );
    }
    Ok(plugins)
}

/// Builds `plugin` to `out` unless its inputs are those of the component
/// already there. Returns whether the file changed.
fn build_one(workspace: &Path, plugin: &LanguagePlugin, out: &Path) -> Result<bool> {
    let wit = workspace.join("wit");
    let tool = match plugin.manifest.language {
        Language::Python => python_toolchain(workspace)?,
        Language::Javascript => javascript_toolchain(&plugin.dir)?,
    };
    let inputs = hash_tree(&tool.version, workspace, &[&wit, &plugin.dir])?;
    let stamp = out.with_extension("wasm.inputs");
    if out.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == inputs) {
        return Ok(false);
    }
    let dir = out.parent().context("output path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = dir.join(format!(".{}.build.wasm", plugin.manifest.plugin));
    let mut cmd = match plugin.manifest.language {
        Language::Python => {
            let mut cmd = Command::new(&tool.program);
            cmd.arg("-d")
                .arg(&wit)
                .args(["-w", "provider", "componentize", "-p"])
                .arg(&plugin.dir)
                .arg(&plugin.manifest.entry)
                .arg("-o")
                .arg(&scratch);
            cmd
        }
        Language::Javascript => {
            let mut cmd = Command::new(&tool.program);
            cmd.current_dir(&plugin.dir).arg("build.mjs").arg(&plugin.manifest.entry).arg(&wit).arg(&scratch);
            cmd
        }
    };
    let status = cmd.status().with_context(|| format!("starting {}", tool.program.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", tool.version);
    }
    let component = std::fs::read(&scratch).with_context(|| format!("reading {}", scratch.display()))?;
    let _ = std::fs::remove_file(&scratch);
    let changed = !std::fs::read(out).is_ok_and(|existing| existing == component);
    if changed {
        write_atomically(out, &component)?;
    }
    std::fs::write(&stamp, format!("{inputs}\n")).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(changed)
}

/// A language's component builder and its version (part of the inputs).
struct Tool {
    program: PathBuf,
    version: String,
}

/// componentize-py [`COMPONENTIZE_PY`] in a venv under `target/toolchains`,
/// installed from PyPI when missing.
fn python_toolchain(workspace: &Path) -> Result<Tool> {
    let venv = workspace.join("target/toolchains/componentize-py");
    let program = venv.join("bin/componentize-py");
    let version = format!("componentize-py {COMPONENTIZE_PY}");
    let installed = || {
        Command::new(&program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == version)
    };
    if !installed() {
        eprintln!("meterd-plugin-build: installing {version} from PyPI into {}", venv.display());
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv (Debian: python3-venv)",
        )?;
        run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("componentize-py=={COMPONENTIZE_PY}")),
            "pip install componentize-py",
        )?;
        if !installed() {
            bail!("{} does not report {version} after installing it", program.display());
        }
    }
    Ok(Tool { program, version })
}

/// Node with the plugin's own `node_modules` (`npm ci` from its lock file
/// when the lock changed since the last install).
fn javascript_toolchain(dir: &Path) -> Result<Tool> {
    let lock = std::fs::read(dir.join("package-lock.json"))
        .with_context(|| format!("{} has no package-lock.json", dir.display()))?;
    let lock_hash = hex(&Sha256::digest(&lock));
    let installed_stamp = dir.join("node_modules/.meterd-lock-sha256");
    if !std::fs::read_to_string(&installed_stamp).is_ok_and(|s| s.trim() == lock_hash) {
        eprintln!("meterd-plugin-build: npm ci in {}", dir.display());
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(dir), "npm ci")?;
        std::fs::write(&installed_stamp, &lock_hash)
            .with_context(|| format!("writing {}", installed_stamp.display()))?;
    }
    let node = Command::new("node").arg("--version").output().context("node is not installed")?;
    let node_version = String::from_utf8_lossy(&node.stdout).trim().to_owned();
    Ok(Tool { program: PathBuf::from("node"), version: format!("node {node_version}, lock {lock_hash}") })
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
