"""libxenvchan's client end as dom0 runs it, and vchan-socket-proxy's client mode.

The client (Xen's tools/libs/vchan/init.c, libxenvchan_client_init) reads
ring-ref and event-channel under the server's xenstore path, binds the event
channel and maps the shared page (struct vchan_interface, layout in
stubdm/vchan.py) as domain 0 through host_sim's grant table, maps the rings
that live in pages of their own (orders 12 and up: grants[] in the shared
page), sets cli_live = 1 and notifies. Its writes go to the left ring, its
reads come from the right one.

VchanSocketProxy is tools/vchan/vchan-socket-proxy.c in client mode, as
libxl runs it for a stub domain's QMP: it listens on a unix socket; each
connection accepted (one at a time; the next waits in the backlog) gets a
fresh vchan client, waiting on a xenstore watch until the server has
published; bytes go both ways; the socket's EOF closes the vchan, the
server's close (srv_live 0) closes the socket.

The server is another domain (a stub domain, which dom0 must not trust):
every index it publishes is checked, and one out of range ends that
connection, logged, without hurting host_sim.
"""
import os
import socket
import struct

from host_sim.backends.ring import load32, store32
from host_sim.evtchn import EvtchnError
from host_sim.grants import GrantError
from host_sim.xs import Xs, XsError
from stubdm import vchan as V

DOM0 = 0
_M = 0xFFFFFFFF
BUFSIZE = 8192  # the proxy's buffer each way (vchan-socket-proxy's)
MAX_MAP_PAGES = 64  # host_sim maps at most this many grants side by side

try:  # the glue's locked add: the notify bytes are shared with the server
    from stubdm.glue_cffi import atomic_add32 as _add32
    from stubdm.glue_cffi import barrier as _barrier
except Exception:  # the glue is not built: a plain store (tests without it)
    from host_sim.backends.ring import full_barrier as _barrier

    def _add32(buf, n):
        store32(buf, 0, load32(buf, 0) + n)


class VchanError(Exception):
    pass


class Busy(VchanError):
    pass


