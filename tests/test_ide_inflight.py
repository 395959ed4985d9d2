# The PIIX3 IDE over blkfront (the stub domain's xvda, host_sim's blkback): a DMA
# command bigger than one blkif request (1 MiB with indirect descriptors) has all
# its requests at the backend at once, not one after another (issue 11).
import hashlib
import time

from host_sim.backends.blkback import vbd_device
from host_sim.scripted import Session
from tests.ide_guest import BMIBA, BUF, PRD_TABLE, IdeGuest

MIB = 1 << 20


def pattern(n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d" % i).digest() * 128
        i += 1
    return bytes(out[:n])


def test_a_2mib_dma_read_has_both_its_requests_in_flight_at_once(tmp_path, dm_runtime):
    img = str(tmp_path / "xvda.img")
    data = pattern(8 * MIB)
    with open(img, "wb") as f:
        f.write(data)
    args = ["-drive", "file=/dev/xvda,if=ide,index=0,media=disk,format=host_device,"
            "cache=writeback"]
    with Session(dm_args=args, ram_mib=64, runtime=dm_runtime,
                 pv_devices=[vbd_device(img)]) as s:
        g = s.guest
        back = s.backends[0]
        ide = IdeGuest(g)
        assert ide.identify(0, 0)[0:2]  # the drive is there (blkfront connected)
        # Hold the backend: what the device model sends piles up on the ring.
        serve = back.serve
        held = {"on": True}
        back.serve = lambda: None if held["on"] else serve()
        lba, count = 2048, 4096  # 2 MiB from 1 MiB on: READ DMA EXT
        ide.prd([(BUF + i * 0x10000, 0x10000, i == 31) for i in range(32)])
        g.outl(BMIBA + 4, PRD_TABLE)
        g.outb(BMIBA, 0x08)
        g.outb(BMIBA + 2, 0x06)
        ide.taskfile(0, 0, lba, count, lba48=True)
        ide.outb(0, 7, 0x25)
        g.outb(BMIBA, 0x09)
        deadline = time.monotonic() + 10
        while back.ring.unconsumed_requests() < 2 and time.monotonic() < deadline:
            s.hv.pump(0.02)
        s.hv.pump(0.1)
        assert back.ring.unconsumed_requests() == 2
        assert back.stats["requests"] == 0
        held["on"] = False
        s.hv.defer(serve)
        deadline = time.monotonic() + 10
        while not g.inb(BMIBA + 2) & 0x04 and time.monotonic() < deadline:
            s.hv.pump(0.01)
        assert g.inb(BMIBA + 2) & 0x07 == 0x04 and ide.wait(0) == 0x50
        g.outb(BMIBA, 0x08)
        assert g.memread(BUF, 2 * MIB) == data[lba * 512:lba * 512 + 2 * MIB]
        assert back.stats["requests"] == 2 and back.stats["indirect"] == 2
