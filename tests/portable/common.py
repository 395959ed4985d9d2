# Helpers shared by the portable scripts: a deterministic pseudo-random
# generator (the same numbers on MicroPython and CPython, whose `random`
# modules differ; small enough for MicroPython small ints) and a canonical
# printer for state dicts.


class Lcg:
    """Park-Miller style LCG (glibc's TYPE_0 constants), 31-bit state."""

    def __init__(self, seed):
        self.x = seed & 0x7FFFFFFF

    def next(self):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x

    def below(self, n):
        """0 <= r < n; uses the high bits, the low bits of this LCG are weak."""
        return (self.next() >> 8) % n

    def byte(self):
        return self.below(256)

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def chance(self, percent):
        return self.below(100) < percent

    def bytes_(self, n):
        out = bytearray(n)
        for i in range(n):
            out[i] = self.byte()
        return bytes(out)


def hexs(b):
    return "".join(["%02x" % c for c in b])


def show(obj):
    """A canonical text of a save-state value: dict keys sorted (MicroPython
    dicts have no insertion order), bytes in hex."""
    if isinstance(obj, dict):
        keys = sorted(obj.keys())
        return "{" + ", ".join([str(k) + ": " + show(obj[k]) for k in keys]) + "}"
    if isinstance(obj, (bytes, bytearray)):
        return "x'" + hexs(obj) + "'"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join([show(v) for v in obj]) + "]"
    if isinstance(obj, bool):
        return "1" if obj else "0"
    if isinstance(obj, int):
        return "%d" % obj
    if obj is None:
        return "None"
    return str(obj)


class Recorder:
    """An IRQ sink (or any callback) that remembers what it was told."""

    def __init__(self, name):
        self.name = name
        self.events = []

    def __call__(self, *args):
        self.events.append(args)

    def take(self):
        ev = self.events
        self.events = []
        return ev
