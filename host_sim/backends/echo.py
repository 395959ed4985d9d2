"""host_sim's stubdm-echo backend (the protocol: stubdm/pv_echo.py).

Maps each data page the frontend names once and keeps the mapping (the
frontend grants its pages once and reuses them), applies the advertised
transform to the bytes asked for, in place, and answers. A request naming
a grant it may not map, or bytes past its page, gets STATUS_ERROR.
"""
import struct

from host_sim.backends.base import BACKEND_DOMID, Backend
from host_sim.grants import PAGE, GrantError
from stubdm import pv_echo

_XOR = bytes(b ^ pv_echo.XOR_BYTE for b in range(256))
MAX_MAPPED = 64  # data pages kept mapped per device


class EchoBackend(Backend):
    TYPE = pv_echo.TYPE
    REQ_SIZE = pv_echo.REQ_SIZE
    RSP_SIZE = pv_echo.RSP_SIZE

    def __init__(self, hv, xs_socket, frontend_domid, devid, transform="xor", log=None):
        super().__init__(hv, xs_socket, frontend_domid, devid, log=log)
        self.transform = transform
        self.maps = {}  # grant ref -> Mapping
        self.errors = 0

    def features(self):
        return {"feature-transform": self.transform}

    def disconnect(self):
        for m in self.maps.values():
            m.unmap()
        self.maps = {}

    def _page(self, ref):
        m = self.maps.get(ref)
        if m is None:
            if len(self.maps) >= MAX_MAPPED:
                return None
            m = self.hv.grants.map(BACKEND_DOMID, self.frontend_domid, ref)
            self.maps[ref] = m
        return m.mem

    def serve(self):
        ring = self.ring
        while ring is not None:
            while True:
                req = ring.get_request()
                if req is None:
                    break
                self.stats["requests"] += 1
                rid, ref, off, length = struct.unpack(pv_echo.REQ_FORMAT, req)
                status = pv_echo.STATUS_OK
                try:
                    mem = self._page(ref)
                except GrantError as e:
                    self.log("%s: request %d: %s" % (self.name, rid, e))
                    mem = None
                if mem is None or off + length > PAGE:
                    status = pv_echo.STATUS_ERROR
                    self.errors += 1
                    length = 0
                elif self.transform == "xor":
                    mem[off:off + length] = bytes(mem[off:off + length]).translate(_XOR)
                rsp = ring.new_response()
                struct.pack_into(pv_echo.RSP_FORMAT, rsp, 0, rid, status, 0, length)
            if ring.push_responses():
                self.notify()
            if not ring.final_check_for_requests():
                break
