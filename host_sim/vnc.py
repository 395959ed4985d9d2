"""An RFB 3.8 server (RFC 6143) on the vfb backend's frame, and the vkbd behind it.

What dom0's QEMU offers for a stub domain with vnc=1: the frame of the stub
domain's PV framebuffer (read from the backend's mapping of the frontend's
pages), and the viewer's keys and pointer as PV keyboard events.

- Versions 3.3, 3.7 and 3.8; security None only.
- Encodings Raw, Zlib and ZRLE (raw and solid tiles), whichever the client
  lists first; DesktopSize when the frame changes size (without it the
  client keeps its size and sees the frame clipped to it).
- Any true-colour pixel format the client sets (8, 16, 32 bits per pixel);
  colour-map formats are refused.
- Only what changed is sent: each client keeps a copy of what it was last
  sent; an incremental request is answered with the rows and column range
  that differ, at once if anything did, else at the frontend's next update.
- X keysyms become Linux key codes (US layout; a shifted character the client
  sent without Shift held gets Shift pressed around it); RFB buttons and the
  wheel go to vkbd as they are.

A hostile client (bad version, unknown message type, pixel formats out of
range, oversized cut text or encoding lists, a flood of input, a client
that stops reading) is logged and disconnected; nothing it sends can make
the server allocate without bound, block the loop or raise out of it.

Runs in host_sim's one loop (hv.add_fd); output waits in a bounded per-client
queue, flushed when the socket takes it.

    --vnc 127.0.0.1:N   TCP port 5900+N (QEMU's -vnc notation), loopback
    --vnc unix:PATH     a unix socket
"""
import errno
import os
import select
import socket
import sys
import struct
import time
import zlib

ENC_RAW = 0
ENC_ZLIB = 6
ENC_ZRLE = 16
ENC_DESKTOP_SIZE = -223
MAX_CLIENTS = 16
MAX_CUT_TEXT = 1 << 20
MAX_ENCODINGS = 4096
MAX_INBUF = 1 << 16  # a message is at most this much, but cut text (skipped as it comes)
MAX_OUTBOX = 64 << 20  # bytes queued for a client that does not read: then it goes
STALL_S = 10.0  # a client that takes nothing for this long goes
READ_CHUNK = 1 << 16
BAND = 16  # rows compared together when finding what changed
MAX_SIDE = 8192  # pixels of a frame side shown to clients (the rest is cut off)
MAX_FRAME_BYTES = 64 << 20
NAME = b"stubdm"

