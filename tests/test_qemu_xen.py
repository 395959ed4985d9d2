"""qemu-xen (Debian's qemu-system-xen) on host_sim: host_sim's Xen libraries
(build/out/libsim-xen), what the hypervisor gives it, and the runner.

The hypervisor's new calls are also tested without qemu-xen (SimHypervisor
alone); the rest skips only where qemu-xen or the library is not built
(build/provision_qemu.sh, scons libsim-xen).
"""
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from host_sim import proto, qemu_xen
from host_sim.hypervisor import (DeviceModelGone, DeviceModelHung, SimHypervisor, VGA_HOLE,
                                 HVMMEM_MMIO_DM, HVMMEM_RAM_RO, PAGE)
from host_sim.scripted import ROOT, ScriptedGuest
from stubdm import abi

MISSING = qemu_xen.missing()
needs_qemu_xen = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
LIB = os.path.join(qemu_xen.LIBDIR, "libhostsim-xen.so")
BINARY = os.path.join(ROOT, "build", "trixie-root", "usr", "libexec", "xen-qemu-system-i386")
VGA_SLOT = 3
VRAM_BAR = 0xE0000000


def _gone(pid):
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ---------------------------------------------------------------- the library

def _dynsyms(path):
    out = subprocess.run(["objdump", "-T", path], capture_output=True, text=True, check=True)
    syms = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and (parts[-2].startswith("VERS_") or "libxenctrl" in parts[-2]
                                or parts[-2].startswith("(")):
            syms.setdefault(parts[-1], []).append((parts[-2].strip("()"), "*UND*" in line))
    return syms


@needs_qemu_xen
@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump (binutils)")
def test_library_defines_every_versioned_xen_import_of_qemu_xen():
    wanted = {}
    for name, vers in _dynsyms(BINARY).items():
        for ver, undefined in vers:
            if undefined and name.startswith(("xc_", "xendevicemodel_", "xenforeignmemory_",
                                              "xenevtchn_", "xengnttab_")):
                wanted[name] = ver
    assert len(wanted) >= 55, wanted  # 18 xc_, 20 dm, 7 fmem, 8 evtchn, 6 gnttab in 11.1
    have = {n: [v for v, u in vs if not u] for n, vs in _dynsyms(LIB).items()}
    missing = {n: v for n, v in wanted.items() if v not in have.get(n, [])}
    assert not missing


@needs_qemu_xen
def test_library_replaces_only_the_five_sonames_and_needs_no_xen():
    names = sorted(n for n in os.listdir(qemu_xen.LIBDIR) if n.startswith("libxen"))
    assert names == ["libxenctrl.so.4.20", "libxendevicemodel.so.1", "libxenevtchn.so.1",
                     "libxenforeignmemory.so.1", "libxengnttab.so.1"]
    needed = subprocess.run(["objdump", "-p", LIB], capture_output=True, text=True).stdout
    assert "libxen" not in "".join(line for line in needed.splitlines() if "NEEDED" in line)


_CHILD = textwrap.dedent("""
    import ctypes, errno, sys, threading
    lib = ctypes.CDLL(sys.argv[1], use_errno=True)
    mode = sys.argv[2]
    if mode == "enosys":
        pirq = ctypes.c_int(0)
        r = lib.xc_physdev_map_pirq(None, 1, 5, ctypes.byref(pirq))
        r2 = lib.xc_physdev_map_pirq(None, 1, 5, ctypes.byref(pirq))
        print(r, r2, ctypes.get_errno() == errno.ENOSYS)
        sys.exit(0)
    xch = lib.xc_interface_open(None, None, 0)
    lib.xc_interface_open.restype = ctypes.c_void_p
    bad = []
    def worker(index):
        v = ctypes.c_ulong(0)
        for _ in range(300):
            if lib.xc_get_hvm_param(None, 1, index, ctypes.byref(v)) != 0 or \\
                    v.value != 1000 + index:
                bad.append((index, v.value))
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    print("bad", len(bad))
""")


@needs_qemu_xen
def test_passthrough_calls_fail_enosys_and_say_so_once():
    r = subprocess.run([sys.executable, "-c", _CHILD, LIB, "enosys"], capture_output=True,
                       text=True, timeout=30)
    assert r.stdout.split() == ["-1", "-1", "True"]
    assert r.stderr.count("xc_physdev_map_pirq: not simulated") == 1


