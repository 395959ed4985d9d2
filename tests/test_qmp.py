# QMP as libxl drives a stub domain's device model (issue 13 items 3 and 5):
# the device model's QMP server on a vchan (stubdm/vchan.py, stubdm/qmp.py),
# dom0's vchan-socket-proxy (host_sim/vchan.py) turning it into a unix socket,
# and qemu.qmp from PyPI as the client, with the scripted guest checking what
# the guest sees (ioreqs held by stop; the ATAPI drive's medium). Both device
# model runtimes.
import asyncio
import os
import socket
import struct
import time

import pytest

from host_sim.backends.blkback import vbd_device
from host_sim.scripted import PORT_BINARY, Session
from stubdm import abi
from stubdm import vchan as V
from tests.ide_guest import IdeGuest
from tests.qmp_helpers import cdrom_insert, find_fdset

qmp_lib = pytest.importorskip("qemu.qmp", reason="qemu.qmp from PyPI (build/setup.sh)")
QMPClient = qmp_lib.QMPClient
ExecuteError = qmp_lib.ExecuteError

DEVID = 5632  # hdc, libxl's ide-DEVNO for the guest's first CD-ROM
COM1_SCR = 0x3FF  # the 16550's scratch register: a port whose value we can check


@pytest.fixture(scope="module")
def isos(tmp_path_factory):
    d = tmp_path_factory.mktemp("qmp")
    a, b = d / "a.iso", d / "b.iso"
    # Same size on purpose: the change must be seen even when the size is not.
    a.write_bytes(b"".join(b"A%07d" % i * 256 for i in range(64)))
    b.write_bytes(b"".join(b"B%07d" % i * 256 for i in range(64)))
    return str(a), str(b)


@pytest.fixture(scope="module", params=("cpython", "micropython", "port"))
def dm_runtime(request):
    """Both runtimes, and the stub domain's own port (MiniOS's MicroPython, built for
    Linux: the device model frozen in, no json module)."""
    from tests.conftest import skip_unless_runtime

    if request.param == "port" and not os.access(PORT_BINARY, os.X_OK):
        pytest.skip("%s is not built: run scons" % PORT_BINARY)
    skip_unless_runtime(request.param)
    return request.param


@pytest.fixture(scope="module")
def session(isos, dm_runtime, tmp_path_factory):
    sock = str(tmp_path_factory.mktemp("qmpsock") / "qmp.sock")
    args = ["-drive", "if=none,readonly=on,id=ide-%d,file=/dev/xvdc,format=host_device" % DEVID,
            "-device", "ide-cd,id=ide-%d,drive=ide-%d,bus=ide.1,unit=0" % (DEVID, DEVID)]
    with Session(dm_args=args, runtime=dm_runtime, qmp=sock,
                 pv_devices=[vbd_device(isos[0], "xvdc", cdrom=True)]) as s:
        s.qmp_path = sock
        yield s
    assert "Traceback" not in s.dm_messages(), s.dm_messages()


def run(session, body):
    """body(qmp) with a qemu.qmp client connected, host_sim pumped meanwhile."""
    async def main():
        done = asyncio.Event()

        async def pump():
            while not done.is_set():
                session.hv.pump(0)
                await asyncio.sleep(0.0005)

        task = asyncio.get_running_loop().create_task(pump())
        qmp = QMPClient("test")
        try:
            await asyncio.wait_for(qmp.connect(session.qmp_path), 10)
            return await asyncio.wait_for(body(qmp), 60)
        finally:
            await qmp.disconnect()
            done.set()
            await task
    return asyncio.run(main())


