"""stubdm's MicroPython port for MiniOS (stubdm/port_minios), built for Linux.

build/out/stubdm-port is the stub domain's own port (the same main.c,
dmargv.c, HAL, frozen device model and C glue) linked against host_sim's
implementation of Xen's library API instead of MiniOS (`scons port-host`).
These run it as host_sim's device model and check what a stub domain must
do with bad input: a malformed dm-argv or an exhausted heap ends in one
clear console line and a non-zero status (MiniOS: SHUTDOWN_crash), fast.

dm-argv is fed through platform_hostsim.c's test hook,
STUBDM_PORT_FAKE_DM_ARGV: entries "KEY\\x1fVALUE" separated by \\x1e, as
they would be listed under <vm>/image/dm-argv in xenstore.
"""
import os
import subprocess
import sys
import time

import pytest

from host_sim import scripted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = os.path.join(ROOT, "build", "out", "stubdm-port")

pytestmark = pytest.mark.skipif(not os.access(PORT, os.X_OK),
                                reason="build/out/stubdm-port is not built: run scons")

EXIT_USAGE, EXIT_NO_MEMORY = 2, 3
FAKE_DM_ARGV = "STUBDM_PORT_FAKE_DM_ARGV"


def run_port(args=(), dm_argv=None, timeout=10):
    """Run the port binary alone (no hypervisor); returns the CompletedProcess."""
    env = dict(os.environ)
    env.pop(FAKE_DM_ARGV, None)
    env.pop("HOST_SIM_SOCKET", None)
    if dm_argv is not None:
        env = {k.encode(): v.encode() for k, v in env.items()}
        env[FAKE_DM_ARGV.encode()] = b"\x1e".join(k + b"\x1f" + v for k, v in dm_argv)
    t = time.monotonic()
    r = subprocess.run([PORT] + list(args), env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout, cwd=ROOT)
    r.seconds = time.monotonic() - t
    r.err = r.stderr.decode(errors="replace")
    return r


def dm_argv(*values):
    """libxl's layout: one key per argument, %03d from 001."""
    return [(b"%03d" % (i + 1), v.encode() if isinstance(v, str) else v)
            for i, v in enumerate(values)]


# ---- the port serves a guest -------------------------------------------------

@pytest.fixture(scope="module")
def session():
    with scripted.Session(runtime="port", dm_args=["-device", "pci-serial"]) as s:
        yield s


def test_port_serves_uart_pci_and_com1(session):
    g = session.guest
    assert g.inb(0x3FD) == 0x60  # 16550A LSR after reset: THRE | TEMT
    assert g.pci_read(0, 0, 0) == 0x12378086  # i440FX
    assert g.pci_read(1, 0, 0) == 0x70008086  # PIIX3
    assert g.pci_read(3, 0, 0) == 0x00015853  # Xen platform device
    assert g.pci_read(4, 0, 0) == 0x00021B36  # PCI 16550
    assert g.inw(0x10) == 0x49D2  # Xen platform ports: unplug magic
    msg = b"through the port's frozen 16550A\n"
    g.memwrite(0x10000, msg)
    g.rep_outs(0x3F8, 0x10000, 1, len(msg))  # rep outsb from guest RAM
    deadline = time.monotonic() + 5
    while msg not in session.serial_output() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert session.serial_output() == msg


def test_port_is_the_frozen_image_not_the_tree():
    # The port imports only frozen modules, whatever the current folder holds
    # (here the repository, with stubdm/ in it): sys.path is ['.frozen'].
    r = run_port(["-xen-domid", "1"])
    assert r.returncode == 1, r.err  # no host_sim socket: a hypervisor error
    assert "stubdm: opening the hypervisor's handles" in r.err or "ENOENT" in r.err, r.err


def test_port_usage_and_port_options():
    r = run_port(["--help"])
    assert r.returncode == 0 and "usage: stubdm -xen-domid N" in r.err
    r = run_port(["-X", "heapsize=lots"])
    assert r.returncode == EXIT_USAGE
    assert "stubdm-port: -X heapsize: 'lots' is not a size" in r.err


# ---- dm-argv -----------------------------------------------------------------

def test_dm_argv_replaces_the_command_line():
    # Well formed: the device model gets exactly these arguments (here asking
    # for help, so it ends at once without a hypervisor).
    r = run_port(["-xen-domid", "not-used"], dm_argv=dm_argv("-help"))
    assert r.returncode == 0, r.err
    assert "usage: stubdm -xen-domid N" in r.err
    # And the command line's own arguments were not used.
    r = run_port(["--help"], dm_argv=dm_argv("-xen-domid", "0"))
    assert r.returncode == EXIT_USAGE
    assert "-xen-domid must be" in r.err


