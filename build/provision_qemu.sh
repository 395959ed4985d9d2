#!/usr/bin/env bash
# Provision QEMU >= 10.1 (Debian trixie-backports' qemu-system-x86, 11.1.x:
# vfio-user-pci client + qtest accelerator) without touching the host's libc.
#
# A minimal Debian 13 (trixie) tree is debootstrapped into build/trixie-root
# and QEMU is installed there from trixie-backports. build/qemu-system-x86_64
# is a wrapper that runs that QEMU on the HOST (not chrooted: socket paths and
# files on the command line are host paths) through the tree's own dynamic
# loader, with its libraries, modules (QEMU_MODULE_DIR) and firmware (-L).
#
# Works on Debian 12 and 13 hosts, as root. Idempotent: a stamp file makes a
# second run take well under a second. Usage: build/provision_qemu.sh [--force]
#   --force   redo the QEMU install step in the existing tree and rewrite
#             the wrapper (the debootstrap step is kept if it had finished).
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

BUILD_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$BUILD_DIR/trixie-root"
WRAPPER="$BUILD_DIR/qemu-system-x86_64"
STAMP="$BUILD_DIR/.provision_qemu.stamp"
BOOTSTRAP_STAMP="$ROOT/.stubdm-debootstrap-done"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Bump when the set of packages or the wrapper changes: forces a redo.
STAMP_VERSION="4"
# qemu-system-common carries accel-qtest.so; seabios/ipxe-qemu the firmware;
# qemu-system-xen is Xen's own device model (qemu-xen) of the same QEMU
# version: the peer stubdm is measured against, run on host_sim with
# host_sim's Xen libraries (host_sim/qemu_xen.py).
PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu qemu-system-xen)
# In build/out (ignored, ours): not next to the engine's wrapper.
XEN_WRAPPER="$BUILD_DIR/out/qemu-system-xen"

step() { echo "provision_qemu: $*"; }
die() { echo "provision_qemu: ERROR: $*" >&2; exit 1; }

FORCE=0
for a in "$@"; do
    case "$a" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument: $a" ;;
    esac
done

# ---------------------------------------------------------------- fast path
wrapper_ok() {
    [[ -x "$WRAPPER" ]] || return 1
    local v
    v="$("$WRAPPER" --version 2>/dev/null)" || return 1
    QEMU_VERSION_LINE="${v%%$'\n'*}"
    [[ "$v" =~ version\ ([0-9]+)\.([0-9]+) ]] || return 1
    local maj="${BASH_REMATCH[1]}" min="${BASH_REMATCH[2]}"
    (( maj > 10 || (maj == 10 && min >= 1) ))
}

if [[ $FORCE -eq 0 && -f "$STAMP" && "$(cat "$STAMP" 2>/dev/null)" == "$STAMP_VERSION" ]] \
        && [[ -x "$XEN_WRAPPER" ]] && wrapper_ok; then
    step "already provisioned: $QEMU_VERSION_LINE"
    exit 0
fi

# ------------------------------------------------------------------- checks
[[ "$(id -u)" -eq 0 ]] || die "must run as root (debootstrap/chroot)"
[[ "$(uname -m)" == "x86_64" ]] || die "only x86_64 hosts are supported (got $(uname -m))"
[[ -r /etc/debian_version ]] || die "not a Debian host (/etc/debian_version missing)"

# --------------------------------------------------------- mount management
MOUNTED=()
cleanup() {
    local i
    for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do
        umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" 2>/dev/null || \
            echo "provision_qemu: WARNING: could not unmount ${MOUNTED[$i]}" >&2
    done
    MOUNTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mounts_under_root() {
    # Any mount point at or below $ROOT (resolved)?
    local r
    r="$(readlink -f "$ROOT" 2>/dev/null || echo "$ROOT")"
    awk -v r="$r" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/mounts
}

do_mount() {  # do_mount TARGET mount-args...
    local target="$1"; shift
    mkdir -p "$target"
    if mountpoint -q "$target"; then return 0; fi
    mount "$@" "$target" || die "mount $* $target failed"
    MOUNTED+=("$target")
}

# ------------------------------------------------------ host: debootstrap
if ! command -v debootstrap >/dev/null 2>&1; then
    step "installing debootstrap on the host"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends debootstrap >/dev/null 2>&1; then
        apt-get update >/dev/null 2>&1 || die "apt-get update failed on the host"
        apt-get install -y --no-install-recommends debootstrap >/dev/null \
            || die "apt-get install debootstrap failed on the host"
    fi
fi
[[ -e /usr/share/debootstrap/scripts/trixie ]] \
    || die "this debootstrap has no 'trixie' script; upgrade debootstrap"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -r "$KEYRING" ]] || die "$KEYRING missing (apt-get install debian-archive-keyring)"

