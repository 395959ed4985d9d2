# Tests of stubdm.devices.rtl8139: the RTL8139C+ as Linux's 8139cp (C+ mode)
# and 8139too (classic ring, four TX slots) drive it, over MemoryNet.
# Register offsets and bits: RTL8139C(L)+ datasheet section 6 and 8139cp's
# names; the checksums are checked with an independent RFC 1071 sum.
import struct

import pytest

from host_sim.fuzz import FakeGuestMemory
from stubdm import log
from stubdm.devices import rtl8139 as R
from stubdm.net import MemoryNet

MAC = bytes.fromhex("00163e5a0b01")
PEER = bytes.fromhex("00163e000002")
TX_RING = 0x10000
RX_RING = 0x11000
BUFS = 0x20000


@pytest.fixture(autouse=True)
def quiet():
    old = log.verbose
    log.verbose = 0
    log.reset_counts()
    yield
    log.verbose = old


def rfc1071(data):
    if len(data) & 1:
        data = bytes(data) + b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_frame(payload, dst=PEER, src=MAC, seq=1000, flags=0x18, csum=0):
    """An Ethernet/IPv4/TCP frame with zero IP and TCP checksums."""
    tcp = struct.pack(">HHIIBBHHH", 40000, 80, seq, 0, 5 << 4, flags, 65535, csum, 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0x1234, 0x4000, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return dst + src + b"\x08\x00" + ip + tcp


def ip_ok(frame):
    return rfc1071(frame[14:34]) == 0xFFFF


def tcp_ok(frame):
    ip = frame[14:34]
    total = struct.unpack(">H", ip[2:4])[0]
    seg = frame[34 : 14 + total]
    pseudo = ip[12:20] + struct.pack(">BBH", 0, 6, len(seg))
    return rfc1071(pseudo + seg) == 0xFFFF


def with_checksums(frame):
    """The frame with correct IP and TCP checksums (the reference)."""
    f = bytearray(frame)
    f[24:26] = b"\0\0"
    f[24:26] = struct.pack(">H", (~rfc1071(bytes(f[14:34]))) & 0xFFFF)
    total = struct.unpack(">H", f[16:18])[0]
    f[50:52] = b"\0\0"
    pseudo = bytes(f[26:34]) + struct.pack(">BBH", 0, 6, total - 20)
    f[50:52] = struct.pack(">H", (~rfc1071(pseudo + bytes(f[34 : 14 + total]))) & 0xFFFF)
    return bytes(f)


class Rig:
    def __init__(self, link=True, tx_room=1 << 30, tx_offload=0):
        self.mem = FakeGuestMemory(4 << 20)
        self.net = MemoryNet(MAC, tx_room=tx_room, tx_offload=tx_offload)
        self.net.link_up = link
        self.nic = R.Rtl8139(self.net, self.mem)

    def r8(self, off):
        return self.nic.read(off, 1)

    def r16(self, off):
        return self.nic.read(off, 2)

    def r32(self, off):
        return self.nic.read(off, 4)

    def w8(self, off, v):
        self.nic.write(off, 1, v)

    def w16(self, off, v):
        self.nic.write(off, 2, v)

    def w32(self, off, v):
        self.nic.write(off, 4, v)

    @property
    def irq(self):
        return self.nic.intx_asserted

    def cp_open(self, rx_bufs=4, rx_buf_sz=1536, cpcmd=0x002B):
        """8139cp's cp_open: reset, unlock, rings, CpCmd, Cmd, IntrMask."""
        self.nic.config_write(0x04, 2, 0x0007)  # I/O, memory, bus master
        self.w8(R.CR, R.CR_RST)
        assert self.r8(R.CR) & R.CR_RST == 0  # reset completes at once
        self.w8(R.CR9346, 0xC0)
        self.w16(R.CPCR, cpcmd)  # PCIMulRW | CpRxOn | CpTxOn | RxChkSum
        for i in range(rx_bufs):
            opts1 = R.DESC_OWN | rx_buf_sz | (R.DESC_EOR if i == rx_bufs - 1 else 0)
            self.mem.write(RX_RING + 16 * i, struct.pack("<IIQ", opts1, 0, BUFS + 0x800 * i))
        self.w32(R.RDSAR, RX_RING)
        self.w32(R.RDSAR + 4, 0)
        self.w32(R.TSAD0, TX_RING)
        self.w32(R.TSAD0 + 4, 0)
        self.w8(R.CR, R.CR_RE | R.CR_TE)
        self.w16(R.IMR, 0x81FF)
        self.w8(R.CR9346, 0x00)

    def tx_desc(self, i, opts1, buf, opts2=0):
        self.mem.write(TX_RING + 16 * i, struct.pack("<IIQ", opts1, opts2, buf))

    def desc(self, base, i):
        return struct.unpack("<IIQ", self.mem.read(base + 16 * i, 16))


def read_eeprom(rig, location, addr_len):
    """8139too/8139cp's read_eeprom(): Cfg9346 bit-banging, a READ (110) then
    the address MSB first, 16 data bits read while the clock is high."""
    EE_ENB = 0x80 | R.EE_CS
    cmd = (location | (6 << addr_len))
    rig.w8(R.CR9346, EE_ENB & ~R.EE_CS)
    rig.w8(R.CR9346, EE_ENB)
    for i in range(4 + addr_len, -1, -1):
        d = R.EE_DI if cmd & (1 << i) else 0
        rig.w8(R.CR9346, EE_ENB | d)
        rig.w8(R.CR9346, EE_ENB | d | R.EE_SK)
    rig.w8(R.CR9346, EE_ENB)
    v = 0
    for _ in range(16):
        rig.w8(R.CR9346, EE_ENB | R.EE_SK)
        v = (v << 1) | (rig.r8(R.CR9346) & R.EE_DO)
        rig.w8(R.CR9346, EE_ENB)
    rig.w8(R.CR9346, 0)
    return v


def test_pci_identity_is_an_8139c_plus():
    nic = Rig().nic
    assert nic.config_read(0, 4) == 0x813910EC
    assert nic.config_read(0x08, 1) == 0x20  # 8139cp wants >= 0x20, 8139too refuses it
    assert nic.config_read(0x08, 4) >> 8 == 0x020000
    assert nic.config_read(0x3D, 1) == 1
    assert nic.bars() == [(0, "io", 256), (1, "mem", 256)]


def test_eeprom_gives_the_mac_as_8139cp_reads_it():
    rig = Rig()
    # 8139cp probes the address width with an 8-bit read of word 0: a 93C46
    # has 6, so only the 6-bit read finds the 0x8129 signature.
    assert read_eeprom(rig, 0, 8) != 0x8129
    assert read_eeprom(rig, 0, 6) == 0x8129
    words = [read_eeprom(rig, 7 + i, 6) for i in range(3)]
    assert struct.pack("<HHH", *words) == MAC
    assert bytes(rig.nic.read(i, 1) for i in range(6)) == MAC


def test_reset_state_link_and_version():
    rig = Rig()
    assert rig.r32(R.TCR) & 0x7CC00000 == 0x74800000  # RTL-8139C+ in 8139too's table
    assert rig.r8(R.CR) & R.CR_BUFE
    assert rig.r16(R.BMSR) & R.BMSR_LINK
    assert rig.r16(R.BMSR) & R.BMSR_ANEG_DONE
    assert not rig.r8(R.MSR) & R.MSR_LINKB
    rig.w16(R.IMR, R.INT_LINKCHG)
    rig.net.link_up = False
    rig.nic.link_changed()
    assert not rig.r16(R.BMSR) & R.BMSR_LINK
    assert rig.r8(R.MSR) & R.MSR_LINKB
    assert rig.irq
    rig.w16(R.ISR, R.INT_LINKCHG)
    assert not rig.irq
    # BMCR reset and restart-autonegotiation bits clear themselves.
    rig.w16(R.BMCR, 0x8200 | 0x1000)
    assert rig.r16(R.BMCR) == 0x1000


def test_cplus_transmit_of_a_fragmented_frame():
    rig = Rig()
    rig.cp_open()
    frame = with_checksums(tcp_frame(b"x" * 100))
    rig.mem.write(BUFS + 0x8000, frame[:40])
    rig.mem.write(BUFS + 0x9000, frame[40:])
    rig.tx_desc(0, R.DESC_OWN | R.DESC_FS | 40, BUFS + 0x8000)
    rig.tx_desc(1, R.DESC_OWN | R.DESC_LS | (len(frame) - 40), BUFS + 0x9000)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)
    assert rig.net.sent == [frame]
    for i in range(2):
        assert not rig.desc(TX_RING, i)[0] & R.DESC_OWN
    assert rig.r16(R.ISR) & R.INT_TOK
    assert rig.irq
    rig.w16(R.ISR, 0xFFFF)
    assert not rig.irq


