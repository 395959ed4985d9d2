# Tests of stubdm.devices.e1000: the 82540EM as Linux's e1000 driver drives
# it (8254x SDM: 13 registers, 3.2 receive, 3.3 transmit, 3.5 TSO, 5 EEPROM,
# 8 PHY), over MemoryNet. Checksums are checked with an independent sum.
import struct

import pytest

from host_sim.fuzz import FakeGuestMemory
from stubdm import log
from stubdm.devices import e1000 as E
from stubdm.net import TX_CSUM, TX_CSUM6, TX_TSO4, TX_TSO6, MemoryNet
from tests.devices.test_rtl8139 import (MAC, PEER, ip_ok, rfc1071, tcp_frame, tcp_ok,
                                        with_checksums)

TX_RING = 0x10000
RX_RING = 0x11000
BUFS = 0x20000
ALL_OFFLOADS = TX_CSUM | TX_CSUM6 | TX_TSO4 | TX_TSO6


@pytest.fixture(autouse=True)
def quiet():
    old = log.verbose
    log.verbose = 0
    log.reset_counts()
    yield
    log.verbose = old


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


class Rig:
    def __init__(self, tx_room=1 << 30, clock=None, tx_offload=0):
        self.mem = FakeGuestMemory(4 << 20)
        self.net = MemoryNet(MAC, tx_room=tx_room, tx_offload=tx_offload)
        self.nic = E.E1000(self.net, self.mem, clock=clock)

    def r(self, off):
        return self.nic.read(off, 4)

    def w(self, off, v):
        self.nic.write(off, 4, v)

    @property
    def irq(self):
        return self.nic.intx_asserted

    def up(self, rx_descs=8, rctl=E.RCTL_EN | E.RCTL_BAM, rx_given=None):
        """e1000_configure_tx/rx and e1000_irq_enable, as Linux does."""
        self.w(E.CTRL, E.CTRL_RST)
        self.w(E.IMC, 0xFFFFFFFF)
        self.r(E.ICR)
        self.w(E.TDBAL, TX_RING)
        self.w(E.TDBAH, 0)
        self.w(E.TDLEN, 16 * 16)
        self.w(E.TDH, 0)
        self.w(E.TDT, 0)
        self.w(E.TCTL, E.TCTL_EN | 0x8 | (0x10 << 4) | (0x40 << 12))
        for i in range(rx_descs):
            self.mem.write(RX_RING + 16 * i, struct.pack("<QQ", BUFS + 0x800 * i, 0))
        self.w(E.RDBAL, RX_RING)
        self.w(E.RDBAH, 0)
        self.w(E.RDLEN, 16 * rx_descs if rx_descs else 128)
        self.w(E.RDH, 0)
        self.w(E.RCTL, rctl)
        # The driver gives all but one descriptor (RDT one behind RDH).
        self.w(E.RDT, (rx_descs - 1) if rx_given is None else rx_given)
        self.w(E.IMS, E.ICR_RXT0 | E.ICR_TXDW | E.ICR_RXDMT0 | E.ICR_RXSEQ | E.ICR_LSC)
        self.tail = 0

    def post(self, descs):
        """Put TX descriptors at the tail and move TDT past them."""
        for d in descs:
            self.mem.write(TX_RING + 16 * self.tail, d)
            self.tail = (self.tail + 1) % 16
        self.w(E.TDT, self.tail)

    def tx_status(self, i):
        return self.mem.read(TX_RING + 16 * i + 12, 1)[0]

    def rx_desc(self, i):
        return struct.unpack("<QHHBBH", self.mem.read(RX_RING + 16 * i, 16))


def legacy(buf, n, cmd=E.TXD_EOP | E.TXD_RS, cso=0, css=0):
    return struct.pack("<QHBBBBH", buf, n, cso, cmd, 0, css, 0)


def context(ipcss, ipcso, ipcse, tucss, tucso, tucse, paylen=0, tucmd=0, hdrlen=0, mss=0):
    lower = paylen | ((E.TXD_DEXT | tucmd) << 24)
    return struct.pack("<BBHBBHII", ipcss, ipcso, ipcse, tucss, tucso, tucse, lower,
                       (hdrlen << 8) | (mss << 16))


