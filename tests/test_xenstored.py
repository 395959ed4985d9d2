"""host_sim's xenstored on the wire (raw xs_wire messages): the rules of Xen's C
xenstored (tools/xenstored/), its limits and quotas, and hostile input."""
import os
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from host_sim import xenstored as X

HDR = struct.Struct("<IIII")


class Raw:
    """A bare xs_wire client: no validation of its own, so the daemon's shows."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        self.rid = 0

    def close(self):
        self.sock.close()

    def send(self, typ, payload=b"", tx=0, rid=None):
        if rid is None:
            self.rid += 1
            rid = self.rid
        self.sock.sendall(HDR.pack(typ, rid, tx, len(payload)) + payload)
        return rid

    def recv(self, timeout=5.0):
        """(type, req_id, tx_id, payload), None on timeout, "EOF" if closed."""
        end = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 16:
                t, r, x, n = HDR.unpack_from(self.buf)
                if len(self.buf) >= 16 + n:
                    m = (t, r, x, self.buf[16:16 + n])
                    self.buf = self.buf[16 + n:]
                    return m
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            try:
                d = self.sock.recv(65536)
            except ConnectionResetError:
                d = b""
            if not d:
                return "EOF"
            self.buf += d

    def reply(self, timeout=5.0):
        """The next reply; watch events met on the way are kept in .events."""
        while True:
            m = self.recv(timeout)
            if m is None or m == "EOF" or m[0] != X.XS_WATCH_EVENT:
                return m
            self.events.append(tuple(p.decode("latin-1") for p in m[3].split(b"\0")[:2]))

    def req(self, typ, *args, tx=0, raw=None):
        """Send; return ("OK"-style str payload) or raise Err with the error name."""
        payload = raw if raw is not None else b"".join(_b(a) + b"\0" for a in args)
        self.send(typ, payload, tx)
        m = self.reply()
        assert m is not None and m != "EOF", "no reply to %d %r" % (typ, payload)
        if m[0] == X.XS_ERROR:
            raise Err(m[3].rstrip(b"\0").decode())
        assert m[0] == typ
        return m[3]

    def err(self, typ, *args, tx=0, raw=None):
        try:
            self.req(typ, *args, tx=tx, raw=raw)
        except Err as e:
            return str(e)
        return None

    def read(self, path, tx=0):
        return self.req(X.XS_READ, path, tx=tx)

    def write(self, path, value, tx=0):
        return self.req(X.XS_WRITE, tx=tx, raw=_b(path) + b"\0" + _b(value))

    def ls(self, path, tx=0):
        return [c.decode() for c in self.req(X.XS_DIRECTORY, path, tx=tx).split(b"\0")[:-1]]

    def perms(self, path):
        return [p.decode() for p in self.req(X.XS_GET_PERMS, path).split(b"\0")[:-1]]

    def chmod(self, path, *perms, tx=0):
        return self.req(X.XS_SET_PERMS, path, *perms, tx=tx)

    def watch(self, path, token):
        return self.req(X.XS_WATCH, path, token)

    def event(self, timeout=2.0):
        """The next watch event as (path, token), or None."""
        if self.events:
            return self.events.pop(0)
        m = self.recv(timeout)
        if m is None or m == "EOF":
            return None
        assert m[0] == X.XS_WATCH_EVENT, m
        return tuple(p.decode("latin-1") for p in m[3].split(b"\0")[:2])

    def no_event(self, timeout=0.3):
        e = self.event(timeout)
        assert e is None, "unexpected event %r" % (e,)

    def tx_start(self):
        return int(self.req(X.XS_TRANSACTION_START, "").rstrip(b"\0"))

    def tx_end(self, tx, commit=True):
        return self.err(X.XS_TRANSACTION_END, "T" if commit else "F", tx=tx)

    def eof(self, timeout=3.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = self.recv(end - time.monotonic())
            if m == "EOF":
                return True
            if m is None:
                return False
        return False


class Err(Exception):
    pass


def _b(s):
    return s if isinstance(s, bytes) else s.encode()


@pytest.fixture
def xsd():
    d = tempfile.mkdtemp(prefix="xsd")  # short: unix socket paths are at most 107 bytes
    dm = X.spawn(rundir=d)
    yield dm
    dm.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def dom0(xsd):
    c = Raw(xsd.socket_path)
    yield c
    c.close()


def guest(xsd, dom0, domid, own_home=True):
    """Introduce `domid` (as libxl would: its home dir first) and connect as it."""
    if own_home:
        dom0.req(X.XS_MKDIR, "/local/domain/%d" % domid)
        dom0.chmod("/local/domain/%d" % domid, "n%d" % domid)
    dom0.req(X.XS_INTRODUCE, str(domid), "4096", "1")
    return Raw(xsd.domain_socket_path(domid))


# -- the protocol's numbers -------------------------------------------------------
def test_constants_are_xs_wire_hs():
    """Message types, limits and error names as Debian's xen/io/xs_wire.h has them."""
    import re
    h = "/usr/include/xen/io/xs_wire.h"
    if not os.path.exists(h):
        pytest.skip("Xen's headers are missing (libxen-dev)")
    text = re.sub(r"/\*.*?\*/", " ", open(h).read(), flags=re.S)
    body = re.search(r"enum xsd_sockmsg_type\s*{(.*?)}", text, re.S).group(1)
    values, n = {}, 0
    for line in body.splitlines():
        m = re.match(r"\s*(XS_\w+)\s*(?:=\s*(\w+)\s*(?:\+\s*(\d+))?)?,", line)
        if not m:
            continue
        if m.group(2):
            base = values.get(m.group(2))
            n = (base if base is not None else int(m.group(2), 0)) + int(m.group(3) or 0)
        values[m.group(1)] = n
        n += 1
    for name, v in values.items():
        if hasattr(X, name):
            assert getattr(X, name) == v, name
    assert X.XS_DIRECTORY_PART == values["XS_DIRECTORY_PART"] == 22
    for name in ("XENSTORE_PAYLOAD_MAX", "XENSTORE_ABS_PATH_MAX", "XENSTORE_REL_PATH_MAX"):
        assert int(re.search(r"#define %s (\d+)" % name, text).group(1)) == getattr(X, name)
    errors = set(re.findall(r"XSD_ERROR\((E\w+)\)", text))
    src = open(X.__file__).read()
    used = set(re.findall(r'"(E[A-Z0-9]+)"', src)) | set(re.findall(r'b"(E[A-Z0-9]+)\\0"', src))
    assert used and used <= errors, used - errors


