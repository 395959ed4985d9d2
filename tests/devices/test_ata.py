# The ATA/ATAPI command layer (stubdm/devices/ata.py) through the PIIX3
# channel, as libata drives it. Each test names the ATA-6 / MMC-3 section or
# the QEMU behaviour it pins.
import pytest

from stubdm import block, log
from stubdm.block import MemoryDisk

from tests.devices.ide_helpers import Rig, disk


@pytest.fixture(autouse=True)
def quiet():
    log.verbose = 0
    log.reset_counts()
    yield
    log.verbose = 1


def hd_rig(n=200, defer=False, **kw):
    return Rig([(0, 0, "hd", disk(n, **kw))], defer=defer)


def cd_rig(n_blocks=100, defer=False):
    return Rig([(1, 0, "cd", disk(n_blocks * 4, cdrom=True, readonly=True))], defer=defer)


def word(data, w):
    return data[2 * w] | (data[2 * w + 1] << 8)


def test_identify_sizes_and_features():
    # ATA-6 8.15: words 60-61 LBA28 capacity (capped), 100-103 LBA48; 83 bit 10 LBA48,
    # bits 12-13 FLUSH CACHE (EXT); 49 bits 8-9 DMA and LBA; 63 MWDMA0-2.
    n = (1 << 28) + 12345  # beyond LBA28's reach
    r = Rig([(0, 0, "hd", MemoryDisk(bytearray(0), max_sectors=2048))])
    r.disks[(0, 0)].sectors = n
    r.select(0, 0)
    r.outb(0, 7, 0xEC)
    assert r.irq(0) == 1 and r.altstatus(0) == 0x58
    d = r.pio_in(0, 512)
    assert r.inb(0, 7) == 0x50 and r.irq(0) == 0
    assert word(d, 60) | (word(d, 61) << 16) == 0x0FFFFFFF
    assert sum(word(d, 100 + i) << (16 * i) for i in range(4)) == n
    assert word(d, 83) & 0x3400 == 0x3400 and word(d, 49) & 0x300 == 0x300
    assert word(d, 63) & 7 == 7 and word(d, 47) == 0x8010
    assert bytes(d[54:58]) == b"EQUM"  # "QEMU HARDDISK", two characters a word, swapped


def test_set_features_transfer_mode_shows_in_identify():
    # ATA-6 8.37.10: SET FEATURES 03h, MWDMA2 = 0x22; word 63 bit 10 selected.
    r = hd_rig()
    r.select(0, 0)
    r.outb(0, 1, 0x03)
    r.outb(0, 2, 0x22)
    r.outb(0, 7, 0xEF)
    assert r.inb(0, 7) == 0x50
    r.outb(0, 7, 0xEC)
    d = r.pio_in(0, 512)
    assert word(d, 63) == 0x0407 and word(d, 88) & 0xFF00 == 0
    r.outb(0, 1, 0x03)
    r.outb(0, 2, 0x47)  # UDMA7 does not exist
    r.outb(0, 7, 0xEF)
    assert r.inb(0, 7) == 0x41 and r.inb(0, 1) == 0x04


@pytest.mark.parametrize("defer", [False, True])
def test_pio_read_write_sectors(defer):
    # ATA-6 9.7/9.8: READ SECTORS interrupts per block, the last block's read
    # ends the command without one; WRITE SECTORS' first DRQ has no interrupt.
    r = hd_rig(defer=defer)
    r.taskfile(0, 0, 10, 3)
    r.outb(0, 7, 0x20)
    r.run_deferred()
    for i in range(3):
        assert r.irq(0) == 1
        assert r.inb(0, 7) == 0x58
        blk = r.pio_in(0, 512)
        assert int.from_bytes(blk[:8], "little") == 10 + i
        r.run_deferred()
    assert r.irq(0) == 0 and r.inb(0, 7) == 0x50
    r.taskfile(0, 0, 50, 2)
    r.outb(0, 7, 0x30)
    assert r.irq(0) == 0 and r.altstatus(0) == 0x58
    r.pio_out(0, b"\x11" * 512)
    r.run_deferred()
    assert r.irq(0) == 1 and r.inb(0, 7) == 0x58
    r.pio_out(0, b"\x22" * 512)
    r.run_deferred()
    assert r.irq(0) == 1 and r.inb(0, 7) == 0x50
    data = r.disks[(0, 0)].data
    assert data[50 * 512:51 * 512] == b"\x11" * 512 and data[51 * 512:52 * 512] == b"\x22" * 512


