"""host_sim.vfio_user: the vfio-user server in front of one PCI function.

1. Protocol tests: a fake client (this file) talks to VfioUserServer over its
   unix socket; the server runs in this thread, pumped by poll().
2. A real guest: QEMU's vfio-user-pci client (QEMU >= 10.1) boots the test
   guest (build/guest) under TCG with PciSerial(Uart16550) served from this
   process; Linux's 8250_pci drives it as ttyS1.
"""

import array
import base64
import errno
import json
import mmap
import os
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import time

import pytest

from host_sim import vfio_user as vu
from host_sim.vfio_user import VfioUserServer
from stubdm.devices.pci_serial import PciSerial
from stubdm.devices.uart16550 import Uart16550
from stubdm.irq import IrqLine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HDR = struct.Struct("<HHIII")
RW = struct.Struct("<QII")


# --- the backend: a stubdm PciFunction behind the server ---------------------

class Chardev:
    def __init__(self):
        self.data = bytearray()

    def write(self, b):
        self.data += b


class PciBackend:
    """VfioUserServer backend over a stubdm PciFunction.

    Poses as the function's bus, so INTx changes (after the function's own
    INTx-disable gate) reach server.set_intx(). DMA mappings are mmapped.
    """

    def __init__(self, fn):
        self.fn = fn
        self.server = None
        self.maps = {}  # iova -> (size, mmap or None, fd_offset, prot)
        self.unmapped = []
        self.reads = 0
        self.writes = 0
        fn.attached(self, 0)

    def attach_server(self, server):
        self.server = server
        server.set_intx(self.fn.intx_asserted)

    # bus interface (stubdm.pci.PciBus)
    def set_intx(self, function, level):
        if self.server is not None:
            self.server.set_intx(level)

    def bar_changed(self, *args):
        pass

    # vfio_user backend interface
    def config_read(self, offset, size):
        return self.fn.config_read(offset, size)

    def config_write(self, offset, size, value):
        self.fn.config_write(offset, size, value)

    def bar_regions(self):
        return [(i, size, kind == "io") for i, kind, size in self.fn.bars()]

    def region_read(self, index, offset, size):
        self.reads += 1
        return self.fn.bar_read(index, offset, size)

    def region_write(self, index, offset, size, value):
        self.writes += 1
        self.fn.bar_write(index, offset, size, value)

    def dma_map(self, iova, size, fd, fd_offset, prot):
        m = None
        if fd is not None:
            try:
                m = mmap.mmap(fd, size, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE, offset=fd_offset)
            finally:
                os.close(fd)
        self.maps[iova] = (size, m, fd_offset, prot)

    def dma_unmap(self, iova, size):
        _, m, _, _ = self.maps.pop(iova)
        self.unmapped.append((iova, size))
        if m is not None:
            m.close()

    def dma_read(self, addr, n):
        for iova, (size, m, _, _) in self.maps.items():
            if iova <= addr and addr + n <= iova + size and m is not None:
                return bytes(m[addr - iova:addr - iova + n])
        raise KeyError(hex(addr))


def make_serial():
    line = IrqLine()
    chardev = Chardev()
    uart = Uart16550(line, name="pci-uart", chardev=chardev)
    fn = PciSerial(uart, irq=line)
    return uart, fn, chardev


# --- fake client ---------------------------------------------------------------

class Client:
    def __init__(self, srv, path):
        self.srv = srv
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.next_id = 0x100
        self.pump(0.05)

    def close(self):
        self.sock.close()
        self.pump(0.05)

    def pump(self, t=0.02):
        """Let the server handle what is pending, until it is idle for `t` s."""
        while True:
            r, _, _ = select.select(self.srv.filenos(), [], [], t)
            if not r:
                return
            for fd in r:
                self.srv.handle_readable(fd)

    def send_raw(self, data, fds=()):
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def send(self, cmd, payload=b"", flags=0, fds=()):
        self.next_id = (self.next_id + 1) & 0xFFFF
        self.send_raw(HDR.pack(self.next_id, cmd, 16 + len(payload), flags, 0) + payload, fds)
        return self.next_id

    def recv(self, timeout=2.0):
        """(msg_id, cmd, flags, error, payload); None if the server closed."""
        deadline = time.monotonic() + timeout
        buf = b""
        while True:
            need = 16 if len(buf) < 16 else HDR.unpack_from(buf)[2]
            if len(buf) >= need >= 16:
                msg_id, cmd, size, flags, err = HDR.unpack_from(buf)
                assert len(buf) == size, "server sent more than one message"
                return msg_id, cmd, flags, err, buf[16:]
            self.pump(0)
            r, _, _ = select.select([self.sock], [], [], 0.01)
            if r:
                chunk = self.sock.recv(need - len(buf))
                if not chunk:
                    return None
                buf += chunk
            if time.monotonic() > deadline:
                raise AssertionError("no reply from the server")

    def expect_nothing(self):
        self.pump(0.05)
        r, _, _ = select.select([self.sock], [], [], 0)
        if r:
            assert self.sock.recv(4096, socket.MSG_PEEK) == b"", "unexpected reply"

    def call(self, cmd, payload=b"", fds=()):
        msg_id = self.send(cmd, payload, fds=fds)
        reply = self.recv()
        assert reply is not None, "server closed the connection"
        assert reply[0] == msg_id and reply[1] == cmd
        return reply

    def ok(self, cmd, payload=b"", fds=()):
        _, _, flags, err, data = self.call(cmd, payload, fds)
        assert flags == vu.TYPE_REPLY and err == 0, (flags, err)
        return data

    def err(self, cmd, payload=b"", fds=()):
        _, _, flags, err, data = self.call(cmd, payload, fds)
        assert flags == vu.TYPE_REPLY | vu.ERROR and data == b"", (flags, err)
        return err

    def closed(self, timeout=2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0)
            r, _, _ = select.select([self.sock], [], [], 0.01)
            if r:
                try:
                    if self.sock.recv(4096) == b"":
                        return True
                except ConnectionResetError:
                    return True
        return False

    # the requests QEMU makes
    def version(self):
        caps = json.dumps({"capabilities": {
            "migration": {"pgsize": 4096, "max_bitmap_size": 1048576},
            "max_msg_fds": 16, "max_data_xfer_size": 1048576, "pgsizes": 4096,
            "max_dma_maps": 65535, "write_multiple": True}}).encode() + b"\0"
        return self.ok(vu.VERSION, struct.pack("<HH", 0, 0) + caps)

    def read(self, region, offset, count):
        data = self.ok(vu.REGION_READ, RW.pack(offset, region, count))
        assert RW.unpack_from(data) == (offset, region, count)
        assert len(data) == 16 + count
        return data[16:]

    def read_int(self, region, offset, count):
        return int.from_bytes(self.read(region, offset, count), "little")

    def write(self, region, offset, value, count, posted=False):
        payload = RW.pack(offset, region, count) + value.to_bytes(count, "little")
        if posted:
            self.send(vu.REGION_WRITE, payload, flags=vu.NO_REPLY)
            self.pump()
            return None
        data = self.ok(vu.REGION_WRITE, payload)
        assert RW.unpack_from(data) == (offset, region, count)
        return data

    def set_irqs(self, flags, index, start, count, data=b"", fds=()):
        payload = struct.pack("<IIIII", 20 + len(data), flags, index, start, count) + data
        return self.call(vu.DEVICE_SET_IRQS, payload, fds)