# -- the basics -----------------------------------------------------------------
def test_initial_tree_is_xenstoreds(dom0):
    assert dom0.ls("/") == ["tool"]
    assert dom0.ls("/tool") == ["xenstored"]
    assert dom0.perms("/") == ["n0"]
    assert dom0.perms("@releaseDomain") == ["n0", "r32757"]  # DOMID_ANY reads it
    assert dom0.perms("@introduceDomain") == ["n0"]


def test_write_creates_parents_inheriting_perms(dom0):
    dom0.write("/a", "")
    dom0.chmod("/a", "n0", "r3")
    dom0.write("/a/b/c/d", "value")
    assert dom0.read("/a/b/c/d") == b"value"
    assert dom0.read("/a/b") == b""
    assert dom0.ls("/a") == ["b"]
    assert dom0.perms("/a/b/c/d") == ["n0", "r3"]
    dom0.req(X.XS_MKDIR, "/a/b/e")
    dom0.req(X.XS_MKDIR, "/a/b/e")  # already there: fine
    assert dom0.ls("/a/b") == ["c", "e"]  # children in creation order
    dom0.write("/a/bin", b"\x00\x01\xff")  # values are binary
    assert dom0.read("/a/bin") == b"\x00\x01\xff"


def test_rm_removes_subtree_and_tolerates_missing_leaf(dom0):
    dom0.write("/a/b/c", "1")
    dom0.write("/a/x", "2")
    dom0.req(X.XS_RM, "/a/b")
    assert dom0.ls("/a") == ["x"]
    assert dom0.err(X.XS_READ, "/a/b/c") == "ENOENT"
    dom0.req(X.XS_RM, "/a/nothing")  # parent exists: OK
    assert dom0.err(X.XS_RM, "/nothing/at/all") == "ENOENT"
    assert dom0.err(X.XS_RM, "/") == "EINVAL"


