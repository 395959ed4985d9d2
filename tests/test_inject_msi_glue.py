# xendevicemodel_inject_msi, wrapped in both glues (stubdm/glue_cffi.py for CPython,
# _xenglue in stubdm/port_common/modstubdm_hyp.c for MicroPython): what a device
# model with MSI enabled sends its interrupts with. Against host_sim's hypervisor
# alone (no guest to deliver them to).
import os
import select
import subprocess
import sys
import time

from host_sim.hypervisor import SimHypervisor
from tests.conftest import MICROPYTHON, ROOT, skip_unless_runtime

import pytest

CHILD = r"""
import sys
try:
    import _xenglue as glue
except ImportError:
    from stubdm import glue_cffi as glue
x = glue.Xen(int(sys.argv[1]))
for line in sys.stdin:
    words = line.split()
    if not words:
        break
    out = 0
    try:
        x.inject_msi(int(words[0]), int(words[1]))
    except (OSError, OverflowError, ValueError) as e:
        out = "E " + type(e).__name__
    sys.stdout.write("%s\n" % out)
    sys.stdout.flush()
"""


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_inject_msi_is_a_dm_op_on_both_glues(runtime, tmp_path):
    skip_unless_runtime(runtime)
    hv = SimHypervisor(str(tmp_path / "hv.sock"), ram_mib=4)
    env = dict(os.environ, HOST_SIM_SOCKET=hv.sock_path, PYTHONPATH=ROOT)
    exe = [sys.executable, "-u"] if runtime == "cpython" else [MICROPYTHON]
    proc = subprocess.Popen(exe + ["-c", CHILD, str(hv.domid)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        def do(line):
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 20
            while not select.select([proc.stdout], [], [], 0)[0]:
                assert time.monotonic() < deadline and proc.poll() is None
                hv.pump(0.005)
            return proc.stdout.readline().decode().strip()

        assert do("%d %d" % (0xFEE00000, 0x4031)) == "0"  # LAPIC 0, vector 0x31
        assert do("%d %d" % ((1 << 64) - 4, 0xFFFFFFFF)) == "0"  # the full widths pass
        assert do("%d %d" % (0xFEE01000, 0x31)) == "0"
        hv.pump(0)
        # Each one reached the hypervisor whole, in order (libsim's ring of
        # interrupt calls: tests/test_irq_ring.py).
        assert [e for e in hv.irq_log if e[0] == "msi"] == [
            ("msi", 0xFEE00000, 0x4031), ("msi", (1 << 64) - 4, 0xFFFFFFFF),
            ("msi", 0xFEE01000, 0x31)]
        assert do("-1 0").startswith("E ")  # not an address: refused by the glue
        assert do("%d 0" % (1 << 64)).startswith("E ")
    finally:
        proc.kill()
        proc.wait()
        hv.close()
