"""stubdm-sim bench boot / bench pio (host_sim/bench.py) and the guest's pio_bench tool.

The parsing and set-up checks are quick; test_bench_pio_three_configurations
boots the guest three times (stubdm, the vfio-user floor, QEMU's pci-serial),
about 30 s.
"""
import gzip
import os
import re
import subprocess
import sys
import time

import pytest

from host_sim import bench, engine, qtest_qemu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_pio_takes_the_result_line():
    out = ("stubdm-init: kernel 6.1.0-56-amd64; init at 3.20s; 20 modules loaded at 4.10s\r\n"
           "PIO-BEGIN port=0xc117 count=2000\r\n"
           "PIO port=0xc117 reads=2000 ns=191740000 writes=2000 ns=224820000 rounds=10 "
           "best_read_ns=18000000 best_write_ns=21000000\r\n"
           "STUBDM-EXIT=0\r\n")
    p = bench.parse_pio(out.encode())
    assert p == {"port": 0xC117, "reads": 2000, "read_ns": 191740000,
                 "writes": 2000, "write_ns": 224820000, "rounds": 10,
                 "best_read_ns": 18000000, "best_write_ns": 21000000}
    # The short form (no rounds) parses too.
    p = bench.parse_pio("PIO port=0x3ff reads=5 ns=50 writes=5 ns=60\n")
    assert p == {"port": 0x3FF, "reads": 5, "read_ns": 50, "writes": 5, "write_ns": 60}
    assert bench.parse_pio("PIO-ERROR no I/O BAR in /sys/bus/pci/devices/x\n") is None
    assert bench.parse_pio("") is None


def test_dm_stats_line():
    log = "stubdm: something\nstubdm-stats: ioreqs=4664 buffered=0 busy_us=31200 mapcache_hits=3\n"
    st = bench.dm_stats(log)
    assert st["ioreqs"] == 4664 and st["busy_us"] == 31200
    assert bench.dm_stats("nothing here") is None


def test_timeline_times_whole_lines():
    tl = bench.Timeline()
    tl.t_qemu = time.monotonic()
    tl.write(b"stubdm-init: kernel 6.1; init at 1.00s")
    assert "init" not in tl.marks  # the line isn't complete yet
    tl.write(b"; 3 modules loaded at 1.50s\r\nPIO-BEG")
    assert "init" in tl.marks and "pio_begin" not in tl.marks
    tl.write(b"IN port=0x1 count=1\nPIO port=0x1 reads=1 ns=1 writes=1 ns=1\nSTUBDM-EXIT=0\n")
    assert {"pio_begin", "pio", "exit"} <= set(tl.marks)
    assert tl.since_qemu("exit") >= tl.since_qemu("init") >= 0


def test_null_function_looks_like_pci_serial_and_does_nothing():
    f = bench.NullSerialFunction()
    assert f.config_read(0, 4) == 0x00021B36
    assert f.config_read(8, 4) >> 8 == 0x070002
    assert f.config_read(0x3D, 1) == 1
    assert f.bar_regions() == [(0, 8, True)]
    f.config_write(0x10, 4, 0xFFFFFFFF)  # BAR sizing, as firmware does
    assert f.config_read(0x10, 4) == 0xFFFFFFF9
    f.config_write(0x10, 4, 0xC110)
    assert f.config_read(0x10, 4) == 0xC111
    f.config_write(0x00, 4, 0)  # read-only
    assert f.config_read(0, 4) == 0x00021B36
    f.config_write(0x04, 2, 0xFFFF)
    assert f.config_read(0x04, 2) == 0x0507
    assert f.region_read(0, 7, 1) == 0
    f.region_write(0, 7, 1, 0x55)
    assert f.region_read(0, 7, 1) == 0


def test_extra_cpio_is_appended(tmp_path):
    base = tmp_path / "base.cpio.gz"
    base.write_bytes(gzip.compress(b"070701" + b"0" * 104 + b"base"))
    out = bench.initrd_with(str(base), {"usr/bin/tool": (b"\x7fELF-tool", 0o755)},
                            str(tmp_path / "out.cpio.gz"))
    raw = open(out, "rb").read()
    assert raw.startswith(base.read_bytes())
    both = gzip.decompress(raw)  # concatenated gzip members, as the kernel reads them
    assert b"usr/bin/tool\0" in both and b"\x7fELF-tool" in both
    assert both.rstrip(b"\0").endswith(b"TRAILER!!!")


QEMU = qtest_qemu.find_qemu()
KERNEL, INITRD = engine.find_kernel()


@pytest.mark.skipif(QEMU is None, reason="needs QEMU >= 10.1: "
                    + (qtest_qemu.qemu_missing_reason() or ""))
@pytest.mark.skipif(KERNEL is None or INITRD is None,
                    reason="no guest image: run python3 build/make_guest.py")
def test_bench_pio_three_configurations():
    why = bench.tool_missing_reason()
    if why:
        pytest.skip(why)
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "host_sim", "bench", "pio", "--count", "2000"],
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for name in ("stubdm (cpython) via host_sim", "transport floor (null vfio-user)",
                 "QEMU's own pci-serial"):
        m = re.search(r"^\s+%s\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)"
                      r"\s*$" % re.escape(name), out, re.M)
        assert m, out
        assert int(m.group(1)) > 0 and int(m.group(4)) > 0, out  # rates
        assert all(float(m.group(i)) > 0 for i in (2, 3, 5, 6)), out  # us per access
    m = re.search(r"^ratio stubdm/QEMU accesses per second: reads ([0-9.]+), writes ([0-9.]+)",
                  out, re.M)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, out
    # The split: the device model's own time per ioreq came from its exit line.
    assert re.search(r"device model, READY to IORESP_READY .* ([0-9.]+) us", out), out
