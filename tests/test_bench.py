"""stubdm-sim bench boot / bench pio (host_sim/bench.py) and the guest's pio_bench tool.

The parsing and set-up checks are quick; test_bench_pio_three_configurations
boots the guest once per configuration (stubdm, the vfio-user floor, the
minimal C vfio-user server, QEMU's pci-serial, qemu-xen's where installed),
about a minute.
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
                       env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    names = ["stubdm (cpython) via host_sim", "transport floor (null vfio-user)",
             "QEMU's own pci-serial"]
    if bench.vfio_floor_missing() is None:
        names.append("minimal C vfio-user server")
    for name in names:
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
    # The floor against its physical limit, and the done-when ratios, in the same run.
    assert re.search(r"^ratio stubdm/floor time per access: reads [0-9.]+, writes [0-9.]+",
                     out, re.M), out
    if bench.vfio_floor_missing() is None:
        assert re.search(r"^ratio floor/C server time per access: reads [0-9.]+, writes "
                         r"[0-9.]+", out, re.M), out
        m = re.search(r"socket round trip between two processes \(C ping-pong\)\s+([0-9.]+) us",
                      out)
        assert m and float(m.group(1)) > 0, out


def _exchange(path, requests, pump=None):
    """Send each raw request to the vfio-user server at path; the raw replies
    (b"" for a request that gets none)."""
    import select
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    out = []
    try:
        for req in requests:
            s.sendall(req)
            got = b""
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                if pump:
                    pump()
                if select.select([s], [], [], 0.01)[0]:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                    if len(got) >= 16 and len(got) >= int.from_bytes(got[4:8], "little"):
                        break
                elif not (req[8] & 0x10) or got:
                    continue
                else:
                    break  # a posted write: nothing comes back
            out.append(got)
    finally:
        s.close()
    return out


def _floor_requests():
    import struct

    hdr = struct.Struct("<HHIII")
    reqs = []

    def msg(cmd, payload=b"", flags=0):
        reqs.append(hdr.pack(len(reqs) + 1, cmd, 16 + len(payload), flags, 0) + payload)

    msg(4, struct.pack("<IIII", 16, 0, 0, 0))  # before VERSION: EINVAL
    msg(1, struct.pack("<HH", 0, 0) + b'{"capabilities":{"max_msg_fds":16,'
        b'"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535}}\0')
    msg(4, struct.pack("<IIII", 16, 0, 0, 0))
    for i in range(10):  # 9: no such region
        msg(5, struct.pack("<IIIIQQ", 32, 0, i, 0, 0, 0))
    for i in range(4):
        msg(7, struct.pack("<IIII", 16, 0, i, 0))
    msg(9, struct.pack("<QII", 0, 7, 256))  # the whole config space, as QEMU reads it
    msg(10, struct.pack("<QII", 0x10, 7, 4) + b"\xff\xff\xff\xff")  # BAR sizing
    msg(9, struct.pack("<QII", 0x10, 7, 4))
    msg(10, struct.pack("<QII", 0x04, 7, 2) + b"\xff\xff")
    msg(9, struct.pack("<QII", 0x04, 7, 2))
    msg(9, struct.pack("<QII", 7, 0, 1))
    msg(10, struct.pack("<QII", 7, 0, 1) + b"\x55")
    msg(10, struct.pack("<QII", 6, 0, 2) + b"\x55\x66", flags=0x10)  # posted
    msg(9, struct.pack("<QII", 0, 0, 8))
    msg(9, struct.pack("<QII", 4, 0, 8))  # beyond the BAR: EINVAL
    msg(9, struct.pack("<QII", 0, 3, 1))  # no BAR3: EINVAL
    msg(9, struct.pack("<QII", 0, 0, 0))  # count 0: EINVAL
    msg(2, struct.pack("<IIQQQ", 32, 3, 0, 0xC0000, 0x1000))  # DMA_MAP, no fd
    msg(3, struct.pack("<IIQQ", 24, 0, 0xC0000, 0x1000))
    msg(8, struct.pack("<IIIII", 20, 0x21, 0, 0, 0))  # INTx disable
    msg(99)  # unknown: ENOSYS
    return reqs


@pytest.mark.skipif(bench.vfio_floor_missing() is not None,
                    reason=bench.vfio_floor_missing() or "")
def test_c_floor_server_answers_as_the_python_floor(tmp_path):
    # The floor's physical limit is only a limit if it does the same work:
    # byte for byte the Python server's replies for NullSerialFunction.
    from host_sim.vfio_user import VfioUserServer

    reqs = _floor_requests()
    srv = VfioUserServer(str(tmp_path / "py.sock"), bench.NullSerialFunction(),
                         log=lambda m: None)

    def pump():
        import select
        for fd in select.select(srv.filenos(), [], [], 0)[0]:
            srv.handle_readable(fd)

    try:
        want = _exchange(srv.path, reqs, pump)
    finally:
        srv.close()
    c = bench.CFloorServer(str(tmp_path / "c.sock"))
    try:
        got = _exchange(c.path, reqs)
    finally:
        c.close()
    assert [g for g in got] == [w for w in want]
    assert want[1].endswith(b"\0") and len(want[17]) == 16 + 16 + 256
    assert want[0][8] == 0x21 and want[-1][8] == 0x21  # error replies: EINVAL, ENOSYS
    # It counted what it served and left: reads (config and BAR), writes, posted.
    assert c.stats["reads"] == 5 and c.stats["writes"] == 3 and c.stats["posted"] == 1
    assert c.proc.returncode == 0


@pytest.mark.skipif(bench.vfio_floor_missing() is not None,
                    reason=bench.vfio_floor_missing() or "")
def test_c_floor_refuses_bad_sizes_and_pingpong_measures():
    import socket
    import struct
    import tempfile

    d = tempfile.mkdtemp(prefix="stubdm-test-")
    c = bench.CFloorServer(os.path.join(d, "c.sock"))
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(c.path)
        s.sendall(struct.pack("<HHIII", 1, 9, 8, 0, 0))  # size below the header
        s.settimeout(5)
        assert s.recv(64) == b""  # closed, and the server exits
        s.close()
        c.proc.wait(5)
    finally:
        c.close()
        os.rmdir(d)
    us = bench.socket_pingpong_us(200)
    assert us is not None and 0 < us < 10000


@pytest.mark.skipif(bench.vfio_floor_missing() is not None,
                    reason=bench.vfio_floor_missing() or "")
def test_evtchn_pingpong_completes_sleeping_and_spinning():
    import subprocess

    # Each round trip waits for the other side's answer to request i: both
    # modes finish (a lost wake-up would hang it and give None), and a bad
    # argument is refused rather than spun on.
    for spin in (0, 100):
        us = bench.evtchn_pingpong_us(spin, n=200)
        assert us is not None and 0 < us < 10000
    r = subprocess.run([bench.VFIO_FLOOR, "--evtchn-pingpong", "10", "5000"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "spin of 0 to 1000 us" in r.stderr


@pytest.mark.skipif(bench.vfio_floor_missing() is not None,
                    reason=bench.vfio_floor_missing() or "")
def test_c_floor_refuses_bad_numbers_on_every_option():
    import subprocess

    # Empty, not a number, trailing junk, out of range, past a long: each option
    # says what it takes and exits 2, never runs with a number it made up.
    bad = ("", "x", "12x", "-1", "99999999999999999999")
    cases = [(["--pingpong", b], "count of 1 to 10^8") for b in bad + ("0",)]
    cases += [(["--evtchn-pingpong", b, "0"], "spin of 0 to 1000 us") for b in bad]
    cases += [(["--evtchn-pingpong", "10", b], "spin of 0 to 1000 us") for b in bad + ("1001",)]
    cases += [(["--spin-us", b, "/nonexistent.sock"], "takes 0 to 1000 us") for b in bad + ("1001",)]
    for args, says in cases:
        r = subprocess.run([bench.VFIO_FLOOR] + args, capture_output=True, text=True, timeout=10)
        assert (r.returncode, says in r.stderr) == (2, True), (args, r.stderr)