def test_read_write_multiple():
    # ATA-6 8.40 SET MULTIPLE MODE 4, then READ MULTIPLE moves 4 sectors a DRQ block.
    r = hd_rig()
    r.select(0, 0)
    r.outb(0, 2, 4)
    r.outb(0, 7, 0xC6)
    assert r.inb(0, 7) == 0x50
    r.taskfile(0, 0, 20, 6)
    r.outb(0, 7, 0xC4)
    first = r.pio_in(0, 4 * 512)
    assert [int.from_bytes(first[i * 512:i * 512 + 8], "little") for i in range(4)] == [20, 21,
                                                                                        22, 23]
    assert r.inb(0, 7) == 0x58
    rest = r.pio_in(0, 2 * 512)
    assert int.from_bytes(rest[512:520], "little") == 25 and r.inb(0, 7) == 0x50
    r.taskfile(0, 0, 30, 5)
    r.outb(0, 7, 0xC5)
    r.pio_out(0, b"\x33" * 2048)
    assert r.inb(0, 7) == 0x58
    r.pio_out(0, b"\x44" * 512)
    assert r.inb(0, 7) == 0x50
    data = r.disks[(0, 0)].data
    assert data[30 * 512:34 * 512] == b"\x33" * 2048 and data[34 * 512:35 * 512] == b"\x44" * 512
    # SET MULTIPLE with a count that is not a power of two is aborted (ATA-6 8.40).
    r.outb(0, 2, 3)
    r.outb(0, 7, 0xC6)
    assert r.inb(0, 7) == 0x41 and r.inb(0, 1) == 0x04


def test_lba48_registers_and_range():
    # ATA-6 6.20: the HOB bytes; READ SECTORS EXT at a 48-bit address; past the end: IDNF.
    big = 1 << 29
    r = Rig([(0, 0, "hd", MemoryDisk(bytearray(0)))])
    d = r.disks[(0, 0)]
    d.sectors = big
    seen = []

    def submit(op, sector, views, done):
        seen.append((op, sector, sum(len(v) for v in views)))
        done(block.OK)

    d.submit = submit
    lba = big - 2
    r.taskfile(0, 0, lba, 2, lba48=True)
    r.outb(0, 7, 0x24)
    r.pio_in(0, 512)
    r.pio_in(0, 512)
    assert seen[0] == (block.READ, lba, 512) and seen[1] == (block.READ, lba + 1, 512)
    assert r.inb(0, 7) == 0x50
    r.ctl(0, 0x80)  # HOB: the high-order bytes read back
    assert (r.inb(0, 3), r.inb(0, 4)) == ((lba + 2) >> 24 & 0xFF, (lba + 2) >> 32 & 0xFF)
    r.ctl(0, 0)
    r.taskfile(0, 0, big - 1, 2, lba48=True)
    r.outb(0, 7, 0x24)
    assert r.inb(0, 7) == 0x41 and r.inb(0, 1) == 0x04
    assert len(seen) == 2  # nothing went to the disk