def raw(session, lines, want):
    """Send raw bytes on the socket (no client library); the first `want` replies."""
    c = socket.socket(socket.AF_UNIX)
    c.connect(session.qmp_path)
    c.setblocking(False)
    buf = b""
    out = []

    def read_until(n):
        nonlocal buf
        t = time.monotonic()
        while buf.count(b"\n") < n and time.monotonic() - t < 10:
            session.hv.pump(0.005)
            try:
                buf += c.recv(65536)
            except BlockingIOError:
                pass
    try:
        read_until(1)
        greeting, buf = buf.split(b"\n", 1)
        for line in lines:
            c.sendall(line)
        read_until(want)
        out = [ln for ln in buf.split(b"\r\n") if ln][:want]
    finally:
        c.close()
    return greeting, out


def test_greeting_status_and_stop_holds_the_guest(session):
    seen = {}

    async def body(qmp):
        # The greeting's version is what libxl compares against 2.8.
        v = qmp.greeting.QMP.version["qemu"]
        seen["version"] = (v["major"], v["minor"])
        assert (await qmp.execute("query-status"))["status"] == "running"
        await qmp.execute("stop")
        st = await qmp.execute("query-status")
        assert st["status"] == "paused" and st["running"] is False
        # A vCPU's request now waits: no answer while stopped...
        hv = session.hv
        srv = hv.server_for(abi.IOREQ_TYPE_PIO, COM1_SCR)
        page = hv.page_of(srv.ioreq_gfn)
        port = srv.vcpu_ports[0]
        flags_at = abi.IOREQ_OFF_FLAGS
        req = abi.pack_ioreq(COM1_SCR, 0x5A, 1, 1, port, abi.STATE_IOREQ_NONE, 0, 0, 0,
                             abi.IOREQ_TYPE_PIO)
        page[0:abi.IOREQ_SIZE] = req
        page[flags_at] = req[flags_at] | abi.STATE_IOREQ_READY
        hv.notified.discard(port)
        hv.signal(port)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.4:
            await asyncio.sleep(0.01)
        assert page[flags_at] & abi.STATE_MASK == abi.STATE_IOREQ_READY, "served while stopped"
        # ...and cont serves it.
        await qmp.execute("cont")
        t0 = time.monotonic()
        while page[flags_at] & abi.STATE_MASK != abi.STATE_IORESP_READY:
            assert time.monotonic() - t0 < 10, "not served after cont"
            await asyncio.sleep(0.005)
        page[flags_at] = req[flags_at]
        hv.notified.discard(port)
        assert (await qmp.execute("query-status"))["status"] == "running"
    run(session, body)
    assert seen["version"] >= (2, 8)
    # The write landed: the guest reads its scratch register back.
    assert session.guest.inb(COM1_SCR) == 0x5A


def test_errors_as_qemu_gives_them(session):
    async def body(qmp):
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("no-such-command")
        assert e.value.error_class == "CommandNotFound"
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("eject", {"id": "ide-9999"})
        assert e.value.error_class == "DeviceNotFound"
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("eject", {"id": 5})
        assert "Invalid parameter type for 'id'" in str(e.value)
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("query-status", {"verbose": True})
        assert "unexpected" in str(e.value)
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("system_wakeup")  # the guest is not in S3
        assert "not in suspended state" in str(e.value)
        with pytest.raises(ExecuteError) as e:
            await qmp.execute("add-fd")  # a vchan carries no SCM_RIGHTS
        assert "SCM_RIGHTS" in str(e.value)
        assert (await qmp.execute("query-status"))["status"] == "running"
    run(session, body)
    # Without a library: before capabilities, bad JSON, not an object.
    _greet, out = raw(session, [b'{"execute": "query-status"}\n',
                                b'{"execute": "qmp_capabilities"}\n',
                                b'{"execute": "qmp_capabilities"}\n',
                                b'{"execute": "query-status", "id": "x"}\n',
                                b'{"execute": \x00 bad\n}\n',
                                b'[1, 2]\n',
                                b'{"arguments": {}}\n',
                                b'{"execute": "query-status", "id": 7}\n'], 8)
    assert b'"CommandNotFound"' in out[0] and b"qmp_capabilities" in out[0]
    assert out[1] == b'{"return": {}}'
    assert b"already complete" in out[2]
    assert b'"running"' in out[3] and b'"id": "x"' in out[3]
    assert b"JSON parse error" in out[4]
    assert b"must be a JSON object" in out[5]
    assert b"lacks member 'execute'" in out[6]
    assert b'"id": 7' in out[7] and b'"running"' in out[7]