@pytest.mark.parametrize("offload", (0, 15))
def test_cplus_checksum_offload_fills_ip_and_tcp(offload):
    # Offered (stubdm/net.py's TX_* bits), the network fills the TCP sum.
    rig = Rig(tx_offload=offload)
    rig.cp_open()
    frame = tcp_frame(b"hello world" * 9)
    rig.mem.write(BUFS + 0x8000, frame)
    rig.tx_desc(0, R.DESC_OWN | R.DESC_FS | R.DESC_LS | R.TX_IPCS | R.TX_TCPCS | len(frame),
                BUFS + 0x8000)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)
    (out,) = rig.net.sent
    assert out == with_checksums(frame)
    assert ip_ok(out) and tcp_ok(out)
    assert rig.net.offloaded == ([(1, 0)] if offload else [])


@pytest.mark.parametrize("offload", (0, 15))
def test_cplus_large_send_cuts_mss_segments(offload):
    # Offered, the large send goes whole (netif GSO) and the wire is the same.
    rig = Rig(tx_offload=offload)
    rig.cp_open()
    payload = bytes(range(256)) * 12  # 3072 bytes
    frame = tcp_frame(payload, flags=0x19)  # PSH | FIN | ACK
    rig.mem.write(BUFS + 0x8000, frame)
    rig.tx_desc(0, R.DESC_OWN | R.DESC_FS | R.DESC_LS | R.TX_LGSEN | (1000 << 16) | len(frame),
                BUFS + 0x8000)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)
    segs = rig.net.sent
    assert [len(s) - 54 for s in segs] == [1000, 1000, 1000, 72]
    got = b""
    for i, s in enumerate(segs):
        assert ip_ok(s) and tcp_ok(s)
        assert struct.unpack(">H", s[16:18])[0] == len(s) - 14
        assert struct.unpack(">I", s[38:42])[0] == 1000 + 1000 * i
        flags = s[47]
        assert (flags & 0x09 == 0x09) if i == len(segs) - 1 else (flags & 0x09 == 0)
        got += s[54:]
    assert got == payload
    assert rig.net.offloaded == ([(4, 1000)] if offload else [])