@pytest.mark.parametrize("defer", [False, True])
def test_dma_read_write(defer):
    # PIIX3 2.7: BMISX interrupt set, active cleared when the PRDs match the transfer.
    r = hd_rig(defer=defer)
    bm, st = r.dma(0, 0, 0xC8, 4, 3, 0x1000, [(0x20000, 1024, False), (0x30100, 512, True)],
                   True)
    assert (bm, st) == (0x04, 0x50)
    assert int.from_bytes(r.mem.ram[0x20200:0x20208], "little") == 5
    assert int.from_bytes(r.mem.ram[0x30100:0x30108], "little") == 6
    r.mem.ram[0x40000:0x40400] = b"\x5A" * 1024
    bm, st = r.dma(0, 0, 0x35, 70, 2, 0x1000, [(0x40000, 1024, True)], False, lba48=True)
    assert (bm, st) == (0x04, 0x50)
    assert r.disks[(0, 0)].data[70 * 512:72 * 512] == b"\x5A" * 1024
    assert not r.mem.unreleased()


def test_dma_prd_off_the_sector_grid():
    # PRD lengths are any even byte count (PIIX3 2.7.3): 100 + 924 bytes make 2 sectors.
    r = hd_rig()
    bm, st = r.dma(0, 0, 0xC8, 8, 2, 0x1000, [(0x20000, 100, False), (0x28000, 924, True)], True)
    assert (bm, st) == (0x04, 0x50)
    got = bytes(r.mem.ram[0x20000:0x20064]) + bytes(r.mem.ram[0x28000:0x28000 + 924])
    assert got == bytes(r.disks[(0, 0)].data[8 * 512:10 * 512])


def test_dma_prd_longer_than_transfer_stays_active():
    # QEMU's stay_active: PRDs describing more than the drive moves leave Active set.
    r = hd_rig()
    bm, st = r.dma(0, 0, 0xC8, 0, 1, 0x1000, [(0x20000, 4096, True)], True)
    assert bm == 0x05 and st == 0x50


def test_dma_bad_prd_tables_are_clean_errors():
    # Bad input: a table without an end mark (QEMU stops after a page), entries
    # outside RAM: an ATA error with an interrupt, a logged guest error, and the
    # next command works.
    r = hd_rig()
    table = [(0x20000 + 512 * i, 2, False) for i in range(512)]  # 512 x 2 bytes, no EOT
    bm, st = r.dma(0, 0, 0xC8, 0, 4, 0x1000, table, True)
    assert st == 0x41 and r.inb(0, 1) & 0x04 and bm & 0x01 == 0
    assert log.count("guest_error") >= 1
    bm, st = r.dma(0, 0, 0xC8, 0, 1, 0x1000, [(0xFFFF0000, 512, True)], True)
    assert st == 0x41 and bm & 0x02  # master abort: BMISX error
    r.bm_w(0, 2, 1, 0x06)
    assert r.bm_r(0, 2) == 0
    bm, st = r.dma(0, 0, 0xC8, 1, 1, 0x3FFFFC, [], True)  # table off RAM's end
    assert st == 0x41
    bm, st = r.dma(0, 0, 0xC8, 9, 1, 0x1000, [(0x20000, 512, True)], True)
    assert (bm, st) == (0x04, 0x50)
    assert int.from_bytes(r.mem.ram[0x20000:0x20008], "little") == 9
    assert not r.mem.unreleased()


def test_disk_errors_become_ata_errors():
    # A backend error is never a silent success: EIO on a read is UNC, on a write ABRT.
    r = hd_rig()
    r.disks[(0, 0)].fail = block.EIO
    r.taskfile(0, 0, 0, 1)
    r.outb(0, 7, 0x20)
    assert r.inb(0, 7) == 0x41 and r.inb(0, 1) == 0x40
    bm, st = r.dma(0, 0, 0xCA, 0, 1, 0x1000, [(0x20000, 512, True)], False)
    assert st == 0x41 and r.inb(0, 1) == 0x04
    r.select(0, 0)
    r.outb(0, 7, 0xE7)  # FLUSH CACHE
    assert r.inb(0, 7) == 0x41


