"""The PV plumbing end to end: the device model, as a stub domain, reaches a backend in
host_sim through xenstore (host_sim's xenstored, Debian's libxenstore on both sides), grants
of its own pages and inter-domain event channels, on every runtime.

The device is stubdm-echo (stubdm/pv_echo.py): the xenbus handshake, a ring.h ring in a
granted page, data pages granted once and reused, events both ways, and every reply checked
by the frontend against what the backend's advertised transform must give.
"""
import os
import signal
import struct

import pytest

from host_sim.backends.base import CLOSED, CLOSING, CONNECTED, INITWAIT
from host_sim.backends.echo import EchoBackend
from host_sim.evtchn import UNBOUND
from host_sim.scripted import MICROPYTHON, PORT_BINARY, Session
from host_sim.xs import XsError
from stubdm import pv_abi, pv_echo

RUNTIMES = ("cpython", "micropython", "port")
STUB = 2


def _session(runtime, devices=((pv_echo.TYPE, 0, EchoBackend),), **kw):
    binary = {"micropython": MICROPYTHON, "port": PORT_BINARY}.get(runtime)
    if binary is not None and not os.access(binary, os.X_OK):
        pytest.skip("%s is not built: run scons" % binary)
    return Session(runtime=runtime, pv_devices=devices, **kw)


def _read(s, path):
    try:
        return s.xs.read(path).decode()
    except XsError:
        return None


def echo_grants(s):
    """The stub domain's grants but its QMP vchan's ring page (stubdm/qmp.py), which it
    grants to dom0 for as long as it runs."""
    try:
        qmp = int(s.xs.read("/local/domain/%d/device-model/%d/qmp-vchan/ring-ref"
                            % (STUB, s.hv.domid)))
    except (XsError, ValueError):
        qmp = None
    return [g for (dom, ref), g in s.hv.grants.grants.items() if dom == STUB and ref != qmp]


def front(s, devid=0, devtype=pv_echo.TYPE):
    return "/local/domain/%d/device/%s/%d" % (STUB, devtype, devid)


def wait_connected(s, be, devid=0):
    s.hv.pump_until(lambda: be.state == CONNECTED
                    and _read(s, front(s, devid) + "/state") == str(CONNECTED),
                    "the PV handshake", timeout=10)


def echo(s, rounds, devid=0):
    fe = front(s, devid)
    s.xs.write(fe + "/echo-go", str(rounds))
    s.hv.pump_until(lambda: _read(s, fe + "/echo-done") is not None, "echo rounds", timeout=20)
    done = _read(s, fe + "/echo-done")
    s.xs.rm(fe + "/echo-done")
    return [int(x) for x in done.split()]


@pytest.fixture(scope="module", params=RUNTIMES)
def connected(request):
    s = _session(request.param)
    try:
        wait_connected(s, s.backends[0])
        yield s
    finally:
        s.close()


def test_handshake_reaches_connected_with_libxls_layout(connected):
    s = connected
    fe = front(s)
    be = s.backends[0]
    assert _read(s, be.path + "/state") == str(CONNECTED)
    # The frontend read the backend's features and wrote its ring and channel.
    ref = int(_read(s, fe + "/ring-ref"))
    port = int(_read(s, fe + "/event-channel"))
    g = s.hv.grants.grants[(STUB, ref)]
    assert g.grantee == 0 and not g.readonly and g.maps == 1  # the backend maps it
    p = s.hv.evtchn.get(STUB, port)
    assert p.peer is not None and p.peer.dom == 0
    assert s.xs.get_perms(fe + "/ring-ref")[0] == "n%d" % STUB  # the stub domain's own node


def test_ring_entries_through_granted_pages_both_ways(connected):
    s = connected
    rounds, good, bad = echo(s, 5)
    assert (rounds, good, bad) == (5, 5 * 16, 0)
    be = s.backends[0]
    assert be.stats["requests"] >= 5 * 16
    assert be.stats["events"] >= 1 and be.stats["notifies"] >= 1
    # Data pages granted once and reused: the backend maps each once.
    assert len(be.maps) == 16


def test_frontend_pages_are_the_stub_domains_own(connected):
    s = connected
    mine = echo_grants(s)
    assert len(mine) == 17  # the ring page and 16 data pages
    assert all(g.grantee == 0 for g in mine)
    assert set(s.hv.grants.memory) == {STUB}
    # Guest RAM holds nothing of the echo traffic.
    assert bytes(range(256)) not in bytes(s.hv.ram[:1 << 20])


