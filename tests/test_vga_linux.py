"""Linux's bochs DRM driver on stubdm's standard VGA under host_sim's QEMU
engine (DESIGN.md section 15): the driver binds 1234:1111 behind vfio-user,
sets a mode through the DISPI registers in BAR2, and fbcon draws the console
into BAR0, which QEMU maps straight from the video RAM the device model
populated (an mmap-able region). What the device model renders is read back
from its surface (-vga-dump) and must show text: foreground pixels on the
console's background, in rows of character cells.
"""
import os
import re
import struct

import pytest

from host_sim import engine, qtest_qemu

QEMU = qtest_qemu.find_qemu()
KERNEL, INITRD = engine.find_kernel()

pytestmark = [
    pytest.mark.skipif(QEMU is None, reason="needs QEMU >= 10.1: "
                       + (qtest_qemu.qemu_missing_reason() or "")),
    pytest.mark.skipif(KERNEL is None or INITRD is None,
                       reason="no guest image: run python3 build/make_guest.py"),
]


def read_dump(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"STUBDMFB", "no frame dumped"
    w, h = struct.unpack_from("<II", data, 8)
    return w, h, data[16:]


@pytest.fixture
def big_heap(monkeypatch):
    # -vga-dump's 4 MiB surface lives in the device model's heap (a stub domain's
    # fbfront pages do not).
    from host_sim import scripted

    monkeypatch.setattr(scripted, "MICROPYTHON_HEAP", "24M")


def test_bochs_binds_sets_a_mode_and_fbcon_draws(tmp_path, dm_runtime, big_heap):
    dump = str(tmp_path / "frame")
    # The DRM stack in DESIGN.md 15's order (busybox modprobe would follow
    # modules.dep's, which lists a module's dependencies unordered).
    run = ("for m in drm drm_kms_helper ttm drm_ttm_helper drm_vram_helper bochs; do "
           "modprobe $m || echo MODPROBE-FAILED $m; done; dmesg | grep -i 'unknown symbol'; "
           "for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /dev/fb0 ] && break; sleep 1; done; "
           "echo DRIVER $(basename $(readlink /sys/bus/pci/devices/0000:00:02.0/driver)); "
           "echo FB $(cat /proc/fb); "
           "echo SIZE $(cat /sys/class/graphics/fb0/virtual_size); "
           "echo BPP $(cat /sys/class/graphics/fb0/bits_per_pixel); "
           "for i in 1 2 3 4 5 6; do echo 'stubdm VGA: fbcon on bochs-drm' > /dev/tty1; done; "
           "sleep 2")
    e = engine.Engine(QEMU, KERNEL, INITRD, run=run, timeout=280, out=open(os.devnull, "wb"),
                      runtime=dm_runtime,
                      dm_extra=["-device", "VGA,vgamem_mb=16", "-vga-dump", dump])
    rc = e.boot()
    out = e.output.decode(errors="replace")
    assert rc == 0, out + e.messages
    assert "MODPROBE-FAILED" not in out, out
    assert "DRIVER bochs-drm" in out, out
    assert re.search(r"FB 0 bochs-?drm", out), out
    m = re.search(r"SIZE (\d+),(\d+)", out)
    assert m, out
    fw, fh = int(m.group(1)), int(m.group(2))
    assert "BPP 32" in out, out
    # The device model's rendering of the mode the driver set.
    w, h, pix = read_dump(dump)
    assert (w, h) == (1024, 768), (w, h)
    assert fw == 1024 and fh >= 768
    assert len(pix) == w * h * 4
    # fbcon: a dark background and lit glyph pixels, in several text rows.
    counts = {}
    for px in range(0, len(pix), 4):
        counts[pix[px:px + 3]] = counts.get(pix[px:px + 3], 0) + 1
    background = max(counts, key=counts.get)
    lit_rows = set()
    stride = w * 4
    for y in range(h):
        row = pix[y * stride:(y + 1) * stride]
        for x in range(0, stride, 4):
            if row[x:x + 3] != background:
                lit_rows.add(y // 16)
                break
    assert len(lit_rows) >= 3, "text on %d character rows only" % len(lit_rows)
    lit = len(pix) // 4 - counts[background]
    assert 2000 < lit < len(pix) // 8, "lit pixels: %d" % lit
    dm = e.dm_messages() if hasattr(e, "dm_messages") else ""
    assert "Traceback" not in dm, dm
