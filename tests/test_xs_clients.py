"""Real xenstore clients against host_sim's xenstored: Debian's xenstore-utils
(through XENSTORED_PATH), pyxs from PyPI, and Debian's libxenstore through
host_sim/xs.py. Each: reads, writes, directories, permissions, watches and a
conflicting transaction; and a domain's identity on its own socket."""
import os
import queue
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from host_sim import xenstored as X
from tests.test_xenstored import Raw

CLIENTS = ("xenstore-utils", "pyxs", "libxenstore")


def _need(name):
    if name == "xenstore-utils" and not shutil.which("xenstore-read"):
        pytest.skip("xenstore-utils is not installed (build/setup.sh installs it)")
    if name == "pyxs":
        pytest.importorskip("pyxs", reason="pyxs is not installed (pip install -e '.[dev]')")
    if name == "libxenstore":
        try:
            from host_sim import xs
            xs.lib()
        except OSError as e:
            pytest.skip("libxenstore.so.4 missing (Debian's libxenstore4): %s" % e)


class CliClient:
    """xenstore-utils: one process a command, like a shell script."""

    def __init__(self, sock):
        self.env = dict(os.environ, XENSTORED_PATH=sock)
        self.watchers = []

    def run(self, *cmd, check=True):
        r = subprocess.run(cmd, env=self.env, capture_output=True, timeout=20)
        if check and r.returncode:
            raise OSError(r.returncode, r.stderr.decode().strip())
        return r

    def read(self, path):
        return self.run("xenstore-read", path).stdout.rstrip(b"\n")

    def write(self, path, value):
        self.run("xenstore-write", path, value)

    def ls(self, path):
        return self.run("xenstore-list", path).stdout.decode().split()

    def rm(self, path):
        self.run("xenstore-rm", path)

    def exists(self, path):
        return self.run("xenstore-exists", path, check=False).returncode == 0

    def perms(self, path):
        parent, base = path.rsplit("/", 1)
        for line in self.run("xenstore-ls", "-p", parent or "/").stdout.decode().splitlines():
            if not line.startswith(" ") and line.split(" = ")[0] == base:
                return line.rsplit("(", 1)[1].rstrip(")").split(",")
        raise OSError("no %s in xenstore-ls" % path)

    def chmod(self, path, perms):
        self.run("xenstore-chmod", path, *perms)

    def watch(self, path, token):
        p = subprocess.Popen(["xenstore-watch", path], env=self.env, stdout=subprocess.PIPE)
        self.watchers.append([p, b""])

    def event(self, timeout=3.0):
        """The next event's path (xenstore-watch prints paths, not tokens)."""
        end = time.monotonic() + timeout
        while True:
            for w in self.watchers:
                if b"\n" in w[1]:
                    line, w[1] = w[1].split(b"\n", 1)
                    return line.decode()
            left = end - time.monotonic()
            fds = [w[0].stdout for w in self.watchers]
            r = select.select(fds, [], [], max(left, 0))[0] if left > 0 else []
            if not r:
                return None
            for w in self.watchers:
                if w[0].stdout in r:
                    w[1] += os.read(w[0].stdout.fileno(), 4096)

    def close(self):
        for p, _ in self.watchers:
            p.kill()
            p.wait()


class PyxsClient:
    def __init__(self, sock):
        import pyxs
        self.pyxs = pyxs
        self.c = pyxs.Client(unix_socket_path=sock)
        self.c.connect()
        self.mon = None

    def _x(self, f, *args):
        try:
            return f(*args)
        except self.pyxs.PyXSError as e:  # errno first, as OSError has it
            raise OSError(*e.args) from e

    def read(self, path):
        return self._x(self.c.read, path.encode())

    def write(self, path, value):
        self._x(self.c.write, path.encode(), value if isinstance(value, bytes) else value.encode())

    def ls(self, path):
        return [x.decode() for x in self.c.list(path.encode())]

    def rm(self, path):
        self.c.delete(path.encode())

    def exists(self, path):
        return self.c.exists(path.encode())

    def perms(self, path):
        return [p.decode() for p in self.c.get_perms(path.encode())]

    def chmod(self, path, perms):
        self._x(self.c.set_perms, path.encode(), [p.encode() for p in perms])

    def watch(self, path, token):
        if self.mon is None:
            self.mon = self.c.monitor()
        self.mon.watch(path.encode(), token.encode())

    def event(self, timeout=3.0):
        try:
            return self.mon.events.get(timeout=timeout).path.decode()
        except queue.Empty:
            return None

    def tx(self):
        self.c.transaction()

    def tx_read(self, path):
        return self.read(path)

    def tx_write(self, path, value):
        self.write(path, value)

    def commit(self):
        return self.c.commit()

    def close(self):
        self.c.close()


