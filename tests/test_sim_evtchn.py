"""host_sim's event channels as the device model's libsim sees them: no message per
event (shared memory, a pipe, an eventfd: hostsim_proto.h's HS_EVTCHN_*), and the
evtchn device's rules kept: a port is masked as it is delivered, events while masked
come once at the unmask, the fd hangs up when host_sim goes, a full ring says EFBIG.

The device model's side is a small script on the real glue (CPython's cffi module,
MicroPython's _xenglue), driven line by line while host_sim's loop runs here.
"""
import mmap
import os
import re
import select
import subprocess
import sys
import time

import pytest

from host_sim.hypervisor import EvtchnHandle, SimHypervisor
from tests.conftest import MICROPYTHON, ROOT, skip_unless_runtime

POLLIN, POLLHUP = select.POLLIN, select.POLLHUP
EFBIG, EINVAL, ECONNRESET = 27, 22, 104

# The device model: one command per line in, one result per line out.
CHILD = r"""
import select
import sys
try:
    import _xenglue as glue
except ImportError:
    from stubdm import glue_cffi as glue
x = glue.Xen(int(sys.argv[1]))
fd = x.evtchn_fd()


def ready(ms):
    p = select.poll()
    p.register(fd, select.POLLIN)
    r = p.poll(ms)
    return r[0][1] if r else 0


while True:
    words = sys.stdin.readline().split()
    if not words or words[0] == "exit":
        break
    cmd, args = words[0], [int(w) for w in words[1:]]
    try:
        if cmd == "bind":
            out = x.bind_interdomain(args[0])
        elif cmd == "ready":
            out = ready(args[0])
        elif cmd == "pending":
            out = ",".join(str(x.pending()) for _ in range(args[0]))
        elif cmd == "nowait":
            out = ",".join(str(x.pending_nowait()) for _ in range(args[0]))
        elif cmd == "unmask":
            out = x.unmask(args[0])
        elif cmd == "notify":
            for _ in range(args[1]):
                x.notify(args[0])
            out = 0
    except OSError as e:
        out = "E%d" % e.args[0]
    sys.stdout.write("%s\n" % out)
    sys.stdout.flush()
"""


