"""Client for QEMU's qtest protocol (CPython only).

Drives QEMU's own device models (16550 at 0x3f8, i8042, RTC, ...) with port
and memory accesses, so that our device models can be compared against them.

QEMU is started as::

    qemu-system-x86_64 -machine pc -accel qtest -qtest unix:PATH \\
        -qtest-log none -display none -nodefaults [extra args]

The Python side creates and listens on the unix socket PATH *before* QEMU is
launched; QEMU connects to it (``-qtest unix:PATH`` is a client chardev).

Protocol (QEMU system/qtest.c): one text command per line; every command gets
exactly one reply line, ``OK [value]`` or ``FAIL reason``.  Asynchronous lines
``IRQ raise N`` / ``IRQ lower N`` are sent when an intercepted GPIO input line
changes level; they can come before the reply of the command that caused the
change, i.e. interleaved with replies.  They appear only after
``irq_intercept_in QOM_PATH`` (one device per QEMU run).

IRQ observation on ``-machine pc``: ISA IRQs are not GPIOs of a device that
qtest can intercept (the machine fans each GSI out to the i8259 pair and the
IOAPIC through a plain qemu_irq array), so they are observed at a receiver's
inputs.  ``irq_intercept_in("ioapic")`` (partial QOM path; the full one is
/machine/i440fx/ioapic) reports the IOAPIC's 24 inputs: ISA IRQ n is input n,
IRQ 0 (PIT) included -- QEMU's IOAPIC moves IRQ 0 to pin 2 only inside its
own handler, after the interception point.  The master i8259
(/machine/unattached/device[4] here, an unstable path) works too.  Only one
device can be intercepted per QEMU run; intercepted lines keep being
forwarded to the real device.  QEMU's 16550 does not gate its IRQ with
MCR.OUT2 (it raises IRQ 4 with OUT2 clear too).

Typical use::

    with QemuQtest(extra_args=["-serial", "null"]) as q:
        q.irq_intercept_in()
        assert q.inb(0x3fd) == 0x60
"""

import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
import weakref

__all__ = [
    "QemuQtest",
    "QtestError",
    "QtestTimeout",
    "QtestFail",
    "find_qemu",
    "qemu_missing_reason",
    "MIN_QEMU_VERSION",
]

MIN_QEMU_VERSION = (10, 1)
DEFAULT_TIMEOUT = 10.0

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BUILD_QEMU = os.path.join(_REPO_ROOT, "build", "qemu-system-x86_64")


class QtestError(Exception):
    """Any failure talking to QEMU (QEMU died, protocol error, ...)."""


class QtestTimeout(QtestError):
    """QEMU did not answer in time."""


class QtestFail(QtestError):
    """QEMU answered a command with FAIL."""


# --------------------------------------------------------------- finding QEMU

_probe_cache = {}


def _qemu_version(path):
    """Return ((major, minor, micro), first line) of `path --version`."""
    try:
        out = subprocess.run(
            [path, "--version"], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=DEFAULT_TIMEOUT, check=False).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, "cannot run %s --version: %s" % (path, e)
    text = out.decode("utf-8", "replace").strip()
    first = text.splitlines()[0] if text else ""
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", first)
    if not m:
        return None, "%s --version said %r" % (path, first[:100])
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)), first


def _qtest_works(path):
    """Start `path` with the qtest accelerator on stdio and ask one question.

    Returns None when it works, else a reason.  (The qtest accelerator is a
    module in Debian, accel-qtest.so, which `-accel help` does not list.)
    """
    argv = [path, "-machine", "none", "-accel", "qtest", "-qtest", "stdio",
            "-qtest-log", "none", "-display", "none", "-nodefaults"]
    try:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        return "cannot run %s: %s" % (path, e)
    try:
        p.stdin.write(b"endianness\n")
        p.stdin.flush()
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return "%s: no answer to qtest within %.0f s" % (path, DEFAULT_TIMEOUT)
            r, _, _ = select.select([p.stdout], [], [], left)
            if r:
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        if buf.startswith(b"OK"):
            return None
    except OSError:
        pass
    finally:
        p.kill()
        try:
            _, err = p.communicate(timeout=DEFAULT_TIMEOUT)
        except subprocess.SubprocessError:
            err = b""
    err = err.decode("utf-8", "replace").strip().splitlines()
    return "%s has no working qtest accelerator (%s)" % (
        path, err[0] if err else "no output")


