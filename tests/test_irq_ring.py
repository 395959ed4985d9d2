"""The device model's interrupt lines as libsim sets them: XEN_DMOP_set_pci_intx_level
and set_isa_irq_level go by a ring in shared memory (hostsim_proto.h's HS_IRQ_*), not a
round trip per call, and host_sim still sees every call, in order, with dm.c's checks,
before anything else the device model sent after it.

The device model's side is a small script on the real glue (CPython's cffi module,
MicroPython's _xenglue), driven line by line while host_sim's loop runs here.
"""
import os
import struct
import time

import pytest

from host_sim import proto
from host_sim.hypervisor import SimHypervisor
from tests.conftest import ROOT, skip_unless_runtime
from tests.test_sim_evtchn import Dm

EINVAL = 22

CHILD = r"""
import sys
try:
    import _xenglue as glue
except ImportError:
    from stubdm import glue_cffi as glue
x = glue.Xen(int(sys.argv[1]))

while True:
    words = sys.stdin.readline().split()
    if not words or words[0] == "exit":
        break
    cmd, args = words[0], [int(w) for w in words[1:]]
    out = 0
    try:
        if cmd == "intx":
            x.set_pci_intx_level(*args)
        elif cmd == "isa":
            x.set_isa_irq_level(*args)
        elif cmd == "msi":
            x.inject_msi(*args)
        elif cmd == "route":
            x.set_pci_link_route(*args)
        elif cmd == "toggle":  # dev, n: n flips of dev's INTA, starting high
            for i in range(args[1]):
                x.set_pci_intx_level(0, 0, args[0], 0, 1 - (i & 1))
    except OSError as e:
        out = "E%d" % e.args[0]
    sys.stdout.write("%s\n" % out)
    sys.stdout.flush()
"""


@pytest.fixture(params=["cpython", "micropython"])
def rig(request, tmp_path):
    skip_unless_runtime(request.param)
    hv = SimHypervisor(str(tmp_path / "hv.sock"), ram_mib=4)
    lines = []
    hv.on_intx = lambda dev, intx, level: lines.append((dev, intx, level))
    dm = Dm(hv, request.param, CHILD)
    yield hv, dm, lines
    dm.close()
    hv.close()


def test_every_level_change_arrives_in_order_without_a_message_each(rig):
    hv, dm, lines = rig
    assert dm.do("intx 0 0 4 0 1") == "0"
    requests = hv.stats["requests"]
    calls = [("intx", 4, 0, 0), ("isa", 5, 1), ("intx", 4, 0, 1), ("intx", 31, 3, 1),
             ("isa", 5, 0), ("intx", 4, 0, 0), ("isa", 15, 1)]
    for c in calls:
        args = ("0 0 %d %d %d" % c[1:]) if c[0] == "intx" else ("%d %d" % c[1:])
        assert dm.do("%s %s" % (c[0], args)) == "0"
    hv.pump(0)
    # Every call, pulses included, as dm.c would have seen them one by one.
    assert hv.irq_log == [("intx", 4, 0, 1)] + calls
    assert lines == [(4, 0, 1)] + [c[1:] for c in calls if c[0] == "intx"]
    assert hv.intx_level(4) == 0 and hv.intx_level(31, 3) == 1
    assert hv.isa_irq[5] == 0 and hv.isa_irq[15] == 1
    # None of them was a message to host_sim.
    assert hv.stats["requests"] == requests


def test_msis_go_by_the_ring_between_the_levels(rig):
    hv, dm, lines = rig
    got = []
    hv.on_msi = lambda addr, data: got.append((addr, data)) or True
    assert dm.do("intx 0 0 4 0 1") == "0"
    requests = hv.stats["requests"]
    assert dm.do("msi %d %d" % (0xFEE01004, 0x4028)) == "0"
    assert dm.do("intx 0 0 4 0 0") == "0"
    # A full 64-bit address and 32-bit data arrive whole (qemu-xen passes an
    # offset in the APIC's window; Xen reads only what it decodes).
    assert dm.do("msi %d %d" % (0x123456789ABC1004, 0xFEDC0031)) == "0"
    hv.pump(0)
    assert got == [(0xFEE01004, 0x4028), (0x123456789ABC1004, 0xFEDC0031)]
    assert hv.irq_log == [("intx", 4, 0, 1), ("msi", 0xFEE01004, 0x4028), ("intx", 4, 0, 0),
                          ("msi", 0x123456789ABC1004, 0xFEDC0031)]
    assert hv.stats["requests"] == requests  # none was a message
    # Vector 0 names a pirq (hvm_inject_msi), which this domain has none of.
    assert dm.do("msi %d %d" % (0xFEE01004, 0x4000)) == "E34"
    assert got == [(0xFEE01004, 0x4028), (0x123456789ABC1004, 0xFEDC0031)]


