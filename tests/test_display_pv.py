"""The PV display path: stubdm's fbfront and kbdfront against host_sim's vfb/vkbd
backends and its RFB server, looked at and typed into by a real VNC client
(vncdotool), on CPython and MicroPython.

What is drawn into fbfront (by a test adapter, tests/harness/display_dm.py) must
be in the picture vncdo captures; keys and pointer moves vncdo sends must reach
stubdm's i8042 as the scan codes and PS/2 packets a guest reads at 0x60/0x64.
Hostile clients are refused and the server serves on."""
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib

import pytest

from host_sim import vnc
from host_sim.scripted import MICROPYTHON, Session
from host_sim.xs import XsError
from stubdm.devices.i8042 import translate
from stubdm.frontends import kbdfront

HARNESS = os.path.join(os.path.dirname(__file__), "harness", "display_dm.py")
FB = "/local/domain/2/device/vfb/0"
KBD = "/local/domain/2/device/vkbd/0"
VNCDO = os.path.join(os.path.dirname(sys.executable), "vncdo")
RUNTIMES = ("cpython", "micropython")


def _rd(s, path):
    try:
        return s.xs.read(path).decode()
    except XsError:
        return None


def free_display():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port, "127.0.0.1:%d" % (port - 5900)


def session(runtime, script=None):
    if runtime == "micropython" and not os.access(MICROPYTHON, os.X_OK):
        pytest.skip("build/out/micropython is not built: run scons")
    port, addr = free_display()
    s = Session(runtime=runtime, vnc=addr, dm_script=script)
    try:
        s.hv.pump_until(lambda: _rd(s, FB + "/state") == "4" and _rd(s, KBD + "/state") == "4",
                        "the vfb and vkbd handshakes")
    except Exception:
        s.close()
        raise
    s.port = port
    return s


def need_vncdo():
    if not os.access(VNCDO, os.X_OK):
        pytest.skip("vncdotool is not installed (pip install -e .[dev])")


def run_client(s, argv, timeout=30):
    """Run a VNC client to its end while host_sim serves it."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    s.hv.pump_until(lambda: p.poll() is not None, argv[0], timeout=timeout)
    out = p.stdout.read().decode(errors="replace")
    assert p.returncode == 0, out
    return out


def vncdo(s, *cmds):
    return run_client(s, [VNCDO, "-s", "127.0.0.1::%d" % s.port] + list(cmds))


def png_pixels(path):
    """(width, height, rows of (r, g, b)) of an 8-bit RGB or RGBA PNG."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pr) & 0xFF
        rows.append(bytes(line))
        prev = line
    return w, h, [[tuple(r[x * bpp:x * bpp + 3]) for x in range(w)] for r in rows]


def paint(s, spec):
    s.xs.write(FB + "/paint", spec)
    s.hv.pump_until(lambda: _rd(s, FB + "/painted") == spec, "the painter")
    # Its update events, as the backend hears them.
    w = int(spec.split()[0])
    s.hv.pump_until(lambda: s.vnc.vfb.width == w and s.vnc.vfb.stats["updates"] > 0,
                    "the update events")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_vnc_capture_shows_what_was_drawn(runtime, tmp_path):
    need_vncdo()
    s = session(runtime, HARNESS)
    try:
        # A mode other than the one the backend was given at connection: a resize event,
        # then DesktopSize to the client.
        paint(s, "800 600 0x203040 100 50 64 32 0xff8000")
        assert s.vnc.vfb.stats["resizes"] == 1
        out = str(tmp_path / "a.png")
        vncdo(s, "capture", out)
        w, h, px = png_pixels(out)
        assert (w, h) == (800, 600)
        assert px[0][0] == (0x20, 0x30, 0x40) and px[599][799] == (0x20, 0x30, 0x40)
        assert px[50][100] == (0xFF, 0x80, 0x00) and px[81][163] == (0xFF, 0x80, 0x00)
        assert px[49][100] == (0x20, 0x30, 0x40) and px[82][163] == (0x20, 0x30, 0x40)
        assert px[50][164] == (0x20, 0x30, 0x40)
        # Drawn again: the next capture shows the new picture, and stubdm-sim's own
        # screenshot agrees with vncdo pixel for pixel.
        paint(s, "800 600 0x000000 0 0 8 8 0x00ff00")
        vncdo(s, "capture", out)
        _w, _h, px2 = png_pixels(out)
        assert px2[0][0] == (0, 0xFF, 0) and px2[7][7] == (0, 0xFF, 0)
        assert px2[50][100] == (0, 0, 0) and px2[8][8] == (0, 0, 0)
        w3, h3, frame = capture(s)
        assert (w3, h3) == (800, 600)
        assert frame[0:4] == b"\x00\xff\x00\x00" and frame[(50 * 800 + 100) * 4] == 0
    finally:
        s.close()


