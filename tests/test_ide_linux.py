# A real Linux guest (Debian's kernel, ata_piix, sd, sr, isofs) on stubdm's
# PIIX3 IDE through host_sim's QEMU engine (native mode behind vfio-user,
# DESIGN.md section 10): what a user checks after `stubdm-sim boot --disk
# ... --cdrom ...`. Issue 11's "done when" for IDE.
import hashlib
import os
import re
import shutil
import subprocess

import pytest

from host_sim import engine, qtest_qemu
from host_sim.scripted import PORT_BINARY

QEMU = qtest_qemu.find_qemu()
KERNEL, INITRD = engine.find_kernel()
XORRISO = shutil.which("xorriso")
BIG = 130 << 30  # a sparse disk beyond LBA28's 128 GiB
BEYOND = (BIG >> 9) - 77  # a sector past LBA28's reach

pytestmark = [
    pytest.mark.skipif(QEMU is None, reason="needs QEMU >= 10.1: "
                       + (qtest_qemu.qemu_missing_reason() or "")),
    pytest.mark.skipif(KERNEL is None or INITRD is None,
                       reason="no guest image: run python3 build/make_guest.py"),
    pytest.mark.skipif(XORRISO is None, reason="no xorriso (build/setup.sh installs it)"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("idelinux")
    disk = d / "disk.img"
    disk.write_bytes(os.urandom(24 << 20))
    big = d / "big.img"
    with open(big, "wb") as f:
        f.truncate(BIG)
    tree = d / "tree"
    tree.mkdir()
    (tree / "hello.txt").write_text("hello from the CD-ROM\n")
    (tree / "data.bin").write_bytes(os.urandom(3 << 20))
    iso = d / "cd.iso"
    subprocess.run([XORRISO, "-as", "mkisofs", "-quiet", "-o", str(iso), str(tree)], check=True,
                   capture_output=True)
    return disk, big, iso, tree


def boot(run, **kw):
    e = engine.Engine(QEMU, KERNEL, INITRD, run=run, timeout=280, out=open(os.devnull, "wb"),
                      **kw)
    rc = e.boot()
    out = e.output.decode(errors="replace")
    assert rc == 0, out + e.messages
    return out


def test_linux_reads_disk_and_cd_with_dma(images, dm_runtime):
    _reads_disk_and_cd(images, dm_runtime)


def test_linux_reads_disk_and_cd_with_dma_on_the_port(images):
    """The same on the MiniOS port built for Linux (frozen code, its own heap)."""
    if not os.access(PORT_BINARY, os.X_OK):
        pytest.skip("%s is not built: run .venv/bin/scons" % PORT_BINARY)
    _reads_disk_and_cd(images, "port")


def _reads_disk_and_cd(images, dm_runtime):
    disk, _big, iso, tree = images
    run = ("sha256sum /dev/sda; "
           "for d in /sys/class/ata_device/*; do "
           "echo XFER $(cat $d/class) $(cat $d/xfer_mode); done; "
           "mkdir -p /mnt && mount -t iso9660 -o ro /dev/sr0 /mnt && "
           "cat /mnt/hello.txt && sha256sum /mnt/data.bin")
    out = boot(run, disks=[(str(disk), False)], cdroms=[str(iso)], runtime=dm_runtime)
    # sha256sum /dev/sda in the guest is the host's sum of the image.
    assert hashlib.sha256(disk.read_bytes()).hexdigest() + "  /dev/sda" in out, out
    # Files read from the ISO on /dev/sr0.
    assert "hello from the CD-ROM" in out
    want = hashlib.sha256((tree / "data.bin").read_bytes()).hexdigest()
    assert want + "  /mnt/data.bin" in out, out
    # Linux chose DMA on both: PIIX3's best, multiword DMA mode 2 (ata_piix).
    modes = re.findall(r"^XFER (ata|atapi) (\S+)", out, re.M)
    assert sorted(modes) == [("ata", "XFER_MW_DMA_2"), ("atapi", "XFER_MW_DMA_2")], out


def test_linux_writes_past_lba28_on_a_sparse_disk(images):
    _disk, big, _iso, _tree = images
    run = ("cat /sys/block/sda/size; echo stubdm-beyond-lba28 > /tmp/p && "
           "dd if=/tmp/p of=/dev/sda bs=512 seek=%d count=1 conv=sync 2>/dev/null && sync && "
           "echo 3 > /proc/sys/vm/drop_caches && "
           "dd if=/dev/sda bs=512 skip=%d count=1 2>/dev/null | head -c 19; echo"
           % (BEYOND, BEYOND))
    out = boot(run, disks=[(str(big), False)])
    assert str(BIG >> 9) in out, out
    assert "stubdm-beyond-lba2" in out, out
    with open(big, "rb") as f:
        f.seek(BEYOND * 512)
        assert f.read(512) == b"stubdm-beyond-lba28\n" + bytes(512 - 20)
