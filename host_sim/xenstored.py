"""host_sim's xenstored: the xs_wire protocol over unix stream sockets.

As strict as Xen's C xenstored (xen.git tools/xenstored/, master of late 2026:
core.c, domain.c, transaction.c, watch.c), whose rules, limits and error names
it follows; what it leaves out is listed in README.md ("xenstore").

Identity cannot be spoofed: every connection on `<socket>` is dom0 (privileged),
every connection on `<domain dir>/<domid>` acts as that domain. INTRODUCE creates
the domain's socket, RELEASE closes its connections and removes it.

Single-threaded: one poll loop, CPython only.
"""
import argparse
import collections
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

# xen/include/public/io/xs_wire.h
(XS_CONTROL, XS_DIRECTORY, XS_READ, XS_GET_PERMS, XS_WATCH, XS_UNWATCH,
 XS_TRANSACTION_START, XS_TRANSACTION_END, XS_INTRODUCE, XS_RELEASE,
 XS_GET_DOMAIN_PATH, XS_WRITE, XS_MKDIR, XS_RM, XS_SET_PERMS, XS_WATCH_EVENT,
 XS_ERROR, XS_IS_DOMAIN_INTRODUCED, XS_RESUME, XS_SET_TARGET) = range(20)
XS_RESET_WATCHES = XS_SET_TARGET + 2  # XS_RESTRICT (20) was removed
XS_DIRECTORY_PART = XS_RESET_WATCHES + 1
HDR = struct.Struct("<IIII")  # struct xsd_sockmsg: type, req_id, tx_id, len
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072  # not enforced by C xenstored either (see below)
XENSTORE_REL_PATH_MAX = 2048

# xenstore_lib.h: struct xs_permissions bits
PERM_NONE, PERM_READ, PERM_WRITE, PERM_OWNER, PERM_IGNORE = 0, 1, 2, 8, 0x10
PERM_CHARS = {"n": PERM_NONE, "r": PERM_READ, "w": PERM_WRITE, "b": PERM_READ | PERM_WRITE}
PERM_LETTER = {v: k for k, v in PERM_CHARS.items()}

# xen/include/public/xen.h
DOMID_FIRST_RESERVED, DOMID_SELF, DOMID_ANY = 0x7FF0, 0x7FF0, 0x7FF5

# Per-domain hard quotas, tools/xenstored/domain.c `quotas[]` defaults; a
# value v is exceeded when the new count reaches v (domain_quota_val_exceeds:
# val >= quota). dom0 (priv_domid) is exempt from all of them.
QUOTA_NODES = 1000          # nodes owned by a domain
QUOTA_WATCHES = 128         # watches per domain
QUOTA_OUTSTANDING = 20      # replies queued and not yet read: input stalls
QUOTA_MEMORY = 2560 * 1024  # 2.5 MB; here: queued output (watch events dropped)
QUOTA_TRANSACTIONS = 10     # open transactions per domain
QUOTA_TRANS_NODES = 1024    # nodes accessed by one transaction
QUOTA_NODE_PERMS = 5        # entries in a SET_PERMS list
QUOTA_PATH_MAX = XENSTORE_REL_PATH_MAX  # path length past /local/domain/N/
QUOTA_NODE_SIZE = 2048      # node_hdr (16) + 8 per perm + data + children

# xenstored's initial tree (core.c setup_structure)
NODE_HDR_SIZE = 16
NO_GENERATION = (1 << 64) - 1

_VALID = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_@")
MATCH_EXACT, MATCH_SUBTREE, MATCH_DEPTH, MATCH_NODEPTH = range(4)
_SPACE = " \t\n\v\f\r"


class XsError(Exception):
    """An error reply: its argument is Xen's error name (xs_wire.h xsd_errors)."""


def _strtol0(s):
    """C strtol(s, &end, 0): (value, whole string consumed)."""
    i, n = 0, len(s)
    while i < n and s[i] in _SPACE:
        i += 1
    neg = i < n and s[i] == "-"
    if i < n and s[i] in "+-":
        i += 1
    base, digits = 10, "0123456789"
    if s[i:i + 2].lower() == "0x" and i + 2 < n and s[i + 2].lower() in "0123456789abcdef":
        base, digits, i = 16, "0123456789abcdef", i + 2
    elif s[i:i + 1] == "0":
        base, digits = 8, "01234567"
    j = i
    while j < n and s[j].lower() in digits:
        j += 1
    if j == i:
        return 0, n == 0
    v = int(s[i:j], base)
    v = min(v, 1 << 63) if neg else min(v, (1 << 63) - 1)
    return (-v if neg else v), j == n


def _atoi(s):
    """C atoi: leading whitespace, sign, digits; garbage gives 0."""
    s = s.lstrip(_SPACE)
    sign = -1 if s[:1] == "-" else 1
    if s[:1] in ("+", "-"):
        s = s[1:]
    k = 0
    while k < len(s) and s[k].isdigit() and s[k].isascii():
        k += 1
    return sign * int(s[:k]) if k else 0


def parse_domid(s):
    """domain.c parse_domid: strtoul base 10, all consumed, at most 65535."""
    t = s.lstrip(_SPACE)
    neg = t[:1] == "-"
    if t[:1] in ("+", "-"):
        t = t[1:]
    k = 0
    while k < len(t) and "0" <= t[k] <= "9":
        k += 1
    if k == 0:
        if s:  # strtoul consumed nothing: end points at s, not at its nul
            raise XsError("EINVAL")
        return 0
    if k != len(t):
        raise XsError("EINVAL")
    v = int(t[:k])
    if neg and v:
        v = (1 << 64) - v
    if v > 65535:
        raise XsError("EINVAL")
    return v