def test_flush_reaches_the_disk():
    r = hd_rig()
    ops = []
    d = r.disks[(0, 0)]
    orig = d.submit
    d.submit = lambda op, s, v, done: (ops.append(op), orig(op, s, v, done))
    for cmd in (0xE7, 0xEA):
        r.select(0, 0)
        r.outb(0, 7, cmd)
        assert r.inb(0, 7) == 0x50
    assert ops == [block.FLUSH, block.FLUSH]


def test_readonly_disk_refuses_writes():
    r = hd_rig(readonly=True)
    r.taskfile(0, 0, 0, 1)
    r.outb(0, 7, 0x30)
    assert r.inb(0, 7) == 0x41 and r.inb(0, 1) == 0x04


def test_commands_in_the_wrong_state():
    # A command while DRQ is set is ignored (QEMU's ide_exec_cmd) and logged;
    # data-register reads with no transfer read 0.
    r = hd_rig()
    r.taskfile(0, 0, 0, 2)
    r.outb(0, 7, 0x20)
    r.outb(0, 7, 0xEC)
    assert log.count("guest_error") == 1
    blk = r.pio_in(0, 512)
    assert int.from_bytes(blk[:8], "little") == 0
    r.pio_in(0, 512)
    assert r.ch(0).read(0, 2) == 0 and log.count("guest_error") == 2
    r.outb(0, 7, 0x00)  # NOP: aborted
    assert r.inb(0, 7) == 0x41


def test_srst_signatures_and_absent_slave():
    # ATA-6 9.12: after SRST an ATA device shows 01/01/00/00 and DRDY, an ATAPI
    # device 01/01/14/eb and status 0; QEMU's absent slave reads status 0.
    r = Rig([(0, 0, "hd", disk(10)), (0, 1, "cd", disk(40, cdrom=True))])
    r.ctl(0, 0x04)
    assert r.altstatus(0) & 0x80
    r.ctl(0, 0x00)
    assert [r.inb(0, i) for i in (2, 3, 4, 5)] == [1, 1, 0, 0] and r.inb(0, 7) == 0x50
    r.select(0, 1, 0)
    assert [r.inb(0, i) for i in (2, 3, 4, 5)] == [1, 1, 0x14, 0xEB] and r.inb(0, 7) == 0
    # IDENTIFY DEVICE to the ATAPI drive aborts, leaving the signature.
    r.outb(0, 7, 0xEC)
    assert r.inb(0, 7) == 0x41 and r.inb(0, 5) == 0xEB
    r2 = hd_rig()
    r2.select(0, 1, 0)
    assert r2.inb(0, 7) == 0 and r2.inb(0, 1) == 0
    r2.outb(0, 2, 0x55)
    assert r2.inb(0, 2) == 0x55  # the absent slave latches task-file writes
    r2.outb(0, 7, 0xEC)  # ignored: no interrupt
    assert r2.irq(0) == 0
    empty = Rig([])
    assert empty.inb(1, 7) == 0 and empty.inb(1, 2) == 0


def test_nien_masks_the_interrupt():
    r = hd_rig()
    r.ctl(0, 0x02)
    r.select(0, 0)
    r.outb(0, 7, 0xE5)  # CHECK POWER MODE
    assert r.irq(0) == 0 and r.inb(0, 2) == 0xFF


# --- ATAPI ---------------------------------------------------------------------


def test_atapi_identify_and_inquiry():
    r = cd_rig()
    r.select(1, 0, 0)
    r.outb(1, 7, 0xA1)
    d = r.pio_in(1, 512)
    assert word(d, 0) == 0x85C0 and word(d, 49) & 0x100
    data, st, err = r.packet_in(1, 0, [0x12, 0, 0, 0, 36])
    assert st == 0x50 and data[0] == 5 and data[1] == 0x80 and data[8:16] == b"QEMU    "
    assert r.inb(1, 2) == 3  # interrupt reason: command complete
    data, st, err = r.packet_in(1, 0, [0x12, 0, 0, 0, 5])  # allocation length cuts it
    assert len(data) == 5