def data(buf, n, dcmd, popts=0):
    lower = n | (1 << 20) | ((E.TXD_DEXT | dcmd) << 24)
    return struct.pack("<QII", buf, lower, popts << 8)


def eeprom_read_microwire(rig, addr):
    """e1000_read_eeprom for a Microwire part: REQ/GNT, CS, opcode 110 and
    six address bits MSB first on rising SK, 16 bits in, standby."""
    eecd = rig.r(E.EECD) | E.EECD_REQ
    rig.w(E.EECD, eecd)
    assert rig.r(E.EECD) & E.EECD_GNT
    eecd &= ~(E.EECD_DI | E.EECD_SK)
    rig.w(E.EECD, eecd)
    eecd |= E.EECD_CS
    rig.w(E.EECD, eecd)

    def out(value, bits):
        nonlocal eecd
        for i in range(bits - 1, -1, -1):
            eecd &= ~E.EECD_DI
            if value & (1 << i):
                eecd |= E.EECD_DI
            rig.w(E.EECD, eecd)
            rig.w(E.EECD, eecd | E.EECD_SK)
            rig.w(E.EECD, eecd)

    out(0x6, 3)
    out(addr, 6)
    v = 0
    eecd &= ~(E.EECD_DO | E.EECD_DI)
    for _ in range(16):
        eecd |= E.EECD_SK
        rig.w(E.EECD, eecd)
        eecd = rig.r(E.EECD) & ~E.EECD_DI  # DO read back and written again, as Linux does
        v = (v << 1) | (1 if eecd & E.EECD_DO else 0)
        eecd &= ~E.EECD_SK
        rig.w(E.EECD, eecd)
    rig.w(E.EECD, eecd & ~(E.EECD_CS | E.EECD_SK | E.EECD_REQ))
    return v


def mdic(rig, op, reg, value=0, phy=1):
    rig.w(E.MDIC, op | (phy << 21) | (reg << 16) | value)
    v = rig.r(E.MDIC)
    assert v & E.MDIC_READY
    return v


def test_pci_identity_and_bars():
    nic = Rig().nic
    assert nic.config_read(0, 4) == 0x100E8086
    assert nic.config_read(0x08, 4) >> 8 == 0x020000
    assert nic.bars() == [(0, "mem", 0x20000), (1, "io", 0x40)]


def test_eeprom_bit_banged_and_eerd_agree_and_check():
    rig = Rig()
    words = [eeprom_read_microwire(rig, a) for a in range(64)]
    assert sum(words) & 0xFFFF == 0xBABA  # e1000_validate_eeprom_checksum
    assert struct.pack("<HHH", *words[:3]) == MAC
    for a in (0, 1, 2, 0x0E, 0x3F):
        rig.w(E.EERD, (a << 8) | E.EERD_START)
        v = rig.r(E.EERD)
        assert v & E.EERD_DONE and v >> 16 == words[a]


def test_receive_address_from_the_eeprom_at_reset():
    rig = Rig()
    ral, rah = rig.r(E.RA), rig.r(E.RA + 4)
    assert struct.pack("<IH", ral, rah & 0xFFFF) == MAC and rah & 0x80000000


def test_phy_over_mdic():
    rig = Rig()
    assert mdic(rig, E.MDIC_OP_READ, E.PHY_ID1) & 0xFFFF == 0x0141
    assert mdic(rig, E.MDIC_OP_READ, E.PHY_ID2) & 0xFFFF == 0x0C20
    st = mdic(rig, E.MDIC_OP_READ, E.PHY_STATUS)
    assert st & E.MII_SR_LINK and st & E.MII_SR_AN_DONE and not st & E.MDIC_ERROR
    assert mdic(rig, E.MDIC_OP_READ, E.PHY_ID1, phy=2) & E.MDIC_ERROR  # no PHY there
    mdic(rig, E.MDIC_OP_WRITE, E.PHY_AUTONEG_ADV, 0x01E1)
    assert mdic(rig, E.MDIC_OP_READ, E.PHY_AUTONEG_ADV) & 0xFFFF == 0x01E1
    rig.w(E.IMS, E.ICR_MDAC)
    mdic(rig, E.MDIC_OP_READ | E.MDIC_INT_EN, E.PHY_ID1)
    assert rig.irq


