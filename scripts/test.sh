#!/usr/bin/env bash
# The whole test suite, in one command:  bash scripts/test.sh
#
# On a fresh Debian machine (as root) this installs what the tests need, only when it
# is missing, and then runs scripts/test-inner.sh inside a private D-Bus session so the
# Secret Service tests talk to a fresh, empty gnome-keyring instead of the user's own.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- system packages -----------------------------------------------------------------
# command that proves the package is present -> Debian package providing it
declare -A APT_FOR=(
  [gnome-keyring-daemon]=gnome-keyring
  [dbus-run-session]=dbus-daemon
  [secret-tool]=libsecret-tools
  [keyctl]=keyutils
  [valgrind]=valgrind
  [strace]=strace
  [fincore]=util-linux-extra
  [pkg-config]=pkg-config
  [cc]=gcc
  [python3]=python3
  [curl]=curl
  [update-ca-certificates]=ca-certificates
)
missing=()
for cmd in "${!APT_FOR[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT_FOR[$cmd]}")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null 2>&1 ||
    die "missing tools (${missing[*]}) and no apt-get: install them with your package manager"
  [[ $(id -u) -eq 0 ]] || die "missing packages (${missing[*]}): run as root or: sudo apt-get install ${missing[*]}"
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # dbus-daemon is its own package on Debian 12+; older releases ship it in dbus.
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    missing=("${missing[@]/dbus-daemon/dbus}")
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      die "apt-get install ${missing[*]} failed"
  fi
fi

# PostgreSQL for the collector's replica tests (its binaries are not on PATH on Debian).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is missing: install its server package"
  [[ $(id -u) -eq 0 ]] || die "PostgreSQL is missing: run as root or: sudo apt-get install postgresql"
  say "installing: postgresql"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null ||
    die "apt-get install postgresql failed"
fi

# --- Python (interop tests) --------------------------------------------------------
if ! python3 -c 'import pyhpke' 2>/dev/null; then
  say "installing the Python package pyhpke"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    [[ $(id -u) -eq 0 ]] || die "python3 has no pip: install python3-pip"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  python3 -m pip install --quiet pyhpke 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages pyhpke ||
    die "pip install pyhpke failed"
fi

# --- Rust tools ----------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs)"
if ! command -v cbindgen >/dev/null 2>&1; then
  say "installing cbindgen 0.29.4"
  cargo install cbindgen --version 0.29.4 --locked --quiet
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install cargo-nextest --locked --quiet
fi

# cargo-fuzz for the fuzz smoke run, only where a nightly toolchain is installed (the
# smoke run is skipped without one; docs/RELIABILITY.md).
if cargo +nightly --version >/dev/null 2>&1 && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi

# The S3 tier (`bash scripts/test.sh scale`) runs against a real Garage, pinned.
if [[ ${1:-} == scale ]] && ! command -v garage >/dev/null 2>&1; then
  source scripts/services.sh
  say "installing garage $GARAGE_VERSION (an S3-compatible object store; a long build, once)"
  cargo install garage --version "$GARAGE_VERSION" --locked --quiet \
    --no-default-features --features bundled-libs,sqlite
fi

# --- run everything in a private D-Bus session ---------------------------------------
# Kernel keyrings are not private: every process of a uid on this kernel (containers
# on one host included) shares that uid's keyring and its key quota, and the tests
# leave keys of vaults they never erase. As root the suite runs with a group of its
# own, so each key it makes carries that gid and test-inner.sh removes exactly those
# at the end, never the keys of anything else running beside it. Where that gid cannot
# be taken (a user namespace that maps few gids), or not as root, the keys stay (until
# reboot) and test-inner.sh says how many.
if [[ $(id -u) == 0 ]]; then
  run_gid=$((5000000 + RANDOM * 32768 + RANDOM))
  if setpriv --regid="$run_gid" --keep-groups true 2>/dev/null; then
    say "starting a private D-Bus session for the keychain tests (keys made with gid $run_gid)"
    export CAPVAULT_TEST_KEY_GID=$run_gid
    exec setpriv --regid="$run_gid" --keep-groups dbus-run-session -- bash scripts/test-inner.sh "$@"
  fi
fi
say "starting a private D-Bus session for the keychain tests"
exec dbus-run-session -- bash scripts/test-inner.sh "$@"
