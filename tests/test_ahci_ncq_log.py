# The AHCI disk's general purpose logs (READ LOG EXT, 2Fh): after a queued command
# fails, Linux's libata EH reads the NCQ command error log (10h) to learn which tag
# failed and why; the log directory (00h) says which logs there are. Scripted
# guest through real ioreqs, on both runtimes.
import struct

import pytest

from host_sim import saverestore as sr
from host_sim.scripted import Session
from stubdm import savestate
from tests.conftest import skip_unless_runtime

ABAR = 0xFEB80000
CLB, FB, CT, BUF = 0x100000, 0x101000, 0x110000, 0x200000
P = 0x100  # port 0's registers
SECTORS = 4096


def _find(g):
    for dev in range(32):
        if g.pci_read(dev, 0, 0) == 0x29228086:
            return dev
    raise AssertionError("no ICH9 AHCI")


class Port:
    def __init__(self, g):
        self.g = g
        dev = _find(g)
        g.pci_write(dev, 0, 0x24, ABAR)
        g.pci_write(dev, 0, 0x04, 0x0006, 2)
        self.w(0x04, 0x80000000)  # AHCI enable
        self.w(P + 0x00, CLB)
        self.w(P + 0x08, FB)
        self.start()

    def r(self, off):
        return self.g.readl(ABAR + off)

    def w(self, off, v):
        self.g.writel(ABAR + off, v)

    def start(self):
        self.w(P + 0x30, 0xFFFFFFFF)  # PxSERR
        self.w(P + 0x10, 0xFFFFFFFF)  # PxIS
        self.w(P + 0x18, self.r(P + 0x18) | 0x11)  # FRE, ST

    def stop(self):
        self.w(P + 0x18, self.r(P + 0x18) & ~0x11)
        for _ in range(1000):
            if not self.r(P + 0x18) & 0xC000:  # CR, FR
                return
        raise AssertionError("the port does not stop")

    def issue(self, slot, fis, buf, nbytes, write=False, ncq=False):
        t = bytearray(0x90)
        t[0:20] = fis
        t[0x80:0x90] = struct.pack("<QII", buf, 0, nbytes - 1)
        self.g.memwrite(CT + slot * 0x100, bytes(t))
        self.g.memwrite(CLB + slot * 32, struct.pack(
            "<IIQ", 5 | (1 << 16) | (0x40 if write else 0), 0, CT + slot * 0x100) + bytes(16))
        if ncq:
            self.w(P + 0x34, 1 << slot)  # PxSACT first, as libahci
        self.w(P + 0x38, 1 << slot)
        for _ in range(2000):
            if not (self.r(P + 0x38) | self.r(P + 0x34)) & (1 << slot) \
                    or self.r(P + 0x10) & (1 << 30):  # done, or TFES
                return
        raise AssertionError("slot %d never completed" % slot)

    def read_log(self, addr, page=0, count=1):
        self.g.memwrite(BUF, b"\xAA" * 512 * count)
        self.issue(0, h2d(0x2F, lba=addr | (page << 8), count=count), BUF, 512 * count)
        return self.r(P + 0x20), self.g.memread(BUF, 512 * count)


def h2d(cmd, lba=0, count=0, features=0):
    f = bytearray(20)
    f[0], f[1], f[2], f[3] = 0x27, 0x80, cmd, features & 0xFF
    f[4], f[5], f[6], f[7] = lba & 0xFF, (lba >> 8) & 0xFF, (lba >> 16) & 0xFF, 0x40
    f[8], f[9], f[10], f[11] = (lba >> 24) & 0xFF, (lba >> 32) & 0xFF, 0, (features >> 8) & 0xFF
    f[12], f[13] = count & 0xFF, (count >> 8) & 0xFF
    return bytes(f)


def _args(img):
    return ["-device", "ahci,id=ahci0",
            "-drive", "if=none,id=ahcidisk-0,file=%s,format=raw" % img,
            "-device", "ide-hd,bus=ahci0.0,unit=0,drive=ahcidisk-0"]


