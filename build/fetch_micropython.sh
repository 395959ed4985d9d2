#!/bin/sh
# Fetch Debian's MicroPython 1.25.0 source package (DESIGN.md 9, 12) and
# unpack it, with the Debian patches applied, into build/micropython/src.
#
# The host's apt configuration is left alone: apt runs with a private
# configuration (APT_CONFIG=build/cache/apt-src/apt.conf) whose only source is
# `deb-src http://deb.debian.org/debian trixie main` and whose state, lists
# and cache live under build/cache/apt-src. Works on Debian 12 and 13 hosts.
# Idempotent: a second run only checks a stamp file.
#
# Usage: build/fetch_micropython.sh            (or: sh build/fetch_micropython.sh)
#   MPY_DEB_VERSION=1.25.0+ds-1  pin the exact Debian version (default: any 1.25.0)
#   FORCE=1                      unpack again even if the stamp is present
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
APTDIR="$HERE/cache/apt-src"
DLDIR="$APTDIR/download"
DEST="$HERE/micropython/src"
STAMP="$DEST/.stubdm-fetched"
WANT="${MPY_DEB_VERSION:-1.25.0}"
SUITE=trixie
MIRROR=http://deb.debian.org/debian

step() { echo "fetch_micropython: $*"; }

# 0. Already done?
if [ "${FORCE:-0}" != 1 ] && [ -f "$STAMP" ] \
        && grep -q "^micropython $WANT" "$STAMP"; then
    step "already unpacked: $(cat "$STAMP") in ${DEST#$ROOT/} (FORCE=1 to redo)"
    exit 0
fi

# 1. Tools: apt-get source needs dpkg-source (dpkg-dev) to unpack.
if ! command -v dpkg-source >/dev/null 2>&1; then
    step "installing dpkg-dev (needed for dpkg-source)"
    # A fresh machine (or container) may have no package lists yet.
    apt-get install -y --no-install-recommends dpkg-dev >/dev/null 2>&1 || {
        apt-get -q update >/dev/null &&
        apt-get install -y --no-install-recommends dpkg-dev >/dev/null; }
else
    step "dpkg-source present"
fi

# 2. Private apt configuration: nothing under /etc/apt is read or written
#    except the trusted keys (the archive keyring).
KEYRING=
for k in /usr/share/keyrings/debian-archive-keyring.pgp \
         /usr/share/keyrings/debian-archive-keyring.gpg; do
    if [ -f "$k" ]; then KEYRING=$k; break; fi
done
mkdir -p "$APTDIR/state/lists/partial" "$APTDIR/cache/archives/partial" \
         "$APTDIR/etc/apt.conf.d" "$APTDIR/etc/preferences.d" \
         "$APTDIR/etc/sources.list.d" "$DLDIR"
: > "$APTDIR/state/status.empty"
if [ -n "$KEYRING" ]; then
    echo "deb-src [signed-by=$KEYRING] $MIRROR $SUITE main" > "$APTDIR/etc/sources.list.new"
else
    echo "deb-src $MIRROR $SUITE main" > "$APTDIR/etc/sources.list.new"
fi
mv "$APTDIR/etc/sources.list.new" "$APTDIR/etc/sources.list"
# Keep the host's proxy setting, if any (read-only use of the host config).
PROXY=$(apt-config dump 2>/dev/null | sed -n 's/^Acquire::http::Proxy "\(.*\)";$/\1/p' | head -n1)
cat > "$APTDIR/apt.conf" <<EOF
// Private apt configuration for build/fetch_micropython.sh (generated).
Dir::Etc::main "$APTDIR/etc/apt.conf";
Dir::Etc::parts "$APTDIR/etc/apt.conf.d";
Dir::Etc::sourcelist "$APTDIR/etc/sources.list";
Dir::Etc::sourceparts "$APTDIR/etc/sources.list.d";
Dir::Etc::preferences "$APTDIR/etc/preferences";
Dir::Etc::preferencesparts "$APTDIR/etc/preferences.d";
Dir::State "$APTDIR/state";
Dir::State::lists "$APTDIR/state/lists";
Dir::State::status "$APTDIR/state/status.empty";
Dir::Cache "$APTDIR/cache";
Dir::Cache::archives "$APTDIR/cache/archives";
Dir::Log "$APTDIR/log";
APT::Sandbox::User "root";
APT::Get::List-Cleanup "false";
Acquire::Languages "none";
Acquire::IndexTargets::deb-src::Sources::KeepCompressed "true";
EOF
if [ -n "$PROXY" ]; then
    echo "Acquire::http::Proxy \"$PROXY\";" >> "$APTDIR/apt.conf"
fi
APT_CONFIG="$APTDIR/apt.conf"
export APT_CONFIG
step "private apt config ${APT_CONFIG#$ROOT/} (deb-src $SUITE main, keyring ${KEYRING:-host default})"

# 3. Sources index (skipped when a fresh-enough one is already there).
if ls "$APTDIR/state/lists/"*_"$SUITE"_main_source_Sources* >/dev/null 2>&1 \
        && [ "${REFRESH:-0}" != 1 ]; then
    step "trixie Sources index cached (REFRESH=1 to update)"
else
    step "apt-get update (trixie Sources only)"
    apt-get -q update > "$APTDIR/update.log" 2>&1 || {
        cat "$APTDIR/update.log" >&2; exit 1; }
fi

# 4. Which version?
VER=$(apt-cache showsrc micropython 2>/dev/null | sed -n 's/^Version: //p' | grep "^$WANT" | sort -V | tail -n1 || true)
if [ -z "$VER" ]; then
    echo "fetch_micropython: no micropython source $WANT* in $SUITE:" >&2
    apt-cache showsrc micropython 2>&1 | grep -E '^(Package|Version):' >&2 || true
    exit 1
fi
step "micropython source version $VER"

# 5. Download .dsc, .orig and .debian tarballs (kept in the cache).
DSC="$DLDIR/micropython_$(echo "$VER" | sed 's/^[0-9]*://').dsc"
if [ -f "$DSC" ]; then
    step "source files already downloaded (${DLDIR#$ROOT/})"
else
    step "apt-get source --download-only micropython=$VER"
    (cd "$DLDIR" && apt-get -q source --download-only "micropython=$VER") \
        > "$APTDIR/source.log" 2>&1 || { cat "$APTDIR/source.log" >&2; exit 1; }
fi

# 6. Unpack with the Debian patches applied, then move into place.
step "dpkg-source -x $(basename "$DSC") -> ${DEST#$ROOT/}"
TMP="$HERE/micropython/src.tmp.$$"
rm -rf "$TMP"
mkdir -p "$HERE/micropython"
dpkg-source -q -x "$DSC" "$TMP" > "$APTDIR/unpack.log" 2>&1 || {
    cat "$APTDIR/unpack.log" >&2; rm -rf "$TMP"; exit 1; }
rm -rf "$DEST"
mv "$TMP" "$DEST"
echo "micropython $VER" > "$STAMP"
step "done: $(cat "$STAMP"), $(du -sh "$DEST" | cut -f1) in ${DEST#$ROOT/}"
