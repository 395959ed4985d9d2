# The PIIX3 IDE on its compatibility ports, driven by host_sim's scripted
# guest through real ioreqs to the device model in its own process, with
# FileDisk images on the host: what Linux's ata_piix does at probe and for
# I/O, and bad input (DESIGN.md section 4; issue 11 item 1).
import hashlib
import os

import pytest

from host_sim.scripted import Session
from tests.ide_guest import BUF, IdeGuest

GIB = 1 << 30
BIG = 130 * GIB  # beyond LBA28's 128 GiB


def pattern(n_sectors, seed):
    out = bytearray()
    for i in range(n_sectors):
        out += hashlib.sha256(b"%d/%d" % (seed, i)).digest() * 16
    return bytes(out)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("ide")
    hd = d / "disk.img"
    with open(hd, "wb") as f:
        f.write(pattern(256, 1))
        f.truncate(BIG)  # sparse
    cd = d / "cd.iso"
    cd.write_bytes(pattern(4 * 64, 2))
    cd2 = d / "cd2.iso"
    cd2.write_bytes(pattern(4 * 32, 3))
    return str(hd), str(cd), str(cd2)


@pytest.fixture(scope="module")
def session(images, dm_runtime):
    hd, cd, _ = images
    args = ["-drive", "file=%s,if=ide,index=0,media=disk,format=raw,cache=writeback" % hd,
            "-drive", "if=none,readonly=on,id=ide-5632,file=%s,format=raw" % cd,
            "-device", "ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0"]
    with Session(dm_args=args, ram_mib=64, runtime=dm_runtime) as s:
        yield s


def test_pci_function_and_identify(session):
    g = session.guest
    assert g.pci_read(1, 1, 0) == 0x70108086
    assert g.pci_read(1, 1, 8) >> 8 == 0x010180  # IDE, compatibility mode, bus master
    ide = IdeGuest(g)
    d = ide.identify(0, 0)
    words = [int.from_bytes(d[2 * i:2 * i + 2], "little") for i in range(256)]
    assert sum(words[100 + i] << (16 * i) for i in range(4)) == BIG // 512
    assert words[60] | (words[61] << 16) == 0x0FFFFFFF
    assert words[83] & (1 << 10)  # LBA48
    assert g.get_irq(14) == 1
    assert ide.inb(0, 7) == 0x50 and g.get_irq(14) == 0  # a status read acknowledges it
    p = ide.identify(1, 0, packet=True)
    assert p[0:2] == b"\xc0\x85" and d[54:58] == b"EQUM"


def test_pio_and_dma_reads_match_the_image(session, images):
    ide = IdeGuest(session.guest)
    want = pattern(256, 1)
    data, st = ide.read_pio(0, 0, 3, 4)
    assert st == 0x50 and data == want[3 * 512:7 * 512]
    # DMA: 3 PRDs, one crossing a 64 KiB boundary, one not a sector multiple.
    ents = [(BUF, 1000, False), (BUF + 0xFFF8, 24, False), (BUF + 0x30000, 64 * 512 - 1024, True)]
    bms, st, _, level = ide.dma(0, 0, 0xC8, 100, 64, ents, True,
                                irq=lambda: session.guest.get_irq(14))
    assert (bms, st, level) == (0x04, 0x50, 1)
    g = session.guest
    got = g.memread(BUF, 1000) + g.memread(BUF + 0xFFF8, 24) + g.memread(BUF + 0x30000,
                                                                            64 * 512 - 1024)
    assert got == want[100 * 512:164 * 512]


def test_lba48_dma_write_beyond_128gib_is_in_the_image(session, images):
    ide = IdeGuest(session.guest)
    g = session.guest
    lba = BIG // 512 - 40
    payload = pattern(16, 9)
    g.memwrite(BUF, payload)
    bms, st, _, _ = ide.dma(0, 0, 0x35, lba, 16, [(BUF, len(payload), True)], False, lba48=True)
    assert (bms, st) == (0x04, 0x50)
    ide.outb(0, 6, 0x40)
    ide.outb(0, 7, 0xEA)  # FLUSH CACHE EXT
    assert ide.wait(0) == 0x50
    with open(images[0], "rb") as f:
        f.seek(lba * 512)
        assert f.read(len(payload)) == payload
    # PIO write at the last sector, read back by PIO EXT.
    st = ide.write_pio(0, 0, BIG // 512 - 1, b"\xEE" * 512, lba48=True)
    assert st == 0x50
    data, st = ide.read_pio(0, 0, BIG // 512 - 1, 1, lba48=True)
    assert data == b"\xEE" * 512


def test_bad_input_is_a_clean_error_and_the_model_keeps_serving(session):
    ide = IdeGuest(session.guest)
    g = session.guest
    # Past the end of the disk.
    data, st = ide.read_pio(0, 0, BIG // 512 - 1, 2, lba48=True)
    assert st == 0x41 and ide.inb(0, 1) == 0x04
    # A PRD table with no end marker, too short for the transfer.
    ide.prd([(BUF + 512 * i, 2, False) for i in range(512)])
    bms, st, err, _ = ide.dma(0, 0, 0xC8, 0, 8, None, True)
    assert st & 1 and err & 0x04 and not bms & 0x01
    # A PRD pointing outside guest RAM (64 MiB here): a master abort.
    bms, st, err, _ = ide.dma(0, 0, 0xC8, 0, 1, [(0xF0000000, 512, True)], True)
    assert st & 1 and bms & 0x02
    # A command while DRQ is set is ignored.
    ide.taskfile(0, 0, 0, 1)
    ide.outb(0, 7, 0x20)
    ide.outb(0, 7, 0xC8)
    data = ide.pio_in(0, 512)
    assert data == pattern(1, 1) and ide.inb(0, 7) == 0x50
    log = session.dm_messages()
    assert "guest error" in log and "PRD" in log
    data, st = ide.read_pio(0, 0, 5, 1)
    assert st == 0x50 and data == pattern(6, 1)[5 * 512:]


def test_atapi_reads(session, images):
    ide = IdeGuest(session.guest)
    cd = open(images[1], "rb").read()
    for _ in range(3):  # power-on attention, if any, is sensed away
        data, st, err, _ = ide.packet(1, 0, [0x00])
        if not st & 1:
            break
        ide.packet(1, 0, [0x03, 0, 0, 0, 18])
    assert st == 0x50
    cap, st, _, _ = ide.packet(1, 0, [0x25])
    assert int.from_bytes(cap[:4], "big") == len(cd) // 2048 - 1
    data, st, _, ir = ide.packet(1, 0, [0x28, 0, 0, 0, 0, 5, 0, 0, 3])
    assert st == 0x50 and ir == 3 and data == cd[5 * 2048:8 * 2048]
    data, st, _, _ = ide.packet(1, 0, [0x28, 0, 0, 0, 0, 9, 0, 0, 4], dma=True,
                                entries=[(BUF, 8192, True)])
    assert st == 0x50 and session.guest.memread(BUF, 8192) == cd[9 * 2048:13 * 2048]
    # Past the end: ILLEGAL REQUEST, LBA out of range.
    _, st, err, _ = ide.packet(1, 0, [0x28, 0, 0, 0, 0, 63, 0, 0, 2])
    assert st & 1 and err >> 4 == 5
    sense, _, _, _ = ide.packet(1, 0, [0x03, 0, 0, 0, 18])
    assert sense[12] == 0x21
