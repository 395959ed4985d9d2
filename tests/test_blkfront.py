"""blkfront in the device model against host_sim's blkback, over the real PV plumbing.

The disk operations come from tests/harness/blkfront_dm.py: stubdm's own DeviceModel
with a driver that uses blkfront exactly as a storage controller does (stubdm/block.py),
on CPython and MicroPython (the port's frozen code is covered when a controller uses it).
"""
import os
import signal
import struct

import pytest

from host_sim.backends.blkback import BlkBack, vbd_device
from host_sim.scripted import MICROPYTHON, Session
from host_sim.xs import XsError
from stubdm import pv_abi as A

HARNESS = os.path.join(os.path.dirname(__file__), "harness", "blkfront_dm.py")
RUNTIMES = ("cpython", "micropython")
FE = "/local/domain/2/device/vbd/51712"
BIG = (1 << 28) + 5


def pattern(seed, n):
    base = bytes((seed * 7 + i) & 0xFF for i in range(256))
    return base * (n // 256)


def _rd(s, path):
    try:
        return s.xs.read(path).decode()
    except XsError:
        return None


def session(runtime, dev):
    if runtime == "micropython" and not os.access(MICROPYTHON, os.X_OK):
        pytest.skip("build/out/micropython is not built: run scons")
    s = Session(runtime=runtime, pv_devices=[dev], dm_script=HARNESS)
    try:
        be = s.backends[0]
        s.hv.pump_until(lambda: be.state == 4 and _rd(s, FE + "/state") == "4",
                        "the vbd handshake")
    except Exception:
        s.close()
        raise
    return s


def run(s, what, timeout=30):
    s.xs.write(FE + "/test-go", what)
    s.hv.pump_until(lambda: _rd(s, FE + "/test-result") is not None, "the disk test",
                    timeout=timeout)
    r = _rd(s, FE + "/test-result")
    s.xs.rm(FE + "/test-result")
    return r


@pytest.fixture
def sparse(tmp_path):
    img = str(tmp_path / "disk.img")
    with open(img, "wb") as f:
        f.truncate(200 << 30)  # sparse, past LBA28's 128 GiB
    return img


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_reads_writes_flushes_land_in_the_image(runtime, sparse):
    s = session(runtime, vbd_device(sparse))
    try:
        r = run(s, "rw")
        assert r.startswith("ok"), r
        be = s.backends[0]
        assert int(r.split("indirect=")[1]) >= 1  # big transfers use indirect descriptors
        assert be.ring_page_order == 2 and be.persistent
        assert be.stats["flushes"] >= 2 and be.stats["errors"] == 0
        maps = s.hv.grants.stats["maps"]
        assert run(s, "rw").startswith("ok")
        # Persistent grants: a second run maps nothing new.
        assert s.hv.grants.stats["maps"] == maps
        # What the guest flushed is on disk, whoever dies now.
        s.proc.send_signal(signal.SIGKILL)
    finally:
        s.close()
    large = 1024 * 1024 + 4096 if runtime == "cpython" else 64 * 1024 + 4096
    with open(sparse, "rb") as f:
        f.seek(8 * 512)
        assert f.read(large) == pattern(1, large)
        f.seek(4096 * 512)
        assert f.read(16384) == pattern(10, 16384)
        f.seek(BIG * 512)
        assert f.read(8192) == pattern(4, 8192)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_read_only_disk(runtime, tmp_path):
    img = str(tmp_path / "ro.img")
    data = os.urandom(64 * 512)
    with open(img, "wb") as f:
        f.write(data)
    s = session(runtime, vbd_device(img, readonly=True))
    try:
        assert run(s, "ro").startswith("ok")
        assert _rd(s, FE + "/test-data") == data[16 * 512:16 * 512 + 32].hex()
        assert _rd(s, s.backends[0].path + "/info") == str(A.VDISK_READONLY)
    finally:
        s.close()
    assert open(img, "rb").read() == data


class PlainBack(BlkBack):
    """A backend with nothing but the basics: one-page ring, 11 segments, no persistence."""

    MAX_RING_PAGE_ORDER = 0

    def features(self):
        return {}


def test_basic_backend_gets_basic_requests(sparse):
    s = session("cpython", (*vbd_device(sparse)[:2], PlainBack, vbd_device(sparse)[3]))
    try:
        r = run(s, "rw")
        assert r.startswith("ok") and r.endswith("indirect=0"), r
        be = s.backends[0]
        assert be.ring_page_order == 0 and not be.persistent and not be.pgrants
        # 1 MiB + 4 KiB in 11-page requests: never one 40 KiB chunk at a time, but 24 of them.
        assert int(r.split("requests=")[1].split()[0]) >= 24
        # No cache advertised (neither flush-cache nor barrier): a flush completes at once.
        assert be.stats["flushes"] == 0
    finally:
        s.close()


class FailingBack(BlkBack):
    """Every write fails on the backend's side."""

    def _rw(self, write, sector, segs):
        if write:
            raise OSError(5, "injected")
        return super()._rw(write, sector, segs)


def test_backend_error_is_an_error_not_a_success(sparse):
    dev = vbd_device(sparse)
    s = session("cpython", (dev[0], dev[1], FailingBack, dev[3]))
    try:
        r = run(s, "rw")
        assert "write: 5, wanted 0" in r  # EIO to the controller
        assert "data differs" in r  # and the data was never claimed written
    finally:
        s.close()


class LyingBack(BlkBack):
    """Answers every request with an id it never got."""

    def serve(self):
        ring = self.ring
        while True:
            req = ring.get_request()
            if req is None:
                break
            rid = struct.unpack_from("<Q", req, A.BLKIF_REQ_OFF_ID)[0]
            struct.pack_into(A.BLKIF_RSP_FMT, ring.new_response(), 0, rid + 1000, 0, 0)
        if ring.push_responses():
            self.notify()


def test_responses_to_unknown_requests_are_refused(sparse):
    dev = vbd_device(sparse)
    s = session("cpython", (dev[0], dev[1], LyingBack, dev[3]))
    try:
        s.xs.write(FE + "/test-go", "rw")
        s.hv.pump_until(lambda: "not in flight" in s.dm_messages(), "the refusal")
        assert _rd(s, FE + "/test-result") is None  # nothing was reported done
        assert s.guest.inb(0x3FD) == 0x60  # the device model goes on
    finally:
        s.close()


def test_backend_gone_fails_what_was_in_flight(sparse):
    dev = vbd_device(sparse)

    class Stalling(BlkBack):
        def serve(self):
            pass  # takes requests, never answers

    s = session("cpython", (dev[0], dev[1], Stalling, dev[3]))
    try:
        s.xs.write(FE + "/test-go", "rw")
        s.hv.pump(0.3)
        s.backends[0].close()  # the toolstack pulls the disk
        s.hv.pump_until(lambda: _rd(s, FE + "/test-result") is not None, "the result")
        assert "write: 5" in _rd(s, FE + "/test-result")  # EIO, not silence
        s.hv.pump_until(lambda: _rd(s, FE + "/state") == "6", "frontend Closed")
    finally:
        s.close()