def capture(s, address=None):
    """host_sim.vnc.capture in a thread-free way: the client runs in a child process."""
    addr = address or "127.0.0.1:%d" % (s.port - 5900)
    code = ("import sys; from host_sim import vnc; w, h, f = vnc.capture(%r); "
            "sys.stdout.buffer.write(b'%%d %%d\\n' %% (w, h) + f)" % addr)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    chunks = []
    os.set_blocking(p.stdout.fileno(), False)

    def done():
        try:
            d = p.stdout.read()
        except BlockingIOError:
            d = None
        if d:
            chunks.append(d)
        return p.poll() is not None and not d
    s.hv.pump_until(done, "capture", timeout=30)
    assert p.returncode == 0
    data = b"".join(chunks)
    head, _, frame = data.partition(b"\n")
    w, h = (int(v) for v in head.split())
    return w, h, frame


def test_zrle_and_zlib_clients_see_the_same_frame(tmp_path):
    """vncdotool decoding ZRLE (its own decoder) gives the picture Raw gives."""
    need_vncdo()
    s = session("cpython", HARNESS)
    try:
        paint(s, "640 480 0x102030 10 20 300 200 0x40c0ff")
        pics = {}
        for enc in ("RAW", "ZRLE"):
            out = str(tmp_path / ("%s.png" % enc))
            code = ("import sys; from vncdotool import api, client, rfb; "
                    "client.VNCDoToolClient.encoding = rfb.Encoding.%s; "
                    "c = api.connect('127.0.0.1::%d'); c.captureScreen(%r); c.disconnect(); "
                    "api.shutdown()" % (enc, s.port, out))
            run_client(s, [sys.executable, "-c", code])
            pics[enc] = png_pixels(out)
        assert pics["RAW"] == pics["ZRLE"]
        _w, _h, px = pics["ZRLE"]
        assert px[20][10] == (0x40, 0xC0, 0xFF) and px[0][0] == (0x10, 0x20, 0x30)
    finally:
        s.close()


# ---- input: VNC client -> vkbd -> kbdfront -> stubdm's i8042 -> the guest -----
def i8042_setup(g):
    g.outb(0x64, 0x60)
    g.outb(0x60, 0x47)  # interrupts, system flag, translation (as Linux/BIOS set it)
    g.outb(0x64, 0xA8)  # aux port on
    g.outb(0x64, 0xD4)
    g.outb(0x60, 0xF4)  # mouse: enable data reporting
    got = drain(g)
    assert (0xFA, True) in got, got


def drain(g):
    out = []
    for _ in range(256):
        st = g.inb(0x64)
        if not st & 1:
            break
        out.append((g.inb(0x60), bool(st & 0x20)))
    return out


def read_until(s, g, n, timeout=10):
    got = []
    t0 = time.monotonic()
    while len(got) < n and time.monotonic() - t0 < timeout:
        s.hv.pump(0.01)
        got += drain(g)
    return got


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_vnc_keys_and_pointer_reach_the_i8042(runtime):
    need_vncdo()
    s = session(runtime)
    try:
        g = s.guest
        i8042_setup(g)
        # 'a' (set 2 1c, f0 1c; set 1 after translation 1e, 9e), Enter, Up (e0 48 / e0 c8).
        vncdo(s, "key", "a", "key", "enter", "key", "up")
        got = read_until(s, g, 8)
        assert got == [(0x1E, False), (0x9E, False), (0x1C, False), (0x9C, False),
                       (0xE0, False), (0x48, False), (0xE0, False), (0xC8, False)], got
        # An uppercase letter without Shift held: Shift is pressed around it.
        vncdo(s, "key", "B")
        got = read_until(s, g, 4)
        assert [b for b, _ in got] == [0x2A, 0x30, 0xAA, 0xB0], got
        # Pointer: absolute positions become PS/2 motion from the top-left corner
        # (y grows upwards in PS/2); a click is the left button down, then up.
        vncdo(s, "move", "30", "20")
        got = read_until(s, g, 3)
        assert got == [(0x28, True), (30, True), (0xEC, True)], got
        vncdo(s, "move", "35", "10", "click", "1")
        got = read_until(s, g, 9)
        assert got[:3] == [(0x08, True), (5, True), (10, True)], got
        assert got[3:] == [(0x09, True), (0, True), (0, True),
                           (0x08, True), (0, True), (0, True)], got
    finally:
        s.close()


def test_scancode_tables():
    # Set 2 through the 8042's translation is set 1, for every key we have a code for.
    for code in list(range(1, 84)) + [k for k, _c, _e in kbdfront._SET1_HIGH]:
        for pressed in (1, 0):
            s1 = kbdfront.scancodes(code, pressed, 1)
            s2 = kbdfront.scancodes(code, pressed, 2)
            assert s1 and s2, code
            out, hb = bytearray(), 0
            for b in s2:
                if b in (0xE0, 0xE1):
                    out.append(b)
                elif b == 0xF0:
                    hb = 0x80
                else:
                    out.append(translate(b) | hb)
                    hb = 0
            assert bytes(out) == s1, (code, pressed, s1.hex(), s2.hex())
    assert kbdfront.scancodes(65, 1, 2) == b"\x83"  # F7
    assert kbdfront.scancodes(119, 0, 1) == b""  # Pause has no break
    assert kbdfront.scancodes(0x2FF, 1, 1) == b"" and kbdfront.scancodes(30, 1, 3) == b""
    assert vnc.keysym_to_linux(ord("a")) == (30, False)
    assert vnc.keysym_to_linux(ord("?")) == (53, True)
    assert vnc.keysym_to_linux(0xFF0D) == (28, False)
    assert vnc.keysym_to_linux(0xFFC9) == (88, False)  # F12
    assert vnc.keysym_to_linux(ord("|")) == (43, True)


