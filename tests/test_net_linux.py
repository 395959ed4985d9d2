"""A real Linux guest on the network through stubdm's NICs, as a stub domain reaches it:
rtl8139 (8139cp) and e1000 at once, each over its own vif (netfront in the device model,
host_sim's netback on a TAP in the run's private namespace) to a peer there
(host_sim/netpeer.py). Pings both ways and TCP transfers both ways, checked end to end."""
import os
import re
import subprocess

import pytest

from host_sim import engine, qtest_qemu
from host_sim.netpeer import stream_sha

pytestmark = pytest.mark.skipif(qtest_qemu.find_qemu() is None or engine.find_kernel()[0] is None,
                                reason="needs QEMU >= 10.1 and the guest (build/setup.sh)")

SIZE = 2 << 20


def nic_commands(d):
    me, peer, dev = "10.0.%d.15" % (2 + d), "10.0.%d.2" % (2 + d), "eth%d" % d
    return ("ip addr add {me}/24 dev {dev}; ip link set {dev} up; sleep 1; "
            "echo NIC{d} mac $(cat /sys/class/net/{dev}/address) "
            "carrier $(cat /sys/class/net/{dev}/carrier); "
            "ping -c 2 -W 5 {peer} >/dev/null; echo NIC{d} ping-out $?; "
            "echo NIC{d} ping-in $(echo 'ping {me} 2' | nc {peer} 5001); "
            "dd if=/dev/urandom of=/tmp/up{d} bs=65536 count={n} 2>/dev/null; "
            "echo NIC{d} up-sent $(sha256sum /tmp/up{d}); "
            "echo NIC{d} up-got $( (echo sink; cat /tmp/up{d}) | nc {peer} 5001); "
            "echo NIC{d} down $(echo 'source {size} {d}' | nc {peer} 5001 | sha256sum); "
            ).format(me=me, peer=peer, dev=dev, d=d, n=SIZE // 65536, size=SIZE)


def test_two_nics_of_different_models_on_the_network():
    macs = ("00:16:3e:10:00:01", "00:16:3e:10:00:02")
    e = engine.Engine(qtest_qemu.find_qemu(), *engine.find_kernel(),
                      run=nic_commands(0) + nic_commands(1),
                      nics=[("rtl8139", macs[0]), ("e1000", macs[1])], timeout=300,
                      out=open(os.devnull, "wb"))
    holder = []
    orig = e._nic_devices

    def spy():
        orig()
        holder.append(e.ns.holder.pid)
    e._nic_devices = spy
    assert e.boot() == 0, e.output.decode(errors="replace")[-3000:]
    out = e.output.decode(errors="replace")
    for d in (0, 1):
        said = dict(re.findall(r"^NIC%d (\S+) (.*?)\s*$" % d, out, re.M))
        assert said["mac"] == macs[d] + " carrier 1", out[-3000:]
        assert said["ping-out"] == "0" and said["ping-in"] == "0", out[-3000:]
        sent = said["up-sent"].split()[0]
        nbytes, got = said["up-got"].split()
        assert int(nbytes) == SIZE and got == sent
        assert said["down"].split()[0] == stream_sha(d, SIZE)
    # Nothing is left: the namespace went with its holder, and no TAP is in ours.
    assert holder and not os.path.exists("/proc/%d" % holder[0])
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert "vif2." not in links
