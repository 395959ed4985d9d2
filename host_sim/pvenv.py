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

    def add_display(self, vnc):
        """The stub domain's vfb 0 and vkbd 0, as libxl adds them when the guest has
        vnc=1 (backends in dom0: the frame and the input of a VNC server on `vnc`,
        HOST:DISPLAY or unix:PATH). Returns the VncServer."""
        from host_sim import vnc as vncmod
        from host_sim.backends.vfb import VfbBack
        from host_sim.backends.vkbd import VkbdBack

        kind, addr = vncmod.parse_address(vnc)
        listen = addr[0] if kind == "tcp" else addr
        disp = str(addr[1] - 5900) if kind == "tcp" else "0"
        # libxl__device_vfb_add's backend keys (libxl_vfb.c).
        vfb = self.add_device("vfb", 0, VfbBack, backend_keys={
            "vnc": "1", "vnclisten": listen, "vncdisplay": disp, "vncunused": "0",
            "sdl": "0", "opengl": "0"})
        vkbd = self.add_device("vkbd", 0, VkbdBack)
        self.vnc = vncmod.VncServer(self.hv, vfb, vkbd, vnc)
        return self.vnc

    def close(self):
        if getattr(self, "vnc", None) is not None:
            self.vnc.close()
            self.vnc = None
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