def test_cplus_vlan_tag_insert_and_strip():
    rig = Rig()
    rig.cp_open(cpcmd=0x006B)  # RxVlanOn too
    frame = with_checksums(tcp_frame(b"v" * 50))
    rig.mem.write(BUFS + 0x8000, frame)
    tag = 0x0123
    swab = ((tag & 0xFF) << 8) | (tag >> 8)
    rig.tx_desc(0, R.DESC_OWN | R.DESC_FS | R.DESC_LS | len(frame), BUFS + 0x8000,
                R.TX_VLAN_TAG | swab)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)
    (out,) = rig.net.sent
    assert out == frame[:12] + b"\x81\x00\x01\x23" + frame[12:]
    rig.w32(R.RCR, R.RCR_APM | R.RCR_AB)
    rig.net.deliver(MAC + PEER + b"\x81\x00\x01\x23" + frame[12:])
    opts1, opts2, _ = rig.desc(RX_RING, 0)
    assert opts2 == R.RX_VLAN_TAGGED | swab
    assert rig.mem.read(BUFS, len(frame) - 12)[12:] == frame[12 : len(frame) - 12]


def test_cplus_receive_into_the_ring_with_checksum_status():
    rig = Rig()
    rig.cp_open()
    rig.w32(R.RCR, R.RCR_APM | R.RCR_AB)
    good = with_checksums(tcp_frame(b"a" * 200, dst=MAC, src=PEER))
    bad = bytearray(good)
    bad[60] ^= 0xFF
    rig.net.deliver(good)
    rig.net.deliver(bytes(bad))
    o0, _, _ = rig.desc(RX_RING, 0)
    o1, _, _ = rig.desc(RX_RING, 1)
    for o in (o0, o1):
        assert not o & R.DESC_OWN
        assert o & (R.DESC_FS | R.DESC_LS) == R.DESC_FS | R.DESC_LS
        assert (o & 0x1FFF) - 4 == len(good)  # 8139cp: len = (status & 0x1fff) - 4
        assert o & 0x30000 == R.RX_PID_TCP
    assert not o0 & R.RX_TCPF and o1 & R.RX_TCPF
    assert rig.mem.read(BUFS, len(good)) == good
    assert rig.mem.read(BUFS + 0x800, len(good)) == bytes(bad)
    assert rig.r16(R.ISR) & R.INT_ROK and rig.irq