class Dm:
    """A device model process running `child` (a script like CHILD: one command a
    line in, one result a line out) on the runtime's real glue."""

    def __init__(self, hv, runtime, child=CHILD):
        env = dict(os.environ, HOST_SIM_SOCKET=hv.sock_path, PYTHONPATH=ROOT)
        exe = [sys.executable, "-u"] if runtime == "cpython" else [MICROPYTHON]
        self.hv = hv
        self.proc = subprocess.Popen(exe + ["-c", child, str(hv.domid)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def result(self, pump=True, timeout=20.0, what="its answer"):
        """Serve host_sim (unless it is closed) until the device model's next answer."""
        out = self.proc.stdout
        deadline = time.monotonic() + timeout
        while not select.select([out], [], [], 0 if pump else timeout)[0]:
            assert time.monotonic() < deadline, "the device model did not answer " + what
            assert self.proc.poll() is None, "the device model died at " + what
            if pump:
                self.hv.pump(0.005)
        return out.readline().decode().strip()

    def do(self, line, pump=True, timeout=20.0):
        """Send one command; serve host_sim until the answer."""
        self.send(line)
        return self.result(pump, timeout, line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(params=["cpython", "micropython"])
def rig(request, tmp_path):
    skip_unless_runtime(request.param)
    hv = SimHypervisor(str(tmp_path / "hv.sock"), ram_mib=4)
    dm = Dm(hv, request.param)
    yield hv, dm
    dm.close()
    hv.close()


def _guest_port(hv, got):
    """A port of the guest left unbound for the device model (as an ioreq server's)."""
    return hv.evtchn.alloc_unbound(hv.domid, hv.dm_domid, callback=got.append)


def test_delivered_once_masked_until_unmask_then_again(rig):
    hv, dm = rig
    port = _guest_port(hv, [])
    local = int(dm.do("bind %d" % port))
    assert dm.do("ready 0") == "0"
    for _ in range(3):
        assert hv.signal(port)
    assert int(dm.do("ready 0")) & POLLIN
    assert dm.do("pending 1") == str(local)
    # Masked now: the three events were one delivery, and a fourth is only remembered.
    assert dm.do("ready 0") == "0"
    hv.signal(port)
    assert dm.do("ready 0") == "0"
    # The unmask delivers what came while masked, once.
    assert dm.do("unmask %d" % local) == "0"
    assert int(dm.do("ready 5000")) & POLLIN
    assert dm.do("pending 1") == str(local)
    assert dm.do("unmask %d" % local) == "0"
    assert dm.do("ready 100") == "0"
    # Unmasked with nothing pending: the next event is delivered at once.
    hv.signal(port)
    assert int(dm.do("ready 0")) & POLLIN
    assert dm.do("pending 1") == str(local)


def test_pending_nowait_takes_what_is_delivered_and_never_blocks(rig):
    hv, dm = rig
    answers = []
    port = hv.evtchn.alloc_unbound(hv.domid, hv.dm_domid,
                                   callback=lambda _p: answers.append(hv.signal(port)))
    local = int(dm.do("bind %d" % port))
    # Nothing delivered: -1 at once (host_sim is not even served meanwhile).
    assert dm.do("nowait 2", pump=False, timeout=5) == "-1,-1"
    hv.signal(port)
    # Delivered once, then masked: nothing more to take.
    assert dm.do("nowait 2") == "%d,-1" % local
    assert dm.do("unmask %d" % local) == "0"
    assert dm.do("nowait 1") == "-1"
    # The device model notifies; host_sim's answer is the next event, taken by
    # the main loop's burst without waiting in poll.
    assert dm.do("notify %d 1" % local) == "0"
    assert int(dm.do("ready 5000")) & POLLIN
    assert dm.do("nowait 2") == "%d,-1" % local
    assert answers == [True]


def test_notify_storm_coalesces_and_only_own_ports_count(rig):
    hv, dm = rig
    got = []
    port = _guest_port(hv, got)
    local = int(dm.do("bind %d" % port))
    assert dm.do("notify %d 20000" % local) == "0"
    hv.pump(0.05)
    # Every notify is an EVTCHNOP_send, but a port already pending takes no second
    # event; host_sim is not made to do 20000 of anything.
    assert 1 <= len(got) <= 20000 and set(got) == {port}
    sent = hv.evtchn.stats["sent"]
    assert sent == len(got)
    before = len(got)
    assert dm.do("notify %d 1" % local) == "0"
    deadline = time.monotonic() + 5
    while len(got) == before and time.monotonic() < deadline:
        hv.pump(0.01)
    assert got[before:] == [port]
    # A port that is not the caller's sends nothing; one out of range is refused.
    assert dm.do("notify %d 1" % (local + 7)) == "0"
    hv.pump(0.05)
    assert hv.evtchn.stats["sent"] == sent + 1
    assert dm.do("notify 0 1") == "E%d" % EINVAL
    assert dm.do("notify 4096 1") == "E%d" % EINVAL
    assert dm.do("unmask 9999") == "E%d" % EINVAL


def test_full_ring_says_efbig_and_the_handle_serves_on(rig):
    hv, dm = rig
    ports = [_guest_port(hv, []) for _ in range(1030)]
    locals_ = [int(dm.do("bind %d" % p)) for p in ports]
    for p in ports:
        hv.signal(p)
    got = dm.do("pending 1024").split(",")
    assert [int(v) for v in got] == locals_[:1024]
    # The ring held 1024: what came after is lost, and the reader is told so.
    assert dm.do("pending 1") == "E%d" % EFBIG
    assert dm.do("ready 0") == "0"
    assert dm.do("unmask %d" % locals_[1]) == "0"
    hv.signal(ports[1])
    assert dm.do("pending 1") == str(locals_[1])


def test_fd_hangs_up_when_host_sim_goes(rig):
    hv, dm = rig
    port = _guest_port(hv, [])
    local = int(dm.do("bind %d" % port))
    hv.signal(port)
    hv.close()
    # The byte already there is still read; then the end of the stream.
    assert int(dm.do("ready 5000", pump=False)) & POLLHUP
    assert dm.do("pending 1", pump=False) == str(local)
    assert dm.do("pending 1", pump=False) == "E%d" % ECONNRESET


def test_device_model_death_closes_its_handles(rig):
    hv, dm = rig
    got = []
    port = _guest_port(hv, got)
    dm.do("bind %d" % port)
    assert len(hv.handles) == 1
    dm.proc.kill()
    dm.proc.wait()
    deadline = time.monotonic() + 5
    while hv.handles and time.monotonic() < deadline:
        hv.pump(0.01)
    assert not hv.handles and not hv.signal(port)
    assert hv.evtchn.get(hv.domid, port).state == 1  # UNBOUND again, for a new one


def _layout():
    text = open(os.path.join(ROOT, "host_sim", "libsim", "hostsim_proto.h")).read()
    return dict((n, int(v, 0)) for n, v in
                re.findall(r"#define HS_EVTCHN_(\w+) (0x[0-9a-f]+|\d+)", text))


def test_a_scribbling_peer_costs_host_sim_nothing_unbounded():
    lay = _layout()
    h = EvtchnHandle(1)
    try:
        peer = mmap.mmap(h.shm_fd, lay["SHM_SIZE"])
        h.bind(5)
        # Every state byte masked and pending, every bit set, the ring's reader
        # index anywhere: nothing is delivered, nothing loops, take() is bounded.
        peer[0:lay["PORTS"]] = b"\xff" * lay["PORTS"]
        peer[lay["OFF_SEND"]:lay["OFF_RING"]] = b"\xff" * (lay["OFF_RING"] - lay["OFF_SEND"])
        peer[lay["OFF_CONS"]:lay["OFF_CONS"] + 4] = b"\x00\x00\x00\x80"
        for port in (5, 0, 4095, 4096, 1 << 31):
            h.deliver(port)
            h.redeliver(port)
        assert not select.select([h.pipe_r], [], [], 0)[0]
        taken = h.take()
        assert len(taken) == 2 * 64 * 64 and len(h.take()) == 0
        # A reset port is clean again; a reader index far off means a full ring.
        h.bind(5)
        assert peer[5] == 0
        h.deliver(5)
        assert peer[lay["OFF_OVERFLOW"]] == 1
        peer.close()
    finally:
        h.close()
    h.deliver(5)  # after close: nothing, no crash
    assert h.take() == []



@pytest.mark.parametrize("runtime", ["cpython", "micropython", "port"])
def test_ioreq_round_trips_answered_in_c_are_split_into_hops(runtime):
    # What bench pio prints under the ioreq round trip: each request answered
    # in C counted once, with the three hops from libsim's stamps (pending(),
    # notify()) and host_sim's delivery, in order and each under a second.
    from host_sim import scripted

    skip_unless_runtime(runtime)
    with scripted.Session(runtime=runtime, dm_args=["-device", "pci-serial"]) as s:
        before = s.hv.hop_stats()["n"]
        for _ in range(50):
            assert s.guest.inb(0x3FD) == 0x60
        hops = s.hv.hop_stats()
    # A few may go the slow way (a kick with something else in it): not counted.
    assert 40 <= hops["n"] - before <= 50
    for k in ("to_dm_ns", "in_dm_ns", "back_ns"):
        assert 0 < hops[k] < hops["n"] * 10**9
