"""Every run-time module of stubdm imports on MicroPython.

Fails when a module under stubdm/ imports something MicroPython 1.25 lacks
(PORTABLE_PYTHON.md rule 6) or uses syntax it rejects: each one is imported
by build/out/micropython in a fresh process, and the failure shows the
MicroPython traceback (file:line and error). Not checked: the CPython side of
the glue (stubdm/glue_cffi.py, built on cffi; stubdm/hypervisor.py and
stubdm/memory.py are checked: on MicroPython they use the _xenglue module),
stubdm/port_minios/ (the MicroPython port's own code) and stubdm/__main__.py
(importing it runs the program; stubdm.main, which it calls, is checked).
Skipped only when the MicroPython binary is not built.
"""
import os

import pytest

from tests import mp_runner

STUBDM = os.path.join(mp_runner.ROOT, "stubdm")
EXCLUDED_FILES = ("glue_cffi.py", "__main__.py")
EXCLUDED_DIRS = ("port_minios", "__pycache__")


def stubdm_modules():
    mods = []
    for dirpath, dirnames, filenames in os.walk(STUBDM):
        rel = os.path.relpath(dirpath, mp_runner.ROOT)
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        if "__init__.py" not in filenames:
            continue
        pkg = rel.replace(os.sep, ".")
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            if rel == "stubdm" and f in EXCLUDED_FILES:
                continue
            mods.append(pkg if f == "__init__.py" else pkg + "." + f[:-3])
    return sorted(mods)


MODULES = stubdm_modules()


def test_modules_found():
    for m in ("stubdm", "stubdm.ioreq", "stubdm.pci", "stubdm.devices.uart16550"):
        assert m in MODULES
    assert "stubdm.hypervisor" in MODULES and "stubdm.memory" in MODULES
    assert "stubdm.glue_cffi" not in MODULES


@pytest.mark.skipif(not mp_runner.micropython_available(), reason=mp_runner.SKIP_REASON)
@pytest.mark.parametrize("module", MODULES)
def test_imports_on_micropython(module):
    r = mp_runner.run_micropython_code("import " + module)
    assert r.ok, "%s does not import on MicroPython: %s" % (module, r.describe())
