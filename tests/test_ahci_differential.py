# Differential test: the same libahci-style script against stubdm's ICH9 AHCI
# (the scripted guest, through host_sim) and QEMU's own (q35's AHCI at
# 00:1f.2 under -accel qtest), with the same image: HBA and port registers,
# the FISes posted to the receive area, IDENTIFY, data, PRDBC, NCQ
# completion and a range error must agree, except where noted.
import pytest

from host_sim.qtest_qemu import QemuQtest, find_qemu, qemu_missing_reason
from host_sim.scripted import Session

QEMU = find_qemu()
pytestmark = pytest.mark.skipif(QEMU is None, reason="no QEMU with qtest: %s"
                                % (qemu_missing_reason() if QEMU is None else ""))
RAM_MIB = 64
ABAR = 0xFEB80000
CLB = 0x100000
FB = 0x101000
CT = 0x110000
BUF = 0x200000
SECTORS = 4096
# IDENTIFY words where the two legitimately differ: QEMU's SMART, TRIM, physical
# sector and rotation words (as for IDE), and 93 (QEMU reports PATA cable results on
# SATA too; stubdm's AHCI disk reports 0, as a SATA device does: ATA8-ACS 7.16.7.47).
IDENTIFY_SKIP = (69, 82, 84, 85, 87, 93, 106, 169, 217)


def pattern(n, seed):
    return bytes(((i * 31 + seed) >> 3) & 0xFF for i in range(n))


def h2d(cmd, lba=0, count=0, features=0, device=0x40):
    f = bytearray(20)
    f[0], f[1], f[2], f[3] = 0x27, 0x80, cmd, features & 0xFF
    f[4], f[5], f[6], f[7] = lba & 0xFF, (lba >> 8) & 0xFF, (lba >> 16) & 0xFF, device
    f[8], f[9], f[10], f[11] = (lba >> 24) & 0xFF, (lba >> 32) & 0xFF, 0, (features >> 8) & 0xFF
    f[12], f[13] = count & 0xFF, (count >> 8) & 0xFF
    return bytes(f)