def _probe(path):
    """None if `path` is a QEMU >= MIN_QEMU_VERSION with qtest, else reason."""
    if path in _probe_cache:
        return _probe_cache[path]
    ver, info = _qemu_version(path)
    if ver is None:
        reason = info
    elif ver[:2] < MIN_QEMU_VERSION:
        reason = "%s is QEMU %d.%d.%d, need >= %d.%d" % (
            (path,) + ver + MIN_QEMU_VERSION)
    else:
        reason = _qtest_works(path)
    _probe_cache[path] = reason
    return reason


def _search():
    """Return (path or None, list of reasons for rejected candidates)."""
    reasons = []
    if os.path.isfile(_BUILD_QEMU) and os.access(_BUILD_QEMU, os.X_OK):
        r = _probe(_BUILD_QEMU)
        if r is None:
            return _BUILD_QEMU, reasons
        reasons.append(r)
    else:
        reasons.append("build/qemu-system-x86_64 missing (run build/provision_qemu.sh)")
    env = os.environ.get("STUBDM_QEMU")
    if env:
        r = _probe(env)
        if r is None:
            return env, reasons
        reasons.append("STUBDM_QEMU=" + r)
    else:
        reasons.append("STUBDM_QEMU unset")
    onpath = shutil.which("qemu-system-x86_64")
    if onpath:
        r = _probe(onpath)
        if r is None:
            return onpath, reasons
        reasons.append(r)
    else:
        reasons.append("no qemu-system-x86_64 on PATH")
    return None, reasons


def find_qemu():
    """Path of a QEMU >= 10.1 with a working qtest accelerator, or None.

    Looks at, in order: build/qemu-system-x86_64 in this repository (made by
    build/provision_qemu.sh), $STUBDM_QEMU, qemu-system-x86_64 on PATH.
    Results are cached per path for the life of the process.
    """
    return _search()[0]


def qemu_missing_reason():
    """One-line reason why find_qemu() returns None ('' when it doesn't)."""
    path, reasons = _search()
    if path is not None:
        return ""
    return "no QEMU >= %d.%d with the qtest accelerator: %s" % (
        MIN_QEMU_VERSION + ("; ".join(reasons),))


# --------------------------------------------------------------- the client

def _kill_process(proc):
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except OSError:
            pass


def die_with_parent():
    # preexec_fn: QEMU gets SIGKILL if this process dies (even by SIGKILL),
    # so no QEMU outlives its test.  Linux only; harmless elsewhere.
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9, 0, 0, 0)   # PR_SET_PDEATHSIG, SIGKILL
    except Exception:               # noqa: BLE001 - best effort
        pass


def _finalize(proc, sock, tmpdir, errfile):
    # Runs on close(), on garbage collection and at interpreter exit: never
    # leave QEMU running.
    try:
        if sock is not None:
            sock.close()
    except OSError:
        pass
    _kill_process(proc)
    try:
        errfile.close()
    except OSError:
        pass
    shutil.rmtree(tmpdir, ignore_errors=True)


