# The ICH9 AHCI model (stubdm/devices/ahci.py) driven as Linux's libahci
# drives it: HBA and port registers, command lists and FIS receive areas in
# guest memory, ATA commands from H2D FISes, NCQ with many tags in flight
# completing out of order, ATAPI behind a port, and the bad input a hostile
# guest can give. Sections are AHCI 1.3's unless named otherwise.
import struct

import pytest

from stubdm import block, log
from stubdm.devices import ahci

from tests.devices.ahci_helpers import BUF, Rig, disk, h2d


@pytest.fixture(autouse=True)
def quiet():
    log.verbose = 0
    log.reset_counts()
    yield
    log.verbose = 1


def word(data, w):
    return data[2 * w] | (data[2 * w + 1] << 8)


def hd(n=4096, defer=False, **kw):
    return Rig([disk(n, **kw)], defer=defer)


def test_pci_identity_and_hba_registers():
    r = hd()
    f = r.hba
    assert f.config_read(0, 4) == 0x29228086
    assert f.config_read(0x08, 4) >> 8 == 0x010601 and f.config_read(0x08, 1) == 2
    assert f.config_read(0x3D, 1) == 1  # INTA
    cap = r.r(0x00)
    assert cap & 0x1F == 5 and (cap >> 8) & 0x1F == 31  # six ports, 32 slots (3.1.1)
    assert cap & (1 << 30) and cap & (1 << 18) and cap & (1 << 31)  # SNCQ, SAM, S64A
    assert r.r(0x04) == 0x80000000  # GHC.AE reads one on an AHCI-only HBA
    assert r.r(0x0C) == 0x3F and r.r(0x10) == 0x00010000
    # A port with a disk: link up after reset (3.3.10); its signature FIS reaches
    # PxSIG and PxTFD once FRE gives it a place (QEMU's ahci_init_d2h).
    assert r.pr(0, 0x28) == 0x113 and r.pr(0, 0x24) == 0xFFFFFFFF and r.pr(0, 0x20) == 0x7F
    r.start(0)
    assert r.pr(0, 0x24) == 0x101 and r.pr(0, 0x20) & 0xFF == 0x30  # DSC|DF, as QEMU
    # An empty port: no device detected.
    assert r.pr(1, 0x28) == 0 and r.pr(1, 0x24) == 0xFFFFFFFF


def test_port_start_stop_and_signature_fis():
    r = hd()
    r.start(0, irq=False)
    cmd = r.pr(0, 0x18)
    assert cmd & 0x4011 == 0x4011 and cmd & 0x8000  # FRE, FR, ST, CR
    d2h = r.rfis(0, 0x40, 20)
    assert d2h[0] == 0x34 and d2h[2] == 0x30  # the signature FIS (status) posted on FRE
    assert d2h[12] == 1 and d2h[4] == 1
    r.pw(0, 0x18, cmd & ~1)
    assert not r.pr(0, 0x18) & 0x8001  # CR follows ST
    r.w(0x04, 0x80000001)  # GHC.HR
    assert r.r(0x04) == 0x80000000 and r.pr(0, 0x00) == 0 and r.pr(0, 0x18) & 0x11 == 0


def test_identify_through_h2d_fis_with_ncq_words():
    r = hd(5000)
    r.start(0)
    r.build(0, 0, h2d(0xEC, device=0), [(BUF, 512)])
    r.issue(0, 1)
    assert r.pr(0, 0x38) == 0 and r.prdbc(0, 0) == 512
    ps = r.rfis(0, 0x20, 20)
    assert ps[0] == 0x5F and ps[15] == 0x58  # PIO setup, E_Status as QEMU writes it
    assert r.pr(0, 0x10) & 0x3 == 0x3  # PSS and DHRS
    assert r.r(0x08) == 1 and r.line == 1
    d = r.buf(BUF, 512)
    assert sum(word(d, 100 + i) << (16 * i) for i in range(4)) == 5000
    assert word(d, 75) == 31 and word(d, 76) & 0x100  # NCQ, depth 32 (libata's test)
    r.pw(0, 0x10, 0xFFFFFFFF)
    assert r.line == 1  # HBA IS still set
    r.w(0x08, 1)
    assert r.line == 0 and r.r(0x08) == 0


