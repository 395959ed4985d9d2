# Logging for the device model. Guest errors (QEMU's LOG_GUEST_ERROR) are the
# guest misbehaving: logged, counted, and survived, never fatal.
import sys

_counts = {"guest_error": 0, "unimp": 0}
verbose = 1  # 0 quiet, 1 warnings and guest errors, 2 debug
_limit = 200  # stop printing after this many guest errors; a hostile guest can flood


def _emit(kind, where, msg):
    sys.stderr.write("stubdm: " + kind + ": " + where + ": " + msg + "\n")


def guest_error(where, msg):
    """The guest did something a real device would not accept."""
    n = _counts["guest_error"] + 1
    _counts["guest_error"] = n
    if verbose and n <= _limit:
        _emit("guest error", where, msg)


def unimp(where, msg):
    """The guest used a feature this model does not implement."""
    _counts["unimp"] += 1
    if verbose:
        _emit("unimplemented", where, msg)


def info(where, msg):
    if verbose:
        _emit("info", where, msg)


def debug(where, msg):
    if verbose > 1:
        _emit("debug", where, msg)


def count(kind):
    return _counts.get(kind, 0)


def reset_counts():
    for k in ("guest_error", "unimp"):
        _counts[k] = 0
