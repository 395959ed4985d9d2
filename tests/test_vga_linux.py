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
import threading
import time

import pytest

from host_sim import engine, qtest_qemu
from tests.test_display_pv import free_display

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


class Watcher:
    """A VNC viewer that keeps asking for incremental updates (as a viewer on screen
    does) and notes when each arrives: the frames per second a user sees."""

    def __init__(self, port):
        from host_sim import vnc

        self.times = []
        self.stop = False
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        rd = vnc._recv_exact
        assert rd(s, 12).startswith(b"RFB 003.")
        s.sendall(b"RFB 003.008\n")
        assert 1 in rd(s, rd(s, 1)[0])
        s.sendall(b"\x01")
        assert rd(s, 4) == bytes(4)
        s.sendall(b"\x01")
        self.w, self.h = struct.unpack(">HH", rd(s, 4))
        rd(s, 16)
        rd(s, struct.unpack(">I", rd(s, 4))[0])
        s.sendall(b"\x00\x00\x00\x00" + struct.pack(vnc.PIXEL_FORMAT_FMT, *vnc.NATIVE))
        s.sendall(struct.pack(">BxHi", 2, 1, vnc.ENC_RAW))
        self.sock = s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        from host_sim import vnc

        s, rd = self.sock, vnc._recv_exact
        inc = 0
        try:
            while not self.stop:
                s.sendall(struct.pack(">BBHHHH", 3, inc, 0, 0, self.w, self.h))
                inc = 1
                assert rd(s, 1) == b"\x00"
                for _ in range(struct.unpack(">xH", rd(s, 3))[0]):
                    x, y, rw, rh, enc = struct.unpack(">HHHHi", rd(s, 12))
                    rd(s, rw * rh * 4)
                self.times.append(time.monotonic())
        except (OSError, vnc.VncError):
            pass

    def close(self):
        self.stop = True
        self.sock.close()
        self.thread.join(10)


def stats_line(messages):
    m = re.search(r"^stubdm-stats:(.*)$", messages, re.M)
    assert m, messages[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def test_boot_vnc_input_reaches_kbdfront_and_fbcon_frame_rate(dm_runtime, capsys):
    """Under boot --vnc, keys and pointer moves a VNC client sends arrive through the
    stub domain's PV keyboard at stubdm's i8042 (the real guest reads QEMU's own, so
    the device model's exit figures are the witness; the scripted guest reads them in
    test_display_pv); and fbcon scrolling through the whole path, as a viewer sees it."""
    if not os.access(VNCDO, os.X_OK):
        pytest.skip("vncdotool is not installed (pip install -e .[dev])")
    port, addr = free_display()
    scroll_s = 5
    run = ("echo READY; read -t 200 x; t0=$(date +%%s); i=0; "
           "while [ $(($(date +%%s) - t0)) -lt %d ]; do "
           "echo \"fbcon line $i: the quick brown fox jumps over the lazy dog\"; "
           "i=$((i + 1)); done > /dev/tty0; echo SCROLLED $i; read -t 200 x" % scroll_s)
    e = engine.Engine(QEMU, KERNEL, INITRD, run=run, timeout=280, out=open(os.devnull, "wb"),
                      runtime=dm_runtime, vnc=addr, console_input=True)
    result = {}

    def boot():
        try:
            result["rc"] = e.boot()
        except Exception as err:  # reported by the main thread
            result["err"] = err

    t = threading.Thread(target=boot, daemon=True)
    t.start()

    def wait_output(marker, timeout=240):
        end = time.monotonic() + timeout
        while marker not in e.output and t.is_alive() and time.monotonic() < end:
            time.sleep(0.2)
        assert marker in e.output, (bytes(e.output).decode(errors="replace"), result)

    watcher = None
    try:
        wait_output(b"READY")
        r = subprocess.run([VNCDO, "-s", "127.0.0.1::%d" % port, "key", "a", "key", "enter",
                            "move", "100", "100", "click", "1"], capture_output=True,
                           timeout=60)
        assert r.returncode == 0, r
        watcher = Watcher(port)
        time.sleep(1)  # its first, full frame
        t0 = time.monotonic()
        e.qemu_proc.stdin.write(b"\n")
        e.qemu_proc.stdin.flush()
        wait_output(b"SCROLLED")
        t1 = time.monotonic()
        frames = len([x for x in watcher.times if t0 <= x <= t1])
        watcher.close()
        watcher = None
        lines = int(re.search(rb"SCROLLED (\d+)", e.output).group(1))
        e.qemu_proc.stdin.write(b"\n")
        e.qemu_proc.stdin.flush()
        t.join(120)
    finally:
        if watcher is not None:
            watcher.close()
        if t.is_alive() and e.qemu_proc is not None:
            e.qemu_proc.kill()
            t.join(30)
    assert "err" not in result, (result, e.messages[-3000:])
    assert result.get("rc") == 0, (bytes(e.output).decode(errors="replace"), e.messages)
    st = stats_line(e.messages)
    # "a" and Enter, each pressed and let go: four key events, each into the i8042.
    assert st["kbd_keys"] == 4, st
    assert st["kbd_pos"] + st["kbd_motion"] >= 1, st
    assert st["kbd_buttons"] >= 2, st  # button 1 down, up
    assert st["kbd_dropped"] == 0, st
    assert "Traceback" not in e.messages
    assert lines > 0 and frames >= 2, (lines, frames)
    per_frame = st["vga_drawn_us"] / max(st["vga_drawn"], 1)
    with capsys.disabled():
        print("\n%s: fbcon scrolling %d lines in %.1f s: %d frames at the viewer (%.1f/s); "
              "device model %d drawn frames, %.2f ms each (%d refreshes, %.1f s busy)"
              % (dm_runtime, lines, t1 - t0, frames, frames / (t1 - t0), st["vga_drawn"],
                 per_frame / 1000, st["vga_frames"], st["vga_busy_us"] / 1e6))
