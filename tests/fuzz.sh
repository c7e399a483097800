#!/usr/bin/env bash
# fuzz.sh -- builds carebridge's cargo-fuzz targets (fuzz/) and runs each one for a short, bounded
# time: the CI smoke run of docs/fuzzing.md. Fails if any target crashes, panics, hangs or leaks.
#
#   tests/fuzz.sh                  every target, FUZZ_SECONDS (default 20) seconds each
#   tests/fuzz.sh mime policy      only these targets
#   FUZZ_SECONDS=3600 tests/fuzz.sh   a longer run (the corpus grows in target/fuzz/corpus)
#
# Settings (environment, defaults shown):
#   FUZZ_SECONDS=20            libFuzzer -max_total_time per target
#   FUZZ_SANITIZER=none        none | address (ASan: ~2x slower; carebridge itself forbids unsafe
#                              code, so it only checks the dependencies' unsafe code)
#   FUZZ_TARGET_DIR=target/fuzz   cargo target dir of the fuzz build (separate from the main
#                              build: every crate is compiled with coverage flags)
#
# The toolchain is stable Rust: RUSTC_BOOTSTRAP=1 lets it take the -Z flags cargo fuzz passes
# (sanitizer, coverage passes). cargo-fuzz is installed from crates.io if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-$root/target/fuzz}
CARGO_FUZZ_VERSION=0.13.2   # the newest release; builds and runs with Rust 1.95
ALL_TARGETS=(mime webhook_body bot_update policy)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

flags=(--sanitizer "$FUZZ_SANITIZER" --target-dir "$FUZZ_TARGET_DIR")
start=$SECONDS
echo "fuzz: building ${targets[*]} (sanitizer: $FUZZ_SANITIZER)"
for t in "${targets[@]}"; do
    (cd fuzz && cargo fuzz build "${flags[@]}" "$t")
done
echo "fuzz: built in $((SECONDS - start)) s"

logs="$FUZZ_TARGET_DIR/logs"
mkdir -p "$logs"
failed=()
for t in "${targets[@]}"; do
    # New inputs go to the first corpus directory (kept in the target dir, so longer runs build on
    # earlier ones); the committed seeds in fuzz/corpus/<target> are only read.
    corpus="$FUZZ_TARGET_DIR/corpus/$t"
    mkdir -p "$corpus"
    log="$logs/$t.log"
    status=0
    # The outer timeout only catches a fuzzer that stops honouring -max_total_time; a single slow
    # input is libFuzzer's own -timeout (a failure, reported like a crash).
    (cd fuzz && timeout --signal=INT $((FUZZ_SECONDS + 300)) cargo fuzz run "${flags[@]}" "$t" "$corpus" "corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(grep -o 'exec/s: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2 || true)
    if [ "$status" -eq 0 ]; then
        echo "fuzz: $t: ok, ${execs:-?} executions (${rate:-?}/s)"
    else
        failed+=("$t")
        echo "fuzz: $t: FAILED (exit $status) after ${execs:-?} executions; log: $log"
        # The panic and its message, libFuzzer's verdict and the artifact's path
        # (fuzz/artifacts/<target>/crash-...); the whole log otherwise.
        grep -E -A1 "panicked at" "$log" | head -n 10 || true
        grep -E "ERROR:|SUMMARY|Test unit written|Base64" "$log" | head -n 10 || tail -n 40 "$log"
    fi
done

echo "fuzz: done in $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failing targets: ${failed[*]}; reproduce one with:"
    echo "  cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} <target> artifacts/<target>/<file>"
    exit 1
fi
