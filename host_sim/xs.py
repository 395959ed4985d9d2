"""host_sim's xenstore client: Debian's libxenstore (libxenstore.so.4) through
cffi in ABI mode, for host_sim's single-threaded poll loops.

`Xs(socket_path)` connects to that socket (libxenstore reads XENSTORED_PATH at
xs_open time; it is set for the call and restored). `fileno()` is the watch fd
to poll; `read_watch()` never blocks.
"""
import errno as _errno
import os

from cffi import FFI

# Declarations exactly as /usr/include/xenstore.h and xenstore_lib.h give them
# (tests/test_xs_client.py checks each against the header).
CDEF = """
typedef uint32_t xs_transaction_t;
struct xs_handle;
struct xs_permissions
{
    unsigned int id;
    unsigned int perms;
};
struct xs_handle *xs_open(unsigned long flags);
void xs_close(struct xs_handle *xsh);
char **xs_directory(struct xs_handle *h, xs_transaction_t t,
                    const char *path, unsigned int *num);
void *xs_read(struct xs_handle *h, xs_transaction_t t,
              const char *path, unsigned int *len);
bool xs_write(struct xs_handle *h, xs_transaction_t t,
              const char *path, const void *data, unsigned int len);
bool xs_mkdir(struct xs_handle *h, xs_transaction_t t,
              const char *path);
bool xs_rm(struct xs_handle *h, xs_transaction_t t,
           const char *path);
struct xs_permissions *xs_get_permissions(struct xs_handle *h,
                                          xs_transaction_t t,
                                          const char *path, unsigned int *num);
bool xs_set_permissions(struct xs_handle *h, xs_transaction_t t,
                        const char *path, struct xs_permissions *perms,
                        unsigned int num_perms);
bool xs_watch(struct xs_handle *h, const char *path, const char *token);
int xs_fileno(struct xs_handle *h);
char **xs_check_watch(struct xs_handle *h);
bool xs_unwatch(struct xs_handle *h, const char *path, const char *token);
xs_transaction_t xs_transaction_start(struct xs_handle *h);
bool xs_transaction_end(struct xs_handle *h, xs_transaction_t t,
                        bool abort);
bool xs_introduce_domain(struct xs_handle *h,
                         unsigned int domid,
                         unsigned long mfn,
                         unsigned int eventchn);
bool xs_set_target(struct xs_handle *h,
                   unsigned int domid,
                   unsigned int target);
bool xs_release_domain(struct xs_handle *h, unsigned int domid);
char *xs_get_domain_path(struct xs_handle *h, unsigned int domid);
bool xs_is_domain_introduced(struct xs_handle *h, unsigned int domid);
"""
XS_OPEN_SOCKETONLY = 1 << 1   # xenstore.h
XS_WATCH_PATH, XS_WATCH_TOKEN = 0, 1  # xs_wire.h enum xs_watch_type
PERM_BITS = {"n": 0, "r": 1, "w": 2, "b": 3}
PERM_LETTER = {v: k for k, v in PERM_BITS.items()}
LIBRARY = "libxenstore.so.4"

ffi = FFI()
ffi.cdef(CDEF)
ffi.cdef("void free(void *ptr);")
_lib = None
_libc = None


def lib():
    """The library, loaded on first use (OSError if Debian's libxenstore4 is missing)."""
    global _lib, _libc
    if _lib is None:
        _libc = ffi.dlopen(None)
        _lib = ffi.dlopen(LIBRARY)
    return _lib


class XsError(OSError):
    """A failed call: .errno as libxenstore set it, .name its symbol ("ENOENT")."""

    def __init__(self, num, what):
        self.name = _errno.errorcode.get(num, str(num))
        super().__init__(num, "%s: %s" % (what, self.name))


def _check(ok, what):
    if not ok:
        raise XsError(ffi.errno, what)


def _b(s):
    return s if isinstance(s, bytes) else s.encode()