def test_link_status_and_lsc():
    rig = Rig()
    rig.up()
    assert rig.r(E.STATUS) & (E.STATUS_LU | E.STATUS_FD) == E.STATUS_LU | E.STATUS_FD
    rig.net.link_up = False
    rig.nic.link_changed()
    assert rig.irq and rig.r(E.ICR) & E.ICR_LSC
    assert not rig.irq  # the read cleared it
    assert not rig.r(E.STATUS) & E.STATUS_LU
    assert not mdic(rig, E.MDIC_OP_READ, E.PHY_STATUS) & E.MII_SR_LINK
    rig.net.link_up = True
    rig.nic.link_changed()
    assert rig.r(E.STATUS) & E.STATUS_LU and rig.irq


def test_interrupt_registers():
    rig = Rig()
    rig.w(E.ICS, E.ICR_TXDW | E.ICR_RXT0)
    assert not rig.irq  # masked
    rig.w(E.IMS, E.ICR_RXT0)
    assert rig.irq and rig.r(E.IMS) == E.ICR_RXT0
    rig.w(E.IMC, E.ICR_RXT0)
    assert not rig.irq
    rig.w(E.IMS, E.ICR_TXDW)
    rig.w(E.ICR, E.ICR_TXDW)  # write 1 to clear
    assert not rig.irq
    assert rig.r(E.ICR) == E.ICR_RXT0
    assert rig.r(E.ICR) == 0


def test_interrupt_throttling():
    clock = Clock()
    rig = Rig(clock=clock)
    rig.w(E.ITR, 1000)  # 256 us between interrupts
    rig.w(E.IMS, E.ICR_TXDW)
    clock.now = 10000
    rig.w(E.ICS, E.ICR_TXDW)
    assert rig.irq
    rig.r(E.ICR)
    clock.now += 100
    rig.w(E.ICS, E.ICR_TXDW)
    assert not rig.irq and rig.nic.timer_deadline() == 10256
    clock.now = 10255
    rig.nic.run_timers(clock.now)
    assert not rig.irq
    clock.now = 10256
    rig.nic.run_timers(clock.now)
    assert rig.irq and rig.nic.timer_deadline() is None


def test_legacy_transmit():
    rig = Rig()
    rig.up()
    frames = [with_checksums(tcp_frame(bytes([i]) * (60 + i))) for i in range(3)]
    for i, f in enumerate(frames):
        rig.mem.write(BUFS + 0x8000 + 0x800 * i, f)
    rig.post([legacy(BUFS + 0x8000 + 0x800 * i, len(f)) for i, f in enumerate(frames)])
    assert rig.net.sent == frames
    assert rig.r(E.TDH) == 3
    assert all(rig.tx_status(i) & E.TXD_STAT_DD for i in range(3))
    icr = rig.r(E.ICR)
    assert icr & E.ICR_TXDW and icr & E.ICR_TXQE


@pytest.mark.parametrize("offload", (0, ALL_OFFLOADS))
def test_context_descriptor_checksum_offload(offload):
    rig = Rig(tx_offload=offload)
    rig.up()
    f = bytearray(tcp_frame(b"payload!" * 20))
    # e1000_tx_csum: the stack leaves the pseudo-header sum in the TCP field.
    total = len(f) - 34
    ph = rfc1071(bytes(f[26:34]) + struct.pack(">BBH", 0, 6, total))
    f[50:52] = struct.pack(">H", ph)
    rig.mem.write(BUFS + 0x8000, bytes(f[:30]))
    rig.mem.write(BUFS + 0x9000, bytes(f[30:]))
    rig.post([context(14, 24, 33, 34, 50, 0, tucmd=E.TUCMD_IP | E.TUCMD_TCP),
              data(BUFS + 0x8000, 30, 0, E.POPTS_TXSM | E.POPTS_IXSM),
              data(BUFS + 0x9000, len(f) - 30, E.TXD_EOP | E.TXD_RS,
                   E.POPTS_TXSM | E.POPTS_IXSM)])
    (out,) = rig.net.sent
    assert ip_ok(out) and tcp_ok(out)
    assert out == with_checksums(bytes(f))
    # Offered, the network fills the TCP sum (netif's csum_blank).
    assert rig.net.offloaded == ([(TX_CSUM, 0)] if offload else [])


