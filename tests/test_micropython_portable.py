"""The device cores under MicroPython give exactly CPython's output.

Each script in tests/portable/ drives stubdm code deterministically and
prints what it sees; tests/mp_runner.py runs it under CPython (the oracle,
PORTABLE_PYTHON.md rule 15) and under build/out/micropython and compares
stdout. Also checks what the stubdm MicroPython build must have (DESIGN.md
9): the EXTRA_FEATURES ROM level with MPZ big ints, and the _stubdm_mapcache
user C module. Skipped only when the MicroPython binary is not built.
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


def test_mapcache_module():
    # The mapcache C core is linked in; with no foreign-memory handle the
    # weak xenforeignmemory_map stand-in answers ENOSYS.
    out = _mp(
        "import _stubdm_mapcache as m\n"
        "print(m.version(), m.PAGE_SHIFT, m.MIN_BUCKET_SHIFT, m.MAX_BUCKET_SHIFT, m.MAX_RAM_RANGES)\n"
        "print(m.map_errno(0x1000, 16) == m.ENOSYS)\n"
        "print(m.map_errno(1 << 33, 16) == m.EFAULT)\n"  # outside the declared RAM
        "print(m.map_errno(0xFFFF0, 0x20) == m.EINVAL)\n"  # crosses a 1 MiB bucket
        "print(m.map_errno(0x1000, 0) == m.EINVAL)\n"
        "print(m.footprint(20, 32) > m.footprint(20, 1) > 0)\n"
        "try:\n"
        "    m.footprint(3, 1)\n"
        "except OSError as e:\n"
        "    print('OSError', e.errno == m.EINVAL)\n"
    )
    assert out.splitlines() == [
        "1 12 12 30 8",
        "True",
        "True",
        "True",
        "True",
        "True",
        "OSError True",
    ]
