#!/usr/bin/env bash
# The C path side by side with the Rust path (SPEC P1: C >= 90% of Rust):
#
#   scripts/bench-c-vs-rust.sh [THREADS...]      (default: 1 2 4; EVENTS=2000000, REPEATS=5)
#
# Builds the release library and ffi/examples/append_rust.rs, compiles
# examples/c/bench_append.c against the library, then for each thread count runs the two
# alternately REPEATS times (fresh vault each run, keys in kernel keyutils) and prints
# the median events/s of each, their ratio, and the median of the ratios of each C run
# to the Rust run just before it (the machine's speed drifts between minutes; a pair
# shares it).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
EVENTS=${EVENTS:-2000000}
REPEATS=${REPEATS:-5}
THREADS=("$@")
[[ ${#THREADS[@]} -gt 0 ]] || THREADS=(1 2 4)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}

cargo build --quiet --release -p capvault-ffi --lib --example append_rust
work=$(mktemp -d "${TMPDIR:-/tmp}/capvault-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
scripts/install-c.sh "$work/prefix" --from "$TARGET/release" >/dev/null
cc -O2 -std=c11 -pthread examples/c/bench_append.c -I "$work/prefix/include" \
  -L "$work/prefix/lib" -Wl,-rpath,"$work/prefix/lib" -lcapvault -o "$work/bench_append"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '| threads | Rust path (events/s, median of %s) | C path | C / Rust | paired C / Rust |\n|---|---|---|---|---|\n' "$REPEATS"
for t in "${THREADS[@]}"; do
  : >"$work/rust" && : >"$work/c"
  for r in $(seq 1 "$REPEATS"); do
    "$TARGET/release/examples/append_rust" "$work/r$t-$r" "$t" "$EVENTS" | awk '{print $(NF-1)}' >>"$work/rust"
    "$work/bench_append" "$work/c$t-$r" "$t" "$EVENTS" | awk '{print $(NF-1)}' >>"$work/c"
    # The C API has no erase; without one the vault's keys stay in the kernel keyring.
    "$TARGET/release/examples/append_rust" --erase "$work/c$t-$r"
    rm -rf "$work/r$t-$r" "$work/c$t-$r"
  done
  rust=$(median <"$work/rust")
  c=$(median <"$work/c")
  paired=$(paste "$work/c" "$work/rust" | awk '{print 100 * $1 / $2}' | median)
  awk -v t="$t" -v r="$rust" -v c="$c" -v p="$paired" \
    'BEGIN {printf "| %s | %.2f M | %.2f M | %.1f%% | %.1f%% |\n", t, r/1e6, c/1e6, 100*c/r, p}'
done
