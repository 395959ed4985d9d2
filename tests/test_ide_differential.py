# Differential tests: the same guest script against stubdm's PIIX3 IDE (the
# scripted guest, through host_sim) and QEMU's own (-accel qtest), with the
# same images: register values, data, IRQ 14/15 levels and bus-master status
# after every step must agree, except where noted. Not compared: READ TOC's
# MMC format field in CDB byte 2, which QEMU ignores (it reads only the
# older field in byte 9; stubdm takes both); stubdm's range errors and PRD
# faults, which QEMU answers by stopping the engine without an interrupt.
import pytest

from host_sim.qtest_qemu import QemuQtest, find_qemu, qemu_missing_reason
from host_sim.scripted import Session
from tests.ide_guest import BUF, IdeGuest
from tests.test_ide_scripted import pattern

QEMU = find_qemu()
pytestmark = pytest.mark.skipif(QEMU is None, reason="no QEMU with qtest: %s"
                                % (qemu_missing_reason() if QEMU is None else ""))
RAM_MIB = 64
# IDENTIFY words where the two legitimately differ: 82/85 bit 0 (QEMU offers
# SMART, stubdm does not), 84/87 (QEMU's SMART logging bits), 169 and 69 (TRIM,
# QEMU's discard), 106 (QEMU's physical sector size word), 217 (rotation rate).
IDENTIFY_SKIP = (69, 82, 84, 85, 87, 106, 169, 217)


def words(d):
    return [int.from_bytes(d[2 * i:2 * i + 2], "little") for i in range(256)]