class LibClient:
    def __init__(self, sock):
        from host_sim import xs
        self.c = xs.Xs(sock)
        self.t = 0

    def read(self, path):
        return self.c.read(path)

    def write(self, path, value):
        self.c.write(path, value)

    def ls(self, path):
        return self.c.directory(path)

    def rm(self, path):
        self.c.rm(path)

    def exists(self, path):
        try:
            self.c.read(path)
            return True
        except OSError:
            return False

    def perms(self, path):
        return self.c.get_perms(path)

    def chmod(self, path, perms):
        self.c.set_perms(path, perms)

    def watch(self, path, token):
        self.c.watch(path, token)

    def event(self, timeout=3.0):
        if not select.select([self.c.fileno()], [], [], timeout)[0]:
            return None
        ev = self.c.read_watch()
        return ev[0] if ev else None

    def tx(self):
        self.t = self.c.transaction_start()

    def tx_read(self, path):
        return self.c.read(path, self.t)

    def tx_write(self, path, value):
        self.c.write(path, value, self.t)

    def commit(self):
        ok = self.c.transaction_end(self.t)
        self.t = 0
        return ok

    def close(self):
        self.c.close()


MAKE = {"xenstore-utils": CliClient, "pyxs": PyxsClient, "libxenstore": LibClient}


@pytest.fixture
def xsd():
    d = tempfile.mkdtemp(prefix="xsc")
    dm = X.spawn(rundir=d)
    yield dm
    dm.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=CLIENTS)
def kind(request):
    _need(request.param)
    return request.param


@pytest.fixture
def mk(xsd, kind):
    made = []

    def make(sock=None):
        c = MAKE[kind](sock or xsd.socket_path)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


def test_read_write_directory(mk):
    c = mk()
    c.write("/vm/abc/name", "guest")
    c.write("/vm/abc/uuid", "abc")
    assert c.read("/vm/abc/name") == b"guest"
    assert sorted(c.ls("/vm/abc")) == ["name", "uuid"]
    assert c.exists("/vm/abc/uuid") and not c.exists("/vm/abc/nope")
    c.rm("/vm/abc")
    assert not c.exists("/vm/abc/name")
    assert c.ls("/vm") == []


def test_permissions_round_trip(mk):
    c = mk()
    c.write("/p/node", "x")
    assert c.perms("/p/node") == ["n0"]
    c.chmod("/p/node", ["n5", "r7", "b9"])
    assert c.perms("/p/node") == ["n5", "r7", "b9"]


def test_watches(mk, xsd):
    c, w = mk(), mk()
    c.write("/w/a/b", "1")
    w.watch("/w/a", "tok")
    assert w.event() == "/w/a"  # fired at once
    c.write("/w/a/b", "2")
    assert w.event() == "/w/a/b"
    c.write("/w/a/new/deep", "3")
    assert w.event() == "/w/a/new/deep"
    c.rm("/w")  # a parent of the watched node: the watched node's own event
    assert w.event() == "/w/a"
    assert w.event(0.3) is None


def test_conflicting_transactions(mk, kind):
    a = mk()
    a.write("/t/x", "0")
    if kind == "xenstore-utils":
        # The CLI runs each command in a transaction of its own and retries on
        # EAGAIN; it is the other writer here, against a libxenstore transaction.
        _need("libxenstore")
        b = LibClient(a.env["XENSTORED_PATH"])
        b.tx()
        assert b.tx_read("/t/x") == b"0"
        b.tx_write("/t/x", "from-tx")
        a.write("/t/x", "from-cli")
        assert b.commit() is False
        assert a.read("/t/x") == b"from-cli"
        b.close()
        return
    b = mk()
    a.tx()
    assert a.tx_read("/t/x") == b"0"
    a.tx_write("/t/x", "a")
    b.tx()
    assert b.tx_read("/t/x") == b"0"
    b.tx_write("/t/x", "b")
    assert b.commit() is True
    assert a.commit() is False  # EAGAIN: what it read has changed
    assert mk().read("/t/x") == b"b"


