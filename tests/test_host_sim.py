"""host_sim's hypervisor: its wire protocol with libsim, and hostile peers."""
import os
import re
import socket
import struct

import pytest

from host_sim import proto
from host_sim.hypervisor import SimHypervisor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_protocol_numbers_match_the_c_header():
    text = open(os.path.join(ROOT, "host_sim", "libsim", "hostsim_proto.h")).read()
    ops = dict((n, int(v)) for n, v in re.findall(r"HS_OP_(\w+)\s*=\s*(\d+)", text))
    assert ops, "no ops found in hostsim_proto.h"
    for name, value in ops.items():
        assert getattr(proto, name) == value, name
        assert value in proto.REQUEST_FORMATS, name
    assert len(ops) == len(proto.REQUEST_FORMATS)
    assert '"%s"' % proto.SOCKET_ENV in text


@pytest.fixture
def hv(tmp_path):
    h = SimHypervisor(str(tmp_path / "hv.sock"), ram_mib=4)
    yield h
    h.close()


def _call(hv, s, op, payload):
    s.sendall(struct.pack("<II", op, len(payload)) + payload)
    hv.pump(1.0)
    ret, n = struct.unpack("<iI", s.recv(8))
    body = s.recv(n) if n else b""
    return ret, body


def test_server_lifecycle_over_the_wire(hv):
    s = socket.socket(socket.AF_UNIX)
    s.connect(hv.sock_path)
    hv.pump(1.0)
    sid, _ = _call(hv, s, proto.CREATE_IOREQ_SERVER, struct.pack("<Hi", hv.domid, 2))
    assert sid == 0
    ret, body = _call(hv, s, proto.GET_IOREQ_SERVER_INFO, struct.pack("<HH", hv.domid, sid))
    gfn, buf_gfn, port = struct.unpack("<QQI", body)
    assert ret == 0 and gfn != buf_gfn and port
    com1_range = struct.pack("<HHIQQ", hv.domid, sid, 0, 0x3F8, 0x3FF)
    ret, _ = _call(hv, s, proto.MAP_IO_RANGE, com1_range)
    assert ret == 0
    ret, _ = _call(hv, s, proto.MAP_IO_RANGE, com1_range)
    assert ret < 0  # the same range twice
    ret, _ = _call(hv, s, proto.SET_IOREQ_SERVER_STATE, struct.pack("<HHI", hv.domid, sid, 1))
    assert hv.server_for(0, 0x3FA) is hv.servers[sid]
    # Another domain's server does not exist for this hypervisor.
    ret, _ = _call(hv, s, proto.GET_IOREQ_SERVER_INFO, struct.pack("<HH", hv.domid + 1, sid))
    assert ret < 0
    s.close()


@pytest.mark.parametrize(
    "msg",
    [
        struct.pack("<II", 999, 0),  # unknown op
        struct.pack("<II", proto.MAP_IO_RANGE, 3) + b"abc",  # truncated payload
        struct.pack("<II", proto.SET_ISA_IRQ_LEVEL, 7) + struct.pack("<HBI", 1, 200, 1),
        struct.pack("<II", proto.EVTCHN_BIND_INTERDOMAIN, 12) + struct.pack("<III", 77, 1, 5),
    ],
)
def test_bad_requests_get_an_error_and_the_hypervisor_lives_on(hv, msg):
    s = socket.socket(socket.AF_UNIX)
    s.connect(hv.sock_path)
    hv.pump(1.0)
    s.sendall(msg)
    hv.pump(1.0)
    ret, _ = struct.unpack("<iI", s.recv(8))
    assert ret < 0
    sid, _ = _call(hv, s, proto.CREATE_IOREQ_SERVER, struct.pack("<Hi", hv.domid, 0))
    assert sid >= 0
    s.close()


def test_oversized_request_closes_the_connection(hv):
    s = socket.socket(socket.AF_UNIX)
    s.connect(hv.sock_path)
    hv.pump(1.0)
    s.sendall(struct.pack("<II", proto.MAP_IO_RANGE, 1 << 30))
    hv.pump(1.0)
    assert s.recv(8) == b""
    assert hv.conns == []