@pytest.fixture(params=["c-hot-path", "python"])
def serial_server(tmp_path, request):
    """Every protocol test runs twice: with the hot path in C (host_sim._vfu_fast)
    and in Python alone; the answers must be the same."""
    fast = request.param == "c-hot-path"
    if fast and vu._lib is None:
        pytest.skip("host_sim._vfu_fast is not built (.venv/bin/scons -Q vfu-fast)")
    uart, fn, chardev = make_serial()
    backend = PciBackend(fn)
    logs = []
    srv = VfioUserServer(str(tmp_path / "vfu.sock"), backend, log=logs.append, fast=fast)
    assert srv._fast == fast
    backend.attach_server(srv)
    clients = []

    def connect(version=True):
        c = Client(srv, srv.path)
        clients.append(c)
        if version:
            c.version()
        return c

    yield srv, backend, uart, fn, chardev, connect, logs
    for c in clients:
        c.sock.close()
    srv.close()
    assert not os.path.exists(srv.path)


def eventfd():
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def eventfd_count(fd):
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except BlockingIOError:
        return 0


def still_usable(srv):
    """A new client can negotiate and read the vendor/device id."""
    c = Client(srv, srv.path)
    try:
        c.version()
        assert c.read_int(7, 0, 4) == 0x00021B36
    finally:
        c.close()


# --- 1. protocol ---------------------------------------------------------------

def test_version_negotiation(serial_server):
    srv, *_, connect, logs = serial_server
    c = connect(version=False)
    request_len = 4 + 200
    data = c.version()
    major, minor = struct.unpack_from("<HH", data)
    assert (major, minor) == (0, 0)
    assert data.endswith(b"\0") and data.count(b"\0") == 1 + data[:4].count(b"\0")
    caps = json.loads(data[4:-1])
    assert caps["capabilities"]["max_msg_fds"] >= 1
    assert caps["capabilities"]["max_data_xfer_size"] >= 4096
    assert "write_multiple" not in caps["capabilities"]
    assert len(data) <= request_len
    # A second VERSION is out of order.
    assert c.err(vu.VERSION, struct.pack("<HH", 0, 0) + b"{}\0") == errno.EINVAL


def test_version_reply_fits_short_request(serial_server):
    *_, connect, logs = serial_server
    c = connect(version=False)
    data = c.ok(vu.VERSION, struct.pack("<HH", 0, 0) + b"{}\0")
    assert data == struct.pack("<HH", 0, 0) + b"{}\0"


def test_version_refusals(serial_server):
    *_, connect, logs = serial_server
    c = connect(version=False)
    assert c.err(vu.DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0)) == errno.EINVAL
    assert c.err(vu.REGION_READ, RW.pack(0, 7, 4)) == errno.EINVAL
    assert c.err(vu.VERSION, struct.pack("<HH", 1, 0) + b"{}\0") == errno.ENOTSUP
    assert c.err(vu.VERSION, struct.pack("<HH", 0, 0) + b"{not json\0") == errno.EINVAL
    assert c.err(vu.VERSION, struct.pack("<HH", 0, 0) + b"[1]\0") == errno.EINVAL
    assert c.err(vu.VERSION, b"\0") == errno.EINVAL
    c.version()  # still negotiable after the refusals
    assert c.read_int(7, 0, 2) == 0x1B36


def test_get_info_region_info_irq_info(serial_server):
    *_, connect, logs = serial_server
    c = connect()
    argsz, flags, nregions, nirqs = struct.unpack(
        "<IIII", c.ok(vu.DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0)))
    assert flags & vu.DEVICE_FLAGS_PCI and nregions >= 8 and nirqs >= 3
    assert not flags & vu.DEVICE_FLAGS_RESET  # PciBackend has no reset()

    def region(i):
        return struct.unpack("<IIIIQQ", c.ok(
            vu.DEVICE_GET_REGION_INFO, struct.pack("<IIIIQQ", 32, 0, i, 0, 0, 0)))

    assert region(0) == (32, 3, 0, 0, 8, 0)  # BAR0: 8 bytes of I/O
    for i in (1, 2, 3, 4, 5, 6, 8):
        assert region(i)[4] == 0
    assert region(7) == (32, 3, 7, 0, 256, 0)
    assert c.err(vu.DEVICE_GET_REGION_INFO,
                 struct.pack("<IIIIQQ", 32, 0, nregions, 0, 0, 0)) == errno.EINVAL
    assert c.err(vu.DEVICE_GET_REGION_INFO,
                 struct.pack("<IIIIQQ", 16, 0, 0, 0, 0, 0)) == errno.EINVAL
    assert c.err(vu.DEVICE_GET_REGION_INFO, struct.pack("<II", 32, 0)) == errno.EINVAL

    def irq(i):
        return struct.unpack("<IIII", c.ok(
            vu.DEVICE_GET_IRQ_INFO, struct.pack("<IIII", 16, 0, i, 0)))

    assert irq(0) == (16, 7, 0, 1)  # EVENTFD|MASKABLE|AUTOMASKED, one line
    assert irq(1)[3] == 0 and irq(2)[3] == 0
    assert c.err(vu.DEVICE_GET_IRQ_INFO, struct.pack("<IIII", 16, 0, 3, 0)) == errno.EINVAL