def script(g, irq):
    """What libata does at probe and for I/O; returns the observations."""
    ide = IdeGuest(g)
    out = []

    def note(what, *vals):
        out.append((what,) + tuple(vals) + (irq(14), irq(15)))

    # Probe: software reset, signatures, device presence patterns (ata_sff_softreset).
    for ch in (0, 1):
        ide.ctl(ch, 0x06)
        ide.ctl(ch, 0x02)
        note("srst", ch, ide.regs(ch))
        for unit in (0, 1):
            ide.outb(ch, 6, 0xA0 | (unit << 4))
            ide.outb(ch, 2, 0x55)
            ide.outb(ch, 3, 0xAA)
            note("devchk", ch, unit, ide.regs(ch))
        ide.ctl(ch, 0x00)
    d = words(ide.identify(0, 0))
    note("identify", [w if i not in IDENTIFY_SKIP else None for i, w in enumerate(d)])
    note("status", ide.inb(0, 7))
    p = words(ide.identify(1, 0, packet=True))
    note("identify packet", p, ide.inb(1, 7))
    ide.outb(0, 6, 0xA0)
    ide.outb(0, 7, 0xEC)
    ide.wait(0)
    note("identify drq", ide.alt(0), ide.inb(0, 2))
    ide.pio_in(0, 512)
    # Transfer mode and multiple mode, as libata sets them.
    ide.outb(0, 1, 0x03)
    ide.outb(0, 2, 0x22)
    ide.outb(0, 7, 0xEF)
    note("set features", ide.wait(0), ide.inb(0, 7), ide.inb(0, 1))
    ide.outb(0, 2, 16)
    ide.outb(0, 7, 0xC6)
    note("set multiple", ide.wait(0), ide.inb(0, 7))
    # PIO reads and writes, LBA28 and LBA48, with the registers afterwards.
    data, st = ide.read_pio(0, 0, 7, 3)
    note("read pio", data, st, ide.regs(0))
    data, st = ide.read_pio(0, 0, 40, 2, lba48=True)
    ide.ctl(0, 0x80)
    hob = ide.regs(0)
    ide.ctl(0, 0x00)
    note("read pio ext", data, st, ide.regs(0), hob)
    st = ide.write_pio(0, 0, 60, pattern(2, 7))
    note("write pio", st, ide.regs(0))
    data, st = ide.read_pio(0, 0, 60, 2)
    note("read back", data, st)
    ide.taskfile(0, 0, 80, 8)
    ide.outb(0, 7, 0xC4)
    ide.wait(0)
    note("read multiple", ide.pio_in(0, 8 * 512), ide.inb(0, 7))
    # DMA in both directions; a PRD longer than the transfer.
    g.memwrite(BUF, bytes(0x20000))
    r = ide.dma(0, 0, 0xC8, 10, 16, [(BUF, 4096, False), (BUF + 0x10000, 4096, True)], True,
                irq=lambda: irq(14))
    note("dma read", r, g.memread(BUF, 4096) + g.memread(BUF + 0x10000, 4096))
    r = ide.dma(0, 0, 0xC8, 30, 1, [(BUF, 8192, True)], True, irq=lambda: irq(14))
    note("dma read, long prd", r)
    g.memwrite(BUF, pattern(4, 11))
    r = ide.dma(0, 0, 0xCA, 100, 4, [(BUF, 2048, True)], False, irq=lambda: irq(14))
    note("dma write", r)
    note("after dma write", ide.read_pio(0, 0, 100, 4))
    # Bus-master registers: byte-only command and status, dword PRD pointer.
    base = 0xC000
    g.outb(base + 2, 0xFF)
    note("bm regs", g.inb(base), g.inb(base + 2), g.inl(base + 4) & 3, g.inw(base))
    g.outb(base + 2, 0x06)
    # Errors: past the end, an unknown command, FLUSH.
    note("past the end", ide.read_pio(0, 0, 2047, 2)[1], ide.inb(0, 1))
    ide.outb(0, 6, 0xA0)
    ide.outb(0, 7, 0x00)
    note("nop", ide.wait(0), ide.inb(0, 7), ide.inb(0, 1))
    ide.outb(0, 7, 0xE7)
    note("flush", ide.wait(0), ide.inb(0, 7))
    ide.outb(0, 7, 0xE5)
    note("check power", ide.wait(0), ide.inb(0, 2))
    # ATAPI.
    for _ in range(3):
        r = ide.packet(1, 0, [0x00])
        note("tur", r)
        if not r[1] & 1:
            break
        note("sense", ide.packet(1, 0, [0x03, 0, 0, 0, 18]))
    for cdb in ([0x12, 0, 0, 0, 36], [0x25], [0x28, 0, 0, 0, 0, 2, 0, 0, 2],
                [0x43, 0, 0, 0, 0, 0, 0, 0, 12], [0x43, 2, 0, 0, 0, 0, 0, 0, 12],
                [0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0x40],  # session info, SFF-8020i's field
                [0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8], [0x4A, 0, 0, 0, 0x10, 0, 0, 0, 8],
                [0x1E, 0, 0, 0, 1], [0x1E, 0, 0, 0, 0],
                [0x28, 0, 0, 0, 0, 100, 0, 0, 1], [0x03, 0, 0, 0, 18],
                [0xA8, 0, 0, 0, 0, 1, 0, 0, 0, 1], [0xFF], [0x03, 0, 0, 0, 18]):
        note("packet %02x" % cdb[0], ide.packet(1, 0, cdb))
    r = ide.packet(1, 0, [0x28, 0, 0, 0, 0, 3, 0, 0, 2], nbytes=3000)
    note("read bcl 3000", r)
    r = ide.packet(1, 0, [0x28, 0, 0, 0, 0, 4, 0, 0, 2], dma=True, entries=[(BUF, 4096, True)])
    note("read dma", r, g.memread(BUF, 4096), g.inb(0xC00A))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("ided")
    hd = d / "hd.img"
    hd.write_bytes(pattern(2048, 5))
    cd = d / "cd.iso"
    cd.write_bytes(pattern(4 * 50, 6))
    return hd, cd


def run_both(images, runtime):
    hd, cd = images
    hd_bytes = hd.read_bytes()
    args = ["-drive", "file=%s,if=ide,index=0,media=disk,format=raw,cache=writeback" % hd,
            "-drive", "file=%s,if=ide,index=2,media=cdrom,format=raw" % cd]
    with Session(dm_args=["-no-timers"] + args, ram_mib=RAM_MIB, runtime=runtime) as s:
        ours = script(s.guest, s.guest.get_irq)
    hd.write_bytes(hd_bytes)
    with QemuQtest(["-m", str(RAM_MIB)] + args, qemu=QEMU) as q:
        q.irq_intercept_in("ioapic")
        theirs = script(q, q.get_irq)
    hd.write_bytes(hd_bytes)
    return ours, theirs


def test_same_answers_as_qemu(images, dm_runtime):
    ours, theirs = run_both(images, dm_runtime)
    assert len(ours) == len(theirs)
    diffs = []
    for a, b in zip(ours, theirs):
        if a != b:
            diffs.append("%s:\n  stubdm %r\n  QEMU   %r" % (a[0], a[1:], b[1:]))
    assert not diffs, "\n".join(d[:600] for d in diffs)
