# meterd: the two commands of README.md, and a few for developers.
#
#   make run    build the plugins (installing a wasm toolchain if missing)
#               and the gateway, then serve on 127.0.0.1:8080 with SQLite
#   make test   build everything and run every test: unit, plugin (native),
#               end-to-end (real binary, real SQLite file, real components,
#               real S3-compatible servers installed by tests/s3/install.sh,
#               the machine's PostgreSQL, started by tests/postgres/ensure.sh,
#               headless Debian Chromium for the dashboard, tests/ui/install.sh),
#               after a short run of the plugin fuzz targets (`make fuzz`)
#   make fuzz   the plugin fuzz targets (tests/fuzz, cargo-fuzz, native),
#               each for FUZZ_SECONDS (default 6), one per core at a time;
#               `make fuzz-long`: 600 s in all, shared equally by the targets

CARGO ?= cargo
.PHONY: run test plugins build bench check s3-servers postgres fuzz fuzz-long ui-browser

# `make run` serves the components built into target/plugins unless told
# otherwise (only here: tests and benches configure their own).
run: export METERD_PLUGINS_DIR ?= target/plugins
run: plugins
	$(CARGO) run --release -p meterd -- serve

# tests/run.sh: the setup below (s3-servers, postgres, ui-browser, the fuzz
# build, and every plugin) beside the test build, then `make fuzz`'s run,
# then cargo test, whose closing lines CI reads last.
test:
	CARGO="$(CARGO)" FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/run.sh

FUZZ_SECONDS ?= 6
fuzz:
	CARGO="$(CARGO)" FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/fuzz/run.sh

fuzz-long:
	CARGO="$(CARGO)" FUZZ_TOTAL_SECONDS=600 bash tests/fuzz/run.sh

postgres:
	bash tests/postgres/ensure.sh

# Debian's chromium and tests/ui/node_modules (playwright-core) for the
# dashboard's browser test (tests/e2e/ui.rs); quick when already there.
ui-browser:
	bash tests/ui/install.sh

s3-servers:
	bash tests/s3/install.sh

plugins:
	$(CARGO) run --release -q -p meterd-plugin-build

build: plugins
	$(CARGO) build --release -p meterd

bench: plugins s3-servers
	$(CARGO) bench -p meterd

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