@needs_qemu_xen
def test_library_is_thread_safe():
    # Eight threads of one process share libsim's socket; each must get its
    # own answer (ctypes drops the GIL around every call).
    d = tempfile.mkdtemp()
    hv = SimHypervisor(os.path.join(d, "hv.sock"), ram_mib=8)
    try:
        for i in range(8):
            hv.hvm_params[i] = 1000 + i
        env = dict(os.environ, **{proto.SOCKET_ENV: hv.sock_path})
        child = subprocess.Popen([sys.executable, "-c", _CHILD, LIB, "threads"], env=env,
                                 stdout=subprocess.PIPE, text=True)
        hv.alive = lambda: child.poll() is None
        while child.poll() is None:
            hv.pump(0.05)
        assert child.stdout.read().split() == ["bad", "0"]
        assert len([e for e in hv.param_log if e[0] == "get"]) == 8 * 300
    finally:
        hv.close()
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- the hypervisor alone

@pytest.fixture
def hv():
    d = tempfile.mkdtemp()
    h = SimHypervisor(os.path.join(d, "hv.sock"), ram_mib=16)
    h.punch_vga_hole()
    yield h
    h.close()
    shutil.rmtree(d, ignore_errors=True)


def _runs(*runs):
    return struct.pack("<HI", 1, len(runs)) + b"".join(struct.pack("<QQ", g, n)
                                                       for g, n in runs)


def test_vga_hole_is_not_ram(hv):
    g = ScriptedGuest(hv)
    assert hv.guest_memory(VGA_HOLE[0] - 1, 1) is not None
    assert hv.guest_memory(VGA_HOLE[0], 1) is None
    assert hv.guest_memory(VGA_HOLE[1] - 1, 1) is None
    assert hv.guest_memory(VGA_HOLE[1], 1) is not None
    with pytest.raises(ValueError):
        g.memwrite(0xA0000, b"x")
    assert g.readb(0xB8000) == 0xFF  # nobody claims it: all ones


