"""stubdm-sim bench xenstore: READ and WRITE per second against host_sim's
xenstored, through pyxs and through libxenstore (host_sim/xs.py), each in its
own run. Xen's own xenstored cannot be compared here (see cmd)."""
import shutil
import tempfile
import time

from host_sim import xenstored


def _rate(fn, n):
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t)


def bench_pyxs(sock, n):
    import pyxs
    with pyxs.Client(unix_socket_path=sock) as c:
        c.write(b"/bench/pyxs", b"0")
        w = _rate(lambda i: c.write(b"/bench/pyxs", b"%d" % i), n)
        r = _rate(lambda i: c.read(b"/bench/pyxs"), n)
    return r, w


def bench_libxenstore(sock, n):
    from host_sim import xs
    with xs.Xs(sock) as c:
        c.write("/bench/libxs", b"0")
        w = _rate(lambda i: c.write("/bench/libxs", b"%d" % i), n)
        r = _rate(lambda i: c.read("/bench/libxs"), n)
    return r, w


def run(n):
    """{client: (reads/s, writes/s)}; clients that cannot run are left out."""
    out = {}
    d = tempfile.mkdtemp(prefix="xsbench")
    try:
        with xenstored.spawn(rundir=d) as dm:
            for name, fn in (("pyxs", bench_pyxs), ("libxenstore", bench_libxenstore)):
                try:
                    out[name] = fn(dm.socket_path, n)
                except ImportError as e:
                    out[name] = "unavailable (%s)" % e
                except OSError as e:
                    out[name] = "unavailable (%s)" % e
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return out


def cmd(args):
    n = args.count
    res = run(n)
    print("host_sim xenstored (CPython, one poll loop), %d operations each, one client at "
          "a time on dom0's socket:" % n)
    for name, v in res.items():
        if isinstance(v, str):
            print("  %-12s %s" % (name, v))
        else:
            print("  %-12s READ %8.0f/s (%5.1f us)   WRITE %8.0f/s (%5.1f us)"
                  % (name, v[0], 1e6 / v[0], v[1], 1e6 / v[1]))
    print("Xen's C xenstored: not compared. Debian ships it (xen-utils-4.17) but it does not "
          "serve without the hypervisor: it opens /dev/xen at start, and with -D "
          "(--no-domain-init) it has no root node, so the first write kills it; "
          "oxenstored's start-up setrlimit fails in this sandbox.")
    return 0


def add_command(bsub):
    bx = bsub.add_parser("xenstore",
                         help="xenstore READ and WRITE per second against host_sim's "
                         "xenstored, with pyxs and libxenstore")
    bx.add_argument("--count", type=int, default=5000, metavar="N",
                    help="operations of each kind per client (default 5000)")
    bx.set_defaults(func=cmd)
