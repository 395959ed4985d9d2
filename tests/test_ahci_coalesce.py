# AHCI's interrupt per completion batch: when one blkfront event brings several
# responses, the HBA reports them in one Set Device Bits FIS and raises its
# interrupt once, after the last (the guest finds every completion in PxSACT when
# the line rises); when the guest's handler clears HBA IS while responses are
# already in blkfront's ring, they are reported there and the line stays up
# instead of falling and rising again. In-process: stubdm's AHCI over a real
# BlkFront whose backend this test plays (host_sim/fuzz_pv.py's fake rings).
import struct

from host_sim.fuzz import FakeGuestMemory
from host_sim.fuzz_pv import connect
from stubdm import pv_abi as A
from stubdm.devices import ahci as H
from stubdm.frontends.blkfront import BlkFront

CLB, FB, CT, BUF = 0x100000, 0x101000, 0x110000, 0x200000
P = H.PORT_BASE  # port 0's registers
SECTORS = 4096
RING_HDR = 64  # sring: req_prod, req_event, rsp_prod, rsp_event, padding


class Bus:
    """The PCI bus's view of the HBA's INTx pin: every edge, with what port 0's
    PxSACT and PxCI held at that moment."""

    def __init__(self):
        self.hba = None
        self.edges = []

    def set_intx(self, fn, level):
        p = self.hba.ports[0]
        self.edges.append((level, p.sact, p.ci))

    def bar_changed(self, *args):
        pass


