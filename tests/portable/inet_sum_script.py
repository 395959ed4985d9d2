# The glue's C ones'-complement sum (inet_sum, stubdm/mapcache/inet_sum.h) and
# netutil's pure-Python fallback give the same value on every buffer kind,
# offset and length (odd ones included), and the C one refuses ranges outside
# the buffer. Run under CPython and MicroPython by
# tests/test_micropython_portable.py: the outputs must be identical.
from common import Lcg

from stubdm.devices import netutil

c_sum = netutil._c_sum
print("c sum", c_sum is not None)
rng = Lcg(12)
cases = [b"", b"\x00", b"\xff", b"\x00\x00\x00", b"\xff\xff", b"\xff\xff\xff\xff\x00\x01",
         b"\x12\x34\x56", bytes(1500), b"\xff" * 1501]
for n in (1, 2, 3, 5, 20, 21, 63, 64, 65, 1499, 1514, 1515, 4096, 9001):
    cases.append(rng.bytes_(n))
total = 0
for data in cases:
    n = len(data)
    for kind in ("bytes", "bytearray", "memoryview", "slice"):
        if kind == "bytes":
            buf = data
        elif kind == "bytearray":
            buf = bytearray(data)
        elif kind == "memoryview":
            buf = memoryview(bytearray(data))
        else:
            buf = memoryview(b"\xab" + data + b"\xcd")[1:n + 1]
        for start, end in ((0, n), (1, n), (0, n - 1), (3, n - 2), (n // 2, n), (0, 0)):
            if start < 0 or end < start or end > n:
                continue
            want = netutil.py_ones_sum(buf, start, end) if end > start else 0
            got = c_sum(buf, start, end)
            assert got == want, (kind, n, start, end, got, want)
            assert netutil.ones_sum(buf, start, end) == want
            total = (total + want) & 0xFFFFFFFF
    print(n, netutil.ones_sum(data, 0, n))
print("all sums", total)
for start, end in ((-1, 2), (2, 1), (0, 4)):
    try:
        c_sum(b"abc", start, end)
        print("accepted", start, end)
    except ValueError:
        print("refused", start, end)
print("slice end past the buffer", netutil.ones_sum(b"\x01\x02\x03", 1, 99))