# ---- hostile clients ------------------------------------------------------------
def raw_client(s, data, read_reply=False, close=True):
    c = socket.create_connection(("127.0.0.1", s.port))
    c.setblocking(False)
    buf = bytearray()
    t0 = time.monotonic()
    while len(buf) < 12 and time.monotonic() - t0 < 5:
        s.hv.pump(0.01)
        try:
            buf += c.recv(4096)
        except BlockingIOError:
            pass
    assert bytes(buf[:12]) == b"RFB 003.008\n"
    c.sendall(data)
    return c


def gone(s, c, timeout=5):
    """The server closed the connection (reads EOF) within timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        s.hv.pump(0.01)
        try:
            d = c.recv(1 << 20)
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return True
        if not d:
            return True
    return False


HANDSHAKE = b"RFB 003.008\n\x01\x01"


def test_hostile_vnc_clients_are_dropped_and_the_server_serves_on():
    s = session("cpython", HARNESS)
    try:
        paint(s, "640 480 0x336699 0 0 1 1 0x336699")
        bad = [
            b"HTTP/1.1 GET\n",  # not RFB
            b"RFB 004.000\n",  # a version we don't speak
            b"RFB 003.008\n\x02",  # security type VNC auth: not offered
            HANDSHAKE + b"\x07" + bytes(64),  # unknown message type
            HANDSHAKE + b"\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBB3x", 8, 8, 0, 0, 7, 7,
                                                          3, 5, 2, 0),  # colour map
            HANDSHAKE + b"\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 300,
                                                          255, 255, 16, 8, 0),  # max 300
            HANDSHAKE + b"\x06\x00\x00\x00" + struct.pack(">I", 0xFFFFFFF0),  # cut text
            HANDSHAKE + b"\x02\x00" + struct.pack(">H", 0xFFFF),  # 65535 encodings
        ]
        before = s.vnc.stats["bad_clients"]
        for data in bad:
            c = raw_client(s, data)
            assert gone(s, c), data
            c.close()
        assert s.vnc.stats["bad_clients"] == before + len(bad)
        # Truncated messages, then the client goes: nothing left behind.
        for cut in (HANDSHAKE + b"\x03\x00\x00", HANDSHAKE + b"\x02\x00\x00\x10\x00",
                    HANDSHAKE + b"\x06\x00\x00\x00\x00\x00\x10\x00abc"):
            raw_client(s, cut).close()
        # A huge rectangle is clamped to the frame; a flood of input is taken or
        # dropped at the ring, never more than the ring.
        c = raw_client(s, HANDSHAKE + b"\x03\x00\xff\xff\xff\xff\xff\xff\xff\xff"
                       + (b"\x05\x01\x00\x10\x00\x10" + b"\x04\x01\x00\x00\x00\x00\x00\x61")
                       * 5000)
        want = 2 + 4 + 30 + 4  # security types, result, ServerInit, an update's header
        hdr = b""
        c.settimeout(0.01)
        t0 = time.monotonic()
        while len(hdr) < want and time.monotonic() - t0 < 10:
            s.hv.pump(0.01)
            try:
                hdr += c.recv(want - len(hdr))
            except socket.timeout:
                pass
        # ServerInit says 640x480; an update of 0 rectangles (the request lies outside).
        assert struct.unpack(">HH", hdr[6:10]) == (640, 480)
        assert hdr[36:40] == b"\x00\x00\x00\x00", hdr[36:40]
        c.close()
        # A client that asks for frames and never reads them: dropped at the bound,
        # the loop not blocked meanwhile (vncdo below is served).
        c = raw_client(s, HANDSHAKE + b"\x03\x00\x00\x00\x00\x00\x02\x80\x01\xe0" * 50)
        for _ in range(50):
            s.hv.pump(0.01)
        w, h, frame = capture(s)
        assert (w, h) == (640, 480) and frame[:4] == b"\x99\x66\x33\x00"
        c.close()
        for _ in range(20):
            s.hv.pump(0.01)
        assert not s.vnc.clients, "clients left over: %r" % list(s.vnc.clients)
        assert s.proc.poll() is None
    finally:
        s.close()


def test_screenshot_command(tmp_path):
    """stubdm-sim screenshot FILE.png --vnc ADDR: the frame as a PNG."""
    s = session("cpython", HARNESS)
    try:
        paint(s, "720 400 0x000000 8 16 8 16 0xaaaaaa")
        out = str(tmp_path / "shot.png")
        cli = shutil.which("stubdm-sim", path=os.path.dirname(sys.executable))
        run_client(s, [cli, "screenshot", out, "--vnc", "127.0.0.1:%d" % (s.port - 5900)])
        w, h, px = png_pixels(out)
        assert (w, h) == (720, 400)
        assert px[16][8] == (0xAA, 0xAA, 0xAA) and px[15][8] == (0, 0, 0)
    finally:
        s.close()


# ---- fbfront and kbdfront under a hostile backend (host_sim/fuzz_pv.py) ------------
@pytest.mark.parametrize("seed", [1, 2])
def test_hostile_backend_finds_nothing_in_fbfront_and_kbdfront(seed):
    from host_sim import fuzz_pv

    n, findings = fuzz_pv.run(3000, seed, targets=("fbfront", "kbdfront"), slow_ms=200.0)
    assert n == 6000 and findings == []


def test_fuzzer_catches_an_overfull_out_ring(monkeypatch):
    # A planted bug: fbfront sends each refresh's rectangles whatever room the ring has.
    import struct as st

    from host_sim import fuzz_pv
    from stubdm import pv_abi as A
    from stubdm.frontends import fbfront

    def greedy(self):
        page = self.shared.mem
        prod = st.unpack_from("<I", page, A.XENFB_PAGE_OFF_OUT_PROD)[0]
        for _ in range(A.XENFB_OUT_RING_LEN + 1):
            ev = st.pack(A.XENFB_UPDATE_FMT, A.XENFB_TYPE_UPDATE, 0, 0, 1, 1)
            self._put(page, prod, ev + bytes(A.XENFB_OUT_EVENT_SIZE - len(ev)))
            prod += 1
        self.rects = []
        st.pack_into("<I", page, A.XENFB_PAGE_OFF_OUT_PROD, prod & 0xFFFFFFFF)
    monkeypatch.setattr(fbfront.FbFront, "flush", greedy)
    _, findings = fuzz_pv.run(3000, 1, targets=("fbfront",), slow_ms=1000.0)
    assert findings and "out events" in findings[0][2], findings


# ---- the standard VGA drawing into fbfront: text at 0xb8000 in a VNC capture ------
from tests.test_vga import (big_heap, c8, cell_of, glyph_pixels, needs_font,  # noqa: E402,F401
                            program_mode3, set_cursor)


@needs_font
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_vga_text_appears_in_a_vnc_capture(runtime, big_heap, tmp_path):  # noqa: F811
    need_vncdo()
    if runtime == "micropython" and not os.access(MICROPYTHON, os.X_OK):
        pytest.skip("build/out/micropython is not built: run scons")
    port, addr = free_display()
    s = Session(runtime=runtime, vnc=addr, dm_args=["-device", "VGA,vgamem_mb=16"])
    s.port = port
    try:
        s.hv.pump_until(lambda: _rd(s, FB + "/state") == "4", "the vfb handshake")
        g = s.guest
        program_mode3(g)
        text = b"stubdm VGA text over VNC"
        for i, ch in enumerate(text):
            g.writeb(0xB8000 + 2 * (80 * 3 + i), ch)
            g.writeb(0xB8000 + 2 * (80 * 3 + i) + 1, 0x4E)  # yellow on red
        set_cursor(g, 80 * 24)
        yellow, red = (255, 255, c8(0x15)), (c8(0x2A), 0, 0)
        # The VGA resizes fbfront to 720x400 (a resize event) and draws the text.
        s.hv.pump_until(lambda: s.vnc.vfb.width == 720 and s.vnc.vfb.height == 400,
                        "the text mode's resize")
        out = str(tmp_path / "text.png")
        end = time.monotonic() + 20
        while True:
            vncdo(s, "capture", out)
            w, h, px = png_pixels(out)
            shown = (w, h) == (720, 400) and all(
                cell_of(lambda x, y: px[y][x], i, 3) == glyph_pixels(ch, yellow, red)
                for i, ch in enumerate(text))
            if shown or time.monotonic() > end:
                break
        bad = [i for i, ch in enumerate(text)
               if (w, h) != (720, 400)
               or cell_of(lambda x, y: px[y][x], i, 3) != glyph_pixels(ch, yellow, red)]
        assert shown, "the text never showed in the capture (%dx%d, cells %r differ); " \
            "device model:\n%s" % (w, h, bad, s.dm_messages()[-2000:])
        assert px[0][0] == (0, 0, 0)
        assert "Traceback" not in s.dm_messages()
    finally:
        s.close()


# ---- the frontends alone, against fuzz_pv's fake backend plumbing -----------------
def _i8042():
    from stubdm.devices.i8042 import I8042

    class Line:
        def set_level(self, level):
            pass
    k = I8042(Line(), Line(), lambda: None)
    k.write(4, 1, 0xA8)
    k.write(4, 1, 0xD4)
    k.write(0, 1, 0xF4)
    assert k.read(0, 1) == 0xFA
    return k


def _kbd_event(fe, ev):
    from stubdm import pv_abi as A
    page = fe.shared.mem
    prod = struct.unpack_from("<I", page, A.XENKBD_PAGE_OFF_IN_PROD)[0]
    off = A.event_offset(A.XENKBD_IN_RING_OFFS, A.XENKBD_IN_RING_LEN, A.XENKBD_IN_EVENT_SIZE,
                         prod)
    page[off:off + len(ev)] = ev
    struct.pack_into("<I", page, A.XENKBD_PAGE_OFF_IN_PROD, prod + 1)
    fe.on_event(fe.port)


def _read_all(k):
    out = []
    while k.read(4, 1) & 1:
        out.append(k.read(0, 1))
    return out


def test_kbdfront_relative_motion_wheel_and_hostile_events():
    from host_sim import fuzz_pv
    from stubdm import pv_abi as A

    fe = fuzz_pv.connect(kbdfront.KbdFront, "vkbd", "0", {})  # no feature-abs-pointer
    assert "request-abs-pointer" not in str(fe.xs.values)
    k = fe.i8042 = _i8042()
    k.write(4, 1, 0xD4)
    k.write(0, 1, 0xF3)  # IntelliMouse knock: sample rates 200, 100, 80 -> a wheel
    for rate in (200, 100, 80):
        k.write(4, 1, 0xD4)
        k.write(0, 1, rate)
        k.write(4, 1, 0xD4)
        k.write(0, 1, 0xF3) if rate != 80 else None
    _read_all(k)
    _kbd_event(fe, struct.pack(A.XENKBD_MOTION_FMT, A.XENKBD_TYPE_MOTION, 5, 7, 1))
    assert _read_all(k) == [0x28, 5, 0xF9, 1]  # y down 7 -> PS/2 -7; wheel down 1
    # A position never requested, a key code past KEY_MAX, a pressed value of 2,
    # an in_prod far ahead: dropped, nothing reaches the i8042.
    _kbd_event(fe, struct.pack(A.XENKBD_POSITION_FMT, A.XENKBD_TYPE_POS, 10, 10, 0))
    _kbd_event(fe, struct.pack(A.XENKBD_KEY_FMT, A.XENKBD_TYPE_KEY, 1, 0x300))
    _kbd_event(fe, struct.pack(A.XENKBD_KEY_FMT, A.XENKBD_TYPE_KEY, 2, 30))
    struct.pack_into("<I", fe.shared.mem, A.XENKBD_PAGE_OFF_IN_PROD, 10 ** 6)
    fe.on_event(fe.port)
    assert _read_all(k) == [] and fe.stats["bad"] == 4
    # Buttons as keys; the backend going releases what is held.
    _kbd_event(fe, struct.pack(A.XENKBD_KEY_FMT, A.XENKBD_TYPE_KEY, 1, kbdfront.BTN_RIGHT))
    assert _read_all(k) == [0x0A, 0, 0, 0]
    _kbd_event(fe, struct.pack(A.XENKBD_KEY_FMT, A.XENKBD_TYPE_KEY, 1, 30))
    assert _read_all(k) == [0x1C]  # set 2, translation off: as the keyboard sends it
    fe.disconnect()
    got = []
    while k.read(4, 1) & 1:
        aux = bool(k.read(4, 1) & 0x20)
        got.append((k.read(0, 1), aux))
    assert [b for b, aux in got if not aux] == [0xF0, 0x1C]  # the held key let go
    assert [b for b, aux in got if aux] == [0x08, 0, 0, 0]  # and the button


def test_fbfront_without_feature_resize_keeps_its_geometry():
    from host_sim import fuzz_pv
    from stubdm import pv_abi as A
    from stubdm.frontends import fbfront

    fe = fuzz_pv.connect(fbfront.FbFront, "vfb", "0", {"request-update": "1"})
    page = fe.shared.mem
    _c, _p, _oc, _op, w, h, stride, mem_len, depth = struct.unpack_from(A.XENFB_PAGE_HEAD_FMT,
                                                                       page, 0)
    assert (w, h, stride, mem_len, depth) == (640, 480, 2560, fbfront.FB_BYTES, 32)
    assert fe.xs.values[fe.path + "/feature-update"] == "1"
    # The first flush: the whole frame; then nothing until something changes.
    out_prod = struct.unpack_from("<I", page, A.XENFB_PAGE_OFF_OUT_PROD)[0]
    assert out_prod == 1
    assert not fe.resize(800, 600)  # larger than the backend knows
    assert fe.resize(320, 200) and fe.stride == 2560  # in the corner of the 640x480
    fe.flush()
    off = A.event_offset(A.XENFB_OUT_RING_OFFS, A.XENFB_OUT_RING_LEN,
                         A.XENFB_OUT_EVENT_SIZE, 1)
    assert struct.unpack(A.XENFB_UPDATE_FMT, bytes(page[off:off + 20])) == \
        (A.XENFB_TYPE_UPDATE, 0, 0, 320, 200)
    # Nobody looking: updates held, one full frame when someone looks again.
    struct.pack_into("<I", page, A.XENFB_PAGE_OFF_OUT_CONS, 2)
    ip = struct.unpack_from("<I", page, A.XENFB_PAGE_OFF_IN_PROD)[0]
    for i, period in enumerate((0, 30)):
        off = A.event_offset(A.XENFB_IN_RING_OFFS, A.XENFB_IN_RING_LEN,
                             A.XENFB_IN_EVENT_SIZE, ip + i)
        page[off:off + 8] = struct.pack(A.XENFB_REFRESH_PERIOD_FMT,
                                        A.XENFB_TYPE_REFRESH_PERIOD, period)
        struct.pack_into("<I", page, A.XENFB_PAGE_OFF_IN_PROD, ip + i + 1)
        fe.on_event(fe.port)
        if period == 0:
            assert not fe.wants_frames()
            fe.update(1, 1, 2, 2)
            fe.flush()
            assert struct.unpack_from("<I", page, A.XENFB_PAGE_OFF_OUT_PROD)[0] == 2
    assert fe.wants_frames()
    assert struct.unpack_from("<I", page, A.XENFB_PAGE_OFF_OUT_PROD)[0] == 3
    off = A.event_offset(A.XENFB_OUT_RING_OFFS, A.XENFB_OUT_RING_LEN,
                         A.XENFB_OUT_EVENT_SIZE, 2)
    assert struct.unpack(A.XENFB_UPDATE_FMT, bytes(page[off:off + 20]))[1:] == (0, 0, 320, 200)


def test_pixel_formats_and_change_detection(tmp_path):
    bgrx = bytes([0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0])  # R G B W
    rgb565 = vnc.PixelFormat.parse(struct.pack(vnc.PIXEL_FORMAT_FMT, 16, 16, 0, 1, 31, 63,
                                               31, 11, 5, 0))
    assert rgb565.convert(bgrx) == struct.pack("<4H", 0xF800, 0x07E0, 0x001F, 0xFFFF)
    be = vnc.PixelFormat.parse(struct.pack(vnc.PIXEL_FORMAT_FMT, 32, 24, 1, 1, 255, 255, 255,
                                           0, 8, 16))  # big-endian, R in the low byte
    assert be.convert(bgrx) == struct.pack(">4I", 0xFF, 0xFF00, 0xFF0000, 0xFFFFFF)
    assert be.cpixel == 3 and be.cpix_off == 1
    bgr233 = vnc.PixelFormat.parse(struct.pack(vnc.PIXEL_FORMAT_FMT, 8, 8, 0, 1, 7, 7, 3,
                                               0, 3, 6))
    assert bgr233.convert(bgrx) == bytes([0x07, 0x38, 0xC0, 0xFF])
    for bad in ((24, 24, 0, 1, 255, 255, 255, 16, 8, 0), (32, 24, 0, 0, 255, 255, 255, 16, 8, 0),
                (32, 24, 0, 1, 254, 255, 255, 16, 8, 0), (16, 16, 0, 1, 31, 63, 31, 12, 5, 0)):
        with pytest.raises(vnc.VncError):
            vnc.PixelFormat.parse(struct.pack(vnc.PIXEL_FORMAT_FMT, *bad))
    w, h = 200, 40
    old = bytes(w * h * 4)
    new = bytearray(old)
    new[(3 * w + 150) * 4] = 1
    new[(20 * w + 7) * 4 + 2] = 9
    assert vnc.changed(w, old, bytes(new), 0, 0, w, h) == [(150, 0, 1, 16), (7, 16, 1, 16)]
    assert vnc.changed(w, old, old, 0, 0, w, h) == []
    png = vnc.png_bytes(2, 1, b"\x00\x00\xff\x00\xff\x00\x00\x00")
    path = str(tmp_path / "px.png")
    with open(path, "wb") as f:
        f.write(png)
    assert png_pixels(path) == (2, 1, [[(255, 0, 0), (0, 0, 255)]])


def test_gvnccapture_sees_the_frame(tmp_path):
    """A second, independent client (gtk-vnc's gvnccapture, Debian's gvncviewer), which
    asks for ZRLE: the same picture."""
    gv = shutil.which("gvnccapture")
    if gv is None:
        pytest.skip("gvnccapture is not installed (Debian package gvncviewer; build/setup.sh)")
    s = session("cpython", HARNESS)
    try:
        paint(s, "800 600 0x203040 100 50 64 32 0xff8000")
        out = str(tmp_path / "gv.png")
        run_client(s, [gv, "127.0.0.1:%d" % (s.port - 5900), out])
        w, h, px = png_pixels(out)
        assert (w, h) == (800, 600)
        assert px[0][0] == (0x20, 0x30, 0x40) and px[50][100] == (0xFF, 0x80, 0x00)
        assert px[81][163] == (0xFF, 0x80, 0x00) and px[82][163] == (0x20, 0x30, 0x40)
        assert s.vnc.stats["zrle"] >= 1, s.vnc.stats
    finally:
        s.close()


def test_zlib_encoding_stream():
    """Zlib (6), which neither client above asks for: one zlib stream per client across
    updates, each rectangle a length and sync-flushed data of its raw pixels."""
    s = session("cpython", HARNESS)
    try:
        paint(s, "320 200 0x112233 0 0 10 10 0x445566")
        c = raw_client(s, HANDSHAKE + struct.pack(">BxHi", 2, 1, 6)
                       + struct.pack(">BBHHHH", 3, 0, 0, 0, 320, 200))
        c.setblocking(True)
        c.settimeout(0.02)
        buf = bytearray()

        def need(n):
            end = time.monotonic() + 10
            while len(buf) < n and time.monotonic() < end:
                s.hv.pump(0.01)
                try:
                    buf.extend(c.recv(1 << 16))
                except socket.timeout:
                    pass
            assert len(buf) >= n, (n, s.vnc.stats)
            out = bytes(buf[:n])
            del buf[:n]
            return out
        need(2 + 4 + 30)  # security types, result, ServerInit
        z = zlib.decompressobj()
        updates = []
        for step in range(2):
            hdr = need(4)
            assert hdr[0] == 0
            rects = []
            for _ in range(struct.unpack(">xxH", hdr)[0]):
                x, y, w, h, enc, n = struct.unpack(">HHHHiI", need(16))
                assert enc == 6
                rects.append(((x, y, w, h), z.decompress(need(n))))
            updates.append(rects)
            if step == 0:
                paint(s, "320 200 0x112233 0 0 20 30 0x445566")
                c.sendall(struct.pack(">BBHHHH", 3, 1, 0, 0, 320, 200))
        [((r0, p0))] = updates[0]
        assert r0 == (0, 0, 320, 200) and len(p0) == 320 * 200 * 4
        frame = bytearray(p0)
        for (x, y, w, h), px in updates[1]:
            assert len(px) == w * h * 4
            for r in range(h):
                frame[((y + r) * 320 + x) * 4:((y + r) * 320 + x + w) * 4] = \
                    px[r * w * 4:(r + 1) * w * 4]
        fg, bg = b"\x66\x55\x44\x00", b"\x33\x22\x11\x00"
        want = b"".join((fg * 20 + bg * 300) if r < 30 else bg * 320 for r in range(200))
        assert bytes(frame) == want
        # Only what changed went: the box's growth, in bands of rows, not the frame.
        assert sum(w * h for (_x, _y, w, h), _p in updates[1]) <= 20 * 32
        c.close()
    finally:
        s.close()


def test_unix_socket_server(tmp_path):
    """--vnc unix:PATH: the same server on a unix socket, gone with the session."""
    path = str(tmp_path / "vnc.sock")
    s = Session(runtime="cpython", vnc="unix:" + path, dm_script=HARNESS)
    try:
        s.hv.pump_until(lambda: _rd(s, FB + "/state") == "4", "the vfb handshake")
        paint(s, "640 480 0x0000ff 1 2 3 4 0xffffff")
        w, h, frame = capture(s, "unix:" + path)
        assert (w, h) == (640, 480)
        assert frame[:4] == b"\xff\x00\x00\x00"
        assert frame[(2 * 640 + 1) * 4:][:4] == b"\xff\xff\xff\x00"
        assert s.vnc.address() == "unix:" + path
    finally:
        s.close()
    assert not os.path.exists(path)


# ---- host_sim's vfb backend against a hostile frontend (the test plays it) -----------
def _hostile_vfb(s, geometry, pd_ref=None, npages=4):
    """A frontend's xenfb_page with the given (width, height, line_length, mem_length,
    depth), its directory and frame pages in its own memory, named by frame number
    (fbif.h); returns (backend, page memoryview)."""
    import mmap

    from host_sim.backends.vfb import VfbBack
    from stubdm import pv_abi as A

    class HostileTarget(VfbBack):
        TYPE = "test-vfb"  # a type the device model does not drive: we are its frontend

    be = s.add_pv_device("test-vfb", 0, HostileTarget)
    fe = "/local/domain/2/device/test-vfb/0"
    g = s.hv.grants
    ppage, dpage = g.own_alloc(2, 2)
    fb = g.own_alloc(2, npages)
    fd = g.memory_of(2).fd
    page = mmap.mmap(fd, 4096, offset=ppage * 4096)
    dirm = mmap.mmap(fd, 4096, offset=dpage * 4096)
    struct.pack_into(A.XENFB_PAGE_HEAD_FMT, page, 0, 0, 0, 0, 0, *geometry)
    struct.pack_into("<Q", page, A.XENFB_PAGE_OFF_PD, dpage if pd_ref is None else pd_ref)
    for i, f in enumerate(fb):
        struct.pack_into("<Q", dirm, 8 * i, f)
    port = s.hv.evtchn.alloc_unbound(2, 0)
    for k, v in (("page-ref", ppage), ("event-channel", port), ("feature-update", 1),
                 ("state", 3)):
        s.xs.write(fe + "/" + k, str(v))
    s.hv.pump_until(lambda: be.state in (4, 5), "the backend's answer")
    return be, page


@pytest.mark.parametrize("geometry,pd_ref,why", [
    ((64, 64, 256, 16384, 16), None, "depth 16"),
    ((64, 64, 0, 16384, 32), None, "stride 0"),
    ((64, 64, 65536, 16384, 32), None, "stride past the memory"),
    ((64, 64, 256, 1 << 30, 32), None, "mem_length past the directory"),
    ((64, 64, 256, 16384, 32), 4096, "a directory frame just past the domain's memory"),
    ((64, 64, 256, 16384, 32), 1 << 40, "a directory frame far outside it"),
])
def test_vfb_backend_refuses_a_hostile_frontend(geometry, pd_ref, why):
    with Session(xenstore=True) as s:
        assert s.hv.grants.memory_of(2).npages == 4096  # what makes frame 4096 outside
        be, _page = _hostile_vfb(s, geometry, pd_ref)
        assert be.state == 5, why  # Closing: not connected
        assert be.fb is None and be.page_map is None and be.port is None
        assert not s.hv.grants.memory_of(2).held  # nothing of domain 2 left mapped


def test_vfb_backend_clips_and_drops_bad_events():
    from stubdm import pv_abi as A

    with Session(xenstore=True) as s:
        # A width past what the stride holds, a height past the memory: limited.
        be, page = _hostile_vfb(s, (1000, 1000, 256, 16384, 32))
        assert be.state == 4 and (be.width, be.height) == (64, 64)
        assert s.xs.read("/local/domain/0/backend/test-vfb/2/0/request-update") == b"1"

        def out(*events, prod=None):
            p0 = struct.unpack_from("<I", page, A.XENFB_PAGE_OFF_OUT_PROD)[0]
            for i, ev in enumerate(events):
                off = A.event_offset(A.XENFB_OUT_RING_OFFS, A.XENFB_OUT_RING_LEN,
                                     A.XENFB_OUT_EVENT_SIZE, p0 + i)
                page[off:off + len(ev)] = ev
            struct.pack_into("<I", page, A.XENFB_PAGE_OFF_OUT_PROD,
                             (p0 + len(events)) if prod is None else prod)
            be.serve()  # as the event would have it

        be.take_dirty()
        # Clipped as QEMU's xenfb clips: the origin into the frame, the size to its edge.
        out(struct.pack(A.XENFB_UPDATE_FMT, 2, -5, -5, 20, 90),
            struct.pack(A.XENFB_UPDATE_FMT, 2, 100, 100, 5, 5),  # outside: ignored
            struct.pack(A.XENFB_RESIZE_FMT, 3, 64, 64, 0, 32, 0),  # stride 0: ignored
            struct.pack(A.XENFB_RESIZE_FMT, 3, 64, 64, 256, 32, 1 << 20),  # offset: ignored
            b"\x09")  # unknown type: an error, logged
        assert be.take_dirty() == (False, [(0, 0, 20, 64)])
        assert be.stats["clipped"] == 1 and be.stats["bad_events"] == 2
        assert (be.width, be.height, be.stride, be.offset) == (64, 64, 256, 0)
        out(struct.pack(A.XENFB_RESIZE_FMT, 3, 32, 32, 128, 32, 0))  # a good one
        assert (be.width, be.height, be.stride) == (32, 32, 128)
        cons = struct.unpack_from("<I", page, A.XENFB_PAGE_OFF_OUT_CONS)[0]
        out(prod=cons + 1000)  # more events than the ring: the batch is dropped
        assert be.stats["bad_events"] == 3 and be.state == 4
        assert struct.unpack_from("<I", page, A.XENFB_PAGE_OFF_OUT_CONS)[0] == cons + 1000


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_kbdfront_names_its_page_by_grant_and_by_frame(runtime):
    """kbdif.h's page-gref and the page-ref QEMU's backend maps (as Linux's xen-kbdfront
    writes both): the same page of the stub domain's memory, whichever way it is
    mapped. host_sim's vkbd, as QEMU's, connected through page-ref."""
    s = session(runtime)
    try:
        ref, frame = int(_rd(s, KBD + "/page-gref")), int(_rd(s, KBD + "/page-ref"))
        by_grant = s.hv.grants.map(0, 2, ref)
        by_frame = s.hv.grants.map_foreign(0, 2, [frame])
        try:
            by_grant.mem[4000] = 0x5A
            assert by_frame.mem[4000] == 0x5A
            by_frame.mem[4001] = 0xA5
            assert by_grant.mem[4001] == 0xA5
        finally:
            by_grant.mem[4000:4002] = b"\0\0"
            by_grant.unmap()
            by_frame.unmap()
        assert s.vnc.vkbd.state == 4
    finally:
        s.close()