def test_replies_echo_request_and_transaction_ids(dom0):
    dom0.write("/k", "v")
    tx = dom0.tx_start()
    rid = dom0.send(X.XS_READ, b"/k\0", tx=tx, rid=0xCAFE)
    t, r, x, p = dom0.reply()
    assert (t, r, x, p) == (X.XS_READ, 0xCAFE, tx, b"v")


def test_get_domain_path_and_parsing(dom0):
    assert dom0.req(X.XS_GET_DOMAIN_PATH, "5") == b"/local/domain/5\0"
    assert dom0.err(X.XS_GET_DOMAIN_PATH, "70000") == "EINVAL"
    assert dom0.err(X.XS_GET_DOMAIN_PATH, "5x") == "EINVAL"
    assert dom0.err(X.XS_GET_DOMAIN_PATH, raw=b"5") == "EINVAL"  # no nul


@pytest.mark.parametrize("payload", [
    b"/a b\0", b"/a//b\0", b"/a/\0", b"@introduceDomain\0", b"/a\0/b\0", b"/a", b"",
    b"/\xc3\xa9\0", b"/a\tb\0"])
def test_bad_paths_are_einval(dom0, payload):
    assert dom0.err(X.XS_READ, raw=payload) == "EINVAL"
    assert dom0.err(X.XS_MKDIR, raw=payload) == "EINVAL"


def test_unknown_and_reply_only_types_are_enosys(dom0):
    for typ in (20, X.XS_WATCH_EVENT, X.XS_ERROR, 27, 0xFFFF, 0xDEADBEEF):
        assert dom0.err(typ, "/x") == "ENOSYS", typ
    assert dom0.ls("/") == ["tool"]


def test_garbage_header_gets_an_error_and_the_connection_goes_on(dom0):
    dom0.sock.sendall(HDR.pack(0x41414141, 7, 0x42424242, 3) + b"zzz")
    t, r, x, p = dom0.reply()
    assert (t, r, p) == (X.XS_ERROR, 7, b"ENOSYS\0")
    assert dom0.err(X.XS_READ, "/tool", tx=0x42424242) == "ENOENT"  # no such transaction
    assert dom0.read("/tool") == b""


def test_len_over_payload_max_closes_only_that_connection(xsd, dom0):
    other = Raw(xsd.socket_path)
    other.write("/still", "here")
    ok = dom0.write("/big", b"x" * (X.XENSTORE_PAYLOAD_MAX - 5))  # 4096 in all: accepted
    assert ok == b"OK\0"
    dom0.sock.sendall(HDR.pack(X.XS_READ, 1, 0, X.XENSTORE_PAYLOAD_MAX + 1))
    assert dom0.eof(), "xenstored keeps a connection that announced len 4097"
    assert other.read("/still") == b"here"
    assert len(Raw(xsd.socket_path).read("/big")) == X.XENSTORE_PAYLOAD_MAX - 5


def test_huge_len_and_vanishing_mid_message(xsd, dom0):
    c = Raw(xsd.socket_path)
    c.sock.sendall(HDR.pack(X.XS_WRITE, 1, 0, 0xFFFFFFFF) + b"/x\0")
    assert c.eof()
    c = Raw(xsd.socket_path)
    c.sock.sendall(HDR.pack(X.XS_WRITE, 1, 0, 100) + b"/half")
    c.close()
    c = Raw(xsd.socket_path)
    c.sock.sendall(b"\x01\x02")  # half a header, then gone
    c.close()
    assert dom0.err(X.XS_READ, "/x") == "ENOENT"
    assert dom0.err(X.XS_READ, "/half") == "ENOENT"
    assert dom0.ls("/") == ["tool"]