def test_domain_identity_and_permissions(mk, xsd):
    dom0 = Raw(xsd.socket_path)
    for d in (5, 6):
        dom0.req(X.XS_MKDIR, "/local/domain/%d" % d)
        dom0.chmod("/local/domain/%d" % d, "n0", "r%d" % d)
        dom0.req(X.XS_INTRODUCE, str(d), "1", "1")
    dom0.write("/local/domain/5/device", "")
    dom0.chmod("/local/domain/5/device", "n5")
    dom0.write("/dom0only", "s")
    g = mk(xsd.domain_socket_path(5))
    with pytest.raises(OSError):
        g.read("/dom0only")
    dom0.chmod("/dom0only", "n0", "r5")
    assert g.read("/dom0only") == b"s"
    with pytest.raises(OSError):
        g.write("/dom0only", "w")
    g.write("/local/domain/5/device/mine", "1")
    assert dom0.perms("/local/domain/5/device/mine") == ["n5"]
    stub = mk(xsd.domain_socket_path(6))
    with pytest.raises(OSError):
        stub.write("/local/domain/5/device/dm", "1")
    dom0.req(X.XS_SET_TARGET, "6", "5")
    stub.write("/local/domain/5/device/dm", "1")
    assert g.read("/local/domain/5/device/mine") == b"1"
    assert dom0.read("/local/domain/5/device/dm") == b"1"


def test_cli_sees_an_error_exit_for_eacces_and_enoent(xsd):
    _need("xenstore-utils")
    dom0 = Raw(xsd.socket_path)
    dom0.req(X.XS_INTRODUCE, "5", "1", "1")
    dom0.write("/x", "1")
    g = CliClient(xsd.domain_socket_path(5))
    r = g.run("xenstore-read", "/x", check=False)
    assert r.returncode != 0 and r.stdout == b""
    dom0.chmod("/x", "n0", "r5")
    assert g.read("/x") == b"1"


def test_libxenstore_large_directory_and_nonblocking_watch(xsd):
    _need("libxenstore")
    from host_sim import xs
    c = xs.Xs(xsd.socket_path)
    names = ["n%04d-%s" % (i, "y" * 30) for i in range(200)]  # over 4096: DIRECTORY_PART
    for n in names:
        c.mkdir("/big/" + n)
    assert c.directory("/big") == names
    assert c.read_watch() is None
    c.watch("/big", "t")
    end = time.monotonic() + 3
    ev = None
    while ev is None and time.monotonic() < end:
        select.select([c.fileno()], [], [], 0.5)
        ev = c.read_watch()
    assert ev == ("/big", "t")
    assert c.read_watch() is None  # nothing more pending, and it does not block
    with pytest.raises(xs.XsError) as e:
        c.read("/big/none")
    assert e.value.name == "ENOENT"
    assert c.get_domain_path(7) == "/local/domain/7"
    assert not c.is_domain_introduced(7)
    c.introduce(7, 1, 1)
    assert c.is_domain_introduced(7)
    c.release(7)
    assert not c.is_domain_introduced(7)
    c.close()


def test_libxenstore_cdefs_match_the_header():
    """Each declaration in host_sim/xs.py's cdef is the header's, word for word."""
    from host_sim import xs
    hdrs = [p for p in ("/usr/include/xenstore.h", "/usr/include/xenstore_lib.h")
            if os.path.exists(p)]
    if len(hdrs) < 2:
        pytest.skip("Xen's headers are missing (libxen-dev)")
    text = " ".join(open(p).read() for p in hdrs)
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    norm = lambda s: re.sub(r"\s*([(),;*{}])\s*", r"\1", re.sub(r"\s+", " ", s)).strip()
    htext = norm(re.sub(r"#define[^\n]*", " ", text))
    for decl in xs.CDEF.split(";"):
        d = norm(decl)
        if d and d != "}":
            assert d in htext, "not in xenstore.h: %s" % d


def test_bench_prints_both_clients():
    _need("pyxs")
    _need("libxenstore")
    r = subprocess.run([sys.executable, "-m", "host_sim", "bench", "xenstore", "--count", "300"],
                       capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(X.__file__)))
    assert r.returncode == 0, r.stderr
    for name in ("pyxs", "libxenstore"):
        m = re.search(r"^ *%s +READ +(\d+)/s .* WRITE +(\d+)/s" % name, r.stdout, re.M)
        assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, r.stdout