def test_query_pci_chardev_and_dirty_log(session):
    async def body(qmp):
        pci = await qmp.execute("query-pci")
        devs = {(d["slot"], d["function"]): d for d in pci[0]["devices"]}
        # The xenfv machine: i440FX at 00.0, PIIX3 at 01.0, its IDE at 01.1,
        # the Xen platform device at 03.0 (stubdm/layout.py, xenfv).
        assert devs[(0, 0)]["id"]["vendor"] == 0x8086 and devs[(0, 0)]["id"]["device"] == 0x1237
        assert devs[(1, 1)]["class_info"]["class"] == 0x0101
        assert devs[(3, 0)]["id"]["vendor"] == 0x5853
        chardevs = await qmp.execute("query-chardev")
        assert chardevs[0]["label"] == "serial0" and chardevs[0]["filename"].startswith("file:")
        await qmp.execute("xen-set-global-dirty-log", {"enable": True})
        await qmp.execute("xen-set-global-dirty-log", {"enable": False})
    run(session, body)


def atapi_unit_ready(ide):
    """TEST UNIT READY until no unit attention is left: (ready, sense key, asc)."""
    for _ in range(4):
        _d, st, _e, _ = ide.packet(1, 0, [0x00])
        if not st & 1:
            return True, 0, 0
        sense, _, _, _ = ide.packet(1, 0, [0x03, 0, 0, 0, 18])
        if sense[2] & 0xF != 6:  # not UNIT ATTENTION: that's the answer
            return False, sense[2] & 0xF, sense[12]
    return False, 6, 0x28


def atapi_read(ide, lba, blocks):
    data, st, _, _ = ide.packet(1, 0, [0x28, 0, 0, 0, 0, lba, 0, 0, blocks])
    return data if not st & 1 else None


def test_media_change_libxl_sequence_and_params(session, isos):
    a = open(isos[0], "rb").read()
    b = open(isos[1], "rb").read()
    ide = IdeGuest(session.guest)
    assert atapi_unit_ready(ide)[0]
    assert atapi_read(ide, 3, 1) == a[3 * 2048:4 * 2048]
    be = [x for x in session.backends if x.TYPE == "vbd"][0]

    def write_params(p):
        session.xs.write(be.path + "/params", p)

    async def eject_only(qmp):
        fdsets = await qmp.execute("query-fdsets")
        assert find_fdset(fdsets, DEVID) is not None  # the stub domain offers its CD
        await qmp.execute("eject", {"id": "ide-%d" % DEVID})
    run(session, eject_only)
    # The drive is empty: NOT READY, MEDIUM NOT PRESENT (after the attention).
    ready, key, asc = atapi_unit_ready(ide)
    assert not ready and key == 2 and asc == 0x3A

    async def change(qmp):
        await cdrom_insert(qmp, write_params, DEVID, isos[1])
    run(session, change)
    assert atapi_unit_ready(ide)[0]
    assert atapi_read(ide, 3, 1) == b[3 * 2048:4 * 2048]
    # The older path: the toolstack writes params, the device model follows the
    # watch (no QMP at all): A is back.
    write_params(isos[0])
    t0 = time.monotonic()
    while True:
        session.hv.pump(0.01)
        got = atapi_unit_ready(ide)
        if got[0] and atapi_read(ide, 3, 1) == a[3 * 2048:4 * 2048]:
            break
        assert time.monotonic() - t0 < 10, "params change not seen"
    # And an eject the libxl way (empty params: no change-medium).
    run(session, lambda qmp: cdrom_insert(qmp, write_params, DEVID, None))
    ready, key, asc = atapi_unit_ready(ide)
    assert not ready and asc == 0x3A