def test_cplus_receive_filters_addresses():
    rig = Rig()
    rig.cp_open()
    rig.w32(R.RCR, R.RCR_APM)  # no broadcast, no multicast
    f = tcp_frame(b"z" * 10, src=PEER)
    rig.net.deliver(b"\xff" * 6 + f[6:])
    rig.net.deliver(bytes.fromhex("0000000000aa") + f[6:])
    assert rig.desc(RX_RING, 0)[0] & R.DESC_OWN  # nothing taken
    # A multicast group by 8139too's hash: the top 6 bits of the Ethernet CRC.
    group = bytes.fromhex("01005e000001")
    from stubdm.devices.netutil import ether_crc
    bit = ether_crc(group) >> 26
    rig.w32(R.RCR, R.RCR_APM | R.RCR_AM)
    rig.w8(R.MAR0 + (bit >> 3), 1 << (bit & 7))
    rig.net.deliver(group + f[6:])
    o, _, _ = rig.desc(RX_RING, 0)
    assert not o & R.DESC_OWN and o & R.RX_MCAST
    rig.w32(R.RCR, R.RCR_AAP)  # promiscuous
    rig.net.deliver(bytes.fromhex("0000000000aa") + f[6:])
    assert not rig.desc(RX_RING, 1)[0] & R.DESC_OWN


def test_cplus_receive_back_pressure_until_the_driver_refills():
    rig = Rig()
    rig.cp_open(rx_bufs=1)
    rig.w32(R.RCR, R.RCR_APM)
    f1 = tcp_frame(b"1" * 64, dst=MAC)
    f2 = tcp_frame(b"2" * 64, dst=MAC)
    rig.net.deliver(f1)
    rig.net.deliver(f2)  # no descriptor: kept by the network, not dropped
    assert rig.net.backlog == [f2]
    assert rig.r16(R.ISR) & R.INT_RXOVW  # "Rx descriptor unavailable"
    assert rig.mem.read(BUFS, len(f1)) == f1
    # The driver hands the buffer back and acks: the frame comes.
    rig.mem.write(RX_RING, struct.pack("<I", R.DESC_OWN | R.DESC_EOR | 1536))
    rig.w16(R.ISR, 0xFFFF)
    assert rig.net.backlog == []
    assert rig.mem.read(BUFS, len(f2)) == f2


class Levels:
    """The NIC's INTx line, every change recorded."""

    def __init__(self, nic):
        self.seen = []
        inner = nic.set_irq

        def set_irq(level):
            if not self.seen or self.seen[-1] != bool(level):
                self.seen.append(bool(level))
            inner(level)

        nic.set_irq = set_irq

    def raised(self):
        return self.seen.count(True)


