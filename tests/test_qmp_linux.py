# A real Linux guest (sr, isofs) sees a host-side CD change (issue 11 item 5,
# issue 13 item 5): `stubdm-sim boot --cdrom A --qmp SOCK`, and while the guest
# runs, libxl's sequence over QMP (qemu.qmp on SOCK, through dom0's
# vchan-socket-proxy and the device model's vchan) with the stub domain's vbd
# given the new params: the guest reads B's file from /dev/sr0 after A's, and
# after an eject /dev/sr0 has no medium.
import asyncio
import os
import shutil
import subprocess
import threading
import time

import pytest

from host_sim import engine, qtest_qemu
from host_sim.xs import Xs
from tests.qmp_helpers import cdrom_insert

qmp_lib = pytest.importorskip("qemu.qmp", reason="qemu.qmp from PyPI (build/setup.sh)")
QEMU = qtest_qemu.find_qemu()
KERNEL, INITRD = engine.find_kernel()
XORRISO = shutil.which("xorriso")
DEVID = 5632  # hdc: the first CD-ROM's ide-DEVNO, as libxl names it

pytestmark = [
    pytest.mark.skipif(QEMU is None, reason="needs QEMU >= 10.1: "
                       + (qtest_qemu.qemu_missing_reason() or "")),
    pytest.mark.skipif(KERNEL is None or INITRD is None,
                       reason="no guest image: run python3 build/make_guest.py"),
    pytest.mark.skipif(XORRISO is None, reason="no xorriso (build/setup.sh installs it)"),
]

GUEST = (
    "mkdir -p /mnt; mount -t iso9660 -o ro /dev/sr0 /mnt && cat /mnt/which.txt; umount /mnt; "
    # Nothing holds sr0 open (Linux locks the door while it is) when the host ejects.
    "echo STEP-EJECT; sleep 3; i=0; "
    "while dd if=/dev/sr0 of=/dev/null bs=2048 count=1 2>/dev/null; do "
    "i=$((i+1)); [ $i -ge 300 ] && break; sleep 0.2; done; "
    "dd if=/dev/sr0 of=/dev/null bs=2048 count=1 2>&1 | head -1 | sed 's/^/SR0-EMPTY: /'; "
    "echo STEP-CHANGE; i=0; "
    "until mount -t iso9660 -o ro /dev/sr0 /mnt 2>/dev/null; do "
    "i=$((i+1)); [ $i -ge 300 ] && break; sleep 0.2; done; "
    "cat /mnt/which.txt; umount /mnt; echo STEP-DONE")


def make_iso(d, name, text):
    tree = d / (name + "-tree")
    tree.mkdir()
    (tree / "which.txt").write_text(text)
    iso = d / (name + ".iso")
    subprocess.run([XORRISO, "-as", "mkisofs", "-quiet", "-o", str(iso), str(tree)], check=True,
                   capture_output=True)
    return str(iso)


class Toolstack(threading.Thread):
    """dom0's part while the guest runs: waits for the guest's marks on its console,
    then drives libxl's CD change over QMP."""

    def __init__(self, e, sock, iso_b):
        super().__init__(daemon=True)
        self.e = e
        self.sock = sock
        self.iso_b = iso_b
        self.error = None
        self.steps = []
        self.rtt = []

    def wait_mark(self, mark, timeout=240):
        t0 = time.monotonic()
        while mark not in bytes(self.e.output):
            if time.monotonic() - t0 > timeout or self.e.qemu_proc and \
                    self.e.qemu_proc.poll() is not None:
                raise AssertionError("the guest never printed " + mark.decode())
            time.sleep(0.1)

    def run(self):
        try:
            self.wait_mark(b"STEP-EJECT")
            be = [b for b in self.e.pvenv.backends if b.TYPE == "vbd" and b.cdrom][0]
            xs = Xs(self.e.pvenv.xenstored.socket_path)  # our own dom0 connection

            def write_params(p):
                xs.write(be.path + "/params", p)

            async def session(body):
                qmp = qmp_lib.QMPClient("libxl")
                await qmp.connect(self.sock)
                try:
                    await body(qmp)
                finally:
                    await qmp.disconnect()

            asyncio.run(session(lambda q: cdrom_insert(q, write_params, DEVID, None)))
            self.steps.append("ejected")
            self.wait_mark(b"STEP-CHANGE")
            asyncio.run(session(lambda q: cdrom_insert(q, write_params, DEVID, self.iso_b)))
            self.steps.append("changed")

            async def timed(qmp):
                for _ in range(100):
                    t = time.perf_counter()
                    await qmp.execute("query-status")
                    self.rtt.append(time.perf_counter() - t)
            asyncio.run(session(timed))
            xs.close()
        except BaseException as err:  # reported by the test
            self.error = err


def test_guest_sees_host_side_eject_and_change(tmp_path, dm_runtime):
    iso_a = make_iso(tmp_path, "a", "this is medium A\n")
    iso_b = make_iso(tmp_path, "b", "this is medium B\n")
    sock = str(tmp_path / "qmp.sock")
    e = engine.Engine(QEMU, KERNEL, INITRD, run=GUEST, timeout=280, out=open(os.devnull, "wb"),
                      cdroms=[iso_a], runtime=dm_runtime, qmp=sock)
    ts = Toolstack(e, sock, iso_b)
    ts.start()
    rc = e.boot()
    ts.join(10)
    out = e.output.decode(errors="replace")
    assert ts.error is None, "%r\n%s\n%s" % (ts.error, out[-3000:], e.messages[-3000:])
    assert rc == 0, out[-3000:] + e.messages[-2000:]
    assert ts.steps == ["ejected", "changed"]
    rtt = sorted(ts.rtt)
    print("qmp query-status round trip under the QEMU engine (%s, qemu.qmp): median %.0f us"
          % (dm_runtime, rtt[len(rtt) // 2] * 1e6))
    a_at = out.index("this is medium A")
    empty = out.index("SR0-EMPTY:")
    b_at = out.index("this is medium B")
    assert a_at < empty < b_at, out[-3000:]
    # dd on an empty drive: the kernel says there is no medium.
    line = out[empty:out.index("\n", empty)]
    assert "No medium found" in line, line
