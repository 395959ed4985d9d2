"""Whole-rep I/O (stubdm/ioreq.py handing a rep to one port to a device's
read_rep/write_rep) against the same requests done one item at a time: the
same read data, guest RAM, IRQ levels, serial output and device state after
every request, for every device that takes reps, and the bulk path really
taken. Requests come from the fuzzer's generator for that device, with extra
reps of every count class at the device's ports (registers first written,
data ports, page-sized counts, df)."""
import os
import random
import time

import pytest

from host_sim import fuzz
from stubdm import log


class Recorder:
    def __init__(self):
        self.out = bytearray()

    def write(self, data):
        self.out += bytes(data)

    def flush(self):
        pass


def _rig(bulk):
    rig = fuzz.Rig(fuzz.default_machine, 16 << 20, instrument=False)
    rig.d.rep_bulk = bulk
    rig.recorders = []
    for u in rig.machine.uarts:
        u.chardev = Recorder()
        rig.recorders.append(u.chardev)
    return rig


def _devices(m):
    out = [("uart%d" % i, u) for i, u in enumerate(m.uarts)]
    for name in ("i8042", "port92", "pm", "platform_ports", "host_ports", "reset_control"):
        d = getattr(m, name, None)
        if d is not None:
            out.append((name, d))
    out += [(f.name, f) for f in m.pci]
    return out


