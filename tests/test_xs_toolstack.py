"""host_sim/toolstack.py: libxl's xenstore layout for an HVM guest with a stub
domain, seen as dom0, the guest and the stub domain would see it."""
import shutil
import tempfile

import pytest

from host_sim import toolstack
from host_sim import xenstored as X
from tests.test_xenstored import Raw

GUEST, STUB, UUID = 5, 6, "12345678-1234-1234-1234-123456789abc"
ARGV = ["-xen-domid", "5", "-no-shutdown", "-nodefaults", "-machine", "xenfv"]


@pytest.fixture
def store():
    try:
        from host_sim import xs
        xs.lib()
    except OSError as e:
        pytest.skip("libxenstore.so.4 missing (Debian's libxenstore4): %s" % e)
    d = tempfile.mkdtemp(prefix="xst")
    dm = X.spawn(rundir=d)
    c = xs.Xs(dm.socket_path)
    paths = toolstack.write_hvm_domain(c, GUEST, "guest", UUID, STUB, dm_argv=ARGV)
    yield dm, c, paths
    c.close()
    dm.stop()
    shutil.rmtree(d, ignore_errors=True)


def test_guest_layout_and_permissions(store):
    dm, c, p = store
    g = "/local/domain/5"
    assert p["guest"] == g and p["guest_vm"] == "/vm/" + UUID
    assert c.read(g + "/vm") == ("/vm/" + UUID).encode()
    assert c.read(g + "/name") == b"guest" and c.read(g + "/domid") == b"5"
    assert c.read("/vm/%s/uuid" % UUID) == UUID.encode()
    assert c.read("/vm/%s/name" % UUID) == b"guest"
    assert c.get_perms(g) == ["n0", "r5"]  # libxl's roperm
    for k in ("control/shutdown", "control/feature-s3", "data", "device/suspend/event-channel"):
        assert c.get_perms("%s/%s" % (g, k)) == ["n5"], k  # rwperm
    assert c.get_perms(g + "/device") == ["n0", "r5"]
    assert c.get_perms("/libxl/5") == ["n0"]
    assert c.read("/libxl/5/type") == b"hvm"
    assert c.read(g + "/control/platform-feature-xs_reset_watches") == b"1"
    assert c.read(g + "/image/device-model-domid") == b"6"
    assert c.is_domain_introduced(GUEST) and c.is_domain_introduced(STUB)


def test_stub_domain_layout_reads_its_argv_and_acts_for_the_guest(store):
    dm, c, p = store
    s = "/local/domain/6"
    assert c.read(s + "/target") == b"5"
    assert c.read(s + "/name") == b"guest-dm"
    assert c.get_perms(p["device_model"]) == ["n6", "r5"]
    assert c.get_perms(p["dm_argv"]) == ["n0", "r6"]
    assert c.read("/libxl/5/dm-version") == b"qemu-xen"
    from host_sim import xs
    stub = xs.Xs(dm.domain_socket_path(STUB))
    keys = stub.directory(p["dm_argv"])
    assert keys == ["%03d" % i for i in range(1, len(ARGV) + 1)]
    assert [stub.read(p["dm_argv"] + "/" + k).decode() for k in keys] == ARGV
    stub.write("device-model/5/state", "running")  # relative to its own home
    assert c.read(p["device_model"] + "/state") == b"running"
    stub.write("/local/domain/5/data/from-stub", "1")  # SET_TARGET: the guest's rights
    guest = xs.Xs(dm.domain_socket_path(GUEST))
    with pytest.raises(xs.XsError) as e:
        guest.read(p["dm_argv"] + "/001")
    assert e.value.name == "EACCES"
    assert guest.read("image/device-model-domid") == b"6"
    with pytest.raises(xs.XsError):
        guest.write("/local/domain/6/target", "0")
    stub.close()
    guest.close()


def test_add_device_both_halves(store):
    dm, c, p = store
    fe, be = toolstack.add_device(c, STUB, GUEST, "vbd", 768, {"params": "/dev/xvda"},
                                  {"virtual-device": "768"})
    assert fe == "/local/domain/5/device/vbd/768"
    assert be == "/local/domain/6/backend/vbd/5/768"
    assert c.get_perms(fe) == ["n5", "r6"] and c.get_perms(fe + "/state") == ["n5", "r6"]
    assert c.get_perms(be) == ["n6", "r5"] and c.get_perms(be + "/params") == ["n6", "r5"]
    assert c.read(fe + "/backend") == be.encode() and c.read(fe + "/backend-id") == b"6"
    assert c.read(be + "/frontend") == fe.encode() and c.read(be + "/frontend-id") == b"5"
    assert c.read(be + "/state") == b"1" and c.read(fe + "/state") == b"1"
    assert c.read("/libxl/5/device/vbd/768/backend") == be.encode()
    from host_sim import xs
    guest, stub = xs.Xs(dm.domain_socket_path(GUEST)), xs.Xs(dm.domain_socket_path(STUB))
    guest.write(fe + "/ring-ref", "8")  # each half writes its own side...
    stub.write(be + "/state", "2")
    assert stub.read(fe + "/ring-ref") == b"8"  # ...and reads the other
    assert guest.read(be + "/state") == b"2"
    with pytest.raises(xs.XsError):
        guest.write(be + "/state", "6")
    # The same call again replaces both halves (libxl removes them first).
    toolstack.add_device(c, STUB, GUEST, "vbd", 768, {"params": "/dev/xvdb"})
    assert c.read(be + "/params") == b"/dev/xvdb"
    with pytest.raises(xs.XsError):
        c.read(fe + "/ring-ref")
    guest.close()
    stub.close()


def test_write_list_writes_nnn_keys():
    try:
        from host_sim import xs
        xs.lib()
    except OSError as e:
        pytest.skip("libxenstore.so.4 missing: %s" % e)
    d = tempfile.mkdtemp(prefix="xst")
    with X.spawn(rundir=d) as dm:
        c = xs.Xs(dm.socket_path)
        toolstack.write_list(c, "/l", ["a", "b"] * 60, perms=["n0", "r3"])
        assert len(c.directory("/l")) == 120
        assert c.read("/l/001") == b"a" and c.read("/l/120") == b"b"
        assert c.get_perms("/l") == ["n0", "r3"]
        raw = Raw(dm.socket_path)
        assert raw.perms("/l/120") == ["n0", "r3"]
        c.close()
    shutil.rmtree(d, ignore_errors=True)