def test_interrupts_need_ghc_ie_and_pxie():
    r = hd()
    r.start(0, irq=False)
    r.build(0, 0, h2d(0xEC, device=0), [(BUF, 512)])
    r.issue(0, 1)
    assert r.pr(0, 0x10) & 1 and r.line == 0
    r.pw(0, 0x14, 1)
    assert r.line == 0  # GHC.IE still clear
    r.w(0x04, 0x80000002)
    assert r.line == 1


@pytest.mark.parametrize("lba48", [False, True])
def test_dma_read_and_write(lba48):
    r = hd(4096)
    r.start(0)
    lba = 100
    rd, wr = (0x25, 0x35) if lba48 else (0xC8, 0xCA)
    # Two PRDs, the second crossing the helper's 64 KiB bucket edge.
    prds = [(BUF + 0xF800, 0x1000), (BUF + 0x20000, 0x1000)]
    r.build(0, 3, h2d(rd, lba, 16), prds)
    r.issue(0, 1 << 3)
    assert r.pr(0, 0x38) == 0 and r.prdbc(0, 3) == 8192 and r.pr(0, 0x20) & 0xFF == 0x50
    got = r.buf(BUF + 0xF800, 0x1000) + r.buf(BUF + 0x20000, 0x1000)
    assert got == bytes(r.disks[0].data[lba * 512:(lba + 16) * 512])
    data = bytes((i * 7) & 0xFF for i in range(8192))
    r.mem.write(BUF + 0x100000, data)
    r.build(0, 4, h2d(wr, 2000, 16), [(BUF + 0x100000, 8192)], write=True)
    r.issue(0, 1 << 4)
    assert r.pr(0, 0x38) == 0 and r.pr(0, 0x10) & 0x40000000 == 0
    assert bytes(r.disks[0].data[2000 * 512:2016 * 512]) == data
    assert not r.mem.unreleased()


def test_pio_read_multiple_sectors():
    r = hd(300)
    r.start(0)
    r.build(0, 0, h2d(0x24, 10, 5), [(BUF, 1024), (BUF + 0x3000, 2048)])
    r.issue(0, 1)
    assert r.pr(0, 0x38) == 0 and r.prdbc(0, 0) == 2560
    got = r.buf(BUF, 1024) + r.buf(BUF + 0x3000, 1536)
    assert got == bytes(r.disks[0].data[10 * 512:15 * 512])


def ncq(r, slot, lba, n, addr, write=False, fua=False):
    r.build(0, slot, h2d(0x61 if write else 0x60, lba, slot << 3, features=n,
                         device=0x40 | (0x80 if fua else 0)), [(addr, n * 512)], write=write)


def test_ncq_many_tags_in_flight_complete_out_of_order():
    r = hd(1 << 16, defer=True)
    r.start(0)
    tags = list(range(32))
    for t in tags:
        ncq(r, t, 1000 + t * 64, 64 if t % 2 else 8, BUF + t * 0x10000)
    mask = 0xFFFFFFFF
    r.pw(0, 0x34, mask)
    r.issue(0, mask)
    # All accepted at once: CI clear, SACT set, every command at the disk.
    assert r.pr(0, 0x38) == 0 and r.pr(0, 0x34) == mask
    assert len(r.queue) == 32 and r.line == 0
    order = [31 - i for i in range(16)] + list(range(16))  # the disk answers as it likes
    r.run_deferred(order[:16])  # tags 31..16 done
    sact = r.pr(0, 0x34)
    assert sact == 0x0000FFFF
    sdb = r.rfis(0, 0x58, 8)
    assert sdb[0] == 0xA1 and r.pr(0, 0x10) & 0x8 and r.line == 1  # SDB FIS, SDBS
    r.pw(0, 0x10, 0x8)
    r.w(0x08, 1)
    r.run_deferred()
    assert r.pr(0, 0x34) == 0 and r.line == 1
    for t in tags:
        n = 64 if t % 2 else 8
        lba = 1000 + t * 64
        assert r.buf(BUF + t * 0x10000, n * 512) == bytes(
            r.disks[0].data[lba * 512:(lba + n) * 512])
    assert not r.mem.unreleased()