@pytest.mark.parametrize("offload", (0, ALL_OFFLOADS))
def test_checksum_offload_as_e1000_tx_csum_sets_it(offload):
    # Linux's e1000_tx_csum: IP fields 0 (no IXSM), TUCSS the TCP header,
    # TUCSO its checksum, TUCSE 0; the IPv4 header's sum is the stack's.
    rig = Rig(tx_offload=offload)
    rig.up()
    f = bytearray(with_checksums(tcp_frame(b"ack")))
    total = len(f) - 34
    f[50:52] = struct.pack(">H", rfc1071(bytes(f[26:34]) + struct.pack(">BBH", 0, 6, total)))
    rig.mem.write(BUFS + 0x8000, bytes(f))
    rig.post([context(0, 0, 0, 34, 50, 0, tucmd=E.TUCMD_IP | E.TUCMD_TCP),
              data(BUFS + 0x8000, len(f), E.TXD_EOP | E.TXD_RS, E.POPTS_TXSM)])
    (out,) = rig.net.sent
    assert ip_ok(out) and tcp_ok(out)
    assert rig.net.offloaded == ([(TX_CSUM, 0)] if offload else [])


def post_tso(rig, payload, mss=1448, tucse=0, ipcse=33):
    """e1000_tso's descriptors for one TCP/IPv4 packet of payload (IP length 0
    and checksum 0, the TCP field the pseudo-header sum without a length)."""
    f = bytearray(tcp_frame(payload, flags=0x19))
    f[16:18] = b"\0\0"
    f[50:52] = struct.pack(">H", rfc1071(bytes(f[26:34]) + struct.pack(">BBH", 0, 6, 0)))
    rig.mem.write(BUFS + 0x8000, bytes(f[:54]))
    rig.mem.write(BUFS + 0x9000, bytes(f[54:]))
    rig.post([context(14, 24, ipcse, 34, 50, tucse, paylen=len(payload),
                      tucmd=E.TUCMD_IP | E.TUCMD_TCP | E.TXD_TSE, hdrlen=54, mss=mss),
              data(BUFS + 0x8000, 54, E.TXD_TSE, E.POPTS_TXSM | E.POPTS_IXSM),
              data(BUFS + 0x9000, len(payload), E.TXD_TSE | E.TXD_EOP | E.TXD_RS,
                   E.POPTS_TXSM | E.POPTS_IXSM)])


@pytest.mark.parametrize("offload", (0, ALL_OFFLOADS))
def test_tso_segments(offload):
    # With the network offering TSO the packet goes to it whole (netif's GSO
    # extra) and it cuts the segments: the wire carries the same frames.
    rig = Rig(tx_offload=offload)
    rig.up()
    payload = bytes(range(256)) * 16  # 4096 bytes
    f = bytearray(tcp_frame(payload, flags=0x19))
    # e1000_tso: IP length 0 and checksum 0, TCP field the pseudo-header sum
    # without a length.
    f[16:18] = b"\0\0"
    f[50:52] = struct.pack(">H", rfc1071(bytes(f[26:34]) + struct.pack(">BBH", 0, 6, 0)))
    rig.mem.write(BUFS + 0x8000, bytes(f[:54]))
    rig.mem.write(BUFS + 0x9000, bytes(f[54:]))
    mss = 1448
    rig.post([context(14, 24, 33, 34, 50, 0, paylen=len(payload),
                      tucmd=E.TUCMD_IP | E.TUCMD_TCP | E.TXD_TSE, hdrlen=54, mss=mss),
              data(BUFS + 0x8000, 54, E.TXD_TSE, E.POPTS_TXSM | E.POPTS_IXSM),
              data(BUFS + 0x9000, len(payload), E.TXD_TSE | E.TXD_EOP | E.TXD_RS,
                   E.POPTS_TXSM | E.POPTS_IXSM)])
    segs = rig.net.sent
    assert [len(s) - 54 for s in segs] == [1448, 1448, 1200]
    got = b""
    for i, s in enumerate(segs):
        assert ip_ok(s) and tcp_ok(s), i
        assert struct.unpack(">H", s[16:18])[0] == len(s) - 14
        assert struct.unpack(">H", s[18:20])[0] == 0x1234 + i  # IP ID counts up
        assert struct.unpack(">I", s[38:42])[0] == 1000 + mss * i
        assert (s[47] & 0x09 == 0x09) if i == 2 else (s[47] & 0x09 == 0)
        got += s[54:]
    assert got == payload
    assert rig.net.offloaded == ([(TX_TSO4, mss)] if offload else [])
    assert rig.r(E.STATS + 0x80) == 3  # GPTC: the segments, as the hardware counts them


