"""The PV framebuffer names frame numbers, not grants (fbif.h): fbfront writes the
standard keys ("page-ref" = the frame of its xenfb_page, pd[] = frames of its own
memory), and host_sim's vfb backend maps them as dom0 does, by foreign mapping,
refusing a frame outside the stub domain's memory as Xen refuses it. The keyboard
(kbdif.h) keeps its grant, "page-gref"."""
import errno
import mmap
import os
import struct
import subprocess
import sys

import pytest

from host_sim.grants import GrantError, GrantTables
from host_sim.scripted import MICROPYTHON, Session
from host_sim.xs import XsError
from stubdm import pv_abi as A

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "tests", "harness", "display_dm.py")
FB = "/local/domain/2/device/vfb/0"
KBD = "/local/domain/2/device/vkbd/0"


def _rd(s, path):
    try:
        return s.xs.read(path).decode()
    except XsError:
        return None


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_fbfront_writes_the_standard_keys_and_frames(runtime):
    if runtime == "micropython" and not os.access(MICROPYTHON, os.X_OK):
        pytest.skip("build/out/micropython is not built: run scons")
    s = Session(runtime=runtime, vnc="unix:/tmp/fbframes-%d.sock" % os.getpid(),
                dm_script=HARNESS)
    try:
        s.hv.pump_until(lambda: _rd(s, FB + "/state") == "4" and _rd(s, KBD + "/state") == "4",
                        "the vfb and vkbd handshakes")
        mem = s.hv.grants.memory_of(2)
        ref = _rd(s, FB + "/page-ref")
        assert ref is not None and ref.isdigit() and int(ref) < mem.npages
        assert _rd(s, FB + "/page-gref") is None  # a kbdif.h key, not fbif.h's
        assert _rd(s, FB + "/protocol") == "x86_64-abi"
        assert _rd(s, FB + "/feature-update") == "1"
        assert _rd(s, FB + "/event-channel").isdigit()
        # Frames of the stub domain's own memory, granted to nobody.
        granted = set(g.page for (d, _r), g in s.hv.grants.grants.items() if d == 2)
        assert int(ref) not in granted
        # The page at that frame is the xenfb_page the backend took its geometry from.
        page = mmap.mmap(mem.fd, 4096, offset=int(ref) * 4096, prot=mmap.PROT_READ)
        head = struct.unpack_from(A.XENFB_PAGE_HEAD_FMT, page, 0)
        vfb = s.vnc.vfb
        assert (head[4], head[5], head[6]) == (vfb.width, vfb.height, vfb.stride)
        npages = (head[7] + 4095) // 4096
        ndirs = (npages * 8 + 4095) // 4096
        pd = struct.unpack_from("<%dQ" % ndirs, page, A.XENFB_PAGE_OFF_PD)
        frames = []
        for f in pd:
            assert f < mem.npages and f not in granted
            d = mmap.mmap(mem.fd, 4096, offset=f * 4096, prot=mmap.PROT_READ)
            frames += struct.unpack_from("<512Q", d, 0)
        frames = frames[:npages]
        assert len(set(frames)) == npages and max(frames) < mem.npages
        assert not granted & set(frames)
        assert set(frames) <= set(mem.held)  # the backend maps them, foreign
        # The keyboard keeps kbdif.h's grant.
        gref = _rd(s, KBD + "/page-gref")
        assert gref is not None and (2, int(gref)) in s.hv.grants.grants
        assert s.hv.grants.grants[(2, int(gref))].grantee == 0
    finally:
        s.close()


def _frontend(s, page_ref):
    """A hostile frontend (the test) whose page-ref is page_ref; the backend's answer."""
    from host_sim.backends.vfb import VfbBack

    class Target(VfbBack):
        TYPE = "test-vfb"  # not a type the device model drives: we are its frontend

    be = s.add_pv_device("test-vfb", 0, Target)
    fe = "/local/domain/2/device/test-vfb/0"
    port = s.hv.evtchn.alloc_unbound(2, 0)
    for k, v in (("page-ref", page_ref), ("event-channel", port), ("state", 3)):
        s.xs.write(fe + "/" + k, str(v))
    s.hv.pump_until(lambda: be.state in (4, 5), "the backend's answer")
    return be