def test_ncq_completions_in_one_batch_report_once():
    # Completions that come before the CI write returns (a synchronous disk)
    # become one SDB FIS and one interrupt (AHCI 5.6.4.2: coalesced SActive).
    r = hd(8192)
    r.start(0)
    for t in range(8):
        ncq(r, t, t * 16, 16, BUF + t * 0x2000)
    r.pw(0, 0x34, 0xFF)
    before = len(r.levels)
    r.issue(0, 0xFF)
    assert r.pr(0, 0x34) == 0 and r.rfis(0, 0x5C, 4) == b"\xff\x00\x00\x00"
    assert r.levels[before:] == [1]


def test_ncq_write_with_fua_flushes_and_lands():
    r = hd(4096, defer=True)
    r.start(0)
    data = bytes(range(256)) * 32
    r.mem.write(BUF, data)
    ncq(r, 5, 77, 16, BUF, write=True, fua=True)
    r.pw(0, 0x34, 1 << 5)
    r.issue(0, 1 << 5)
    r.run_deferred()
    assert r.pr(0, 0x34) == 1 << 5  # the data is written, the flush not yet done
    assert len(r.queue) == 1
    r.run_deferred()
    assert r.pr(0, 0x34) == 0
    assert bytes(r.disks[0].data[77 * 512:93 * 512]) == data


def test_ncq_large_command_is_split_and_bounded_by_pinned_memory():
    r = hd(1 << 15, defer=True, max_sectors=256)  # 128 KiB a request
    r.start(0)
    ncq(r, 0, 0, 2048, BUF)  # 1 MiB: 8 requests, all in flight
    r.pw(0, 0x34, 1)
    r.issue(0, 1)
    assert len(r.queue) == 8
    r.drain()
    assert r.pr(0, 0x34) == 0 and r.buf(BUF, 1 << 20) == bytes(r.disks[0].data[0:1 << 20])


def test_ncq_backend_error_is_tfes_and_stops_until_restart():
    r = hd(4096, defer=True)
    r.start(0)
    for t in range(3):
        ncq(r, t, t * 8, 8, BUF + t * 0x1000)
    r.pw(0, 0x34, 7)
    r.issue(0, 7)
    r.disks[0].fail = None
    q = r.queue
    r.queue = []
    q[0]()  # tag 0 fine
    r.disks[0].data = r.disks[0].data  # (the failure comes from the disk's status)
    # Make tag 1's completion an I/O error, as blkfront reports a backend error.
    r.hba.ports[0].ncq_request_done(r.hba.ports[0].hba.pending and None or _req(r, 1),
                                    block.EIO)
    assert r.pr(0, 0x10) & 0x40000000  # TFES
    assert r.pr(0, 0x20) & 0x01 and (r.pr(0, 0x20) >> 8) & 0x40  # ERR, UNC
    assert r.pr(0, 0x34) & 0x6 == 0x6  # the failed and aborted tags stay in SACT
    q[1]()
    q[2]()  # late completions of aborted commands are not reported
    assert r.pr(0, 0x34) & 0x6 == 0x6
    # libahci's recovery: stop the engine, clear errors, start again; the port serves.
    r.pw(0, 0x18, r.pr(0, 0x18) & ~1)
    assert r.pr(0, 0x34) == 0 and r.pr(0, 0x38) == 0
    r.pw(0, 0x10, 0xFFFFFFFF)
    r.pw(0, 0x18, r.pr(0, 0x18) | 1)
    ncq(r, 4, 0, 8, BUF)
    r.pw(0, 0x34, 1 << 4)
    r.issue(0, 1 << 4)
    r.drain()
    assert r.pr(0, 0x34) == 0 and r.pr(0, 0x10) & 0x40000000 == 0
    assert not r.mem.unreleased()


def _req(r, slot):
    class R:
        pass

    x = R()
    x.cmd = r.hba.ports[0].ncq[slot]
    return x


