import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402

# The interpreters the device model runs on in end-to-end tests
# (host_sim.scripted.RUNTIMES). MicroPython's is build/out/micropython.
DM_RUNTIMES = ("cpython", "micropython")
MICROPYTHON = os.path.join(ROOT, "build", "out", "micropython")
MICROPYTHON_MISSING = "build/out/micropython is not built: run scons"


def skip_unless_runtime(runtime):
    if runtime == "micropython" and not os.access(MICROPYTHON, os.X_OK):
        pytest.skip(MICROPYTHON_MISSING)


@pytest.fixture(scope="module", params=DM_RUNTIMES)
def dm_runtime(request):
    """Each runtime in turn (module scope: a module's shared sessions follow it)."""
    skip_unless_runtime(request.param)
    return request.param


def pytest_sessionfinish(session, exitstatus):
    # CI installs everything the tests need (.ci/run runs build/setup.sh), so
    # there a skip means a missing build or tool, not a lacking machine: fail.
    if not os.environ.get("CI") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.ensure_newline()
        reporter.write_line("CI: %d tests skipped; in CI nothing may skip:" % len(skipped),
                            red=True)
        for r in skipped[:10]:
            reporter.write_line("  %s: %s" % (r.nodeid, r.longrepr[-1] if r.longrepr else ""))
        session.exitstatus = 1
