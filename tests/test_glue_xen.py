"""The dom0 build: the glue linked with Debian's real Xen libraries (libxen-dev), not
host_sim's, every symbol it takes from them resolved (with its version) by those
libraries; and on a host without Xen, the device model says so in one line."""
import os
import re
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE_XEN = os.path.join(ROOT, "stubdm", "_xenglue_xen" + sysconfig.get_config_var("EXT_SUFFIX"))
STUBDM = os.path.join(os.path.dirname(sys.executable), "stubdm")

# The libraries the glue must reach Xen through (libxenctrl is not among them: the
# glue calls nothing of it).
XEN_LIBS = ("libxendevicemodel.so.1", "libxenforeignmemory.so.1", "libxenevtchn.so.1",
            "libxengnttab.so.1", "libxenstore.so.4")


@pytest.fixture(scope="module")
def glue():
    if not os.path.exists(GLUE_XEN):
        pytest.fail("%s is not built: run scons (glue-xen)" % os.path.relpath(GLUE_XEN, ROOT))
    return GLUE_XEN


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def test_links_debians_xen_libraries(glue):
    ldd = _run(["ldd", "-r", glue])
    assert ldd.returncode == 0, ldd.stderr
    found = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd.stdout, re.M))
    for lib in XEN_LIBS:
        assert lib in found, "%s is not linked: %s" % (lib, ldd.stdout)
        # Debian's copy in the system's library directories, not a drop-in.
        assert re.match(r"^(/usr)?/lib/x86_64-linux-gnu/", found[lib]), found[lib]
    assert not [ln for ln in ldd.stdout.splitlines() if "not found" in ln], ldd.stdout
    assert "hostsim" not in ldd.stdout
    # ldd -r resolves every relocation: what stays undefined may only be CPython's
    # (an extension module takes those from the interpreter that loads it).
    out = ldd.stdout + ldd.stderr
    undefined = re.findall(r"undefined symbol: (\S+)", out)
    assert [s for s in undefined if not re.match(r"_?Py", s)] == [], out
    assert "version" not in "\n".join(ln for ln in out.splitlines() if "=>" not in ln), out


def _symbols(path, defined):
    nm = _run(["nm", "-D", "--defined-only" if defined else "--undefined-only", path])
    assert nm.returncode == 0, nm.stderr
    return set(ln.split()[-1] for ln in nm.stdout.splitlines() if ln.strip())


def test_every_xen_symbol_resolves_with_its_version(glue):
    wanted = sorted(s for s in _symbols(glue, False) if re.match(r"(xen|xs_)\w+@", s))
    # The glue's API: ioreq servers, foreign memory, event channels, grant sharing, xenstore.
    names = [s.split("@")[0] for s in wanted]
    for n in ("xendevicemodel_create_ioreq_server", "xenforeignmemory_map",
              "xenevtchn_bind_interdomain", "xengntshr_share_pages", "xs_read"):
        assert n in names
    ldd = _run(["ldd", glue])
    paths = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd.stdout, re.M))
    have = set()
    for lib in XEN_LIBS:
        have |= _symbols(paths[lib], True)
    # nm writes a default version as NAME@@VERS, the glue's reference as NAME@VERS.
    have |= set(s.replace("@@", "@") for s in have)
    assert [s for s in wanted if s not in have] == []


def test_glue_xen_imports():
    r = _run([sys.executable, "-c", "from stubdm import glue_cffi as g; "
              "print(g.VARIANT, g.lib.xendevicemodel_open is not None)"],
             env=dict(os.environ, STUBDM_GLUE="xen"), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["xen", "True"]


@pytest.mark.skipif(any(os.path.exists(p) for p in ("/dev/xen/privcmd", "/proc/xen/privcmd")),
                    reason="this host runs on Xen: the no-hypervisor case can't be seen here")
def test_no_hypervisor_one_line(glue):
    r = _run([STUBDM, "-xen-domid", "1"], env=dict(os.environ, STUBDM_GLUE="xen"), cwd=ROOT)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("stubdm: no Xen hypervisor here")
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_bad_glue_choice_is_named():
    r = _run([STUBDM, "-xen-domid", "1"], env=dict(os.environ, STUBDM_GLUE="xem"), cwd=ROOT)
    assert r.returncode == 1
    assert "STUBDM_GLUE must be sim or xen" in r.stderr and "Traceback" not in r.stderr
