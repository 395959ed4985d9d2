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

    def __init__(self, mac=b"\x00\x16\x3e\x00\x00\x01", tx_room=1 << 30):
        self.mac = mac
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

    def transmit(self, frame):
        if self.tx_room <= 0 or not MIN_FRAME <= len(frame) <= MAX_FRAME:
            return False
        self.tx_room -= 1
        self.sent.append(bytes(frame))
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