def test_ncq_tag_reused_while_busy():
    r = hd(4096, defer=True)
    r.start(0)
    ncq(r, 2, 0, 8, BUF)
    r.pw(0, 0x34, 4)
    r.issue(0, 4)
    r.issue(0, 4)  # the same slot again while tag 2 is at the disk
    assert r.pr(0, 0x10) & 0x40000000 and log.count("guest_error") >= 1
    assert r.pr(0, 0x20) & 1
    r.run_deferred()  # the first one's completion changes nothing now
    assert r.pr(0, 0x34) == 4
    assert not r.mem.unreleased()


def test_ncq_tag_mismatch_and_range_errors():
    r = hd(1000)
    r.start(0)
    r.build(0, 1, h2d(0x60, 0, 3 << 3, features=8), [(BUF, 4096)])  # tag 3 from slot 1
    r.pw(0, 0x34, 2)
    r.issue(0, 2)
    assert r.pr(0, 0x10) & 0x40000000 and r.pr(0, 0x38) == 2  # stays issued (6.2.2.1)
    for lba, n in ((995, 8), ((1 << 48) - 1, 1)):
        r.pw(0, 0x18, r.pr(0, 0x18) & ~1)
        r.pw(0, 0x10, 0xFFFFFFFF)
        r.pw(0, 0x18, r.pr(0, 0x18) | 1)
        ncq(r, 0, lba, n, BUF)
        r.pw(0, 0x34, 1)
        r.issue(0, 1)
        assert r.pr(0, 0x10) & 0x40000000 and r.pr(0, 0x38) == 1
    assert r.disks[0].submitted == 0


def restart(r, port=0):
    r.pw(port, 0x18, r.pr(port, 0x18) & ~1)
    r.pw(port, 0x10, 0xFFFFFFFF)
    r.pw(port, 0x18, r.pr(port, 0x18) | 1)


def test_bad_memory_structures_are_clean_errors():
    r = hd(1000)
    r.start(0)
    # Command table outside RAM.
    hdr = struct.pack("<IIII", 5 | (1 << 16), 0, 0x7FFF0000, 0) + bytes(16)
    r.mem.write(0x10000, hdr)
    r.issue(0, 1)
    assert r.pr(0, 0x10) & 0x60000000 == 0x60000000 and r.pr(0, 0x38) == 1  # TFES, HBFS
    restart(r)
    # A PRD buffer outside RAM (DMA read).
    r.build(0, 0, h2d(0xC8, 0, 8), [(0x7FF00000, 4096)])
    r.issue(0, 1)
    assert r.pr(0, 0x10) & 0x40000000 and r.pr(0, 0x20) & 1
    restart(r)
    # A PRDT shorter than the transfer, and one with an odd byte count.
    r.build(0, 0, h2d(0xC8, 0, 8), [(BUF, 2048)])
    r.issue(0, 1)
    assert r.pr(0, 0x10) & 0x40000000
    restart(r)
    r.build(0, 0, h2d(0xC8, 0, 1), [(BUF, 511)])
    r.issue(0, 1)
    assert r.pr(0, 0x10) & 0x40000000
    restart(r)
    # Past the end of the disk.
    r.build(0, 0, h2d(0x25, 999, 2), [(BUF, 1024)])
    r.issue(0, 1)
    assert r.pr(0, 0x10) & 0x40000000 and (r.pr(0, 0x20) >> 8) & 0x04
    restart(r)
    # The command list itself outside RAM.
    r.pw(0, 0x18, r.pr(0, 0x18) & ~1)
    r.pw(0, 0x00, 0xFFFFFC00)
    r.pw(0, 0x18, r.pr(0, 0x18) | 1)
    r.issue(0, 1)
    assert r.pr(0, 0x10) & 0x40000000
    # Through it all: logged, and the port still serves.
    assert log.count("guest_error") >= 6
    r.pw(0, 0x18, r.pr(0, 0x18) & ~1)
    r.start(0)
    r.build(0, 0, h2d(0xEC, device=0), [(BUF, 512)])
    r.issue(0, 1)
    assert r.pr(0, 0x38) == 0 and r.pr(0, 0x20) & 0xFF == 0x50
    assert not r.mem.unreleased()