def test_config_space(serial_server):
    srv, backend, uart, fn, *_ = serial_server
    c = serial_server[5]()
    cfg = c.read(7, 0, 256)  # what QEMU reads at realize
    assert cfg == bytes(fn.config)
    assert cfg[0:4] == bytes.fromhex("361b0200")
    assert cfg[0x09:0x0C] == bytes.fromhex("020007")  # 16550, serial controller
    assert cfg[0x3D] == 1  # INTA
    assert c.read_int(7, 0x2C, 4) == 0x11001AF4
    # Unaligned and odd-sized reads are split within dwords.
    assert c.read(7, 1, 3) == cfg[1:4]
    assert c.read(7, 0x0A, 6) == cfg[0x0A:0x10]
    # Command: IO enable and INTx disable are writable (the backend owns them).
    c.write(7, 4, 0x0401, 2)
    assert c.read_int(7, 4, 2) == 0x0401
    assert fn.command == 0x0401
    # Config writes are never posted: a reply even with NO_REPLY clear, and a
    # BAR write through config space reaches the function.
    c.write(7, 0x10, 0xC000, 4)
    assert c.read_int(7, 0x10, 4) == 0xC001
    assert c.read(7, 0xFF, 1) == b"\0"
    assert c.err(vu.REGION_READ, RW.pack(0xFF, 7, 2)) == errno.EINVAL
    assert c.err(vu.REGION_READ, RW.pack(256, 7, 1)) == errno.EINVAL


def test_bar_access_and_posted_writes(serial_server):
    srv, backend, uart, fn, chardev, connect, logs = serial_server
    c = connect()
    assert c.read_int(0, 5, 1) == 0x60  # LSR: THRE | TEMT
    c.write(0, 7, 0x5A, 1)  # scratch, replied
    assert c.read_int(0, 7, 1) == 0x5A
    c.write(0, 7, 0xA5, 1, posted=True)
    c.expect_nothing()  # posted: never a reply
    assert c.read_int(0, 7, 1) == 0xA5
    # Transmit through THR. (QEMU posts MMIO BAR writes only: I/O BAR
    # writes like these are synchronous there. Both must work.)
    for b in b"hi":
        c.write(0, 0, b, 1, posted=True)
    c.expect_nothing()
    assert bytes(chardev.data) == b"hi"
    # 2-byte access = one backend access (PciSerial splits it in bytes).
    before = backend.reads
    assert c.read_int(0, 6, 2) == (0xA5 << 8) | uart.msr
    assert backend.reads == before + 1
    # Any other count is split into byte accesses.
    before = backend.reads
    assert c.read(0, 5, 3)[2] == 0xA5
    assert backend.reads == before + 3
    assert srv.stats["posted"] >= 3


def test_region_refusals(serial_server):
    srv, backend, uart, fn, chardev, connect, logs = serial_server
    c = connect()
    E = errno.EINVAL
    assert c.err(vu.REGION_READ, RW.pack(7, 0, 2)) == E  # crosses the end of BAR0
    assert c.err(vu.REGION_READ, RW.pack(8, 0, 1)) == E
    assert c.err(vu.REGION_READ, RW.pack((1 << 64) - 1, 0, 2)) == E
    assert c.err(vu.REGION_READ, RW.pack(0, 1, 1)) == E  # BAR1 is empty
    assert c.err(vu.REGION_READ, RW.pack(0, 9, 1)) == E  # no such region
    assert c.err(vu.REGION_READ, RW.pack(0, 0, 0)) == E
    assert c.err(vu.REGION_READ, RW.pack(0, 0, 1) + b"x") == E  # trailing bytes
    assert c.err(vu.REGION_READ, RW.pack(0, 0, 1)[:12]) == E  # truncated
    assert c.err(vu.REGION_WRITE, RW.pack(7, 0, 2) + b"ab") == E
    assert c.err(vu.REGION_WRITE, RW.pack(7, 0, 2) + b"a") == E  # count != data
    assert c.err(vu.REGION_WRITE, RW.pack(7, 0, 1) + b"ab") == E
    # A refused posted write gets no reply either; the stream stays in step.
    c.send(vu.REGION_WRITE, RW.pack(7, 0, 2) + b"ab", flags=vu.NO_REPLY)
    c.expect_nothing()
    assert c.read_int(0, 7, 1) == 0
    assert bytes(chardev.data) == b""


def test_intx_eventfd_and_unmask_resignal(serial_server):
    srv, backend, uart, fn, chardev, connect, logs = serial_server
    c = connect()
    efd = eventfd()
    try:
        trig = vu.IRQ_SET_DATA_EVENTFD | vu.IRQ_SET_ACTION_TRIGGER
        assert c.set_irqs(trig, 0, 0, 1, fds=[efd])[2] == vu.TYPE_REPLY
        assert eventfd_count(efd) == 0
        # IER.THRI with THR empty: the UART raises its line -> one signal.
        c.write(0, 1, 0x02, 1, posted=True)
        assert fn.intx_asserted == 1
        assert eventfd_count(efd) == 1
        assert c.read_int(7, 6, 2) & 0x0008  # status: interrupt pending
        # Automasked: the line toggling does not signal until UNMASK.
        srv.set_intx(0)
        srv.set_intx(1)
        assert eventfd_count(efd) == 0
        unmask = vu.IRQ_SET_DATA_NONE | vu.IRQ_SET_ACTION_UNMASK
        # QEMU's EOI: after the next BAR access, UNMASK. Line still high ->
        # signalled again.
        assert c.read_int(0, 7, 1) == 0
        assert c.set_irqs(unmask, 0, 0, 1)[2] == vu.TYPE_REPLY
        assert eventfd_count(efd) == 1
        # The guest reads IIR: THRI is reported and cleared; the line drops.
        assert c.read_int(0, 2, 1) & 0x0F == 0x02
        assert fn.intx_asserted == 0
        c.set_irqs(unmask, 0, 0, 1)
        assert eventfd_count(efd) == 0
        # MASK holds a new interrupt back until UNMASK.
        c.set_irqs(vu.IRQ_SET_DATA_NONE | vu.IRQ_SET_ACTION_MASK, 0, 0, 1)
        c.write(0, 1, 0x00, 1, posted=True)
        c.write(0, 1, 0x02, 1, posted=True)
        assert fn.intx_asserted == 1 and eventfd_count(efd) == 0
        c.set_irqs(vu.IRQ_SET_DATA_BOOL | vu.IRQ_SET_ACTION_UNMASK, 0, 0, 1, b"\x01")
        assert eventfd_count(efd) == 1
        # Command bit 10 (INTx disable) gates the line in the backend.
        c.write(7, 4, 0x0401, 2)
        assert fn.intx_asserted == 0
        c.set_irqs(unmask, 0, 0, 1)
        assert eventfd_count(efd) == 0
        c.write(7, 4, 0x0001, 2)
        assert eventfd_count(efd) == 1
        # Software trigger (DATA_BOOL / DATA_NONE).
        c.set_irqs(vu.IRQ_SET_DATA_BOOL | vu.IRQ_SET_ACTION_TRIGGER, 0, 0, 1, b"\x01")
        assert eventfd_count(efd) == 1
        # Disable: DATA_NONE|TRIGGER, count 0. Nothing is signalled any more.
        c.set_irqs(vu.IRQ_SET_DATA_NONE | vu.IRQ_SET_ACTION_TRIGGER, 0, 0, 0)
        c.set_irqs(unmask, 0, 0, 1)
        assert eventfd_count(efd) == 0
        assert srv._intx_trigger is None
        # Re-enabling while the line is high signals at once.
        assert c.set_irqs(trig, 0, 0, 1, fds=[efd])[2] == vu.TYPE_REPLY
        assert eventfd_count(efd) == 1
        # An eventfd array with no fds de-assigns the trigger (QEMU's -1).
        c.set_irqs(trig, 0, 0, 1)
        assert srv._intx_trigger is None
    finally:
        os.close(efd)