def test_directory_part_pages_a_big_directory(dom0):
    names = ["child-%04d-%s" % (i, "x" * 20) for i in range(300)]  # ~9 KiB of names
    for n in names:
        dom0.req(X.XS_MKDIR, "/big/" + n)
    assert dom0.err(X.XS_DIRECTORY, "/big") == "E2BIG"
    got, off, gens = [], 0, set()
    while True:
        p = dom0.req(X.XS_DIRECTORY_PART, "/big", str(off))
        assert len(p) <= X.XENSTORE_PAYLOAD_MAX
        gen, rest = p.split(b"\0", 1)
        gens.add(gen)
        done = rest.endswith(b"\0\0") or rest == b"\0"
        chunk = rest[:-1] if done else rest
        got += [c.decode() for c in chunk.split(b"\0")[:-1]]
        off += len(chunk)
        if done:
            break
    assert got == names and len(gens) == 1
    assert dom0.req(X.XS_DIRECTORY_PART, "/big", "999999").endswith(b"\0\0")
    assert dom0.err(X.XS_DIRECTORY_PART, "/big") == "EINVAL"


# -- transactions -----------------------------------------------------------------
def test_transaction_conflict_gives_eagain_and_changes_nothing(xsd, dom0):
    other = Raw(xsd.socket_path)
    dom0.write("/t/a", "0")
    tx = dom0.tx_start()
    assert tx == 1  # core.c: ids start at 1
    assert dom0.read("/t/a", tx) == b"0"
    dom0.write("/t/a", "from-tx", tx)
    dom0.write("/t/new", "n", tx)
    assert other.read("/t/a") == b"0"  # not visible outside before commit
    assert dom0.read("/t/a", tx) == b"from-tx"
    other.write("/t/a", "other")
    assert dom0.tx_end(tx) == "EAGAIN"
    assert other.read("/t/a") == b"other"
    assert other.err(X.XS_READ, "/t/new") == "ENOENT"
    assert dom0.err(X.XS_READ, "/t/a", tx=tx) == "ENOENT"  # the transaction is gone


def test_transaction_commits_when_untouched_and_abort_discards(xsd, dom0):
    other = Raw(xsd.socket_path)
    dom0.write("/t/a", "0")
    tx = dom0.tx_start()
    dom0.write("/t/a", "1", tx)
    other.write("/elsewhere", "x")  # not something the transaction saw
    assert dom0.tx_end(tx) is None
    assert other.read("/t/a") == b"1"
    tx = dom0.tx_start()
    dom0.req(X.XS_RM, "/t", tx=tx)
    assert dom0.tx_end(tx, commit=False) is None
    assert other.read("/t/a") == b"1"


def test_transaction_reading_a_missing_node_conflicts_with_its_creation(xsd, dom0):
    other = Raw(xsd.socket_path)
    tx = dom0.tx_start()
    assert dom0.err(X.XS_READ, "/t/absent", tx=tx) == "ENOENT"
    other.write("/t/absent", "now")
    assert dom0.tx_end(tx) == "EAGAIN"


def test_transaction_protocol_errors(dom0):
    tx = dom0.tx_start()
    assert dom0.err(X.XS_TRANSACTION_START, "", tx=tx) == "EBUSY"
    assert dom0.err(X.XS_TRANSACTION_END, "X", tx=tx) == "EINVAL"
    assert dom0.err(X.XS_TRANSACTION_END, "T") == "ENOENT"  # tx_id 0
    assert dom0.err(X.XS_READ, "/tool", tx=tx + 100) == "ENOENT"
    assert dom0.req(X.XS_WATCH, "/tool", "w", tx=tx + 100) == b"OK\0"  # WATCH ignores tx_id
    assert dom0.tx_end(tx) is None


def test_watches_fire_at_commit_only(xsd, dom0):
    w = Raw(xsd.socket_path)
    w.watch("/t", "tok")
    assert w.event() == ("/t", "tok")
    tx = dom0.tx_start()
    dom0.write("/t/a", "1", tx)
    w.no_event()
    assert dom0.tx_end(tx) is None
    assert w.event() == ("/t/a", "tok")


def test_client_vanishing_mid_transaction(xsd, dom0):
    c = guest(xsd, dom0, 5)
    tids = [c.tx_start() for _ in range(X.QUOTA_TRANSACTIONS - 1)]
    assert c.err(X.XS_TRANSACTION_START, "") == "ENOSPC"
    c.write("/local/domain/5/x", "in-tx", tx=tids[0])
    c.close()
    time.sleep(0.2)
    assert dom0.err(X.XS_READ, "/local/domain/5/x") == "ENOENT"
    c = Raw(xsd.domain_socket_path(5))
    assert c.tx_start() == 1  # its transactions went with it
    assert dom0.read("/tool") == b""