def test_commands_in_the_wrong_state():
    r = hd(1000)
    r.start(0)
    r.pw(0, 0x18, r.pr(0, 0x18) & ~1)
    r.issue(0, 1)  # ST clear: ignored
    assert r.pr(0, 0x38) == 0 and log.count("guest_error") == 1
    r.pw(0, 0x18, r.pr(0, 0x18) | 1)
    # No bus mastering: nothing fetched, nothing done, the command stays issued.
    r.hba.config_write(0x04, 2, 0x0002)
    r.build(0, 0, h2d(0xEC, device=0), [(BUF, 512)])
    r.issue(0, 1)
    assert r.pr(0, 0x38) == 1 and r.buf(BUF, 2) == b"\0\0"
    r.hba.config_write(0x04, 2, 0x0006)
    r.issue(0, 1)
    assert r.pr(0, 0x38) == 0
    # A command to a port without a device.
    r.start(1)
    r.build(1, 0, h2d(0xEC, device=0), [(BUF, 512)])
    r.issue(1, 1)
    assert r.pr(1, 0x10) & 0x40000000


def test_non_ncq_commands_run_one_at_a_time_in_slot_order():
    r = hd(1000, defer=True)
    r.start(0)
    for s in (1, 2):
        r.build(0, s, h2d(0xC8, s * 10, 1), [(BUF + s * 0x1000, 512)])
    r.issue(0, 6)
    assert len(r.queue) == 1 and r.pr(0, 0x38) == 6 and r.pr(0, 0x20) & 0x80
    r.run_deferred()
    assert r.pr(0, 0x38) == 4 and len(r.queue) == 1
    r.run_deferred()
    assert r.pr(0, 0x38) == 0
    for s in (1, 2):
        assert r.buf(BUF + s * 0x1000, 8) == struct.pack("<Q", s * 10 * 0x10001 + 7)


def test_flush_and_set_features():
    r = hd(1000)
    r.start(0)
    r.build(0, 0, h2d(0xEA, device=0))
    r.issue(0, 1)
    assert r.pr(0, 0x38) == 0 and r.pr(0, 0x20) & 0xFF == 0x50
    r.build(0, 0, h2d(0xEF, 0, 0x46, features=0x03, device=0))  # UDMA6: not offered
    r.issue(0, 1)
    assert r.pr(0, 0x10) & 0x40000000 and (r.pr(0, 0x20) >> 8) == 0x04


def test_comreset_and_softreset():
    r = hd(1000)
    r.start(0)
    r.pw(0, 0x2C, 1)
    r.pw(0, 0x2C, 0)  # COMRESET (sata_link_hardreset)
    assert r.pr(0, 0x28) == 0x113 and r.pr(0, 0x24) == 0x101 and r.pr(0, 0x20) & 0x80 == 0
    # libahci's softreset: SRST set (reset, clear busy), then clear.
    r.build(0, 0, h2d(0, control=4, c=False), flags=(1 << 8) | (1 << 10))
    r.issue(0, 1)
    assert r.pr(0, 0x38) == 0
    r.build(0, 0, h2d(0, control=0, c=False))
    r.issue(0, 1)
    assert r.pr(0, 0x38) == 0 and r.pr(0, 0x24) == 0x101 and r.pr(0, 0x20) & 0xFF == 0x50


def cd_rig(blocks=100, defer=False):
    data = bytearray(blocks * 2048)
    for b in range(blocks):
        data[b * 2048:b * 2048 + 4] = struct.pack("<I", b + 0xC0DE)
    return Rig([block.MemoryDisk(data, readonly=True, cdrom=True)], defer=defer)


def packet(op, *rest):
    cdb = bytearray(16)
    cdb[0] = op
    cdb[1:1 + len(rest)] = bytes(rest)
    return cdb


