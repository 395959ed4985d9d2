"""Linux's bochs DRM driver on stubdm's standard VGA under host_sim's QEMU
engine (DESIGN.md section 15): the driver binds 1234:1111 behind vfio-user,
sets a mode through the DISPI registers in BAR2, and fbcon draws the console
into BAR0, which QEMU maps straight from the video RAM the device model
populated (an mmap-able region). What the device model renders is read back
from its surface (-vga-dump) and must show text: foreground pixels on the
console's background, in rows of character cells.
"""
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

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


def vga_font():
    from stubdm.devices import vga

    return vga.load_font()


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


# ---- the whole display path: stubdm-sim boot --vnc, looked at by VNC clients -------
# The guest's fbcon (bochs-drm on stubdm's VGA) -> fbfront's pages -> host_sim's vfb
# -> its RFB server -> a real client's PNG, where the text the guest printed on its
# console must be read back, cell by cell, with the project's font.
VNCDO = os.path.join(os.path.dirname(sys.executable), "vncdo")
CLI = os.path.join(os.path.dirname(sys.executable), "stubdm-sim")


def free_display():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port, "127.0.0.1:%d" % (port - 5900)


def screen_text(png):
    """The rows of 8x16 character cells in a PNG of a text console, read with the
    project's font (build/out/vgafont.bin): '?' for a cell no glyph matches exactly."""
    from PIL import Image

    from stubdm.devices import vga

    font = vga.load_font()
    glyphs = {bytes(font[c * 16:(c + 1) * 16]): chr(c) for c in range(0x20, 0x7F)}
    img = Image.open(png).convert("RGB")
    w, h = img.size
    pix = img.tobytes()
    counts = {}
    for i in range(0, len(pix), 3 * 97):  # a sample is enough for the background
        counts[pix[i:i + 3]] = counts.get(pix[i:i + 3], 0) + 1
    bg = max(counts, key=counts.get)
    rows = []
    for r in range(h // 16):
        line = []
        for c in range(w // 8):
            cell = bytearray(16)
            for y in range(16):
                off = ((r * 16 + y) * w + c * 8) * 3
                bits = 0
                for x in range(8):
                    if pix[off + 3 * x:off + 3 * x + 3] != bg:
                        bits |= 0x80 >> x
                cell[y] = bits
            line.append(glyphs.get(bytes(cell), "?"))
        rows.append("".join(line).rstrip())
    return (w, h), rows


def wait_for_line(proc, marker, timeout):
    """The boot's console output up to a line holding marker (or its end)."""
    out = bytearray()
    end = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while marker not in out and time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 1.0)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def test_boot_vnc_shows_the_guest_console_to_vnc_clients(tmp_path, dm_runtime):
    if not os.access(VNCDO, os.X_OK):
        pytest.skip("vncdotool is not installed (pip install -e .[dev])")
    if vga_font() is None:
        pytest.skip("build/out/vgafont.bin not built (scons vgafont)")
    port, addr = free_display()
    # This run's own text (Linux's built-in 8x16 font and console-setup's, the
    # project's, differ only in a few glyphs, 'f' among them: none of those here).
    token = "stubdm VGA on bochs-drm: %06d" % random.randrange(10 ** 6)
    run = ("echo '%s' > /dev/tty0; echo SHOWN $(cat /proc/fb); sleep 120" % token)
    proc = subprocess.Popen([CLI, "--dm-runtime", dm_runtime, "boot", "--vnc", addr,
                             "--timeout", "300", "--run", run],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out = wait_for_line(proc, b"SHOWN", 240)
        assert re.search(r"SHOWN 0 bochs-?drm", out), out
        shots = []
        clients = [("vncdo", [VNCDO, "-s", "127.0.0.1::%d" % port, "capture"]),
                   ("stubdm-sim screenshot", [CLI, "screenshot", "--vnc", addr])]
        gv = shutil.which("gvnccapture")
        if gv is not None:  # Debian's gvncviewer (build/setup.sh), a second client
            clients.append(("gvnccapture", [gv, addr]))
        for name, argv in clients:
            png = str(tmp_path / ("%d.png" % len(shots)))
            end = time.monotonic() + 30
            while True:
                r = subprocess.run(argv + [png], capture_output=True, timeout=60)
                assert r.returncode == 0, (name, r.stdout, r.stderr)
                size, rows = screen_text(png)
                if any(token in row for row in rows) or time.monotonic() > end:
                    break
                time.sleep(0.5)  # fbcon's text not drawn yet: the next refresh
            shots.append((name, size, rows))
        for name, size, rows in shots:
            assert size == (1024, 768), (name, size)
            assert any(token in row for row in rows), (name, [r for r in rows if r])
            # The line init wrote when fb0 came up is on the same screen.
            assert any("the shell is on ttyS0" in row for row in rows), (name, rows[:4])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # stubdm-sim ends the boot as on ^C
        try:
            rest = proc.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = proc.communicate()[0].decode(errors="replace")
    assert "Traceback" not in rest, rest
