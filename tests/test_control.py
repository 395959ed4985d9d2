"""The device model configured and started as libxl starts a stub domain's: its arguments
from xenstore (dm-argv), "running" when ready, each libxl option used, or taken with a
reason, or refused by name; on every runtime."""
import os

import pytest

from host_sim.hypervisor import DeviceModelGone
from host_sim.scripted import MICROPYTHON, PORT_BINARY, Session
from host_sim.xs import XsError

STATE = "/local/domain/2/device-model/1/state"

# What libxl 4.21 writes for an HVM guest's stub-domain device model (libxl_dm.c,
# libxl__build_device_model_args_new with is_stubdom), for a guest without disks or NICs.
LIBXL_ARGV = ["-xen-domid", "1", "-no-shutdown", "-nodefaults", "-no-user-config",
              "-name", "guest", "-display", "none", "-k", "en-us", "-serial", "/dev/hvc3",
              "-device", "VGA,vgamem_mb=8", "-boot", "order=cd", "-net", "none",
              "-machine", "xenfv,suppress-vmdesc=on", "-m", "64"]


def _rd(s, path):
    try:
        return s.xs.read(path).decode()
    except XsError:
        return None


def _runtime(runtime):
    binary = {"micropython": MICROPYTHON, "port": PORT_BINARY}.get(runtime)
    if binary is not None and not os.access(binary, os.X_OK):
        pytest.skip("%s is not built: run scons" % binary)


@pytest.mark.parametrize("runtime", ("cpython", "micropython", "port"))
def test_libxl_argv_from_xenstore_and_running(runtime):
    _runtime(runtime)
    with Session(runtime=runtime, dm_argv=LIBXL_ARGV) as s:
        assert s.proc.args[-2:] != ["-m", "64"]  # nothing of libxl's on the command line
        s.hv.pump_until(lambda: _rd(s, STATE) == "running", "running")
        # It serves the guest: the platform device answers its config space, and
        # libxl's -device VGA is the standard VGA at 00:02.0.
        assert s.guest.pci_read(3, 0, 0) == 0x00015853
        assert s.guest.pci_read(2, 0, 0) == 0x11111234
        # The older command protocol: continue answers running.
        s.xs.write(STATE, "paused")
        s.xs.write("/local/domain/2/device-model/1/command", "continue")
        s.hv.pump_until(lambda: _rd(s, STATE) == "running", "continue")


@pytest.mark.parametrize("bad,said", [
    (["-cpu", "host"], "unknown option -cpu"),
    (["-device", "cirrus-vga,vgamem_mb=8"], 'vga="stdvga"'),
    (["-incoming", "fd:3"], "-incoming"),
    (["-vnc", "127.0.0.1:0"], "not a stub domain's"),
    (["-machine", "pc,accel=xen"], "xenfv"),
    (["-display", "sdl"], "PV framebuffer"),
])
def test_argument_refused_by_name(bad, said):
    with pytest.raises(DeviceModelGone) as e:
        Session(dm_argv=LIBXL_ARGV + bad, timeout=10)
    assert said in str(e.value)  # one clear line naming it, no traceback
    assert "Traceback" not in str(e.value)


@pytest.mark.parametrize("keys,said", [
    ({"001": "-xen-domid", "003": "1"}, "gaps"),
    ({"001": "-xen-domid", "abc": "1"}, "not an argument key"),
])
def test_malformed_dm_argv(keys, said):
    s = Session(xenstore=True)
    try:
        base = s.paths["dm_argv"]
        s.xs.rm(base)
        for k, v in keys.items():
            s.xs.write(base + "/" + k, v)
        import subprocess
        from host_sim.scripted import dm_command, dm_env
        env = dm_env(s.sock)
        env.update(s.pvenv.env)
        r = subprocess.run(dm_command("cpython"), env=env, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2 and said in r.stderr, r.stderr
    finally:
        s.close()
