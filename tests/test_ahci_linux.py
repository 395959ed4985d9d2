# A real Linux guest (Debian's kernel, ahci/libahci, sd) on stubdm's ICH9 AHCI
# through host_sim's QEMU engine (behind vfio-user, DESIGN.md section 10),
# the disks being the stub domain's PV disks as libxl's hdtype="ahci" gives
# them: what a user checks after `stubdm-sim boot --hdtype ahci --disk ...`.
import hashlib
import os
import re
import shutil
import subprocess

import pytest

from host_sim import engine, qtest_qemu

QEMU = qtest_qemu.find_qemu()
KERNEL, INITRD = engine.find_kernel()
BIG = 130 << 30  # a sparse disk beyond LBA28's 128 GiB
BEYOND = (BIG >> 9) - 77  # a sector past LBA28's reach

pytestmark = [
    pytest.mark.skipif(QEMU is None, reason="needs QEMU >= 10.1: "
                       + (qtest_qemu.qemu_missing_reason() or "")),
    pytest.mark.skipif(KERNEL is None or INITRD is None,
                       reason="no guest image: run python3 build/make_guest.py"),
]


def boot(run, **kw):
    e = engine.Engine(QEMU, KERNEL, INITRD, run=run, timeout=280, out=open(os.devnull, "wb"),
                      hdtype="ahci", **kw)
    rc = e.boot()
    out = e.output.decode(errors="replace")
    assert rc == 0, out + e.messages
    return out


def test_linux_reads_the_disk_over_ahci_with_ncq(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(24 << 20))
    run = ("sha256sum /dev/sda; echo DEPTH $(cat /sys/block/sda/device/queue_depth); "
           "echo MAXKB $(cat /sys/block/sda/queue/max_hw_sectors_kb); "
           "dd if=/dev/sda of=/dev/null bs=4k count=256 iflag=direct 2>/dev/null & "
           "dd if=/dev/sda of=/dev/null bs=4k skip=3000 count=256 iflag=direct 2>/dev/null & "
           "wait; grep ahci /proc/interrupts; dmesg | grep -E 'ahci|ata[0-9]'")
    out = boot(run, disks=[(str(disk), False)])
    assert hashlib.sha256(disk.read_bytes()).hexdigest() + "  /dev/sda" in out, out
    # libahci found the controller (8086:2922 is ahci's board_ahci) and the disk's NCQ.
    # libahci's banner: 6.1 (Debian 12) "AHCI 0001.0000 32 slots 6 ports ...", 6.12
    # (Debian 13) "AHCI vers 0001.0000, 32 command slots, ..." and "6/6 ports implemented".
    assert re.search(r"AHCI 0001\.0000 32 slots 6 ports", out) or (
        re.search(r"AHCI vers 0001\.0000, 32 command slots", out)
        and "6/6 ports implemented" in out), out
    assert "NCQ (depth 32)" in out and "DEPTH 32" in out, out
    assert "applying bridge limits" not in out, out
    # Interrupts came, as MSI (the capability qemu-xen's ich9-ahci offers, sent by
    # XEN_DMOP_inject_msi and delivered by host_sim), not on an IO-APIC pin.
    assert re.search(r"^\s*\d+:\s+[1-9]\d*\s.*PCI-MSI.*ahci", out, re.M), out


def test_linux_writes_past_lba28_and_flushes(tmp_path):
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(BIG)
    small = tmp_path / "second.img"
    small.write_bytes(bytes(8 << 20))
    # The ports are probed in parallel: which one is sda depends on who answers
    # first, so the guest tells the disks apart by size.
    run = ("for d in sda sdb; do if [ $(cat /sys/block/$d/size) = %d ]; then B=$d; "
           "else S=$d; fi; done; cat /sys/block/$B/size; "
           "echo stubdm-ahci-beyond > /tmp/p && "
           "dd if=/tmp/p of=/dev/$B bs=512 seek=%d count=1 conv=sync,fsync 2>/dev/null && "
           "head -c 1048576 /dev/urandom > /tmp/r && "
           "dd if=/tmp/r of=/dev/$S bs=64k seek=3 oflag=direct conv=fsync 2>/dev/null && "
           "sha256sum /tmp/r && echo 3 > /proc/sys/vm/drop_caches && "
           "dd if=/dev/$S bs=64k skip=3 count=16 iflag=direct 2>/dev/null | sha256sum && "
           "dd if=/dev/$B bs=512 skip=%d count=1 2>/dev/null | head -c 18"
           % (BIG >> 9, BEYOND, BEYOND))
    out = boot(run, disks=[(str(big), False), (str(small), False)])
    assert str(BIG >> 9) in out, out
    with open(big, "rb") as f:
        f.seek(BEYOND * 512)
        assert f.read(18) == b"stubdm-ahci-beyond"
    sums = re.findall(r"^([0-9a-f]{64})  ", out, re.M)
    assert len(sums) == 2 and sums[0] == sums[1], out
    data = small.read_bytes()
    assert hashlib.sha256(data[3 * 65536:3 * 65536 + (1 << 20)]).hexdigest() == sums[0]


@pytest.mark.skipif(shutil.which("xorriso") is None,
                    reason="no xorriso (build/setup.sh installs it)")
def test_linux_reads_an_iso_from_atapi_behind_ahci(tmp_path):
    # libxl keeps CD-ROMs on IDE; `-device ide-cd,bus=ahci0.N` (as QEMU takes it)
    # puts one behind an AHCI port: Linux's sr drives it through PACKET FISes.
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(4 << 20))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello from the AHCI CD-ROM\n")
    (tree / "data.bin").write_bytes(os.urandom(2 << 20))
    iso = tmp_path / "cd.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), str(tree)],
                   check=True, capture_output=True)
    extra = ["-device", "ahci,id=ahci0",
             "-drive", "file=%s,if=none,id=d0,format=raw" % disk,
             "-device", "ide-hd,bus=ahci0.0,unit=0,drive=d0",
             "-drive", "if=none,id=cd0,file=%s,readonly=on" % iso,
             "-device", "ide-cd,bus=ahci0.1,unit=0,drive=cd0"]
    run = ("mkdir -p /mnt && mount -t iso9660 -o ro /dev/sr0 /mnt && cat /mnt/hello.txt && "
           "sha256sum /mnt/data.bin; dmesg | grep ATAPI")
    e = engine.Engine(QEMU, KERNEL, INITRD, run=run, timeout=280, out=open(os.devnull, "wb"),
                      dm_extra=extra)
    assert e.boot() == 0, e.output.decode(errors="replace") + e.messages
    out = e.output.decode(errors="replace")
    assert "hello from the AHCI CD-ROM" in out and "ATAPI: QEMU DVD-ROM" in out, out
    want = hashlib.sha256((tree / "data.bin").read_bytes()).hexdigest()
    assert want + "  /mnt/data.bin" in out, out