def test_atapi_signature_identify_packet_and_inquiry():
    r = cd_rig()
    r.start(0)
    assert r.pr(0, 0x24) == 0xEB140101 and r.pr(0, 0x20) & 0xFF == 0x70
    r.build(0, 0, h2d(0xA1, device=0), [(BUF, 512)])
    r.issue(0, 1)
    d = r.buf(BUF, 512)
    assert word(d, 0) >> 14 == 2 and (word(d, 0) >> 8) & 0x1F == 5  # ATAPI, CD-ROM
    # INQUIRY by PIO: the byte-count limit in LBA mid/high (libata sets it).
    r.build(0, 1, h2d(0xA0, 0xFFFF << 8, 0, device=0), [(BUF, 96)],
            atapi=packet(0x12, 0, 0, 0, 96))
    r.issue(0, 2)
    assert r.pr(0, 0x38) == 0 and r.prdbc(0, 1) == 36
    assert r.buf(BUF + 8, 8) == b"QEMU    " and r.buf(BUF, 1) == b"\x05"


def test_atapi_read10_by_dma_and_pio():
    r = cd_rig(100)
    r.start(0)
    cdb = packet(0x28, 0, 0, 0, 0, 7, 0, 0, 3)  # READ(10) LBA 7, 3 blocks
    r.build(0, 0, h2d(0xA0, 0, features=1, device=0), [(BUF, 6144)], atapi=cdb)
    r.issue(0, 1)
    assert r.pr(0, 0x38) == 0 and r.prdbc(0, 0) == 6144
    assert r.buf(BUF, 4) == struct.pack("<I", 7 + 0xC0DE)
    assert r.buf(BUF + 4096, 4) == struct.pack("<I", 9 + 0xC0DE)
    r.build(0, 1, h2d(0xA0, 0xFFFE << 8, device=0), [(BUF + 0x10000, 6144)], atapi=cdb)
    r.issue(0, 2)
    assert r.pr(0, 0x38) == 0 and r.buf(BUF + 0x10000, 6144) == r.buf(BUF, 6144)


def test_atapi_check_condition_is_tfes_with_sense_key():
    r = cd_rig(10)
    r.start(0)
    r.build(0, 0, h2d(0xA0, device=0), [(BUF, 2048)], atapi=packet(0x28, 0, 0, 0, 0, 50, 0, 0, 1))
    r.issue(0, 1)
    tfd = r.pr(0, 0x20)
    assert tfd & 1 and (tfd >> 12) == 5  # ILLEGAL REQUEST in error 7:4
    assert r.pr(0, 0x10) & 0x40000000
    restart(r)
    r.build(0, 0, h2d(0xA0, 0xFFFE << 8, device=0), [(BUF, 18)],
            atapi=packet(0x03, 0, 0, 0, 18))
    r.issue(0, 1)
    assert r.buf(BUF + 2, 1) == b"\x05" and r.buf(BUF + 12, 1) == b"\x21"


def test_disk_error_becomes_ata_error():
    r = hd(1000)
    r.start(0)
    r.disks[0].fail = block.EIO
    r.build(0, 0, h2d(0xC8, 0, 8), [(BUF, 4096)])
    r.issue(0, 1)
    assert r.pr(0, 0x10) & 0x40000000 and (r.pr(0, 0x20) >> 8) & 0x40  # UNC
    assert not r.mem.unreleased()


def test_stop_with_commands_in_flight_drops_their_completions():
    r = hd(4096, defer=True)
    r.start(0)
    for t in range(4):
        ncq(r, t, t * 8, 8, BUF + t * 0x1000)
    r.pw(0, 0x34, 0xF)
    r.issue(0, 0xF)
    r.pw(0, 0x18, r.pr(0, 0x18) & ~1)
    assert r.pr(0, 0x34) == 0
    r.pw(0, 0x10, 0xFFFFFFFF)
    r.run_deferred()
    assert r.pr(0, 0x10) == 0 and r.pr(0, 0x34) == 0
    assert not r.mem.unreleased()


def test_idp_window_reaches_the_abar():
    r = hd()
    r.hba.config_write(0x20, 4, 0xC040)
    r.hba.config_write(0x04, 2, 0x0007)
    idp = r.hba.bar_handler(4)
    idp.write(0x10, 4, 0x0C)
    assert idp.read(0x14, 4) == 0x3F


