#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 5), starting from the
# committed seed corpora; fails on the first crash, leak or timeout. Needs a nightly
# toolchain and cargo-fuzz (scripts/test.sh installs cargo-fuzz when nightly is there).
#
#   bash scripts/fuzz.sh            # smoke run, as in scripts/test.sh
#   bash scripts/fuzz.sh 600 record # one target for ten minutes
#
# New inputs go to a scratch directory, so the committed corpora stay as they are; a
# crashing input is kept in fuzz/artifacts/<target>/ (reproduce it with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-5}
shift || true
say() { printf '==> %s\n' "$*" >&2; }

cargo +nightly fuzz --version >/dev/null 2>&1 ||
  { printf 'error: needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked)\n' >&2; exit 1; }

targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)

scratch=$(mktemp -d "${TMPDIR:-/tmp}/capvault-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

start=$SECONDS
say "building ${#targets[@]} fuzz targets"
cargo +nightly fuzz build --fuzz-dir fuzz
say "built in $((SECONDS - start)) s"

for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
  say "fuzzing $t for $seconds s"
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=20 -print_final_stats=1 \
    2>"$scratch/$t.log" || {
    grep -E -A3 'panicked at|ERROR: ' "$scratch/$t.log" >&2
    tail -n 25 "$scratch/$t.log" >&2
    printf 'error: fuzz target %s failed\n' "$t" >&2
    exit 1
  }
  grep -E '^stat::number_of_executed_units' "$scratch/$t.log" | sed "s/^/    $t /" >&2 || true
done
say "fuzz run passed: ${#targets[@]} targets, $((SECONDS - start)) s in all"
