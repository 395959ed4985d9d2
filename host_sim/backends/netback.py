"""host_sim's netback: a vif joined to a TAP device in the run's private namespace.

Offers what a frontend needs of Linux's xen-netback (DESIGN.md 13): feature-sg (a
packet over several slots), feature-rx-copy (the backend copies into the frontend's
posted pages; the only RX mode), one event channel for both rings. It copies with
host_sim's grant copy, as netback does with GNTTABOP_copy: the frontend's pages are
never mapped. Frames read from the TAP are complete (the kernel is offered no
offload on that side: its vnet header says nothing): RX flags 0.

Offloads, as Linux's netback: checksum offload for IPv4 (on unless it says
feature-no-csum-offload) and IPv6 (feature-ipv6-csum-offload), and GSO
(feature-gso-tcpv4/-tcpv6). A csum_blank packet's headers are parsed (as
skb_checksum_setup: untagged IPv4 or IPv6, TCP or UDP) and it goes to the TAP
(opened with IFF_VNET_HDR) with a virtio_net_hdr saying NEEDS_CSUM at the L4
checksum field, plus the GSO type and size from its extra-info slot: the
kernel segments and sums, as for a GSO skb netback hands to the stack. A GSO
packet without csum_blank gets its pseudo-header sum put in, as netback's
checksum fixup does. GSO size 0, a type not offered, an extra-info type never
negotiated, headers that don't parse: an error response (Linux's netback calls
the first two fatal and stops the vif; here the packet is refused, logged, and
the vif goes on). offload=False offers none of it (the old behaviour).

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

from stubdm.devices import netutil

from host_sim.backends.base import BACKEND_DOMID, MAX_PORT, MAX_REF, Backend, BackendError
from host_sim.backends.ring import BackRing
from host_sim.evtchn import EvtchnError
from host_sim.grants import PAGE, GrantError
from stubdm import pv_abi as A

MAX_FRAME = A.XEN_NETIF_MAX_TX_SIZE
MAX_SLOTS = A.XEN_NETIF_NR_SLOTS_MIN  # slots one packet may span (Linux netback's default)
MAX_EXTRAS = A.XEN_NETIF_EXTRA_TYPE_MAX - 1  # one of each type at most
RX_BATCH = 64  # frames read from the TAP per turn, their responses pushed together

# struct virtio_net_hdr (linux/virtio_net.h), little-endian on a TAP by default
VNET_HDR_FMT = "<BBHHHH"  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = 10
VNET_F_NEEDS_CSUM = 1
VNET_GSO_TCPV4 = 1
VNET_GSO_TCPV6 = 4
PLAIN_HDR = bytes(VNET_HDR_LEN)


class NetBack(Backend):
    TYPE = "vif"
    REQ_SIZE = A.NETIF_TX_REQ_SIZE  # unused: two rings, mapped below
    RSP_SIZE = A.NETIF_TX_RSP_SIZE

    def __init__(self, hv, xs_socket, frontend_domid, devid, ns=None, tap_address=None,
                 log=None, offload=True):
        self.offload = offload
        super().__init__(hv, xs_socket, frontend_domid, devid, log=log)
        self.ns = ns
        self.tap_name = "vif%d.%s" % (frontend_domid, devid)
        self.tap = -1
        self.tap_polled = False
        if ns is not None:
            self.tap = ns.open_tap(self.tap_name, tap_address, vnet_hdr=True)
            self._poll_tap(True)
        self.tx = self.rx = None
        self.tx_map = self.rx_map = None
        self.rx_posted = []  # (id, gref) the frontend gave us to fill
        # One TAP read's buffer, reused: a fresh 64 KiB bytes per frame read
        # was most of what a frame cost here.
        self.rx_buf = bytearray(VNET_HDR_LEN + MAX_FRAME)
        self.rx_view = memoryview(self.rx_buf)
        self.rx_cons_pending = False
        # With no TAP (tests): what the frontend transmitted, each as the TAP
        # would get it: (virtio_net_hdr bytes, frame).
        self.sent_to_wire = []
        self.stats.update({"tx_packets": 0, "rx_packets": 0, "tx_errors": 0, "rx_dropped": 0,
                           "tx_bytes": 0, "rx_bytes": 0, "tx_gso": 0, "tx_csum_blank": 0})

    def features(self):
        f = {"feature-sg": 1, "feature-rx-copy": 1, "feature-rx-flip": 0,
             "feature-multicast-control": 0}
        if self.offload:
            f.update({"feature-gso-tcpv4": 1, "feature-gso-tcpv6": 1,
                      "feature-ipv6-csum-offload": 1})
        else:
            f["feature-no-csum-offload"] = 1
        return f

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
        first_flags = flags = slots[0][2]
        bad = None
        extras = 0  # extra-info slots after the first (each answered NETIF_RSP_NULL)
        gso = None  # (size, type) from a GSO extra
        if flags & A.NETTXF_extra_info:
            more = True
            while more:
                nxt = ring.get_request()
                if nxt is None:
                    bad = "a packet's extra-info slot is missing"
                    break
                extras += 1
                etype, eflags, gsize, gtype, _feat = struct.unpack_from(A.NETIF_EXTRA_GSO_FMT,
                                                                        nxt)
                more = eflags & A.XEN_NETIF_EXTRA_FLAG_MORE
                if extras > MAX_EXTRAS:
                    bad = "more than %d extra-info slots" % MAX_EXTRAS
                    break
                if etype != A.XEN_NETIF_EXTRA_TYPE_GSO or not self.offload:
                    bad = "extra info type %d (not negotiated)" % etype
                    break
                gso = (gsize, gtype)
        while bad is None and flags & A.NETTXF_more_data:
            if len(slots) >= MAX_SLOTS:
                bad = "more than %d slots" % MAX_SLOTS
                break
            nxt = ring.get_request()
            if nxt is None:
                bad = "a packet's slots end before its last"
                break
            slots.append(struct.unpack(A.NETIF_TX_REQ_FMT, nxt))
            flags = slots[-1][2]
            if flags & A.NETTXF_extra_info:
                bad = "extra info on a slot after the first"
        if bad is None and gso is not None:
            if gso[0] == 0:
                bad = "GSO size 0"
            elif gso[1] not in (A.XEN_NETIF_GSO_TYPE_TCPV4, A.XEN_NETIF_GSO_TYPE_TCPV6):
                bad = "GSO type %d (not offered)" % gso[1]
        total = slots[0][4]
        data = []
        got = 0
        if bad is None:
            # The first slot's size is the whole packet's; its own data is what the
            # others do not carry.
            first_len = total - sum(s[4] for s in slots[1:])
            for i, (gref, off, fl, _id, size) in enumerate(slots):
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
        hdr = PLAIN_HDR
        frame = None
        if bad is None:
            frame = b"".join(data)
            if first_flags & A.NETTXF_csum_blank or gso is not None:
                frame = bytearray(frame)
                hdr, bad = self._offload_hdr(frame, first_flags & A.NETTXF_csum_blank, gso)
        status = A.NETIF_RSP_OKAY
        if bad is not None:
            status = A.NETIF_RSP_ERROR
            self.stats["tx_errors"] += 1
            self.log("%s: TX packet dropped: %s" % (self.name, bad))
        else:
            self.stats["tx_packets"] += 1
            self.stats["tx_bytes"] += len(frame)
            self._to_wire(frame, hdr)
        # A response per request, the extra-info slots' NETIF_RSP_NULL right
        # after the first's (as make_tx_response).
        for i, s in enumerate(slots):
            rsp = ring.new_response()
            if rsp is None:
                break
            struct.pack_into(A.NETIF_TX_RSP_FMT, rsp, 0, s[3], status)
            if i == 0:
                for _ in range(extras):
                    rsp = ring.new_response()
                    if rsp is None:
                        break
                    struct.pack_into(A.NETIF_TX_RSP_FMT, rsp, 0, 0, A.NETIF_RSP_NULL)

    def _offload_hdr(self, frame, csum_blank, gso):
        """The virtio_net_hdr for a csum_blank or GSO packet (its headers parsed as
        Linux's skb_checksum_setup does), or (None, why it is refused)."""
        if not self.offload:
            return None, "csum_blank (feature-no-csum-offload)"
        h = netutil.parse(frame)
        if h is None or h.ip != netutil.ETH_HLEN:
            return None, "csum_blank: not an untagged IPv4 or IPv6 packet"
        co = netutil.csum_offset(h.proto)
        if co < 0 or h.l4 + co + 2 > len(frame):
            return None, "csum_blank: no TCP or UDP checksum in the packet"
        hdr_len = h.l4 + co + 2
        vtype = 0
        size = 0
        if gso is not None:
            size, gtype = gso
            hl = netutil.tcp_hdr_len(frame, h)
            if h.v4 != (gtype == A.XEN_NETIF_GSO_TYPE_TCPV4) or not hl:
                return None, "GSO type %d on a packet that is not one" % gtype
            vtype = VNET_GSO_TCPV4 if h.v4 else VNET_GSO_TCPV6
            hdr_len = h.l4 + hl
            self.stats["tx_gso"] += 1
            if not csum_blank:  # netback's checksum fixup: the pseudo-header's sum
                netutil.put16(frame, h.l4 + co, netutil.pseudo_sum(frame, h, h.l4_end - h.l4))
        else:
            self.stats["tx_csum_blank"] += 1
        return struct.pack(VNET_HDR_FMT, VNET_F_NEEDS_CSUM, vtype, hdr_len, size, h.l4, co), None

    def _to_wire(self, frame, hdr=PLAIN_HDR):
        if self.tap < 0:
            self.sent_to_wire.append((hdr, bytes(frame)))
            return
        try:
            os.writev(self.tap, (hdr, frame))
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
        buf = self.rx_view
        for _ in range(RX_BATCH):  # a batch, then back to the loop
            if len(self.rx_posted) < need:
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
                n = os.readv(self.tap, (buf,))
            except BlockingIOError:
                return
            except OSError:
                return
            # Offered no offload, the kernel sends complete frames: a header
            # saying otherwise is a frame we cannot give the frontend.
            if n < VNET_HDR_LEN + 14 or buf[0] or buf[1]:
                self.stats["rx_dropped"] += 1
                continue
            self.receive(buf[VNET_HDR_LEN:n], push=False)

    def receive(self, frame, push=True):
        """A frame for the frontend: copied into its posted pages. False if no room.
        push=False leaves the responses for the caller's _push_rx()."""
        ring = self.rx
        if ring is None:
            return False
        size = len(frame)
        n = (size + PAGE - 1) // PAGE
        if n > len(self.rx_posted):
            self._take_rx_requests()
        if n > len(self.rx_posted) or (n > 1 and not self.sg):
            self.stats["rx_dropped"] += 1
            return False
        pos = 0
        copy_to = self.hv.grants.copy_to
        for i in range(n):
            rid, gref = self.rx_posted.pop(0)
            chunk = frame if n == 1 else frame[pos:pos + PAGE]
            status = len(chunk)
            try:
                copy_to(BACKEND_DOMID, self.frontend_domid, gref, 0, chunk)
            except GrantError as e:
                self.log("%s: RX slot %d: %s" % (self.name, rid, e))
                status = A.NETIF_RSP_ERROR
            flags = A.NETRXF_more_data if i + 1 < n else 0
            # The first slot's status is its own size; the frontend sums the chain.
            struct.pack_into(A.NETIF_RX_RSP_FMT, ring.new_response(), 0, rid, 0, flags, status)
            pos += PAGE
        self.stats["rx_packets"] += 1
        self.stats["rx_bytes"] += size
        if push:
            self._push_rx()
        return True


def vif_device(ns, mac="00:16:3e:00:00:02", devid=0, address="10.0.2.2/24", offload=True):
    """A scripted Session's pv_devices entry for a stub-domain NIC joined to a TAP in
    ns (a host_sim.netns.Namespace), with the keys libxl writes for one
    (libxl_nic.c: libxl__set_xenstore_nic / libxl__nic_from_xenstore)."""
    back = {"handle": str(devid), "mac": mac, "type": "vif", "script": "", "bridge": "",
            "hotplug-status": "connected"}
    front = {"handle": str(devid), "mac": mac}
    return ("vif", devid, NetBack, {"backend_keys": back, "frontend_keys": front, "ns": ns,
                                    "tap_address": address, "offload": offload})