def test_ncq_error_log_names_the_failed_tag(tmp_path, dm_runtime):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(SECTORS * 512))
    args = _args(img)
    with Session(dm_args=args, ram_mib=64, runtime=dm_runtime) as s:
        p = Port(s.guest)
        # IDENTIFY: the general purpose logging feature set (words 84 and 87 bit 5).
        p.issue(1, h2d(0xEC), BUF, 512)
        ident = s.guest.memread(BUF, 512)
        w = [int.from_bytes(ident[2 * i:2 * i + 2], "little") for i in range(256)]
        assert w[76] & (1 << 8) and w[84] & (1 << 5) and w[87] & (1 << 5)
        # The directory: version 1, one page of log 10h, none of 30h (Linux probes it).
        tfd, d = p.read_log(0x00)
        dw = [int.from_bytes(d[2 * i:2 * i + 2], "little") for i in range(256)]
        assert tfd & 0xFF == 0x50 and dw[0] == 1 and dw[0x10] == 1 and dw[0x30] == 0
        # No queued command has failed: NQ set, checksum right.
        tfd, e = p.read_log(0x10)
        assert tfd & 0xFF == 0x50 and e[0] & 0x80 and sum(e) & 0xFF == 0
        # A good queued read on tag 2, then one on tag 5 whose buffer is not guest RAM.
        lba = 0x123456
        p.issue(2, h2d(0x60, lba=8, count=2 << 3, features=8), BUF, 8 * 512, ncq=True)
        assert s.guest.memread(BUF, 4096) == bytes(4096) and p.r(P + 0x34) & 4 == 0
        p.issue(5, h2d(0x60, lba=lba & 0xFFF, count=5 << 3, features=16), 0xF0000000,
                16 * 512, ncq=True)
        assert p.r(P + 0x10) & (1 << 30) and p.r(P + 0x20) & 0x01  # TFES; ERR in PxTFD
        # libata's EH: stop and restart the port, then read log 10h.
        p.stop()
        p.start()
        tfd, e = p.read_log(0x10)
        assert tfd & 0xFF == 0x50
        assert e[0] == 5  # the tag, NQ clear
        assert e[2] == 0x41 and e[3] == 0x04  # the failed command's status, ABRT
        assert e[4] | (e[5] << 8) | (e[6] << 16) == lba & 0xFFF
        assert e[12] | (e[13] << 8) == 16 and e[7] == 0x40
        assert sum(e) & 0xFF == 0  # the page checksum
        # Reading it cleared it.
        tfd, e = p.read_log(0x10)
        assert e[0] & 0x80
        # Logs it doesn't have, pages past the end: ABRT, and the port serves on.
        for addr, page in ((0x30, 0), (0x10, 1), (0x00, 3)):
            tfd, _ = p.read_log(addr, page)
            assert tfd & 0x01 and (tfd >> 8) == 0x04, (addr, page, hex(tfd))
            p.stop()
            p.start()
        tfd, d = p.read_log(0x00)
        assert tfd & 0xFF == 0x50 and d[0x20] == 1


def _dm_records(path):
    """The device model's records in a saved machine (host_sim's file holds its stream)."""
    with open(path, "rb") as f:
        outer = savestate.read_records(f.read())
    return outer, savestate.read_records([r for r in outer if r[0] == "dm"][0][2]["state"])


def _fail_tag_5(p, g):
    """A queued read on tag 5 whose buffer is not guest RAM; then libata's EH restart."""
    p.issue(5, h2d(0x60, lba=0x456, count=5 << 3, features=16), 0xF0000000, 16 * 512, ncq=True)
    assert p.r(P + 0x10) & (1 << 30)  # TFES
    p.stop()
    p.start()


@pytest.mark.parametrize("saved_on,restored_on", [("cpython", "micropython"),
                                                  ("micropython", "cpython")])
def test_ncq_error_log_survives_save_restore(tmp_path, saved_on, restored_on):
    """A save between the failure and libata's READ LOG EXT keeps log 10h (record
    version 2); the restored disk answers it as the saved one would have, once."""
    skip_unless_runtime(saved_on)
    skip_unless_runtime(restored_on)
    img = tmp_path / "d.img"
    img.write_bytes(bytes(SECTORS * 512))
    path = str(tmp_path / "g.sav")
    with sr.start(_args(img), runtime=saved_on) as s:
        p = Port(s.guest)
        _fail_tag_5(p, s.guest)
        sr.save(s, path, resume=False)
    ahci = [r for r in _dm_records(path)[1] if "ghc" in r[2]]
    assert len(ahci) == 1 and ahci[0][1] == 2
    with sr.restore(path, runtime=restored_on) as s2:
        p = Port.__new__(Port)
        p.g = s2.guest
        tfd, e = p.read_log(0x10)
        assert tfd & 0xFF == 0x50 and e[0] == 5 and e[3] == 0x04, (hex(tfd), e[:16])
        assert e[4] | (e[5] << 8) | (e[6] << 16) == 0x456 and sum(e) & 0xFF == 0
        tfd, e = p.read_log(0x10)
        assert e[0] & 0x80  # read once, cleared


def test_version_1_ahci_record_loads_with_no_error_log(tmp_path):
    """A stream from before the log was saved (AHCI record version 1, no ncq_error
    field) still loads; the disk then has no failed command to report (NQ)."""
    img = tmp_path / "d.img"
    img.write_bytes(bytes(SECTORS * 512))
    path = str(tmp_path / "g.sav")
    with sr.start(_args(img)) as s:
        p = Port(s.guest)
        _fail_tag_5(p, s.guest)
        sr.save(s, path, resume=False)
    outer, records = _dm_records(path)
    old = []
    for name, version, fields in records:
        if "ghc" in fields:
            version = 1
            for port in fields["ports"]:
                if port["drive"] is not None:
                    assert port["drive"]["ncq_error"][0] == 5
                    del port["drive"]["ncq_error"]
        old.append((name, version, fields))
    for _name, _version, fields in outer:
        if _name == "dm":
            fields["state"] = savestate.write_records(old)
    with open(path, "wb") as f:
        f.write(savestate.write_records(outer))
    with sr.restore(path) as s2:
        p = Port.__new__(Port)
        p.g = s2.guest
        tfd, e = p.read_log(0x10)
        assert tfd & 0xFF == 0x50 and e[0] & 0x80 and sum(e) & 0xFF == 0
