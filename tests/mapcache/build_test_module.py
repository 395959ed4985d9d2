"""Build the mapcache unit-test module: stubdm/mapcache/mapcache.c linked with
the fake foreign-memory API (tests/mapcache/fake_fmem.c) into a cffi module.

Used by test_mapcache.py (built into pytest's tmp dir); can also be run by
hand: python3 tests/mapcache/build_test_module.py [OUTDIR]
"""
import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MAPCACHE_DIR = os.path.join(ROOT, "stubdm", "mapcache")
MAPCACHE_C = os.path.join(MAPCACHE_DIR, "mapcache.c")
FAKE_C = os.path.join(HERE, "fake_fmem.c")
XEN_HEADER = "/usr/include/xenforeignmemory.h"
MODULE = "_mapcache_test"

sys.path.insert(0, os.path.join(ROOT, "build"))
from glue_build import mapcache_cdef  # noqa: E402  (the declarations, from mapcache.h)

CDEF = """
    typedef struct xenforeignmemory_handle xenforeignmemory_handle;

    struct xentoollog_logger;
    xenforeignmemory_handle *xenforeignmemory_open(struct xentoollog_logger *logger,
                                                   unsigned open_flags);
    int xenforeignmemory_close(xenforeignmemory_handle *fmem);

    int fake_fmem_set_ram(xenforeignmemory_handle *h, uint64_t bytes);
    void fake_fmem_fail_gfn(xenforeignmemory_handle *h, int64_t gfn);
    void fake_fmem_fail_next_map(xenforeignmemory_handle *h, int err);
    long fake_fmem_counter(xenforeignmemory_handle *h, int which);
"""

# The module's own glue: the real headers, plus prototypes of the fake's
# test controls (defined in fake_fmem.c).
SOURCE = r"""
#include <stdint.h>
#include "mapcache.h"
int fake_fmem_set_ram(xenforeignmemory_handle *h, uint64_t bytes);
void fake_fmem_fail_gfn(xenforeignmemory_handle *h, int64_t gfn);
void fake_fmem_fail_next_map(xenforeignmemory_handle *h, int err);
long fake_fmem_counter(xenforeignmemory_handle *h, int which);
"""


def build(outdir, verbose=False, extra_cflags=(), extra_ldflags=()):
    """Compile the module into outdir and import it; returns the module.

    extra_cflags / extra_ldflags: e.g. ["-fsanitize=address"] for a sanitizer run.
    """
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF + mapcache_cdef())
    ffi.set_source(
        MODULE,
        SOURCE,
        sources=[MAPCACHE_C, FAKE_C],
        include_dirs=[MAPCACHE_DIR],
        # cffi's own generated glue is not -Wextra clean: strictness is
        # applied to mapcache.c on its own in test_mapcache.py.
        extra_compile_args=["-std=gnu99", "-Wall"] + list(extra_cflags),
        extra_link_args=list(extra_ldflags),
    )
    outdir = str(outdir)
    ffi.compile(tmpdir=outdir, verbose=verbose)
    sys.path.insert(0, outdir)
    try:
        sys.modules.pop(MODULE, None)
        return importlib.import_module(MODULE)
    finally:
        sys.path.remove(outdir)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "_build")
    os.makedirs(out, exist_ok=True)
    mod = build(out, verbose=True)
    print("built", mod.__file__)
