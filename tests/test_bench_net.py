"""stubdm-sim bench net (host_sim/bench_net.py): how it reads the guest's and the
peer's lines, and one tiny run of all three configurations (stubdm, qemu-xen
where it is built, QEMU's own NIC) that must print its table with numbers, its
ratios and equal checksums both ways. No timing is asserted; about three
minutes."""
import io
import re

import pytest

from host_sim import bench_net, engine, qemu_xen, qtest_qemu

SIZE = 1 << 20


def _lines(text, cpu_step=0.5):
    """NETBENCH lines as the console sink records them: (words, dm cpu, host cpu)."""
    out = []
    for i, line in enumerate(text.strip().splitlines()):
        out.append((line.split()[1:], i * cpu_step, i * 0.1))
    return out


def test_parse_rounds_marks_ping_and_checksums():
    r = bench_net.parse(_lines("""
        NETBENCH mark b 10 10
        NETBENCH down 1048576 100000000 aa
        NETBENCH mark e 810 410
        NETBENCH mark b 810 410
        NETBENCH up 1048576 50000000 -
        NETBENCH mark e 1210 1210
        NETBENCH ping 0.50 0.70 0.60
        NETBENCH down 1048576 90000000 beef
        NETBENCH downsha beef
        NETBENCH upsha cafe
        NETBENCH up 1048576 80000000 cafe
    """), SIZE)
    assert r["down"] == [pytest.approx(1.048576 / 0.1)]
    assert r["up"] == [pytest.approx(1.048576 / 0.05)]
    assert r["ping"] == [0.5, 0.7, 0.6]
    assert r["packets"] == 1200 + 1200  # rx + tx over both timed spans
    assert r["dm_s"] == pytest.approx(2 * 0.5 * 2) and r["bytes"] == 2 * SIZE
    assert not r["errors"]
    # The checked transfers are outside the marks: they are checksums, not rounds.
    assert bench_net.check_ok(r, SIZE) == (True, True)
    r["sha"]["guest_up"] = "0000"
    assert bench_net.check_ok(r, SIZE) == (True, False)
    assert "from guest DIFFER" in bench_net.check_text(r, SIZE)


def test_parse_reports_a_short_transfer_and_peer_errors():
    r = bench_net.parse(_lines("""
        NETBENCH mark b 0 0
        NETBENCH down 4096 1000 aa
        NETBENCH mark e 10 10
        NETBENCH error connection refused
    """), SIZE)
    assert any("4096 bytes" in e for e in r["errors"])
    assert "connection refused" in r["errors"]


def test_parse_counts_stalled_rounds_and_the_frames_the_nic_dropped():
    # What qemu-xen's rtl8139 gave: its C+ ring ran out, frames were dropped
    # (rx_missed_errors, the marks' third number), and the peer's TCP backed off
    # past STALL_S on one round to the guest and on the checked transfer.
    lines = _lines("""
        NETBENCH mark b 100 50 10
        NETBENCH error down: timed out
        NETBENCH mark e 900 250 310
        NETBENCH mark b 900 250 310
        NETBENCH up 1048576 50000000 -
        NETBENCH mark e 1000 1050 310
        NETBENCH mark b 1000 1050 310
        NETBENCH down 1048576 100000000 aa
        NETBENCH mark e 1800 1250 410
        NETBENCH error down: timed out
        NETBENCH downsha -
    """)
    r = bench_net.parse(lines, SIZE)
    assert not r["errors"]
    assert r["stalled"] == ["down"] and r["check_stalled"] == ["down"]
    assert len(r["down"]) == 1 and len(r["up"]) == 1
    assert r["rx"] == 800 + 100 + 800 and r["missed"] == 300 + 0 + 100
    note = bench_net.stall_text("qemu-xen", "rtl8139", r)
    assert "1 of 2 rounds to guest" in note and "the checked transfer to guest" in note
    assert "dropped 400 of 2100 frames (19%" in note and "no receive flow control" in note
    assert "to guest stalled, from guest DIFFER" in bench_net.check_text(r, SIZE)
    # Marks without the third number (older guests' scripts) still parse.
    old = bench_net.parse(_lines("""
        NETBENCH mark b 10 10
        NETBENCH mark e 20 20
    """), SIZE)
    assert old["packets"] == 20 and old["missed"] == 0
    assert bench_net.stall_text("qemu", "e1000", old) is None


def test_peer_pattern_checksum_covers_partial_blocks():
    pat = bench_net.pattern()
    assert len(pat) == bench_net.PATTERN_BYTES
    import hashlib

    n = len(pat) * 2 + 12345
    assert bench_net.pattern_sha(n, pat) == hashlib.sha256(pat + pat + pat[:12345]).hexdigest()


@pytest.mark.skipif(qtest_qemu.find_qemu() is None or engine.find_kernel()[0] is None,
                    reason="needs QEMU >= 10.1 and the guest (build/setup.sh)")
def test_bench_net_prints_its_table():
    out = io.StringIO()
    results = bench_net.bench_net(qtest_qemu.find_qemu(), *engine.find_kernel(), model="e1000",
                                  size_mib=1, runs=2, check=True, out=out)
    text = out.getvalue()
    num = r"\s+(\d+\.\d+)"
    assert re.search(r"^  stubdm e1000 \(cpython\)[^\n]*?" + num * 5 + r"\s*$", text, re.M), text
    assert re.search(r"^  QEMU's own e1000 on a TAP" + num * 3 + r"\s+-\s+-\s*$", text,
                     re.M), text
    assert re.search(r"^  ratio stubdm / QEMU's own" + r"\s+(\d+\.\d+x)" * 3, text, re.M), text
    expect = ["stubdm", "qemu"]
    if qemu_xen.missing() is None:
        expect.append("qemu-xen")
        assert re.search(r"^  qemu-xen e1000, same transport, TAP" + num * 5, text, re.M), text
        assert re.search(r"^  ratio stubdm / qemu-xen" + r"\s+(\d+\.\d+x)" * 5, text, re.M)
    assert sorted(results) == sorted(expect)
    for c in expect:
        assert "%s: sha256 of 1 MiB each way: to guest equal, from guest equal" % c in text
        assert len(results[c]["down"]) == 2 and len(results[c]["up"]) == 2
    assert re.search(r"load average [\d. ]+before", text)
