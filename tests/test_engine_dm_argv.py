"""`stubdm-sim boot` starts the device model as libxl starts a stub domain's: its
arguments written to xenstore (<guest vm>/image/dm-argv/NNN, read-only to the stub
domain), its command line the runtime alone. The guest then finds stubdm's functions
and its pci-serial's output reaches the log the arguments named."""
import os
import re

import pytest

from host_sim import engine, qtest_qemu
from host_sim.scripted import PORT_BINARY, dm_command
from host_sim.xs import XsError

QEMU = qtest_qemu.find_qemu()
KERNEL, INITRD = engine.find_kernel()

pytestmark = [
    pytest.mark.skipif(QEMU is None, reason="needs QEMU >= 10.1: "
                       + (qtest_qemu.qemu_missing_reason() or "")),
    pytest.mark.skipif(KERNEL is None or INITRD is None,
                       reason="no guest image: run python3 build/make_guest.py"),
]


class Recording(engine.Engine):
    """Reads back what the toolstack side wrote, once the device model is up."""

    def start_dm(self):
        super().start_dm()
        xs, paths = self.pvenv.xs, self.pvenv.paths
        base = paths["dm_argv"]
        keys = sorted(xs.directory(base))
        self.stored = (keys, [xs.read("%s/%s" % (base, k)).decode() for k in keys],
                       xs.get_perms(base))
        state = paths["device_model"] + "/state"

        def running():
            try:
                return xs.read(state) == b"running"
            except XsError:
                return False
        self.hv.pump_until(running, "running in xenstore", timeout=30)  # libxl's 30 s


@pytest.mark.parametrize("runtime", ("cpython", "port"))
def test_boot_takes_its_arguments_from_xenstore(runtime):
    if runtime == "port" and not os.access(PORT_BINARY, os.X_OK):
        pytest.skip("build/out/stubdm-port is not built: run scons")
    run = "ls /sys/bus/pci/devices; exec 3<>/dev/ttyS1; echo argv-from-xenstore >&3; sleep 0.2"
    e = Recording(QEMU, KERNEL, INITRD, run=run, timeout=150, runtime=runtime,
                  out=open(os.devnull, "wb"))
    rc = e.boot()
    out = e.output.decode(errors="replace")
    assert rc == 0, out
    # Nothing on the command line but the runtime: no -xen-domid, no -m.
    assert e.dm.args == dm_command(runtime)
    keys, argv, perms = e.stored
    assert keys == ["%03d" % i for i in range(1, len(keys) + 1)]
    assert argv[:2] == ["-xen-domid", "1"] and "-nodefaults" in argv
    assert argv[argv.index("-m") + 1] == str(e.memory)
    # libxl's fixed lines, which the device model takes (or ignores, saying why).
    for opt, val in (("-machine", "xenfv,suppress-vmdesc=on"), ("-display", "none"),
                     ("-net", "none"), ("-name", "guest")):
        assert argv[argv.index(opt) + 1] == val
    assert "-no-shutdown" in argv and "-no-user-config" in argv
    assert perms[0] == "n0" and "r2" in perms  # dom0's, readable by the stub domain
    assert "0000:00:04.0" in out
    assert b"argv-from-xenstore" in e.pci_serial_output
