#!/usr/bin/env bash
# Runs the checks and tests. Called by scripts/test.sh inside `dbus-run-session`;
# run that instead of this file.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
step() {
  say "$1"
  shift
  "$@" || die "step failed: $*"
}

[[ -n ${DBUS_SESSION_BUS_ADDRESS:-} ]] ||
  die "no D-Bus session: run the suite with 'bash scripts/test.sh', not this file"

# --- a fresh, private keychain -------------------------------------------------------
# A new HOME/XDG_DATA_HOME means gnome-keyring starts with no keyrings at all, so the
# tests never see (or touch) anyone's real secrets. Cargo and rustup keep their
# own homes so the toolchain and the build cache stay where they are.
export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
export RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
# Likewise a pyenv-managed python3 (where test.sh installed pyhpke) finds itself by HOME.
[[ -d $HOME/.pyenv && -z ${PYENV_ROOT:-} ]] && export PYENV_ROOT=$HOME/.pyenv
TEST_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/capvault-test.XXXXXX")
source scripts/services.sh
# The kernel keys this run made (see test.sh): with a gid of its own, those of that gid
# in the user keyring are removed at the end. Read through keyctl (`type;uid;gid;perm;
# description`), not /proc/keys, which containers may mask.
run_keys() {
  local id
  for id in $(keyctl rlist @u 2>/dev/null); do
    keyctl rdescribe "$id" 2>/dev/null | awk -F';' -v id="$id" -v gid="$1" \
      '$1 == "user" && $3 == gid && $5 ~ /^capvault:/ {print id}'
  done
}
remove_run_keys() {
  local id gid=${CAPVAULT_TEST_KEY_GID:-}
  if [[ -n $gid && $(id -g) == "$gid" ]]; then
    for id in $(run_keys "$gid"); do
      keyctl invalidate "$id" 2>/dev/null || true
    done
  elif command -v keyctl >/dev/null 2>&1; then
    say "note: the capvault keys this run made stay in the kernel user keyring until reboot (it holds $(run_keys "$(id -g)" | wc -l) of gid $(id -g); see scripts/test.sh)"
  fi
}
cleanup() {
  stop_services
  [[ -n ${PG_ROOT:-} ]] && rm -rf "$PG_ROOT"
  [[ -n ${GNOME_KEYRING_PID:-} ]] && kill "$GNOME_KEYRING_PID" 2>/dev/null || true
  rm -rf "$TEST_ROOT"
  # Last, and never fatal: what it cannot remove is only left where it was.
  remove_run_keys || true
}
trap cleanup EXIT
export HOME=$TEST_ROOT/home
export XDG_DATA_HOME=$TEST_ROOT/data
export XDG_CONFIG_HOME=$TEST_ROOT/config
export XDG_CACHE_HOME=$TEST_ROOT/cache
export XDG_RUNTIME_DIR=$TEST_ROOT/run
mkdir -p "$HOME" "$XDG_DATA_HOME" "$XDG_CONFIG_HOME" "$XDG_CACHE_HOME" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"

say "starting gnome-keyring (secrets component, unlocked, empty)"
# --unlock reads the password of the new login keyring from stdin; --daemonize prints
# GNOME_KEYRING_CONTROL and GNOME_KEYRING_PID, which we export.
daemon_env=$(printf 'capvault-test\n' |
  gnome-keyring-daemon --daemonize --unlock --components=secrets) ||
  die "gnome-keyring-daemon did not start (install gnome-keyring)"
while IFS='=' read -r name value; do
  [[ $name =~ ^[A-Z_]+$ ]] && export "$name=$value"
done <<<"$daemon_env"

# The daemon claims its bus name a moment after --daemonize returns; a client asking
# before that would have D-Bus start a second, locked daemon. Wait for the name.
for _ in $(seq 1 100); do
  if dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
    org.freedesktop.DBus.NameHasOwner string:org.freedesktop.secrets 2>/dev/null | grep -q 'boolean true'; then
    break
  fi
  sleep 0.1
done

# Prove the Secret Service works before running anything that depends on it.
probe=capvault-probe-$$
printf 'probe' | secret-tool store --label="capvault test probe" capvault-probe "$probe" ||
  die "secret-tool store failed: the Secret Service on the private D-Bus is not usable"