def test_intx_unmask_eventfd(serial_server):
    srv, backend, uart, fn, chardev, connect, logs = serial_server
    c = connect()
    efd, ufd = eventfd(), eventfd()
    try:
        c.set_irqs(vu.IRQ_SET_DATA_EVENTFD | vu.IRQ_SET_ACTION_TRIGGER, 0, 0, 1, fds=[efd])
        c.set_irqs(vu.IRQ_SET_DATA_EVENTFD | vu.IRQ_SET_ACTION_UNMASK, 0, 0, 1, fds=[ufd])
        assert srv._intx_unmask in srv.filenos()
        c.write(0, 1, 0x02, 1, posted=True)
        assert eventfd_count(efd) == 1
        os.write(ufd, (1).to_bytes(8, "little"))  # a resampler unmasking
        c.pump()
        assert eventfd_count(efd) == 1
        assert c.err(vu.DEVICE_SET_IRQS, struct.pack(
            "<IIIII", 20, vu.IRQ_SET_DATA_EVENTFD | vu.IRQ_SET_ACTION_MASK, 0, 0, 1),
            fds=[ufd]) == errno.EINVAL
    finally:
        os.close(efd)
        os.close(ufd)


def test_msi_vector_of_a_function_with_msi(serial_server):
    srv, backend, uart, fn, chardev, connect, logs = serial_server
    c = connect()
    N, B, F = vu.IRQ_SET_DATA_NONE, vu.IRQ_SET_DATA_BOOL, vu.IRQ_SET_DATA_EVENTFD
    M, U, T = vu.IRQ_SET_ACTION_MASK, vu.IRQ_SET_ACTION_UNMASK, vu.IRQ_SET_ACTION_TRIGGER
    backend.msi_vectors = lambda: 1  # the function now offers an MSI capability
    efd = eventfd()
    try:
        # GET_IRQ_INFO: one vector, eventfd, not maskable, no resizing (vfio-pci's).
        argsz, flags, index, count = struct.unpack(
            "<IIII", c.call(vu.DEVICE_GET_IRQ_INFO, struct.pack("<IIII", 16, 0, 1, 0))[4])
        assert (index, count) == (1, 1)
        assert flags == vu.IRQ_INFO_EVENTFD | vu.IRQ_INFO_NORESIZE
        assert not srv.signal_msi()  # no client vector yet: nothing to signal
        # QEMU's vfio_msi_enable: TRIGGER with one eventfd at vector 0.
        assert c.set_irqs(F | T, 1, 0, 1, fds=[efd])[2] == vu.TYPE_REPLY
        assert srv.signal_msi() and srv.signal_msi()
        assert eventfd_count(efd) == 2
        c.set_irqs(B | T, 1, 0, 1, b"\x01")  # software trigger
        assert eventfd_count(efd) == 1
        # No masking (vfio-pci has none for MSI), no vector 1.
        for flags_, start, cnt in ((N | M, 0, 1), (N | U, 0, 1)):
            _, _, fl, err, _ = c.set_irqs(flags_, 1, start, cnt)
            assert fl == vu.TYPE_REPLY | vu.ERROR and err == errno.ENOTTY
        _, _, fl, err, _ = c.set_irqs(F | T, 1, 1, 1, fds=[efd])
        assert fl == vu.TYPE_REPLY | vu.ERROR and err == errno.EINVAL
        # Disable (QEMU's at reset or MSI off): the eventfd is let go.
        assert c.set_irqs(N | T, 1, 0, 0)[2] == vu.TYPE_REPLY
        assert not srv.signal_msi() and eventfd_count(efd) == 0
        assert c.set_irqs(F | T, 1, 0, 1, fds=[efd])[2] == vu.TYPE_REPLY
    finally:
        os.close(efd)
    c.close()
    assert srv._msi_trigger is None  # the client gone, its vector goes with it


def test_set_irqs_refusals(serial_server):
    srv, *_, connect, logs = serial_server
    c = connect()
    E = errno.EINVAL

    def bad(flags, index=0, start=0, count=1, data=b"", fds=()):
        _, _, fl, err, _ = c.set_irqs(flags, index, start, count, data, fds)
        assert fl == vu.TYPE_REPLY | vu.ERROR and err == E, (flags, index, start, count)

    N, B, F = vu.IRQ_SET_DATA_NONE, vu.IRQ_SET_DATA_BOOL, vu.IRQ_SET_DATA_EVENTFD
    M, U, T = vu.IRQ_SET_ACTION_MASK, vu.IRQ_SET_ACTION_UNMASK, vu.IRQ_SET_ACTION_TRIGGER
    bad(N | B | T)  # two data types
    bad(N | M | U)  # two actions
    bad(N | T | 0x40)  # unknown flag
    bad(N | T, index=3)
    bad(N | M, start=1)
    bad(N | M, count=2)
    bad(B | M, data=b"")  # BOOL without its byte
    bad(F | T, index=1, count=1)  # MSI has no vectors
    r, w = os.pipe()
    try:
        bad(F | T, count=2, fds=[r])  # fd count != count
        bad(N | M, fds=[r])  # fds where none belong
        os.close(r)
        r = None
        # Every fd the server was given has been closed: the pipe is widowed.
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")
    finally:
        if r is not None:
            os.close(r)
        os.close(w)
    # MSI/MSI-X disable is accepted (QEMU sends it at reset).
    assert c.set_irqs(N | T, 1, 0, 0)[2] == vu.TYPE_REPLY
    assert c.set_irqs(N | T, 2, 0, 0)[2] == vu.TYPE_REPLY


