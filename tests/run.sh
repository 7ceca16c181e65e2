#!/usr/bin/env bash
# The whole suite: `make test`, and so CI. Everything the tests need, then
# the short fuzz run, then every test (cargo test's lines come last).
#
# The test build keeps both cores busy for most of its minutes, so what
# waits on downloads or fills the build's idle moments runs beside it, each
# into target/test-setup/<name>.log: PostgreSQL's start; the S3 servers
# (pip, then s3s-fs built at a lower priority); cargo-fuzz and the fuzz
# targets' build; and, once the test build has made the plugin builder,
# Debian's chromium and npm's playwright-core, then the plugins in every
# language (Debian's wasm toolchain, componentize-py and componentize-js on
# a fresh machine: one apt-get after the other). CPU-bound steps run at the
# lowest priority, so they take only what the test build leaves. A setup
# step that fails stops the run with its log's tail, before any test runs.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO="${CARGO:-cargo}"
FUZZ_SECONDS="${FUZZ_SECONDS:-6}"
logs=target/test-setup
mkdir -p "$logs"

# Each step in its own process group, so an early exit can stop all of it
# (pip, apt-get, cargo) and not only the script that started it.
set -m
declare -A pids=()
beside() { # beside NAME NICENESS COMMAND...
    local name=$1 niceness=$2
    shift 2
    nice -n "$niceness" "$@" </dev/null >"$logs/$name.log" 2>&1 &
    pids[$name]=$!
}
stop_setup() {
    for pid in "${pids[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
}
trap stop_setup EXIT

beside postgres 0 bash tests/postgres/ensure.sh
beside s3-servers 10 bash tests/s3/install.sh
beside fuzz-build 19 env CARGO="$CARGO" FUZZ_BUILD_ONLY=1 bash tests/fuzz/run.sh

started=$SECONDS
# The plugin builder first, as the whole test build makes it: selecting the
# whole workspace (and a test target, so dev-dependencies count) gives it
# the same features, so the build below does not make it again.
$CARGO test --release --workspace --no-run --test bindings
builder="${CARGO_TARGET_DIR:-target}/release/meterd-plugin-build"
beside browser-and-plugins 0 bash -c 'bash tests/ui/install.sh && exec nice -n 19 "$0" --languages' "$builder"
$CARGO test --release --workspace --no-run
echo "tests: built in $((SECONDS - started)) s"

failed=0
for name in postgres s3-servers fuzz-build browser-and-plugins; do
    waited=$SECONDS
    if wait "${pids[$name]}"; then
        echo "tests: setup $name ready (waited $((SECONDS - waited)) s; log: $logs/$name.log)"
    else
        echo "tests: setup $name FAILED; the end of $logs/$name.log:"
        tail -30 "$logs/$name.log" | sed 's/^/    /'
        failed=1
    fi
    unset "pids[$name]"
done
[ "$failed" = 0 ] || exit 1
trap - EXIT
set +m

CARGO="$CARGO" FUZZ_SECONDS="$FUZZ_SECONDS" bash tests/fuzz/run.sh
$CARGO test --release --workspace