[[ $(secret-tool lookup capvault-probe "$probe") == probe ]] ||
  die "secret-tool lookup did not return what was stored"
secret-tool clear capvault-probe "$probe"

# Kernel keyutils: the user keyring must accept keys.
if command -v keyctl >/dev/null 2>&1; then
  id=$(keyctl add user "capvault:probe-$$" probe @u) ||
    die "cannot add a key to the kernel user keyring (keyctl add user ... @u)"
  keyctl unlink "$id" @u >/dev/null
fi

python3 -c 'import pyhpke' 2>/dev/null ||
  die "python3 cannot import pyhpke (test.sh installs it): check which python3 is on PATH"

# A real PostgreSQL for the collector's replica tests (two replicas, one database).
say "starting PostgreSQL (private cluster on loopback)"
# Outside TEST_ROOT: the cluster runs as the postgres user, who cannot enter it.
PG_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/capvault-pg.XXXXXX")
start_postgres "$PG_ROOT" || die "PostgreSQL did not start"

# `bash scripts/test.sh scale`: the replica tests with their blobs in a real
# S3-compatible store (Garage) as well as PostgreSQL; nothing else.
if [[ ${1:-} == scale ]]; then
  say "starting Garage (S3-compatible, single node)"
  start_garage "$TEST_ROOT/garage" || die "Garage did not start"
  step "collector scale tier: two replicas, PostgreSQL + S3" \
    cargo nextest run -p capvault-collector --test scale --test replicas --no-fail-fast
  say "scale tier passed"
  exit 0
fi

# `bash scripts/test.sh nextest ARGS...` runs only `cargo nextest run ARGS...` (for
# working on one test); with no arguments everything below runs.
if [[ ${1:-} == nextest ]]; then
  shift
  cargo nextest run "$@"
  exit 0
fi

# --- Rust checks ------------------------------------------------------------------
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy (warnings denied)" cargo clippy --workspace --all-targets -- -D warnings
# The C library's crate is also named `capvault` (so the artifact is libcapvault), and
# two crates of one name cannot be documented in one run: document it on its own.
step "cargo doc (warnings denied)" \
  env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --exclude capvault-ffi
step "cargo doc, C library crate (warnings denied)" \
  env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p capvault-ffi
step "cargo nextest" cargo nextest run --workspace --no-fail-fast
step "docs/RELIABILITY.md names only tests that exist" bash scripts/check-reliability-map.sh
step "vendor/sled is sled 0.34.7 with vendor/sled.patch" bash scripts/check-vendored-sled.sh

# --- fuzz smoke run ----------------------------------------------------------------
# Every target in fuzz/ for a few seconds from its seed corpus (FUZZ_SECONDS, default 5),
# built unoptimized without ASan to keep the build cheap (the corpora themselves are
# replayed on stable by tests/fuzz_corpus.rs); long runs: docs/RELIABILITY.md.
if cargo +nightly fuzz --version >/dev/null 2>&1; then
  step "fuzz smoke run (${FUZZ_SECONDS:-5} s per target)" bash scripts/fuzz.sh --dev "${FUZZ_SECONDS:-5}"
else
  say "skipping the fuzz smoke run: no nightly toolchain with cargo-fuzz"
fi

# --- C and Python FFI checks ------------------------------------------------------
# The committed header must be exactly what cbindgen generates from ffi/src.
check_header() {
  local fresh
  fresh=$(mktemp "$TEST_ROOT/capvault.h.XXXXXX")
  cbindgen --quiet --config cbindgen.toml --crate capvault-ffi --output "$fresh" ffi &&
    diff -u include/capvault.h "$fresh" ||
    { printf 'include/capvault.h is stale: regenerate it with\n  cbindgen --config cbindgen.toml --crate capvault-ffi --output include/capvault.h ffi\n' >&2; return 1; }
}
step "C header is up to date (cbindgen)" check_header
# The C example (also under valgrind, and from a prefix written by
# scripts/install-c.sh through pkg-config), the bad-input C program, the exit and fork
# C/C++ programs, the Python module's header check and the Python example are Rust
# integration tests (tests/ffi_c.rs, tests/ffi_process.rs, tests/ffi_python.rs) that
# build the library with cargo themselves, so they ran in the nextest step above (and
# with `bash scripts/test.sh nextest ffi_`).

say "all checks passed"
