"""Checks the guest initramfs made by build/make_guest.py (builds nothing)."""

import gzip
import os
import stat

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# STUBDM_GUEST_INITRD checks another image (e.g. one built with --out elsewhere).
INITRD = os.environ.get("STUBDM_GUEST_INITRD") or os.path.join(
    REPO, "build", "guest", "initramfs.cpio.gz")

pytestmark = pytest.mark.skipif(
    not os.path.exists(INITRD),
    reason="build/guest/initramfs.cpio.gz not built (run python3 build/make_guest.py)")


def parse_newc(raw):
    """{path: (mode, data)} from a newc cpio archive (concatenations too)."""
    entries = {}
    pos = 0
    while pos + 110 <= len(raw):
        if raw[pos:pos + 6] != b"070701":
            # Zero padding between concatenated archives.
            if raw[pos:pos + 4] == b"\0\0\0\0":
                pos += 4
                continue
            raise AssertionError(f"bad cpio magic at {pos}: {raw[pos:pos + 6]!r}")
        fields = [int(raw[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_end = pos + 110 + namesize
        name = raw[pos + 110:name_end - 1].decode()
        data_start = name_end + (-name_end % 4)
        data = raw[data_start:data_start + filesize]
        pos = data_start + filesize + (-(data_start + filesize) % 4)
        if name != "TRAILER!!!":
            entries["/" + name.lstrip("./")] = (mode, data)
    return entries


@pytest.fixture(scope="module")
def image():
    with open(INITRD, "rb") as f:
        return parse_newc(gzip.decompress(f.read()))


def find_module(image, name):
    hits = [p for p in image
            if ".ko" in p and os.path.basename(p).split(".ko")[0] == name]
    assert hits, f"module {name} not in the initramfs"
    return hits


def test_init_is_executable_script(image):
    mode, data = image["/init"]
    assert stat.S_ISREG(mode) and mode & 0o111
    assert data.startswith(b"#!/bin/sh\n")
    assert b"stubdm.run=" in data and b"STUBDM-EXIT=" in data


def test_busybox_present(image):
    mode, data = image["/bin/busybox"]
    assert stat.S_ISREG(mode) and mode & 0o111
    assert data[:4] == b"\x7fELF"
    mode, target = image["/bin/sh"]
    assert stat.S_ISLNK(mode) and target.endswith(b"busybox")


def test_console_node(image):
    mode, _ = image["/dev/console"]
    assert stat.S_ISCHR(mode)


@pytest.mark.parametrize("name", ["ata_piix", "8139too", "e1000"])
def test_module_present_and_uncompressed(image, name):
    for path in find_module(image, name):
        assert path.endswith(".ko"), f"{path} is compressed"
        mode, data = image[path]
        assert stat.S_ISREG(mode)
        assert data[:4] == b"\x7fELF", f"{path} is not ELF"


def test_load_order_follows_modules_dep(image):
    order = image["/etc/stubdm/modules.load"][1].decode().split()
    assert order
    kver_dirs = {p.split("/")[3] for p in image if p.startswith("/lib/modules/")}
    assert len(kver_dirs) == 1
    base = "/lib/modules/" + kver_dirs.pop() + "/"
    deps = {}
    for line in image[base + "modules.dep"][1].decode().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    position = {mod: i for i, mod in enumerate(order)}
    for mod in order:
        assert base + mod in image, f"{mod} listed but missing"
        for dep in deps[mod]:
            assert position[dep] < position[mod], f"{dep} must load before {mod}"
    assert not [p for p in image if p.endswith((".ko.xz", ".ko.zst", ".ko.gz"))]