def test_cplus_receive_burst_raises_its_interrupt_once():
    rig = Rig()
    rig.cp_open(rx_bufs=4)
    rig.w32(R.RCR, R.RCR_APM)
    # The driver has given the device two of its four descriptors so far.
    for i in (2, 3):
        rig.mem.write(RX_RING + 16 * i, struct.pack("<I", 1536 | (R.DESC_EOR if i == 3 else 0)))
    line = Levels(rig.nic)
    frames = [tcp_frame(bytes([i]) * (100 + i), dst=MAC) for i in range(3)]
    # Mid-burst (netfront has not said the burst ended): the frames are in their
    # buffers and their descriptors handed back; the interrupt waits for the end.
    assert rig.nic.receive(memoryview(frames[0])) and rig.nic.receive(memoryview(frames[1]))
    assert rig.mem.read(BUFS + 0x800, len(frames[1])) == frames[1]
    for i in (0, 1):
        o, _, buf = rig.desc(RX_RING, i)
        assert not o & R.DESC_OWN and (o & 0x1FFF) - 4 == len(frames[i])
        assert buf == BUFS + 0x800 * i  # the buffer address the driver gave stays
    assert line.raised() == 0
    rig.net.on_rx_done()
    assert line.raised() == 1 and rig.irq
    # The third finds descriptor 2 the driver's: held by the network, not lost,
    # until the driver gives it and acks (a register access: it is re-read).
    rig.net.deliver(frames[2])
    assert rig.net.backlog == [frames[2]]
    rig.mem.write(RX_RING + 32, struct.pack("<I", R.DESC_OWN | 1536))
    rig.w16(R.ISR, 0xFFFF)
    assert rig.net.backlog == []
    assert rig.mem.read(BUFS + 0x1000, len(frames[2])) == frames[2]
    assert not rig.desc(RX_RING, 2)[0] & R.DESC_OWN and rig.irq


def test_cplus_receive_held_burst_ends_at_the_guests_next_register_access():
    rig = Rig()
    rig.cp_open()
    rig.w32(R.RCR, R.RCR_APM)
    f = tcp_frame(b"h" * 64, dst=MAC)
    assert rig.nic.receive(memoryview(f))  # a burst whose end has not come yet
    assert not rig.irq
    # Any register access (a poll of ISR) ends the burst first: ROK is there.
    assert rig.r16(R.ISR) & R.INT_ROK and rig.irq
    assert not rig.desc(RX_RING, 0)[0] & R.DESC_OWN
    # A save in the middle of a burst keeps its interrupt.
    rig.w16(R.ISR, 0xFFFF)
    assert not rig.irq
    assert rig.nic.receive(memoryview(f))
    saved = rig.nic.state()
    assert rig.irq and saved["nic"][0] & R.INT_ROK


def test_cplus_receive_on_a_net_without_bursts_finishes_each_frame():
    rig = Rig()
    rig.net = MemoryNet(MAC)
    rig.net.rx_batches = False  # a net that never says where a burst ends
    rig.nic = R.Rtl8139(rig.net, rig.mem)
    rig.cp_open()
    rig.w32(R.RCR, R.RCR_APM)
    assert rig.net.on_rx_done is None
    assert rig.nic.receive(memoryview(tcp_frame(b"1" * 64, dst=MAC)))
    assert not rig.desc(RX_RING, 0)[0] & R.DESC_OWN and rig.irq


def test_cplus_prefetched_descriptors_dropped_when_the_driver_stops_the_receiver():
    rig = Rig()
    rig.cp_open()
    rig.w32(R.RCR, R.RCR_APM)
    f = tcp_frame(b"p" * 64, dst=MAC)
    rig.net.deliver(f)  # descriptors 1-3 are read ahead with 0
    # With C+ receive off, the driver points descriptor 1 at another buffer.
    rig.w16(R.CPCR, 0x0029)
    rig.mem.write(RX_RING + 16, struct.pack("<IIQ", R.DESC_OWN | 1536, 0, BUFS + 0x4000))
    rig.w16(R.CPCR, 0x002B)
    rig.net.deliver(f)
    assert rig.mem.read(BUFS + 0x4000, len(f)) == f
    assert rig.desc(RX_RING, 1)[2] == BUFS + 0x4000
    # A new ring (RDSAR) starts at its first descriptor, read anew.
    rig.mem.write(RX_RING + 0x400, struct.pack("<IIQ", R.DESC_OWN | R.DESC_EOR | 1536, 0,
                                               BUFS + 0x8000))
    rig.w32(R.RDSAR, RX_RING + 0x400)
    rig.net.deliver(f)
    assert rig.mem.read(BUFS + 0x8000, len(f)) == f


