"""The fuzzer (host_sim/fuzz.py) on a machine with both NICs: every BAR and
the configuration space of rtl8139 and e1000 are reached, and nothing is
found (no exception, no IRQ line left wrong, no value wider than its access,
no growth, no request over the bound of hypervisor calls).

The NICs' networks loop every transmitted frame back, so whatever the
fuzzer makes the NICs send also comes in through their receive paths, and
guest RAM (where descriptors live) is the fuzzer's.

Slow requests: the fuzzer's 10 ms bound is the dispatcher's own floor for a
4 KiB rep of byte accesses to MMIO (about 5 ms here on an idle core, twice
that with the other cores busy), so this test allows 25 ms; the fuzz CLI
keeps 10 ms.
"""
import sys

from host_sim import fuzz
from stubdm.machine import Machine
from stubdm.net import MemoryNet


class LoopNet(MemoryNet):
    """Frames sent come back (bounded: the wire keeps a few, drops the rest)."""

    def __init__(self):
        super().__init__(None)

    def transmit(self, frame):
        if not super().transmit(frame):
            return False
        self.sent = self.sent[-4:]
        if len(self.backlog) < 8:
            self.deliver(frame)
        return True


def nic_machine(platform, chardevs, ram_bytes):
    mem = fuzz.FakeGuestMemory(ram_bytes)
    m = Machine(platform, chardevs, ram_bytes, True, (0,),
                nics=[("rtl8139", 0, LoopNet(), None), ("e1000", 0, LoopNet(), None)],
                nic_mem=mem)
    m.fuzz_mem = mem  # the Rig's guest RAM, where the fuzzer writes
    return m


def run(device, requests, seed):
    fz = fuzz.Fuzzer(seed=seed, requests=requests, device=device, factory=nic_machine,
                     slow_s=0.025, shrink_seconds=5)
    problems = fz.run()
    fuzz.report(fz, problems, sys.stdout)
    return fz, problems


def check(device, requests=40000, seed=12):
    fz, problems = run(device, requests, seed)
    names = [n for n in fuzz.device_names(fz._rig().machine) if fuzz.name_matches(n, device)]
    assert names, device
    for n in names:
        assert any(t == n or t == n + " config" for t in fz.coverage), (n, fz.coverage)
    for bar in ("BAR0", "BAR1"):  # the registers themselves, wherever the fuzzer put them
        assert fz.coverage.get(device + " " + bar, 0) > requests // 20, fz.coverage
    assert not problems, "\n".join("%s: %s\n%s" % (p.kind, p.message, "\n".join(
        fuzz.format_request(r) for r in (p.reproducer or []))) for p in problems)


def test_rtl8139_fuzzed_clean():
    check("rtl8139")


def test_e1000_fuzzed_clean():
    check("e1000")
