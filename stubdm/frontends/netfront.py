# netfront: the stub domain's PV NIC (xen/include/public/io/netif.h), as the
# network an emulated NIC sees (stubdm/net.py). The guest's NICs reach dom0's
# netback through it.
#
# Two one-page rings (TX 256, RX 256 slots) and one event channel. Pages are
# granted once at connection and reused: TX_PAGES for frames going out, one
# page per posted RX slot for frames coming in (rx-copy: the backend copies
# into them). A frame over several slots needs feature-sg. The RX ring is kept
# full; when the NIC has no room the frame is held and nothing more is taken
# from the ring until the NIC calls rx_resume(), so the backend (and the wire
# behind it) waits instead of us dropping what the guest would have taken. A
# frame the backend marks csum_blank gets its TCP/UDP checksum filled in
# before the NIC sees it.
#
# The backend is hostile: responses to ids not in flight, offsets and sizes
# past a page, chains longer than a frame, extra-info slots never negotiated:
# the frame is dropped, logged, and the NIC goes on.
import struct

from stubdm import log, pv_abi as A
from stubdm.devices import netutil
from stubdm.frontends.ring import FrontRing
from stubdm.frontends.xenbus import Frontend
from stubdm.net import TX_CSUM, TX_CSUM6, TX_TSO4, TX_TSO6

PAGE = 4096
TX_PAGES = 64
RX_SLOTS = 128
RX_CHUNK = 8  # RX slots handed to the NIC per turn of the device model's loop
MAX_FRAME = A.XEN_NETIF_MAX_TX_SIZE
MAX_SLOTS = (MAX_FRAME + PAGE - 1) // PAGE


def parse_mac(s):
    """b'\\x00\\x16...' from "00:16:3e:..", or None if it is not a MAC."""
    if s is None or len(s) != 17:
        return None
    out = bytearray(6)
    for i in range(6):
        part = s[i * 3:i * 3 + 2]
        if i < 5 and s[i * 3 + 2] != ":":
            return None
        try:
            out[i] = int(part, 16)
        except ValueError:
            return None
    return bytes(out)


def fill_checksum(frame):
    """Fill in the TCP/UDP checksum of a csum_blank frame (the NICs' own helper)."""
    h = netutil.parse(frame)
    return h is not None and netutil.fill_l4_checksum(frame, h)