class _Timer:
    """A one-shot timerfd (host_sim's loop polls descriptors, it has no timers)."""

    def __init__(self):
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.timerfd_create(1, 0o4000)  # CLOCK_MONOTONIC, TFD_NONBLOCK
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        self._spec = ctypes.c_long * 4

    def arm(self, ms):
        spec = self._spec(0, 0, ms // 1000, (ms % 1000) * 1000000)
        self._libc.timerfd_settime(self.fd, 0, spec, None)

    def clear(self):
        try:
            os.read(self.fd, 8)
        except OSError:
            pass

    def close(self):
        os.close(self.fd)


def _int(xs, key, lo, hi):
    try:
        v = xs.read(key).decode(errors="replace")
    except XsError:
        return None
    if not v.isdigit() or len(v) > 10:
        return None
    n = int(v)
    return n if lo <= n <= hi else None


class VchanClient:
    """One client connection to a vchan server in domain `domid`."""

    def __init__(self, hv, xs, domid, path, log=None, on_event=None):
        self.hv = hv
        self.domid = domid
        self.path = path
        self.log = log or hv.log
        self.on_event = on_event
        self.broken = None
        self.port = None
        self.ring = None
        self.maps = []
        ref = _int(xs, path + "/ring-ref", 1, _M)
        port = _int(xs, path + "/event-channel", 1, 4095)
        if ref is None or port is None:
            raise VchanError("%s: no ring-ref/event-channel (yet)" % path)
        try:
            self.port = hv.evtchn.bind_interdomain(DOM0, domid, port, callback=self._event)
            self.ring = hv.grants.map(DOM0, domid, ref)
            mem = self.ring.mem
            lo, ro = struct.unpack_from("<HH", mem, V.OFF_LEFT_ORDER)
            for o in (lo, ro):
                if not V.SMALL_ORDER <= o <= V.MAX_ORDER:
                    raise VchanError("ring order %d outside 10..20" % o)
            if lo == ro and lo < 12:
                raise VchanError("both rings in-page with order %d" % lo)
            grants = [V.OFF_GRANTS]
            self.write_buf = self._buffer(lo, grants, True)
            self.read_buf = self._buffer(ro, grants, False)
        except (EvtchnError, GrantError, VchanError) as e:
            self.close(quiet=True)
            raise VchanError("%s: %s" % (path, e))
        self.write_size, self.read_size = 1 << lo, 1 << ro
        # Where the shared indices stand now (a restarted client carries on).
        self.wr_prod = load32(mem, V.OFF_LEFT_PROD)
        self.peer_cons = load32(mem, V.OFF_LEFT_CONS)
        self.rd_cons = load32(mem, V.OFF_RIGHT_CONS)
        if (self.wr_prod - self.peer_cons) & _M > self.write_size:
            self.close(quiet=True)
            raise VchanError("%s: left ring's indices are %d apart" % (
                path, (self.wr_prod - self.peer_cons) & _M))
        if mem[V.OFF_CLI_LIVE] == V.LIVE_CLOSED:
            # The last client's close is not seen yet (the server sets 2 when it
            # is): connecting now would look to it like that client carrying on.
            self.close(quiet=True)
            raise Busy("%s: the server has not yet seen the last client go" % path)
        self._word = mem[V.OFF_CLI_LIVE:V.OFF_CLI_LIVE + 4]
        mem[V.OFF_CLI_LIVE] = V.LIVE_OPEN
        self._set_bit_srv(V.NOTIFY_WRITE)
        self.notify()

    def _buffer(self, order, at, writable):
        if order == V.SMALL_ORDER:
            return self.ring.mem[1024:2048]
        if order == V.LARGE_ORDER:
            return self.ring.mem[2048:4096]
        n = 1 << (order - 12)
        if n > MAX_MAP_PAGES:
            raise VchanError("ring of %d pages: host_sim maps at most %d" % (n, MAX_MAP_PAGES))
        off = at[0]
        if off + 4 * n > V._first_ring_offset(*struct.unpack_from("<HH", self.ring.mem,
                                                                   V.OFF_LEFT_ORDER)):
            raise VchanError("grants list runs into the in-page ring")
        refs = list(struct.unpack_from("<%dI" % n, self.ring.mem, off))
        at[0] = off + 4 * n
        m = self.hv.grants.map_many(DOM0, self.domid, refs, writable)
        self.maps.append(m)
        return m.mem

    # ---- notify bits: we set srv_notify's, clear cli_notify's ----
    def _set_bit_srv(self, bit):
        if not self.ring.mem[V.OFF_SRV_NOTIFY] & bit:
            _add32(self._word, bit << 24)

    def _send_notify(self, bit):
        # io.c's xen_mb(): our index store must be visible before we read the bit,
        # or we and a server arming it at once both miss (a store-load reorder).
        _barrier()
        if self.ring.mem[V.OFF_CLI_NOTIFY] & bit:
            _add32(self._word, (-(bit << 16)) & _M)
            self.notify()

    def notify(self):
        try:
            self.hv.evtchn.send(DOM0, self.port)
        except EvtchnError:
            pass

    def _event(self, _port):
        if self.on_event is not None:
            self.hv.defer(self.on_event)

    def _break(self, why):
        self.broken = why
        self.log("vchan %s: server broke the ring: %s: connection dropped" % (self.path, why))
        self.close()

    def is_open(self):
        return self.ring is not None and self.broken is None and \
            self.ring.mem[V.OFF_SRV_LIVE] == V.LIVE_OPEN

    def read(self, limit=BUFSIZE):
        """Bytes the server wrote (b"" none; None: closed or broken)."""
        if self.ring is None:
            return None
        mem = self.ring.mem
        prod = load32(mem, V.OFF_RIGHT_PROD)
        n = (prod - self.rd_cons) & _M
        if n > self.read_size:
            self._break("right prod %d is %d past our cons" % (prod, n))
            return None
        if n == 0:
            self._set_bit_srv(V.NOTIFY_WRITE)
            prod = load32(mem, V.OFF_RIGHT_PROD)
            n = (prod - self.rd_cons) & _M
            if n > self.read_size:
                self._break("right prod %d is %d past our cons" % (prod, n))
                return None
            if n == 0:
                return b""
        n = min(n, limit)
        _barrier()  # the data only after its prod
        size = self.read_size
        i = self.rd_cons & (size - 1)
        first = size - i
        buf = self.read_buf
        out = bytes(buf[i:i + n]) if first >= n else bytes(buf[i:size]) + bytes(buf[:n - first])
        self.rd_cons = (self.rd_cons + n) & _M
        store32(mem, V.OFF_RIGHT_CONS, self.rd_cons)
        self._send_notify(V.NOTIFY_READ)
        return out

    def write(self, data):
        """Bytes of data taken (0: full; None: closed or broken)."""
        if self.ring is None:
            return None
        mem = self.ring.mem
        cons = load32(mem, V.OFF_LEFT_CONS)
        used = (self.wr_prod - cons) & _M
        if used > self.write_size or (cons - self.peer_cons) & _M > self.write_size:
            self._break("left cons %d outside %d..%d" % (cons, self.peer_cons, self.wr_prod))
            return None
        self.peer_cons = cons
        room = self.write_size - used
        if room < len(data):
            self._set_bit_srv(V.NOTIFY_READ)
        n = min(room, len(data))
        if n == 0:
            return 0
        size = self.write_size
        i = self.wr_prod & (size - 1)
        first = size - i
        buf = self.write_buf
        if first >= n:
            buf[i:i + n] = data[:n]
        else:
            buf[i:size] = data[:first]
            buf[:n - first] = data[first:n]
        _barrier()  # the data before its prod
        self.wr_prod = (self.wr_prod + n) & _M
        store32(mem, V.OFF_LEFT_PROD, self.wr_prod)
        self._send_notify(V.NOTIFY_WRITE)
        return n

    def close(self, quiet=False):
        """libxenvchan_close on the client: cli_live 0, the server told, unmapped."""
        if self.ring is not None:
            self.ring.mem[V.OFF_CLI_LIVE] = V.LIVE_CLOSED
        for name in ("read_buf", "write_buf", "_word"):
            v = getattr(self, name, None)
            if v is not None:
                v.release()  # every view goes before the mapping can
            setattr(self, name, None)
        for m in self.maps:
            m.unmap()
        self.maps = []
        if self.ring is not None:
            self.ring.unmap()
            self.ring = None
            if not quiet or self.port is not None:
                self.notify()
        if self.port is not None:
            try:
                self.hv.evtchn.close(DOM0, self.port)
            except EvtchnError:
                pass
            self.port = None


class VchanSocketProxy:
    """vchan-socket-proxy DOMID PATH SOCKET (client mode), in host_sim's loop."""

    def __init__(self, hv, xs_socket, domid, path, sock_path, log=None):
        self.hv = hv
        self.domid = domid
        self.path = path
        self.sock_path = sock_path
        self.log = log or hv.log
        self.xs = Xs(xs_socket)
        self._xs_fd = self.xs.fileno()
        hv.add_fd(self._xs_fd, self._xs_event)
        self.watching = False
        try:
            os.unlink(sock_path)
        except OSError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(sock_path)
        self.listener.listen(5)
        self.conn = None
        self.vchan = None
        self.inbuf = b""
        self.stats = {"connections": 0, "to_vchan": 0, "from_vchan": 0, "dropped": 0}
        self.timer = _Timer()
        hv.add_fd(self.timer.fd, self._retry)
        self._listen(True)

    def _retry(self):
        self.timer.clear()
        if self.conn is not None and self.vchan is None:
            self._connect()

    def _listen(self, on):
        fd = self.listener.fileno()
        if on:
            self.hv.add_fd(fd, self._accept)
        else:
            self.hv.remove_fd(fd)

    def _accept(self):
        try:
            s, _ = self.listener.accept()
        except OSError:
            return
        self._listen(False)  # one client at a time: the next waits in the backlog
        s.setblocking(False)
        self.conn = s
        self.inbuf = b""
        self.stats["connections"] += 1
        self.hv.add_fd(s.fileno(), self._sock_readable)
        if not self.watching:
            self.xs.watch(self.path, "vchan-proxy")  # fires at once: connect then
            self.watching = True
        else:
            self._connect()  # the server may be there already; else its watch fires

    def _xs_event(self):
        for _ in range(64):
            try:
                ev = self.xs.read_watch()
            except XsError:
                return
            if ev is None:
                break
        if self.conn is not None and self.vchan is None:
            self._connect()

    def _connect(self):
        try:
            self.vchan = VchanClient(self.hv, self.xs, self.domid, self.path, self.log,
                                     on_event=self._vchan_event)
        except Busy:
            self.timer.arm(2)  # the server is a moment behind: again shortly
            return
        except VchanError as e:
            self.log("qmp proxy: %s" % e)  # not there yet: the watch tries again
            return
        self._flush_in()  # reads wait for the server's first event (it has seen us)

    def _sock_readable(self):
        if self.conn is None:
            return
        try:
            data = self.conn.recv(BUFSIZE - len(self.inbuf)) if len(self.inbuf) < BUFSIZE \
                else None
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data == b"":
            self._flush_in()
            self._end("the socket's client closed")
            return
        if data:
            self.inbuf += data
        self._pump()

    def _flush_in(self):
        if self.vchan is not None and self.inbuf:
            n = self.vchan.write(self.inbuf)
            if n:
                self.stats["to_vchan"] += n
                self.inbuf = self.inbuf[n:]

    def _vchan_event(self):
        if self.vchan is None:
            return
        if not self.vchan.is_open():
            self._pump()  # what it wrote before it closed
            self._end("the vchan server closed")
            return
        self._pump()

    def _pump(self):
        v = self.vchan
        if v is None:
            return
        self._flush_in()
        for _ in range(256):
            if self.vchan is None:
                return
            d = v.read(BUFSIZE)
            if d is None:
                self.stats["dropped"] += v.broken is not None
                self._end("vchan closed")
                return
            if not d:
                break
            self.stats["from_vchan"] += len(d)
            try:
                self.conn.setblocking(True)
                self.conn.settimeout(5)
                self.conn.sendall(d)
                self.conn.setblocking(False)
            except OSError:
                self._end("the socket's client went away")
                return

    def _end(self, why):
        if self.vchan is not None:
            self.vchan.close()
            self.vchan = None
        if self.conn is not None:
            self.hv.remove_fd(self.conn.fileno())
            self.conn.close()
            self.conn = None
            self._listen(True)

    def close(self):
        self._end("host_sim stops")
        self._listen(False)
        self.listener.close()
        self.hv.remove_fd(self._xs_fd)
        self.hv.remove_fd(self.timer.fd)
        self.timer.close()
        try:
            self.xs.close()
        except Exception:
            pass
        try:
            os.unlink(self.sock_path)
        except OSError:
            pass

