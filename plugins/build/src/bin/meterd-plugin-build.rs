//! `meterd-plugin-build`: builds every Rust plugin to
//! `target/plugins/<file>.wasm` (`file` defaults to the plugin name;
//! test-only plugins go to `target/test-plugins/`); with `--languages`,
//! also the plugins in other languages to `target/language-plugins/`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let languages = match args.as_slice() {
        [] => false,
        [flag] if flag == "--languages" => true,
        _ => {
            eprintln!("usage: meterd-plugin-build [--languages]");
            return std::process::ExitCode::from(2);
        }
    };
    let built = meterd_plugin_build::build_all().and_then(|rust| {
        if languages { meterd_plugin_build::languages::build_languages().map(|_| rust) } else { Ok(rust) }
    });
    match built {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meterd-plugin-build: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