def test_tso_done_here_when_the_context_asks_for_other_than_the_network_does():
    # TUCSE short of the end: the hardware sums only part; netback would sum all.
    rig = Rig(tx_offload=ALL_OFFLOADS)
    rig.up()
    post_tso(rig, bytes(range(256)) * 8, tucse=100)
    assert rig.net.offloaded == [] and len(rig.net.sent) == 2
    rig2 = Rig(tx_offload=TX_CSUM)  # checksums but no GSO offered
    rig2.up()
    post_tso(rig2, bytes(range(256)) * 8)
    assert rig2.net.offloaded == [] and len(rig2.net.sent) == 2
    assert all(ip_ok(s) and tcp_ok(s) for s in rig2.net.sent)


def test_offloaded_tso_packet_waiting_for_the_network_is_saved_finished():
    rig = Rig(tx_room=0, tx_offload=ALL_OFFLOADS)
    rig.up()
    payload = bytes(range(256)) * 16
    post_tso(rig, payload)
    assert rig.net.sent == [] and rig.tx_status(2) & E.TXD_STAT_DD
    saved = rig.nic.state()
    back = Rig()  # a network without offloads
    back.nic.load_state(saved)
    back.net.room(3)
    assert [len(s) - 54 for s in back.net.sent] == [1448, 1448, 1200]
    assert all(ip_ok(s) and tcp_ok(s) for s in back.net.sent)
    assert b"".join(s[54:] for s in back.net.sent) == payload


def test_vlan_insert_on_transmit():
    rig = Rig()
    rig.up()
    rig.w(E.CTRL, rig.r(E.CTRL) | E.CTRL_VME)
    f = with_checksums(tcp_frame(b"v" * 40))
    rig.mem.write(BUFS + 0x8000, f)
    d = bytearray(legacy(BUFS + 0x8000, len(f), E.TXD_EOP | E.TXD_RS | E.TXD_VLE))
    d[14:16] = struct.pack("<H", 0x0123)
    rig.post([bytes(d)])
    assert rig.net.sent == [f[:12] + b"\x81\x00\x01\x23" + f[12:]]


def test_receive_into_the_ring():
    rig = Rig()
    rig.up()
    good = with_checksums(tcp_frame(b"r" * 300, dst=MAC, src=PEER))
    bad = bytearray(good)
    bad[100] ^= 1
    rig.net.deliver(good)
    rig.net.deliver(bytes(bad))
    for i, f in enumerate((good, bytes(bad))):
        buf, length, _cs, status, errors, _sp = rig.rx_desc(i)
        assert status & (E.RXD_DD | E.RXD_EOP) == E.RXD_DD | E.RXD_EOP
        assert length - 4 == len(f)  # Linux's e1000 drops the 4-byte CRC
        assert rig.mem.read(buf, len(f)) == f
        assert status & E.RXD_TCPCS and status & E.RXD_IPCS
        assert bool(errors & E.RXE_TCPE) == (i == 1)
    assert rig.r(E.RDH) == 2
    assert rig.irq and rig.r(E.ICR) & E.ICR_RXT0


class Edges:
    """Counts the rises of the NIC's INTx level."""

    def __init__(self, nic):
        self.rises = 0
        inner = nic.set_irq

        def set_irq(level):
            if level and not nic.intx_asserted:
                self.rises += 1
            inner(level)

        nic.set_irq = set_irq