# -- watches ----------------------------------------------------------------------
def test_watch_fires_at_once_on_change_and_on_rm_of_a_parent(xsd, dom0):
    w = Raw(xsd.socket_path)
    dom0.write("/a/b/c", "1")
    w.watch("/a/b/c", "leaf")
    assert w.event() == ("/a/b/c", "leaf")  # the initial event
    w.watch("/a", "top")
    assert w.event() == ("/a", "top")
    dom0.write("/a/b/c", "2")
    assert sorted([w.event(), w.event()]) == [("/a/b/c", "leaf"), ("/a/b/c", "top")]
    dom0.req(X.XS_MKDIR, "/a/b/c")  # exists: no event
    w.no_event()
    dom0.req(X.XS_RM, "/a/b")
    got = sorted([w.event(), w.event()])
    assert got == [("/a/b", "top"), ("/a/b/c", "leaf")]
    w.no_event()


def test_watch_errors_and_unwatch(xsd, dom0):
    dom0.watch("/x", "t")
    assert dom0.event() == ("/x", "t")
    assert dom0.err(X.XS_WATCH, "/x", "t") == "EEXIST"
    assert dom0.err(X.XS_WATCH, "/x") == "EINVAL"
    assert dom0.err(X.XS_WATCH, "/x y", "t") == "EINVAL"
    dom0.req(X.XS_UNWATCH, "/x", "t")
    assert dom0.err(X.XS_UNWATCH, "/x", "t") == "ENOENT"
    dom0.write("/x", "1")
    dom0.no_event()


def test_watch_depth_and_relative_watches(xsd, dom0):
    dom0.req(X.XS_WATCH, "/d", "d0", "0")
    assert dom0.event() == ("/d", "d0")
    dom0.write("/d/e", "1")
    dom0.no_event()  # depth 0: the node itself only
    dom0.write("/d", "1")
    assert dom0.event() == ("/d", "d0")
    g = guest(xsd, dom0, 5)
    g.watch("data", "rel")
    assert g.event() == ("data", "rel")  # relative in, relative out
    g.write("data/k", "v")
    assert g.event() == ("data/k", "rel")
    assert g.read("/local/domain/5/data/k") == b"v"


def test_watch_events_respect_read_permission(xsd, dom0):
    g = guest(xsd, dom0, 5)
    dom0.write("/secret/x", "1")
    g.watch("/secret", "s")
    assert g.event() == ("/secret", "s")  # the initial event is unconditional
    dom0.write("/secret/x", "2")
    g.no_event()
    dom0.chmod("/secret/x", "n0", "r5")
    assert g.event() == ("/secret/x", "s")
    dom0.write("/secret/x", "3")
    assert g.event() == ("/secret/x", "s")
    dom0.chmod("/secret/x", "n0")  # losing access still tells (old perms)
    assert g.event() == ("/secret/x", "s")
    dom0.write("/secret/x", "4")
    g.no_event()


def test_special_watches(xsd, dom0):
    dom0.watch("@introduceDomain", "i")
    dom0.watch("@releaseDomain", "r")
    assert {dom0.event(), dom0.event()} == {("@introduceDomain", "i"), ("@releaseDomain", "r")}
    g = guest(xsd, dom0, 5)
    assert dom0.event() == ("@introduceDomain", "i")
    g.watch("@releaseDomain", "gr")
    g.watch("@introduceDomain", "gi")
    assert {g.event(), g.event()} == {("@releaseDomain", "gr"), ("@introduceDomain", "gi")}
    h = guest(xsd, dom0, 6)
    assert dom0.event() == ("@introduceDomain", "i")
    g.no_event()  # @introduceDomain is dom0's to read
    dom0.req(X.XS_RELEASE, "6")
    assert dom0.event() == ("@releaseDomain", "r")
    assert g.event() == ("@releaseDomain", "gr")  # readable by DOMID_ANY
    assert h.eof()