def test_eject_while_the_guest_holds_the_door(session, isos):
    """PREVENT MEDIUM REMOVAL from the guest (as Linux's sr does while mounted): eject
    is refused as QEMU refuses it; after ALLOW it ejects."""
    ide = IdeGuest(session.guest)
    be = [x for x in session.backends if x.TYPE == "vbd"][0]

    def insert(path):
        run(session, lambda qmp: cdrom_insert(
            qmp, lambda p: session.xs.write(be.path + "/params", p), DEVID, path))
    insert(isos[1])  # a medium other than the last (a params write that changes it)
    assert atapi_unit_ready(ide)[0]
    qid = "ide-%d" % DEVID
    errors = []

    async def body(qmp):
        try:
            await qmp.execute("eject", {"id": qid})
        except ExecuteError as e:
            errors.append(str(e))
    assert ide.packet(1, 0, [0x1E, 0, 0, 0, 1])[1] & 1 == 0  # PREVENT
    run(session, body)
    assert len(errors) == 1 and "is locked and force was not specified" in errors[0]
    assert atapi_unit_ready(ide)[0]  # the medium is still there
    assert ide.packet(1, 0, [0x1E, 0, 0, 0, 0])[1] & 1 == 0  # ALLOW
    run(session, body)
    assert len(errors) == 1
    ready, _key, asc = atapi_unit_ready(ide)
    assert not ready and asc == 0x3A
    insert(isos[0])  # back for the tests after
    assert atapi_unit_ready(ide)[0]


def test_hostile_vchan_indices_drop_the_connection_not_the_model(session):
    """A dom0 client (here: the test, mapping the ring as domain 0) that publishes a
    left prod a ring and more ahead: the device model logs it, drops that ring and
    offers a new one; QMP works again after."""
    from host_sim.vchan import VchanClient
    from host_sim.xs import Xs

    hv = session.hv
    t0 = time.monotonic()
    while session.qmp_proxy.vchan is not None:  # the last session's close, served
        hv.pump(0.01)
        assert time.monotonic() - t0 < 10
    path = "%s/device-model/%d/qmp-vchan" % (session.paths["stub"], hv.domid)
    xs = Xs(session.xenstored.socket_path)
    try:
        old_ref = xs.read(path + "/ring-ref")
        cli = VchanClient(hv, xs, session.stubdom_domid, path)
        for _ in range(50):
            hv.pump(0.01)
        mem = cli.ring.mem
        struct.pack_into("<I", mem, V.OFF_LEFT_PROD, cli.wr_prod + 5000)
        cli.notify()
        t0 = time.monotonic()
        while xs.read(path + "/ring-ref") == old_ref:
            hv.pump(0.01)
            assert time.monotonic() - t0 < 10, "the device model kept the broken ring"
        assert mem[V.OFF_SRV_LIVE] == V.LIVE_CLOSED  # it told us it is gone
        cli.close()
        # A cons behind what it said: the same.
        old_ref = xs.read(path + "/ring-ref")
        cli = VchanClient(hv, xs, session.stubdom_domid, path)
        for _ in range(50):
            hv.pump(0.01)  # the greeting is written: right prod moved
        struct.pack_into("<I", cli.ring.mem, V.OFF_RIGHT_CONS, cli.rd_cons + 0x80000000)
        cli.write(b'{"execute": "qmp_capabilities"}\n')
        t0 = time.monotonic()
        while xs.read(path + "/ring-ref") == old_ref:
            hv.pump(0.01)
            assert time.monotonic() - t0 < 10, "the device model kept the broken ring"
        cli.close()
    finally:
        xs.close()

    async def body(qmp):
        assert (await qmp.execute("query-status"))["status"] == "running"
    run(session, body)
    msgs = session.dm_messages()
    assert msgs.count("client broke the vchan") >= 2, msgs[-2000:]