def test_state_is_serialisable():
    r = hd()
    r.start(0)
    s = r.hba.state()
    assert s["ports"][0]["ssts"] == 0x113 and s["ports"][0]["cmd"] & 1
    assert ahci.NUM_PORTS == len(s["ports"])


OPCODES = (0x00, 0x20, 0x24, 0x25, 0x29, 0x30, 0x34, 0x35, 0x39, 0x3D, 0x40, 0x60, 0x61, 0x70,
           0x90, 0x91, 0xA0, 0xA1, 0xC4, 0xC5, 0xC6, 0xC8, 0xCA, 0xE5, 0xE7, 0xEA, 0xEC, 0xEF)


@pytest.mark.parametrize("seed", range(4))
def test_random_commands_never_break_the_port(seed):
    # Seeded garbage in the places a guest controls: FIS bytes, header flags, PRDTs in
    # and out of RAM with odd and huge counts, slots and tags, SACT, ST toggles and
    # COMRESETs in the middle, completions in any order. After each round the port
    # still serves a plain IDENTIFY and no guest memory stays pinned.
    import random

    rnd = random.Random(seed)
    r = Rig([disk(2048, pattern=False), block.MemoryDisk(bytearray(64 * 2048), readonly=True,
                                                         cdrom=True)], defer=True)
    for port in (0, 1):
        r.start(port)
    for _round in range(150):
        port = rnd.randrange(2)
        slots = 0
        for _ in range(rnd.randrange(1, 6)):
            slot = rnd.randrange(32)
            n = rnd.choice((0, 1, 8, 255, 256, 65535))
            lba = rnd.choice((0, 5, 2040, 2047, 1 << 28, (1 << 48) - 1, rnd.randrange(4096)))
            fis = h2d(rnd.choice(OPCODES), lba, (slot << 3) if rnd.random() < 0.8 else n,
                      features=n if rnd.random() < 0.5 else rnd.randrange(1 << 16),
                      device=rnd.randrange(256), control=rnd.choice((0, 0, 4)),
                      c=rnd.random() < 0.95)
            if rnd.random() < 0.05:
                fis[0] = rnd.randrange(256)
            prds = []
            for _ in range(rnd.choice((0, 1, 1, 2, 5))):
                addr = rnd.choice((BUF + rnd.randrange(1 << 20), 0xFFFF0000, (1 << 40),
                                   len(r.mem.ram) - 256))
                cnt = rnd.choice((512, 4096, 1 << 20, 1 << 22, rnd.randrange(1, 1 << 16)))
                prds.append((addr, cnt))
            r.build(port, slot, fis, prds, write=rnd.random() < 0.3,
                    atapi=packet(rnd.choice((0x00, 0x03, 0x12, 0x25, 0x28, 0x43, 0x4A, 0x5A,
                                             0xBB, 0xFF)), *[rnd.randrange(256)
                                                            for _ in range(10)]),
                    flags=rnd.choice((0, 1 << 8, 1 << 10)))
            slots |= 1 << slot
        r.pw(port, 0x34, slots if rnd.random() < 0.7 else rnd.randrange(1 << 32))
        r.issue(port, slots)
        if rnd.random() < 0.3:
            q = list(range(len(r.queue)))
            rnd.shuffle(q)
            r.run_deferred(q[:rnd.randrange(len(q) + 1)])
        if rnd.random() < 0.1:
            r.pw(port, 0x2C, 1)
            r.pw(port, 0x2C, 0)
        if rnd.random() < 0.2:
            restart(r, port)
        if rnd.random() < 0.02:
            r.w(0x04, 0x80000001)
            for p in (0, 1):
                r.start(p)
    r.drain()
    for port in (0, 1):
        restart(r, port)
        r.pw(port, 0x34, 0)
        r.build(port, 0, h2d(0xEC if port == 0 else 0xA1, device=0), [(BUF, 512)])
        r.issue(port, 1)
        r.drain()
        assert r.pr(port, 0x38) == 0 and r.pr(port, 0x20) & 0x89 == 0, hex(r.pr(port, 0x20))
    assert not r.mem.unreleased()