def perms_to_strings(perms):
    out = []
    for did, bits in perms:
        sid = did - (1 << 32) if did >= 1 << 31 else did  # printed with %i
        out.append("%s%d" % (PERM_LETTER[bits & ~PERM_IGNORE & 3], sid))
    return out


def get_parent(name):
    k = name.rfind("/", 1)
    return name[:k] if k > 0 else "/"


def basename(name):
    return name[name.rfind("/") + 1:]


def child_path(parent, child):
    return "/" + child if parent == "/" else parent + "/" + child


def is_child(child, parent, depth):
    """watch.c is_child: child equals parent or lies below it (within depth)."""
    n = len(parent)
    sub = 1 if n == 1 else 0
    if not child.startswith(parent):
        return False
    nxt = child[n:n + 1]
    if nxt not in ("/", "") and n > 1:
        return False
    if depth < 0 or nxt == "":
        return True
    while sub <= depth:
        if n >= len(child):
            return True
        if child[n] == "/":
            sub += 1
        n += 1
    return False


class Node:
    __slots__ = ("name", "data", "children", "perms", "generation")

    def __init__(self, name, data=b"", children=(), perms=((0, PERM_NONE),), generation=0):
        self.name = name
        self.data = data
        self.children = list(children)
        self.perms = tuple(perms)
        self.generation = generation

    def copy(self):
        return Node(self.name, self.data, self.children, self.perms, self.generation)

    @property
    def owner(self):
        return self.perms[0][0]

    def childlen(self):
        return sum(len(c) + 1 for c in self.children)

    def acc_size(self):
        return NODE_HDR_SIZE + 8 * len(self.perms) + len(self.data) + self.childlen()

    def children_blob(self):
        return b"".join(c.encode() + b"\0" for c in self.children)


class Transaction:
    def __init__(self, tid):
        self.id = tid
        self.view = {}       # path -> Node or None, as this transaction sees it
        self.gen = {}        # path -> generation at first access (conflict check)
        self.old_perms = {}  # path -> perms at first access (watch permission)
        self.modified = []   # paths written or deleted, in order
        self.fire = {}       # path -> watch match, fired at commit
        self.delta = {}      # owner domid -> node count change
        self.node_created = False
        self.fail = False


class Domain:
    def __init__(self, domid):
        self.domid = domid
        self.conns = []
        self.target = None
        self.listener = None
        self.path = "/local/domain/%u" % domid
        self.outstanding = 0
        self.out_bytes = 0


class Conn:
    def __init__(self, sock, domain):
        self.sock = sock
        self.domain = domain
        self.domid = domain.domid
        self.inbuf = bytearray()
        self.out = collections.deque()  # [bytes, offset, is_reply, is_event]
        self.watches = []    # [abs path, token, depth, prefix_len]
        self.txs = {}
        self.next_tid = 0
        self.tx = None       # the transaction of the request being processed
        self.closed = False

    @property
    def privileged(self):
        return self.domid == 0

    def fileno(self):
        return self.sock.fileno()


class _RateLog:
    def __init__(self, per_sec=20):
        self.per_sec, self.t, self.n, self.dropped = per_sec, 0.0, 0, 0

    def __call__(self, msg):
        now = time.monotonic()
        if now - self.t >= 1.0:
            if self.dropped:
                sys.stderr.write("sim-xenstored: (%d messages dropped)\n" % self.dropped)
            self.t, self.n, self.dropped = now, 0, 0
        if self.n < self.per_sec:
            self.n += 1
            sys.stderr.write("sim-xenstored: %s\n" % msg)
        else:
            self.dropped += 1


def domain_socket_path(domain_dir, domid):
    return os.path.join(domain_dir, str(domid))


