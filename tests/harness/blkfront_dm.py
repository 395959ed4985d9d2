# A device model with a test driver on its PV disks, for tests/test_blkfront.py:
# stubdm's own DeviceModel (same arguments, same loop), plus, on each vbd
# frontend, a watch on test-go that runs a fixed sequence of disk operations
# through the BlockDevice API a controller uses, and writes test-result.
# Runs on CPython and MicroPython (PORTABLE_PYTHON.md).
import sys

from stubdm import block
from tests.harness.common import run_with_drivers

BIG = (1 << 28) + 5  # a sector past LBA28's reach
# MicroPython runs the harness in the device model's small heap: a smaller
# transfer (still indirect: more than 11 pages).
LARGE = 1024 * 1024 + 4096 if sys.implementation.name != "micropython" else 64 * 1024 + 4096


def pattern(seed, n):
    base = bytes([(seed * 7 + i) & 0xFF for i in range(256)])
    return base * (n // 256)


class Driver:
    def __init__(self, fe):
        self.fe = fe
        self.steps = []
        self.errors = []
        fe.xs.watch(fe.path + "/test-go", "harness:" + fe.devid, self.go)

    def go(self, _path):
        v = self.fe.xs.read(self.fe.path + "/test-go")
        if not v:
            return
        self.fe.xs.rm(self.fe.path + "/test-go")
        self.errors = []
        self.steps = self.plan(v)
        self.next()

    def plan(self, what):
        import gc

        gc.collect()  # the last run's buffers, before this one's (a small heap)
        fe = self.fe
        steps = []
        if what == "rw":
            data = bytearray(pattern(1, LARGE))
            mv = memoryview(data)
            # Uneven views, as a PRD table gives them.
            views = [mv[0:1536], mv[1536:1536 + 40960], mv[1536 + 40960:]]
            steps.append(("write", 8, views, block.OK))
            back = bytearray(len(data))
            bv = memoryview(back)
            steps.append(("read", 8, [bv[0:4096], bv[4096:]], block.OK))
            steps.append(("check", back, data))
            steps.append(("flush", 0, [], block.OK))
            # Several in flight at once.
            many = [bytearray(pattern(10 + i, 16384)) for i in range(8)]
            steps.append(("multi-write", 4096, many, block.OK))
            got = [bytearray(16384) for i in range(8)]
            steps.append(("multi-read", 4096, got, block.OK))
            for i in range(8):
                steps.append(("check", got[i], many[i]))
            last = fe.sectors - 1
            steps.append(("write", last, [memoryview(bytearray(pattern(3, 512)))], block.OK))
            steps.append(("read", last, [memoryview(bytearray(1024))], block.EINVAL))
            if fe.sectors > BIG + 16:
                hi = bytearray(pattern(4, 8192))
                steps.append(("write", BIG, [memoryview(hi)], block.OK))
                hb = bytearray(8192)
                steps.append(("read", BIG, [memoryview(hb)], block.OK))
                steps.append(("check", hb, hi))
                steps.append(("flush", 0, [], block.OK))
        elif what == "ro":
            steps.append(("write", 0, [memoryview(bytearray(512))], block.EROFS))
            head = bytearray(2048)
            steps.append(("read", 16, [memoryview(head)], block.OK))
            steps.append(("report", head))
        elif what == "read-all":
            pass
        return steps

    def next(self):
        while self.steps:
            st = self.steps.pop(0)
            kind = st[0]
            if kind == "check":
                if st[1] != st[2]:
                    self.errors.append("data differs")
                continue
            if kind == "report":
                self.fe.xs.write(self.fe.path + "/test-data", bytes(st[1][:32]).hex())
                continue
            want = st[3]
            if kind in ("multi-write", "multi-read"):
                op = block.WRITE if kind == "multi-write" else block.READ
                left = [len(st[2])]

                def one(status, want=want, left=left, kind=kind):
                    if status != want:
                        self.errors.append("%s: %d, wanted %d" % (kind, status, want))
                    left[0] -= 1
                    if left[0] == 0:
                        self.next()
                for i in range(len(st[2])):
                    self.fe.submit(op, st[1] + i * 32, [memoryview(st[2][i])], one)
                return
            op = {"write": block.WRITE, "read": block.READ, "flush": block.FLUSH}[kind]

            def done(status, want=want, kind=kind):
                if status != want:
                    self.errors.append("%s: %d, wanted %d" % (kind, status, want))
                self.next()
            self.fe.submit(op, st[1], st[2], done)
            return
        st = self.fe.stats
        self.fe.xs.write(self.fe.path + "/test-result", "%s requests=%d indirect=%d" % (
            "; ".join(self.errors) if self.errors else "ok", st["requests"], st["indirect"]))


sys.exit(run_with_drivers("vbd", Driver))