def sector_data(sector, n):
    """What the test's backend holds at `sector`: each 512 bytes names its sector."""
    out = bytearray()
    for s in range(sector, sector + n // 512):
        out += struct.pack("<Q", s) * 64
    return bytes(out)


class Backend:
    """The blkback side of the fake rings: reads the requests blkfront pushed and
    answers as many as asked, reads filled in from sector_data."""

    def __init__(self, fe):
        self.fe = fe
        self.cons = 0

    def pending(self):
        return struct.unpack_from("<I", self.fe.ring.mem, 0)[0] - self.cons

    def answer(self, count, event=True):
        fe = self.fe
        ring = fe.ring
        mem = ring.mem
        for _ in range(count):
            off = RING_HDR + (self.cons & (ring.size - 1)) * ring.entry
            op, nseg, _h, rid, sector = struct.unpack_from(A.BLKIF_REQ_HEAD_FMT, mem, off)
            assert op == A.BLKIF_OP_READ and 1 <= nseg <= A.BLKIF_MAX_SEGMENTS_PER_REQUEST
            for i in range(nseg):
                gref, first, last = struct.unpack_from(A.BLKIF_SEG_FMT, mem,
                                                       off + A.BLKIF_REQ_OFF_SEG + 8 * i)
                page = (gref - fe.pool.refs[0]) * 4096
                n = (last - first + 1) * 512
                fe.pool.mem[page + first * 512:page + first * 512 + n] = sector_data(sector, n)
                sector += n // 512
            struct.pack_into(A.BLKIF_RSP_FMT, mem, off, rid, op, A.BLKIF_RSP_OKAY)
            self.cons += 1
        struct.pack_into("<I", mem, 4, self.cons + 1)  # req_event: wake me at the next
        struct.pack_into("<I", mem, 8, self.cons)  # rsp_prod
        if event:
            fe.on_event(fe.port)


def h2d_ncq_read(tag, lba, sectors):
    f = bytearray(20)
    f[0], f[1], f[2], f[3] = H.FIS_REG_H2D, H.FIS_C, H.CMD_READ_FPDMA, sectors & 0xFF
    f[4], f[5], f[6], f[7] = lba & 0xFF, (lba >> 8) & 0xFF, (lba >> 16) & 0xFF, 0x40
    f[11], f[12] = sectors >> 8, tag << 3
    return bytes(f)


def machine():
    mem = FakeGuestMemory(64 << 20)
    fe = connect(BlkFront, "vbd", "51712", {
        "sectors": str(SECTORS), "info": "0", "sector-size": "512",
        "max-ring-page-order": "2", "feature-max-indirect-segments": "256",
        "feature-persistent": "1"})
    hba = H.Ahci(mem, [fe])
    bus = Bus()
    bus.hba = hba
    hba.attached(bus, 0x20)
    hba.config_write(0x04, 2, 0x0006)  # memory space, bus master
    hba.reg_write(H.HBA_GHC, H.GHC_AE | H.GHC_IE)
    hba.reg_write(P + H.P_CLB, CLB)
    hba.reg_write(P + H.P_FB, FB)
    hba.reg_write(P + H.P_SERR, 0xFFFFFFFF)
    hba.reg_write(P + H.P_IE, H.IE_MASK)
    hba.reg_write(P + H.P_CMD, H.CMD_FRE | H.CMD_ST)
    hba.reg_write(P + H.P_IS, 0xFFFFFFFF)  # the signature FIS's interrupt, acknowledged
    hba.reg_write(H.HBA_IS, 0xFFFFFFFF)
    assert not hba.intx_asserted
    bus.edges = []
    return mem, fe, hba, bus


def issue_reads(mem, hba, tags):
    """libahci's way: for each tag its command, then PxSACT, then PxCI."""
    for tag in tags:
        table = bytearray(0x90)
        table[0:20] = h2d_ncq_read(tag, 8 * tag, 8)
        table[0x80:0x90] = struct.pack("<QII", BUF + 4096 * tag, 0, 4096 - 1)
        ct = CT + 0x100 * tag
        assert mem.write(ct, bytes(table))
        assert mem.write(CLB + 32 * tag, struct.pack("<IIQ", 5 | (1 << 16), 0, ct) + bytes(16))
        hba.reg_write(P + H.P_SACT, 1 << tag)
        hba.reg_write(P + H.P_CI, 1 << tag)


def guest_handler(hba):
    """ahci_single_level_irq_intr: HBA IS, the port's PxIS cleared, PxSACT, HBA IS cleared."""
    irq = hba.reg_read(H.HBA_IS)
    st = hba.reg_read(P + H.P_IS)
    hba.reg_write(P + H.P_IS, st)
    sact = hba.reg_read(P + H.P_SACT)
    hba.reg_write(H.HBA_IS, irq)
    return st, sact


def test_one_interrupt_for_a_batch_of_completions():
    mem, fe, hba, bus = machine()
    tags = list(range(8))
    mask = (1 << len(tags)) - 1
    issue_reads(mem, hba, tags)
    be = Backend(fe)
    assert be.pending() == len(tags) and hba.reg_read(P + H.P_SACT) == mask
    assert bus.edges == []  # accepted NCQ commands raise nothing
    be.answer(len(tags))  # one event, eight responses
    # One rising edge, after the last completion: PxSACT already empty when it rose.
    assert bus.edges == [(1, 0, 0)]
    # One Set Device Bits FIS named all eight tags.
    sdb = mem.read(FB + H.RFIS_SDBFIS, 8)
    assert sdb[0] == H.FIS_SDB and struct.unpack_from("<I", sdb, 4)[0] == mask
    # None is lost: every buffer holds its sectors.
    for tag in tags:
        assert mem.read(BUF + 4096 * tag, 4096) == sector_data(8 * tag, 4096), tag
    st, sact = guest_handler(hba)
    assert st & H.IS_SDBS and sact == 0
    assert bus.edges == [(1, 0, 0), (0, 0, 0)]  # and the handler's ack lowers it once


def test_completions_waiting_in_the_ring_keep_the_line_up():
    mem, fe, hba, bus = machine()
    issue_reads(mem, hba, [0, 1, 2])
    be = Backend(fe)
    be.answer(1)
    assert bus.edges == [(1, 0b110, 0)]
    # The other two are answered while the guest runs its handler; their event is
    # still on its way when the handler clears HBA IS.
    be.answer(2, event=False)
    st, sact = guest_handler(hba)
    assert st == H.IS_SDBS and sact == 0b110  # it read PxSACT before the ack
    # The ack found them: reported, the line stayed up (no fall and rise).
    assert bus.edges == [(1, 0b110, 0)]
    assert hba.reg_read(P + H.P_SACT) == 0 and hba.reg_read(P + H.P_IS) & H.IS_SDBS
    fe.on_event(fe.port)  # the late event: nothing left to do
    assert bus.edges == [(1, 0b110, 0)]
    st, sact = guest_handler(hba)
    assert st == H.IS_SDBS and sact == 0
    assert bus.edges == [(1, 0b110, 0), (0, 0, 0)]
    for tag in range(3):
        assert mem.read(BUF + 4096 * tag, 4096) == sector_data(8 * tag, 4096), tag


def test_what_the_batch_submits_goes_out_in_one_notify():
    # Eight 4 KiB reads but room for only the first four in flight: the other four
    # go to blkfront as the first four complete, in the middle of the batch, and
    # reach the ring with one push and one notify.
    mem, fe, hba, bus = machine()
    saved = H.INFLIGHT_BYTES
    H.INFLIGHT_BYTES = 4 * 4096
    try:
        issue_reads(mem, hba, list(range(8)))
        be = Backend(fe)
        assert be.pending() == 4
        before = fe.hyp.notifies
        be.answer(4)
        assert be.pending() == 4 and fe.hyp.notifies == before + 1
        assert bus.edges == [(1, 0xF0, 0)]
        be.answer(4)
    finally:
        H.INFLIGHT_BYTES = saved
    assert hba.reg_read(P + H.P_SACT) == 0 and bus.edges == [(1, 0xF0, 0)]
    for tag in range(8):
        assert mem.read(BUF + 4096 * tag, 4096) == sector_data(8 * tag, 4096), tag
