# The frontend half of the xenbus handshake (xen/include/public/io/xenbus.h,
# Linux's xenbus_probe_frontend as the reference behaviour), for the stub
# domain's own PV devices under <home>/device/<type>/<id>. The handshake is
# kept apart from the data path: a driver subclasses Frontend and fills in
# connect()/connected()/disconnect()/on_event(); this module moves the states.
#
#   frontend           backend
#   Initialising       InitWait       (backend wrote its features)
#   -> setup(): ring, grants, event channel; publish(tx) writes them in a
#      transaction (retried on a conflict, so it only writes); -> Initialised
#                      Connected      (backend mapped and bound them)
#   -> connected(): read what the backend wrote at connection; -> Connected
#   backend Closing or Closed: disconnect(); -> Closed. A backend back in
#   InitWait after that: connect again (Linux's reconnect).
#   close() from our side: -> Closing; the backend's Closing/Closed then
#   ends it as above.
#
# The backend is another domain: every value it writes (its state, its
# features) is range-checked; nonsense is a logged error and ignored.
from stubdm import log, pv_abi
from stubdm.hypervisor import HypervisorError

UNKNOWN = pv_abi.XenbusStateUnknown
INITIALISING = pv_abi.XenbusStateInitialising
INITWAIT = pv_abi.XenbusStateInitWait
INITIALISED = pv_abi.XenbusStateInitialised
CONNECTED = pv_abi.XenbusStateConnected
CLOSING = pv_abi.XenbusStateClosing
CLOSED = pv_abi.XenbusStateClosed
RECONFIGURED = pv_abi.XenbusStateReconfigured

STATE_NAMES = ("Unknown", "Initialising", "InitWait", "Initialised", "Connected", "Closing",
               "Closed", "Reconfiguring", "Reconfigured")
# Longest xenstore path a backend key may name (XENSTORE_ABS_PATH_MAX).
PATH_MAX = 3072


def state_name(st):
    if st is not None and 0 <= st < len(STATE_NAMES):
        return STATE_NAMES[st]
    return repr(st)


class Frontend:
    """One PV device of ours. Subclasses set TYPE and the four hooks."""

    TYPE = None

    def __init__(self, bus, devid):
        self.bus = bus
        self.xs = bus.xs
        self.hyp = bus.hyp
        self.devid = devid
        self.path = "%s/device/%s/%s" % (bus.home, self.TYPE, devid)
        self.name = "%s-%s" % (self.TYPE, devid)
        self.state = UNKNOWN
        self.backend = None
        self.backend_id = None
        self.backend_state = UNKNOWN
        self.ports = ()  # event channel ports of ours this device listens on
        self.failed = None  # why the device gave up, if it did
        self.transitions = 0
        self._token = "stubdm-fe:" + self.name

    # ---- hooks for drivers ----
    def setup(self):
        """The backend is in InitWait: read its features, set up the data path (grants,
        event channel). Call self._fail(why) to give up."""

    def publish(self, tx):
        """Write what the backend needs (ring-ref, event-channel, ...) in transaction tx;
        it may run more than once (a conflicting commit is retried)."""

    def connected(self):
        """The backend is Connected: read what it published; start the data path."""

    def disconnect(self):
        """Stop the data path and give back its resources (idempotent)."""

    def on_event(self, port):
        """An event arrived on one of self.ports."""

    # ---- the handshake ----
    def start(self):
        backend = self.xs.read(self.path + "/backend")
        backend_id = self.xs.read_int(self.path + "/backend-id", 0, 0x7FEF)
        if not backend or len(backend) > PATH_MAX or not backend.startswith("/") \
                or backend_id is None:
            self._fail("no valid backend/backend-id in " + self.path)
            return False
        self.backend = backend
        self.backend_id = backend_id
        self.switch(INITIALISING)
        self.xs.watch(backend + "/state", self._token, self._backend_changed)
        return True

    def switch(self, state):
        if state == self.state:
            return
        log.debug("xenbus", "%s: %s -> %s" % (self.name, state_name(self.state),
                                               state_name(state)))
        try:
            self.xs.write(self.path + "/state", state)
        except HypervisorError as e:
            # Our own node refused us (removed by the toolstack): nothing to hand-shake with.
            log.info("xenbus", "%s: can't write state: %s" % (self.name, e))
        self.state = state
        self.transitions += 1

    def _backend_changed(self, _path):
        raw = self.xs.read(self.backend + "/state")
        if raw is None:
            # The backend's node went away (its domain or the device was removed).
            st = CLOSED if self.state not in (UNKNOWN, INITIALISING, CLOSED) else None
            if st is None:
                return
        else:
            st = self.xs.read_int(self.backend + "/state", 0, RECONFIGURED)
            if st is None:
                log.guest_error("xenbus", "%s: backend state %r is not a xenbus state"
                                % (self.name, raw[:16]))
                return
        self.backend_state = st
        if st == INITWAIT:
            if self.state == CLOSED:
                self.switch(INITIALISING)  # the backend is back: reconnect
            if self.state == INITIALISING:
                self._connect()
        elif st == CONNECTED:
            if self.state == INITIALISED:
                try:
                    self.connected()
                except HypervisorError as e:
                    self._fail("connecting: %s" % e)
                    return
                if self.failed is None:
                    self.switch(CONNECTED)
        elif st in (CLOSING, CLOSED):
            if self.state != CLOSED:
                self._teardown()
                self.switch(CLOSED)

    def _connect(self):
        self.failed = None
        try:
            self.setup()
            if self.failed is None:
                self.xs.transaction(self.publish)
        except HypervisorError as e:
            self._fail("setting up: %s" % e)
            return
        if self.failed is None:
            self.switch(INITIALISED)

    def _teardown(self):
        try:
            self.disconnect()
        except HypervisorError as e:
            log.info("xenbus", "%s: disconnecting: %s" % (self.name, e))
        self.bus.forget_ports(self)
        self.ports = ()

    def _fail(self, why):
        """Give up on this device (Linux's xenbus_dev_fatal): say why, close."""
        self.failed = why
        log.info("xenbus", "%s: %s" % (self.name, why))
        try:
            self.xs.write(self.path + "/error", why[:256])
        except HypervisorError:
            pass
        self._teardown()
        self.switch(CLOSING if self.backend_state not in (CLOSING, CLOSED) else CLOSED)

    def close(self):
        """Our side wants the device gone: Closing, then Closed once the backend follows."""
        if self.state in (CLOSED, UNKNOWN):
            return
        if self.backend_state in (CLOSING, CLOSED):
            self._teardown()
            self.switch(CLOSED)
        else:
            self.switch(CLOSING)

    def stop(self):
        """The device model is exiting: drop the watch and the data path."""
        if self.backend:
            self.xs.unwatch(self.backend + "/state", self._token)
        self._teardown()

    def listen(self, port):
        """Deliver events on our port to on_event."""
        self.ports = self.ports + (port,)
        self.bus.ports[port] = self