def test_dma_map_memfd(serial_server):
    srv, backend, uart, fn, chardev, connect, logs = serial_server
    c = connect()
    mfd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    try:
        os.ftruncate(mfd, 0x20000)
        os.pwrite(mfd, b"stubdm dma", 0x11000)
        rw = vu.DMA_MAP_FLAG_READ | vu.DMA_MAP_FLAG_WRITE
        c.ok(vu.DMA_MAP, struct.pack("<IIQQQ", 32, rw, 0x10000, 0x100000, 0x10000), fds=[mfd])
        assert backend.dma_read(0x101000, 10) == b"stubdm dma"
        assert backend.maps[0x100000][2:] == (0x10000, rw)
        # Without an fd (memory the server can't map): fd None.
        c.ok(vu.DMA_MAP, struct.pack("<IIQQQ", 32, 1, 0, 0xC0000, 0x20000))
        assert backend.maps[0xC0000][1] is None
        E = errno.EINVAL
        assert c.err(vu.DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x108000, 0x1000),
                     fds=[mfd]) == errno.EEXIST
        assert c.err(vu.DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x200000, 0)) == E
        assert c.err(vu.DMA_MAP, struct.pack("<IIQQQ", 32, 8, 0, 0x200000, 0x1000)) == E
        assert c.err(vu.DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, (1 << 64) - 0x1000,
                                             0x2000)) == E
        assert c.err(vu.DMA_MAP, struct.pack("<IIQQ", 32, 3, 0, 0x200000)) == E
        assert c.err(vu.DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x200000, 0x1000),
                     fds=[mfd, mfd]) == E
        # Unmap: partial unmap of a mapping is refused; an exact one works.
        assert c.err(vu.DMA_UNMAP, struct.pack("<IIQQ", 24, 0, 0x100000, 0x1000)) == E
        c.ok(vu.DMA_UNMAP, struct.pack("<IIQQ", 24, 0, 0x100000, 0x10000))
        assert backend.unmapped == [(0x100000, 0x10000)]
        c.ok(vu.DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x100000, 0x10000), fds=[mfd])
        c.ok(vu.DMA_UNMAP, struct.pack("<IIQQ", 24, vu.DMA_UNMAP_FLAG_ALL, 0, 0))
        assert backend.maps == {}
        # Mappings left at disconnect are unmapped.
        c.ok(vu.DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x100000, 0x10000), fds=[mfd])
        c.close()
        assert backend.maps == {}
        assert backend.unmapped[-1] == (0x100000, 0x10000)
    finally:
        os.close(mfd)
    still_usable(srv)


def test_second_client_refused(serial_server):
    srv, *_, connect, logs = serial_server
    c1 = connect()
    c2 = connect(version=False)
    assert c2.closed()
    assert c1.read_int(7, 0, 2) == 0x1B36
    c1.close()
    assert not srv.connected
    still_usable(srv)


@pytest.mark.parametrize("name,raw,outcome", [
    ("size below header", HDR.pack(1, vu.DEVICE_GET_INFO, 8, 0, 0), "close"),
    ("size zero", HDR.pack(1, vu.VERSION, 0, 0, 0), "close"),
    ("oversized", HDR.pack(1, vu.REGION_WRITE, vu.MAX_MSG + 1, 0, 0), "close"),
    ("unknown command", HDR.pack(1, 99, 16, 0, 0), errno.ENOSYS),
    ("dirty pages", HDR.pack(1, vu.DIRTY_PAGES, 16, 0, 0), errno.ENOSYS),
    ("dma read from client", HDR.pack(1, vu.DMA_READ, 16, 0, 0), errno.ENOSYS),
    ("reset without backend reset", HDR.pack(1, vu.DEVICE_RESET, 16, 0, 0), errno.ENOTTY),
    ("get info truncated", HDR.pack(1, vu.DEVICE_GET_INFO, 18, 0, 0) + b"\x10\0", errno.EINVAL),
    ("set irqs truncated", HDR.pack(1, vu.DEVICE_SET_IRQS, 24, 0, 0) + bytes(8), errno.EINVAL),
    ("unmap truncated", HDR.pack(1, vu.DMA_UNMAP, 20, 0, 0) + bytes(4), errno.EINVAL),
    ("type 5", HDR.pack(1, vu.DEVICE_GET_INFO, 16, 5, 0), "ignored"),
    ("reply from client", HDR.pack(1, vu.DEVICE_GET_INFO, 16, 1, 0), "ignored"),
])
def test_malformed(serial_server, name, raw, outcome):
    srv, *_, connect, logs = serial_server
    c = connect()
    c.send_raw(raw)
    if outcome == "close":
        assert c.closed(), name
        assert not srv.connected
    elif outcome == "ignored":
        c.expect_nothing()
        assert c.read_int(7, 0, 2) == 0x1B36
    else:
        reply = c.recv()
        assert reply is not None
        assert reply[0] == 1 and reply[2] == vu.TYPE_REPLY | vu.ERROR
        assert reply[3] == outcome
        assert c.read_int(7, 0, 2) == 0x1B36
    c.close()
    still_usable(srv)


def test_truncated_message_then_hangup(serial_server):
    srv, *_, connect, logs = serial_server
    c = connect()
    r, w = os.pipe()
    try:
        # Half a message with an fd attached, then the client goes away.
        c.send_raw(HDR.pack(7, vu.DMA_MAP, 48, 0, 0) + bytes(10), fds=[r])
        c.pump()
        assert srv.connected
        c.close()
        assert not srv.connected
        os.close(r)
        r = None
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")  # the server closed its copy of the fd
    finally:
        if r is not None:
            os.close(r)
        os.close(w)
    still_usable(srv)