def test_cplus_ring_that_the_guest_never_fills():
    rig = Rig()
    rig.cp_open(rx_bufs=0)
    rig.w32(R.RCR, R.RCR_APM)
    for i in range(50):
        rig.net.deliver(tcp_frame(bytes([i]) * 64, dst=MAC))
    assert len(rig.net.backlog) == 50
    for _ in range(20):
        rig.w16(R.ISR, 0xFFFF)  # acks only re-offer, never lose or spin
    assert len(rig.net.backlog) == 50


def test_cplus_bad_descriptors_are_survived():
    rig = Rig()
    rig.cp_open()
    # A zero-length descriptor, a buffer outside RAM, a fragment with no start.
    rig.tx_desc(0, R.DESC_OWN | R.DESC_FS | R.DESC_LS | 0, BUFS)
    rig.tx_desc(1, R.DESC_OWN | R.DESC_FS | R.DESC_LS | 100, 0xFFFF_0000_0000)
    rig.tx_desc(2, R.DESC_OWN | R.DESC_LS | 100, BUFS)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)
    assert rig.net.sent == []
    for i in range(3):
        assert not rig.desc(TX_RING, i)[0] & R.DESC_OWN
    assert rig.r16(R.ISR) & R.INT_TER
    assert log.count("guest_error") >= 2
    # The ring itself outside RAM.
    rig.w32(R.TSAD0 + 4, 0x10)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)
    assert rig.net.sent == []


def test_cplus_ring_with_no_end_is_walked_once_per_poll():
    rig = Rig()
    rig.cp_open()
    frame = with_checksums(tcp_frame(b"e" * 20))
    rig.mem.write(BUFS, frame)
    # Every one of the 1024 possible descriptors is the device's and none
    # carries the end-of-ring bit.
    rig.mem.write(TX_RING, struct.pack("<IIQ", R.DESC_OWN | R.DESC_FS | R.DESC_LS | len(frame),
                                       0, BUFS) * R.CP_RING_MAX)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)
    assert len(rig.net.sent) == R.CP_RING_MAX
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)  # all handed back: nothing more
    assert len(rig.net.sent) == R.CP_RING_MAX


def test_cplus_transmit_waits_for_network_room():
    rig = Rig(tx_room=1)
    rig.cp_open()
    frame = with_checksums(tcp_frame(b"q" * 20))
    rig.mem.write(BUFS, frame)
    for i in range(3):
        rig.tx_desc(i, R.DESC_OWN | R.DESC_FS | R.DESC_LS | len(frame), BUFS)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)
    assert len(rig.net.sent) == 1
    assert rig.desc(TX_RING, 2)[0] & R.DESC_OWN  # stalled, not dropped
    rig.net.room(5)
    assert len(rig.net.sent) == 3
    assert not rig.desc(TX_RING, 2)[0] & R.DESC_OWN


def test_tally_counters_dump():
    rig = Rig()
    rig.cp_open()
    frame = with_checksums(tcp_frame(b"t" * 20))
    rig.mem.write(BUFS, frame)
    rig.tx_desc(0, R.DESC_OWN | R.DESC_FS | R.DESC_LS | len(frame), BUFS)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)
    rig.w32(R.TSD0 + 4, 0)
    rig.w32(R.TSD0, 0x30000 | R.TALLY_DUMP)
    assert not rig.r32(R.TSD0) & R.TALLY_DUMP  # 8139cp polls for this
    assert struct.unpack("<Q", rig.mem.read(0x30000, 8))[0] == 1  # TxOk


def classic_open(rig, rcr=R.RCR_APM | R.RCR_AB | R.RCR_WRAP):
    """8139too's rtl8139_hw_start: reset, enable, RCR/TCR, RBSTART, IMR."""
    rig.w8(R.CR, R.CR_RST)
    rig.w8(R.CR, R.CR_RE | R.CR_TE)
    rig.w32(R.RCR, rcr | (1 << 12))  # 32 KiB ring
    rig.w32(R.RBSTART, BUFS)
    rig.w16(R.IMR, 0xE07F)