def test_dm_argv_index_000_is_a_program_name():
    r = run_port([], dm_argv=[(b"000", b"qemu-system-i386"), (b"001", b"-help")])
    assert r.returncode == 0, r.err
    assert "usage: stubdm" in r.err


@pytest.mark.parametrize("entries, reason", [
    ([(b"001", b"-xen-domid"), (b"two", b"5")], "dm-argv key 'two' is not an argument number"),
    ([(b"001", b"-xen-domid"), (b"003", b"5")], "dm-argv has a gap: 002 is missing"),
    ([(b"001", b"-xen-domid"), (b"1", b"5")], "dm-argv index 1 appears twice"),
    (dm_argv(*(["-d", "1"] * 129)), "dm-argv has more than 256 entries"),
    ([(b"999", b"x")], "dm-argv key 999 is beyond the 256-argument limit"),
    (dm_argv("-xen-domid", "x" * 5000), "dm-argv/002 is 5000 bytes long (limit 4096)"),
    (dm_argv("-serial", b"file:/tmp/\xff\xfe"), "dm-argv/002 is not valid UTF-8"),
    (dm_argv("-serial", b"\xed\xa0\x80"), "dm-argv/002 is not valid UTF-8"),  # a surrogate
    (dm_argv("-serial", b"\xc0\xaf"), "dm-argv/002 is not valid UTF-8"),  # overlong '/'
    ([(b"", b"x")], "dm-argv key '' is not an argument number"),
])
def test_malformed_dm_argv_stops_with_one_clear_line(entries, reason):
    r = run_port([], dm_argv=entries, timeout=10)
    assert r.returncode == EXIT_USAGE, r.err
    assert r.seconds < 5
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err  # one line, before any Python runs
    assert lines[0].startswith("stubdm-port: malformed dm-argv: " + reason), r.err
    assert lines[0].endswith("stopping the stub domain"), r.err


def test_dm_argv_accepts_utf8():
    r = run_port([], dm_argv=dm_argv("-serial", "file:/tmp/gäst-日本", "-help"))
    assert r.returncode == 0, r.err


# ---- heap exhaustion ---------------------------------------------------------

def oom_ok(r_code, err):
    return (r_code == EXIT_NO_MEMORY and "MemoryError" in err
            and "stubdm-port: out of memory: the device model's heap (" in err
            and "stopping the stub domain" in err)


def test_tiny_heap_ends_with_memory_error_not_a_hang():
    r = run_port(["-X", "heapsize=24k", "-xen-domid", "1"], timeout=10)
    assert oom_ok(r.returncode, r.err), r.err
    assert r.seconds < 5


def _session_or_none(heap):
    """A session on the port with this heap, or None if start-up ran out of memory."""
    try:
        return scripted.Session(runtime="port", dm_args=["-X", "heapsize=%dk" % heap],
                                timeout=10)
    except scripted.SimError:
        return None


def test_heap_exhausted_while_serving_a_hostile_guest():
    # The smallest heap the device model starts in (2 KiB steps): whatever the
    # guest then makes it allocate beyond its start-up needs is out of reach.
    lo, hi = 16, 256
    s = _session_or_none(hi)
    assert s is not None, "the device model does not start in a 256k heap"
    s.close()
    while hi - lo > 2:
        mid = (lo + hi) // 2
        s = _session_or_none(mid)
        if s is None:
            lo = mid
        else:
            s.close()
            hi = mid
    s = _session_or_none(hi)
    assert s is not None
    try:
        g = s.guest
        g.memwrite(0x10000, bytes(range(256)) * 16)
        t = time.monotonic()
        with pytest.raises(scripted.SimError):
            # Page-sized rep string I/O, the most one ioreq can carry: each
            # needs a 4 KiB buffer the heap no longer has.
            for _ in range(200):
                g.rep_outs(0x3F8, 0x10000, 1, 4096)
                g.rep_ins(0x3FF, 0x20000, 1, 4096)
        assert time.monotonic() - t < 30
        s.proc.wait(10)
        err = s.dm_messages()
        assert oom_ok(s.proc.returncode, err), err
    finally:
        s.close()


# ---- a real guest ----------------------------------------------------------------

def test_real_guest_boots_with_the_port_as_device_model():
    from host_sim import engine, qtest_qemu

    if qtest_qemu.find_qemu() is None:
        pytest.skip("needs QEMU >= 10.1: " + (qtest_qemu.qemu_missing_reason() or ""))
    k, i = engine.find_kernel()
    if k is None or i is None:
        pytest.skip("no guest image: run python3 build/make_guest.py")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "host_sim", "--dm-runtime", "port", "boot",
                        "--run", "cat /proc/interrupts"], env=env, capture_output=True,
                       timeout=180)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert "LOC:" in out, out
