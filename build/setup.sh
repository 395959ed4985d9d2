#!/usr/bin/env bash
# One-step set-up on a fresh Debian 12 or 13 machine (as root, or with sudo):
# system packages, a virtualenv with the project, QEMU 11.1 (in a trixie tree
# under build/, the host's libc untouched), the default guest, and the C
# parts (scons). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
step() { echo "setup: $*"; }
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

PKGS="libxen-dev debootstrap dpkg-dev gcc libc6-dev make pkg-config libffi-dev xz-utils \
ca-certificates python3 python3-venv python3-dev procps xenstore-utils libxenstore4 \
iproute2 iputils-ping util-linux xorriso console-setup-linux gvncviewer git"
missing=
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    step "installing Debian packages:$missing"
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    step "creating .venv"
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import cffi, setuptools, pytest, SCons' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
    step "installing the project into .venv (pip)"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    touch .venv/.installed
fi

step "QEMU >= 10.1 with vfio-user and qtest"
$SUDO bash build/provision_qemu.sh

step "default guest (Debian kernel + busybox initramfs)"
.venv/bin/python build/make_guest.py

step "C parts (scons)"
.venv/bin/scons -Q -j2
step "done"
