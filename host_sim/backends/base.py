"""The backend half of the xenbus handshake, shared by host_sim's PV backends.

A backend runs inside host_sim's process but acts as domain 0: it talks to
xenstore through libxenstore on dom0's socket, maps the frontend's grants
through host_sim's grant table as domain 0, and binds the frontend's event
channel as domain 0. Its work runs from host_sim's one poll loop (the
hypervisor's pump): the xenstore watch fd is polled there, and events on
its port are deferred to the end of the pump.

States, as Linux's backends move them (xen-blkback's frontend_changed):
    (toolstack creates both halves, states Initialising)
    probe: features written, -> InitWait
    frontend Initialised or Connected: map the ring, bind the event channel,
        connected() -> Connected
    frontend Closing: disconnect() -> Closing
    frontend Closed: disconnect() -> Closed
    frontend Initialising after Closed (a reconnect): -> InitWait
    close() (the toolstack removes the device): -> Closing, then Closed
        when the frontend has closed
The frontend is another domain: whatever it writes is checked; nonsense is
logged and the device is not connected.
"""
from host_sim.backends.ring import BackRing
from host_sim.evtchn import EvtchnError
from host_sim.grants import GrantError
from host_sim.xs import Xs, XsError
from stubdm import pv_abi

INITIALISING = pv_abi.XenbusStateInitialising
INITWAIT = pv_abi.XenbusStateInitWait
INITIALISED = pv_abi.XenbusStateInitialised
CONNECTED = pv_abi.XenbusStateConnected
CLOSING = pv_abi.XenbusStateClosing
CLOSED = pv_abi.XenbusStateClosed
BACKEND_DOMID = 0
# The largest grant reference and port a frontend may name (host_sim's tables).
MAX_REF = 0xFFFFFFFF
MAX_PORT = 4095


class BackendError(Exception):
    pass