def test_receive_burst_raises_its_interrupt_once_at_its_end():
    rig = Rig()
    rig.up()
    line = Edges(rig.nic)
    frames = [with_checksums(tcp_frame(bytes([i]) * (200 + i), dst=MAC, src=PEER))
              for i in range(3)]
    # Mid-burst (the network has not said it ended): the frames are in their
    # buffers and their descriptors written back; the interrupt waits.
    for f in frames:
        assert rig.nic.receive(memoryview(f))
    for i, f in enumerate(frames):
        buf, length, _cs, status, _e, _sp = rig.rx_desc(i)
        assert status & E.RXD_DD and rig.mem.read(buf, len(f)) == f
    assert line.rises == 0 and not rig.irq
    rig.net.on_rx_done()
    assert line.rises == 1 and rig.irq
    # MemoryNet says where each delivery's burst ends: one interrupt for it.
    rig.r(E.ICR)
    assert not rig.irq
    rig.net.deliver(frames[0])
    assert line.rises == 2 and rig.irq


def test_receive_held_burst_ends_at_the_guests_next_register_access_or_a_save():
    rig = Rig()
    rig.up()
    f = with_checksums(tcp_frame(b"h" * 64, dst=MAC, src=PEER))
    assert rig.nic.receive(memoryview(f))
    assert not rig.irq
    # Any register access (here STATUS, Linux's write flush) ends the burst first.
    rig.r(E.STATUS)
    assert rig.irq and rig.r(E.ICR) & E.ICR_RXT0
    assert not rig.irq
    assert rig.nic.receive(memoryview(f))
    saved = rig.nic.state()
    assert rig.irq and saved["nic"][2] & E.ICR_RXT0


def test_receive_on_a_net_without_bursts_raises_each_frames_interrupt():
    rig = Rig()
    rig.net = MemoryNet(MAC)
    rig.net.rx_batches = False
    rig.nic = E.E1000(rig.net, rig.mem)
    rig.up()
    assert rig.net.on_rx_done is None
    assert rig.nic.receive(memoryview(with_checksums(tcp_frame(b"1" * 64, dst=MAC, src=PEER))))
    assert rig.irq


def test_receive_filters():
    rig = Rig()
    rig.up(rctl=E.RCTL_EN)
    f = tcp_frame(b"x" * 20, src=PEER)
    rig.net.deliver(b"\xff" * 6 + f[6:])  # no BAM
    rig.net.deliver(bytes.fromhex("00163e999999") + f[6:])  # another station
    group = bytes.fromhex("01005e0000fb")
    rig.net.deliver(group + f[6:])  # multicast, not in the table
    assert rig.r(E.RDH) == 0
    h = ((group[5] << 8) | group[4]) >> 4 & 0xFFF  # RCTL.MO = 0
    rig.w(E.MTA + 4 * (h >> 5), 1 << (h & 31))
    rig.net.deliver(group + f[6:])
    assert rig.r(E.RDH) == 1
    rig.w(E.RCTL, E.RCTL_EN | E.RCTL_BAM)
    rig.net.deliver(b"\xff" * 6 + f[6:])
    assert rig.r(E.RDH) == 2
    # A second unicast address in RAL1/RAH1.
    rig.w(E.RA + 8, 0x99993E16 << 0 & 0xFFFFFFFF)
    rig.w(E.RA + 12, 0x8000_0000 | 0x9999)
    rig.net.deliver(bytes.fromhex("163e99999999") + f[6:])
    assert rig.r(E.RDH) == 3
    rig.w(E.RCTL, E.RCTL_EN | E.RCTL_UPE)
    rig.net.deliver(bytes.fromhex("00163e999999") + f[6:])
    assert rig.r(E.RDH) == 4


def test_jumbo_frame_spans_descriptors():
    rig = Rig()
    rig.up(rctl=E.RCTL_EN | E.RCTL_LPE | (3 << 16))  # 256-byte buffers
    f = with_checksums(tcp_frame(bytes(range(256)) * 3, dst=MAC))
    rig.net.deliver(f)
    n = (len(f) + 4 + 255) // 256
    assert rig.r(E.RDH) == n
    got = b""
    for i in range(n):
        buf, length, _c, status, _e, _s = rig.rx_desc(i)
        assert bool(status & E.RXD_EOP) == (i == n - 1)
        got += rig.mem.read(buf, length)
    assert got[:len(f)] == f


