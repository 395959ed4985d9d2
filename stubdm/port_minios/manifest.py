# Frozen into stubdm's MicroPython port: the device model package (the ioreq
# loop, the machine, the devices, the frontends) and nothing else: no
# host_sim, no tests, no build scripts. Run by MicroPython's makemanifest.py,
# which executes this file in this folder.
import os

_root = os.path.abspath(os.path.join(os.getcwd(), "..", ".."))
# CPython-only modules: the cffi side of the C glue (on MicroPython the user
# C module _xenglue stands in for it).
_cpython_only = ("stubdm/glue_cffi.py",)
for _dir, _subdirs, _files in os.walk(os.path.join(_root, "stubdm")):
    # Not Python packages of the device model: C sources and this port.
    _subdirs[:] = sorted(
        d for d in _subdirs if d not in ("__pycache__", "port_common", "port_minios", "mapcache")
    )
    for _f in sorted(_files):
        _rel = os.path.relpath(os.path.join(_dir, _f), _root)
        if _f.endswith(".py") and _rel not in _cpython_only:
            module(_rel, base_path=_root, opt=1)
# The VGA's font (build/make_font.py, scons vgafont): the port has no files to read.
_pyfont = os.path.join(_root, "build", "out", "pyfont")
if os.path.exists(os.path.join(_pyfont, "stubdm_vgafont.py")):
    module("stubdm_vgafont.py", base_path=_pyfont, opt=1)