class FrontendBus:
    """The stub domain's PV devices: frontends for the types we drive, found under
    <home>/device/ as the toolstack creates them, and their event channel ports."""

    def __init__(self, hyp, xs, drivers):
        self.hyp = hyp
        self.xs = xs
        self.drivers = drivers  # ((type, class), ...)
        self.domid = xs.read_int("domid", 0, 0x7FEF)
        if self.domid is None:
            raise HypervisorError("xenstore: our own domid is unknown (no valid 'domid' key)", 0)
        self.home = "/local/domain/%d" % self.domid
        self.devices = {}  # (type, devid) -> Frontend
        self.ports = {}  # our event channel port -> Frontend
        # Work a frontend was asked for during a guest's access, done once the
        # access is answered (see defer).
        self.later = []

    def start(self):
        for devtype, _cls in self.drivers:
            self.xs.watch("%s/device/%s" % (self.home, devtype), "stubdm-bus:" + devtype,
                          self._scan)

    def _scan(self, path):
        for devtype, cls in self.drivers:
            top = "%s/device/%s" % (self.home, devtype)
            if not path.startswith(top):
                continue
            rest = path[len(top):]
            if rest and (rest[0] != "/" or "/" in rest[1:]):
                continue  # a key inside a device (its state, say): no new device
            ids = self.xs.directory("%s/device/%s" % (self.home, devtype))
            for devid in ids[:64]:  # the toolstack's, but bounded all the same
                if not devid.isdigit() or len(devid) > 10:
                    log.guest_error("xenbus", "device id %r under %s is not a number"
                                    % (devid[:16], devtype))
                    continue
                key = (devtype, devid)
                if key not in self.devices:
                    fe = cls(self, devid)
                    self.devices[key] = fe
                    fe.start()

    def device(self, devtype, devid):
        """The frontend of one of our devices (the device model's arguments name it, as
        /dev/xvda names vbd 51712), created now if the toolstack's node is there; None
        if we don't drive that type or the toolstack gave us no such device."""
        key = (devtype, str(devid))
        fe = self.devices.get(key)
        if fe is not None:
            return fe
        for t, cls in self.drivers:
            if t == devtype and self.xs.read("%s/device/%s/%s/backend" % (self.home, t, devid)):
                fe = cls(self, str(devid))
                self.devices[key] = fe
                fe.start()
                return fe
        return None

    def pending(self):
        """Frontends still on their way to Connected (not failed, not closed)."""
        out = []
        for key in self.devices:
            fe = self.devices[key]
            if fe.state != CONNECTED and fe.failed is None and fe.state != CLOSED:
                out.append(fe)
        return out

    def on_port(self, port):
        """An event for one of our frontends: True if it was theirs."""
        fe = self.ports.get(port)
        if fe is None:
            return False
        try:
            fe.on_event(port)
        except HypervisorError as e:
            log.info("xenbus", "%s: %s" % (fe.name, e))
        return True

    def defer(self, fn):
        """Run fn() after the guest's access being served is answered (the device
        model's loop calls run_deferred once its pending events are served): a
        NIC's register write that gives it receive room answers at once, as the
        posted write it is on real hardware, and the frames move while the guest
        runs on instead of before its write completes."""
        self.later.append(fn)

    def run_deferred(self):
        """Run what defer() queued (what they queue in turn, next time)."""
        todo = self.later
        self.later = []
        for fn in todo:
            try:
                fn()
            except HypervisorError as e:
                log.info("xenbus", "deferred work: %s" % e)

    def forget_ports(self, fe):
        for p in fe.ports:
            if self.ports.get(p) is fe:
                del self.ports[p]

    def stop(self):
        for devtype, _cls in self.drivers:
            self.xs.unwatch("%s/device/%s" % (self.home, devtype), "stubdm-bus:" + devtype)
        keys = list(self.devices.keys())
        for k in keys:
            self.devices[k].stop()