def test_atapi_read_capacity_and_read_pio():
    r = cd_rig(50, defer=True)
    data, st, _ = r.packet_in(1, 0, [0x25])
    assert int.from_bytes(data[:4], "big") == 49 and int.from_bytes(data[4:], "big") == 2048
    # READ(10) of 3 blocks with a byte count limit of 3000: DRQ blocks cut mid-sector.
    data, st, _ = r.packet_in(1, 0, [0x28, 0, 0, 0, 0, 7, 0, 0, 3], bcl=3000)
    src = r.disks[(1, 0)].data
    assert st == 0x50 and data == bytes(src[7 * 2048:10 * 2048])
    data, st, _ = r.packet_in(1, 0, [0xA8, 0, 0, 0, 0, 48, 0, 0, 0, 2])
    assert data == bytes(src[48 * 2048:50 * 2048])


def test_atapi_read_past_the_end_and_unknown_opcode():
    r = cd_rig(50)
    data, st, err = r.packet_in(1, 0, [0x28, 0, 0, 0, 0, 49, 0, 0, 2])
    assert st & 1 and err >> 4 == 5 and data == b""
    sense, st, _ = r.packet_in(1, 0, [0x03, 0, 0, 0, 18])
    assert (sense[2], sense[12]) == (5, 0x21)
    data, st, err = r.packet_in(1, 0, [0xFF])
    assert st & 1 and err >> 4 == 5
    sense, _, _ = r.packet_in(1, 0, [0x03, 0, 0, 0, 18])
    assert sense[12] == 0x20


def test_atapi_dma_read():
    r = cd_rig(20)
    r.prd(0x1000, [(0x50000, 4096, True)])
    r.bm_w(1, 4, 4, 0x1000)
    r.bm_w(1, 0, 1, 0x08)
    r.packet(1, 0, [0x28, 0, 0, 0, 0, 3, 0, 0, 2], dma=True)
    r.bm_w(1, 0, 1, 0x09)
    assert r.bm_r(1, 2) == 0x04 and r.inb(1, 7) == 0x50
    assert bytes(r.mem.ram[0x50000:0x51000]) == bytes(r.disks[(1, 0)].data[3 * 2048:5 * 2048])
    # A reply buffer by DMA (libata sends 96-byte INQUIRYs this way): PRD longer than data.
    r.prd(0x1000, [(0x60000, 96, True)])
    r.bm_w(1, 0, 1, 0x08)
    r.packet(1, 0, [0x12, 0, 0, 0, 96], dma=True)
    r.bm_w(1, 0, 1, 0x09)
    assert r.bm_r(1, 2) == 0x05 and r.mem.ram[0x60000] == 5


def test_media_change_unit_attention_and_event():
    # SPC-3 5.8.7: after a change, the next TUR fails with UNIT ATTENTION 28h;
    # MMC-3 6.6: GESN reports new media (2) once.
    r = cd_rig(20)
    assert r.packet_in(1, 0, [0x00])[1] == 0x50
    d = r.disks[(1, 0)]
    d.change_medium(None)
    _, st, err = r.packet_in(1, 0, [0x00])
    assert st & 1 and err >> 4 == 6
    sense, _, _ = r.packet_in(1, 0, [0x03, 0, 0, 0, 18])
    assert (sense[2], sense[12]) == (6, 0x28)
    _, st, err = r.packet_in(1, 0, [0x00])
    assert st & 1 and err >> 4 == 2  # NOT READY: no medium
    ev, _, _ = r.packet_in(1, 0, [0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8])
    assert (ev[2], ev[4], ev[5]) == (4, 3, 0)  # media removal, no medium
    d.change_medium(bytearray(b"\x77" * 2048 * 30))
    ev, _, _ = r.packet_in(1, 0, [0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8])  # GESN passes a UA
    assert (ev[4], ev[5]) == (2, 2)
    ev, _, _ = r.packet_in(1, 0, [0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8])
    assert ev[4] == 0
    assert r.packet_in(1, 0, [0x00])[2] >> 4 == 6  # the attention stays until sensed
    r.packet_in(1, 0, [0x03, 0, 0, 0, 18])
    cap, _, _ = r.packet_in(1, 0, [0x25])
    assert int.from_bytes(cap[:4], "big") == 29
    data, st, _ = r.packet_in(1, 0, [0x28, 0, 0, 0, 0, 0, 0, 0, 1])
    assert data == b"\x77" * 2048


