# What an emulated NIC (rtl8139, e1000) sees of the network: whole Ethernet
# frames in and out, with back-pressure both ways. In a stub domain it is
# netfront (stubdm/frontends/netfront.py) talking to dom0's netback; tests use
# MemoryNet. NICs never know which.
#
#   net.mac             the MAC the toolstack gave this NIC (6 bytes), or None
#   net.link_up         the backend is connected
#   net.transmit(frame) -> bool
#       frame: bytes-like, a complete frame (checksums already filled in: a
#       NIC that offers checksum offload or TSO to its guest does that work
#       itself before transmitting). False: no room now; the frame was not
#       taken. The NIC keeps it and tries again after net.on_tx_room() is
#       called (set on_tx_room to a callable).
#   net.tx_offload      0, or the TX_* bits below the network takes in
#       net.transmit(frame, offload, mss) (absent: 0). offload is one bit:
#       TX_CSUM / TX_CSUM6: a TCP or UDP over IPv4 / IPv6 frame whose L4
#           checksum field holds the sum to start from (the pseudo-header's
#           with the L4 length, as Linux's CHECKSUM_PARTIAL): the network sums
#           from the L4 header to the frame's end and puts the complement
#           there. Everything else (the IPv4 header's checksum) is complete.
#       TX_TSO4 / TX_TSO6: as TX_CSUM*, for one TCP packet of any size up to
#           MAX_FRAME, its IP length covering all of it, to be cut into
#           segments of mss payload bytes (IP length and ID, TCP sequence,
#           FIN/PSH and every checksum done per segment, as a TSO NIC does).
#       netfront passes them to netback as netif's csum_blank and GSO extra;
#       netutil.finish() does the same work in software (tests, saves).
#   net.set_receiver(fn)
#       fn(frame) -> bool for every frame from the wire (a memoryview valid
#       only during the call: copy it). False: the NIC has no room; the frame
#       is kept (not dropped) and nothing more is delivered until the NIC
#       calls net.rx_resume().
#   net.on_link          None, or a callable run when link_up changes
#   net.rx_batches       True: the net delivers frames in bursts and calls
#       net.on_rx_done() (a NIC sets it) after each, so the NIC may hold the
#       burst's descriptor write-backs and interrupt until then (it also ends
#       the hold at the guest's next register access). Absent or False: every
#       frame is finished in its own call.
#
# Frames are at most MAX_FRAME bytes (netif's 0xFFFF); shorter than 14 or
# longer are refused by both sides.
MAX_FRAME = 0xFFFF
MIN_FRAME = 14
TX_CSUM = 1
TX_CSUM6 = 2
TX_TSO4 = 4
TX_TSO6 = 8
# A NIC holds at most one TX batch for the network (a TSO burst: 64 segments).
MAX_HELD_FRAMES = 256


def load_txq(saved, name):
    """A NIC's saved frames waiting for the network, checked (ValueError if bad)."""
    q = list(saved)
    if len(q) > MAX_HELD_FRAMES:
        raise ValueError(name + ": %d saved TX frames, at most %d" % (len(q), MAX_HELD_FRAMES))
    out = []
    for f in q:
        if not isinstance(f, (bytes, bytearray)) or not MIN_FRAME <= len(f) <= MAX_FRAME:
            raise ValueError(name + ": a saved TX frame is not a frame")
        out.append(bytes(f))
    return out


class MemoryNet:
    """A wire in a list, for tests: what the NIC sent, and frames to give it."""

    def __init__(self, mac=b"\x00\x16\x3e\x00\x00\x01", tx_room=1 << 30, tx_offload=0):
        self.mac = mac
        # Offloaded frames are finished here in software: `sent` holds what
        # the wire would carry; `offloaded` counts (offload, mss) per frame.
        self.tx_offload = tx_offload
        self.offloaded = []
        self.link_up = True
        self.sent = []
        self.tx_room = tx_room
        self.on_tx_room = None
        self.on_link = None
        self.receiver = None
        self.rx_batches = True
        self.on_rx_done = None
        self.backlog = []
        self.paused = False

    def transmit(self, frame, offload=0, mss=0):
        if self.tx_room <= 0 or not MIN_FRAME <= len(frame) <= MAX_FRAME:
            return False
        if offload:
            if not offload & self.tx_offload:
                raise AssertionError("offload %d not offered" % offload)
            from stubdm.devices import netutil
            h = netutil.parse(frame)
            co = netutil.csum_offset(h.proto) if h is not None else -1
            if co < 0 or netutil.get16(frame, h.l4 + co) % 0xFFFF != \
                    netutil.pseudo_sum(frame, h, h.l4_end - h.l4) % 0xFFFF:
                raise AssertionError("an offloaded frame's L4 field is not its pseudo-header sum")
            frames = netutil.finish(bytearray(frame), offload, mss)
            if frames is None:
                raise AssertionError("an offloaded frame netutil cannot finish")
            self.offloaded.append((offload, mss))
        else:
            frames = (frame,)
        self.tx_room -= 1
        for f in frames:
            self.sent.append(bytes(f))
        return True

    def set_receiver(self, fn):
        self.receiver = fn

    def deliver(self, frame):
        """A frame arrives from the wire."""
        self.backlog.append(bytes(frame))
        self._flush()

    def rx_resume(self):
        self.paused = False
        self._flush()

    def _flush(self):
        while self.backlog and not self.paused and self.receiver is not None:
            if self.receiver(memoryview(self.backlog[0])):
                self.backlog.pop(0)
            else:
                self.paused = True
        if self.on_rx_done is not None:
            self.on_rx_done()

    def room(self, n):
        """The wire can take n more frames: tell the NIC."""
        self.tx_room += n
        if self.on_tx_room is not None:
            self.on_tx_room()
