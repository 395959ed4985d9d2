# stubdm-sim bench disk (host_sim/bench_disk.py): the guest tool's result line
# parsed, and one real run with AHCI that prints its table and ratios.
import io

import pytest

from host_sim import bench, bench_disk, engine, qtest_qemu

QEMU = qtest_qemu.find_qemu()
KERNEL, INITRD = engine.find_kernel()


def test_parse_takes_the_last_result_line():
    text = ("noise\nDISK seq_read_bytes=1 ns=1 seq_write_bytes=1 ns=1 rand_reads=1 jobs=1 ns=1\n"
            "DISK seq_read_bytes=2000000 ns=1000000000 seq_write_bytes=4000000 ns=1000000000 "
            "rand_reads=500 jobs=4 ns=250000000\r\n")
    r = bench_disk.parse(text)
    assert r == {"read_mb_s": 2.0, "write_mb_s": 4.0, "iops": 2000.0, "jobs": 4}
    assert bench_disk.parse("DISK-ERROR open: No such file") is None


@pytest.mark.skipif(QEMU is None, reason="needs QEMU >= 10.1: "
                    + (qtest_qemu.qemu_missing_reason() or ""))
@pytest.mark.skipif(KERNEL is None or INITRD is None,
                    reason="no guest image: run python3 build/make_guest.py")
def test_bench_disk_ahci_against_qemu():
    missing = bench.tool_missing_reason()
    if missing:
        pytest.skip(missing)
    out = io.StringIO()
    res = bench_disk.bench_disk(QEMU, KERNEL, INITRD, hdtype="ahci", size_mib=16, seq_mib=8,
                                reads=400, jobs=4, out=out)
    text = out.getvalue()
    assert set(res) == {"stubdm", "qemu", "qemu-ide"}
    for r in res.values():
        assert r["read_mb_s"] > 0 and r["write_mb_s"] > 0 and r["iops"] > 0
    assert "ratio stubdm / QEMU " in text and "ratio stubdm / QEMU's IDE" in text, text
    assert "QEMU's built-in ICH9 AHCI" in text and "mapcache hit rate" in text, text