def test_populate_within_maxmem_only(hv):
    top = hv.ram_size // PAGE
    budget = hv.max_extra_pages()
    assert hv.populate_physmap(1, _runs((top, budget + 1))) == -22  # over in one run
    assert hv.populate_physmap(2, _runs((top, budget // 2), (top + budget, budget))) == -12
    assert hv.populated == {}
    assert hv.populate_physmap(1, _runs((top, 16))) == 0
    assert hv.populate_physmap(1, _runs((top + 8, 16))) == -17  # overlap: all or nothing
    assert hv.populate_physmap(1, _runs((0x100, 1))) == -17  # guest RAM
    assert hv.populate_physmap(1, _runs((0xA0, 1))) == 0  # the VGA hole is unpopulated
    assert len(hv.populated) == 17
    hv.guest_memory(top * PAGE, 4)[:] = b"VRAM"
    assert bytes(hv.guest_memory(top * PAGE, 4)) == b"VRAM"


def test_relocate_moves_pages_and_their_contents(hv):
    top = hv.ram_size // PAGE
    assert hv.populate_physmap(1, _runs((top, 4))) == 0
    hv.guest_memory(top * PAGE + PAGE, 4)[:] = b"page"
    assert hv.relocate_memory(4, top + 4, 0xE0000) == -22  # not populated
    assert hv.relocate_memory(4, top, 0x100) == -22  # onto RAM it did not populate
    assert hv.relocate_memory(4, top, 0xE0000) == 0
    assert hv.guest_memory(top * PAGE, 1) is None
    assert bytes(hv.guest_memory(0xE0001000, 4)) == b"page"
    _, body, fds = hv._memory_map()
    gfns = [struct.unpack_from(proto.REGION_FORMAT, body, 4 + 32 * i)[0]
            for i in range(struct.unpack_from("<I", body)[0])]
    assert 0xE0000 in gfns and top not in gfns


def test_track_dirty_vram(hv):
    top = hv.ram_size // PAGE
    hv.populate_physmap(1, _runs((top, 16)))
    g = ScriptedGuest(hv)
    assert hv.track_dirty_vram(top, 16) == (0, b"\xff\xff")  # a new range: all dirty
    assert hv.track_dirty_vram(top, 16) == (0, b"\x00\x00")
    g.writel(top * PAGE + 5 * PAGE + 8, 1)
    g.writeb(top * PAGE + 9 * PAGE, 1)
    assert hv.track_dirty_vram(top, 16) == (0, bytes([1 << 5, 1 << 1]))
    assert hv.track_dirty_vram(top, 0) == (0, b"")  # stop
    assert hv.track_dirty_vram(top, (1 << 30) // PAGE + 1)[0] == -22


def test_mem_types_and_params(hv):
    g = ScriptedGuest(hv)
    g.writel(0x5000, 0x11223344)
    assert hv.set_mem_type(HVMMEM_RAM_RO, 5, 1) == 0
    g.writel(0x5000, 0)  # ram_ro: writes are discarded
    assert g.readl(0x5000) == 0x11223344
    assert hv.set_mem_type(HVMMEM_MMIO_DM, 5, 1) == -22  # RAM
    assert hv.set_mem_type(HVMMEM_MMIO_DM, 0xF0000, 1) == 0  # a hole
    assert hv.set_mem_type(3, 5, 1) == -22
    assert hv.hvm_param(14, True, 3) == (0, 3)
    assert hv.hvm_param(14, False, 0) == (0, 3)
    assert hv.hvm_param(2, False, 0) == (0, 0)
    assert hv.hvm_param(39, False, 0)[0] == -22


def test_buffered_write_falls_back_when_it_cannot_be_buffered(hv):
    sid = hv._create_server(0)  # no buffered page
    s = hv.servers[sid]
    assert not hv.try_send_buffered(s, abi.IOREQ_TYPE_COPY, 0xA0000, 1, 1)
    sid = hv._create_server(abi.HVM_IOREQSRV_BUFIOREQ_ATOMIC)
    s = hv.servers[sid]
    assert not hv.try_send_buffered(s, abi.IOREQ_TYPE_COPY, 0x100000, 1, 1)  # above 1 MiB
    assert not hv.try_send_buffered(s, abi.IOREQ_TYPE_COPY, 0xA0000, 3, 1)
    page = hv.page_of(s.buf_gfn)
    for i in range(abi.IOREQ_BUFFER_SLOT_NUM):
        assert hv.try_send_buffered(s, abi.IOREQ_TYPE_COPY, 0xA0000 + i, 1, i & 0xFF)
    assert not hv.try_send_buffered(s, abi.IOREQ_TYPE_COPY, 0xA0000, 1, 0)  # full
    struct.pack_into("<I", page, 0, abi.IOREQ_BUFFER_SLOT_NUM)  # the DM read them all
    assert hv.try_send_buffered(s, abi.IOREQ_TYPE_COPY, 0xA0000, 8, 1 << 40)  # two slots
    # BUFIOREQ_ATOMIC: Xen brings both pointers back below the ring size.
    assert struct.unpack_from("<II", page, 0) == (0, 2)


# ---------------------------------------------------------------- qemu-xen itself

@pytest.fixture
def qx():
    with qemu_xen.QemuXenSession(ram_mib=64) as s:
        yield s


def _chain4(g):
    g.outb(0x3C4, 0x04)
    g.outb(0x3C5, 0x08)  # sequencer memory mode: chain 4
    g.outb(0x3C4, 0x02)
    g.outb(0x3C5, 0x0F)  # map mask: all planes


@needs_qemu_xen
def test_qemu_xen_starts_as_under_libxl(qx):
    hv = qx.hv
    assert qx.dm_state() == "running"
    (s,) = hv.servers.values()
    assert s.bufioreq_handling == abi.HVM_IOREQSRV_BUFIOREQ_ATOMIC
    top = hv.ram_size // PAGE
    assert ("populate", top, qemu_xen.VIDEORAM_MIB << 8) in hv.physmap_log  # VRAM above RAM
    assert (0, 0, 2, 0) in s.pcidevs and (0, 0, VGA_SLOT, 0) in s.pcidevs
    assert qx.guest.pci_read(2, 0, 0) == 0x00015853
    assert qx.guest.pci_read(VGA_SLOT, 0, 0) == 0x11111234
    # It claims what Xen keeps; Xen's own emulation still answers there.
    assert s.overlaps(0, 0x70, 0x71) and s.overlaps(1, 0xFEC00000, 0xFEC00000)
    before = hv.stats["ioreqs"]
    qx.guest.outb(0x70, 0x0A)
    qx.guest.inb(0x71)
    qx.guest.readl(0xFEC00000)
    qx.guest.readl(0xFED00000)
    qx.guest.readl(0xFEE00030)
    assert hv.stats["ioreqs"] == before
    assert "grant_copy: not simulated" in qx.dm_messages()


@needs_qemu_xen
def test_vga_window_writes_are_buffered_and_reach_vram(qx):
    g, hv = qx.guest, qx.hv
    (s,) = hv.servers.values()
    _chain4(g)
    page = hv.page_of(s.buf_gfn)
    wp0 = struct.unpack_from("<I", page, 4)[0]
    before = hv.stats["ioreqs"]
    for i, b in enumerate(b"stubdm"):
        g.writeb(0xA0000 + i, b)
    g.writeq(0xA0010, 0x1122334455667788)  # two slots
    assert hv.stats["ioreqs"] == before  # nothing synchronous
    assert (struct.unpack_from("<I", page, 4)[0] - wp0) & 0xFFFFFFFF in (8, 0)
    # Reads are synchronous; qemu-xen drains the buffered ring first.
    assert bytes(g.readb(0xA0000 + i) for i in range(6)) == b"stubdm"
    assert g.readl(0xA0010) == 0x55667788 and g.readl(0xA0014) == 0x11223344
    assert hv.stats["ioreqs"] > before


@needs_qemu_xen
def test_vram_moves_into_the_bar_and_is_guest_ram(qx):
    g, hv = qx.guest, qx.hv
    _chain4(g)
    g.writeb(0xA0000, 0x5A)
    g.pci_write(VGA_SLOT, 0, 0x10, VRAM_BAR | 8)
    g.pci_write(VGA_SLOT, 0, 0x04, 0x0003, 2)  # memory decode on: qemu-xen relocates
    moves = [e for e in hv.physmap_log if e[0] == "relocate"]
    assert moves and moves[-1][2] == VRAM_BAR // PAGE
    before = hv.stats["ioreqs"]
    g.writel(VRAM_BAR + 0x100, 0xCAFEF00D)  # RAM now: no ioreq
    assert g.readl(VRAM_BAR + 0x100) == 0xCAFEF00D
    assert g.readb(VRAM_BAR) == 0x5A  # the byte the legacy window wrote
    assert hv.stats["ioreqs"] == before
    assert g.readb(0xA0100) == 0x0D  # and qemu-xen sees the guest's store
    g.pci_write(VGA_SLOT, 0, 0x04, 0x0000, 2)  # decode off: it moves back
    assert hv.guest_memory(VRAM_BAR, 4) is None


# ---------------------------------------------------------------- the runner

class _Recorded(qemu_xen.QemuXenSession):
    made = []

    def __init__(self, *a, **kw):
        _Recorded.made.append(self)
        super().__init__(*a, **kw)


@needs_qemu_xen
def test_a_qemu_xen_that_fails_to_start_is_named_and_leaves_nothing():
    _Recorded.made = []
    with pytest.raises(qemu_xen.QemuXenFailed) as e:
        _Recorded(dm_args_extra=["-device", "no-such-device"])
    assert "qemu-xen did not start" in str(e.value) and "no-such-device" in str(e.value)
    assert _gone(_Recorded.made[0].proc.pid)
    assert not os.path.exists(_Recorded.made[0].dir)


@needs_qemu_xen
def test_a_dead_qemu_xen_is_reported(qx):
    pid = qx.proc.pid
    os.kill(pid, signal.SIGKILL)
    qx.proc.wait(5)
    with pytest.raises(DeviceModelGone):
        qx.guest.inb(0x3FF)
    qx.close()
    assert _gone(pid)


@needs_qemu_xen
def test_a_hung_qemu_xen_is_reported_and_ended(qx):
    pid = qx.proc.pid
    qx.hv.timeout = 1.0
    os.killpg(pid, signal.SIGSTOP)
    t = time.monotonic()
    with pytest.raises(DeviceModelHung):
        qx.guest.inb(0x3FF)
    assert time.monotonic() - t < 5
    qx.close()
    assert _gone(pid)


@needs_qemu_xen
def test_closing_host_sim_ends_qemu_xens_group(qx):
    # qemu-xen spins once host_sim's socket closes; close() ends its group.
    pid = qx.proc.pid
    t = time.monotonic()
    qx.close()
    assert _gone(pid) and time.monotonic() - t < 10


@needs_qemu_xen
def test_a_runner_killed_with_sigkill_leaves_no_qemu_xen(tmp_path):
    # Nobody is left to end the group: qemu-xen must die with its runner,
    # or it spins at full speed on host_sim's closed socket.
    code = textwrap.dedent("""
        import sys, time
        from host_sim import qemu_xen
        s = qemu_xen.QemuXenSession(ram_mib=64)
        print(s.proc.pid, flush=True)
        time.sleep(300)
    """)
    runner = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        pid = int(runner.stdout.readline())
        assert not _gone(pid)
        runner.kill()
        runner.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(pid), "qemu-xen outlived its runner"
    finally:
        runner.kill()


# ---------------------------------------------------------------- the command line

def _cli(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "host_sim"] + list(argv), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@needs_qemu_xen
def test_cli_script_on_qemu_xen():
    r = _cli("--dm", "qemu-xen", "script")
    assert r.returncode == 0, r.stderr
    assert "00:02.0 5853:0001 class ff8000" in r.stdout
    assert "i8042 self test: 0x55" in r.stdout
    assert "Hello from the scripted guest" in r.stdout


@needs_qemu_xen
def test_cli_qemu_xen_that_does_not_start_exits_3(tmp_path, monkeypatch):
    from host_sim import cli

    monkeypatch.setattr(qemu_xen, "WRAPPER", shutil.which("false"))
    assert cli.main(["--dm", "qemu-xen", "script"]) == cli.EXIT_DM


@needs_qemu_xen
def test_boot_a_real_guest_on_qemu_xen():
    from host_sim import engine, qtest_qemu

    if qtest_qemu.find_qemu() is None or None in engine.find_kernel():
        pytest.skip("no QEMU engine or guest image (build/setup.sh)")
    r = _cli("boot", "--dm", "qemu-xen", "--timeout", "240", "--run",
             "ls /sys/bus/pci/devices; cat /sys/bus/pci/devices/0000:00:02.0/vendor; "
             "ip link set eth0 up; ip link set eth1 up; cat /sys/class/net/eth*/address; "
             "for n in 1 2 3 4 5 6 7 8 9 10; do grep -q 0 /sys/class/net/eth*/carrier || break; "
             "sleep 1; done; for i in eth0 eth1; do echo link-$i=$(cat /sys/class/net/$i/carrier);"
             " done", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # platform device, VGA, pci-serial, rtl8139, e1000: all qemu-xen's
    for fn in ("0000:00:02.0", "0000:00:03.0", "0000:00:04.0", "0000:00:05.0",
               "0000:00:06.0"):
        assert fn in r.stdout
    assert "0x5853" in r.stdout
    # Linux's 8139too and e1000 read the MACs qemu-xen was given and see a link.
    assert "00:16:3e:00:00:01" in r.stdout and "00:16:3e:00:00:02" in r.stdout
    assert "link-eth0=1" in r.stdout and "link-eth1=1" in r.stdout


@needs_qemu_xen
def test_boot_names_a_qemu_xen_that_dies():
    import threading

    from host_sim import engine, qtest_qemu

    if qtest_qemu.find_qemu() is None or None in engine.find_kernel():
        pytest.skip("no QEMU engine or guest image (build/setup.sh)")
    k, i = engine.find_kernel()
    e = qemu_xen.engine_class()(qtest_qemu.find_qemu(), k, i, run="sleep 60", timeout=120)
    pids = []

    def kill_when_up():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not e.servers:
            time.sleep(0.1)
        if e.dm is not None:
            pids.append(e.dm.pid)
            os.killpg(e.dm.pid, signal.SIGKILL)

    t = threading.Thread(target=kill_when_up)
    t.start()
    with pytest.raises(DeviceModelGone) as err:
        e.boot()
    t.join()
    assert str(err.value).startswith("qemu-xen: ") and pids and _gone(pids[0])
    assert e.qemu_proc.poll() is not None  # the guest's QEMU went with it