def test_a_message_after_levels_comes_after_them(rig):
    hv, dm, _ = rig
    # No pump between: the levels are in the ring, the link route a message.
    dm.send("toggle 6 3")
    time.sleep(0.2)
    assert dm.do("route 2 11") == "0"
    assert dm.result() == "0"  # the toggle's answer came first; this is the route's
    assert hv.irq_log == [("intx", 6, 0, 1), ("intx", 6, 0, 0), ("intx", 6, 0, 1),
                          ("route", 2, 11)]
    assert hv.gsi_level(11) == 1  # 06.0's INTA is on link (6 + 0) & 3 = 2


def test_a_full_ring_loses_nothing_and_keeps_the_order(rig):
    hv, dm, lines = rig
    n = proto.IRQ_RING + 300
    dm.send("toggle 9 %d" % n)
    # host_sim does not serve it for a while: the ring fills, and the calls
    # after that wait for host_sim as messages.
    time.sleep(1.0)
    assert hv.intx_level(9) == 0 and not hv.irq_log
    assert dm.result(timeout=60) == "0"
    hv.pump(0)
    assert len(lines) == n
    assert lines == [(9, 0, 1 - (i & 1)) for i in range(n)]
    assert hv.intx_level(9) == (n & 1)


@pytest.mark.parametrize("call", [
    "intx 0 0 4 0 2",      # dm.c: level 0 or 1
    "intx 0 0 4 0 255",
    "intx 0 0 32 0 1",     # device > 0x1f
    "intx 0 0 4 4 1",      # INTx pin > 3 (INTD)
    "intx 1 0 4 0 1",      # segment 0 only
    "intx 0 1 4 0 1",      # bus 0 only
    "isa 16 1",            # ISA IRQs 0-15
    "isa 3 2",
])
def test_bad_levels_are_refused_as_xen_refuses_them(rig, call):
    hv, dm, lines = rig
    assert dm.do(call) == "E%d" % EINVAL
    hv.pump(0)
    assert hv.irq_log == [] and lines == []
    assert dm.do("intx 0 0 4 0 1") == "0"  # and the next good one still works
    hv.pump(0)
    assert hv.irq_log == [("intx", 4, 0, 1)]


def test_the_level_is_the_dm_ops_byte(rig):
    hv, dm, _ = rig
    # libxendevicemodel stores the caller's unsigned int in the dm_op's uint8_t.
    assert dm.do("intx 0 0 4 0 257") == "0"
    assert dm.do("isa 7 256") == "0"
    hv.pump(0)
    assert hv.irq_log == [("intx", 4, 0, 1), ("isa", 7, 0)]


def test_a_scribbled_ring_is_survived(rig):
    hv, dm, lines = rig
    assert dm.do("intx 0 0 4 0 1") == "0"
    hv.pump(0)
    (ring,) = hv._irq_rings
    notes = []
    hv.log = notes.append
    # The device model's half is its own memory: an index far past ours...
    struct.pack_into("<I", ring.shm, proto.IRQ_OFF_PROD, ring.cons + proto.IRQ_RING + 1)
    hv.irq_drain()
    assert notes and "out of range" in notes[-1]
    # ... and entries libsim would never write (bits past a device, an IRQ):
    base = ring.cons
    for i, e in enumerate([0x0100 | (4 << 3), proto.IRQ_ISA | 0x0040, (5 << 3) | 1]):
        struct.pack_into("<H", ring.shm, proto.IRQ_OFF_RING + 2 * ((base + i) % proto.IRQ_RING),
                         e)
    struct.pack_into("<I", ring.shm, proto.IRQ_OFF_PROD, base + 3)
    hv.irq_drain()
    assert len(notes) == 3
    assert hv.irq_log[-1] == ("intx", 5, 0, 1) and len(hv.irq_log) == 2
    # The ring still works for the device model afterwards.
    assert dm.do("intx 0 0 4 0 0") == "0"
    hv.pump(0)
    assert hv.irq_log[-1] == ("intx", 4, 0, 0)


def test_a_device_model_that_exits_has_its_last_levels_applied(rig):
    hv, dm, lines = rig
    dm.send("toggle 7 5")
    assert dm.result() == "0"
    dm.send("exit")
    dm.proc.wait(10)
    for _ in range(50):
        hv.pump(0.01)
    assert lines == [(7, 0, 1), (7, 0, 0), (7, 0, 1), (7, 0, 0), (7, 0, 1)]
    assert hv._irq_rings == []  # its ring went with its connection


def test_the_protocol_numbers_match_the_c_header():
    import re

    text = open(os.path.join(ROOT, "host_sim", "libsim", "hostsim_proto.h")).read()
    defs = dict((n, int(v, 0)) for n, v in
                re.findall(r"#define HS_IRQ_(\w+) (0x[0-9a-fA-F]+|\d+)", text))
    assert defs and all(getattr(proto, "IRQ_" + n) == v for n, v in defs.items())
