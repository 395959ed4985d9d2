# The device model's xenstore: libxenstore's xs_* API through the C glue
# (Debian's libxenstore in dom0 and under host_sim, where XENSTORED_PATH
# names the device model's domain's socket; MiniOS's own xs_* in a stub
# domain). Values are str here; what another domain wrote is untrusted and
# every reader checks it.
import errno as _errno

from stubdm import log
from stubdm.hypervisor import HypervisorError, glue

# xenstore_lib.h
PERM_NONE, PERM_READ, PERM_WRITE = 0, 1, 2
# xs_wire.h: the longest value a node can hold.
PAYLOAD_MAX = 4096
# events(): the connection is gone. libxenstore closes its socket when its reader
# finds the other end closed and then answers EINVAL; a read on the socket itself
# says ECONNRESET or EPIPE (32: MicroPython's errno module has no EPIPE); EBADF once
# the fd is closed.
LOST = -1
LOST_ERRNOS = (_errno.EINVAL, _errno.ECONNRESET, 32, _errno.EBADF)


class Xenstore:
    """One connection. Watch events are polled: register fileno() in the event
    loop, then call events() when it is readable."""

    def __init__(self):
        if glue is None:
            raise HypervisorError("the C glue is not built (run scons)", 0)
        try:
            self.xs = glue.Xs()
        except OSError as e:
            raise HypervisorError("opening xenstore", e.errno or 0)
        self._watches = {}  # token -> callback(path)

    def close(self):
        self.xs.close()

    def read(self, path, tx=0):
        """The value at path as str, or None if it does not exist (or is not ours to read)."""
        try:
            v = self.xs.read(tx, path)
        except OSError as e:
            if e.errno in (_errno.ENOENT, _errno.EACCES):
                return None
            raise HypervisorError("xenstore read " + path, e.errno or 0)
        try:
            return v.decode()
        except UnicodeError:
            return None

    def read_int(self, path, lo, hi, tx=0):
        """An integer in lo..hi written by someone else, or None if absent or out of range."""
        v = self.read(path, tx)
        if v is None:
            return None
        v = v.strip()
        if not v or len(v) > 20:
            return None
        try:
            n = int(v, 10)
        except ValueError:
            return None
        if n < lo or n > hi:
            return None
        return n

    def write(self, path, value, tx=0):
        self._do("write", self.xs.write, tx, path, str(value))

    def mkdir(self, path, tx=0):
        self._do("mkdir", self.xs.mkdir, tx, path)

    def rm(self, path, tx=0):
        try:
            self.xs.rm(tx, path)
        except OSError as e:
            if e.errno != _errno.ENOENT:
                raise HypervisorError("xenstore rm " + path, e.errno or 0)

    def directory(self, path, tx=0):
        """The children of path, or [] if it does not exist."""
        try:
            return self.xs.directory(tx, path)
        except OSError as e:
            if e.errno in (_errno.ENOENT, _errno.EACCES):
                return []
            raise HypervisorError("xenstore directory " + path, e.errno or 0)

    def set_perms(self, path, perms, tx=0):
        self._do("set_perms", self.xs.set_perms, tx, path, perms)

    def get_perms(self, path, tx=0):
        return self._do("get_perms", self.xs.get_perms, tx, path)

    def _do(self, what, f, tx, path, *args):
        try:
            return f(tx, path, *args)
        except OSError as e:
            raise HypervisorError("xenstore %s %s" % (what, path), e.errno or 0)

    def transaction(self, body, tries=16):
        """Run body(tx) in a transaction, again while the commit conflicts (EAGAIN)."""
        for _ in range(tries):
            try:
                tx = self.xs.transaction_start()
            except OSError as e:
                raise HypervisorError("xenstore transaction_start", e.errno or 0)
            try:
                result = body(tx)
            except Exception:
                try:
                    self.xs.transaction_end(tx, True)
                except OSError:
                    pass
                raise
            try:
                if self.xs.transaction_end(tx, False):
                    return result
            except OSError as e:
                raise HypervisorError("xenstore transaction_end", e.errno or 0)
        raise HypervisorError("xenstore transaction kept conflicting", _errno.EAGAIN)

    def domain_path(self, domid):
        try:
            return self.xs.domain_path(domid)
        except OSError as e:
            raise HypervisorError("xenstore get_domain_path", e.errno or 0)

    # ---- watches ----
    def watch(self, path, token, callback):
        """callback(path) for each event; the first comes at once (xenstore's rule)."""
        self._watches[token] = callback
        self._do("watch", lambda tx, p: self.xs.watch(p, token), 0, path)

    def unwatch(self, path, token):
        self._watches.pop(token, None)
        try:
            self.xs.unwatch(path, token)
        except OSError:
            pass  # already gone with its node's domain, or never taken

    def fileno(self):
        return self.xs.fileno()

    def events(self, limit=64):
        """Deliver the queued watch events (at most limit, so a flood can't starve the loop).

        The count delivered, or LOST when the connection to xenstored is gone
        (libxenstore's reader thread saw it close and xs_check_watch says EINVAL):
        the caller stops polling it, the emulation goes on."""
        n = 0
        while n < limit:
            try:
                ev = self.xs.check_watch()
            except OSError as e:
                if e.errno in LOST_ERRNOS:
                    return LOST
                raise HypervisorError("xenstore watch", e.errno or 0)
            if ev is None:
                return n
            n += 1
            cb = self._watches.get(ev[1])
            if cb is not None:
                try:
                    cb(ev[0])
                except HypervisorError as e:
                    # One device's trouble with xenstore (its node removed, say)
                    # is that device's, not the device model's end.
                    log.info("xenstore", "watch %s: %s" % (ev[1], e))
        return n