def test_domu_watch_quota_dom0_none(xsd, dom0):
    g = guest(xsd, dom0, 5)
    for i in range(X.QUOTA_WATCHES - 1):
        g.watch("/w%d" % i, "t")
    assert g.err(X.XS_WATCH, "/over", "t") == "ENOSPC"
    for i in range(300):
        dom0.watch("/w%d" % i, "t%d" % i)
    assert len(list(iter(lambda: g.event(0.2), None))) == X.QUOTA_WATCHES - 1  # initial events
    g.req(X.XS_RESET_WATCHES)
    g.watch("/again", "t")
    assert dom0.read("/tool") == b""


# -- domains, identity and permissions ----------------------------------------------
def test_introduce_makes_a_private_domain_socket(xsd, dom0):
    g = guest(xsd, dom0, 5)
    dirmode = stat.S_IMODE(os.stat(xsd.domain_dir).st_mode)
    assert dirmode == 0o700
    assert stat.S_ISSOCK(os.stat(xsd.domain_socket_path(5)).st_mode)
    assert g.req(X.XS_GET_DOMAIN_PATH, "5") == b"/local/domain/5\0"
    assert dom0.req(X.XS_IS_DOMAIN_INTRODUCED, "5") == b"T\0"
    assert dom0.req(X.XS_IS_DOMAIN_INTRODUCED, "9") == b"F\0"
    for bad in (["5", "4096"], ["5", "4096", "0"], ["x", "1", "1"], ["70000", "1", "1"]):
        assert dom0.err(X.XS_INTRODUCE, *bad) == "EINVAL"


def test_privileged_operations_refused_to_domains(xsd, dom0):
    g = guest(xsd, dom0, 5)
    for typ, args in ((X.XS_INTRODUCE, ("7", "1", "1")), (X.XS_RELEASE, ("5",)),
                      (X.XS_SET_TARGET, ("5", "0")), (X.XS_IS_DOMAIN_INTRODUCED, ("5",)),
                      (X.XS_CONTROL, ("check",)), (X.XS_RESUME, ("5",))):
        assert g.err(typ, *args) == "EACCES", typ
    assert not os.path.exists(xsd.domain_socket_path(7))


def test_domain_permissions(xsd, dom0):
    g = guest(xsd, dom0, 5)
    dom0.write("/private/key", "s3cret")
    assert g.err(X.XS_READ, "/private/key") == "EACCES"
    assert g.err(X.XS_READ, "/private/none") == "EACCES"  # nor may it learn what exists
    assert g.err(X.XS_WRITE, "/private/key", "x") == "EACCES"
    dom0.chmod("/private/key", "n0", "r5")
    assert g.read("/private/key") == b"s3cret"
    assert g.err(X.XS_WRITE, "/private/key", "x") == "EACCES"
    assert g.err(X.XS_READ, "/local/domain/5/none") == "ENOENT"  # its own home
    dom0.chmod("/private/key", "n0", "b5")
    g.write("/private/key", "mine")
    assert dom0.read("/private/key") == b"mine"
    g.write("data/made", "x")  # a domain owns what it creates
    assert dom0.perms("/local/domain/5/data/made") == ["n5"]
    assert g.err(X.XS_SET_PERMS, "data/made", "n0") == "EPERM"  # may not give it away
    g.chmod("data/made", "n5", "r7")
    assert g.err(X.XS_SET_PERMS, "/private/key", "n5") == "EACCES"  # not the owner
    dom0.chmod("/private/key", "r5")  # default r for everyone but the owner (dom5)
    assert g.read("/private/key") == b"mine"
    assert g.err(X.XS_SET_PERMS, "/private/key", "q5") == "EINVAL"
    assert g.err(X.XS_SET_PERMS, "/private/key", "r5x") == "EINVAL"
    assert dom0.err(X.XS_SET_PERMS, "/private/key") == "EINVAL"


def test_set_target_gives_the_stub_domain_its_guests_rights(xsd, dom0):
    g = guest(xsd, dom0, 5)
    s = guest(xsd, dom0, 6)
    dom0.write("/local/domain/5/device-state", "")
    dom0.chmod("/local/domain/5/device-state", "n5")
    dom0.write("/vm/u/image", "")
    dom0.chmod("/vm/u/image", "n0", "r5")
    assert s.err(X.XS_WRITE, "/local/domain/5/device-state/x", "1") == "EACCES"
    assert dom0.err(X.XS_SET_TARGET, "6", "9") == "ENOENT"
    dom0.req(X.XS_SET_TARGET, "6", "5")
    s.write("/local/domain/5/device-state/x", "1")
    assert s.read("/vm/u/image") == b""
    assert g.err(X.XS_WRITE, "/local/domain/6/x", "1") == "EACCES"  # not the other way


