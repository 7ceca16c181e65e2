//! The committed WIT bindings are exactly what wit-bindgen-rust generates
//! from [`BINDINGS`]: the same options the `generate!` macro took, plus
//! formatting so a WIT change reads as a diff. With `METERD_BLESS=1` the
//! test rewrites every file that differs instead of failing.

use std::path::{Path, PathBuf};

use meterd_plugin_build::bindings::{BINDINGS, Bindings, REGENERATE, header, wit_hash};
use wit_bindgen_core::WorldGenerator;
use wit_bindgen_core::wit_parser::Resolve;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The file `bindings` describes, as wit-bindgen-rust generates it today.
fn generate(workspace: &Path, bindings: &Bindings) -> String {
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_path(workspace.join(bindings.wit)).expect("the WIT parses");
    let world = resolve.select_world(&[package], Some(bindings.world)).expect("the world exists");
    let opts = wit_bindgen_rust::Opts {
        format: true,
        generate_all: true,
        pub_export_macro: bindings.export_macro.is_some(),
        export_macro_name: bindings.export_macro.map(|(name, _)| name.to_owned()),
        default_bindings_module: bindings.export_macro.map(|(_, module)| module.to_owned()),
        additional_derive_attributes: bindings.additional_derives.iter().map(|d| (*d).to_owned()).collect(),
        ..Default::default()
    };
    let mut files = wit_bindgen_core::Files::default();
    opts.build().generate(&mut resolve, world, &mut files).expect("wit-bindgen generates");
    let [(_, source)] = files.iter().collect::<Vec<_>>()[..] else { panic!("one file per world") };
    let source = std::str::from_utf8(source).expect("generated Rust is UTF-8");
    header(&wit_hash(workspace, bindings).expect("the WIT is readable")) + source
}

#[test]
fn committed_bindings_are_what_wit_bindgen_generates() {
    let workspace = workspace();
    let bless = std::env::var_os("METERD_BLESS").is_some();
    let mut stale = Vec::new();
    for bindings in &BINDINGS {
        let expected = generate(&workspace, bindings);
        let out = workspace.join(bindings.out);
        if std::fs::read_to_string(&out).is_ok_and(|committed| committed == expected) {
            continue;
        }
        if bless {
            std::fs::write(&out, expected).expect("writing the bindings");
            eprintln!("rewrote {}", bindings.out);
        } else {
            stale.push(bindings.out);
        }
    }
    assert!(stale.is_empty(), "stale bindings: {}; regenerate them with `{REGENERATE}`", stale.join(", "));
}