def test_receive_back_pressure_and_a_ring_never_filled():
    rig = Rig()
    rig.up(rx_descs=8, rx_given=3)  # RDLEN counts in 128 bytes: 8 descriptors, 3 given
    frames = [tcp_frame(bytes([i]) * 64, dst=MAC) for i in range(6)]
    for f in frames:
        rig.net.deliver(f)
    assert rig.r(E.RDH) == 3 and len(rig.net.backlog) == 3
    rig.w(E.RDT, 5)  # the driver gives two more
    assert len(rig.net.backlog) == 1
    rig2 = Rig()
    rig2.up(rx_descs=8, rx_given=0)  # RDT == RDH: none given, ever
    for f in frames:
        rig2.net.deliver(f)
    assert len(rig2.net.backlog) == 6 and rig2.r(E.RDH) == 0


def test_bad_ring_indices_and_addresses():
    rig = Rig()
    rig.up()
    rig.w(E.RDT, 500)  # outside an 8-descriptor ring
    rig.net.deliver(tcp_frame(b"x" * 10, dst=MAC))
    assert rig.r(E.RDH) == 0 and len(rig.net.backlog) == 1
    rig.w(E.TDT, 99)
    assert rig.net.sent == [] and rig.r(E.TDH) == 0
    rig.w(E.TDT, 0)
    # Buffers outside RAM, a zero-length descriptor, a packet over the maximum.
    rig.post([legacy(0xFFFF_FFFF_0000, 100),
              legacy(BUFS, 0),
              legacy(BUFS, 0xFFFF, cmd=E.TXD_RS),
              legacy(BUFS, 0xFFFF, cmd=E.TXD_RS),
              legacy(BUFS, 0xFFFF)])
    assert rig.net.sent == []
    assert rig.r(E.TDH) == 5
    assert log.count("guest_error") >= 3
    # The ring base itself outside RAM: nothing moves, nothing spins.
    rig.w(E.TDBAL, 0xFFFF0000)
    rig.w(E.TDBAH, 0xFFFF)
    rig.post([legacy(BUFS, 60)])
    assert rig.net.sent == []


def test_head_chasing_its_tail_is_one_lap_per_doorbell():
    rig = Rig()
    rig.up()
    f = with_checksums(tcp_frame(b"l" * 20))
    rig.mem.write(BUFS, f)
    for i in range(16):
        rig.mem.write(TX_RING + 16 * i, legacy(BUFS, len(f)))
    rig.w(E.TDT, 15)
    assert len(rig.net.sent) == 15
    rig.w(E.TDH, 0)  # the guest rewinds the head: the ring is reprocessed, boundedly
    rig.w(E.TDT, 15)
    assert len(rig.net.sent) == 30


def test_transmit_waits_for_network_room():
    rig = Rig(tx_room=1)
    rig.up()
    f = with_checksums(tcp_frame(b"w" * 20))
    rig.mem.write(BUFS, f)
    rig.post([legacy(BUFS, len(f)) for _ in range(4)])
    assert len(rig.net.sent) == 1
    assert rig.r(E.TDH) < 4  # the FIFO holds a frame: the ring waits
    rig.net.room(10)
    assert len(rig.net.sent) == 4 and rig.r(E.TDH) == 4


def test_io_bar_window():
    rig = Rig()
    io = rig.nic.io
    io.write(0, 4, E.STATUS)
    assert io.read(4, 4) == rig.r(E.STATUS)
    io.write(0, 4, E.IMS)
    io.write(4, 4, E.ICR_LSC)
    assert rig.r(E.IMS) == E.ICR_LSC


def test_statistics_clear_on_read():
    rig = Rig()
    rig.up()
    f = with_checksums(tcp_frame(b"s" * 20))
    rig.mem.write(BUFS, f)
    rig.post([legacy(BUFS, len(f))])
    assert rig.r(0x4080) == 1  # GPTC
    assert rig.r(0x4080) == 0


def test_config_space_is_the_pci_functions_own():
    nic = Rig().nic
    nic.config_write(0x00, 4, 0)
    nic.config_write(0x18, 4, 0xFFFFFFFF)  # BAR2: absent
    assert nic.config_read(0, 4) == 0x100E8086
    assert nic.config_read(0x18, 4) == 0
    nic.config_write(0x10, 4, 0xFFFFFFFF)
    assert nic.config_read(0x10, 4) == 0xFFFE0000  # 128 KiB