@pytest.mark.parametrize("frame,why", [
    (4096, "just past the stub domain's 4096 pages"),
    (1 << 40, "far outside"),
    ((1 << 64) - 1, "the largest xen_pfn_t"),
])
def test_vfb_backend_refuses_a_frame_outside_the_stub_domains_memory(frame, why):
    with Session(xenstore=True) as s:
        assert s.hv.grants.memory_of(2).npages == 4096
        refused = s.hv.grants.stats["refused"]
        be = _frontend(s, frame)
        assert be.state == 5, why  # Closing: never connected
        assert be.page_map is None and be.fb is None
        assert s.hv.grants.stats["refused"] == refused + 1
        assert not s.hv.grants.memory_of(2).held


def test_vfb_backend_maps_a_frame_inside():
    """The same frontend with its page inside its memory connects (the refusal above
    is the range, not the path)."""
    with Session(xenstore=True) as s:
        g = s.hv.grants
        ppage, dpage = g.own_alloc(2, 2)
        fb = g.own_alloc(2, 4)
        fd = g.memory_of(2).fd
        page = mmap.mmap(fd, 4096, offset=ppage * 4096)
        struct.pack_into(A.XENFB_PAGE_HEAD_FMT, page, 0, 0, 0, 0, 0, 64, 64, 256, 16384, 32)
        struct.pack_into("<Q", page, A.XENFB_PAGE_OFF_PD, dpage)
        d = mmap.mmap(fd, 4096, offset=dpage * 4096)
        struct.pack_into("<4Q", d, 0, *fb)
        os.pwrite(fd, b"\x11\x22\x33\x00" * 64, fb[0] * 4096)
        be = _frontend(s, ppage)
        assert be.state == 4
        assert be.rect(0, 0, 2, 1) == b"\x11\x22\x33\x00" * 2


def test_foreign_mapping_is_as_strict_as_xen():
    g = GrantTables(pages_per_domain=16)
    try:
        frames = g.own_alloc(2, 2)
        with pytest.raises(GrantError) as e:
            g.map_foreign(3, 2, frames)  # no privilege
        assert e.value.errno == errno.EPERM
        for bad in ([16], [-1], [frames[0], 16], ["0"]):
            with pytest.raises(GrantError) as e:
                g.map_foreign(0, 2, bad)
            assert e.value.errno == errno.EINVAL, bad
        m = g.map_foreign(0, 2, frames, writable=False)
        with pytest.raises(TypeError):
            m.mem[0] = 1  # read-only as asked
        os.pwrite(g.memory_of(2).fd, b"hi", frames[1] * 4096)
        assert bytes(m.mem[4096:4098]) == b"hi"
        # Freed while mapped: not handed out again (and zeroed) until unmapped.
        g.own_free(2, frames)
        again = g.own_alloc(2, 14)
        assert not set(again) & set(frames)
        with pytest.raises(GrantError):
            g.own_alloc(2, 1)  # the two held frames are still out
        m.unmap()
        assert sorted(g.own_alloc(2, 2)) == sorted(frames)
    finally:
        g.close()


def test_dom0_glue_says_frames_are_unsupported():
    """Xen's own libraries give a dom0 process no frame numbers: a clear error."""
    code = ("import errno\nfrom stubdm import glue_cffi as g\nx = object.__new__(g.Xen)\n"
            "try:\n    x.own_pages(1)\nexcept OSError as e:\n"
            "    print(e.errno == errno.ENOSYS, e.strerror)\n")
    env = dict(os.environ, STUBDM_GLUE="xen")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("True ") and "dom0" in r.stdout