class Backend:
    """One device's backend. Subclasses set TYPE, REQ_SIZE, RSP_SIZE and the hooks."""

    TYPE = None
    REQ_SIZE = 0
    RSP_SIZE = 0
    # Multi-page rings (ring-page-order, ring-ref0..N-1) up to 2**this pages;
    # 0: one page named by ring-ref.
    MAX_RING_PAGE_ORDER = 0

    def __init__(self, hv, xs_socket, frontend_domid, devid, log=None):
        self.hv = hv
        self.frontend_domid = frontend_domid
        self.devid = devid
        self.name = "%s %d/%s" % (self.TYPE, frontend_domid, devid)
        self.log = log or hv.log
        self.path = "/local/domain/%d/backend/%s/%d/%s" % (BACKEND_DOMID, self.TYPE,
                                                          frontend_domid, devid)
        self.xs = Xs(xs_socket)
        self.state = None
        self.frontend = None
        self.ring = None
        self.ring_map = None
        self.port = None
        self.stats = {"events": 0, "requests": 0, "notifies": 0}
        self._event_pending = False
        self._closing = False
        self._fd = self.xs.fileno()
        hv.add_fd(self._fd, self._xs_readable)

    # ---- hooks ----
    def features(self):
        """Keys written under our node before InitWait: {name: value}."""
        return {}

    def connected(self):
        """The ring is mapped and the event channel bound."""

    def disconnect(self):
        """Drop what connected() set up (idempotent); the base unmaps the ring."""

    def serve(self):
        """Requests may be waiting on self.ring: serve them."""

    # ---- xenstore ----
    def _read(self, key):
        try:
            return self.xs.read(key).decode(errors="replace")
        except XsError:
            return None

    def _read_int(self, key, lo, hi):
        v = self._read(key)
        if v is None or not v.strip().isdigit() or len(v) > 12:
            return None
        n = int(v)
        return n if lo <= n <= hi else None

    def switch(self, state):
        if state == self.state:
            return
        self.state = state
        try:
            self.xs.write(self.path + "/state", str(state))
        except XsError as e:
            self.log("%s: can't write state: %s" % (self.name, e))

    def start(self):
        """Probe: write the features, go to InitWait, watch the frontend."""
        fe = self._read(self.path + "/frontend")
        if not fe or not fe.startswith("/local/domain/%d/" % self.frontend_domid):
            raise BackendError("%s: no frontend path under %s" % (self.name, self.path))
        self.frontend = fe
        feats = dict(self.features())
        if self.MAX_RING_PAGE_ORDER:
            feats["max-ring-page-order"] = self.MAX_RING_PAGE_ORDER
        for k, v in sorted(feats.items()):
            self.xs.write(self.path + "/" + k, str(v))
        self.switch(INITWAIT)
        self.xs.watch(fe + "/state", "be:" + self.name)

    def _xs_readable(self):
        for _ in range(256):
            ev = self.xs.read_watch()
            if ev is None:
                return
            if ev[1] == "be:" + self.name:
                self._frontend_changed()
            else:
                self.watch_event(ev[0], ev[1])

    def watch_event(self, path, token):
        """A watch of the subclass's own fired (blkback's params)."""

    def _frontend_changed(self):
        st = self._read_int(self.frontend + "/state", 0, 8)
        if st is None:
            if self._read(self.frontend + "/state") is not None:
                self.log("%s: frontend state is not a xenbus state" % self.name)
                return
            # The frontend's node is gone (its domain died, the toolstack
            # removed it): as Linux's backends on XenbusStateUnknown, let go.
            self._disconnect()
            self.switch(CLOSED)
            return
        if st in (INITIALISED, CONNECTED) and self.state == INITWAIT and not self._closing:
            try:
                self._connect()
            except BackendError as e:
                self.log(str(e))
                self._disconnect()
                self.switch(CLOSING)
                return
            self.switch(CONNECTED)
        elif st == CLOSING:
            self._disconnect()
            self.switch(CLOSING)
        elif st == CLOSED:
            self._disconnect()
            self.switch(CLOSED)
        elif st == INITIALISING and self.state == CLOSED and not self._closing:
            self.switch(INITWAIT)  # the frontend is back: reconnect

    def _connect(self):
        fe = self.frontend
        order = 0
        if self.MAX_RING_PAGE_ORDER and self._read(fe + "/ring-page-order") is not None:
            order = self._read_int(fe + "/ring-page-order", 0, self.MAX_RING_PAGE_ORDER)
            if order is None:
                raise BackendError("%s: frontend's ring-page-order is out of 0..%d"
                                   % (self.name, self.MAX_RING_PAGE_ORDER))
        if order == 0:
            refs = [self._read_int(fe + "/ring-ref", 0, MAX_REF)]
        else:
            refs = [self._read_int(fe + "/ring-ref%d" % i, 0, MAX_REF) for i in range(1 << order)]
        port = self._read_int(fe + "/event-channel", 1, MAX_PORT)
        if None in refs or port is None:
            raise BackendError("%s: frontend wrote no valid ring-ref/event-channel" % self.name)
        self.ring_page_order = order
        try:
            if order == 0:
                self.ring_map = self.hv.grants.map(BACKEND_DOMID, self.frontend_domid, refs[0])
            else:
                self.ring_map = self.hv.grants.map_many(BACKEND_DOMID, self.frontend_domid,
                                                        refs)
        except GrantError as e:
            raise BackendError("%s: mapping the ring: %s" % (self.name, e))
        try:
            self.ring = BackRing(self.ring_map.mem, self.REQ_SIZE, self.RSP_SIZE,
                                 name=self.name, log=self.log)
        except ValueError as e:
            raise BackendError("%s: %s" % (self.name, e))
        try:
            self.port = self.hv.evtchn.bind_interdomain(BACKEND_DOMID, self.frontend_domid,
                                                       port, callback=self._on_event)
        except EvtchnError as e:
            raise BackendError("%s: binding event channel %d: %s" % (self.name, port, e))
        self.connected()

    def _disconnect(self):
        self.disconnect()
        if self.port is not None:
            try:
                self.hv.evtchn.close(BACKEND_DOMID, self.port)
            except EvtchnError:
                pass
            self.port = None
        self.ring = None
        if self.ring_map is not None:
            self.ring_map.unmap()
            self.ring_map = None

    # ---- events ----
    def _on_event(self, _port):
        self.stats["events"] += 1
        if not self._event_pending:
            self._event_pending = True
            self.hv.defer(self._run)

    def _run(self):
        self._event_pending = False
        if self.ring is not None:
            self.serve()

    def notify(self):
        if self.port is not None:
            self.stats["notifies"] += 1
            try:
                self.hv.evtchn.send(BACKEND_DOMID, self.port)
            except EvtchnError:
                pass

    # ---- the toolstack's side ----
    def close(self):
        """The device is being removed: Closing now, Closed once the frontend closes."""
        self._closing = True
        self.switch(CLOSING)

    def destroy(self):
        """Gone for good (host_sim shutting down): no xenstore, no mappings left."""
        self._disconnect()
        self.hv.remove_fd(self._fd)
        try:
            self.xs.unwatch(self.frontend + "/state", "be:" + self.name)
        except (XsError, TypeError):
            pass
        self.xs.close()