class Xs:
    """One libxenstore connection to the xenstored listening on socket_path."""

    def __init__(self, socket_path):
        L = lib()
        old = os.environ.get("XENSTORED_PATH")
        os.environ["XENSTORED_PATH"] = socket_path
        try:
            self._h = L.xs_open(XS_OPEN_SOCKETONLY)
        finally:
            if old is None:
                del os.environ["XENSTORED_PATH"]
            else:
                os.environ["XENSTORED_PATH"] = old
        if self._h == ffi.NULL:
            raise XsError(ffi.errno, "xs_open(%s)" % socket_path)
        self.socket_path = socket_path

    def close(self):
        if self._h is not None:
            lib().xs_close(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def read(self, path, tx=0):
        n = ffi.new("unsigned int *")
        p = lib().xs_read(self._h, tx, _b(path), n)
        _check(p != ffi.NULL, "read %s" % path)
        try:
            return ffi.buffer(p, n[0])[:]
        finally:
            _libc.free(p)

    def write(self, path, value, tx=0):
        v = _b(value)
        _check(lib().xs_write(self._h, tx, _b(path), v, len(v)), "write %s" % path)

    def mkdir(self, path, tx=0):
        _check(lib().xs_mkdir(self._h, tx, _b(path)), "mkdir %s" % path)

    def rm(self, path, tx=0):
        _check(lib().xs_rm(self._h, tx, _b(path)), "rm %s" % path)

    def directory(self, path, tx=0):
        n = ffi.new("unsigned int *")
        p = lib().xs_directory(self._h, tx, _b(path), n)
        _check(p != ffi.NULL, "directory %s" % path)
        try:
            return [ffi.string(p[i]).decode() for i in range(n[0])]
        finally:
            _libc.free(p)

    def get_perms(self, path, tx=0):
        """Permissions as xenstore-chmod writes them: ["n0", "r5", ...]."""
        n = ffi.new("unsigned int *")
        p = lib().xs_get_permissions(self._h, tx, _b(path), n)
        _check(p != ffi.NULL, "get_perms %s" % path)
        try:
            return ["%s%d" % (PERM_LETTER[p[i].perms & 3], p[i].id) for i in range(n[0])]
        finally:
            _libc.free(p)

    def set_perms(self, path, perms, tx=0):
        arr = ffi.new("struct xs_permissions[]", len(perms))
        for i, s in enumerate(perms):
            arr[i].perms = PERM_BITS[s[0]]
            arr[i].id = int(s[1:])
        _check(lib().xs_set_permissions(self._h, tx, _b(path), arr, len(perms)),
               "set_perms %s" % path)

    def watch(self, path, token):
        _check(lib().xs_watch(self._h, _b(path), _b(token)), "watch %s" % path)

    def unwatch(self, path, token):
        _check(lib().xs_unwatch(self._h, _b(path), _b(token)), "unwatch %s" % path)

    def fileno(self):
        """The fd that becomes readable when a watch event is pending."""
        fd = lib().xs_fileno(self._h)
        _check(fd >= 0, "xs_fileno")
        return fd

    def read_watch(self):
        """(path, token) of a pending watch event, or None; never blocks."""
        p = lib().xs_check_watch(self._h)
        if p == ffi.NULL:
            if ffi.errno == _errno.EAGAIN:
                return None
            raise XsError(ffi.errno, "xs_check_watch")
        try:
            return (ffi.string(p[XS_WATCH_PATH]).decode(),
                    ffi.string(p[XS_WATCH_TOKEN]).decode())
        finally:
            _libc.free(p)

    def transaction_start(self):
        t = lib().xs_transaction_start(self._h)
        _check(t != 0, "transaction_start")
        return t

    def transaction_end(self, tx, abort=False):
        """True when committed (or aborted); False on EAGAIN (a conflict)."""
        if lib().xs_transaction_end(self._h, tx, abort):
            return True
        if ffi.errno == _errno.EAGAIN:
            return False
        raise XsError(ffi.errno, "transaction_end")

    def introduce(self, domid, mfn, port):
        _check(lib().xs_introduce_domain(self._h, domid, mfn, port), "introduce %d" % domid)

    def release(self, domid):
        _check(lib().xs_release_domain(self._h, domid), "release %d" % domid)

    def set_target(self, domid, target):
        _check(lib().xs_set_target(self._h, domid, target), "set_target %d" % domid)

    def get_domain_path(self, domid):
        p = lib().xs_get_domain_path(self._h, domid)
        _check(p != ffi.NULL, "get_domain_path %d" % domid)
        try:
            return ffi.string(p).decode()
        finally:
            _libc.free(p)

    def is_domain_introduced(self, domid):
        return bool(lib().xs_is_domain_introduced(self._h, domid))
