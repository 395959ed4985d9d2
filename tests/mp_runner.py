"""Run a Python script under stubdm's MicroPython and under CPython, and
compare their stdout: CPython's output is the expected output
(PORTABLE_PYTHON.md rule 15; MicroPython's own test suite works this way).

The MicroPython binary is build/out/micropython (`scons micropython`). Both
interpreters import stubdm from the repository root: MicroPython through
MICROPYPATH (".frozen" first, so frozen modules stay reachable), CPython
through sys.path. Each puts the script's own folder first on its path, so
scripts can import helpers next to them.

Used by tests/test_micropython_portable.py and tests/test_portability_imports.py;
also a command:
    python tests/mp_runner.py tests/portable/uart_script.py [script args...]
prints the timing of both runs and "same" or a diff; exit status 0 if same.
"""
import difflib
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.path.join(ROOT, "build", "out", "micropython")
SKIP_REASON = "build/out/micropython is not built: run scons (or scons micropython)"

# CPython: the script's folder and the repository root on sys.path, argv as
# for `python script args`, then the script as __main__.
_CPYTHON_BOOT = (
    "import os, runpy, sys\n"
    "script = sys.argv[1]\n"
    "sys.argv = sys.argv[1:]\n"
    "sys.path[0:0] = [os.path.dirname(os.path.abspath(script)), {root!r}]\n"
    "runpy.run_path(script, run_name='__main__')\n"
)


def micropython_available():
    return os.path.isfile(MICROPYTHON) and os.access(MICROPYTHON, os.X_OK)


class Result:
    def __init__(self, interp, argv, proc, seconds):
        self.interp = interp
        self.argv = argv
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.seconds = seconds

    @property
    def ok(self):
        return self.returncode == 0

    def describe(self):
        """What happened, for an assertion message: exit status and stderr's tail."""
        tail = self.stderr.strip().splitlines()[-25:]
        return "%s exited %d:\n%s" % (
            " ".join(self.argv), self.returncode, "\n".join("    " + t for t in tail)
        )


def _env_micropython():
    env = dict(os.environ)
    env["MICROPYPATH"] = ".frozen:" + ROOT
    return env


def _run(interp, argv, env, timeout):
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=timeout,
    )
    return Result(interp, argv, proc, time.perf_counter() - t0)


def run_micropython(script, args=(), timeout=300):
    if not micropython_available():
        raise RuntimeError(SKIP_REASON)
    argv = [MICROPYTHON, os.path.join(ROOT, script)] + [str(a) for a in args]
    return _run("micropython", argv, _env_micropython(), timeout)


def run_micropython_code(code, timeout=60):
    """micropython -c CODE, with stubdm importable."""
    if not micropython_available():
        raise RuntimeError(SKIP_REASON)
    return _run("micropython", [MICROPYTHON, "-c", code], _env_micropython(), timeout)


def run_cpython(script, args=(), timeout=300):
    boot = _CPYTHON_BOOT.format(root=ROOT)
    argv = [sys.executable, "-c", boot, os.path.join(ROOT, script)] + [str(a) for a in args]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return _run("cpython", argv, env, timeout)


class Comparison:
    def __init__(self, script, cpython, micropython):
        self.script = script
        self.cpython = cpython
        self.micropython = micropython

    @property
    def same(self):
        return self.cpython.ok and self.micropython.ok and self.cpython.stdout == self.micropython.stdout

    def diff(self, limit=60):
        """A unified diff of the two stdouts (CPython = expected), at most `limit` lines."""
        lines = list(
            difflib.unified_diff(
                self.cpython.stdout.splitlines(),
                self.micropython.stdout.splitlines(),
                "cpython (expected)",
                "micropython",
                lineterm="",
                n=2,
            )
        )
        if len(lines) > limit:
            lines = lines[:limit] + ["... (%d more diff lines)" % (len(lines) - limit)]
        return "\n".join(lines)

    def explain(self):
        """Why the comparison failed, for an assertion message."""
        if not self.cpython.ok:
            return "the script fails on CPython itself: " + self.cpython.describe()
        if not self.micropython.ok:
            return "MicroPython fails: " + self.micropython.describe()
        return "stdout differs from CPython's:\n" + self.diff()


def compare(script, args=(), timeout=300):
    cp = run_cpython(script, args, timeout)
    mp = run_micropython(script, args, timeout)
    return Comparison(script, cp, mp)


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    if not micropython_available():
        print(SKIP_REASON)
        return 2
    c = compare(argv[1], argv[2:])
    print("cpython     %.3f s, %d lines, exit %d" % (c.cpython.seconds, c.cpython.stdout.count("\n"),
                                                    c.cpython.returncode))
    print("micropython %.3f s, %d lines, exit %d" % (c.micropython.seconds,
                                                    c.micropython.stdout.count("\n"),
                                                    c.micropython.returncode))
    if c.same:
        print("same")
        return 0
    print(c.explain())
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
