"""stubdm-sim replay: Linux boots recorded under QEMU (tests/data, made by
build/record_trace.py) replayed against stubdm, every read compared with
QEMU's; and the replayer's own parsing, routing and classification."""
import glob
import io
import os
import subprocess
import sys

import pytest

from host_sim import replay, scripted
from host_sim.qtest_qemu import find_qemu
from stubdm import abi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACES = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "*.trace.xz")))
RUNTIMES = ["cpython", "micropython", "port"]

# What each recording must have compared (reads), at least: the regions the
# issue names, so a recording that lost them fails here.
MUST_COMPARE = {"serial 0x3f8": 100, "serial 0xc010": 20, "i8042-cmd": 50, "i8042-data": 10,
                "pci 00:00.0": 50, "pci 00:01.0": 50, "pci 00:01.3": 50, "pci 00:04.0": 50,
                "port92": 5, "acpi-gpe0": 5, "pci-conf-idx": 1}


def test_recordings_are_there():
    names = [os.path.basename(t) for t in TRACES]
    assert "linux-boot-poweroff.trace.xz" in names
    assert "linux-sysfs-ttyS1-reboot.trace.xz" in names
    for t in TRACES:
        assert os.path.getsize(t) < 200 * 1024


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("trace", TRACES, ids=[os.path.basename(t) for t in TRACES])
def test_recorded_linux_boot_replays_without_a_real_difference(trace, runtime):
    try:
        scripted.dm_command(runtime)
    except scripted.RuntimeMissing as e:
        pytest.skip(str(e))
    out = io.StringIO()
    rp = replay.replay(trace, runtime=runtime, out=out)
    text = out.getvalue()
    for key, n in MUST_COMPARE.items():
        r = rp.regions.get(key)
        assert r is not None and r.reads >= n, "%s: too few reads compared\n%s" % (key, text)
    # What stubdm does not serve was not sent (Xen's PM1a_EVT), nor what QEMU's
    # machine lacks (the platform device).
    evt = rp.regions["acpi-evt"]
    assert evt.replayed == 0 and evt.skipped == {"not claimed by stubdm": evt.accesses} \
        and evt.accesses > 0
    assert rp.regions["pci 00:03.0"].skipped == {"only in stubdm's machine": 9}
    # The guest's last act (ACPI S5, or a reset) ended the domain in both.
    want = abi.SHUTDOWN_reboot if "reboot" in trace else abi.SHUTDOWN_poweroff
    assert rp.shutdown is not None and rp.shutdown[0] == want, text
    assert rp.after_shutdown == 0
    assert rp.differences() == 0, text


def write_trace(path, lines):
    with open(path, "w") as f:
        for op, addr, value, size, name in lines:
            f.write("memory_region_ops_%s cpu 0 mr 0x5555aaaa0000 addr %#x value %#x size %d "
                    "name '%s'\n" % (op, addr, value, size, name))


def test_parse_qemu_lines():
    a = replay.parse_line("memory_region_ops_read cpu 0 mr 0x55558ad0b270 addr 0x3fd value "
                          "0x60 size 1 name 'serial'\n")
    assert (a.is_read, a.cpu, a.addr, a.value, a.size, a.name) == (True, 0, 0x3FD, 0x60, 1,
                                                                    "serial")
    # The log back end with timestamps prefixes PID@SECONDS:.
    a = replay.parse_line("4242@1733100000.123456:memory_region_ops_write cpu -1 mr 0x1 addr "
                          "0xfee00000 value 0x0 size 4 name 'apic-msi'")
    assert (a.is_read, a.cpu, a.name) == (False, -1, "apic-msi")
    assert replay.parse_line("qemu-system-x86_64: warning: something") is None


def test_timing_classification():
    lsr, iir = replay.TIMING[("serial", 5)], replay.TIMING[("serial", 2)]
    assert lsr(0x60, 0x00) and lsr(0x61, 0x01)
    assert not lsr(0x61, 0x60)  # data ready is not the transmitter's timing
    assert iir(0xC1, 0xC2) and not iir(0xC1, 0xC4) and not iir(0x01, 0xC2)


def test_differences_are_found_classified_and_fail_the_run(tmp_path):
    t = str(tmp_path / "t.trace")
    write_trace(t, [
        ("write", 0x3FB, 0x03, 1, "serial"),  # LCR 8N1
        ("read", 0x3FB, 0x03, 1, "serial"),  # same
        ("read", 0x3FD, 0x00, 1, "serial"),  # LSR: QEMU's transmitter busy: timing
        ("read", 0x3FF, 0x5A, 1, "serial"),  # scratch: stubdm has 0: real
        ("read", 0x40, 0x12, 1, "pit"),  # Xen's PIT: skipped
        ("write", 0x80, 0x01, 1, "ioport80"),  # nobody's: skipped
    ])
    out = io.StringIO()
    rp = replay.replay(t, out=out)
    text = out.getvalue()
    r = rp.regions["serial 0x3f8"]
    assert (r.reads, r.same, r.timing, r.ndiffs) == (3, 1, 1, 1), text
    assert rp.regions["pit"].skipped == {"emulated by Xen (host_sim: PIT)": 1}, text
    assert rp.regions["ioport80"].skipped == {"not claimed by stubdm": 1}
    assert "line 4 serial 0x3f8 (register 0x7) read of size 1 at 0x3ff: QEMU 0x5a, stubdm 0x0" \
        in text
    assert "timing-only differences" in text
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "host_sim", "replay", t], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    assert p.returncode == 1 and "1 difference a driver would act on" in p.stdout
    p = subprocess.run([sys.executable, "-m", "host_sim", "replay", str(tmp_path / "none")],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 2 and "No such file" in p.stderr


def test_record_trace_rerecords_a_boot(tmp_path):
    qemu = find_qemu()
    guest = os.path.join(ROOT, "build", "guest", "vmlinuz")
    if qemu is None or not os.path.exists(guest):
        pytest.skip("needs QEMU (build/qemu-system-x86_64) and the guest (build/guest)")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "build", "record_trace.py"),
                        "--out", str(tmp_path), "--only", "linux-boot-poweroff"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    path = str(tmp_path / "linux-boot-poweroff.trace.xz")
    accesses, other = replay.read_trace(path)
    assert other == 0 and len(accesses) > 10000
    assert {a.name for a in accesses} <= replay.RECORDED_REGIONS
    out = io.StringIO()
    rp = replay.replay(path, out=out)
    assert rp.differences() == 0, out.getvalue()


@pytest.mark.parametrize("trace", TRACES, ids=[os.path.basename(t) for t in TRACES])
def test_recorded_boot_replays_against_qemu_xen_too(trace):
    # The replayer checked against Xen's own device model (host_sim/qemu_xen.py):
    # what it calls a difference is the device model's, not the replay's.
    from host_sim import qemu_xen

    why = qemu_xen.missing()
    if why is not None:
        pytest.skip(why)
    out = io.StringIO()
    rp = replay.replay(trace, out=out, dm="qemu-xen")
    text = out.getvalue()
    assert "against qemu-xen" in text
    assert rp.regions["pci 00:01.1"].reads > 50  # qemu-xen has the IDE function
    assert rp.shutdown is not None and rp.after_shutdown == 0, text
    assert rp.differences() == 0, text
