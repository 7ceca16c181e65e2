//! `meterd-plugin-build`: builds every plugin to `target/plugins/<file>.wasm`
//! (`file` defaults to the plugin name; test-only plugins go to
//! `target/test-plugins/`).

fn main() -> std::process::ExitCode {
    if std::env::args().len() > 1 {
        eprintln!("usage: meterd-plugin-build (takes no arguments)");
        return std::process::ExitCode::from(2);
    }
    match meterd_plugin_build::build_all() {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meterd-plugin-build: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