def test_message_split_and_batched(serial_server):
    srv, *_, connect, logs = serial_server
    c = connect()
    msg = HDR.pack(9, vu.REGION_READ, 32, 0, 0) + RW.pack(0, 7, 4)
    for i in range(len(msg)):  # byte by byte
        c.send_raw(msg[i:i + 1])
        c.pump(0)
    reply = c.recv()
    assert reply[0] == 9 and reply[4][16:] == bytes.fromhex("361b0200")
    # Three requests in one write: three replies, in order.
    c.send_raw(b"".join(HDR.pack(20 + i, vu.REGION_READ, 32, 0, 0) + RW.pack(i, 7, 1)
                        for i in range(3)))
    got = []
    while len(got) < 3:
        c.pump()
        got.append(c.sock.recv(17 + 16))
    assert [HDR.unpack_from(g)[0] for g in got] == [20, 21, 22]
    assert [g[-1] for g in got] == [0x36, 0x1B, 0x02]


def test_backend_fault_gives_eio(serial_server):
    srv, backend, *_, connect, logs = serial_server
    c = connect()

    def boom(*a):
        raise RuntimeError("device on fire")

    backend.region_read = boom
    assert c.err(vu.REGION_READ, RW.pack(0, 0, 1)) == errno.EIO
    assert any("device on fire" in line for line in logs)
    assert c.read_int(7, 0, 2) == 0x1B36


def test_fuzz(serial_server):
    srv, *_, connect, logs = serial_server
    rng = random.Random(1234)
    c = connect()
    closes = 0
    for i in range(400):
        cmd = rng.choice([rng.randrange(0, 20), vu.REGION_READ, vu.REGION_WRITE,
                          vu.DEVICE_SET_IRQS, vu.DMA_MAP, vu.DMA_UNMAP])
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 48)))
        if rng.random() < 0.5 and len(body) >= 16:
            # A plausible region access.
            body = RW.pack(rng.randrange(0, 300), rng.randrange(0, 10),
                           rng.randrange(0, 9)) + body[16:]
        flags = rng.choice([0, 0, 0, vu.NO_REPLY, 1, rng.randrange(1 << 32)])
        size = 16 + len(body)
        if rng.random() < 0.05:
            size = rng.randrange(0, 1 << 32)
        c.send_raw(HDR.pack(i & 0xFFFF, cmd, size, flags, 0) + body)
        c.pump(0)
        if not srv.connected:
            closes += 1
            c.sock.close()
            c = connect()
        # Drain the replies (a fuzz message may also be waiting for its
        # remaining bytes: the stream is out of step from then on).
        while select.select([c.sock], [], [], 0)[0]:
            if not c.sock.recv(65536):
                break
    c.close()
    assert not any("internal error" in line for line in logs), logs
    assert closes > 0
    still_usable(srv)


