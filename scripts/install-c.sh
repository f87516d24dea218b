#!/usr/bin/env bash
# Installs the capvault C library into a prefix, as a C library is installed:
#
#   scripts/install-c.sh PREFIX [--from DIR]
#
#   PREFIX/lib/libcapvault.so.ABI.Y.Z      the shared library (SONAME libcapvault.so.ABI)
#   PREFIX/lib/libcapvault.so.ABI          -> libcapvault.so.ABI.Y.Z  (what programs load)
#   PREFIX/lib/libcapvault.so              -> libcapvault.so.ABI    (what -lcapvault finds)
#   PREFIX/lib/libcapvault.a               the static library
#   PREFIX/lib/pkgconfig/capvault.pc       generated from capvault.pc.in
#   PREFIX/include/capvault.h
#
# Without --from it builds the release library first (cargo build --release -p
# capvault-ffi); --from DIR installs the libcapvault.so/.a already built in DIR. Debug
# information is stripped from the installed copies (not from DIR). DESTDIR is honoured
# for staging a package: files go to $DESTDIR$PREFIX, the .pc file names $PREFIX.
# X.Y.Z and ABI come from include/capvault.h (CAPVAULT_VERSION_*, CAPVAULT_ABI_VERSION).
# The file name starts with the SONAME, followed by the minor and patch version, as
# ldconfig, libtool and distribution packaging expect: `ldconfig -n PREFIX/lib` makes
# the same SONAME link, and a newer release of one ABI sorts after an older one.
set -euo pipefail

die() { printf 'install-c: %s\n' "$*" >&2; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $# -ge 1 ]] || die "usage: scripts/install-c.sh PREFIX [--from DIR]"
PREFIX=$1
shift
FROM=
while [[ $# -gt 0 ]]; do
  case $1 in
    --from) [[ $# -ge 2 ]] || die "--from needs a directory"; FROM=$2; shift 2 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ $PREFIX == /* ]] || die "PREFIX must be an absolute path (the .pc file names it): $PREFIX"
[[ $(uname -s) == Linux ]] || die "only Linux is supported by this script so far"

header=$REPO/include/capvault.h
define() {
  local v
  v=$(sed -n "s/^#define $1 \\([0-9][0-9]*\\)\$/\\1/p" "$header")
  [[ -n $v ]] || die "no #define $1 in $header"
  printf '%s' "$v"
}
VERSION=$(define CAPVAULT_VERSION_MAJOR).$(define CAPVAULT_VERSION_MINOR).$(define CAPVAULT_VERSION_PATCH)
ABI=$(define CAPVAULT_ABI_VERSION)

if [[ -z $FROM ]]; then
  (cd "$REPO" && cargo build --release -p capvault-ffi --lib) || die "cargo build failed"
  FROM=${CARGO_TARGET_DIR:-$REPO/target}/release
fi
for f in libcapvault.so libcapvault.a; do
  [[ -f $FROM/$f ]] || die "$FROM/$f not found (build it, or pass --from DIR)"
done
soname=$(readelf -d "$FROM/libcapvault.so" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
[[ $soname == "libcapvault.so.$ABI" ]] ||
  die "$FROM/libcapvault.so has SONAME '${soname:-none}', the header says libcapvault.so.$ABI: rebuild it"

root=${DESTDIR:-}$PREFIX
libdir=$root/lib
install -d -m 755 "$libdir/pkgconfig" "$root/include"

real=libcapvault.so.$ABI.$(define CAPVAULT_VERSION_MINOR).$(define CAPVAULT_VERSION_PATCH)
install -m 755 "$FROM/libcapvault.so" "$libdir/$real"
install -m 644 "$FROM/libcapvault.a" "$libdir/libcapvault.a"
if command -v strip >/dev/null; then
  strip --strip-debug "$libdir/$real" "$libdir/libcapvault.a"
fi
ln -sfn "$real" "$libdir/libcapvault.so.$ABI"
ln -sfn "libcapvault.so.$ABI" "$libdir/libcapvault.so"
install -m 644 "$header" "$root/include/capvault.h"
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@VERSION@|$VERSION|g" \
  "$REPO/capvault.pc.in" > "$libdir/pkgconfig/capvault.pc"
chmod 644 "$libdir/pkgconfig/capvault.pc"

printf 'installed capvault %s (ABI %s) into %s\n' "$VERSION" "$ABI" "$root"