def test_hostile_server_indices_do_not_hurt_dom0(session):
    """The stub domain is not trusted by dom0 either: a right prod out of range
    makes the proxy drop that connection; host_sim goes on."""
    from host_sim.grants import GrantError

    hv = session.hv
    proxy = session.qmp_proxy
    c = socket.socket(socket.AF_UNIX)
    c.connect(session.qmp_path)
    c.settimeout(0.01)
    t0 = time.monotonic()
    greeting = b""
    while not greeting.endswith(b"\n"):  # connected, and the server has spoken
        hv.pump(0.01)
        try:
            greeting += c.recv(65536)
        except socket.timeout:
            pass
        assert time.monotonic() - t0 < 10
    # Play a hostile server: scribble the ring's right prod through a second
    # mapping of the same grant (as the stub domain could), then wake the client.
    v = proxy.vchan
    try:
        m = hv.grants.map(0, session.stubdom_domid, v.ring.grant.ref)
    except GrantError as e:
        pytest.fail("can't map the ring again: %s" % e)
    struct.pack_into("<I", m.mem, V.OFF_RIGHT_PROD, v.rd_cons + 0x10000)
    m.mem.release()
    m.unmap()
    v._event(v.port)
    closed = False
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10 and not closed:
        hv.pump(0.01)
        try:
            closed = c.recv(65536) == b""
        except socket.timeout:
            pass
        except OSError:
            closed = True
    c.close()
    assert closed and proxy.stats["dropped"] >= 1
    # The device model rewrites its own index; a new connection works.

    async def body(qmp):
        assert (await qmp.execute("query-status"))["status"] == "running"
    run(session, body)