def test_classic_receive_ring_and_capr_handshake():
    rig = Rig()
    classic_open(rig)
    frames = [tcp_frame(bytes([i]) * (60 + 7 * i), dst=MAC) for i in range(5)]
    for f in frames:
        rig.net.deliver(f)
    assert not rig.r8(R.CR) & R.CR_BUFE and rig.irq
    cur = 0
    for f in frames:
        status, size = struct.unpack("<HH", rig.mem.read(BUFS + cur, 4))
        assert status & R.RX_ROK and status & R.RX_PAM
        assert size - 4 == len(f)
        assert rig.mem.read(BUFS + cur + 4, len(f)) == f
        cur = (cur + size + 4 + 3) & ~3
        rig.w16(R.CAPR, (cur - 16) & 0xFFFF)  # as 8139too does
    assert rig.r8(R.CR) & R.CR_BUFE
    assert rig.r16(R.CBR) == cur


def test_classic_receive_back_pressure_when_the_ring_is_full():
    rig = Rig()
    classic_open(rig)
    f = tcp_frame(b"f" * 1400, dst=MAC)
    for _ in range(30):
        rig.net.deliver(f)
    taken = 30 - len(rig.net.backlog)
    assert 20 <= taken < 24  # 32 KiB / ~1.45 KiB records
    rig.w16(R.CAPR, (((1400 + 54 + 8 + 3) & ~3) * 5 - 16) & 0xFFFF)  # five read
    assert 30 - len(rig.net.backlog) == taken + 5


def test_classic_transmit_slots():
    rig = Rig()
    classic_open(rig)
    frames = [with_checksums(tcp_frame(bytes([i]) * 50)) for i in range(6)]
    for i, f in enumerate(frames):
        slot = i % 4
        rig.mem.write(BUFS + 0x10000 + 0x800 * slot, f)
        rig.w32(R.TSAD0 + 4 * slot, BUFS + 0x10000 + 0x800 * slot)
        rig.w32(R.TSD0 + 4 * slot, len(f))  # OWN clear starts it
        tsd = rig.r32(R.TSD0 + 4 * slot)
        assert tsd & (R.TSD_OWN | R.TSD_TOK) == R.TSD_OWN | R.TSD_TOK
        assert rig.r16(R.TSAD) & (1 << (12 + slot))
    assert rig.net.sent == frames
    assert rig.r16(R.ISR) & R.INT_TOK


def test_classic_bad_input():
    rig = Rig()
    classic_open(rig)
    rig.w32(R.TSAD0, BUFS)
    rig.w32(R.TSD0, 0x1FFF)  # over 1792 bytes
    assert rig.r32(R.TSD0) & 0x40000000  # TABT
    rig.w32(R.TSAD0 + 4, 0xFFFFF000)  # outside RAM
    rig.w32(R.TSD0 + 4, 100)
    assert rig.net.sent == []
    assert rig.r16(R.ISR) & R.INT_TER
    rig.w32(R.RBSTART, 0xFFFFF000)
    rig.net.deliver(tcp_frame(b"x", dst=MAC))
    assert rig.net.backlog == [] and rig.r32(R.MPC) == 1  # missed, not a crash
    assert log.count("guest_error") >= 3


def test_moved_bars_reach_the_registers():
    from stubdm.devices.pci_serial import PciSerial  # noqa: F401 (the same bus)
    from stubdm.machine import Machine
    from host_sim.fuzz import FakePlatform

    mem = FakeGuestMemory(4 << 20)
    net = MemoryNet(MAC)
    m = Machine(FakePlatform(), [], 4 << 20, False, (), nics=[("rtl8139", 0, net, None)],
                nic_mem=mem)
    (nic,) = m.nics
    assert nic.devfn == 0x20  # 00:04.0, the first free slot
    nic.config_write(0x10, 4, 0xC100)
    nic.config_write(0x14, 4, 0xF0001000)
    nic.config_write(0x04, 2, 3)
    assert m.pio.read(0xC100, 4) == int.from_bytes(MAC[:4], "little")
    assert m.mmio.read(0xF0001004, 2) == int.from_bytes(MAC[4:], "little")
    nic.config_write(0x14, 4, 0xF0002000)
    assert m.mmio.read(0xF0002000, 1) == MAC[0]
    assert m.mmio.find(0xF0001000) is None