def _plain(v):
    if isinstance(v, (int, str, bytes, bool, type(None), float)):
        return v
    if isinstance(v, bytearray):
        return bytes(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return None  # objects (callbacks, sub-devices): compared through their own state


def _state(dev):
    st = getattr(dev, "state", None)
    if st is not None:
        d = _plain(st())
    else:
        d = {k: _plain(v) for k, v in vars(dev).items()}
    return d


def _snapshot(rig):
    m = rig.machine
    return {
        "devices": {name: _state(d) for name, d in _devices(m)},
        "isa": dict(rig.platform.isa),
        "intx": dict(rig.platform.intx),
        "serial": [bytes(r.out) for r in rig.recorders],
        "shutdowns": list(rig.platform.shutdowns),
    }


def _targets(rig, device):
    gen = fuzz.Generator(random.Random(0), rig, device)
    gen._refresh()
    return gen.targets


# Byte values that put the devices in the states reps must get right: i8042
# commands (interfaces off and on, command data bytes to follow, keyboard
# resets), UART FIFO/loopback/DLAB/IER bits, ACPI enable, port 0x92 bits.
VALUES = (0xAD, 0xAE, 0xA7, 0xA8, 0x60, 0xD1, 0xD2, 0xD3, 0xD4, 0xF0, 0xF1, 0xF2, 0xF3,
          0xF4, 0xF5, 0xFF, 0xED, 0xEE, 0x80, 0x83, 0x03, 0x0F, 0x01, 0x02, 0x07, 0xC7, 0x10,
          0x1F, 0x00)


def _extra_write(rng, t):
    return ("S", fuzz.PIO if t.space == "pio" else fuzz.COPY,
            t.start + rng.randrange(min(t.length, 8)), rng.choice(VALUES), 1, 1, 0, 0, 0)


def _extra_rep(rng, t, rig):
    size = rng.choice((1, 1, 1, 2, 4))
    count = rng.choice((1, 2, 3, 5, 16, 17, 100, 4096 // size, 4096 // size))
    off = rng.randrange(t.length)
    end = rig.ram_bytes
    gpa = rng.choice((0x1000, 0x7FF00, end - count * size, end - 2, rng.randrange(end - 4096)))
    return ("S", fuzz.PIO if t.space == "pio" else fuzz.COPY, t.start + off, gpa, count, size,
            rng.randrange(2), 1, 1 if rng.random() < 0.3 else 0)


def _counting(rig, taken):
    """Counts in `taken` the reps devices took whole (the ranges there now)."""
    for r in list(rig.machine.pio.ranges) + list(rig.machine.mmio.ranges):
        for kind in ("read_rep", "write_rep"):
            f = getattr(r.dev, kind, None)
            if f is None or getattr(f, "counting", False):
                continue

            def wrap(off, size, count, buf, f=f, kind=kind, name=r.name):
                ok = f(off, size, count, buf)
                if ok is True:
                    taken.append((name, kind, count))
                return ok

            wrap.counting = True
            setattr(r.dev, kind, wrap)


def _map_bars(rig):
    """Config writes that give every function's BARs an address and decode on."""
    reqs = []
    io, mm = 0xC000, 0xE0000000
    for f in rig.machine.pci:
        addr = f.devfn << 32
        for idx, kind, size in f.bars():
            if kind == "io":
                io = (io + size - 1) // size * size  # BARs are aligned to their size
                base, io = io | 1, io + max(size, 16)
            else:
                mm = (mm + size - 1) // size * size  # BARs are aligned to their size
                base, mm = mm, mm + max(size, 4096)
            reqs.append(("S", fuzz.PCI, addr | (0x10 + 4 * idx), base, 1, 4, 0, 0, 0))
        reqs.append(("S", fuzz.PCI, addr | 4, 7, 1, 2, 0, 0, 0))
    pm = rig.machine.pm.devfn << 32  # PIIX4 PM's block where hvmloader puts it
    reqs += [("S", fuzz.PCI, pm | 0x40, 0xB001, 1, 4, 0, 0, 0),
             ("S", fuzz.PCI, pm | 0x80, 1, 1, 1, 0, 0, 0)]
    return reqs


def compare(device, seed, n):
    from stubdm.devices import rtl8139

    log.verbose = 0
    ticks = rtl8139.ticks_us
    rtl8139.ticks_us = lambda: 0  # TCTR counts real time: stopped, the two machines agree
    try:
        a, b = _rig(True), _rig(False)
        rng = random.Random(seed)
        for req in _map_bars(a):
            a.execute(req)
            b.execute(req)
        taken = []
        gen = fuzz.Generator(random.Random(seed), a, device)
        for i in range(n):
            if i % 250 == 249:
                for req in _map_bars(a):  # the generator moves BARs away: back again
                    a.execute(req)
                    b.execute(req)
            if rng.random() < 0.35:
                ts = _targets(a, device)
                if not ts:
                    continue
                t = rng.choice(ts)
                if rng.random() < 0.4:
                    req = _extra_write(rng, t)
                else:
                    req = _extra_rep(rng, t, a)
            else:
                req = gen.next()
            if req[0] == "E":
                continue  # device events are the back ends' (timers, input), not reps
            _counting(a, taken)  # BARs moved to new windows are counted too
            da = a.execute(req)[1]
            db = b.execute(req)[1]
            assert da == db, (i, fuzz.format_request(req))
            if req[0] == "S" and req[7] and req[6]:
                assert a.mem.mc.store == b.mem.mc.store, (i, fuzz.format_request(req))
            sa, sb = _snapshot(a), _snapshot(b)
            assert sa == sb, (i, fuzz.format_request(req))
            for rig in (a, b):
                if fuzz._done(rig):
                    rig.platform.shutdowns = []
                    rig.machine.reset_requested = False
            gen.learn(req, da)
        return taken
    finally:
        log.verbose = 1
        rtl8139.ticks_us = ticks


DEVICES = ["com1", "pci_serial", "i8042", "port92", "apm", "gpe0", "xen platform",
           "xen_platform", "pci host", "piix4_pm", "e1000", "rtl8139", "ide0", "ide1"]


@pytest.mark.parametrize("device", DEVICES)
def test_bulk_reps_match_single_items(device):
    taken = compare(device, seed=sum(map(ord, device)), n=1500)
    big = [t for t in taken if t[2] >= 1024]
    assert big, "no page-sized rep taken whole by %s: %r" % (device, taken[:10])


def _cost(rig, req, reps=3):
    best = None
    for _ in range(reps):
        c0 = time.thread_time()
        rig.execute(req)
        c = time.thread_time() - c0
        best = c if best is None else min(best, c)
    return best


def test_page_reps_cost_far_less_than_the_bound():
    # The bound is 10 ms a request; a page of single-byte items to
    # the data ports took 7-19 ms one by one. Whole, each must be well under.
    log.verbose = 0
    try:
        a, b = _rig(True), _rig(False)
        slow = []
        for name, off in (("com1", 0), ("i8042 data", 0), ("port92", 0), ("apm", 0),
                          ("gpe0", 0), ("xen platform", 2)):
            r = [x for x in a.machine.pio.ranges if x.name == name][0]
            for is_read in (1, 0):
                req = ("S", fuzz.PIO, r.start + off, 0x10000, 4096, 1, is_read, 1, 0)
                whole, single = _cost(a, req), _cost(b, req)
                if whole > fuzz.SLOW_S / 4:
                    slow.append((name, is_read, whole, single))
        assert not slow, slow
    finally:
        log.verbose = 1


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_bulk_reps_match_single_items_on_both_runtimes(interp):
    # tests/portable/rep_bulk_script.py: the ISA devices bulk and item by item.
    from tests import mp_runner

    script = os.path.join("tests", "portable", "rep_bulk_script.py")
    if interp == "micropython":
        if not mp_runner.micropython_available():
            pytest.skip(mp_runner.SKIP_REASON)
        r = mp_runner.run_micropython(script)
    else:
        r = mp_runner.run_cpython(script)
    assert r.returncode == 0, r.stderr
    line = [x for x in r.stdout.splitlines() if x.startswith("requests")][0]
    reps = int(line.split()[3])
    assert reps > 500 and line.endswith("differences 0"), line
