"""The benches print qemu-xen beside stubdm and QEMU's built-in device."""
import os
import re
import subprocess
import sys

import pytest

from host_sim import bench, engine, qemu_xen, qtest_qemu
from host_sim.scripted import ROOT

MISSING = qemu_xen.missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def test_bench_ioreq_prints_the_three_way_table():
    if qtest_qemu.find_qemu() is None:
        pytest.skip("needs QEMU >= 10.1: %s" % qtest_qemu.qemu_missing_reason())
    r = subprocess.run([sys.executable, "-m", "host_sim", "bench", "ioreq", "--count", "500"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {}
    for name in ("stubdm (cpython) via host_sim", "qemu-xen via host_sim",
                 "QEMU's 16550 via qtest"):
        m = re.search(r"^\s+%s\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s*$" % re.escape(name),
                      r.stdout, re.M)
        assert m, r.stdout
        rows[name] = float(m.group(2))
        assert int(m.group(1)) > 0 and rows[name] > 0
    assert re.search(r"^ratio stubdm/qemu-xen round trips per second: [0-9.]+$", r.stdout, re.M)
    for who in ("stubdm \\(cpython\\)", "qemu-xen"):
        m = re.search(r"^\s+%s\s+([0-9.]+) us\s+([0-9.]+) us$" % who, r.stdout, re.M)
        assert m and float(m.group(1)) > 0, r.stdout


def test_bench_pio_has_a_qemu_xen_row():
    qemu = qtest_qemu.find_qemu()
    kernel, initrd = engine.find_kernel()
    if qemu is None or kernel is None or initrd is None:
        pytest.skip("needs the QEMU engine and build/guest (build/setup.sh)")
    why = bench.tool_missing_reason()
    if why:
        pytest.skip(why)

    class Out:
        text = ""

        def write(self, s):
            self.text += s

    out = Out()
    res = bench.bench_pio(qemu, kernel, initrd, count=1000, out=out,
                          configs=(bench.STUBDM, bench.QEMU_XEN))
    x = res[bench.QEMU_XEN]
    assert x["reads_per_s"] > 0 and x["writes_per_s"] > 0
    assert x["ioreqs"] >= 2000  # every access of the guest tool became an ioreq
    assert "qemu-xen's pci-serial via host_sim" in out.text
    assert re.search(r"^ratio stubdm/qemu-xen accesses per second: reads [0-9.]+, "
                     r"writes [0-9.]+$", out.text, re.M), out.text
