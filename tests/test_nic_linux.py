"""stubdm's NICs under a real Linux guest: 8139cp binds the RTL8139C+, e1000
the 82540EM, through host_sim's vfio-user engine (QEMU TCG, build/guest).

The network behind each NIC is stubdm/nics.py's built-in peer (ARP and ICMP
echo) until netfront carries them to host_sim's netback: the guest sees the
configured MAC, link up at the model's speed, and pings the peer; both
models at once, each on its own subnet. A boot takes about a minute.
"""
import os
import re

import pytest

from host_sim import engine, qtest_qemu

QEMU = qtest_qemu.find_qemu()
KERNEL, INITRD = engine.find_kernel()

pytestmark = [
    pytest.mark.skipif(QEMU is None, reason="needs QEMU >= 10.1: "
                       + (qtest_qemu.qemu_missing_reason() or "")),
    pytest.mark.skipif(KERNEL is None or INITRD is None,
                       reason="no guest image: run python3 build/make_guest.py"),
]

FIRST_NIC_SLOT = 6  # after the engine's pci-serial (04) and a guest slot it may give IDE (05)


class NicEngine(engine.Engine):
    """The engine with NICs given to the device model as libxl writes the -device
    lines, each on a -netdev user (which stubdm/nics.py serves with its built-in
    peer: the engine's xenstore has no vif for it): `nics` is [(model, mac)]. The
    engine fronts every function the device model places."""

    def __init__(self, *args, nics=(), **kw):
        extra = list(kw.pop("dm_extra", ()))
        for i, (model, mac) in enumerate(nics):
            extra += ["-device", "%s,id=nic%d,netdev=net%d,mac=%s,addr=%d"
                      % (model, i, i, mac, FIRST_NIC_SLOT + i),
                      "-netdev", "type=user,id=net%d" % i]
        super().__init__(*args, dm_extra=extra, **kw)


def boot(nics, run, runtime="cpython"):
    e = NicEngine(QEMU, KERNEL, INITRD, run=run, timeout=240, runtime=runtime, nics=nics,
                  out=open(os.devnull, "wb"))
    rc = e.boot()
    out = e.output.decode(errors="replace").replace("\r\n", "\n")
    assert rc == 0, out + "\n--- device model ---\n" + e.messages
    return out, e


SHOW = ("for i in $(ls /sys/class/net | grep eth); do ip link set $i up; done; sleep 3; "
        "for i in $(ls /sys/class/net | grep eth); do d=/sys/class/net/$i; "
        "echo IF $i $(cat $d/device/vendor) $(basename $(readlink $d/device/driver)) "
        "$(cat $d/address) carrier=$(cat $d/carrier) $(cat $d/operstate) "
        "speed=$(cat $d/speed); done; ")


def interfaces(out):
    found = {}
    for m in re.finditer(r"^IF (eth\d) (0x[0-9a-f]+) (\S+) (\S+) carrier=(\d) (\S+) "
                         r"speed=(\d+)", out, re.M):
        found[m.group(2)] = m.groups()
    return found


def test_both_models_at_once_mac_link_and_ping():
    mac_r, mac_e = "00:16:3e:5a:0b:01", "00:16:3e:5a:0b:02"
    run = (SHOW +
           "for i in $(ls /sys/class/net | grep eth); do "
           "case $(cat /sys/class/net/$i/device/vendor) in 0x10ec) n=2;; *) n=3;; esac; "
           "ip addr add 10.0.$n.15/24 dev $i; "
           "ping -c 3 -W 3 10.0.$n.2 >/dev/null; echo PING $i $?; "
           "ping -c 2 -W 3 -s 1400 10.0.$n.2 >/dev/null; echo BIGPING $i $?; done; "
           "grep eth /proc/interrupts")
    out, e = boot([("rtl8139", mac_r), ("e1000", mac_e)], run)
    ifs = interfaces(out)
    assert set(ifs) == {"0x10ec", "0x8086"}, out
    r, i = ifs["0x10ec"], ifs["0x8086"]
    assert r[2] == "8139cp" and r[3] == mac_r and r[4] == "1" and r[5] == "up", r
    assert r[6] == "100"
    assert i[2] == "e1000" and i[3] == mac_e and i[4] == "1" and i[5] == "up", i
    assert i[6] == "1000"
    for name in (r[0], i[0]):
        assert re.search(r"^PING %s 0$" % name, out, re.M), out
        assert re.search(r"^BIGPING %s 0$" % name, out, re.M), out
    # Both NICs interrupted the guest (INTx through the engine).
    counts = re.findall(r"^\s*\d+:\s+(\d+)\s+.*\beth\d", out, re.M)
    assert len(counts) >= 1 and all(int(c) > 0 for c in counts), out
    assert "guest error" not in e.messages, e.messages


