"""host_sim's event channels: Xen's per-domain port tables (xen/common/event_channel.c).

Each domain has its own port space (port 0 is never valid). A port is
UNBOUND (allocated for one named remote domain, waiting to be bound) or
INTERDOMAIN (joined to one port of another domain). Sending on an
interdomain port raises an event on its peer; sending on an unbound one is
silently dropped, as Xen does; closing one end leaves the other UNBOUND for
the closer, so it may be bound again.

Who receives an event on a port: a libsim handle of the device model (the
handle delivers it through the memory it shares with libsim, as the evtchn
device hands ports out: host_sim/hypervisor.py's EvtchnHandle), or host_sim
itself (a callback: Xen's side of an ioreq server, or a PV backend running
in host_sim as domain 0).
"""
import errno

UNBOUND, INTERDOMAIN = 1, 2
# The 2-level event channel ABI on a 64-bit guest: 64 x 64 ports.
MAX_PORTS = 4096


class EvtchnError(Exception):
    def __init__(self, err, what):
        super().__init__("%s: %s" % (what, errno.errorcode.get(err, err)))
        self.errno = err


class Port:
    __slots__ = ("dom", "port", "state", "remote_dom", "peer", "handle", "callback", "sent")

    def __init__(self, dom, port, remote_dom, handle, callback):
        self.dom = dom
        self.port = port
        self.state = UNBOUND
        self.remote_dom = remote_dom
        self.peer = None  # the other end's Port, when INTERDOMAIN
        self.handle = handle  # a libsim handle (.bind/.unbind/.deliver(port)), or None
        self.callback = callback  # host_sim's receiver: callback(port), or None
        self.sent = 0  # events raised on this port


class EventChannels:
    def __init__(self, log=None):
        self.log = log or (lambda msg: None)
        self.ports = {}  # (dom, port) -> Port
        self.stats = {"sent": 0, "dropped": 0}

    def _alloc(self, dom, remote_dom, handle, callback):
        for n in range(1, MAX_PORTS):
            if (dom, n) not in self.ports:
                p = Port(dom, n, remote_dom, handle, callback)
                self.ports[(dom, n)] = p
                if handle is not None:
                    handle.bind(n)
                return p
        raise EvtchnError(errno.ENOSPC, "domain %d has no free event channel" % dom)

    def get(self, dom, port):
        p = self.ports.get((dom, port))
        if p is None:
            raise EvtchnError(errno.EINVAL, "domain %d has no port %r" % (dom, port))
        return p

    def alloc_unbound(self, dom, remote_dom, handle=None, callback=None):
        """EVTCHNOP_alloc_unbound: a port of dom that remote_dom may bind."""
        return self._alloc(dom, remote_dom, handle, callback).port

    def bind_interdomain(self, dom, remote_dom, remote_port, handle=None, callback=None):
        """EVTCHNOP_bind_interdomain: join a new port of dom to remote_dom's unbound port,
        which must have been allocated for dom."""
        r = self.ports.get((remote_dom, remote_port))
        if r is None or r.state != UNBOUND or r.remote_dom != dom:
            raise EvtchnError(errno.EINVAL, "domain %d: port %r of domain %d is not unbound "
                              "for it" % (dom, remote_port, remote_dom))
        p = self._alloc(dom, remote_dom, handle, callback)
        p.state = r.state = INTERDOMAIN
        p.peer, r.peer = r, p
        return p.port

    def send(self, dom, port):
        """EVTCHNOP_send from dom's port: raise an event on the peer."""
        p = self.ports.get((dom, port))
        if p is None:
            p = self.get(dom, port)  # raises
        if p.state != INTERDOMAIN:
            self.stats["dropped"] += 1
            return
        self.stats["sent"] += 1
        self.raise_event(p.peer)

    def raise_event(self, q):
        q.sent += 1
        if q.handle is not None:
            q.handle.deliver(q.port)
        elif q.callback is not None:
            q.callback(q.port)

    def close(self, dom, port):
        """EVTCHNOP_close: the peer, if any, becomes unbound for us."""
        p = self.get(dom, port)
        del self.ports[(dom, port)]
        if p.handle is not None:
            p.handle.unbind(port)
        if p.state == INTERDOMAIN and p.peer is not None:
            q = p.peer
            q.state = UNBOUND
            q.remote_dom = dom
            q.peer = None
        p.peer = None

    def close_domain(self, dom):
        """A domain is destroyed: every port of it closes."""
        for d, n in list(self.ports):
            if d == dom:
                self.close(d, n)

    def close_handle(self, handle):
        for n in sorted(handle.ports):
            for key, p in list(self.ports.items()):
                if p.handle is handle and p.port == n:
                    self.close(key[0], n)