class NetFront(Frontend):
    TYPE = "vif"

    def __init__(self, bus, devid):
        super().__init__(bus, devid)
        self.mac = None
        self.link_up = False
        self.on_link = None
        self.on_tx_room = None
        self.receiver = None
        # Frames come in bursts (one event's responses): the NIC hears when each ends.
        self.rx_batches = True
        self.on_rx_done = None
        self.sg = False
        # What the backend finishes for us (stubdm/net.py's TX_* bits): set
        # at connection from its feature keys.
        self.tx_offload = 0
        self.tx = self.rx = None
        self.tx_shared = self.rx_shared = self.tx_pool = self.rx_pool = None
        self.port = None
        self.tx_free = []
        self.tx_busy = {}  # id (= pool page) in flight
        self.tx_blocked = False
        self.rx_chain = None  # slots of the frame being put together
        self.rx_len = 0
        self.rx_bad = False
        self.rx_csum = False
        self.held = None  # a frame the NIC had no room for
        self.rx_paused = False
        self.resume_queued = False  # rx_resume's work waits for the bus's run_deferred
        self.rx_more_queued = False  # the rest of a burst, likewise
        # The bus's defer (FrontendBus.defer), or None: RX work done at once.
        self.defer = getattr(bus, "defer", None)
        self.repost = []  # RX slots to post again
        self.posted = bytearray(RX_SLOTS)  # 1: the slot is on the ring (the backend's)
        self.stats = {"tx": 0, "rx": 0, "tx_dropped": 0, "rx_dropped": 0, "csum_filled": 0,
                      "held": 0}

    # ---- the handshake ----
    def setup(self):
        be = self.backend
        if self.xs.read_int(be + "/feature-rx-copy", 0, 1) != 1:
            self._fail("backend offers no feature-rx-copy")
            return
        self.sg = self.xs.read_int(be + "/feature-sg", 0, 1) == 1
        # netif.h: IPv4 checksum offload is on unless the backend says
        # feature-no-csum-offload, IPv6's only with feature-ipv6-csum-offload;
        # GSO needs sg (a 64 KiB packet spans 16 slots) and the checksum.
        off = 0
        if self.xs.read_int(be + "/feature-no-csum-offload", 0, 1) != 1:
            off |= TX_CSUM
        if self.xs.read_int(be + "/feature-ipv6-csum-offload", 0, 1) == 1:
            off |= TX_CSUM6
        if self.sg and off & TX_CSUM and \
                self.xs.read_int(be + "/feature-gso-tcpv4", 0, 1) == 1:
            off |= TX_TSO4
        if self.sg and off & TX_CSUM6 and \
                self.xs.read_int(be + "/feature-gso-tcpv6", 0, 1) == 1:
            off |= TX_TSO6
        self.tx_offload = off
        hyp = self.hyp
        self.tx_shared = hyp.share_pages(self.backend_id, 1)
        self.rx_shared = hyp.share_pages(self.backend_id, 1)
        self.tx = FrontRing(self.tx_shared.mem, A.NETIF_TX_REQ_SIZE, A.NETIF_TX_RSP_SIZE,
                            hyp.barrier, name=self.name + " tx", add32=hyp.atomic_add32)
        self.rx = FrontRing(self.rx_shared.mem, A.NETIF_RX_REQ_SIZE, A.NETIF_RX_RSP_SIZE,
                            hyp.barrier, name=self.name + " rx", add32=hyp.atomic_add32)
        self.tx_pool = hyp.share_pages(self.backend_id, TX_PAGES, False)
        self.rx_pool = hyp.share_pages(self.backend_id, RX_SLOTS)
        self.tx_free = list(range(TX_PAGES))
        self.tx_busy = {}
        self.port = hyp.bind_unbound_port(self.backend_id)
        self.listen(self.port)

    def publish(self, tx):
        xs, p = self.xs, self.path
        xs.write(p + "/tx-ring-ref", self.tx_shared.refs[0], tx)
        xs.write(p + "/rx-ring-ref", self.rx_shared.refs[0], tx)
        xs.write(p + "/event-channel", self.port, tx)
        xs.write(p + "/request-rx-copy", 1, tx)
        xs.write(p + "/feature-rx-notify", 1, tx)
        xs.write(p + "/feature-sg", 1 if self.sg else 0, tx)

    def connected(self):
        mac = parse_mac(self.xs.read(self.path + "/mac"))
        if mac is None:
            log.info("netfront", "%s: no valid mac in xenstore" % self.name)
        self.mac = mac
        self.repost = list(range(RX_SLOTS))
        self.posted = bytearray(RX_SLOTS)
        self._post_rx()
        self._set_link(True)

    def _set_link(self, up):
        if up != self.link_up:
            self.link_up = up
            if self.on_link is not None:
                self.on_link()

    def disconnect(self):
        if self.port is not None:
            self.hyp.unbind(self.port)
            self.port = None
        self.tx = self.rx = None
        for sh in (self.tx_pool, self.rx_pool, self.tx_shared, self.rx_shared):
            if sh is not None:
                sh.unshare()
        self.tx_pool = self.rx_pool = self.tx_shared = self.rx_shared = None
        self.tx_busy = {}
        self.tx_free = []
        self.tx_offload = 0
        self.rx_chain = None
        self.held = None
        self._set_link(False)

    # ---- the network a NIC sees ----
    def tx_in_flight(self):
        """Slots on the TX ring the backend has not answered (a save waits for 0)."""
        return len(self.tx_busy)

    def set_receiver(self, fn):
        self.receiver = fn

    def transmit(self, frame, offload=0, mss=0):
        n = len(frame)
        if not self.link_up or self.tx is None:
            return True  # no wire: a real NIC's frames vanish too
        if n < 14 or n > MAX_FRAME or (offload and not offload & self.tx_offload):
            self.stats["tx_dropped"] += 1
            return True
        slots = (n + PAGE - 1) // PAGE
        if slots > 1 and not self.sg:
            self.stats["tx_dropped"] += 1
            return True
        gso = 0
        first_flags = 0
        if offload:
            # netif.h: the backend fills the TCP/UDP checksum (csum_blank) of
            # data that is valid (data_validated); a GSO packet's type and MSS
            # ride in an extra-info slot right after its first request.
            first_flags = A.NETTXF_csum_blank | A.NETTXF_data_validated
            if offload & TX_TSO4:
                gso = A.XEN_NETIF_GSO_TYPE_TCPV4
            elif offload & TX_TSO6:
                gso = A.XEN_NETIF_GSO_TYPE_TCPV6
            if gso and not 0 < mss <= 0xFFFF:
                self.stats["tx_dropped"] += 1
                return True
            if gso:
                first_flags |= A.NETTXF_extra_info
        if self.tx.free_requests() < slots + (1 if gso else 0) or len(self.tx_free) < slots:
            self.tx_blocked = True
            return False
        mem = self.tx_pool.mem
        refs = self.tx_pool.refs
        pos = 0
        for i in range(slots):
            page = self.tx_free.pop()
            chunk = n - pos if n - pos < PAGE else PAGE
            mem[page * PAGE:page * PAGE + chunk] = frame[pos:pos + chunk]
            flags = A.NETTXF_more_data if i + 1 < slots else 0
            size = n if i == 0 else chunk  # the first slot carries the packet's size
            if i == 0:
                flags |= first_flags
            struct.pack_into(A.NETIF_TX_REQ_FMT, self.tx.new_request(), 0, refs[page], 0,
                             flags, page, size)
            if i == 0 and gso:
                struct.pack_into(A.NETIF_EXTRA_GSO_FMT, self.tx.new_request(), 0,
                                 A.XEN_NETIF_EXTRA_TYPE_GSO, 0, mss, gso, 0)
            self.tx_busy[page] = True
            pos += chunk
        self.stats["tx"] += 1
        if self.tx.push_requests():
            self.hyp.notify(self.port)
        return True

    def rx_resume(self):
        # Called from the NIC's register write: the frames move after the
        # guest's access is answered (FrontendBus.defer), once however often
        # the NIC asks before then.
        if not self.rx_paused or self.resume_queued:
            return
        if self.defer is None:
            self._rx_resume_now()
            return
        self.resume_queued = True
        self.defer(self._rx_resume_now)

    def _rx_resume_now(self):
        self.resume_queued = False
        if not self.rx_paused:
            return
        self.rx_paused = False
        if self.held is not None:
            frame = self.held
            self.held = None
            if not self._deliver(frame):
                self._rx_done()
                return
        self.on_event(self.port)
        self._rx_done()

    def _rx_done(self):
        if self.on_rx_done is not None:
            self.on_rx_done()

    # ---- events ----
    def on_event(self, port):
        if self.tx is None:
            return
        self._tx_responses()
        self._rx_responses()
        if self.tx is not None and (self.tx.broken or self.rx.broken):
            self._fail("ring broken: %s" % (self.tx.broken or self.rx.broken))

    def _tx_responses(self):
        ring = self.tx
        freed = False
        while True:
            while True:
                rsp = ring.get_response()
                if rsp is None:
                    break
                rid, status = struct.unpack(A.NETIF_TX_RSP_FMT, rsp)
                if status == A.NETIF_RSP_NULL:
                    continue
                if self.tx_busy.pop(rid, None) is None:
                    log.guest_error("netfront", "%s: TX response for slot %d, not in flight"
                                    % (self.name, rid))
                    continue
                self.tx_free.append(rid)
                freed = True
                if status != A.NETIF_RSP_OKAY:
                    self.stats["tx_dropped"] += 1
            if not ring.final_check_for_responses():
                break
        if freed and self.tx_blocked:
            self.tx_blocked = False
            if self.on_tx_room is not None:
                self.on_tx_room()

    def _rx_responses(self):
        ring = self.rx
        # With a bus that defers (the device model's loop), RX_CHUNK slots per
        # turn: the guest's next access is answered between chunks instead of
        # after a whole burst (its vCPU, and host_sim's loop, waited on it).
        budget = RX_CHUNK if self.defer is not None else -1
        while not self.rx_paused and ring is not None:
            while not self.rx_paused:
                if budget == 0:
                    self._post_rx()
                    self._rx_done()
                    if not self.rx_more_queued:
                        self.rx_more_queued = True
                        self.defer(self._rx_more)
                    return
                rsp = ring.get_response()
                if rsp is None:
                    break
                self._rx_slot(rsp)
                budget -= 1
            self._post_rx()
            if self.rx_paused or not ring.final_check_for_responses():
                break
        self._rx_done()

    def _rx_more(self):
        self.rx_more_queued = False
        self.on_event(self.port)

    def _rx_slot(self, rsp):
        rid, off, flags, status = struct.unpack(A.NETIF_RX_RSP_FMT, rsp)
        if rid >= RX_SLOTS or not self.posted[rid]:
            log.guest_error("netfront", "%s: RX response for slot %d, not posted"
                            % (self.name, rid))
            return
        self.posted[rid] = 0
        self.repost.append(rid)
        if self.rx_chain is None and not flags & (A.NETRXF_more_data | A.NETRXF_extra_info):
            # A frame in one slot (a full-size one is): the NIC copies it from
            # the pool page, which is posted again only after this call.
            bad = status < 0 or off + status > PAGE
            base = rid * PAGE + off
            frame = b"" if bad else self.rx_pool.mem[base:base + status]
            self._frame_done(frame, bad, flags & A.NETRXF_csum_blank)
            return
        if self.rx_chain is None:
            self.rx_chain = bytearray()
            self.rx_bad = False
        chain = self.rx_chain
        if flags & A.NETRXF_extra_info:
            self.rx_bad = True  # never negotiated
        if status < 0 or off + status > PAGE or len(chain) + status > MAX_FRAME:
            self.rx_bad = True
        elif not self.rx_bad:
            base = rid * PAGE + off
            chain += self.rx_pool.mem[base:base + status]
        if flags & A.NETRXF_more_data:
            self.rx_csum = self.rx_csum or bool(flags & A.NETRXF_csum_blank)
            return
        csum = self.rx_csum or bool(flags & A.NETRXF_csum_blank)
        self.rx_csum = False
        self.rx_chain = None
        self._frame_done(chain, self.rx_bad, csum)

    def _frame_done(self, frame, bad, csum):
        """A received frame's last slot came: dropped if malformed, else its
        checksum filled (csum: the backend left it blank) and delivered."""
        if bad or len(frame) < 14:
            self.stats["rx_dropped"] += 1
            log.guest_error("netfront", "%s: malformed RX frame dropped" % self.name)
            return
        if csum and fill_checksum(frame):
            self.stats["csum_filled"] += 1
        self._deliver(frame)

    def _deliver(self, frame):
        if self.receiver is None:
            self.stats["rx_dropped"] += 1
            return True
        if self.receiver(memoryview(frame)):
            self.stats["rx"] += 1
            return True
        # Kept until the NIC has room: a pool page's frame is copied out (its
        # slot goes back to the backend).
        self.held = frame if isinstance(frame, bytearray) else bytearray(frame)
        self.rx_paused = True
        self.stats["held"] += 1
        return False

    def _post_rx(self):
        ring = self.rx
        if ring is None or not self.repost:
            return
        refs = self.rx_pool.refs
        while self.repost:
            slot = ring.new_request()
            if slot is None:
                break
            rid = self.repost.pop()
            self.posted[rid] = 1
            struct.pack_into(A.NETIF_RX_REQ_FMT, slot, 0, rid, refs[rid])
        if ring.push_requests():
            self.hyp.notify(self.port)
