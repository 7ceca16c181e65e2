# meterd: the two commands of README.md, and a few for developers.
#
#   make run    build the plugins (installing a wasm toolchain if missing)
#               and the gateway, then serve on 127.0.0.1:8080 with SQLite
#   make test   build everything and run every test: unit, plugin (native),
#               end-to-end (real binary, real SQLite file, real components,
#               real S3-compatible servers installed by tests/s3/install.sh,
#               the machine's PostgreSQL, started by tests/postgres/ensure.sh)

CARGO ?= cargo
.PHONY: run test plugins build bench check s3-servers postgres

# `make run` serves the components built into target/plugins unless told
# otherwise (only here: tests and benches configure their own).
run: export METERD_PLUGINS_DIR ?= target/plugins
run: plugins
	$(CARGO) run --release -p meterd -- serve

test: s3-servers postgres
	$(CARGO) test --release --workspace

postgres:
	bash tests/postgres/ensure.sh

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
