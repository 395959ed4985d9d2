"""What a display adapter draws into, and what shows it.

The VGA device (stubdm/devices/vga.py) renders the guest's screen into a
Surface; whoever shows the screen provides one: the PV framebuffer frontend
(stubdm/frontends/fbfront.py) in a stub domain, MemorySurface in tests and
headless runs.  A surface is always 32 bits per pixel, bytes B, G, R, X in
memory (the PV framebuffer's depth 32, and what VNC clients take without
conversion); the adapter converts 8/15/16/24 bpp modes and text while
drawing, so the consumer never needs the guest's format.

The adapter calls, in this order:
  resize(width, height): a new mode.  Returns False when the surface cannot
      hold it (bigger than its memory): the adapter then draws nothing and
      logs a guest error.  After a successful resize, `stride` and `buf` are
      valid and the whole frame counts as changed.
  buf[...] = ...: pixels at y * stride + x * 4.
  update(x, y, w, h): the rectangle has changed; once per refresh per
      rectangle, already clipped to the frame.
"""

BYTES_PER_PIXEL = 4


class Surface:
    """The interface; MemorySurface and fbfront implement it."""

    width = 0
    height = 0
    stride = 0
    buf = None  # memoryview, at least stride * height bytes
    max_bytes = 0  # what this surface can hold

    def fits(self, width, height):
        if width <= 0 or height <= 0:
            return False
        return width * BYTES_PER_PIXEL * height <= self.max_bytes

    def resize(self, width, height):
        raise NotImplementedError

    def update(self, x, y, w, h):
        raise NotImplementedError


class MemorySurface(Surface):
    """A surface in the device model's own memory, keeping a list of the
    changed rectangles until the consumer takes them."""

    def __init__(self, max_bytes=16 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._mem = bytearray(max_bytes)
        self.buf = memoryview(self._mem)
        self.dirty = []
        self.resizes = 0

    def resize(self, width, height):
        if not self.fits(width, height):
            return False
        self.width = width
        self.height = height
        self.stride = width * BYTES_PER_PIXEL
        self.resizes += 1
        self.dirty = [(0, 0, width, height)]
        return True

    def update(self, x, y, w, h):
        self.dirty.append((x, y, w, h))

    def take_dirty(self):
        d = self.dirty
        self.dirty = []
        return d

    def pixel(self, x, y):
        """(r, g, b) at x, y: for tests."""
        o = y * self.stride + x * BYTES_PER_PIXEL
        b = self._mem
        return (b[o + 2], b[o + 1], b[o])

    def frame(self):
        """The visible frame as bytes, rows of width * 4 (B, G, R, X)."""
        return bytes(self.buf[:self.stride * self.height])