def script(g, dev, fn):
    out = []

    def cfg_w(reg, v, size=4):
        g.outl(0xCF8, 0x80000000 | (dev << 11) | (fn << 8) | (reg & 0xFC))
        if size == 4:
            g.outl(0xCFC, v)
        else:
            g.outw(0xCFC + (reg & 2), v)

    def cfg_r(reg):
        g.outl(0xCF8, 0x80000000 | (dev << 11) | (fn << 8) | reg)
        return g.inl(0xCFC)

    def r(off):
        return g.readl(ABAR + off)

    def w(off, v):
        g.writel(ABAR + off, v)

    def pr(off):
        return r(0x100 + off)

    def pw(off, v):
        w(0x100 + off, v)

    def note(what, *vals):
        out.append((what,) + vals)

    def regs():
        return [pr(o) for o in (0x10, 0x14, 0x18, 0x20, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x38)]

    def build(slot, fis, prds, write=False):
        ct = CT + slot * 0x100
        t = bytearray(0x80 + 16 * len(prds))
        t[0:20] = fis
        for i, (a, n) in enumerate(prds):
            t[0x80 + 16 * i:0x90 + 16 * i] = (a.to_bytes(8, "little") + bytes(4)
                                             + (n - 1).to_bytes(4, "little"))
        g.memwrite(ct, bytes(t))
        dw0 = 5 | (len(prds) << 16) | (0x40 if write else 0)
        g.memwrite(CLB + slot * 32, dw0.to_bytes(4, "little") + bytes(4)
                   + ct.to_bytes(8, "little") + bytes(16))

    def wait(mask_reg=0x38):
        for _ in range(2000):
            if not pr(mask_reg):
                return True
        return False

    def prdbc(slot):
        return int.from_bytes(g.memread(CLB + slot * 32 + 4, 4), "little")

    cfg_w(0x24, ABAR)
    cfg_w(0x04, 0x0006, 2)
    note("ids", cfg_r(0x00), cfg_r(0x08) >> 8, (cfg_r(0x3C) >> 8) & 0xFF)
    note("hba", r(0x00), r(0x04), r(0x08), r(0x0C), r(0x10), r(0x24))
    note("port at reset", regs())
    w(0x04, 0x80000000)
    g.memwrite(FB, bytes(256))
    pw(0x00, CLB)
    pw(0x04, 0)
    pw(0x08, FB)
    pw(0x0C, 0)
    pw(0x18, pr(0x18) | 0x10)
    note("fre", regs(), g.memread(FB + 0x40, 20))
    pw(0x18, pr(0x18) | 0x01)
    note("st", regs())
    pw(0x10, 0xFFFFFFFF)
    pw(0x30, 0xFFFFFFFF)
    pw(0x14, 0x7DC0007F)
    # IDENTIFY by PIO.
    build(0, h2d(0xEC, device=0), [(BUF, 512)])
    pw(0x38, 1)
    note("identify done", wait())
    d = g.memread(BUF, 512)
    wd = [int.from_bytes(d[2 * i:2 * i + 2], "little") for i in range(256)]
    note("identify", [v if i not in IDENTIFY_SKIP else None for i, v in enumerate(wd)])
    note("identify regs", regs(), prdbc(0), g.memread(FB + 0x20, 20), g.memread(FB + 0x40, 20),
         r(0x08))
    pw(0x10, 0xFFFFFFFF)
    w(0x08, 1)
    # DMA read across two PRDs, write, read back.
    build(1, h2d(0x25, 100, 16), [(BUF, 4096), (BUF + 0x3000, 4096)])
    pw(0x38, 2)
    done = wait()
    d2h = g.memread(FB + 0x40, 20)
    # Not compared: the LBA bytes 4-10 after DMA (QEMU's show the next sector,
    # ata.py's the last one moved, as on its IDE).
    note("read dma", done, g.memread(BUF, 4096) + g.memread(BUF + 0x3000, 4096), regs(),
         prdbc(1), d2h[0:4] + d2h[11:])
    pw(0x10, 0xFFFFFFFF)
    g.memwrite(BUF + 0x10000, pattern(8192, 5))
    build(2, h2d(0x35, 300, 16), [(BUF + 0x10000, 8192)], write=True)
    pw(0x38, 4)
    note("write dma", wait(), regs(), prdbc(2))
    pw(0x10, 0xFFFFFFFF)
    build(3, h2d(0xC8, 300, 16), [(BUF + 0x20000, 8192)])
    pw(0x38, 8)
    note("read back", wait(), g.memread(BUF + 0x20000, 8192))
    pw(0x10, 0xFFFFFFFF)
    # NCQ: four tags.
    for t in range(4):
        build(t, h2d(0x60, 1000 + 8 * t, t << 3, features=8), [(BUF + 0x30000 + t * 4096, 4096)])
    pw(0x34, 0xF)
    pw(0x38, 0xF)
    done = (wait(0x34), wait())
    note("ncq done", done, g.memread(BUF + 0x30000, 4 * 4096))
    # The SDB FIS's SActive field is not compared: it holds the tags of the last
    # completion batch, which depends on when the disk answered (stubdm: all four
    # in one batch here; QEMU: one FIS a completion).
    note("ncq regs", regs(), g.memread(FB + 0x58, 4))
    pw(0x10, 0xFFFFFFFF)
    # Past the end of the disk.
    build(0, h2d(0x25, SECTORS - 2, 4), [(BUF, 2048)])
    pw(0x38, 1)
    note("past the end", wait(), regs())
    return out


def test_same_answers_as_qemu(tmp_path, dm_runtime):
    img = tmp_path / "disk.img"
    data = bytearray(SECTORS * 512)
    for s in range(0, SECTORS, 4):
        data[s * 512:s * 512 + 8] = s.to_bytes(8, "little")
    img.write_bytes(bytes(data))
    ours_args = ["-no-timers", "-device", "ahci,id=ahci0",
                 "-drive", "file=%s,if=none,id=d0,format=raw" % img,
                 "-device", "ide-hd,bus=ahci0.0,unit=0,drive=d0"]
    with Session(dm_args=ours_args, ram_mib=RAM_MIB, runtime=dm_runtime) as s:
        ours = script(s.guest, 4, 0)
    img.write_bytes(bytes(data))
    theirs_args = ["-m", str(RAM_MIB), "-drive", "file=%s,if=none,id=d0,format=raw" % img,
                   "-device", "ide-hd,drive=d0,bus=ide.0"]
    with QemuQtest(theirs_args, qemu=QEMU, machine="q35") as q:
        theirs = script(q, 0x1F, 2)
    for a, b in zip(ours, theirs):
        assert a == b, "stubdm %r\nQEMU   %r" % (a, b)
    assert len(ours) == len(theirs)
