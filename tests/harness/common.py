# What both device-model harnesses share: stubdm's own DeviceModel, run from the
# command line as stubdm runs, with a test driver attached to each frontend of one
# type as the bus creates it. Portable (CPython and MicroPython).
import sys

from stubdm import log
from stubdm import main as M


def run_with_drivers(devtype, make_driver):
    """Run the device model; make_driver(frontend) for each `devtype` frontend."""
    from stubdm.frontends import xenbus

    opts = M.parse_args(sys.argv[1:])
    log.verbose = opts["verbose"]
    attached = []
    orig = xenbus.FrontendBus._scan

    # The bus creates frontends as their nodes appear: a driver for each.
    def scan(bus, path):
        orig(bus, path)
        for key in bus.devices:
            fe = bus.devices[key]
            if key[0] == devtype and fe not in attached:
                attached.append(fe)
                make_driver(fe)
    xenbus.FrontendBus._scan = scan
    return M.DeviceModel(opts).run()
