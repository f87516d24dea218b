#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (or the ones named) for SECONDS each, starting from
# the committed seed corpora; fails on the first crash, timeout or (with
# AddressSanitizer) leak. Needs a nightly toolchain and cargo-fuzz (scripts/test.sh
# installs cargo-fuzz when nightly is there). Commands and figures: docs/RELIABILITY.md.
#
#   bash scripts/fuzz.sh --dev 5       # the smoke run of scripts/test.sh
#   bash scripts/fuzz.sh 3600          # every target for an hour (optimized, ASan)
#   bash scripts/fuzz.sh 600 record    # chosen targets
#
# --dev builds without optimizations and without AddressSanitizer: a fresh build costs
# a few CPU-minutes instead of about 13, at a fraction of the executions per second.
# Builds go to $CARGO_TARGET_DIR/fuzz (target/fuzz), apart from the workspace's.
# New inputs go to a scratch directory, so the committed corpora stay as they are; a
# crashing input is kept in fuzz/artifacts/<target>/ (reproduce it with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`; add it to the
# corpus once fixed, so the stable replay in tests/fuzz_corpus.rs keeps it fixed).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=(--release --debug-assertions)
profile=release
if [[ ${1:-} == --dev ]]; then
  mode=(--dev -s none)
  profile=debug
  shift
fi
seconds=${1:-5}
shift || true
say() { printf '==> %s\n' "$*" >&2; }

cargo +nightly fuzz --version >/dev/null 2>&1 ||
  { printf 'error: needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked)\n' >&2; exit 1; }

targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)

target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
scratch=$(mktemp -d "${TMPDIR:-/tmp}/capvault-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

start=$SECONDS
say "building ${#targets[@]} fuzz targets (${mode[*]})"
cargo +nightly fuzz build "${mode[@]}" --fuzz-dir fuzz --target-dir "$target_dir"
say "built in $((SECONDS - start)) s"

total=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
  say "fuzzing $t for $seconds s"
  "$target_dir/$host/$profile/$t" "$scratch/$t" "fuzz/corpus/$t" \
    -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$seconds" -timeout=20 \
    -print_final_stats=1 2>"$scratch/$t.log" || {
    grep -E -A3 'panicked at|ERROR: ' "$scratch/$t.log" >&2
    tail -n 25 "$scratch/$t.log" >&2
    printf 'error: fuzz target %s failed\n' "$t" >&2
    exit 1
  }
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")
  total=$((total + ${runs:-0}))
  printf '    %-13s %10s executions\n' "$t" "${runs:-?}" >&2
done
say "fuzz run passed: ${#targets[@]} targets, $total executions, $((SECONDS - start)) s in all"
