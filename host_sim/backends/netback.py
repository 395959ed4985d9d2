"""host_sim's netback: a vif joined to a TAP device in the run's private namespace.

Offers what a frontend needs of Linux's xen-netback (DESIGN.md 13): feature-sg (a
packet over several slots), feature-rx-copy (the backend copies into the frontend's
posted pages; the only RX mode), one event channel for both rings. It copies with
host_sim's grant copy, as netback does with GNTTABOP_copy: the frontend's pages are
never mapped. Frames read from the TAP are complete (no vnet header): RX flags 0.

Back-pressure: a frame is read from the TAP only when the frontend has posted enough
RX slots for the largest frame; otherwise it waits in the TAP's queue (the kernel
drops there, as a real NIC's would, once its queue is full).

The frontend is hostile: slots past their page, a packet over 0xFFFF, a chain of
more_data slots that never ends, sizes that don't add up: the packet is dropped with
NETIF_RSP_ERROR on each of its slots, logged, and the vif goes on.
"""
import errno
import os
import struct

from host_sim.backends.base import BACKEND_DOMID, MAX_PORT, MAX_REF, Backend, BackendError
from host_sim.backends.ring import BackRing
from host_sim.evtchn import EvtchnError
from host_sim.grants import PAGE, GrantError
from stubdm import pv_abi as A

MAX_FRAME = A.XEN_NETIF_MAX_TX_SIZE
MAX_SLOTS = A.XEN_NETIF_NR_SLOTS_MIN  # slots one packet may span (Linux netback's default)