class QemuQtest:
    """A QEMU process driven through qtest.

    extra_args: appended to QEMU's command line (e.g. ["-serial", "null"] for
    a 16550 at 0x3f8 / IRQ 4; the i8042 at 0x60/0x64 is present on -machine
    pc by default, also with -nodefaults).
    machine: the -machine value.  qemu: path, default find_qemu().
    timeout: seconds to wait for QEMU to connect and for each reply.
    """

    def __init__(self, extra_args=(), qemu=None, machine="pc",
                 timeout=DEFAULT_TIMEOUT, qtest_log=None):
        self.timeout = float(timeout)
        self.qemu = qemu or find_qemu()
        if self.qemu is None:
            raise QtestError(qemu_missing_reason())
        self._buf = b""
        self._irq = {}
        self.irq_log = []           # every (n, level) seen, in order
        self._sock = None
        self._closed = False
        self._broken = None         # set when a reply may still be in flight
        self._tmpdir = tempfile.mkdtemp(prefix="stubdm-qtest-")
        if len(self._tmpdir) > 80:      # sun_path holds 108 bytes
            os.rmdir(self._tmpdir)
            self._tmpdir = tempfile.mkdtemp(prefix="stubdm-qtest-", dir="/tmp")
        self.socket_path = os.path.join(self._tmpdir, "qtest.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._errfile = tempfile.TemporaryFile(dir=self._tmpdir)
        self.argv = [self.qemu, "-machine", machine, "-accel", "qtest",
                     "-qtest", "unix:" + self.socket_path,
                     "-qtest-log", qtest_log or "none",
                     "-display", "none", "-nodefaults"] + list(extra_args)
        try:
            listener.bind(self.socket_path)
            listener.listen(1)
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL,
                stdout=self._errfile, stderr=self._errfile,
                start_new_session=True, preexec_fn=die_with_parent)
        except BaseException:
            listener.close()
            self._errfile.close()
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        self._finalizer = weakref.finalize(
            self, _finalize, self.proc, None, self._tmpdir, self._errfile)
        try:
            self._sock = self._accept(listener)
        except BaseException:
            listener.close()
            self.close()
            raise
        listener.close()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(
            self, _finalize, self.proc, self._sock, self._tmpdir, self._errfile)
        # QEMU connects while it parses its options, before the machine is
        # built; the first reply comes from the main loop, so this catches
        # bad -device arguments etc. here, with QEMU's stderr.
        try:
            self.endianness = self.command("endianness")[0]
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------- plumbing

    def _accept(self, listener):
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QtestTimeout(self._describe(
                    "QEMU did not connect to %s within %.1f s" %
                    (self.socket_path, self.timeout)))
            r, _, _ = select.select([listener], [], [], min(left, 0.05))
            if r:
                conn, _ = listener.accept()
                conn.setblocking(False)
                return conn
            if self.proc.poll() is not None:
                raise QtestError(self._describe(
                    "QEMU exited with status %s before connecting" %
                    self.proc.returncode))

    def stderr_text(self):
        """What QEMU wrote to stdout/stderr so far."""
        try:
            self._errfile.flush()
            self._errfile.seek(0)
            return self._errfile.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def _describe(self, msg):
        try:                        # let a dying QEMU finish its message
            self.proc.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            pass
        err = self.stderr_text().strip()
        cmd = " ".join(self.argv)
        out = "%s\n  command: %s" % (msg, cmd)
        if err:
            out += "\n  QEMU stderr:\n    " + err.replace("\n", "\n    ")
        return out

    def _note_irq(self, line):
        parts = line.split()
        if len(parts) != 3 or parts[1] not in ("raise", "lower"):
            raise QtestError(self._describe("bad IRQ line from QEMU: %r" % line))
        n = int(parts[2])
        level = parts[1] == "raise"
        self._irq[n] = level
        self.irq_log.append((n, level))

    def _fill(self, wait):
        """Read what is available; wait up to `wait` s (None: forever)."""
        if self._sock is None:
            raise QtestError("QEMU qtest connection is closed")
        r, _, _ = select.select([self._sock], [], [], wait)
        if not r:
            return False
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError as e:
            raise QtestError(self._describe("qtest socket error: %s" % e))
        if not data:
            time.sleep(0.05)
            self.proc.poll()
            raise QtestError(self._describe(
                "QEMU closed the qtest connection (exit status %s)" %
                self.proc.returncode))
        self._buf += data
        return True

    def _pop_line(self):
        i = self._buf.find(b"\n")
        if i < 0:
            return None
        line = self._buf[:i].decode("ascii", "replace").rstrip("\r")
        self._buf = self._buf[i + 1:]
        return line

    def _drain_async(self):
        """Consume IRQ lines that arrived while no command was pending."""
        while self._fill(0):
            pass
        rest = []
        while True:
            line = self._pop_line()
            if line is None:
                break
            if line.startswith("IRQ "):
                self._note_irq(line)
            else:
                rest.append(line)
        if rest:
            raise QtestError(self._describe(
                "unexpected lines from QEMU: %r" % rest))

    def command(self, cmd):
        """Send one command line; return the reply's words after 'OK'."""
        if self._closed:
            raise QtestError("QemuQtest is closed")
        if self._broken:
            raise QtestError("qtest stream out of step after: " + self._broken)
        self._drain_async()
        data = (cmd + "\n").encode("ascii")
        try:
            self._sock.setblocking(True)
            self._sock.settimeout(self.timeout)
            self._sock.sendall(data)
        except OSError as e:
            raise QtestError(self._describe("sending %r failed: %s" % (cmd, e)))
        finally:
            self._sock.setblocking(False)
        deadline = time.monotonic() + self.timeout
        while True:
            line = self._pop_line()
            if line is None:
                left = deadline - time.monotonic()
                if left <= 0 or (not self._fill(left) and
                                 time.monotonic() >= deadline):
                    self.proc.poll()
                    self._broken = "timeout on %r" % cmd
                    raise QtestTimeout(self._describe(
                        "no reply to %r within %.1f s (QEMU %s)" % (
                            cmd, self.timeout,
                            "running" if self.proc.returncode is None else
                            "exited with %s" % self.proc.returncode)))
                continue
            if line.startswith("IRQ "):
                self._note_irq(line)
                continue
            if line == "OK" or line.startswith("OK "):
                return line[3:].split()
            if line.startswith("FAIL"):
                raise QtestFail("QEMU: %r -> %r" % (cmd, line))
            raise QtestError(self._describe(
                "unexpected reply to %r: %r" % (cmd, line)))

    def _value(self, cmd):
        words = self.command(cmd)
        if not words:
            raise QtestError("reply to %r carries no value" % cmd)
        return int(words[0], 0)

    # ---------------------------------------------------------- port I/O

    def outb(self, port, value):
        self.command("outb 0x%x 0x%x" % (port, value & 0xFF))

    def outw(self, port, value):
        self.command("outw 0x%x 0x%x" % (port, value & 0xFFFF))

    def outl(self, port, value):
        self.command("outl 0x%x 0x%x" % (port, value & 0xFFFFFFFF))

    def inb(self, port):
        return self._value("inb 0x%x" % port) & 0xFF

    def inw(self, port):
        return self._value("inw 0x%x" % port) & 0xFFFF

    def inl(self, port):
        return self._value("inl 0x%x" % port) & 0xFFFFFFFF

    # ---------------------------------------------------------- memory

    def readb(self, addr):
        return self._value("readb 0x%x" % addr)

    def readw(self, addr):
        return self._value("readw 0x%x" % addr)

    def readl(self, addr):
        return self._value("readl 0x%x" % addr)

    def readq(self, addr):
        return self._value("readq 0x%x" % addr)

    def writeb(self, addr, value):
        self.command("writeb 0x%x 0x%x" % (addr, value & 0xFF))

    def writew(self, addr, value):
        self.command("writew 0x%x 0x%x" % (addr, value & 0xFFFF))

    def writel(self, addr, value):
        self.command("writel 0x%x 0x%x" % (addr, value & 0xFFFFFFFF))

    def writeq(self, addr, value):
        self.command("writeq 0x%x 0x%x" % (addr, value & 0xFFFFFFFFFFFFFFFF))

    def memread(self, addr, n):
        if n <= 0:
            return b""
        words = self.command("read 0x%x 0x%x" % (addr, n))
        if not words or not words[0].startswith("0x"):
            raise QtestError("bad reply to read: %r" % words)
        data = bytes.fromhex(words[0][2:])
        if len(data) != n:
            raise QtestError("read returned %d bytes, wanted %d" % (len(data), n))
        return data

    def memwrite(self, addr, data):
        data = bytes(data)
        if not data:
            return
        self.command("write 0x%x 0x%x 0x%s" % (addr, len(data), data.hex()))

    # ---------------------------------------------------------- IRQs, clock

    def irq_intercept_in(self, qom_path="ioapic"):
        """Report level changes of `qom_path`'s GPIO inputs as IRQ lines.

        On -machine pc, "ioapic" (= /machine/i440fx/ioapic) reports ISA IRQ
        n as line n (0-15; PCI INTx at 16-23).  Only one device can be
        intercepted per QEMU run.
        """
        self.command("irq_intercept_in %s" % qom_path)

    def irq_intercept_out(self, qom_path):
        self.command("irq_intercept_out %s" % qom_path)

    def get_irq(self, n):
        """Last level reported for intercepted line n (False if never)."""
        self._drain_async()
        return self._irq.get(n, False)

    def clock_step(self, ns=None):
        """Advance the virtual clock (to the next deadline if ns is None).

        Returns the new virtual clock in ns."""
        if ns is None:
            return self._value("clock_step")
        return self._value("clock_step %d" % ns)

    def clock_set(self, ns):
        return self._value("clock_set %d" % ns)

    # ---------------------------------------------------------- life cycle

    def close(self):
        """Terminate QEMU and clean up; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        sock, self._sock = self._sock, None
        if getattr(self, "_finalizer", None) is not None and self._finalizer.alive:
            self._finalizer()
        else:
            _finalize(self.proc, sock, self._tmpdir, self._errfile)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
