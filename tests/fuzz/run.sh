#!/usr/bin/env bash
# Builds the plugin fuzz targets (tests/fuzz/fuzz_targets) natively and runs
# each for SECONDS seconds, one libFuzzer process per core at a time
# (FUZZ_JOBS to change it; libFuzzer is single-threaded).
#
#   bash tests/fuzz/run.sh [SECONDS]      # per target; or FUZZ_SECONDS=...; default 10
#   FUZZ_TOTAL_SECONDS=600 bash tests/fuzz/run.sh   # 600 s shared equally by the targets
#   FUZZ_TARGETS="s3_scan e2b_normalize" bash tests/fuzz/run.sh 600
#   FUZZ_BUILD_ONLY=1 bash tests/fuzz/run.sh       # install and build, run nothing
#
# `make fuzz` is the short run (part of `make test`), `make fuzz-long` the
# long one (600 s of fuzzing, 5 minutes on 2 cores). Installs cargo-fuzz from crates.io when it is missing and
# builds with the machine's stable toolchain: RUSTC_BOOTSTRAP=1 lets it take
# the unstable flags cargo-fuzz may pass, so no nightly is needed.
#
# Each target starts from its committed seeds (tests/fuzz/corpus/<target>,
# derived from tests/fixtures by make-seeds.py, never written to) plus what
# earlier runs found (tests/fuzz/grown/<target>, not committed). A crash or a
# failed property is saved under tests/fuzz/artifacts/<target>/; the script
# goes on with the other targets, then exits 1 naming each failure and the
# command that reproduces it. Sanitizer: none by default (the plugins are
# safe Rust; properties and overflow checks are what fail), FUZZ_SANITIZER=
# address to run under ASan.
set -euo pipefail

cd "$(dirname "$0")/../.."
FUZZ_DIR=tests/fuzz
seconds="${1:-${FUZZ_SECONDS:-10}}"
total="${FUZZ_TOTAL_SECONDS:-}"
sanitizer="${FUZZ_SANITIZER:-none}"
for n in "$seconds" ${total:+"$total"}; do
    if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
        echo "fuzz: seconds must be a whole number above 0, got '$n'" >&2
        exit 2
    fi
done

CARGO="${CARGO:-cargo}"
if ! $CARGO fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (crates.io)"
    # A debug build (27 s instead of 43 s): it only starts cargo.
    $CARGO install cargo-fuzz --locked --debug --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
triple=$(rustc -vV | sed -n 's/^host: //p')
common=(--fuzz-dir "$FUZZ_DIR" --sanitizer "$sanitizer" --target "$triple")

targets="${FUZZ_TARGETS:-$($CARGO fuzz list --fuzz-dir "$FUZZ_DIR")}"
count=$(echo $targets | wc -w)
if [ -n "$total" ]; then
    seconds=$(( total / count > 0 ? total / count : 1 ))
fi
started=$SECONDS
plural=$([ "$count" -eq 1 ] || echo s)
if [ -n "${FUZZ_BUILD_ONLY:-}" ]; then
    echo "fuzz: building $count target$plural (sanitizer: $sanitizer)"
    $CARGO fuzz build "${common[@]}"
    exit 0
fi
jobs_at_once="${FUZZ_JOBS:-$(nproc)}"
if ! [[ "$jobs_at_once" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz: FUZZ_JOBS must be a whole number above 0, got '$jobs_at_once'" >&2
    exit 2
fi
echo "fuzz: building $count target$plural (sanitizer: $sanitizer), then ${seconds}s each, $jobs_at_once at a time"
$CARGO fuzz build "${common[@]}"

logs="$FUZZ_DIR/target/logs"
mkdir -p "$logs"

# One target's run; its exit status goes to $logs/<target>.status.
fuzz_one() {
    local target=$1 status=0
    mkdir -p "$FUZZ_DIR/grown/$target" "$FUZZ_DIR/artifacts/$target"
    # What `cargo fuzz run` runs, without a cargo call per target. The first
    # corpus directory receives new inputs; the seeds stay as committed.
    "$FUZZ_DIR/target/$triple/release/$target" -artifact_prefix="$FUZZ_DIR/artifacts/$target/" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "$FUZZ_DIR/grown/$target" "$FUZZ_DIR/corpus/$target" >"$logs/$target.log" 2>&1 || status=$?
    echo "$status" >"$logs/$target.status"
}

running=0
for target in $targets; do
    if [ "$running" -ge "$jobs_at_once" ]; then
        wait -n
        running=$((running - 1))
    fi
    rm -f "$logs/$target.status"
    fuzz_one "$target" &
    running=$((running + 1))
done
wait

# The verdicts, in the targets' order.
failed=()
for target in $targets; do
    log="$logs/$target.log"
    status=$(cat "$logs/$target.status" 2>/dev/null || echo "unknown")
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1 || true)
    corpus=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 || true)
    if [ "$status" = 0 ]; then
        printf 'fuzz: %-22s ok      %9s execs %7s/s  %s  %s\n' "$target" "${runs:-?}" "${rate:-?}" "$cov" "$corpus"
        continue
    fi
    artifact=$(grep -o "Test unit written to [^ ]*" "$log" | tail -1 | sed 's/Test unit written to //' || true)
    printf 'fuzz: %-22s FAILED  (exit %s) after %s execs; log: %s\n' "$target" "$status" "${runs:-?}" "$log"
    # What failed: the panic message (or libFuzzer's reason) and where.
    { grep -A 6 "panicked at" "$log" | grep -v -E "^ *(stack backtrace|[0-9]+: |at )" | head -8 || true
      grep -E "^==[0-9]+== ERROR: libFuzzer" "$log" | head -1 || true; } | sed 's/^/    /'
    grep -q -E "panicked at|ERROR: libFuzzer" "$log" || tail -20 "$log" | sed 's/^/    /'
    if [ -n "$artifact" ]; then
        echo "    input: $artifact"
        echo "    reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir $FUZZ_DIR --sanitizer $sanitizer $target $artifact"
        echo "    (or its Debug form: RUSTC_BOOTSTRAP=1 cargo fuzz fmt --fuzz-dir $FUZZ_DIR --sanitizer $sanitizer $target $artifact)"
        failed+=("$target: $artifact")
    else
        failed+=("$target: no artifact written; see $log")
    fi
done

elapsed=$((SECONDS - started))
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED ${#failed[@]} of $count target$plural (${elapsed}s):"
    printf '    %s\n' "${failed[@]}"
    exit 1
fi
echo "fuzz: all $count target$plural ran ${seconds}s each without a failure (${elapsed}s in all)"