# The server's own format: 32 bpp, depth 24, little-endian, true colour, R<<16 G<<8 B:
# bytes B, G, R, X in memory, as the framebuffer holds them.
NATIVE = (32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
PIXEL_FORMAT_FMT = ">BBBBHHHBBB3x"


class VncError(Exception):
    pass


class Closed(VncError):
    """The client went (not its fault)."""


def parse_address(spec):
    """("tcp", (host, port)) from HOST:N (port 5900+N), or ("unix", path) from unix:PATH."""
    if spec.startswith("unix:"):
        if len(spec) <= 5:
            raise VncError("unix: needs a path")
        return ("unix", spec[5:])
    host, sep, disp = spec.rpartition(":")
    if not sep or not disp.isdigit() or int(disp) > 59635:
        raise VncError("VNC address %r: want HOST:DISPLAY (port 5900+DISPLAY) or unix:PATH"
                       % spec)
    return ("tcp", (host or "127.0.0.1", 5900 + int(disp)))


# ---- keysyms -> Linux key codes (US layout) -----------------------------------
_ROWS = (
    ("1234567890-=", "!@#$%^&*()_+", 2),
    ("qwertyuiop[]", "QWERTYUIOP{}", 16),
    ("asdfghjkl;'`", "ASDFGHJKL:\"~", 30),
    ("\\zxcvbnm,./", "|ZXCVBNM<>?", 43),
)
_SPECIAL = {
    0x20: 57, 0xFF08: 14, 0xFF09: 15, 0xFF0D: 28, 0xFF1B: 1, 0xFFFF: 111, 0xFF50: 102,
    0xFF51: 105, 0xFF52: 103, 0xFF53: 106, 0xFF54: 108, 0xFF55: 104, 0xFF56: 109,
    0xFF57: 107, 0xFF63: 110, 0xFFE1: 42, 0xFFE2: 54, 0xFFE3: 29, 0xFFE4: 97, 0xFFE5: 58,
    0xFFE9: 56, 0xFFEA: 100, 0xFE03: 100, 0xFFE7: 125, 0xFFE8: 126, 0xFFEB: 125,
    0xFFEC: 126, 0xFF67: 127, 0xFF61: 99, 0xFF13: 119, 0xFF7F: 69, 0xFF14: 70, 0xFF8D: 96,
    0xFFAA: 55, 0xFFAB: 78, 0xFFAD: 74, 0xFFAE: 83, 0xFFAF: 98, 0xFF9F: 111, 0xFFBD: 117,
}
_KP = (82, 79, 80, 81, 75, 76, 77, 71, 72, 73)  # KP_0 .. KP_9
KEY_LEFTSHIFT = 42
KEY_RIGHTSHIFT = 54


def _build_keymap():
    m = {}
    for plain, shifted, first in _ROWS:
        for i in range(len(plain)):
            code = first + i if first != 43 else (43 if i == 0 else 44 + i - 1)
            m[ord(plain[i])] = (code, False)
            m[ord(shifted[i])] = (code, True)
    for k, v in _SPECIAL.items():
        m[k] = (v, False)
    for i in range(10):
        m[0xFFB0 + i] = (_KP[i], False)
    for i in range(12):  # F1..F10 are 59..68, F11 87, F12 88
        m[0xFFBE + i] = (59 + i if i < 10 else 87 + i - 10, False)
    return m


KEYMAP = _build_keymap()


def keysym_to_linux(keysym):
    """(Linux key code, needs Shift) of an X keysym, or None."""
    return KEYMAP.get(keysym)


# ---- PNG ---------------------------------------------------------------------
def png_bytes(width, height, bgrx, level=1):
    """A PNG (8-bit RGB) of a frame in B, G, R, X bytes."""
    rgb = bytearray(width * height * 3)
    rgb[0::3] = bgrx[2::4]
    rgb[1::3] = bgrx[1::4]
    rgb[2::3] = bgrx[0::4]
    row = width * 3
    raw = bytearray()
    for y in range(height):
        raw.append(0)
        raw += rgb[y * row:(y + 1) * row]

    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(raw), level)) + chunk(b"IEND", b""))


def write_png(path, width, height, bgrx):
    with open(path, "wb") as f:
        f.write(png_bytes(width, height, bgrx))