def test_trigger_fd_never_blocks(serial_server):
    srv, backend, uart, fn, chardev, connect, logs = serial_server
    c = connect()
    r, w = os.pipe()  # a blocking pipe posing as an eventfd
    try:
        c.set_irqs(vu.IRQ_SET_DATA_EVENTFD | vu.IRQ_SET_ACTION_TRIGGER, 0, 0, 1, fds=[w])
        t0 = time.monotonic()
        for _ in range(70000 // 8):  # more than a pipe holds
            srv._intx_signal()
        assert time.monotonic() - t0 < 5
        assert any("eventfd write failed" in line for line in logs)
    finally:
        os.close(r)
        os.close(w)
    assert c.read_int(7, 0, 2) == 0x1B36


@pytest.mark.parametrize("per_send", [1, 64])
def test_client_that_stops_reading_is_dropped(serial_server, monkeypatch, per_send):
    # A peer flooding requests and never reading the replies: once the socket
    # is full the server waits a bounded time, then drops it and serves on.
    # One request per send takes the C hot path's reply; 64 the general one.
    srv, *_, connect, logs = serial_server
    monkeypatch.setattr(vu, "SEND_TIMEOUT", 0.2)
    c = connect()
    c.sock.setblocking(False)
    burst = (HDR.pack(5, vu.REGION_READ, 32, 0, 0) + RW.pack(7, 0, 1)) * per_send
    deadline = time.monotonic() + 30
    while srv.connected and time.monotonic() < deadline:
        try:
            c.sock.send(burst)
        except BlockingIOError:
            pass
        except OSError:
            break
        c.pump(0)
    assert not srv.connected
    assert any("does not read its replies" in line for line in logs), logs[-3:]
    still_usable(srv)


def test_serve_forever(tmp_path):
    import threading
    uart, fn, chardev = make_serial()
    backend = PciBackend(fn)
    srv = VfioUserServer(str(tmp_path / "s.sock"), backend, log=lambda m: None)
    backend.attach_server(srv)
    stop = threading.Event()
    t = threading.Thread(target=srv.serve_forever, args=(stop.is_set,), daemon=True)
    t.start()
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(srv.path)
        s.sendall(HDR.pack(1, vu.VERSION, 16 + 7, 0, 0) + struct.pack("<HH", 0, 0) + b"{}\0")
        assert HDR.unpack(s.recv(16))[:2] == (1, vu.VERSION)
        s.recv(64)
        s.sendall(HDR.pack(2, vu.REGION_READ, 32, 0, 0) + RW.pack(0, 7, 4))
        reply = b""
        while len(reply) < 36:
            reply += s.recv(64)
        assert reply[32:] == bytes.fromhex("361b0200")
        s.close()
    finally:
        stop.set()
        t.join(5)
        srv.close()
    assert not t.is_alive()


class MmapBackend:
    """A function with two memory BARs from one memfd: BAR0 (64 KiB) all mappable,
    BAR2 (16 KiB, at 64 KiB in the file) mappable in two sparse areas."""

    def __init__(self, mm0=None, mm2=None):
        self.fd = os.memfd_create("vram", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, 0x14000)
        self.mm0 = mm0 or vu.MmapRegion(self.fd)
        self.mm2 = mm2 or vu.MmapRegion(self.fd, 0x10000, [(0, 0x1000), (0x2000, 0x2000)])
        self.reads = []
        self.maps = []

    def bar_regions(self):
        return [(0, 0x10000, False, self.mm0), (2, 0x4000, False, self.mm2)]

    def config_read(self, offset, size):
        return 0x11111234 & ((1 << (8 * size)) - 1) if offset == 0 else 0

    def config_write(self, offset, size, value):
        pass

    def region_read(self, index, offset, size):
        self.reads.append((index, offset, size))
        return int.from_bytes(os.pread(self.fd, size, (0, 0, 0x10000)[index] + offset),
                              "little")

    def region_write(self, index, offset, size, value):
        pass

    def dma_map(self, iova, size, fd, fd_offset, prot):
        self.maps.append((iova, size, fd))
        if fd is not None:
            os.close(fd)

    def dma_unmap(self, iova, size):
        pass


def recv_with_fds(c, timeout=2.0):
    """One reply and the fds that came with it: (flags, err, payload, fds)."""
    deadline = time.monotonic() + timeout
    buf, fds = b"", []
    while len(buf) < 16 or len(buf) < HDR.unpack_from(buf)[2]:
        assert time.monotonic() < deadline, "no reply from the server"
        c.pump(0)
        if not select.select([c.sock], [], [], 0.01)[0]:
            continue
        need = 16 if len(buf) < 16 else HDR.unpack_from(buf)[2]
        data, anc, _, _ = c.sock.recvmsg(need - len(buf), socket.CMSG_SPACE(16))
        assert data, "server closed"
        buf += data
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", cdata[:len(cdata) - len(cdata) % 4]).tolist()
    _, _, _, flags, err = HDR.unpack_from(buf)
    return flags, err, buf[16:], fds


def test_mmap_regions(tmp_path):
    be = MmapBackend()
    os.pwrite(be.fd, b"VRAM", 0x100)
    os.pwrite(be.fd, b"BAR2", 0x12000)
    srv = VfioUserServer(str(tmp_path / "m.sock"), be, log=lambda m: None)
    c = Client(srv, srv.path)
    try:
        c.version()
        RI = struct.Struct("<IIIIQQ")
        # Whole-region: READ|WRITE|MMAP, the fd's offset, the fd itself.
        c.send(vu.DEVICE_GET_REGION_INFO, RI.pack(32, 0, 0, 0, 0, 0))
        flags, err, data, fds = recv_with_fds(c)
        assert flags == vu.TYPE_REPLY and err == 0
        assert RI.unpack(data) == (32, 7, 0, 0, 0x10000, 0)
        assert len(fds) == 1
        m = mmap.mmap(fds[0], 0x10000, mmap.MAP_SHARED, offset=0)
        assert m[0x100:0x104] == b"VRAM"
        m[0x200:0x204] = b"lfb!"  # the guest's write, seen by the device model
        assert os.pread(be.fd, 4, 0x200) == b"lfb!"
        m.close()
        os.close(fds[0])
        # Sparse: too short an argsz gets the size needed, no caps, no fd ...
        need = 32 + 8 + 8 + 2 * 16
        c.send(vu.DEVICE_GET_REGION_INFO, RI.pack(32, 0, 2, 0, 0, 0))
        flags, err, data, fds = recv_with_fds(c)
        assert err == 0 and fds == [] and len(data) == 32
        assert RI.unpack(data) == (need, 7, 2, 0, 0x4000, 0x10000)
        # ... asked again with that size: CAPS, the sparse-mmap capability, the fd.
        c.send(vu.DEVICE_GET_REGION_INFO, RI.pack(need, 0, 2, 0, 0, 0) + bytes(need - 32))
        flags, err, data, fds = recv_with_fds(c)
        assert err == 0 and len(fds) == 1 and len(data) == need
        assert RI.unpack_from(data) == (need, 15, 2, 32, 0x4000, 0x10000)
        assert struct.unpack_from("<HHIII", data, 32) == (vu.REGION_INFO_CAP_SPARSE_MMAP,
                                                          1, 0, 2, 0)
        assert [struct.unpack_from("<QQ", data, 48 + 16 * i) for i in range(2)] == [
            (0, 0x1000), (0x2000, 0x2000)]
        m = mmap.mmap(fds[0], 0x2000, mmap.MAP_SHARED, offset=0x10000 + 0x2000)
        assert m[0:4] == b"BAR2"
        m.close()
        os.close(fds[0])
        # Trapped accesses still reach the backend (QEMU traps while INTx is pending).
        assert c.read(0, 0x100, 4) == b"VRAM" and be.reads == [(0, 0x100, 4)]
        # QEMU's DMA_MAP for the mapped BAR itself comes without an fd: success.
        c.ok(vu.DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0xFD000000, 0x10000))
        assert be.maps == [(0xFD000000, 0x10000, None)]
        # Other regions stay as they were.
        assert RI.unpack(c.ok(vu.DEVICE_GET_REGION_INFO, RI.pack(32, 0, 7, 0, 0, 0))) == (
            32, 3, 7, 0, 256, 0)
        assert RI.unpack(c.ok(vu.DEVICE_GET_REGION_INFO, RI.pack(32, 0, 1, 0, 0, 0)))[1] == 0
    finally:
        c.sock.close()
        srv.close()
    os.fstat(be.fd)  # the backend's fd: never the server's to close
    os.close(be.fd)


@pytest.mark.parametrize("why,make", [
    ("I/O BAR", lambda fd: [(0, 0x1000, True, vu.MmapRegion(fd))]),
    ("unaligned offset", lambda fd: [(0, 0x1000, False, vu.MmapRegion(fd, 0x800))]),
    ("file too short", lambda fd: [(0, 0x10000, False, vu.MmapRegion(fd, 0x8000))]),
    ("area outside", lambda fd: [(0, 0x2000, False, vu.MmapRegion(fd, 0, [(0x1000, 0x2000)]))]),
    ("areas overlap", lambda fd: [(0, 0x4000, False, vu.MmapRegion(
        fd, 0, [(0, 0x2000), (0x1000, 0x1000)]))]),
    ("unaligned area", lambda fd: [(0, 0x4000, False, vu.MmapRegion(fd, 0, [(0, 0x800)]))]),
    ("no areas", lambda fd: [(0, 0x4000, False, vu.MmapRegion(fd, 0, []))]),
    ("closed fd", lambda fd: [(0, 0x4000, False, vu.MmapRegion(999999))]),
    ("smaller than a page", lambda fd: [(0, 0x800, False, vu.MmapRegion(fd))]),
    ("not an MmapRegion", lambda fd: [(0, 0x1000, False, (fd, 0))]),
])
def test_mmap_region_refusals(tmp_path, why, make):
    be = MmapBackend()
    try:
        be.bar_regions = lambda: make(be.fd)
        with pytest.raises(ValueError):
            VfioUserServer(str(tmp_path / "m.sock"), be, log=lambda m: None)
        assert not os.path.exists(tmp_path / "m.sock"), why
    finally:
        os.close(be.fd)