class NetBack(Backend):
    TYPE = "vif"
    REQ_SIZE = A.NETIF_TX_REQ_SIZE  # unused: two rings, mapped below
    RSP_SIZE = A.NETIF_TX_RSP_SIZE

    def __init__(self, hv, xs_socket, frontend_domid, devid, ns=None, tap_address=None,
                 log=None):
        super().__init__(hv, xs_socket, frontend_domid, devid, log=log)
        self.ns = ns
        self.tap_name = "vif%d.%s" % (frontend_domid, devid)
        self.tap = -1
        self.tap_polled = False
        if ns is not None:
            self.tap = ns.open_tap(self.tap_name, tap_address)
            self._poll_tap(True)
        self.tx = self.rx = None
        self.tx_map = self.rx_map = None
        self.rx_posted = []  # (id, gref) the frontend gave us to fill
        self.rx_cons_pending = False
        self.sent_to_wire = []  # with no TAP (tests): what the frontend transmitted
        self.stats.update({"tx_packets": 0, "rx_packets": 0, "tx_errors": 0, "rx_dropped": 0,
                           "tx_bytes": 0, "rx_bytes": 0})

    def features(self):
        return {"feature-sg": 1, "feature-rx-copy": 1, "feature-rx-flip": 0,
                "feature-multicast-control": 0}

    # ---- two rings, one event channel ----
    def _connect(self):
        fe = self.frontend
        txr = self._read_int(fe + "/tx-ring-ref", 0, MAX_REF)
        rxr = self._read_int(fe + "/rx-ring-ref", 0, MAX_REF)
        port = self._read_int(fe + "/event-channel", 1, MAX_PORT)
        if txr is None or rxr is None or port is None:
            raise BackendError("%s: frontend wrote no valid tx-ring-ref/rx-ring-ref/"
                               "event-channel" % self.name)
        if self._read_int(fe + "/request-rx-copy", 0, 1) != 1:
            raise BackendError("%s: frontend did not ask for rx-copy" % self.name)
        try:
            self.tx_map = self.hv.grants.map(BACKEND_DOMID, self.frontend_domid, txr)
            self.rx_map = self.hv.grants.map(BACKEND_DOMID, self.frontend_domid, rxr)
        except GrantError as e:
            raise BackendError("%s: mapping the rings: %s" % (self.name, e))
        try:
            self.tx = BackRing(self.tx_map.mem, A.NETIF_TX_REQ_SIZE, A.NETIF_TX_RSP_SIZE,
                               name=self.name + " tx", log=self.log)
            self.rx = BackRing(self.rx_map.mem, A.NETIF_RX_REQ_SIZE, A.NETIF_RX_RSP_SIZE,
                               name=self.name + " rx", log=self.log)
        except ValueError as e:
            raise BackendError("%s: %s" % (self.name, e))
        self.ring = self.tx  # the base class's "connected" marker
        try:
            self.port = self.hv.evtchn.bind_interdomain(BACKEND_DOMID, self.frontend_domid,
                                                       port, callback=self._on_event)
        except EvtchnError as e:
            raise BackendError("%s: binding event channel %d: %s" % (self.name, port, e))
        self.sg = self._read_int(fe + "/feature-sg", 0, 1) == 1
        self._poll_tap(True)  # frames queued while unconnected: read once there is room

    def _disconnect(self):
        self.rx_posted = []
        self.tx = self.rx = None
        for m in (self.tx_map, self.rx_map):
            if m is not None:
                m.unmap()
        self.tx_map = self.rx_map = None
        super()._disconnect()

    def destroy(self):
        super().destroy()
        if self.tap >= 0:
            self._poll_tap(False)
            os.close(self.tap)
            self.tap = -1

    # ---- the frontend's side ----
    def serve(self):
        self._serve_tx()
        self._take_rx_requests()
        self._tap_readable()

    def _serve_tx(self):
        ring = self.tx
        while ring is not None:
            while True:
                first = ring.get_request()
                if first is None:
                    break
                self._tx_packet(ring, first)
            if ring.push_responses():
                self.notify()
            if not ring.final_check_for_requests():
                break

    def _tx_packet(self, ring, first):
        slots = [struct.unpack(A.NETIF_TX_REQ_FMT, first)]
        flags = slots[0][2]
        bad = None
        while flags & (A.NETTXF_more_data | A.NETTXF_extra_info):
            if len(slots) >= MAX_SLOTS:
                bad = "more than %d slots" % MAX_SLOTS
                break
            nxt = ring.get_request()
            if nxt is None:
                bad = "a packet's slots end before its last"
                break
            slots.append(struct.unpack(A.NETIF_TX_REQ_FMT, nxt))
            flags = slots[-1][2]
        total = slots[0][4]
        data = []
        got = 0
        if bad is None:
            # The first slot's size is the whole packet's; its own data is what the
            # others do not carry.
            first_len = total - sum(s[4] for s in slots[1:])
            for i, (gref, off, fl, _id, size) in enumerate(slots):
                if fl & A.NETTXF_extra_info:
                    bad = "extra info (not negotiated)"
                    break
                n = first_len if i == 0 else size
                if n < 0 or off + n > PAGE:
                    bad = "slot %d: %d bytes at %d cross its page" % (i, n, off)
                    break
                try:
                    data.append(self.hv.grants.copy_from(BACKEND_DOMID, self.frontend_domid,
                                                         gref, off, n))
                except GrantError as e:
                    bad = str(e)
                    break
                got += n
        if bad is None and not (A.NETIF_RSP_OKAY <= total <= MAX_FRAME and got == total
                                and total >= 14):
            bad = "size %d does not match its slots (%d)" % (total, got)
        status = A.NETIF_RSP_OKAY
        if bad is not None:
            status = A.NETIF_RSP_ERROR
            self.stats["tx_errors"] += 1
            self.log("%s: TX packet dropped: %s" % (self.name, bad))
        else:
            frame = b"".join(data)
            self.stats["tx_packets"] += 1
            self.stats["tx_bytes"] += len(frame)
            self._to_wire(frame)
        for s in slots:
            rsp = ring.new_response()
            if rsp is None:
                break
            struct.pack_into(A.NETIF_TX_RSP_FMT, rsp, 0, s[3], status)

    def _to_wire(self, frame):
        if self.tap < 0:
            self.sent_to_wire.append(frame)
            return
        try:
            os.write(self.tap, frame)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EIO):
                raise
            self.stats["tx_errors"] += 1  # the TAP's queue is full: a wire drops it

    # ---- the wire's side ----
    def _take_rx_requests(self):
        ring = self.rx
        while ring is not None:
            req = ring.get_request()
            if req is None:
                break
            rid, gref = struct.unpack(A.NETIF_RX_REQ_FMT, req)
            self.rx_posted.append((rid, gref))

    def _poll_tap(self, on):
        # A TAP with frames queued stays readable: polled while there is no room
        # for them, host_sim's loop spun (and starved the device model).
        if on != self.tap_polled and self.tap >= 0:
            self.tap_polled = on
            if on:
                self.hv.add_fd(self.tap, self._tap_readable)
            else:
                self.hv.remove_fd(self.tap)

    def _tap_readable(self):
        if self.tap < 0:
            return
        if self.rx is None:
            self._poll_tap(False)  # polled again once a frontend connects and posts
            return
        need = (MAX_FRAME + PAGE - 1) // PAGE if self.sg else 1
        try:
            self._tap_batch(need)
        finally:
            # The batch's responses pushed together: one notify (if the
            # frontend's rsp_event asks) for up to 64 frames, not one each.
            self._push_rx()

    def _push_rx(self):
        ring = self.rx
        if ring is not None and ring.push_responses():
            self.notify()

    def _tap_batch(self, need):
        for _ in range(64):  # a batch, then back to the loop
            self._take_rx_requests()
            if len(self.rx_posted) < need:
                # No room: frames wait in the TAP's queue. Arm req_event so the
                # frontend's next RX posting notifies us (serve() looks again).
                if self.rx.final_check_for_requests():
                    continue
                self._poll_tap(False)
                return
            self._poll_tap(True)
            try:
                frame = os.read(self.tap, MAX_FRAME)
            except BlockingIOError:
                return
            except OSError:
                return
            self.receive(frame, push=False)

    def receive(self, frame, push=True):
        """A frame for the frontend: copied into its posted pages. False if no room.
        push=False leaves the responses for the caller's _push_rx()."""
        ring = self.rx
        if ring is None:
            return False
        self._take_rx_requests()
        n = (len(frame) + PAGE - 1) // PAGE
        if n > len(self.rx_posted) or (n > 1 and not self.sg):
            self.stats["rx_dropped"] += 1
            return False
        pos = 0
        for i in range(n):
            rid, gref = self.rx_posted.pop(0)
            chunk = frame[pos:pos + PAGE]
            status = len(chunk)
            try:
                self.hv.grants.copy_to(BACKEND_DOMID, self.frontend_domid, gref, 0, chunk)
            except GrantError as e:
                self.log("%s: RX slot %d: %s" % (self.name, rid, e))
                status = A.NETIF_RSP_ERROR
            flags = A.NETRXF_more_data if i + 1 < n else 0
            # The first slot's status is its own size; the frontend sums the chain.
            struct.pack_into(A.NETIF_RX_RSP_FMT, ring.new_response(), 0, rid, 0, flags, status)
            pos += PAGE
        self.stats["rx_packets"] += 1
        self.stats["rx_bytes"] += len(frame)
        if push:
            self._push_rx()
        return True


def vif_device(ns, mac="00:16:3e:00:00:02", devid=0, address="10.0.2.2/24"):
    """A scripted Session's pv_devices entry for a stub-domain NIC joined to a TAP in
    ns (a host_sim.netns.Namespace), with the keys libxl writes for one
    (libxl_nic.c: libxl__set_xenstore_nic / libxl__nic_from_xenstore)."""
    back = {"handle": str(devid), "mac": mac, "type": "vif", "script": "", "bridge": "",
            "hotplug-status": "connected"}
    front = {"handle": str(devid), "mac": mac}
    return ("vif", devid, NetBack, {"backend_keys": back, "frontend_keys": front, "ns": ns,
                                    "tap_address": address})
