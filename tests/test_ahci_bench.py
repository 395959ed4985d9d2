# stubdm-sim bench disk (host_sim/bench_disk.py): the guest tool's result line
# parsed, and one real run with AHCI that prints its table and ratios: stubdm,
# qemu-xen (where it is installed) and QEMU's built-in AHCI and IDE.
import io
import re

import pytest

from host_sim import bench, bench_disk, engine, qemu_xen, qtest_qemu

QEMU = qtest_qemu.find_qemu()
KERNEL, INITRD = engine.find_kernel()


needs_guest = pytest.mark.skipif(
    QEMU is None or KERNEL is None or INITRD is None,
    reason="needs QEMU >= 10.1 (%s) and build/guest (python3 build/make_guest.py)"
    % (qtest_qemu.qemu_missing_reason() or "found"))


def _bench(hdtype, **kw):
    """One bench disk run, small; (results, its printed table)."""
    missing = bench.tool_missing_reason()
    if missing:
        pytest.skip(missing)
    out = io.StringIO()
    res = bench_disk.bench_disk(QEMU, KERNEL, INITRD, hdtype=hdtype, size_mib=16, seq_mib=8,
                                out=out, **kw)
    return res, out.getvalue()


def test_parse_takes_the_last_result_line():
    text = ("noise\nDISK seq_read_bytes=1 ns=1 seq_write_bytes=1 ns=1 rand_reads=1 jobs=1 ns=1\n"
            "DISK seq_read_bytes=2000000 ns=1000000000 seq_write_bytes=4000000 ns=1000000000 "
            "rand_reads=500 jobs=4 ns=250000000\r\n")
    r = bench_disk.parse(text)
    assert r == {"read_mb_s": 2.0, "write_mb_s": 4.0, "iops": 2000.0, "jobs": 4}
    assert bench_disk.parse("DISK-ERROR open: No such file") is None


def test_marks_give_the_device_models_cpu_per_phase():
    tl = bench_disk.DiskTimeline()

    class Dm:
        pid = 1  # init: its CPU so far is readable and only grows

    class E:
        dm = Dm()

    tl.engine = E()
    for phase in ("read", "write", "rand", "end"):
        tl.write(b"noise\r\nDISKMARK " + phase.encode())
        assert phase not in tl.cpu  # the line is not complete yet
        tl.write(b"\r\n")
        assert phase in tl.cpu
    cpu = bench_disk.phase_cpu(tl.cpu)
    assert sorted(cpu) == ["rand", "read", "write"] and min(cpu.values()) >= 0
    assert tl.intx == {}  # no hypervisor: no interrupt count


def test_marks_count_the_device_models_intx_calls_per_phase():
    tl = bench_disk.DiskTimeline()

    class Hv:
        irq_log = []

    class E:
        hv = Hv()

    tl.engine = E()
    log = E.hv.irq_log
    per_phase = {"read": 3, "write": 1, "rand": 0, "end": 2}
    for phase in ("read", "write", "rand", "end"):
        tl.write(b"DISKMARK " + phase.encode() + b"\n")
        for i in range(per_phase[phase]):
            log.append(("intx", 2, 0, 1 - i % 2))
            log.append(("isa", 4, 1))  # not INTx: not counted
    assert bench_disk.phase_cpu(tl.intx) == {"read": 3, "write": 1, "rand": 0}
    assert bench_disk.phase_cpu({"read": 1.0, "write": 3.0}) == {"read": 2.0}


@needs_guest
def test_bench_disk_ahci_against_qemu():
    res, text = _bench("ahci", reads=400, jobs=4)
    want = {"stubdm", "qemu", "qemu-ide"}
    if qemu_xen.missing() is None:
        want.add("qemu-xen")
    assert set(res) == want
    for r in res.values():
        assert r["read_mb_s"] > 0 and r["write_mb_s"] > 0 and r["iops"] > 0
    assert "ratio stubdm / QEMU " in text and "ratio stubdm / QEMU's IDE" in text, text
    assert "QEMU's built-in ICH9 AHCI" in text and "mapcache hit rate" in text, text
    if "qemu-xen" in want:
        # Its row: the image as a file (a dom0 device model), figures and a ratio.
        m = re.search(r"^  qemu-xen ahci via host_sim, image file \(dom0\).*?"
                      r"\s([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9]+)$",
                      text, re.M)
        assert m and min(float(x) for x in m.groups()) > 0, text
        assert re.search(r"^  ratio stubdm / qemu-xen\s+[0-9.]+x\s+[0-9.]+x\s+[0-9.]+x$",
                         text, re.M), text
    # Every row has its guest commands per MiB beside read and write MB/s: 8 MiB in
    # 1 MiB requests is at least one command per MiB.
    for name in ("stubdm ahci", "QEMU's built-in ICH9 AHCI", "QEMU's built-in PIIX3 IDE"):
        m = re.search(r"^  %s.*?\s([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9]+)$"
                      % re.escape(name), text, re.M)
        assert m and float(m.group(2)) >= 1 and float(m.group(4)) >= 1, (name, text)
    m = re.search(r"^  stubdm\s+interrupt calls \(set_pci_intx_level, inject_msi\): ([0-9.]+) "
                  r"per command read, ([0-9.]+) per command written, ([0-9.]+) per 4k read$",
                  text, re.M)
    assert m and min(float(x) for x in m.groups()) > 0, text  # MSIs (or INTx) came
    for who in ("stubdm",) + (("qemu-xen",) if "qemu-xen" in want else ()):
        assert re.search(r"^  %s\s+device model CPU: [0-9.]+ ms/MiB read, [0-9.]+ ms/MiB write, "
                         r"[0-9]+ us per 4k read$" % who, text, re.M), text
    m = re.search(r"stubdm: (\d+) disk commands became (\d+) blkif requests", text)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, text