def test_a_huge_ring_is_served_in_bounded_slices():
    rig = Rig()
    rig.up()
    n = 4096
    rig.w(E.TDLEN, 16 * n)  # 64 KiB of descriptors: the largest ring Linux makes
    f = with_checksums(tcp_frame(b"h" * 1000))
    rig.mem.write(BUFS, f)
    rig.mem.write(TX_RING, legacy(BUFS, len(f)) * n)
    rig.w(E.TDT, n - 1)
    first = len(rig.net.sent)
    assert 0 < first <= E.TX_DESC_BUDGET  # one doorbell: one slice
    for _ in range(n):
        if rig.r(E.TDH) == n - 1:
            break
    assert len(rig.net.sent) == n - 1  # the driver's accesses took up the rest


def test_octet_counters_are_64_bit_and_clear_with_their_high_half():
    rig = Rig()
    rig.up()
    f = tcp_frame(b"o" * 100, dst=MAC)
    for _ in range(3):
        rig.net.deliver(f)
    assert rig.r(0x4074) == 3  # GPRC
    assert rig.r(0x4088) == 3 * (len(f) + 4)  # GORCL, CRC counted
    assert rig.r(0x4088) == 3 * (len(f) + 4)  # the low half alone does not clear
    assert rig.r(0x408C) == 0  # GORCH: clears the pair
    assert rig.r(0x4088) == 0


def test_frames_waiting_for_the_network_survive_save_and_restore():
    # The guest was told these were sent (DD set): a save must carry them.
    rig = Rig(tx_room=1)
    rig.up()
    frames = [with_checksums(tcp_frame(bytes([0x40 + i]) * (60 + i))) for i in range(3)]
    for i, f in enumerate(frames):
        rig.mem.write(BUFS + 0x8000 + 0x800 * i, f)
    rig.post([legacy(BUFS + 0x8000 + 0x800 * i, len(f)) for i, f in enumerate(frames)])
    assert rig.net.sent == frames[:1] and rig.tx_status(1) & E.TXD_STAT_DD
    saved = rig.nic.state()
    back = Rig()
    for start, end in rig.mem.ranges:  # the guest's RAM, descriptors and buffers
        back.mem.write(start, rig.mem.read(start, end - start))
    back.nic.load_state(saved)
    back.net.room(1)  # the network has room again
    assert back.net.sent == frames[1:]
    bad = dict(saved, txq=[b"short"])
    with pytest.raises(ValueError):
        Rig().nic.load_state(bad)


def test_prefetched_rx_descriptors_follow_the_driver():
    # The NIC reads RX descriptors ahead (up to RDT), as the 82540EM prefetches.
    # A descriptor the driver takes back (RDT moved back) and rewrites is read
    # again; one still the hardware's is used as prefetched.
    rig = Rig()
    rig.up(rx_descs=8, rx_given=6)
    frames = [tcp_frame(bytes([65 + i]) * 80, dst=MAC) for i in range(4)]
    rig.net.deliver(frames[0])  # descriptors 0..5 prefetched
    assert rig.r(E.RDH) == 1
    rig.w(E.RDT, 2)  # descriptors 2..5 back to the driver
    other = BUFS + 0x10000
    rig.mem.write(RX_RING + 16 * 2, struct.pack("<QQ", other, 0))
    rig.w(E.RDT, 3)
    rig.net.deliver(frames[1])
    rig.net.deliver(frames[2])
    assert rig.r(E.RDH) == 3 and len(rig.net.backlog) == 0
    assert rig.mem.read(rig.rx_desc(1)[0], len(frames[1])) == frames[1]
    assert rig.rx_desc(2)[0] == other
    assert rig.mem.read(other, len(frames[2])) == frames[2]
    # RDH rewritten (a driver's reset of the ring): read afresh.
    rig.w(E.RCTL, 0)
    rig.w(E.RDH, 0)
    rig.w(E.RDT, 4)
    rig.mem.write(RX_RING, struct.pack("<QQ", other + 0x800, 0))
    rig.w(E.RCTL, E.RCTL_EN | E.RCTL_BAM)
    rig.net.deliver(frames[3])
    assert rig.mem.read(other + 0x800, len(frames[3])) == frames[3]