# --- 2. a real guest under QEMU ---------------------------------------------------

GUEST = os.path.join(REPO, "build", "guest")
KERNEL = os.path.join(GUEST, "vmlinuz")
INITRD = os.path.join(GUEST, "initramfs.cpio.gz")


def _qemu_candidates():
    yield os.path.join(REPO, "build", "qemu-system-x86_64")
    if os.environ.get("STUBDM_QEMU"):
        yield os.environ["STUBDM_QEMU"]
    p = shutil.which("qemu-system-x86_64")
    if p:
        yield p


def find_vfio_user_qemu():
    """(path, None) for a QEMU >= 10.1 with vfio-user-pci, else (None, reason)."""
    reasons = []
    for path in _qemu_candidates():
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            reasons.append("%s: missing" % path)
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
            m = re.search(r"version (\d+)\.(\d+)", out)
            if not m or (int(m.group(1)), int(m.group(2))) < (10, 1):
                reasons.append("%s: %s (need QEMU >= 10.1)" % (path, out.split("\n")[0]))
                continue
            out = subprocess.run([path, "-device", "help"], capture_output=True,
                                 text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            reasons.append("%s: %s" % (path, e))
            continue
        if '"vfio-user-pci"' not in out:
            reasons.append("%s: no vfio-user-pci device" % path)
            continue
        return path, None
    return None, "; ".join(reasons) or "no qemu-system-x86_64"


def run_guest(script, timeout=90.0, qemu=None, sock_dir=None, extra_cmdline=""):
    """Boot the test guest with PciSerial behind vfio-user; run `script`.

    Returns dict(console=str, chardev=bytes, backend, server, boot_s, exit).
    QEMU is killed on timeout and always reaped.
    """
    if qemu is None:
        qemu, reason = find_vfio_user_qemu()
        if qemu is None:
            raise RuntimeError(reason)
    import tempfile
    own_dir = sock_dir is None
    if own_dir:
        sock_dir = tempfile.mkdtemp(prefix="vfu-")
    path = os.path.join(sock_dir, "serial.sock")
    uart, fn, chardev = make_serial()
    backend = PciBackend(fn)
    logs = []
    srv = VfioUserServer(path, backend, log=logs.append)
    backend.attach_server(srv)
    b64 = base64.b64encode(script.encode()).decode()
    dev = json.dumps({"driver": "vfio-user-pci", "socket": {"path": path, "type": "unix"}})
    args = [qemu, "-machine", "pc,accel=tcg,memory-backend=mem", "-m", "512M",
            "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
            "-nographic", "-no-reboot", "-device", dev,
            "-kernel", KERNEL, "-initrd", INITRD,
            "-append", "console=ttyS0 panic=-1 stubdm.run=%s %s" % (b64, extra_cmdline)]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = bytearray()
    exit_at = None
    try:
        deadline = t0 + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("guest did not finish within %.0f s; console:\n%s"
                                   % (timeout, out.decode(errors="replace")[-3000:]))
            fds = srv.filenos() + [proc.stdout.fileno()]
            r, _, _ = select.select(fds, [], [], min(left, 0.5))
            for fd in r:
                if fd == proc.stdout.fileno():
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    out += chunk
                    if exit_at is None and b"STUBDM-EXIT=" in out:
                        exit_at = time.monotonic()
                else:
                    srv.handle_readable(fd)
            else:
                if proc.poll() is None:
                    continue
            # QEMU closed its stdout or exited: drain and stop.
            if proc.poll() is None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        srv.close()
        if own_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
    console = out.decode(errors="replace")
    m = re.search(r"STUBDM-EXIT=(\d+)", console)
    return {"console": console, "chardev": bytes(chardev.data), "backend": backend,
            "server": srv, "uart": uart, "logs": logs, "rc": proc.returncode,
            "boot_s": (exit_at - t0) if exit_at else None,
            "exit": int(m.group(1)) if m else None}


GUEST_SCRIPT = r"""
for d in /sys/bus/pci/devices/*; do
    echo "PCIDEV ${d##*/} $(cat $d/vendor) $(cat $d/device)"
done
cat /sys/bus/pci/devices/*/vendor
dmesg | grep -i ttyS
exec 3<>/dev/ttyS1
echo hello >&3
echo INTERRUPTS-BEGIN
cat /proc/interrupts
echo INTERRUPTS-END
exec 3>&-
"""


@pytest.fixture(scope="module")
def guest_qemu():
    if not (os.path.exists(KERNEL) and os.path.exists(INITRD)):
        pytest.skip("build/guest missing (run python3 build/make_guest.py)")
    qemu, reason = find_vfio_user_qemu()
    if qemu is None:
        pytest.skip("no QEMU >= 10.1 with vfio-user-pci: " + reason)
    return qemu


def test_real_guest_pci_serial(guest_qemu):
    res = run_guest(GUEST_SCRIPT, qemu=guest_qemu)
    console = res["console"]
    assert res["exit"] == 0, console[-3000:]
    devs = re.findall(r"PCIDEV (\S+) 0x([0-9a-f]{4}) 0x([0-9a-f]{4})", console)
    assert ("1b36", "0002") in [(v, d) for _, v, d in devs], console[-3000:]
    assert b"hello" in res["chardev"], res["chardev"]
    irqs = console.split("INTERRUPTS-BEGIN", 1)[1].split("INTERRUPTS-END", 1)[0]
    lines = [ln for ln in irqs.splitlines() if ln.rstrip().endswith("ttyS1")]
    assert lines, irqs
    counts = [int(x) for x in lines[0].split(":", 1)[1].split()
              if x.isdigit()]
    assert sum(counts) > 0, lines[0]
    assert res["server"].stats["irqs"] > 0
    assert not any("internal error" in ln for ln in res["logs"]), res["logs"]
