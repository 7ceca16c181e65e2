//! The plugins' WIT bindings are committed source files, not the output of
//! wit-bindgen's `generate!` macro at every build: the macro's host side
//! (wasmparser, wit-parser, wit-component, syn, prettyplease) was a quarter
//! of the plugin build's CPU, compiled by the wasm toolchain on every fresh
//! machine (BENCHMARKS.md, "the plugin build").
//!
//! [`BINDINGS`] says what each file is generated from and how. The test
//! `tests/bindings.rs` generates each with wit-bindgen-rust and fails when
//! a committed file differs; `METERD_BLESS=1` makes it rewrite them. The
//! build checks the cheap half itself ([`check_current`]): the WIT a file
//! was generated from, named by its hash in the file's first line, is the
//! WIT on disk, so an edited WIT never builds with stale bindings.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::inputs::hash_tree;

/// The command that regenerates every bindings file.
pub const REGENERATE: &str = "METERD_BLESS=1 cargo test --release -p meterd-plugin-build --test bindings";

/// One committed bindings file and what it is generated from.
#[derive(Debug, Clone, Copy)]
pub struct Bindings {
    /// The WIT package's directory, relative to the workspace root.
    pub wit: &'static str,
    /// The world in it.
    pub world: &'static str,
    /// The generated file, relative to the workspace root; the crate
    /// `include!`s it at its root, where `generate!` would have expanded.
    pub out: &'static str,
    /// `Some((name, module))`: export a public macro `name` whose default
    /// bindings module is `module` (how plugins reach the SDK's types).
    pub export_macro: Option<(&'static str, &'static str)>,
    /// Derives added to every generated type.
    pub additional_derives: &'static [&'static str],
}

/// Every bindings file of the workspace.
pub const BINDINGS: [Bindings; 2] = [
    // The SDK: what every plugin crate builds on.
    Bindings {
        wit: "wit",
        world: "provider",
        out: "plugins/sdk/src/bindings.rs",
        export_macro: Some(("export_adapter", "meterd_plugin_sdk")),
        additional_derives: &["PartialEq"],
    },
    // The test-only plugin built against a WIT major this host refuses.
    Bindings {
        wit: "tests/plugins/wit-next/wit",
        world: "provider",
        out: "tests/plugins/wit-next/src/bindings.rs",
        export_macro: None,
        additional_derives: &[],
    },
];

/// The first line of a bindings file generated from WIT with hash
/// `wit_hash` ([`wit_hash`]).
pub fn header(wit_hash: &str) -> String {
    format!("// Generated from WIT with sha256 {wit_hash} by `{REGENERATE}`: do not edit.\n")
}

/// SHA-256 over the files under `bindings.wit` (paths relative to it, so
/// the hash does not depend on where the workspace is).
pub fn wit_hash(workspace: &Path, bindings: &Bindings) -> Result<String> {
    let dir = workspace.join(bindings.wit);
    hash_tree("", &dir, &[&dir])
}

/// Refuses to go on when a bindings file was generated from another WIT
/// than the one on disk, naming the file and the command that fixes it.
pub fn check_current(workspace: &Path, all: &[Bindings]) -> Result<()> {
    for bindings in all {
        let expected = header(&wit_hash(workspace, bindings)?);
        let out = workspace.join(bindings.out);
        let text = std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        let first = text.split_inclusive('\n').next().unwrap_or_default();
        if first != expected {
            bail!(
                "{} was not generated from the WIT in {}/ (it changed since): regenerate it with `{REGENERATE}`",
                bindings.out,
                bindings.wit
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: [Bindings; 1] = [Bindings {
        wit: "wit",
        world: "w",
        out: "sdk/bindings.rs",
        export_macro: None,
        additional_derives: &[],
    }];

    fn workspace(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("meterd-bindings-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("wit")).unwrap();
        std::fs::create_dir_all(dir.join("sdk")).unwrap();
        std::fs::write(dir.join("wit/w.wit"), "package a:b;\nworld w {}\n").unwrap();
        dir
    }

    #[test]
    fn bindings_of_the_wit_on_disk_pass_and_an_edited_wit_is_named() {
        let dir = workspace("edit");
        let hash = wit_hash(&dir, &ONE[0]).unwrap();
        std::fs::write(dir.join("sdk/bindings.rs"), format!("{}pub mod x {{}}\n", header(&hash))).unwrap();
        check_current(&dir, &ONE).unwrap();

        std::fs::write(dir.join("wit/w.wit"), "package a:b;\nworld w { export f: func(); }\n").unwrap();
        let err = format!("{:#}", check_current(&dir, &ONE).expect_err("stale"));
        assert!(err.contains("sdk/bindings.rs") && err.contains("wit/") && err.contains(REGENERATE), "{err}");

        // A file without the header (hand-written, or from another tool) is
        // refused the same way; a missing one names its path.
        std::fs::write(dir.join("sdk/bindings.rs"), "pub mod x {}\n").unwrap();
        assert!(check_current(&dir, &ONE).is_err());
        std::fs::remove_file(dir.join("sdk/bindings.rs")).unwrap();
        let err = format!("{:#}", check_current(&dir, &ONE).expect_err("missing"));
        assert!(err.contains("bindings.rs"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_hash_is_the_same_wherever_the_workspace_is() {
        let (a, b) = (workspace("here"), workspace("there"));
        assert_eq!(wit_hash(&a, &ONE[0]).unwrap(), wit_hash(&b, &ONE[0]).unwrap());
        let _ = (std::fs::remove_dir_all(&a), std::fs::remove_dir_all(&b));
    }
}
