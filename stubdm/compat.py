# The few shims that let one source run on MicroPython 1.25 and CPython 3.11
# (../shared/PORTABLE_PYTHON.md). Import them from here, nowhere else.
import struct
import sys

try:
    from micropython import const  # noqa: F401
except ImportError:

    def const(x):
        return x


try:
    from time import ticks_add, ticks_diff, ticks_us  # MicroPython
except ImportError:
    from time import perf_counter as _perf_counter

    def ticks_us():
        return int(_perf_counter() * 1000000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b


# MicroPython raises ValueError where CPython raises struct.error.
struct_error = getattr(struct, "error", ValueError)

MICROPYTHON = sys.implementation.name == "micropython"
