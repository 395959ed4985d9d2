"""The PV side of a run: host_sim's xenstored with libxl's layout for the guest and
its stub domain, and the backends (acting as dom0) of the stub domain's PV devices.

Shared by the scripted Session and the QEMU engine: the device model runs as the
stub domain (its libsim connection acts as stubdom_domid; XENSTORED_PATH in .env
points its libxenstore at that domain's own socket).
"""
import os

from host_sim import toolstack, xenstored
from host_sim.xs import Xs

GUEST_DOMID = 1
STUBDOM_DOMID = 2
GUEST_UUID = "00000000-0000-4000-8000-000000000001"


class PvEnv:
    def __init__(self, rundir, stubdom_domid=STUBDOM_DOMID, guest_domid=GUEST_DOMID,
                 name="guest", dm_argv=()):
        self.stubdom_domid = stubdom_domid
        self.guest_domid = guest_domid
        self.backends = []
        self.hv = None
        self.xs = None
        self.xenstored = xenstored.spawn(rundir=os.path.join(rundir, "xenstore"))
        try:
            self.xs = Xs(self.xenstored.socket_path)
            self.paths = toolstack.write_hvm_domain(self.xs, guest_domid, name, GUEST_UUID,
                                                    stubdom_domid, dm_argv=dm_argv)
        except Exception:
            self.close()
            raise
        self.env = {"XENSTORED_PATH": self.xenstored.domain_socket_path(stubdom_domid)}

    def attach(self, hv):
        """The hypervisor the backends map grants and bind event channels through."""
        self.hv = hv

    def add_device(self, devtype, devid, cls, backend_keys=None, frontend_keys=None, **kw):
        """Both halves of a PV device of the stub domain, and its backend, started."""
        toolstack.add_device(self.xs, 0, self.stubdom_domid, devtype, devid, backend_keys,
                             frontend_keys)
        be = cls(self.hv, self.xenstored.socket_path, self.stubdom_domid, str(devid), **kw)
        self.backends.append(be)
        be.start()
        return be

    def add_devices(self, specs):
        """(type, devid, class[, {keyword arguments}]) each, as pv_devices lists them."""
        for dev in specs:
            self.add_device(*dev[:3], **(dev[3] if len(dev) > 3 else {}))

    def close(self):
        for be in self.backends:
            try:
                be.destroy()
            except Exception:
                pass
        self.backends = []
        if self.xs is not None:
            self.xs.close()
            self.xs = None
        if self.xenstored is not None:
            self.xenstored.stop()
            self.xenstored = None
