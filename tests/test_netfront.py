"""netfront in the device model against host_sim's netback and a TAP in a private
network namespace: the namespace's own ping reaches a responder that uses netfront as
an emulated NIC does (tests/harness/netfront_dm.py), on CPython and MicroPython."""
import os
import select
import struct
import subprocess
import time

import pytest

from host_sim.backends.netback import NetBack, vif_device
from host_sim.netns import Namespace
from host_sim.scripted import MICROPYTHON, Session
from host_sim.xs import XsError
from stubdm import pv_abi as A
from stubdm.frontends.netfront import RX_CHUNK, NetFront, fill_checksum, parse_mac

HARNESS = os.path.join(os.path.dirname(__file__), "harness", "netfront_dm.py")
FE = "/local/domain/2/device/vif/0"
MAC = "00:16:3e:5a:00:07"


def _rd(s, path):
    try:
        return s.xs.read(path).decode()
    except XsError:
        return None


@pytest.fixture
def ns():
    n = Namespace()
    yield n
    n.close()


def session(runtime, ns, cls=NetBack):
    if runtime == "micropython" and not os.access(MICROPYTHON, os.X_OK):
        pytest.skip("build/out/micropython is not built: run scons")
    dev = vif_device(ns, mac=MAC)
    s = Session(runtime=runtime, pv_devices=[(dev[0], dev[1], cls, dev[3])], dm_script=HARNESS)
    try:
        be = s.backends[0]
        s.hv.pump_until(lambda: be.state == 4 and _rd(s, FE + "/state") == "4",
                        "the vif handshake")
    except Exception:
        s.close()
        raise
    return s


def ping(s, ns, *args, count=3, timeout=20):
    p = ns.popen(["ping", "-c", str(count), "-i", "0.2", "-W", "3"] + list(args) + ["10.0.2.15"],
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    s.hv.pump_until(lambda: p.poll() is not None, "ping", timeout=timeout)
    return p.returncode, p.stdout.read()


@pytest.mark.parametrize("runtime", ("cpython", "micropython"))
def test_ping_both_ways_through_the_tap(runtime, ns):
    s = session(runtime, ns)
    try:
        rc, out = ping(s, ns)
        assert rc == 0, out
        assert "3 received" in out
        seen, replies, mac = _rd(s, FE + "/nic-stats").split()
        assert mac == MAC.replace(":", "")  # the NIC got the toolstack's MAC
        # Three echo replies and an ARP reply went out (the stats are written as
        # frames arrive, so the last reply may not be counted in them yet).
        assert int(replies) >= 3 and int(seen) >= 4
        be = s.backends[0]
        assert be.stats["tx_packets"] >= 4 and be.stats["rx_packets"] >= 4
        assert be.stats["tx_errors"] == 0
    finally:
        s.close()


def test_frames_over_several_slots(ns):
    s = session("cpython", ns)
    try:
        ns.run(["ip", "link", "set", "vif2.0", "mtu", "9000"])
        rc, out = ping(s, ns, "-s", "8900", "-M", "do")
        assert rc == 0, out  # 8942-byte frames: three slots each way, feature-sg
        assert s.backends[0].sg
    finally:
        s.close()


def test_nic_without_room_holds_the_frame_instead_of_dropping_it(ns):
    s = session("cpython", ns)
    try:
        assert ping(s, ns, count=1)[0] == 0  # ARP settled
        s.xs.write(FE + "/nic-pause", "1")
        s.hv.pump(0.1)
        p = ns.popen(["ping", "-c", "1", "-W", "10", "10.0.2.15"], stdout=subprocess.PIPE,
                     text=True)
        s.hv.pump_until(lambda: _rd(s, FE + "/nic-refused") == "yes", "the refusal")
        s.hv.pump(0.5)
        assert p.poll() is None  # no reply yet: the request is held
        s.xs.write(FE + "/nic-resume", "1")
        s.hv.pump_until(lambda: p.poll() is not None, "the held frame's reply")
        assert p.returncode == 0
    finally:
        s.close()


class LyingNetBack(NetBack):
    """Every RX response claims bytes past its page."""

    def receive(self, frame, push=True):
        self._take_rx_requests()
        if not self.rx_posted:
            return False
        rid, _gref = self.rx_posted.pop(0)
        struct.pack_into(A.NETIF_RX_RSP_FMT, self.rx.new_response(), 0, rid, 4000, 0, 500)
        if push:
            self._push_rx()
        return True


def test_hostile_backend_frames_dropped_device_model_serves_on(ns):
    s = session("cpython", ns, cls=LyingNetBack)
    try:
        rc, _ = ping(s, ns, count=2)
        assert rc != 0
        assert "malformed RX frame dropped" in s.dm_messages()
        assert s.guest.inb(0x3FD) == 0x60 and s.proc.poll() is None
    finally:
        s.close()


def test_no_namespace_or_tap_left_behind(ns):
    s = session("cpython", ns)
    holder = ns.holder.pid
    s.close()
    ns.close()
    assert not os.path.exists("/proc/%d" % holder)
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert "vif2.0" not in out  # nothing in the host's own namespace, ever


def _captured_udp(ns):
    """A UDP/IPv4 frame the kernel wrote, with its checksum, read off a TAP."""
    fd = ns.open_tap("cap0", "10.9.0.1/24")
    try:
        ns.run(["ip", "neigh", "add", "10.9.0.2", "lladdr", "02:00:00:00:00:02", "dev", "cap0"])
        code = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "s.sendto(bytes(range(251)), ('10.9.0.2', 7777))")
        ns.run(["python3", "-c", code])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            select.select([fd], [], [], 0.5)
            try:
                f = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if len(f) > 42 and f[12:14] == b"\x08\x00" and f[23] == 17:
                return f
        raise AssertionError("no UDP frame captured")
    finally:
        os.close(fd)


