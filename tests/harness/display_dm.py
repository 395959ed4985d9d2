# A device model whose "display adapter" is the test: stubdm's own DeviceModel,
# plus, on the vfb frontend, a painter that draws as an adapter does (resize,
# pixels into buf, update, flush) what the test writes to the frontend's node:
#   paint = "W H BG X Y RW RH FG": a W x H frame of colour BG (0xRRGGBB) with an
#           RW x RH box of colour FG at X, Y; the painter answers painted = the
#           same string once it has flushed.
# Runs on CPython and MicroPython.
import sys

from tests.harness.common import run_with_drivers


def fill(fe, x, y, w, h, rgb):
    px = bytes([rgb & 0xFF, (rgb >> 8) & 0xFF, (rgb >> 16) & 0xFF, 0])
    row = px * w
    buf, s = fe.buf, fe.stride
    for r in range(y, y + h):
        buf[r * s + x * 4:r * s + (x + w) * 4] = row
    fe.update(x, y, w, h)


class Painter:
    def __init__(self, fe):
        self.fe = fe
        fe.xs.watch(fe.path + "/paint", "harness-paint:" + fe.devid, self.paint)

    def paint(self, _path):
        fe = self.fe
        spec = fe.xs.read(fe.path + "/paint")
        if not spec:
            return
        w, h, bg, x, y, rw, rh, fg = [int(v, 0) for v in spec.split()]
        if (w, h) != (fe.width, fe.height) and not fe.resize(w, h):
            fe.xs.write(fe.path + "/painted", "refused")
            return
        fill(fe, 0, 0, fe.width, fe.height, bg)
        fill(fe, x, y, rw, rh, fg)
        fe.flush()
        fe.xs.write(fe.path + "/painted", spec)


sys.exit(run_with_drivers("vfb", Painter))
