#!/usr/bin/env bash
# Checks that every test docs/RELIABILITY.md names (`path/file.rs::test_name`) exists:
# the file defines it, and `cargo nextest list` lists it in the test binary that file
# belongs to. So the map of promises to tests cannot drift from the suite.
#
#   bash scripts/check-reliability-map.sh            # lists the tests itself (builds them)
#   bash scripts/check-reliability-map.sh LIST.txt   # checks against a saved
#                                                    # `cargo nextest list --workspace
#                                                    #  --message-format oneline`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MAP=docs/RELIABILITY.md
if [[ -n ${1:-} ]]; then
  list=$(cat "$1")
else
  list=$(cargo nextest list --workspace --message-format oneline)
fi

# The nextest binary id of a source file: crate name, plus `::name` for an integration
# test file (tests/name.rs).
binary_of() {
  local path=$1 crate rest
  case $path in
    collector/*) crate=capvault-collector rest=${path#collector/} ;;
    format/*) crate=capvault-format rest=${path#format/} ;;
    ffi/*) crate=capvault-ffi rest=${path#ffi/} ;;
    *) crate=capvault rest=$path ;;
  esac
  if [[ $rest == tests/*.rs && $rest != tests/*/* ]]; then
    local name=${rest#tests/}
    printf '%s::%s\n' "$crate" "${name%.rs}"
  else
    printf '%s\n' "$crate"
  fi
}

refs=$(grep -oE '`[A-Za-z0-9_./-]+\.rs::[A-Za-z0-9_]+`' "$MAP" | tr -d '`' | sort -u)
[[ -n $refs ]] || { echo "error: $MAP names no tests" >&2; exit 1; }
bad=0
count=0
while IFS= read -r ref; do
  count=$((count + 1))
  path=${ref%%::*}
  name=${ref##*::}
  if [[ ! -f $path ]]; then
    echo "error: $MAP names $ref, but $path does not exist" >&2
    bad=1
    continue
  fi
  if ! grep -qE "fn ${name}\(" "$path"; then
    echo "error: $MAP names $ref, but $path defines no fn $name" >&2
    bad=1
    continue
  fi
  bin=$(binary_of "$path")
  # oneline format: `<binary-id> <test name>`; unit tests carry their module path.
  if ! grep -qE "^${bin} (.*::)?${name}\$" <<<"$list"; then
    echo "error: $MAP names $ref, but \`cargo nextest list\` has no test $name in $bin" >&2
    bad=1
  fi
done <<<"$refs"
((bad == 0)) || exit 1
echo "$MAP: all $count named tests exist"