def test_release_closes_removes_and_cleans(xsd, dom0):
    g = guest(xsd, dom0, 5)
    g.write("data/k", "v")
    dom0.write("/shared", "")
    dom0.chmod("/shared", "n0", "r5", "r7")
    assert dom0.err(X.XS_RELEASE, "0") == "EINVAL"
    assert dom0.err(X.XS_RELEASE, "9") == "ENOENT"
    dom0.req(X.XS_RELEASE, "5")
    assert g.eof()
    assert not os.path.exists(xsd.domain_socket_path(5))
    assert dom0.err(X.XS_READ, "/local/domain/5") == "ENOENT"  # owned by 5: deleted
    assert dom0.perms("/shared") == ["n0", "r7"]
    assert dom0.req(X.XS_IS_DOMAIN_INTRODUCED, "5") == b"F\0"
    with pytest.raises(OSError):
        Raw(xsd.domain_socket_path(5))


# -- quotas and limits --------------------------------------------------------------
def test_node_quota(xsd, dom0):
    g = guest(xsd, dom0, 5)  # its home is one node it owns
    for d in range(12):  # 100 children a directory: a parent's size is bounded too
        g.req(X.XS_MKDIR, "d%d" % d)
    made = 0
    while made < 1200:
        e = g.err(X.XS_WRITE, "d%d/n%02d" % (made // 100, made % 100), "")
        if e:
            assert e == "ENOSPC"
            break
        made += 1
    assert 1 + 12 + made == X.QUOTA_NODES - 1  # refused when the count would reach 1000
    g.req(X.XS_RM, "d0/n00")
    g.write("d0/again", "")
    for i in range(X.QUOTA_NODES + 10):
        dom0.write("/dom0/n%d" % i, "")  # dom0 has no quota


def test_node_size_and_path_limits(xsd, dom0):
    g = guest(xsd, dom0, 5)
    # node_hdr (16) + one perm (8) + data: 2024 bytes of data reach 2048
    assert g.err(X.XS_WRITE, "big", b"x" * 2024) == "ENOSPC"
    g.write("big", b"x" * 2023)
    dom0.write("/local/domain/5/dom0big", b"x" * 4000)  # dom0: the payload is the limit
    long_rel = "/".join(["a" * 99] * 20) + "/" + "b" * 47  # 2047 bytes past .../5/
    assert g.err(X.XS_WRITE, long_rel + "b", "") == "EINVAL"
    g.req(X.XS_MKDIR, long_rel)
    assert g.err(X.XS_MKDIR, "d/" + "c" * 2030) == "ENOSPC"  # the parent's size counts
    assert g.err(X.XS_READ, "/" + "c" * X.QUOTA_PATH_MAX) == "EINVAL"
    assert dom0.err(X.XS_READ, "/" + "c" * 3500) == "ENOENT"
    g.write("small", "")
    assert g.err(X.XS_SET_PERMS, "small", "n5", "r1", "r2", "r3", "r4") == "ENOSPC"
    g.chmod("small", "n5", "r1", "r2", "r3")
    assert g.err(X.XS_SET_PERMS, "big", "n5", "r1") == "ENOSPC"  # 8 more bytes: too big
    dom0.chmod("/tool", "n0", "r1", "r2", "r3", "r4", "r6", "r7")


def test_a_domain_that_reads_no_replies_stalls_alone(xsd, dom0):
    g = guest(xsd, dom0, 5)
    dom0.write("/local/domain/5/blob", b"x" * 4000)
    g2 = Raw(xsd.domain_socket_path(5))
    other = guest(xsd, dom0, 7)
    for _ in range(300):  # 1.2 MB of replies it does not read
        g.send(X.XS_READ, b"blob\0")
    time.sleep(0.5)
    g2.send(X.XS_READ, b"blob\0")
    assert g2.recv(0.5) is None, "a domain with 20 replies outstanding was served"
    assert other.ls("/local/domain/7") == []
    assert dom0.read("/tool") == b""
    for _ in range(300):
        m = g.recv(5)
        assert m[0] == X.XS_READ and len(m[3]) == 4000
    assert g2.recv(5)[0] == X.XS_READ


def test_a_domain_that_reads_no_events_loses_them_past_its_memory_quota(xsd, dom0):
    g = guest(xsd, dom0, 5)
    token = "t" * 3000
    g.watch("/flood", token)
    dom0.write("/flood", "")
    dom0.chmod("/flood", "n0", "r5")
    for i in range(2000):  # 6 MB of events, unread
        dom0.write("/flood/n%d" % i, "")
    assert dom0.read("/tool") == b""
    n = 0
    while g.event(1.0) is not None:
        n += 1
    # 2.5 MB queued (domain.c's memory quota), plus what the socket held
    assert 500 < n < 1200, n
    dom0.write("/flood/after", "")
    assert g.event() == ("/flood/after", token)  # drained: events flow again


# -- running it ----------------------------------------------------------------------
def test_stop_and_parent_death(tmp_path):
    d = tempfile.mkdtemp(prefix="xsd")
    try:
        code = ("import sys, time; sys.path.insert(0, %r)\n"
                "from host_sim import xenstored\n"
                "dm = xenstored.spawn(rundir=%r)\n"
                "print(dm.proc.pid, flush=True)\n"
                "time.sleep(60)\n" % (os.path.dirname(os.path.dirname(X.__file__)), d))
        parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        pid = int(parent.stdout.readline())
        Raw(os.path.join(d, "socket")).read("/tool")
        parent.kill()
        parent.wait()
        end = time.monotonic() + 5
        while time.monotonic() < end and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid), "xenstored outlived its parent"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cli_runs_it_in_the_foreground():
    d = tempfile.mkdtemp(prefix="xsd")
    sock = os.path.join(d, "xs")
    p = subprocess.Popen([sys.executable, "-m", "host_sim", "xenstored", "--socket", sock],
                         cwd=os.path.dirname(os.path.dirname(X.__file__)))
    try:
        end = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < end:
            time.sleep(0.05)
        c = Raw(sock)
        c.req(X.XS_INTRODUCE, "3", "1", "1")
        g = Raw(sock + ".d/domain/3")
        assert g.req(X.XS_GET_DOMAIN_PATH, "3") == b"/local/domain/3\0"
        p.send_signal(signal.SIGTERM)
        assert p.wait(5) == 0
    finally:
        if p.poll() is None:
            p.kill()
        shutil.rmtree(d, ignore_errors=True)


def test_random_messages_leave_the_daemon_serving(xsd, dom0):
    """Seeded garbage from dom0 and from a domain: every reply well formed, and the
    store still answers everyone."""
    import random
    rnd = random.Random(8)
    g = guest(xsd, dom0, 5)
    words = [b"/", b"/local/domain/5", b"data", b"@introduceDomain", b"@releaseDomain",
             b"T", b"F", b"5", b"0", b"-1", b"0x10", b"r5", b"n0", b"b99999999999",
             b"/a/b", b"\xff", b"", b"//", b"99999", b"7"]
    for c in (dom0, g):
        for i in range(1500):
            typ = rnd.choice([rnd.randrange(0, 30), rnd.randrange(0, 1 << 32)])
            if rnd.random() < 0.5:
                payload = b"".join(rnd.choice(words) + (b"\0" if rnd.random() < 0.9 else b"")
                                   for _ in range(rnd.randrange(0, 5)))
            else:
                payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40)))
            tx = rnd.choice([0, 0, 1, 2, rnd.randrange(1 << 32)])
            if typ in (X.XS_RELEASE,) and c is dom0:
                continue  # would close g
            c.send(typ, payload, tx=tx)
            m = c.reply()
            assert m not in (None, "EOF"), (typ, payload)
            if m[0] == X.XS_ERROR:
                assert m[3].rstrip(b"\0").decode() in {
                    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC",
                    "EIO", "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN",
                    "E2BIG", "EPERM"}, m
    assert dom0.read("/tool") == b""
    assert Raw(xsd.socket_path).ls("/tool") == ["xenstored"]
    g.req(X.XS_GET_DOMAIN_PATH, "5")
