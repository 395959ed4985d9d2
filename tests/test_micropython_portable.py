"""The device cores under MicroPython give exactly CPython's output.

Each script in tests/portable/ drives stubdm code deterministically and
prints what it sees; tests/mp_runner.py runs it under CPython (the oracle,
PORTABLE_PYTHON.md rule 15) and under build/out/micropython and compares
stdout. Also checks what the stubdm MicroPython build must have (DESIGN.md
9): the EXTRA_FEATURES ROM level with MPZ big ints, and the _xenglue user C
module (stubdm/port_common/modstubdm_hyp.c), whose API must be the one
stubdm/glue_cffi.py gives CPython. Skipped only when the MicroPython binary is not built.
"""
import os

import pytest

from tests import mp_runner

pytestmark = pytest.mark.skipif(not mp_runner.micropython_available(), reason=mp_runner.SKIP_REASON)

PORTABLE = os.path.join(mp_runner.ROOT, "tests", "portable")
SCRIPTS = sorted(f for f in os.listdir(PORTABLE) if f.endswith("_script.py"))


def test_all_scripts_found():
    for name in ("uart_script.py", "i8042_script.py", "pci_script.py", "ioreq_script.py"):
        assert name in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_same_output_as_cpython(script):
    c = mp_runner.compare(os.path.join("tests", "portable", script))
    assert c.same, c.explain()
    assert c.cpython.stdout.strip(), "the script printed nothing"


def _mp(code):
    r = mp_runner.run_micropython_code(code)
    assert r.ok, r.describe()
    return r.stdout.strip()


def test_build_features():
    # EXTRA_FEATURES (bytearray, memoryview, struct) and MPZ (64-bit and larger ints).
    out = _mp(
        "import sys, struct\n"
        "print(sys.implementation.name, sys.implementation.version[:2], sys.implementation._build)\n"
        "print(hex((1 << 64) - 1), (1 << 100) // 3 % 1000)\n"
        "b = bytearray(8); m = memoryview(b); m[2:4] = b'ab'\n"
        "struct.pack_into('<Q', b, 0, 0xFFFFFFFFFFFFFFF0)\n"
        "print(bytes(m[0:8]), struct.unpack('<Q', b)[0])\n"
        "import micropython, asyncio\n"
        "print(micropython.const(5))\n"
    )
    assert out.splitlines() == [
        "micropython (1, 25) stubdm",
        "0xffffffffffffffff %d" % ((1 << 100) // 3 % 1000),
        "b'\\xf0\\xff\\xff\\xff\\xff\\xff\\xff\\xff' %d" % 0xFFFFFFFFFFFFFFF0,
        "5",
    ]


def test_xenglue_module():
    # The glue's module-level API; the handles need host_sim (the end-to-end
    # tests run the device model on MicroPython against it).
    out = _mp(
        "import _xenglue as m\n"
        "print(m.PAGE_SHIFT, m.MIN_BUCKET_SHIFT, m.MAX_BUCKET_SHIFT, m.MAX_RAM_RANGES)\n"
        "print(m.footprint(20, 32) > m.footprint(20, 1) > 0)\n"
        "try:\n"
        "    m.footprint(3, 1)\n"
        "except OSError as e:\n"
        "    print('OSError', e.errno == m.EINVAL)\n"
        "b = bytearray(8)\n"
        "m.atomic_add32(b, 5); m.atomic_add32(memoryview(b)[4:], 0xFFFFFFFF)\n"
        "m.atomic_add32(b, 0xFFFFFFFF)\n"
        "print(bytes(b)); m.barrier()\n"
        "try:\n"
        "    m.atomic_add32(bytearray(2), 1)\n"
        "except ValueError:\n"
        "    print('ValueError')\n"
        "try:\n"
        "    m.Mapcache(None, 20, 4)\n"
        "except TypeError:\n"
        "    print('TypeError')\n"
        "import os\n"
        "try:\n"
        "    m.Xen(1)\n"  # no HOST_SIM_SOCKET: host_sim's library cannot connect
        "except OSError as e:\n"
        "    print('OSError', e.errno)\n"
        "import stubdm.hypervisor as h\n"
        "try:\n"
        "    h.Hypervisor(1)\n"
        "except h.HypervisorError as e:\n"
        "    print(e)\n"
    )
    assert out.splitlines() == [
        "12 12 30 8",
        "True",
        "OSError True",
        "b'\\x04\\x00\\x00\\x00\\xff\\xff\\xff\\xff'",
        "ValueError",
        "TypeError",
        "OSError 2",
        "opening the hypervisor's handles: ENOENT",
    ]


def _api(src):
    """Names defined by a C module's locals/globals tables or a Python module."""
    import re

    return set(re.findall(r"MP_QSTR_(\w+)\), MP_ROM_PTR", src))


def test_glue_api_same_on_both_runtimes():
    # glue_cffi.py must offer every function and method of the C module.
    src = open(os.path.join(mp_runner.ROOT, "stubdm", "port_common", "modstubdm_hyp.c")).read()
    c_names = _api(src)
    pytest.importorskip("stubdm._xenglue", reason="the cffi glue is not built: run scons")
    from stubdm import glue_cffi

    py_names = (set(dir(glue_cffi)) | set(dir(glue_cffi.Xen)) | set(dir(glue_cffi.Mapcache))
                | set(dir(glue_cffi.Xs)))
    assert c_names - py_names == set()
    assert {"Xen", "Mapcache", "Xs", "map_page", "notify", "map", "stats", "share_pages",
            "bind_unbound_port", "check_watch", "transaction_end"} <= c_names