@needs_guest
def test_bench_disk_ide_says_why_qemu_xen_has_no_row():
    # Two interleaved rounds: the table's figures are the rounds' medians.
    res, text = _bench("ide", reads=200, jobs=2, rounds=2)
    assert set(res) == {"stubdm", "qemu"}
    assert re.search(r"^  qemu-xen ide .*\s-\s+-\s+-\s+\(qemu-xen's PIIX3 IDE is the chipset's "
                     r"00:01.1 on the ISA compatibility ports", text, re.M), text
    assert "QEMU's built-in PIIX3 IDE" in text and "ratio stubdm / QEMU " in text, text
    assert "2 interleaved rounds, medians" in text, text
    for c, r in res.items():
        assert len(r["rounds"]) == 2, c
        reads = sorted(x[0] for x in r["rounds"])
        assert abs(r["read_mb_s"] - (reads[0] + reads[1]) / 2) < 1e-9, (c, r)
        assert re.search(r"^  %s\s+rounds: read [0-9]+ [0-9]+ MB/s" % c, text, re.M), text


def test_rounds_give_each_figure_its_median():
    rounds = [{"read_mb_s": 300.0, "write_mb_s": 90.0, "iops": 1000.0, "cpu": "a"},
              {"read_mb_s": 100.0, "write_mb_s": 80.0, "iops": 3000.0, "cpu": "b"},
              {"read_mb_s": 200.0, "write_mb_s": 70.0, "iops": 2000.0, "cpu": "c"}]
    r = bench_disk.median_rounds(rounds)
    assert (r["read_mb_s"], r["write_mb_s"], r["iops"]) == (200.0, 80.0, 2000.0)
    assert r["cpu"] == "c"  # the details are the median round's (by read MB/s)
    assert r["rounds"] == [(300.0, 90.0, 1000.0), (100.0, 80.0, 3000.0), (200.0, 70.0, 2000.0)]
    assert bench_disk.median_rounds(rounds[:1])["rounds"] == [(300.0, 90.0, 1000.0)]


def test_bench_disk_refuses_unknown_rows_and_no_rounds():
    with pytest.raises(bench_disk.BenchError, match="no such configuration: qemu-sata"):
        bench_disk.bench_disk("q", "k", "i", configs=("stubdm", "qemu-sata"))
    with pytest.raises(bench_disk.BenchError, match="rounds must be at least 1"):
        bench_disk.bench_disk("q", "k", "i", rounds=0)
    with pytest.raises(bench_disk.BenchError, match="qemu-ide is the comparison row"):
        bench_disk.bench_disk("q", "k", "i", hdtype="ide", configs=("qemu-ide",))


def test_requests_from_the_guests_stat_counters():
    # 64 MiB read in 128 requests and written in 128, 2000 random 4 KiB reads on top
    # of the sequential ones.
    text = ("DISKQ 1280 32767 168\r\n"
            "DISKSTAT0 3 0 24 21 0 0 0 0 0 12 21 0 0 0 0 0 0\r\n"
            "DISKSTAT1 2131 0 147096 11627 128 0 131072 935 0 1944 12597 0 0 0 0 1 33\n")
    q = bench_disk.parse_requests(text, 2000)
    assert q == {"max_sectors_kb": 1280, "max_hw_sectors_kb": 32767, "max_segments": 168,
                 "read_kib": 512.0, "write_kib": 512.0, "read_cmds": 128, "write_cmds": 128}
    assert bench_disk.parse_requests("DISKQ 1280 32767 168\n", 2000) is None
    run = bench_disk.guest_run(64, 2000, 4)
    assert "/usr/bin/disk_bench /dev/sda 64 2000 4" in run and run.endswith("[ $s = 0 ]")