def test_ioreqs_and_pv_events_in_one_loop(connected):
    s = connected
    fe = front(s)
    s.xs.write(fe + "/echo-go", "20")
    lsr = [s.guest.inb(0x3FD) for _ in range(50)]  # ioreqs while the echo runs
    s.hv.pump_until(lambda: _read(s, fe + "/echo-done") is not None, "echo", timeout=20)
    assert set(lsr) == {0x60}
    rounds, good, bad = [int(x) for x in _read(s, fe + "/echo-done").split()]
    s.xs.rm(fe + "/echo-done")
    assert bad == 0 and good == rounds * 16


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_backend_closing_then_reconnect(runtime):
    with _session(runtime) as s:
        be = s.backends[0]
        wait_connected(s, be)
        assert echo(s, 1)[2] == 0
        be.close()  # the toolstack removes the device
        s.hv.pump_until(lambda: _read(s, front(s) + "/state") == str(CLOSED), "frontend Closed")
        s.hv.pump_until(lambda: be.state == CLOSED, "backend Closed")
        assert be.ring is None and not be.maps
        # The frontend ended its grants and nothing maps them: all gone.
        s.hv.pump_until(lambda: not echo_grants(s), "the grants to end")
        assert s.guest.inb(0x3FD) == 0x60  # the device model goes on
        # A new backend on the same device: the frontend connects again.
        be._closing = False
        be.switch(INITWAIT)
        wait_connected(s, be)
        assert echo(s, 2)[2] == 0


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_xenstored_gone_the_emulation_goes_on(runtime):
    """xenstored stops under a running device model (a toolstack tearing down in the
    other order, a crashed daemon): the PV devices stop, the guest's ports still
    answer, and at the end it reports and exits 0 (it died with `xenstore watch:
    EINVAL` and no figures before)."""
    with _session(runtime) as s:
        wait_connected(s, s.backends[0])
        assert echo(s, 1)[2] == 0
        s.xenstored.stop()
        for _ in range(20):
            assert s.guest.inb(0x3FD) == 0x60
        s.hv.pump_until(lambda: "xenstore connection lost" in s.dm_messages(),
                        "the device model to notice", timeout=10)
        assert s.guest.inb(0x3FD) == 0x60
    msgs = s.dm_messages()
    assert "EINVAL" not in msgs, msgs
    assert s.dm_stats() is not None and s.dm_stats()["ioreqs"] >= 21, msgs
    assert s.proc.returncode == 0, msgs


@pytest.mark.parametrize("runtime", ("cpython",))
def test_device_model_killed_backend_lets_go(runtime):
    with _session(runtime) as s:
        be = s.backends[0]
        wait_connected(s, be)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait()
        s.hv.alive = lambda: True  # the hypervisor goes on without it
        s.hv.pump_until(lambda: s.hv.evtchn.get(0, be.port).state == UNBOUND,
                        "the dead domain's event channels to close")
        # Its grants stay while dom0 maps them, none reusable.
        assert echo_grants(s)
        assert all(g.ending for g in echo_grants(s))
        # The toolstack removes the dead domain's device: the backend unmaps.
        s.xs.rm(front(s))
        s.hv.pump_until(lambda: be.state == CLOSED, "backend Closed")
        assert not echo_grants(s) and be.ring is None


class LyingBackend(EchoBackend):
    """Answers with a rsp_prod far beyond anything the frontend asked for."""

    def serve(self):
        struct.pack_into("<I", self.ring_map.mem, pv_abi.SRING_OFF_RSP_PROD, 1000)
        self.notify()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_hostile_backend_breaks_only_its_device(runtime):
    with _session(runtime, devices=((pv_echo.TYPE, 0, LyingBackend),
                                    (pv_echo.TYPE, 1, EchoBackend))) as s:
        bad, good = s.backends
        wait_connected(s, bad, 0)
        wait_connected(s, good, 1)
        fe = front(s, 0)
        s.xs.write(bad.path + "/state", "banana")  # not a xenbus state: ignored
        s.hv.pump(0.1)
        s.xs.write(fe + "/echo-go", "1")
        s.hv.pump_until(lambda: _read(s, fe + "/state") in (str(CLOSING), str(CLOSED)),
                        "the frontend to give up on the lying backend")
        assert "ring" in (_read(s, fe + "/error") or "")
        # Our side closed it: the backend follows, and both end Closed.
        s.hv.pump_until(lambda: bad.state == CLOSED and _read(s, fe + "/state") == str(CLOSED),
                        "both halves Closed")
        assert bad.ring is None
        assert echo(s, 3, devid=1) == [3, 48, 0]  # the other device is unaffected
        assert s.guest.inb(0x3FD) == 0x60
        assert s.proc.poll() is None
    assert "rsp_prod" in s.dm_messages()


class ProbeOnly(EchoBackend):
    TYPE = "test-echo"  # a type the device model does not drive: we play its frontend


@pytest.mark.parametrize("ring_ref,port,why", [
    ("12345", None, "never granted"),
    ("banana", None, "not a number"),
    (None, "4000", "unbound port"),
])
def test_hostile_frontend_keys_refused(ring_ref, port, why):
    with Session(xenstore=True) as s:
        be = s.add_pv_device("test-echo", 0, ProbeOnly)
        fe = front(s, 0, "test-echo")
        # What a frontend would write, some of it wrong.
        share = s.hv.grants.share(STUB, 0, 1, True)
        evt = s.hv.evtchn.alloc_unbound(STUB, 0)
        s.xs.write(fe + "/ring-ref", ring_ref or str(share[0][0]))
        s.xs.write(fe + "/event-channel", port or str(evt))
        s.xs.write(fe + "/state", "3")
        s.hv.pump_until(lambda: be.state == CLOSING, "the backend to refuse (%s)" % why)
        assert be.ring is None and be.ring_map is None and be.port is None
        assert s.hv.grants.grants[(STUB, share[0][0])].maps == 0


def test_sequential_round_trips(connected):
    s = connected
    fe = front(s)
    s.xs.write(fe + "/echo-ping", "100")
    s.hv.pump_until(lambda: _read(s, fe + "/echo-ping-us") is not None, "100 round trips")
    assert int(_read(s, fe + "/echo-ping-us")) > 0
    s.xs.rm(fe + "/echo-ping-us")
    assert echo(s, 1)[2] == 0  # counted as good, none bad