# ---- pixel formats -------------------------------------------------------------
class PixelFormat:
    def __init__(self, bpp, depth, big, true, rmax, gmax, bmax, rs, gs, bs):
        self.bpp, self.depth, self.big, self.true = bpp, depth, big, true
        self.max = (rmax, gmax, bmax)
        self.shift = (rs, gs, bs)
        self.bytes = bpp // 8
        self.native = (bpp, depth, 1 if big else 0, 1 if true else 0, rmax, gmax, bmax,
                       rs, gs, bs) == NATIVE
        self.perm = None
        self._tables = None
        if bpp == 32 and self.max == (255, 255, 255) and all(s % 8 == 0 for s in self.shift) \
                and len(set(self.shift)) == 3:
            # Each channel is one byte: a permutation of B, G, R.
            idx = [(s // 8) if not big else 3 - s // 8 for s in self.shift]
            self.perm = idx  # output byte of R, G, B
        # ZRLE's compressed pixel: 3 bytes when the colour bits fit in 3 of the 4.
        self.cpixel = self.bytes
        self.cpix_off = 0
        if bpp == 32 and depth <= 24 and true:
            bits = 0
            for mx, s in zip(self.max, self.shift):
                bits |= mx << s
            if bits < (1 << 24):
                self.cpixel, self.cpix_off = 3, (0 if not big else 1)
            elif bits & 0xFF == 0:
                self.cpixel, self.cpix_off = 3, (1 if not big else 0)

    @staticmethod
    def parse(data):
        bpp, depth, big, true, rmax, gmax, bmax, rs, gs, bs = struct.unpack(PIXEL_FORMAT_FMT,
                                                                           data)
        if bpp not in (8, 16, 32):
            raise VncError("pixel format of %d bits per pixel" % bpp)
        if not true:
            raise VncError("colour-map pixel formats are not supported")
        for mx, s in ((rmax, rs), (gmax, gs), (bmax, bs)):
            if mx == 0 or (mx & (mx + 1)) or s >= bpp or (mx << s) >> bpp:
                raise VncError("pixel format channel max %d shift %d in %d bits"
                               % (mx, s, bpp))
        return PixelFormat(bpp, depth, big, true, rmax, gmax, bmax, rs, gs, bs)

    def convert(self, bgrx):
        """Pixels B, G, R, X -> this format."""
        if self.native:
            return bgrx
        n = len(bgrx) // 4
        if self.perm is not None:
            out = bytearray(n * 4)
            ri, gi, bi = self.perm
            out[ri::4] = bgrx[2::4]
            out[gi::4] = bgrx[1::4]
            out[bi::4] = bgrx[0::4]
            return bytes(out)
        # Any other true-colour format, still without a loop over pixels: per output
        # byte, each channel's share through a 256-entry table (bytes.translate),
        # the three shares OR-ed as big integers.
        if self._tables is None:
            self._tables = []
            for k in range(self.bytes):
                per = []
                for c in range(3):
                    mx, sh = self.max[c], self.shift[c]
                    per.append(bytes([((((v * mx + 127) // 255) << sh) >> (8 * k)) & 0xFF
                                      for v in range(256)]))
                self._tables.append(per)
        chans = (bgrx[2::4], bgrx[1::4], bgrx[0::4])  # R, G, B
        out = bytearray(n * self.bytes)
        for k in range(self.bytes):
            acc = 0
            for c in range(3):
                acc |= int.from_bytes(bytes(chans[c]).translate(self._tables[k][c]), "big")
            pos = self.bytes - 1 - k if self.big else k
            out[pos::self.bytes] = acc.to_bytes(n, "big")
        return bytes(out)


# ---- a client ------------------------------------------------------------------
class Client:
    def __init__(self, server, sock):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbox = bytearray()
        self.stage = "version"
        self.minor = 8
        self.pf = PixelFormat(*NATIVE)
        self.encoding = ENC_RAW
        self.desktop_size = False
        self.pending = None  # (incremental, x, y, w, h) awaiting an answer
        self.shadow = None  # (width, height, bytes): what this client was last sent
        self.size = None  # the size the client believes the frame has
        self.zlib = None
        self.zrle = None
        self.skip = 0  # cut-text bytes still to discard
        self.shift_down = 0
        self.last_taken = time.monotonic()
        self.updates = 0
        self.bytes_sent = 0

    # -- output --
    def send(self, data):
        if len(self.outbox) + len(data) > MAX_OUTBOX:
            raise VncError("client does not read (%d bytes queued)" % len(self.outbox))
        self.outbox += data
        self.flush()

    def flush(self):
        out = self.outbox
        pos = 0
        try:
            with memoryview(out) as mv:  # sends without copying the queue's tail
                while pos < len(out):
                    try:
                        n = self.sock.send(mv[pos:pos + (4 << 20)])
                    except BlockingIOError:
                        break
                    except OSError as e:
                        raise VncError("send: %s" % e)
                    if n <= 0:
                        break
                    pos += n
                    self.bytes_sent += n
                    self.last_taken = time.monotonic()
        finally:
            del out[:pos]
        if out and time.monotonic() - self.last_taken > STALL_S:
            raise VncError("client took nothing for %.0f s" % STALL_S)
        return not out

    # -- input --
    def readable(self):
        try:
            data = self.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            raise VncError("recv: %s" % e)
        if not data:
            raise Closed("client closed the connection")
        if self.skip:
            k = min(self.skip, len(data))
            self.skip -= k
            data = data[k:]
        self.inbuf += data
        if len(self.inbuf) > MAX_INBUF + READ_CHUNK:
            raise VncError("client sent %d bytes that make no message" % len(self.inbuf))
        while self.inbuf and self.step():
            pass

    def take(self, n):
        if len(self.inbuf) < n:
            return None
        d = bytes(self.inbuf[:n])
        del self.inbuf[:n]
        return d

    def step(self):
        """Parse one message if it is all here; False when more must come."""
        buf = self.inbuf
        if self.stage == "version":
            if len(buf) < 12:
                return False
            v = self.take(12)
            if v[:4] != b"RFB " or v[7:8] != b"." or v[11:12] != b"\n" \
                    or not v[4:7].isdigit() or not v[8:11].isdigit():
                raise VncError("bad protocol version %r" % v)
            major, minor = int(v[4:7]), int(v[8:11])
            if major != 3 or minor < 3:
                raise VncError("unsupported protocol version %r" % v)
            self.minor = 8 if minor >= 8 else (7 if minor >= 7 else 3)
            if self.minor == 3:
                self.send(struct.pack(">I", 1))  # the server picks None
                self.stage = "init"
            else:
                self.send(b"\x01\x01")  # one type: None
                self.stage = "security"
            return True
        if self.stage == "security":
            if len(buf) < 1:
                return False
            t = self.take(1)[0]
            if t != 1:
                if self.minor >= 8:
                    why = b"only security type None (1) is offered"
                    self.send(struct.pack(">I", 1) + struct.pack(">I", len(why)) + why)
                raise VncError("client chose security type %d" % t)
            if self.minor >= 8:
                self.send(struct.pack(">I", 0))
            self.stage = "init"
            return True
        if self.stage == "init":
            if len(buf) < 1:
                return False
            self.take(1)  # shared flag: every client shares
            w, h = self.server.size()
            self.size = (w, h)
            self.send(struct.pack(">HH", w, h) + struct.pack(PIXEL_FORMAT_FMT, *NATIVE)
                      + struct.pack(">I", len(NAME)) + NAME)
            self.stage = "normal"
            self.server.viewer(1)
            return True
        return self.message()

    def message(self):
        buf = self.inbuf
        t = buf[0]
        if t == 0:  # SetPixelFormat
            d = self.take(20)
            if d is None:
                return False
            self.pf = PixelFormat.parse(d[4:20])
            self.shadow = None  # everything again, in the new format
        elif t == 2:  # SetEncodings
            if len(buf) < 4:
                return False
            n = struct.unpack_from(">H", buf, 2)[0]
            if n > MAX_ENCODINGS:
                raise VncError("SetEncodings with %d encodings" % n)
            d = self.take(4 + 4 * n)
            if d is None:
                return False
            encs = struct.unpack(">%di" % n, d[4:])
            self.encoding = ENC_RAW
            for e in encs:
                if e in (ENC_RAW, ENC_ZLIB, ENC_ZRLE):
                    self.encoding = e
                    break
            self.desktop_size = ENC_DESKTOP_SIZE in encs
        elif t == 3:  # FramebufferUpdateRequest
            d = self.take(10)
            if d is None:
                return False
            inc, x, y, w, h = struct.unpack(">xBHHHH", d)
            self.pending = (inc, x, y, w, h)
            self.server.answer(self)
        elif t == 4:  # KeyEvent
            d = self.take(8)
            if d is None:
                return False
            down, key = struct.unpack(">xB2xI", d)
            self.server.key(self, key, down)
        elif t == 5:  # PointerEvent
            d = self.take(6)
            if d is None:
                return False
            mask, x, y = struct.unpack(">xBHH", d)
            self.server.pointer(self, mask, x, y)
        elif t == 6:  # ClientCutText: skipped
            if len(buf) < 8:
                return False
            n = struct.unpack_from(">I", buf, 4)[0]
            if n > MAX_CUT_TEXT:
                raise VncError("cut text of %d bytes" % n)
            self.take(8)
            k = min(n, len(self.inbuf))
            del self.inbuf[:k]
            self.skip = n - k
        else:
            raise VncError("unknown client message type %d" % t)
        return True

    # -- updates --
    def encode(self, x, y, w, h, bgrx):
        """One rectangle's header and data in the client's encoding and format."""
        # (header, data): queued one after the other, not joined (a frame is MiBs).
        px = self.pf.convert(bgrx)
        if self.encoding == ENC_ZRLE:
            return (struct.pack(">HHHHi", x, y, w, h, ENC_ZRLE), self._zrle(w, h, px))
        if self.encoding == ENC_ZLIB:
            if self.zlib is None:
                self.zlib = zlib.compressobj(1)
            z = self.zlib.compress(px) + self.zlib.flush(zlib.Z_SYNC_FLUSH)
            return (struct.pack(">HHHHiI", x, y, w, h, ENC_ZLIB, len(z)), z)
        return (struct.pack(">HHHHi", x, y, w, h, ENC_RAW), px)

    def _zrle(self, w, h, px):
        if self.zrle is None:
            self.zrle = zlib.compressobj(1)
        nb = self.pf.bytes
        cp, co = self.pf.cpixel, self.pf.cpix_off
        out = bytearray()
        row = w * nb
        for ty in range(0, h, 64):
            th = min(64, h - ty)
            for tx in range(0, w, 64):
                tw = min(64, w - tx)
                tile = b"".join([px[(ty + r) * row + tx * nb:(ty + r) * row + (tx + tw) * nb]
                                 for r in range(th)])
                first = tile[:nb]
                if tile == first * (tw * th):
                    out.append(1)
                    out += first[co:co + cp]
                else:
                    out.append(0)
                    if cp == nb:
                        out += tile
                    else:
                        t = bytearray(tw * th * 3)
                        for k in range(3):
                            t[k::3] = tile[co + k::4]
                        out += t
        z = self.zrle.compress(bytes(out)) + self.zrle.flush(zlib.Z_SYNC_FLUSH)
        return struct.pack(">I", len(z)) + z

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class VncServer:
    def __init__(self, hv, vfb, vkbd, address, log=None):
        self.hv = hv
        self.vfb = vfb
        self.vkbd = vkbd
        self.log = log or hv.log
        self.kind, self.addr = parse_address(address)
        self.clients = {}
        self.stats = {"clients": 0, "refused": 0, "updates": 0, "rects": 0, "bytes": 0,
                      "keys": 0, "pointer": 0, "bad_clients": 0, "raw": 0, "zlib": 0,
                      "zrle": 0}
        if self.kind == "unix":
            try:
                os.unlink(self.addr)
            except OSError:
                pass
            self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.lsock.bind(self.addr)
        else:
            self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.lsock.bind(self.addr)
        self.lsock.listen(8)
        self.lsock.setblocking(False)
        hv.add_fd(self.lsock.fileno(), self._accept)
        # A pipe kept readable while some client has output queued: the loop then
        # comes back to flush it (its poll watches only for input).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._woken = False
        hv.add_fd(self._wake_r, self._flush_all)
        if vfb is not None:
            vfb.listeners.append(self._frame_changed)

    def address(self):
        if self.kind == "unix":
            return "unix:" + self.addr
        h, p = self.lsock.getsockname()[:2]
        return "%s:%d" % (h, p - 5900)

    # -- connections --
    def _accept(self):
        try:
            s, _ = self.lsock.accept()
        except OSError:
            return
        if len(self.clients) >= MAX_CLIENTS:
            self.stats["refused"] += 1
            self.log("vnc: %d clients already: connection refused" % MAX_CLIENTS)
            s.close()
            return
        s.setblocking(False)
        if self.kind == "tcp":
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c = Client(self, s)
        self.clients[c.fd] = c
        self.stats["clients"] += 1
        self.hv.add_fd(c.fd, lambda: self._readable(c))
        self._guard(c, lambda: c.send(b"RFB 003.008\n"))

    def _guard(self, c, fn):
        try:
            fn()
        except Closed:
            self._drop(c)
            return
        except (VncError, struct.error, ValueError, OverflowError) as e:
            self.stats["bad_clients"] += 1
            self.log("vnc: client dropped: %s" % e)
            self._drop(c)
            return
        if c.outbox:
            self._wake()

    def _readable(self, c):
        if c.fd in self.clients:
            self._guard(c, c.readable)

    def _drop(self, c):
        if self.clients.pop(c.fd, None) is None:
            return
        self.hv.remove_fd(c.fd)
        if c.stage == "normal":
            self.viewer(-1)
        # Keys held by a client that went would stay down in the guest.
        if c.shift_down and self.vkbd is not None:
            self.vkbd.key(KEY_LEFTSHIFT, 0)
        c.close()

    def _wake(self):
        if not self._woken:
            self._woken = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _flush_all(self):
        try:
            os.read(self._wake_r, 64)
        except OSError:
            pass
        self._woken = False
        busy = [c for c in self.clients.values() if c.outbox]
        if not busy:
            return
        p = select.poll()
        for c in busy:
            p.register(c.fd, select.POLLOUT)
        p.poll(5)  # a little wait, so a slow reader doesn't spin the loop
        for c in busy:
            self._guard(c, c.flush)
            if c.fd in self.clients and not c.outbox and c.pending is not None:
                self._guard(c, lambda: self.answer(c))

    def close(self):
        for c in list(self.clients.values()):
            self._drop(c)
        self.hv.remove_fd(self.lsock.fileno())
        self.hv.remove_fd(self._wake_r)
        self.lsock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.vfb is not None and self._frame_changed in self.vfb.listeners:
            self.vfb.listeners.remove(self._frame_changed)
        if self.kind == "unix":
            try:
                os.unlink(self.addr)
            except OSError:
                pass

    # -- the frame --
    def size(self):
        vfb = self.vfb
        if vfb is None or vfb.fb is None or vfb.width <= 0 or vfb.height <= 0:
            return (640, 480)
        # The frontend (another domain) picks the geometry: what a client is shown is
        # bounded, so that it can't make every client's copy of the frame huge.
        w = min(vfb.width, MAX_SIDE)
        h = min(vfb.height, MAX_SIDE, MAX_FRAME_BYTES // (4 * w))
        return (w, h)

    def frame(self):
        w, h = self.size()
        vfb = self.vfb
        if vfb is None or vfb.fb is None:
            return w, h, bytes(w * h * 4)
        return w, h, vfb.rect(0, 0, w, h)

    def viewer(self, delta):
        if self.vfb is not None:
            self.vfb.viewer(delta)

    def _frame_changed(self, _kind):
        for c in list(self.clients.values()):
            if c.pending is not None and not c.outbox:
                self._guard(c, lambda: self.answer(c))

    def answer(self, c):
        """Answer c's pending FramebufferUpdateRequest if there is something to send."""
        if c.pending is None or c.outbox:
            return  # after the queued update has gone (a client that doesn't read gets
            # no more)
        inc, rx, ry, rw, rh = c.pending
        w, h, cur = self.frame()
        rects = []
        resized = (w, h) != c.size
        if resized and c.desktop_size:
            c.size = (w, h)
            rects.append((struct.pack(">HHHHi", 0, 0, w, h, ENC_DESKTOP_SIZE), b""))
            c.shadow = None
            inc, rx, ry, rw, rh = 0, 0, 0, w, h
        cw, ch = c.size
        vw, vh = min(w, cw), min(h, ch)  # what the client can see of the frame
        x0, y0 = min(rx, vw), min(ry, vh)
        x1, y1 = min(rx + rw, vw), min(ry + rh, vh)
        if x1 <= x0 or y1 <= y0:
            if not inc or rects:
                c.pending = None
                c.send(struct.pack(">BxH", 0, len(rects)) + b"".join(r[0] for r in rects))
            return
        shadow = c.shadow
        if not inc or shadow is None or shadow[0] != w or shadow[1] != h:
            boxes = [(x0, y0, x1 - x0, y1 - y0)]
        else:
            boxes = changed(w, shadow[2], cur, x0, y0, x1, y1)
        if not boxes and not rects:
            return  # nothing changed: wait for the frontend's next update
        for bx, by, bw, bh in boxes:
            rects.append(c.encode(bx, by, bw, bh, crop(cur, w, bx, by, bw, bh)))
        c.shadow = (w, h, cur)
        c.pending = None
        c.updates += 1
        self.stats["updates"] += 1
        self.stats["rects"] += len(rects)
        self.stats[{ENC_ZLIB: "zlib", ENC_ZRLE: "zrle"}.get(c.encoding, "raw")] += 1
        parts = [struct.pack(">BxH", 0, len(rects))]
        for head, body in rects:
            parts.append(head)
            parts.append(body)
        total = 0
        for p in parts:
            total += len(p)
        if len(c.outbox) + total > MAX_OUTBOX:
            raise VncError("client does not read (%d bytes queued)" % len(c.outbox))
        for p in parts:
            c.outbox += p
        self.stats["bytes"] += total
        c.flush()

    # -- input --
    def key(self, c, keysym, down):
        if self.vkbd is None:
            return
        self.stats["keys"] += 1
        m = keysym_to_linux(keysym)
        if m is None:
            return
        code, shifted = m
        if code in (KEY_LEFTSHIFT, KEY_RIGHTSHIFT):
            bit = 1 if code == KEY_LEFTSHIFT else 2
            c.shift_down = (c.shift_down | bit) if down else (c.shift_down & ~bit)
            self.vkbd.key(code, down)
            return
        fake = shifted and down and not c.shift_down
        if fake:
            self.vkbd.key(KEY_LEFTSHIFT, 1)
        self.vkbd.key(code, down)
        if fake:
            self.vkbd.key(KEY_LEFTSHIFT, 0)

    def pointer(self, c, mask, x, y):
        if self.vkbd is None:
            return
        self.stats["pointer"] += 1
        wheel = (-1 if mask & 8 else 0) + (1 if mask & 16 else 0)
        w, h = c.size or self.size()
        self.vkbd.pointer(x, y, mask & 7, wheel, w, h)


def crop(frame, width, x, y, w, h):
    s = width * 4
    if x == 0 and w == width:
        return frame[y * s:(y + h) * s]
    return b"".join([frame[(y + r) * s + x * 4:(y + r) * s + (x + w) * 4] for r in range(h)])


def changed(width, old, new, x0, y0, x1, y1):
    """The rectangles (x, y, w, h) of the region x0..x1, y0..y1 that differ between
    two frames: per band of BAND rows, the columns from the first to the last
    differing pixel."""
    s = width * 4
    out = []
    a, b = x0 * 4, x1 * 4
    y = y0
    while y < y1:
        ye = min(y + BAND, y1)
        lo, hi = None, None
        for r in range(y, ye):
            o = r * s
            ro, rn = old[o + a:o + b], new[o + a:o + b]
            if ro == rn:
                continue
            # First and last differing byte of the row, by halving.
            i, j = 0, len(rn)
            while j - i > 64:
                m = (i + j) // 2
                if ro[i:m] == rn[i:m]:
                    i = m
                else:
                    j = m
            while ro[i] == rn[i]:
                i += 1
            k, e = 0, len(rn)
            while e - k > 64:
                m = (k + e) // 2
                if ro[m:e] == rn[m:e]:
                    e = m
                else:
                    k = m
            while ro[e - 1] == rn[e - 1]:
                e -= 1
            i, e = i // 4, (e + 3) // 4
            lo = i if lo is None or i < lo else lo
            hi = e if hi is None or e > hi else hi
        if lo is not None:
            out.append((x0 + lo, y, hi - lo, ye - y))
        y = ye
    return out


# ---- a client, for `stubdm-sim screenshot` and tests -------------------------------
def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(n - len(buf))
        if not d:
            raise VncError("server closed the connection")
        buf += d
    return bytes(buf)


def capture(address, timeout=10.0):
    """(width, height, B,G,R,X bytes): one full frame from an RFB server."""
    kind, addr = parse_address(address)
    fam = socket.AF_UNIX if kind == "unix" else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(addr)
        v = _recv_exact(s, 12)
        if not v.startswith(b"RFB 003."):
            raise VncError("not an RFB server: %r" % v)
        s.sendall(b"RFB 003.008\n")
        n = _recv_exact(s, 1)[0]
        if n == 0:
            ln = struct.unpack(">I", _recv_exact(s, 4))[0]
            raise VncError("server refused: %r" % _recv_exact(s, min(ln, 4096)))
        types = _recv_exact(s, n)
        if 1 not in types:
            raise VncError("server wants security types %r" % list(types))
        s.sendall(b"\x01")
        if struct.unpack(">I", _recv_exact(s, 4))[0] != 0:
            raise VncError("security handshake failed")
        s.sendall(b"\x01")
        w, h = struct.unpack(">HH", _recv_exact(s, 4))
        _recv_exact(s, 16)
        ln = struct.unpack(">I", _recv_exact(s, 4))[0]
        _recv_exact(s, min(ln, 1 << 16))
        s.sendall(b"\x00\x00\x00\x00" + struct.pack(PIXEL_FORMAT_FMT, *NATIVE))
        s.sendall(struct.pack(">BxHii", 2, 2, ENC_RAW, ENC_DESKTOP_SIZE))
        s.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        frame = bytearray(w * h * 4)
        while True:
            t = _recv_exact(s, 1)[0]
            if t != 0:
                raise VncError("unexpected server message %d" % t)
            nrect = struct.unpack(">xH", _recv_exact(s, 3))[0]
            full = False
            for _ in range(nrect):
                x, y, rw, rh, enc = struct.unpack(">HHHHi", _recv_exact(s, 12))
                if enc == ENC_DESKTOP_SIZE:
                    w, h = rw, rh
                    frame = bytearray(w * h * 4)
                    continue
                if enc != ENC_RAW or x + rw > w or y + rh > h:
                    raise VncError("rectangle %d,%d %dx%d encoding %d" % (x, y, rw, rh, enc))
                data = _recv_exact(s, rw * rh * 4)
                for r in range(rh):
                    o = ((y + r) * w + x) * 4
                    frame[o:o + rw * 4] = data[r * rw * 4:(r + 1) * rw * 4]
                if (x, y, rw, rh) == (0, 0, w, h):
                    full = True
            if full:
                return w, h, bytes(frame)
            s.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
    except OSError as e:
        if e.errno == errno.ECONNREFUSED or isinstance(e, FileNotFoundError):
            raise VncError("no VNC server at %s (is `stubdm-sim boot --vnc %s` running?)"
                           % (address, address))
        raise VncError("%s: %s" % (address, e))
    finally:
        s.close()


# ---- stubdm-sim screenshot ---------------------------------------------------------
def cmd_screenshot(args):
    try:
        w, h, frame = capture(args.vnc, timeout=args.timeout)
    except VncError as e:
        print("stubdm-sim screenshot: %s" % e, file=sys.stderr)
        return 1
    write_png(args.file, w, h, frame)
    print("%s: %dx%d from %s" % (args.file, w, h, args.vnc))
    return 0


def add_command(sub):
    sc = sub.add_parser(
        "screenshot", help="the current frame of a running guest's display, as a PNG",
        description="Take the current frame from a running guest's display: connects as a "
        "VNC client to the address a `stubdm-sim boot --vnc ADDR` (or a scripted session "
        "with vnc=ADDR) serves, asks for the whole frame and writes it as a PNG.")
    sc.add_argument("file", metavar="FILE.png")
    sc.add_argument("--vnc", default="127.0.0.1:0", metavar="HOST:N|unix:PATH",
                    help="where the guest's VNC server is: HOST:N (TCP port 5900+N, QEMU's "
                    "-vnc notation) or unix:PATH (default 127.0.0.1:0, as boot --vnc "
                    "127.0.0.1:0)")
    sc.add_argument("--timeout", type=float, default=10.0, metavar="S",
                    help="give up after S seconds (default 10)")
    sc.set_defaults(func=cmd_screenshot)