class XenStored:
    """The daemon. XenStored(rundir) listens on rundir/socket (dom0) and puts
    domain sockets in rundir/domain/; or give socket_path and domain_dir."""

    def __init__(self, rundir=None, socket_path=None, domain_dir=None, quiet=False):
        if rundir is not None:
            socket_path = socket_path or os.path.join(rundir, "socket")
            domain_dir = domain_dir or os.path.join(rundir, "domain")
        if not socket_path:
            raise ValueError("XenStored needs rundir or socket_path")
        self.socket_path = socket_path
        self.domain_dir = domain_dir or socket_path + ".d/domain"
        self.log = (lambda m: None) if quiet else _RateLog()
        self.generation = 0
        self.nodes = {}
        self.count = {}      # owner domid -> nodes owned
        self.conns = []
        self.domains = {0: Domain(0)}
        self.listeners = {}  # fd -> (socket, domain)
        self.stopping = False
        self._setup_structure()
        os.makedirs(self.domain_dir, mode=0o700, exist_ok=True)
        os.chmod(self.domain_dir, 0o700)
        self._listen(self.domains[0], self.socket_path)

    # -- tree --------------------------------------------------------------
    def _setup_structure(self):
        def manual(name, children=(), perms=((0, PERM_NONE),)):
            self.generation += 1
            self.nodes[name] = Node(name, b"", children, perms, self.generation)
            self.count[0] = self.count.get(0, 0) + 1
        manual("/", ["tool"])
        manual("/tool", ["xenstored"])
        manual("/tool/xenstored")
        manual("@releaseDomain", perms=((0, PERM_NONE), (DOMID_ANY, PERM_READ)))
        manual("@introduceDomain")

    def _listen(self, dom, path):
        if len(os.fsencode(path)) > 107:  # sockaddr_un.sun_path
            raise ValueError("socket path longer than 107 bytes: %s" % path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        os.chmod(path, 0o600)
        s.listen(64)
        s.setblocking(False)
        dom.listener = s
        self.listeners[s.fileno()] = (s, dom)

    def domain_socket_path(self, domid):
        """The socket whose every connection acts as domain `domid`."""
        return self.socket_path if domid == 0 else domain_socket_path(self.domain_dir, domid)

    # -- node access through the connection's transaction -------------------
    def _read(self, conn, path):
        tx = conn.tx if conn is not None else None
        if tx is None:
            return self.nodes.get(path)
        if path in tx.view:
            return tx.view[path]
        self._tx_access(conn, tx, path)
        return tx.view[path]

    def _tx_access(self, conn, tx, path):
        if not conn.privileged and len(tx.gen) + 1 >= QUOTA_TRANS_NODES:
            tx.fail = True
            raise XsError("ENOSPC")
        n = self.nodes.get(path)
        tx.view[path] = n
        tx.gen[path] = n.generation if n is not None else NO_GENERATION
        tx.old_perms[path] = n.perms if n is not None else None

    def _store(self, conn, node):
        self.generation += 1
        node.generation = self.generation
        tx = conn.tx if conn is not None else None
        if tx is None:
            self.nodes[node.name] = node
            return
        if node.name not in tx.view:
            self._tx_access(conn, tx, node.name)
        tx.view[node.name] = node
        tx.modified.append(node.name)

    def _drop(self, conn, name):
        self.generation += 1
        tx = conn.tx if conn is not None else None
        if tx is None:
            self.nodes.pop(name, None)
            return
        if name not in tx.view:
            self._tx_access(conn, tx, name)
        tx.view[name] = None
        tx.modified.append(name)

    def _count_add(self, conn, domid, n):
        tx = conn.tx if conn is not None else None
        if tx is not None:
            tx.delta[domid] = tx.delta.get(domid, 0) + n
        else:
            self.count[domid] = max(self.count.get(domid, 0) + n, 0)

    def _count_of(self, conn, domid):
        c = self.count.get(domid, 0)
        if conn is not None and conn.tx is not None:
            c += conn.tx.delta.get(domid, 0)
        return c

    def _check_size(self, conn, node):
        if conn is not None and not conn.privileged and node.acc_size() >= QUOTA_NODE_SIZE:
            if conn.tx is not None:
                conn.tx.fail = True
            raise XsError("ENOSPC")

    # -- permissions (core.c perm_for_conn and friends) ---------------------
    @staticmethod
    def _allows(conn, did):
        d = conn.domain
        return did == conn.domid or (d.target is not None and did == d.target) \
            or did == DOMID_ANY

    def perm_for_conn(self, conn, perms):
        full = PERM_READ | PERM_WRITE | PERM_OWNER
        if conn.privileged or self._allows(conn, perms[0][0]):
            return full
        for did, bits in perms[1:]:
            if not bits & PERM_IGNORE and self._allows(conn, did):
                return bits & full
        return perms[0][1] & full

    def canonicalize(self, conn, path, allow_special):
        """Absolute path for `path` (str or None), or EINVAL."""
        if path is None or not _VALID.issuperset(path.encode("latin-1")) \
                or (path[:1] == "@" and not allow_special):
            raise XsError("EINVAL")
        name = path if path[:1] in ("/", "@") else conn.domain.path + "/" + path
        local_off = 0
        if name.startswith("/local/domain/"):
            k = 14
            j = k + (1 if name[k:k + 1] in ("-", "+") else 0)
            e = j
            while e < len(name) and e - k < 5 and name[e].isdigit():
                e += 1
            if e > j and name[e:e + 1] == "/":
                local_off = e + 1
        if (name.endswith("/") and name != "/") or "//" in name:
            raise XsError("EINVAL")
        if not conn.privileged and len(name) - local_off >= QUOTA_PATH_MAX:
            raise XsError("EINVAL")
        return name

    def _ask_parents(self, conn, name):
        node = None
        while name != "/":
            name = get_parent(name)
            node = self._read(conn, name)
            if node is not None:
                break
        if node is None:
            return PERM_NONE
        return self.perm_for_conn(conn, node.perms)

    def get_node(self, conn, path, perm, allow_special=False):
        """(canonical name, node) if `conn` has `perm` on it; else XsError
        (ENOENT only when the nearest ancestor would let it know)."""
        name = self.canonicalize(conn, path, allow_special)
        node = self._read(conn, name)
        err = "ENOENT"
        if node is not None:
            if self.perm_for_conn(conn, node.perms) & perm == perm:
                return name, node
            err = "EACCES"
        if not self._ask_parents(conn, name) & perm:
            err = "EACCES"
        raise _NodeError(err, name)

    # -- watches -------------------------------------------------------------
    def _watch_permitted(self, w, name, node, perms, parent=None):
        if perms is not None and self.perm_for_conn(w, perms) & PERM_READ:
            return True
        if node is None:
            node = self.nodes.get(name)
            if node is None:
                return False
        if self.perm_for_conn(w, node.perms) & PERM_READ:
            return True
        if parent is None:
            parent = self.nodes.get(get_parent(node.name))
            if parent is None:
                return False
        return bool(self.perm_for_conn(w, parent.perms) & PERM_READ)

    def fire_watches(self, conn, name, node, match, old_perms=None, parent=None):
        if conn is not None and conn.tx is not None:
            tx = conn.tx
            if name not in tx.view:
                tx.fail = True
            elif name not in tx.fire or match == MATCH_SUBTREE:
                tx.fire[name] = match
            return
        for w in self.conns:
            if not w.watches or w.closed:
                continue
            if not self._watch_permitted(w, name, node, old_perms, parent):
                continue
            for wpath, token, depth, prefix in w.watches:
                if match == MATCH_EXACT:
                    send = name == wpath
                elif match == MATCH_SUBTREE:
                    send = is_child(name, wpath, depth)
                elif match == MATCH_DEPTH:
                    send = name == wpath or (depth > 0 and is_child(name, wpath, depth))
                else:
                    send = name == wpath and depth < 0
                if send:
                    self.send_event(w, name[prefix:], token)

    def fire_special(self, name, domid):
        node = self.nodes.get(name)
        if node is None:
            return
        self.fire_watches(None, name, node, MATCH_NODEPTH)
        self.fire_watches(None, "%s/%u" % (name, domid), node, MATCH_DEPTH)

    # -- output ----------------------------------------------------------------
    def send_event(self, conn, path, token):
        body = path.encode("latin-1") + b"\0" + token + b"\0"
        if len(body) > XENSTORE_PAYLOAD_MAX:
            return
        if path[:1] != "@":  # an identical event still queued is enough
            for m in conn.out:
                if m[3] and m[1] == 0 and m[0][HDR.size:] == body:
                    return
        if not conn.privileged and conn.domain.out_bytes + len(body) + 16 >= QUOTA_MEMORY:
            return
        self._queue(conn, HDR.pack(XS_WATCH_EVENT, 0, 0, len(body)) + body, False, True)

    def _queue(self, conn, msg, is_reply, is_event):
        conn.out.append([msg, 0, is_reply, is_event])
        conn.domain.out_bytes += len(msg)
        if is_reply:
            conn.domain.outstanding += 1

    def _reply(self, conn, hdr, rtype, body):
        if len(body) > XENSTORE_PAYLOAD_MAX:
            rtype, body = XS_ERROR, b"E2BIG\0"
        self._queue(conn, HDR.pack(rtype, hdr[1], hdr[2], len(body)) + body, True, False)

    def _flush(self, conn):
        while conn.out:
            m = conn.out[0]
            try:
                n = conn.sock.send(memoryview(m[0])[m[1]:])
            except BlockingIOError:
                return
            except OSError:
                self.close_conn(conn)
                return
            m[1] += n
            if m[1] < len(m[0]):
                return
            conn.out.popleft()
            conn.domain.out_bytes -= len(m[0])
            if m[2]:
                conn.domain.outstanding -= 1

    # -- connections --------------------------------------------------------
    def _accept(self, lsock, dom):
        while True:
            try:
                s, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.log("accept: %s" % e)
                return
            s.setblocking(False)
            c = Conn(s, dom)
            self.conns.append(c)
            dom.conns.append(c)

    def _reset_conn(self, conn):
        conn.watches = []
        conn.txs.clear()
        conn.tx = None

    def close_conn(self, conn):
        if conn.closed:
            return
        conn.closed = True
        self._reset_conn(conn)
        for m in conn.out:
            conn.domain.out_bytes -= len(m[0])
            if m[2]:
                conn.domain.outstanding -= 1
        conn.out.clear()
        try:
            conn.sock.close()
        except OSError:
            pass
        if conn in self.conns:
            self.conns.remove(conn)
        if conn in conn.domain.conns:
            conn.domain.conns.remove(conn)

    def _can_read(self, conn):
        if len(conn.inbuf) > 2 * (HDR.size + XENSTORE_PAYLOAD_MAX):
            return False
        if conn.privileged:
            return True
        d = conn.domain
        return d.outstanding < QUOTA_OUTSTANDING and d.out_bytes < QUOTA_MEMORY

    @staticmethod
    def _has_message(conn):
        if len(conn.inbuf) < HDR.size:
            return False
        n = HDR.unpack_from(conn.inbuf)[3]
        return n > XENSTORE_PAYLOAD_MAX or len(conn.inbuf) >= HDR.size + n

    def _handle_input(self, conn):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close_conn(conn)
            return
        if not data:
            self.close_conn(conn)
            return
        conn.inbuf += data
        self._process_input(conn)

    def _process_input(self, conn):
        while not conn.closed and len(conn.inbuf) >= HDR.size and self._can_read(conn):
            hdr = HDR.unpack_from(conn.inbuf)
            if hdr[3] > XENSTORE_PAYLOAD_MAX:
                # core.c handle_input: "Client tried to feed us", connection dropped
                self.log("domain %d connection sent len %u: closed" % (conn.domid, hdr[3]))
                self.close_conn(conn)
                return
            if len(conn.inbuf) < HDR.size + hdr[3]:
                return
            payload = bytes(conn.inbuf[HDR.size:HDR.size + hdr[3]])
            del conn.inbuf[:HDR.size + hdr[3]]
            self.process_message(conn, hdr, payload)

    # -- the loop -----------------------------------------------------------
    def run_once(self, timeout=None):
        """One poll round; timeout in seconds (None: block)."""
        p = select.poll()
        for fd in self.listeners:
            p.register(fd, select.POLLIN)
        by_fd = {}
        for c in self.conns:
            ev = (select.POLLIN if self._can_read(c) else 0) | (select.POLLOUT if c.out else 0)
            by_fd[c.fileno()] = c
            p.register(c.fileno(), ev)
        if any(self._has_message(c) and self._can_read(c) for c in self.conns):
            timeout = 0  # input already read waits only for its turn, not for poll
        try:
            ready = p.poll(None if timeout is None else int(timeout * 1000))
        except InterruptedError:
            return
        for fd, ev in ready:
            if fd in self.listeners:
                lsock, dom = self.listeners[fd]
                self._accept(lsock, dom)
                continue
            c = by_fd.get(fd)
            if c is None or c.closed:
                continue
            if ev & select.POLLIN:
                self._handle_input(c)
            elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self.close_conn(c)
        for c in list(self.conns):
            if not c.closed:
                if c.inbuf:
                    self._process_input(c)
                if c.out:
                    self._flush(c)

    def serve_forever(self):
        while not self.stopping:
            self.run_once(0.5)

    def close(self):
        for c in list(self.conns):
            self.close_conn(c)
        for fd, (s, dom) in list(self.listeners.items()):
            s.close()
        self.listeners.clear()
        for dom in self.domains.values():
            path = self.domain_socket_path(dom.domid)
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- requests ----------------------------------------------------------
    def process_message(self, conn, hdr, payload):
        rtype = hdr[0]
        op = _OPS.get(rtype)
        if op is None:
            self.log("domain %d: unknown operation %d" % (conn.domid, rtype))
            return self._reply(conn, hdr, XS_ERROR, b"ENOSYS\0")
        func, priv, notid = op
        if priv and not conn.privileged:
            return self._reply(conn, hdr, XS_ERROR, b"EACCES\0")
        conn.tx = None
        if not notid and hdr[2]:
            tx = conn.txs.get(hdr[2])
            if tx is None:
                return self._reply(conn, hdr, XS_ERROR, b"ENOENT\0")
            conn.tx = tx
        try:
            body = func(self, conn, hdr, payload)
        except XsError as e:
            body = None
            self._reply(conn, hdr, XS_ERROR, e.args[0].encode() + b"\0")
        except Exception as e:  # a bug here must not take every domain's store down
            body = None
            self.log("internal error on %d from domain %d: %r" % (rtype, conn.domid, e))
            if conn.tx is not None:
                conn.tx.fail = True
            self._reply(conn, hdr, XS_ERROR, b"EIO\0")
        finally:
            conn.tx = None
        if body is not None:
            self._reply(conn, hdr, rtype, body)

    def op_read(self, conn, hdr, p):
        _, node = self.get_node(conn, onearg(p), PERM_READ)
        return node.data

    def op_directory(self, conn, hdr, p):
        _, node = self.get_node(conn, onearg(p), PERM_READ)
        return node.children_blob()

    def op_directory_part(self, conn, hdr, p):
        parts = p.split(b"\0")
        if len(parts) - 1 != 2:
            raise XsError("EINVAL")
        _, node = self.get_node(conn, parts[0].decode("latin-1"), PERM_READ)
        off = _atoi(parts[1].decode("latin-1")) & 0xFFFFFFFF
        gen = b"%d\0" % node.generation
        blob = node.children_blob()
        if off >= len(blob):
            return gen + b"\0"
        maxlen = XENSTORE_PAYLOAD_MAX - len(gen) - 1
        n, pos = 0, off
        while True:
            end = blob.find(b"\0", pos)
            clen = (end if end >= 0 else len(blob)) - pos
            if n + clen >= maxlen:
                break
            n += clen + 1
            pos += clen + 1
            if off + n >= len(blob):
                break
        chunk = blob[off:off + n]
        if off + n >= len(blob):
            chunk += b"\0"
        return gen + chunk

    def op_get_perms(self, conn, hdr, p):
        _, node = self.get_node(conn, onearg(p), PERM_READ, allow_special=True)
        return b"".join(s.encode() + b"\0" for s in perms_to_strings(node.perms))

    def _construct(self, conn, name):
        """The nodes to create for `name` (top down) and their existing parent."""
        names = [name]
        parent = None
        while True:
            pname = get_parent(names[-1])
            parent = self._read(conn, pname)
            if parent is not None:
                break
            if pname == "/":
                raise XsError("EIO")
            names.append(pname)
        names.reverse()
        return parent, names

    def _create(self, conn, name, data):
        parent, names = self._construct(conn, name)
        if conn.tx is not None:
            conn.tx.node_created = True
        top = parent.copy()
        top.children.append(basename(names[0]))
        chain = []
        perms = parent.perms
        if not conn.privileged:
            perms = ((conn.domid, perms[0][1]),) + tuple(perms[1:])
        for i, nm in enumerate(names):
            n = Node(nm, data if nm == name else b"", [], perms)
            if i + 1 < len(names):
                n.children.append(basename(names[i + 1]))
            chain.append(n)
        owner = perms[0][0]
        # Validate first, so that a refusal leaves no trace. core.c create_node
        # checks the creator's count before each new node (the creator owns
        # them when unprivileged).
        if not conn.privileged and self._count_of(conn, conn.domid) + len(chain) >= QUOTA_NODES:
            raise XsError("ENOSPC")
        for n in [top] + chain:
            self._check_size(conn, n)
        for n in reversed(chain):
            self._store(conn, n)
            self._count_add(conn, owner, 1)
        self._store(conn, top)
        return chain[-1], (chain[-2] if len(chain) > 1 else top)

    def op_write(self, conn, hdr, p):
        k = p.find(b"\0")
        if k < 0:
            raise XsError("EINVAL")
        path, data = p[:k].decode("latin-1"), p[k + 1:]
        try:
            name, node = self.get_node(conn, path, PERM_WRITE)
        except _NodeError as e:
            if e.args[0] != "ENOENT":
                raise XsError(e.args[0])
            node, parent = self._create(conn, e.name, data)
            self.fire_watches(conn, e.name, node, MATCH_SUBTREE, parent=parent)
            return b"OK\0"
        node = node.copy()
        node.data = data
        self._check_size(conn, node)
        self._store(conn, node)
        self.fire_watches(conn, name, node, MATCH_SUBTREE)
        return b"OK\0"

    def op_mkdir(self, conn, hdr, p):
        try:
            self.get_node(conn, onearg(p), PERM_WRITE)
        except _NodeError as e:
            if e.args[0] != "ENOENT":
                raise XsError(e.args[0])
            node, parent = self._create(conn, e.name, b"")
            self.fire_watches(conn, e.name, node, MATCH_SUBTREE, parent=parent)
        return b"OK\0"

    def rm_node(self, conn, name):
        parent = self._read(conn, get_parent(name))
        if parent is None:
            raise XsError("EINVAL")
        self._delete_tree(conn, name, None, root=name)
        parent = self._read(conn, get_parent(name)).copy()
        try:
            parent.children.remove(basename(name))
        except ValueError:
            self.log("corrupt: %s not a child of %s" % (name, parent.name))
            raise XsError("EIO")
        self._store(conn, parent)

    def _delete_tree(self, conn, name, parent, root):
        """Post-order, as core.c delnode_sub: events while perms are visible."""
        node = self._read(conn, name)
        if node is None:
            return
        for c in list(node.children):
            self._delete_tree(conn, child_path(name, c), node, root)
        self._drop(conn, name)
        self._count_add(conn, node.owner, -1)
        self.fire_watches(conn, name, node, MATCH_SUBTREE if name == root else MATCH_EXACT,
                          parent=parent)

    def op_rm(self, conn, hdr, p):
        try:
            name, node = self.get_node(conn, onearg(p), PERM_WRITE)
        except _NodeError as e:
            if e.args[0] == "ENOENT" and self._read(conn, get_parent(e.name)) is not None:
                return b"OK\0"
            raise XsError(e.args[0])
        if name == "/":
            raise XsError("EINVAL")
        self.rm_node(conn, name)
        return b"OK\0"

    def op_set_perms(self, conn, hdr, p):
        parts = p.split(b"\0")
        num = len(parts) - 1 - 1
        if num < 1:
            raise XsError("EINVAL")
        if not conn.privileged and num >= QUOTA_NODE_PERMS:
            raise XsError("ENOSPC")
        perms = []
        for s in parts[1:1 + num]:
            s = s.decode("latin-1")
            if s[:1] not in PERM_CHARS or not s[:1]:
                raise XsError("EINVAL")
            v, ok = _strtol0(s[1:])
            if not ok or not s[1:]:
                raise XsError("EINVAL")
            did = v & 0xFFFFFFFF
            bits = PERM_CHARS[s[0]]
            # domain.c domain_alloc_permrefs: a domain that does not exist is
            # ignored; host_sim holds every ordinary domid as existing.
            if did >= DOMID_FIRST_RESERVED and did != DOMID_ANY:
                bits |= PERM_IGNORE
            perms.append((did, bits))
        if perms[0][1] & PERM_IGNORE:
            raise XsError("ENOENT")
        name, node = self.get_node(conn, parts[0].decode("latin-1"),
                                   PERM_WRITE | PERM_OWNER, allow_special=True)
        if not conn.privileged and perms[0][0] != node.owner:
            raise XsError("EPERM")
        old = node.perms
        new = node.copy()
        new.perms = tuple(perms)
        self._check_size(conn, new)
        self._count_add(conn, node.owner, -1)
        self._count_add(conn, new.owner, 1)
        self._store(conn, new)
        self.fire_watches(conn, name, new, MATCH_SUBTREE, old_perms=old)
        return b"OK\0"

    def op_watch(self, conn, hdr, p):
        parts = p.split(b"\0")[:-1]
        depth = -1
        if len(parts) == 3:
            depth = _atoi(parts[2].decode("latin-1"))
            if depth < 0:
                raise XsError("EINVAL")
        elif len(parts) != 2:
            raise XsError("EINVAL")
        path = parts[0].decode("latin-1")
        relative = path[:1] not in ("/", "@")
        name = self.canonicalize(conn, path, True)
        token = parts[1]
        for w in conn.watches:
            if w[0] == name and w[1] == token:
                raise XsError("EEXIST")
        if not conn.privileged and \
                sum(len(c.watches) for c in conn.domain.conns) + 1 >= QUOTA_WATCHES:
            raise XsError("ENOSPC")
        prefix = len(conn.domain.path) + 1 if relative else 0
        conn.watches.append((name, token, depth, prefix))
        self._reply(conn, hdr, XS_WATCH, b"OK\0")
        self.send_event(conn, name[prefix:], token)  # fired once at once
        return None

    def op_unwatch(self, conn, hdr, p):
        parts = p.split(b"\0")[:-1]
        if len(parts) != 2:
            raise XsError("EINVAL")
        name = self.canonicalize(conn, parts[0].decode("latin-1"), True)
        for i, w in enumerate(conn.watches):
            if w[0] == name and w[1] == parts[1]:
                del conn.watches[i]
                return b"OK\0"
        raise XsError("ENOENT")

    def op_transaction_start(self, conn, hdr, p):
        if conn.tx is not None:
            raise XsError("EBUSY")
        if not conn.privileged and \
                sum(len(c.txs) for c in conn.domain.conns) + 1 >= QUOTA_TRANSACTIONS:
            raise XsError("ENOSPC")
        while True:
            tid = conn.next_tid
            conn.next_tid = (conn.next_tid + 1) & 0xFFFFFFFF
            if tid != 0 and tid not in conn.txs:
                break
        self.generation += 1
        conn.txs[tid] = Transaction(tid)
        return b"%u\0" % tid

    def op_transaction_end(self, conn, hdr, p):
        arg = onearg(p)
        if arg not in ("T", "F"):
            raise XsError("EINVAL")
        tx = conn.tx
        if tx is None:
            raise XsError("ENOENT")
        del conn.txs[tx.id]
        conn.tx = None
        if arg == "T":
            if tx.fail:
                raise XsError("ENOMEM")
            if tx.node_created and not conn.privileged:
                for did, d in tx.delta.items():
                    if d > 0 and did != 0 and self.count.get(did, 0) + d >= QUOTA_NODES:
                        raise XsError("ENOSPC")
            for path, gen in tx.gen.items():
                cur = self.nodes.get(path)
                if (cur.generation if cur is not None else NO_GENERATION) != gen:
                    raise XsError("EAGAIN")
            done = set()
            for path in tx.modified:
                if path in done:
                    continue
                done.add(path)
                n = tx.view[path]
                if n is None:
                    self.nodes.pop(path, None)
                else:
                    self.generation += 1
                    n.generation = self.generation
                    self.nodes[path] = n
            for did, d in tx.delta.items():
                self.count[did] = max(self.count.get(did, 0) + d, 0)
            for path, match in tx.fire.items():
                self.fire_watches(None, path, None, match, old_perms=tx.old_perms.get(path))
        return b"OK\0"

    def op_get_domain_path(self, conn, hdr, p):
        a = onearg(p)
        if a is None:
            raise XsError("EINVAL")
        return b"/local/domain/%u\0" % parse_domid(a)

    def op_introduce(self, conn, hdr, p):
        parts = p.split(b"\0")[:-1]
        if len(parts) < 3:
            raise XsError("EINVAL")
        domid = parse_domid(parts[0].decode("latin-1"))
        if _atoi(parts[2].decode("latin-1")) <= 0:  # the event channel
            raise XsError("EINVAL")
        dom = self.domains.get(domid)
        if dom is None:
            if domid >= DOMID_FIRST_RESERVED:  # no such domain to map a ring of
                raise XsError("EINVAL")
            dom = Domain(domid)
            self.domains[domid] = dom
            self._listen(dom, self.domain_socket_path(domid))
            self.fire_special("@introduceDomain", domid)
        elif domid != 0:
            for c in dom.conns:  # domain.c domain_conn_reset
                self._reset_conn(c)
        return b"OK\0"

    def _onearg_domain(self, p):
        a = onearg(p)
        if a is None:
            raise XsError("EINVAL")
        domid = parse_domid(a)
        if domid == 0:
            raise XsError("EINVAL")
        dom = self.domains.get(domid)
        if dom is None:
            raise XsError("ENOENT")
        return dom

    def op_release(self, conn, hdr, p):
        dom = self._onearg_domain(p)
        for c in list(dom.conns):
            c.watches = []
            self.close_conn(c)
        self.release_domain(dom)
        return b"OK\0"

    def release_domain(self, dom):
        if dom.listener is not None:
            self.listeners.pop(dom.listener.fileno(), None)
            dom.listener.close()
            dom.listener = None
        try:
            os.unlink(self.domain_socket_path(dom.domid))
        except OSError:
            pass
        del self.domains[dom.domid]
        self._domain_tree_remove(dom.domid)
        self.fire_special("@releaseDomain", dom.domid)

    def _domain_tree_remove(self, domid):
        """domain.c domain_tree_remove: the domain's nodes go, and so do ACL
        entries naming it (xenstored's default, without --keep-orphans)."""
        def walk(name):
            node = self.nodes.get(name)
            if node is None:
                return
            if node.owner == domid:
                try:
                    self.rm_node(None, name)
                except XsError:
                    self.log("could not delete orphaned node %s" % name)
                return
            if any(d == domid for d, _ in node.perms[1:]):
                n = node.copy()
                n.perms = (node.perms[0],) + tuple(e for e in node.perms[1:] if e[0] != domid)
                self.nodes[name] = n
            for c in list(node.children):
                walk(child_path(name, c))
        walk("/")
        for special in ("@releaseDomain", "@introduceDomain"):
            walk(special)

    def op_is_domain_introduced(self, conn, hdr, p):
        a = onearg(p)
        if a is None:
            raise XsError("EINVAL")
        domid = parse_domid(a)
        return b"T\0" if domid == DOMID_SELF or domid in self.domains else b"F\0"

    def op_set_target(self, conn, hdr, p):
        parts = p.split(b"\0")[:-1]
        if len(parts) < 2:
            raise XsError("EINVAL")
        domid = parse_domid(parts[0].decode("latin-1"))
        tdomid = parse_domid(parts[1].decode("latin-1"))
        dom = self.domains.get(domid)
        if dom is None or tdomid not in self.domains:
            raise XsError("ENOENT")
        dom.target = tdomid
        return b"OK\0"

    def op_resume(self, conn, hdr, p):
        self._onearg_domain(p)
        return b"OK\0"

    def op_reset_watches(self, conn, hdr, p):
        self._reset_conn(conn)
        return b"OK\0"

    def op_control(self, conn, hdr, p):
        parts = p.split(b"\0")[:-1]
        if not parts:
            raise XsError("EINVAL")
        cmd = parts[0]
        if cmd == b"check" and len(parts) == 1:
            return b"OK\0"
        if cmd == b"print" and len(parts) == 2:
            self.log("control print: %s" % parts[1].decode("latin-1"))
            return b"OK\0"
        if cmd == b"help":
            return b"Available commands:\ncheck\nprint <string>\nhelp\n\0"
        raise XsError("EINVAL")


class _NodeError(XsError):
    def __init__(self, err, name):
        super().__init__(err)
        self.name = name


def onearg(p):
    """core.c onearg: exactly one nul, at the end; else None (EINVAL)."""
    if not p or p.find(b"\0") != len(p) - 1:
        return None
    return p[:-1].decode("latin-1")


# type -> (handler, privileged only, ignores tx_id); core.c wire_funcs
_OPS = {
    XS_CONTROL: (XenStored.op_control, True, False),
    XS_DIRECTORY: (XenStored.op_directory, False, False),
    XS_READ: (XenStored.op_read, False, False),
    XS_GET_PERMS: (XenStored.op_get_perms, False, False),
    XS_WATCH: (XenStored.op_watch, False, True),
    XS_UNWATCH: (XenStored.op_unwatch, False, True),
    XS_TRANSACTION_START: (XenStored.op_transaction_start, False, False),
    XS_TRANSACTION_END: (XenStored.op_transaction_end, False, False),
    XS_INTRODUCE: (XenStored.op_introduce, True, False),
    XS_RELEASE: (XenStored.op_release, True, False),
    XS_GET_DOMAIN_PATH: (XenStored.op_get_domain_path, False, False),
    XS_WRITE: (XenStored.op_write, False, False),
    XS_MKDIR: (XenStored.op_mkdir, False, False),
    XS_RM: (XenStored.op_rm, False, False),
    XS_SET_PERMS: (XenStored.op_set_perms, False, False),
    XS_IS_DOMAIN_INTRODUCED: (XenStored.op_is_domain_introduced, True, False),
    XS_RESUME: (XenStored.op_resume, True, False),
    XS_SET_TARGET: (XenStored.op_set_target, True, False),
    XS_RESET_WATCHES: (XenStored.op_reset_watches, False, False),
    XS_DIRECTORY_PART: (XenStored.op_directory_part, False, False),
}


# -- running it as a child process ------------------------------------------
class Daemon:
    """A xenstored child process; .stop() ends it."""

    def __init__(self, proc, socket_path, domain_dir):
        self.proc = proc
        self.socket_path = socket_path
        self.domain_dir = domain_dir

    def domain_socket_path(self, domid):
        return self.socket_path if domid == 0 else domain_socket_path(self.domain_dir, domid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def spawn(rundir=None, socket_path=None, domain_dir=None, timeout=10.0, quiet=True):
    """Start xenstored as a child (dies with its parent: PR_SET_PDEATHSIG) and
    wait until its socket is up. Returns a Daemon."""
    if rundir is not None:
        socket_path = socket_path or os.path.join(rundir, "socket")
        domain_dir = domain_dir or os.path.join(rundir, "domain")
    domain_dir = domain_dir or socket_path + ".d/domain"
    rfd, wfd = os.pipe()
    cmd = [sys.executable, "-m", "host_sim.xenstored", "--socket", socket_path,
           "--domain-dir", domain_dir, "--ready-fd", str(wfd), "--pdeathsig"]
    if quiet:
        cmd.append("--quiet")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(cmd, pass_fds=(wfd,), env=env)
    os.close(wfd)
    try:
        r, _, _ = select.select([rfd], [], [], timeout)
        ok = bool(r) and os.read(rfd, 16).startswith(b"ready")
    finally:
        os.close(rfd)
    if not ok:
        proc.kill()
        proc.wait()
        raise RuntimeError("sim-xenstored did not come up on %s" % socket_path)
    return Daemon(proc, socket_path, domain_dir)


def _set_pdeathsig():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def add_arguments(p):
    p.add_argument("--socket", metavar="PATH", help="dom0's (privileged) socket")
    p.add_argument("--rundir", metavar="DIR",
                   help="use DIR/socket for dom0 and DIR/domain/<domid> for domains")
    p.add_argument("--domain-dir", metavar="DIR",
                   help="where domain sockets go (default: PATH.d/domain, or DIR/domain "
                   "with --rundir)")
    p.add_argument("--quiet", action="store_true", help="do not log bad input")


def add_command(sub):
    """stubdm-sim xenstored: the daemon alone, in the foreground."""
    x = sub.add_parser(
        "xenstored", help="run host_sim's xenstored in the foreground",
        description="host_sim's xenstored: Xen's xs_wire protocol over unix stream sockets, "
        "as strict as Xen's C xenstored. Every connection on PATH acts as dom0 "
        "(privileged). INTRODUCE <domid> makes the socket PATH.d/domain/<domid> (directory "
        "mode 0700), every connection on which acts as that domain; RELEASE removes it. "
        "Clients: XENSTORED_PATH=PATH xenstore-ls /, pyxs.Client(unix_socket_path=PATH).",
        epilog="Ends on SIGTERM or ^C. Exit status 0, or 2 for bad usage.")
    add_arguments(x)
    x.set_defaults(func=lambda args: run(args))


def run(args, ready_fd=None, pdeathsig=False):
    if not args.socket and not args.rundir:
        print("sim-xenstored: give --socket PATH or --rundir DIR", file=sys.stderr)
        return 2
    if pdeathsig:
        ppid = os.getppid()
        _set_pdeathsig()
        if os.getppid() != ppid:
            return 0
    xs = XenStored(rundir=args.rundir, socket_path=args.socket,
                   domain_dir=args.domain_dir, quiet=args.quiet)

    def stop(*_):
        xs.stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    try:
        xs.serve_forever()
    finally:
        xs.close()
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m host_sim.xenstored",
                                description="host_sim's xenstored (xs_wire over unix sockets)")
    add_arguments(p)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pdeathsig", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return run(args, args.ready_fd, args.pdeathsig)


if __name__ == "__main__":
    sys.exit(main())