def test_query_status_round_trip(session, dm_runtime):
    """The figure for the note: the median query-status round trip through the
    proxy, the vchan and the device model."""
    times = []

    async def body(qmp):
        for _ in range(200):
            t = time.perf_counter()
            await qmp.execute("query-status")
            times.append(time.perf_counter() - t)
    run(session, body)
    times.sort()
    med = times[len(times) // 2] * 1e6
    print("qmp query-status round trip (%s), qemu.qmp (asyncio, host_sim pumped every "
          "0.5 ms): median %.0f us, p90 %.0f us"
          % (dm_runtime, med, times[len(times) * 9 // 10] * 1e6))
    assert med < 200000
    # The same on a plain socket, host_sim's loop waking on its descriptors (as the
    # QEMU engine's does): the proxy, the vchan and the device model's own cost.
    c = socket.socket(socket.AF_UNIX)
    c.connect(session.qmp_path)
    c.setblocking(False)
    buf = b""

    def reply():
        nonlocal buf
        t0 = time.monotonic()
        while b"\n" not in buf:
            session.hv.pump(0.002)
            try:
                buf += c.recv(65536)
            except BlockingIOError:
                pass
            assert time.monotonic() - t0 < 10
        line, buf = buf.split(b"\n", 1)
        return line
    reply()
    c.sendall(b'{"execute": "qmp_capabilities"}\n')
    reply()
    raw_times = []
    for _ in range(300):
        t = time.perf_counter()
        c.sendall(b'{"execute": "query-status"}\n')
        assert b"running" in reply()
        raw_times.append(time.perf_counter() - t)
    c.close()
    raw_times.sort()
    print("qmp query-status round trip (%s), socket client: median %.0f us, p90 %.0f us"
          % (dm_runtime, raw_times[150] * 1e6, raw_times[270] * 1e6))


def test_quit_ends_the_device_model(isos, dm_runtime, tmp_path):
    sock = str(tmp_path / "q.sock")
    with Session(runtime=dm_runtime, qmp=sock) as s:
        s.qmp_path = sock

        async def body(qmp):
            await qmp.execute("quit")
        run(s, body)
        t0 = time.monotonic()
        while s.proc.poll() is None:
            s.hv.pump(0.01)
            assert time.monotonic() - t0 < 10, "the device model did not quit"
        assert s.proc.returncode == 0


def test_save_devices_state_through_qmp(session, tmp_path):
    out = str(tmp_path / "state.bin")

    async def body(qmp):
        await qmp.execute("stop")
        await qmp.execute("xen-save-devices-state", {"filename": out, "live": False})
        with pytest.raises(ExecuteError):  # while running: refused, as the file says why
            await qmp.execute("cont")
            await qmp.execute("xen-load-devices-state", {"filename": out})
        await qmp.execute("stop")
        await qmp.execute("xen-load-devices-state", {"filename": out})
        with open(out, "r+b") as f:  # corrupted: refused, nothing loaded
            f.seek(12)
            f.write(b"\xff\xff\xff\xff")
        with pytest.raises(ExecuteError):
            await qmp.execute("xen-load-devices-state", {"filename": out})
        await qmp.execute("cont")
        assert (await qmp.execute("query-status"))["status"] == "running"
    run(session, body)
    assert os.path.getsize(out) > 0


def test_libxl_layout_the_stub_domains_cd_is_the_guests_hdc(isos, tmp_path):
    """As libxl builds a stub domain (libxl__spawn_stub_dm: the guest's disks with the
    guest's vdev): the CD is the stub domain's vbd 5632 (hdc) and dm-argv calls it
    /dev/xvdc, as Linux's blkfront would. The device model finds it, the guest reads
    it, and QMP's fdset for it is libxl's stub-devid:5632."""
    _t, _devid, cls, kw = vbd_device(isos[1], "xvdc", cdrom=True)
    kw = dict(kw, frontend_keys=dict(kw["frontend_keys"], **{"virtual-device": str(DEVID)}))
    kw["backend_keys"] = dict(kw["backend_keys"], dev="hdc")
    sock = str(tmp_path / "q.sock")
    args = ["-drive", "if=none,readonly=on,id=ide-%d,file=/dev/xvdc,format=host_device" % DEVID,
            "-device", "ide-cd,id=ide-%d,drive=ide-%d,bus=ide.1,unit=0" % (DEVID, DEVID)]
    with Session(dm_args=args, qmp=sock, pv_devices=[("vbd", DEVID, cls, kw)]) as s:
        s.qmp_path = sock
        ide = IdeGuest(s.guest)
        assert atapi_unit_ready(ide)[0]
        assert atapi_read(ide, 5, 1) == open(isos[1], "rb").read()[5 * 2048:6 * 2048]

        async def body(qmp):
            assert find_fdset(await qmp.execute("query-fdsets"), DEVID) is not None
        run(s, body)


def test_guest_s3_pauses_the_domain_until_system_wakeup(session):
    # The guest's S3 (\_S3, SLP_TYP 1) makes the device model set Xen's
    # HVM_PARAM_ACPI_S_STATE to 3, as qemu-xen's suspend notifier does: host_sim
    # pauses and resets the vCPUs as Xen's hvm_s3_suspend does. libxl's
    # `xl trigger s3resume` is QMP system_wakeup, which sets it back to 0.
    from host_sim.scripted import DomainSuspended

    g, hv = session.guest, session.hv
    assert g.hvmloader_acpi() == (1, 3)
    resets = hv.s3_resets
    g.acpi_sleep(1)
    assert hv.s3_suspended and hv.s3_resets == resets + 1
    assert hv.hvm_param(abi.HVM_PARAM_ACPI_S_STATE, False, 0) == (0, 3)
    with pytest.raises(DomainSuspended):
        g.inb(COM1_SCR)

    async def body(qmp):
        assert (await qmp.execute("query-status"))["status"] == "suspended"
        await qmp.execute("system_wakeup")
        assert (await qmp.execute("query-status"))["status"] == "running"
    run(session, body)
    assert not hv.s3_suspended
    assert hv.hvm_param(abi.HVM_PARAM_ACPI_S_STATE, False, 0) == (0, 0)
    g.outb(COM1_SCR, 0xA5)
    assert g.inb(COM1_SCR) == 0xA5
    # Xen's set_param takes only 3 and 0 for this parameter.
    assert hv.hvm_param(abi.HVM_PARAM_ACPI_S_STATE, True, 4)[0] == -22