@pytest.mark.parametrize("model", ["rtl8139", "e1000"])
def test_model_on_micropython(model):
    # The device model as a stub domain runs it: MicroPython.
    from tests import mp_runner

    if not mp_runner.micropython_available():
        pytest.skip(mp_runner.SKIP_REASON)
    run = SHOW + ("ip addr add 10.0.2.15/24 dev eth0; ping -c 3 -W 3 10.0.2.2 >/dev/null; "
                  "echo PING eth0 $?")
    out, _e = boot([(model, "00:16:3e:00:00:42")], run, runtime="micropython")
    (iface,) = interfaces(out).values()
    assert iface[3] == "00:16:3e:00:00:42" and iface[4] == "1", out
    assert re.search(r"^PING eth0 0$", out, re.M), out


def test_tcp_both_ways_through_netfront_on_both_models():
    # The whole path: the guest's TCP (e1000 with TSO and checksum offload on,
    # 8139cp with checksum offload) through stubdm's NIC, netfront, host_sim's
    # netback and a TAP to the peer in the run's namespace; 8 MiB each way,
    # checked by SHA-256 at the far end.
    from host_sim.netpeer import stream_sha
    from host_sim.netns import NetnsError

    n = 8 << 20
    run = (SHOW +
           "for i in $(ls /sys/class/net | grep eth); do "
           "case $(cat /sys/class/net/$i/device/vendor) in 0x10ec) a=2;; *) a=3;; esac; "
           "ip addr add 10.0.$a.15/24 dev $i; done; "
           "dd if=/dev/urandom of=/tmp/up bs=65536 count=%d 2>/dev/null; "
           "echo LOCAL $(sha256sum /tmp/up); "
           "for a in 2 3; do "
           "echo UP$a $( (echo sink; cat /tmp/up) | nc 10.0.$a.2 5001); "
           "echo DOWN$a $(echo 'source %d 7' | nc 10.0.$a.2 5001 | sha256sum); done"
           % (n >> 16, n))
    try:
        e = engine.Engine(QEMU, KERNEL, INITRD, run=run, timeout=400,
                          nics=[("rtl8139", None), ("e1000", None)],
                          out=open(os.devnull, "wb"))
    except NetnsError as err:
        pytest.skip("no network namespaces here: %s" % err)
    vifs = {}  # netback's counters, taken before the run's close drops them
    real_close = e.close

    def close():
        for be in (e.pvenv.backends if e.pvenv is not None else ()):
            if be.TYPE == "vif":
                vifs[be.name] = dict(be.stats)
        real_close()
    e.close = close
    rc = e.boot()
    out = e.output.decode(errors="replace").replace("\r\n", "\n")
    assert rc == 0, out + e.messages
    ifs = interfaces(out)
    assert set(ifs) == {"0x10ec", "0x8086"}, out
    # e1000's TSO went to netback whole, as netif GSO (the kernel cut it), and
    # netback refused nothing either NIC sent.
    assert len(vifs) == 2 and max(v["tx_gso"] for v in vifs.values()) > 100, vifs
    assert all(v["tx_errors"] == 0 for v in vifs.values()), vifs
    local = re.search(r"^LOCAL ([0-9a-f]{64})", out, re.M).group(1)
    want_down = stream_sha(7, n)
    for a in (2, 3):
        assert re.search(r"^UP%d %d %s$" % (a, n, local), out, re.M), out
        assert re.search(r"^DOWN%d %s " % (a, want_down), out, re.M), out