def test_config_space_is_the_pci_functions_own():
    nic = Rig().nic
    nic.config_write(0x00, 4, 0)  # read-only identity
    nic.config_write(0x3C, 1, 0x0A)
    nic.write(R.IMR, 2, 0xFFFF)  # registers don't leak into config space
    assert nic.config_read(0, 4) == 0x813910EC
    assert nic.config_read(0x3C, 1) == 0x0A
    assert nic.config_read(0x10, 4) == 1  # I/O BAR, unassigned


def test_a_poll_gathers_a_bounded_amount():
    rig = Rig()
    rig.cp_open()
    big = 0xFFFF
    rig.mem.write(TX_RING, struct.pack("<IIQ", R.DESC_OWN | R.DESC_FS | R.DESC_LS | big,
                                       0, BUFS) * R.CP_RING_MAX)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)  # 64 KiB frames: over 0x1FFF without large send
    done = [i for i in range(R.CP_RING_MAX) if not rig.desc(TX_RING, i)[0] & R.DESC_OWN]
    assert len(done) <= R.TX_BYTE_BUDGET // big + 1
    for _ in range(R.CP_RING_MAX):
        rig.r16(R.ISR)
    assert not any(rig.desc(TX_RING, i)[0] & R.DESC_OWN for i in range(R.CP_RING_MAX))
    assert rig.net.sent == []  # each too long without large send: dropped


def test_frames_waiting_for_the_network_survive_save_and_restore():
    rig = Rig(tx_room=1)
    rig.cp_open()
    frame = with_checksums(tcp_frame(b"s" * 20))
    rig.mem.write(BUFS, frame)
    for i in range(3):
        rig.tx_desc(i, R.DESC_OWN | R.DESC_FS | R.DESC_LS | len(frame), BUFS)
    rig.w8(R.TPPOLL, R.TPPOLL_NPQ)
    assert len(rig.net.sent) == 1
    saved = rig.nic.state()
    back = Rig(tx_room=0)
    for start, end in rig.mem.ranges:  # the guest's RAM, descriptors and buffers
        back.mem.write(start, rig.mem.read(start, end - start))
    back.nic.load_state(saved)
    back.net.room(5)
    assert len(back.net.sent) == 2  # what waited, then the rest of the ring
    assert not back.desc(TX_RING, 2)[0] & R.DESC_OWN
    with pytest.raises(ValueError):
        Rig().nic.load_state(dict(saved, tx_done=[7]))


def test_l4_sum_matches_the_reference_with_and_without_ip_options_and_on_ipv6():
    # netutil.l4_sum sums an option-less IPv4 header's addresses and the segment
    # in one piece; with options and on IPv6 it sums the pseudo-header apart.
    from stubdm.devices import netutil

    payload = bytes(range(251)) * 3  # odd length
    seg = struct.pack(">HHIIBBHHH", 1, 2, 3, 4, 5 << 4, 0x18, 100, 0, 0) + payload
    for opts in (b"", b"\x01\x01\x01\x00"):
        ihl = (20 + len(opts)) // 4
        ip = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(seg), 7, 0, 64, 6, 0,
                         bytes([10, 0, 0, 1]), bytes([192, 168, 9, 2])) + opts
        frame = MAC + PEER + b"\x08\x00" + ip + seg
        h = netutil.parse(frame)
        pseudo = ip[12:20] + struct.pack(">BBH", 0, 6, len(seg))
        assert netutil.l4_sum(frame, h) == rfc1071(pseudo + seg)
    src, dst = bytes(range(16)), bytes(range(16, 32))
    ip6 = struct.pack(">IHBB", 6 << 28, len(seg), 6, 64) + src + dst
    frame = MAC + PEER + b"\x86\xdd" + ip6 + seg
    pseudo = src + dst + struct.pack(">IxxxB", len(seg), 6)
    assert netutil.l4_sum(frame, netutil.parse(frame)) == rfc1071(pseudo + seg)
