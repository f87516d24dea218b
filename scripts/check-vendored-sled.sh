#!/usr/bin/env bash
# Checks that vendor/sled is sled 0.34.7 as published on crates.io (its checksum as
# the crates.io index gives it) with exactly the changes in vendor/sled.patch, so the
# copy cannot drift unseen. vendor/README.md says what the changes are and why.
#
#   bash scripts/check-vendored-sled.sh          # check
#   bash scripts/check-vendored-sled.sh --write  # rewrite vendor/sled.patch from the copy
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VERSION=0.34.7
SHA256=7f96b4737c2ce5987354855aed3797279def4ebf734436c6aa4552cf8e169935
# The files of the published crate that the copy keeps.
KEPT=(Cargo.toml LICENSE-APACHE LICENSE-MIT README.md src)

work=$(mktemp -d "${TMPDIR:-/tmp}/capvault-vendored.XXXXXX")
trap 'rm -rf "$work"' EXIT

crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/sled-$VERSION.crate 2>/dev/null | head -n1 || true)
if [[ -z $crate ]]; then
  crate=$work/sled.crate
  curl --fail --silent --show-error --location --retry 3 \
    "https://static.crates.io/crates/sled/sled-$VERSION.crate" -o "$crate"
fi
echo "$SHA256  $crate" | sha256sum --check --quiet ||
  { printf 'error: %s is not the published sled %s\n' "$crate" "$VERSION" >&2; exit 1; }

mkdir "$work/upstream" "$work/a" "$work/b"
tar -xzf "$crate" -C "$work/upstream"
for f in "${KEPT[@]}"; do
  cp -r "$work/upstream/sled-$VERSION/$f" "$work/a/"
  cp -r "vendor/sled/$f" "$work/b/"
done
# Nothing in the copy beyond the kept files.
extra=$(cd vendor/sled && ls -A | grep -vxF -f <(printf '%s\n' "${KEPT[@]}") || true)
[[ -z $extra ]] || { printf 'error: vendor/sled holds files not from the crate: %s\n' "$extra" >&2; exit 1; }

(cd "$work" && git diff --no-index --no-prefix --no-color --diff-algorithm=myers a b >"$work/changes.patch") || true
if [[ ${1:-} == --write ]]; then
  cp "$work/changes.patch" vendor/sled.patch
  echo "wrote vendor/sled.patch"
  exit 0
fi
diff -u vendor/sled.patch "$work/changes.patch" ||
  { printf 'error: vendor/sled differs from sled %s by more (or less) than vendor/sled.patch\n' "$VERSION" >&2; exit 1; }
# And every build uses the copy: `[patch]` that no longer matches the version asked for
# is only a warning, and cargo then takes sled from the registry (a `source` line).
for lock in Cargo.lock harness/Cargo.lock fuzz/Cargo.lock; do
  awk -v lock="$lock" -v version="$VERSION" '
    /^\[\[package\]\]/ { in_sled = 0 }
    /^name = "sled"$/ { in_sled = 1; found = 1 }
    in_sled && /^version = / && $3 != "\"" version "\"" { print "error: " lock " builds sled " $3 ", not " version; bad = 1 }
    in_sled && /^source = / { print "error: " lock " takes sled from " $3 ", not vendor/sled"; bad = 1 }
    END { if (!found) { print "error: " lock " has no sled"; bad = 1 } exit bad }
  ' "$lock" >&2
done
echo "vendor/sled is sled $VERSION with vendor/sled.patch, and every lock file builds it"