def test_checksum_filled_as_the_kernel_computes_it(ns):
    f = _captured_udp(ns)
    want = f[40:42]
    assert want != b"\0\0"
    blank = bytearray(f)
    blank[40:42] = b"\x12\x34"  # a csum_blank packet's field holds no valid sum
    assert fill_checksum(blank)
    assert bytes(blank[40:42]) == want


def test_parse_mac():
    assert parse_mac("00:16:3e:5a:00:07") == bytes([0, 0x16, 0x3E, 0x5A, 0, 7])
    for bad in (None, "", "00:16:3e:5a:00", "00-16-3e-5a-00-07", "zz:16:3e:5a:00:07"):
        assert parse_mac(bad) is None




def _connected_netfront():
    from host_sim.fuzz_pv import connect

    fe = connect(NetFront, "vif", "0", {"feature-rx-copy": "1", "feature-sg": "1"})
    fe.xs.values[fe.path + "/mac"] = MAC
    return fe


def _answer_rx(fe, frames):
    """The backend's answers to the first len(frames) posted RX slots, one frame each."""
    ring = fe.rx
    for i, frame in enumerate(frames):
        slot = 64 + ((ring.rsp_cons + i) & (ring.size - 1)) * ring.entry
        rid = struct.unpack_from(A.NETIF_RX_REQ_FMT, ring.mem, slot)[0]  # its request's
        fe.rx_pool.mem[rid * 4096:rid * 4096 + len(frame)] = frame
        struct.pack_into(A.NETIF_RX_RSP_FMT, ring.mem, slot, rid, 0, 0, len(frame))
    struct.pack_into("<I", ring.mem, 8, (ring.rsp_cons + len(frames)) & 0xFFFFFFFF)


def test_rx_burst_moves_in_chunks_between_the_guests_accesses():
    # A burst of 20 frames: RX_CHUNK at the event, the rest in the loop's
    # next turns (the guest's accesses answered in between), none lost, in order.
    fe = _connected_netfront()
    got = []
    fe.set_receiver(lambda mv: got.append(bytes(mv)) or True)
    frames = [bytes([i]) * 60 for i in range(20)]
    _answer_rx(fe, frames)
    fe.on_event(fe.port)
    assert got == frames[:RX_CHUNK]
    turns = 0
    while fe.bus.later:
        fe.bus.run_deferred()
        turns += 1
    assert got == frames and turns == 2


def test_nic_resume_in_a_register_write_moves_frames_after_the_write():
    # The NIC's rx_resume (its RDT write) only queues the work: the held frame
    # is delivered when the loop runs it, once however often the NIC asked.
    fe = _connected_netfront()
    room = [False]
    got = []
    fe.set_receiver(lambda mv: room[0] and (got.append(bytes(mv)) or True))
    _answer_rx(fe, [b"\x01" * 60, b"\x02" * 60])
    fe.on_event(fe.port)
    assert got == [] and fe.rx_paused  # no room: held, not dropped
    room[0] = True
    fe.rx_resume()
    fe.rx_resume()
    assert got == [] and len(fe.bus.later) == 1
    fe.bus.run_deferred()
    assert got == [b"\x01" * 60, b"\x02" * 60] and fe.stats["rx_dropped"] == 0
