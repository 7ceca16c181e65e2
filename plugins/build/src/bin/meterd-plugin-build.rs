//! `meterd-plugin-build`: builds every Rust plugin to
//! `target/plugins/<file>.wasm` (`file` defaults to the plugin name;
//! test-only plugins go to `target/test-plugins/`); with `--languages`,
//! also the plugins in other languages to `target/language-plugins/`; with
//! `--crate DIR`, only the plugin crate at DIR outside the workspace (e.g.
//! one `meterd plugins new` made), to `target/lone-plugins/`.

use std::path::Path;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let built = match args.as_slice() {
        [] => meterd_plugin_build::build_all().map(|_| ()),
        [flag] if flag == "--languages" => meterd_plugin_build::build_all()
            .and_then(|_| meterd_plugin_build::languages::build_languages())
            .map(|_| ()),
        [flag, dir] if flag == "--crate" => {
            meterd_plugin_build::build_lone_crate(Path::new(dir)).map(|out| println!("{}", out.display()))
        }
        _ => {
            eprintln!("usage: meterd-plugin-build [--languages | --crate DIR]");
            return std::process::ExitCode::from(2);
        }
    };
    match built {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meterd-plugin-build: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
