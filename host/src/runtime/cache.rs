//! On-disk cache of compiled components, so a restart does not recompile.
//!
//! Key: the component's SHA-256 and a hash of the engine's compilation
//! settings (wasmtime version, target, every codegen flag), so an artifact
//! is only ever loaded by an engine that could have produced it.
//!
//! Safety invariant: `Component::deserialize_file` trusts its input. Only
//! this module writes the cache directory, always via a temporary file and
//! an atomic rename, and a file that fails to load is recompiled and
//! replaced. Operators must not let anyone else write there.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn engine_key(engine: &Engine) -> String {
    // SipHash with fixed keys: stable for a given build, which is all the
    // key must be (a different build is a different engine anyway).
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Returns the component and whether it came from the cache.
pub fn compile_cached(
    engine: &Engine,
    dir: &Path,
    hash: &str,
    bytes: &[u8],
) -> Result<(Component, bool), LoadError> {
    let path = dir.join(format!("{hash}-{}.cwasm", engine_key(engine)));
    if path.exists() {
        // SAFETY: see the module docs: the file was written by `store`
        // below from `Component::serialize` of an engine with this key.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok((component, true)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "compiled-component cache entry unusable; recompiling")
            }
        }
    }
    let component =
        Component::from_binary(engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
    if let Err(e) = store(&component, dir, &path) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not write the compiled-component cache; continuing without it");
    }
    Ok((component, false))
}

fn store(component: &Component, dir: &Path, path: &Path) -> Result<(), String> {
    let bytes = component.serialize().map_err(|e| format!("{e:#}"))?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}
