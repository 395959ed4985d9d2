# Logging for the device model. Guest errors (QEMU's LOG_GUEST_ERROR) are the
# guest misbehaving: logged, counted, and survived, never fatal.
#
# Everything a guest can make us log (its errors, what it asks of features we
# lack, and what it tells us: the platform device's log port, PV driver
# numbers, unplug masks) goes through a rate limit per source: a burst of
# BURST lines, then RATE lines a second. What a source had suppressed is
# reported, with its count, on the first line it gets through afterwards
# (and by flush_suppressed(), e.g. at exit). A hostile guest can then fill
# at most a few hundred bytes of log a second per source, whatever it does.
import sys

from stubdm.compat import ticks_add, ticks_diff, ticks_us

_counts = {"guest_error": 0, "unimp": 0, "suppressed": 0}
verbose = 1  # 0 quiet, 1 warnings and guest errors, 2 debug
BURST = 20  # lines a source may log at once
RATE = 5  # lines a second after the burst
LINE_MAX = 240  # longer guest-made messages are cut
# source -> [credit, last refill (ticks_us), suppressed since last line, quiet until
# (ticks_us; 0: not quiet)]
_buckets = {}
_sources = []  # the same keys, in first-seen order (MicroPython dicts have none)
_out = None  # a test may point this at a list to capture lines


def _emit(kind, where, msg):
    line = "stubdm: " + kind + ": " + where + ": " + msg + "\n"
    if _out is not None:
        _out.append(line)
    else:
        sys.stderr.write(line)


def _allow(key):
    """Take a token for source `key`; False when it must stay quiet."""
    now = ticks_us()
    b = _buckets.get(key)
    if b is not None and b[3] and ticks_diff(b[3], now) > 0:
        # Still quiet (a flood's common case): no refill to work out.
        b[2] += 1
        _counts["suppressed"] += 1
        return None
    if b is None:
        if len(_sources) >= 256:  # keys are code constants; never grow without bound
            key = "other"
            b = _buckets.get(key)
        if b is None:
            b = [BURST * 1000000, now, 0, 0]
            _buckets[key] = b
            _sources.append(key)
    # Credit in line-microseconds: integers only (the stub domain's
    # MicroPython may have no floats). A negative or huge gap (the tick
    # counter wrapped) means a long quiet time: the bucket is full.
    dt = ticks_diff(now, b[1])
    b[1] = now
    if dt < 0 or dt > BURST * 1000000:
        b[0] = BURST * 1000000
    else:
        b[0] = min(BURST * 1000000, b[0] + dt * RATE)
    if b[0] >= 1000000:
        b[0] -= 1000000
        b[3] = 0
        return b
    # Quiet until the next whole line of credit (never 0: 0 means "not quiet").
    b[3] = ticks_add(now, (1000000 - b[0]) // RATE + 1) or 1
    b[2] += 1
    _counts["suppressed"] += 1
    return None


def _limited(kind, where, msg):
    b = _allow(kind + ":" + where)
    if b is None:
        return
    if b[2]:
        _emit(kind, where, "(%d similar messages suppressed)" % b[2])
        b[2] = 0
    if len(msg) > LINE_MAX:
        msg = msg[:LINE_MAX] + "..."
    _emit(kind, where, msg)


def guest_error(where, msg):
    """The guest did something a real device would not accept."""
    _counts["guest_error"] += 1
    if verbose:
        _limited("guest error", where, msg)


def unimp(where, msg):
    """The guest used a feature this model does not implement."""
    _counts["unimp"] += 1
    if verbose:
        _limited("unimplemented", where, msg)


def guest(where, msg):
    """Something the guest told us (its log port, driver versions, unplugs)."""
    if verbose:
        _limited("guest", where, msg)


def info(where, msg):
    """The device model's own news (never a guest's doing: use guest() for that)."""
    if verbose:
        _emit("info", where, msg)


def debug(where, msg):
    if verbose > 1:
        _limited("debug", where, msg)


def flush_suppressed():
    """Report every source's suppressed count now (e.g. at exit)."""
    for key in _sources:
        b = _buckets[key]
        if b[2]:
            kind, where = key.split(":", 1) if ":" in key else ("guest", key)
            _emit(kind, where, "(%d similar messages suppressed)" % b[2])
            b[2] = 0


def count(kind):
    return _counts.get(kind, 0)


def reset_counts():
    for k in ("guest_error", "unimp", "suppressed"):
        _counts[k] = 0
    _buckets.clear()
    while _sources:
        _sources.pop()