# ----------------------------------------------------- step 1: debootstrap
if [[ ! -f "$BOOTSTRAP_STAMP" ]]; then
    if [[ -e "$ROOT" ]]; then
        [[ -z "$(mounts_under_root)" ]] \
            || die "refusing to remove $ROOT: mounts below it: $(mounts_under_root | tr '\n' ' ')"
        step "removing incomplete $ROOT"
        rm -rf --one-file-system "$ROOT"
    fi
    step "debootstrap --variant=minbase trixie into build/trixie-root (about 1 min)"
    LOG="$BUILD_DIR/.debootstrap.log"
    if ! debootstrap --variant=minbase --keyring="$KEYRING" trixie "$ROOT" "$MIRROR" \
            >"$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        [[ -f "$ROOT/debootstrap/debootstrap.log" ]] && tail -n 20 "$ROOT/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (full log: $LOG; an old host debian-archive-keyring without the trixie keys? apt-get install debian-archive-keyring)"
    fi
    touch "$BOOTSTRAP_STAMP"
else
    step "debootstrap already done (build/trixie-root)"
fi

# ------------------------------------------- step 2: configure apt sources
step "configuring trixie + trixie-backports sources in the tree"
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: trixie trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# No daemons are ever started inside the tree.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
# Keep the tree small: no docs, man pages, locales.
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/stubdm-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true

# ------------------------------------------------- step 3: install QEMU
step "installing ${PACKAGES[*]} from trixie-backports in the tree"
do_mount "$ROOT/proc" -t proc proc
do_mount "$ROOT/sys" -t sysfs sysfs
do_mount "$ROOT/dev" --bind /dev
do_mount "$ROOT/dev/pts" --bind /dev/pts
LOG="$BUILD_DIR/.apt.log"
in_root() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root "$@"
}
apt_install() {
    in_root apt-get -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        install -y -t trixie-backports --no-install-recommends "${PACKAGES[@]}"
}
{
    in_root apt-get update || { sleep 5; in_root apt-get update; }
} >"$LOG" 2>&1 || { tail -n 20 "$LOG" >&2; die "apt-get update in the tree failed (log: $LOG)"; }
if ! apt_install >>"$LOG" 2>&1; then
    # dpkg sometimes stops on one package; 'apt-get -f install' usually cures it.
    step "first install attempt failed; retrying with apt-get -f install"
    { in_root dpkg --configure -a; in_root apt-get -f install -y --no-install-recommends; \
      apt_install; } >>"$LOG" 2>&1 \
        || { tail -n 30 "$LOG" >&2; die "installing QEMU in the tree failed (log: $LOG)"; }
fi
in_root apt-get clean >/dev/null 2>&1 || true
cleanup

# ------------------------------------------------------ step 4: check tree
step "checking the tree's QEMU files"
LOADER="$ROOT/lib64/ld-linux-x86-64.so.2"
[[ -e "$LOADER" ]] || die "dynamic loader missing in tree: $LOADER"
[[ -x "$ROOT/usr/bin/qemu-system-x86_64" ]] || die "qemu-system-x86_64 missing in tree"
MODDIR="$ROOT/usr/lib/x86_64-linux-gnu/qemu"
[[ -e "$MODDIR/accel-qtest.so" ]] || die "accel-qtest.so missing in $MODDIR"
for f in bios-256k.bin kvmvapic.bin; do
    [[ -e "$ROOT/usr/share/qemu/$f" || -e "$ROOT/usr/share/seabios/$f" ]] \
        || die "firmware $f missing in tree"
done

# ------------------------------------------------------ step 5: wrapper
step "writing build/qemu-system-x86_64 wrapper"
cat >"$WRAPPER.tmp" <<'EOF'
#!/bin/sh
# Generated by build/provision_qemu.sh: runs QEMU from build/trixie-root on
# the host (not chrooted) through the tree's own dynamic loader.
HERE=$(dirname "$(readlink -f "$0")")
ROOT="$HERE/trixie-root"
if [ ! -x "$ROOT/usr/bin/qemu-system-x86_64" ]; then
    echo "qemu-system-x86_64 wrapper: $ROOT is missing; run build/provision_qemu.sh" >&2
    exit 127