def test_atapi_toc_configuration_mode_sense_lock():
    r = cd_rig(1000)
    toc, st, _ = r.packet_in(1, 0, [0x43, 0, 0, 0, 0, 0, 0, 0, 0xFF])
    assert toc[2:4] == b"\x01\x01" and toc[6] == 1 and toc[14] == 0xAA
    assert int.from_bytes(toc[16:20], "big") == 1000
    cfg, _, _ = r.packet_in(1, 0, [0x46, 0, 0, 0, 0, 0, 0, 0x01, 0])
    assert int.from_bytes(cfg[6:8], "big") == 0x0008  # CD-ROM profile
    ms, _, _ = r.packet_in(1, 0, [0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 0xFF])
    assert ms[8] == 0x2A
    assert r.packet_in(1, 0, [0x1E, 0, 0, 0, 1])[1] == 0x50  # PREVENT
    _, st, err = r.packet_in(1, 0, [0x1B, 0, 0, 0, 0x02])  # eject refused while locked
    assert st & 1 and err >> 4 == 5
    r.packet_in(1, 0, [0x1E, 0, 0, 0, 0])
    assert r.packet_in(1, 0, [0x1B, 0, 0, 0, 0x02])[1] == 0x50
    assert r.packet_in(1, 0, [0x00])[2] >> 4 == 2  # tray open: NOT READY
    assert r.packet_in(1, 0, [0x1B, 0, 0, 0, 0x03])[1] == 0x50  # load
    assert r.packet_in(1, 0, [0x00])[1] == 0x50


def test_reset_during_dma_releases_guest_memory():
    # A software reset while a DMA read is at the disk: the completion is
    # dropped, the pinned guest memory released (no mapcache lock leaks), and
    # the drive serves the next command.
    r = hd_rig(defer=True)
    r.prd(0x1000, [(0x20000, 1024, True)])
    r.bm_w(0, 4, 4, 0x1000)
    r.bm_w(0, 0, 1, 0x08)
    r.taskfile(0, 0, 4, 2)
    r.outb(0, 7, 0xC8)
    r.bm_w(0, 0, 1, 0x09)
    assert r.queue and r.mem.unreleased()
    r.ctl(0, 0x04)
    r.ctl(0, 0x00)
    r.run_deferred()
    assert not r.mem.unreleased()
    assert r.inb(0, 7) == 0x50
    bm, st = r.dma(0, 0, 0xC8, 6, 1, 0x1000, [(0x30000, 512, True)], True)
    assert st == 0x50 and int.from_bytes(r.mem.ram[0x30000:0x30008], "little") == 6


def test_dma_splits_at_the_disks_max_sectors():
    # stubdm/block.py: one submit takes at most disk.max_sectors; a 64-sector
    # READ DMA on a disk taking 16 becomes four requests, in order.
    r = hd_rig()
    d = r.disks[(0, 0)]
    d.max_sectors = 16
    sizes = []
    orig = d.submit
    d.submit = lambda op, s, v, done: (sizes.append((s, sum(len(x) for x in v))),
                                       orig(op, s, v, done))
    bm, st = r.dma(0, 0, 0xC8, 100, 64, 0x1000, [(0x40000, 64 * 512, True)], True)
    assert (bm, st) == (0x04, 0x50)
    assert sizes == [(100, 8192), (116, 8192), (132, 8192), (148, 8192)]
    assert bytes(r.mem.ram[0x40000:0x48000]) == bytes(d.data[100 * 512:164 * 512])