fi
LIB="$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu"
# Modules (accel-qtest.so, ...) from the tree, never the host's.
QEMU_MODULE_DIR="$ROOT/usr/lib/x86_64-linux-gnu/qemu"
export QEMU_MODULE_DIR
unset LD_PRELOAD LD_LIBRARY_PATH
# -L: QEMU looks for firmware in its compiled-in /usr/share/... paths (the
# HOST's) and next to /proc/self/exe (here the loader), so name the tree's:
# /usr/share/qemu (QEMU's own ROMs, keymaps, ipxe-qemu's pxe-/efi-*.rom) and
# /usr/share/seabios (bios-256k.bin, vgabios-*.bin).
exec "$ROOT/lib64/ld-linux-x86-64.so.2" --library-path "$LIB" \
    --argv0 "$0" "$ROOT/usr/bin/qemu-system-x86_64" \
    -L "$ROOT/usr/share/qemu" -L "$ROOT/usr/share/seabios" \
    "$@"
EOF
chmod 755 "$WRAPPER.tmp"
mv -f "$WRAPPER.tmp" "$WRAPPER"

[[ -x "$ROOT/usr/libexec/xen-qemu-system-i386" ]] \
    || die "qemu-system-xen's xen-qemu-system-i386 missing in tree"
mkdir -p "$BUILD_DIR/out"
step "writing build/out/qemu-system-xen wrapper"
cat >"$XEN_WRAPPER.tmp" <<'EOF'
#!/bin/sh
# Generated by build/provision_qemu.sh: runs qemu-xen (Debian's
# qemu-system-xen) from build/trixie-root on the host through the tree's own
# dynamic loader. The caller's LD_LIBRARY_PATH comes first, so host_sim's Xen
# libraries (build/out/libsim-xen) replace Xen's there and nowhere else.
HERE=$(dirname "$(readlink -f "$0")")
ROOT="$HERE/../trixie-root"
BIN="$ROOT/usr/libexec/xen-qemu-system-i386"
if [ ! -x "$BIN" ]; then
    echo "qemu-system-xen wrapper: $BIN is missing; run build/provision_qemu.sh" >&2
    exit 127
fi
LIB="$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu"
if [ -n "$LD_LIBRARY_PATH" ]; then
    LIB="$LD_LIBRARY_PATH:$LIB"
fi
QEMU_MODULE_DIR="$ROOT/usr/lib/x86_64-linux-gnu/qemu"
export QEMU_MODULE_DIR
unset LD_PRELOAD LD_LIBRARY_PATH
exec "$ROOT/lib64/ld-linux-x86-64.so.2" --library-path "$LIB" \
    --argv0 "$0" "$BIN" \
    -L "$ROOT/usr/share/qemu" -L "$ROOT/usr/share/seabios" \
    "$@"
EOF
chmod 755 "$XEN_WRAPPER.tmp"
mv -f "$XEN_WRAPPER.tmp" "$XEN_WRAPPER"

# ------------------------------------------------------ step 6: verify
step "verifying the wrapper"
wrapper_ok || { "$WRAPPER" --version >&2 || true; die "wrapper does not report QEMU >= 10.1"; }
# The qtest accelerator is a module (accel-qtest.so) and '-accel help' does
# not list modules, so ask the real thing: QEMU's 16550 LSR through qtest.
qtest_probe() {
    local line="" rc=0 errf="$BUILD_DIR/.qtest_probe.err"
    coproc QPROBE { exec "$WRAPPER" -machine pc -accel qtest -qtest stdio \
        -qtest-log /dev/null -display none -nodefaults -serial null 2>"$errf"; }
    local pid="$QPROBE_PID" in="${QPROBE[1]}" out="${QPROBE[0]}"
    echo "inb 0x3fd" >&"$in" || rc=1
    if [[ $rc -eq 0 ]]; then read -r -t 20 line <&"$out" || rc=1; fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [[ $rc -ne 0 || "$line" != "OK 0x0060" ]]; then
        echo "provision_qemu: qtest probe answered '${line}'; stderr:" >&2
        cat "$errf" >&2 || true
        return 1
    fi
    rm -f "$errf"
}
qtest_probe || die "QEMU from the tree does not run the qtest accelerator (accel-qtest.so)"
DEVICES="$("$WRAPPER" -device help 2>&1)" || die "'qemu-system-x86_64 -device help' failed"
[[ "$DEVICES" == *'"vfio-user-pci"'* ]] \
    || die "QEMU from the tree has no vfio-user-pci device"
XEN_VERSION="$("$XEN_WRAPPER" -version 2>&1 | head -n 1)"
[[ "$XEN_VERSION" == "$QEMU_VERSION_LINE" ]] \
    || die "qemu-system-xen ('$XEN_VERSION') is not the engine's QEMU ('$QEMU_VERSION_LINE')"
echo "$STAMP_VERSION" >"$STAMP"
step "done: $QEMU_VERSION_LINE"
