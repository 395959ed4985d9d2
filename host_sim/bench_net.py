"""stubdm-sim bench net: TCP throughput and ping between a real guest and its peer.

One boot per configuration, in one invocation, the same kernel, initramfs and
guest commands, the NIC model the same (--nic model=rtl8139|e1000):

- stubdm: host_sim's Engine; the guest's NIC is stubdm's, which reaches the
  network as a stub domain does: netfront in the device model, host_sim's
  netback joined to a TAP in the run's private namespace (host_sim/netns.py);
- qemu-xen: Debian's qemu-system-xen on the same transport (host_sim's
  hypervisor, vfio-user to the guest's QEMU), its NIC on a TAP in the run's
  namespace as a dom0 device model's is (host_sim/qemu_xen.py, boot --dm
  qemu-xen --nic); left out, with the reason, when qemu-xen is not built;
- QEMU's own model of the same NIC on a TAP in the same kind of namespace
  (`-netdev tap,fd=N,vhost=off`).

The peer (this module run with --peer in the namespace, at 10.0.2.2) does the
timing with the host's clock: it connects to a server the guest starts for each
transfer (`nc -l -p P -e dd ... bs=65536`: dd reads and writes the socket
itself; busybox nc copying through a pipe moves 1 KiB at a time, DESIGN.md 16)
and times from its connect to the guest closing. Each round is a transfer to
the guest then one from it; the rounds are interleaved that way and the table
gives medians. A round that moves nothing for STALL_S is given up and counted
as stalled: for QEMU's and qemu-xen's NICs, which drop frames that find no
free receive descriptor (rtl8139 in C+ mode has no receive flow control at
all), the peer's TCP can back its retransmit timer off past that; the bench
says so on the row, with the frames the guest's NIC dropped (its
rx_missed_errors). stubdm's NICs back-pressure instead: a stall there fails
the run. Ping: the peer pings the guest, median round trip. The device
model's time is the CPU its process used during the transfers (from
/proc/PID/stat when the guest marks each start and end), per packet (the
guest's rx + tx packet counters over the same span) and per MiB moved; QEMU's
own model runs inside QEMU's process, so it has none apart from the guest's
emulation. Then, unless --no-check, 64 MiB each way once more, with sha256
taken at both ends (the issue's end-to-end check).
"""
import hashlib
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback

from host_sim import bench
from host_sim.bench import BenchError, Timeline, _Timed
from host_sim.engine import Engine
from host_sim.hypervisor import SimError
from host_sim.scripted import ROOT

PEER = "10.0.2.2"
GUEST = "10.0.2.15"
CONTROL_PORT = 5011
DOWN_PORT, UP_PORT, CHECK_DOWN_PORT, CHECK_UP_PORT = 5002, 5003, 5004, 5005
MARK = "NETBENCH"
BLOCK = 1 << 16
PATTERN_BYTES = 1 << 20
TIMEOUT = 3600.0
PINGS = 20
STALL_S = 30  # a transfer that moves nothing this long is given up (the guest's NIC stalled)
MODELS = ("rtl8139", "e1000")
MAC = "00:16:3e:00:01:00"  # the engine's default for NIC 0 (libxl's 00:16:3e prefix)


# ---------------------------------------------------------------- the peer


def pattern():
    """What the peer sends: 1 MiB of a fixed pseudo-random stream, repeated."""
    out = bytearray()
    i = 0
    while len(out) < PATTERN_BYTES:
        out += hashlib.sha256(b"netbench:%d" % i).digest()
        i += 1
    return bytes(out)


def pattern_sha(n, pat=None):
    pat = pat or pattern()
    h = hashlib.sha256()
    whole, rest = divmod(n, len(pat))
    for _ in range(whole):
        h.update(pat)
    h.update(pat[:rest])
    return h.hexdigest()


def _connect(addr, port, timeout=20.0):
    """Connect to the guest's server, which may not be listening yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((addr, port), timeout=STALL_S)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _down(words, pat):
    n, port, addr = int(words[1]), int(words[2]), words[3]
    s = _connect(addr, port)
    with s:
        view = memoryview(pat)
        t0 = time.perf_counter_ns()
        left = n
        while left:
            k = min(left, len(pat))
            s.sendall(view[:k])
            left -= k
        s.shutdown(socket.SHUT_WR)
        while s.recv(BLOCK):  # the guest closes when its dd has read everything
            pass
        dt = time.perf_counter_ns() - t0
    return "%s down %d %d %s" % (MARK, n, dt, pattern_sha(n, pat))


def _up(words):
    port, addr, want_hash = int(words[1]), words[2], words[3] == "1"
    s = _connect(addr, port)
    h = hashlib.sha256() if want_hash else None
    buf = bytearray(1 << 20)
    n = 0
    with s:
        t0 = time.perf_counter_ns()
        while True:
            k = s.recv_into(buf)
            if not k:
                break
            n += k
            if h is not None:
                h.update(memoryview(buf)[:k])
        dt = time.perf_counter_ns() - t0
    return "%s up %d %d %s" % (MARK, n, dt, h.hexdigest() if h else "-")


def _ping(words):
    r = subprocess.run(["ping", "-c", words[2], "-i", "0.2", "-W", "2", words[1]],
                       capture_output=True, text=True)
    times = re.findall(r"time=([\d.]+) ms", r.stdout)
    return "%s ping %s" % (MARK, " ".join(times) or "none")


def _serve(conn, pat):
    with conn:
        f = conn.makefile("rb")
        words = f.readline(256).decode(errors="replace").split()
        try:
            if words and words[0] == "down" and len(words) == 4:
                reply = _down(words, pat)
            elif words and words[0] == "up" and len(words) == 4:
                reply = _up(words)
            elif words and words[0] == "ping" and len(words) == 3:
                reply = _ping(words)
            else:
                reply = "%s error unknown request %r" % (MARK, " ".join(words)[:80])
        except (OSError, ValueError) as e:
            reply = "%s error %s: %s" % (MARK, words[0], e or type(e).__name__)
        try:
            conn.sendall(reply.encode() + b"\n")
        except OSError:
            pass


def peer_main(addr):
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # die with the engine
    pat = pattern()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, CONTROL_PORT))
    srv.listen(8)
    os.write(1, b"ready\n")
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve, args=(conn, pat), daemon=True).start()


def exec_with_tap(argv):
    """--exec-with-tap NSPATH NAME ADDRESS -- QEMU ARGS...: open a TAP in the
    namespace, then become QEMU with it (its fd replaces @TAP@ in the args)."""
    from host_sim.netns import Namespace

    ns_path, name, address = argv[:3]
    args = argv[4:]
    ns = Namespace.__new__(Namespace)  # the run's namespace, held by the engine
    ns.path = ns_path
    fd = ns.open_tap(name, address)
    os.set_inheritable(fd, True)
    args = [a.replace("@TAP@", str(fd)) for a in args]
    os.execv(args[0], args)


# ---------------------------------------------------------------- the guest


def guest_script(size, runs, check):
    """What the guest runs (busybox sh): the rounds, the ping, the checked transfers."""
    blocks = size // BLOCK
    st = ("m() { echo %s mark $1 $(cat /sys/class/net/eth0/statistics/rx_packets) "
          "$(cat /sys/class/net/eth0/statistics/tx_packets) "
          "$(cat /sys/class/net/eth0/statistics/rx_missed_errors); }; " % MARK)
    lines = [
        "ip addr add %s/24 dev eth0; ip link set eth0 up; " % GUEST,
        "i=0; while [ \"$(cat /sys/class/net/eth0/carrier 2>/dev/null)\" != 1 ] "
        "&& [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; ",
        "ping -c 2 -W 5 %s >/dev/null; " % PEER,  # ARP and the first packets, untimed
        st,
        "r=0; while [ $r -lt %d ]; do r=$((r+1)); " % runs,
        # The peer answers once the server's dd is done (or it gave up on a stall:
        # then the server is ended, so the next round can start).
        "nc -l -p %d -e dd of=/dev/null bs=%d 2>/dev/null & s=$!; " % (DOWN_PORT, BLOCK),
        "m b; echo 'down %d %d %s' | nc %s %d; m e; kill $s 2>/dev/null; wait; "
        % (size, DOWN_PORT, GUEST, PEER, CONTROL_PORT),
        "nc -l -p %d -e dd if=/dev/zero bs=%d count=%d 2>/dev/null & s=$!; "
        % (UP_PORT, BLOCK, blocks),
        "m b; echo 'up %d %s 0' | nc %s %d; m e; kill $s 2>/dev/null; wait; "
        % (UP_PORT, GUEST, PEER, CONTROL_PORT),
        "done; ",
        "echo 'ping %s %d' | nc %s %d; " % (GUEST, PINGS, PEER, CONTROL_PORT),
    ]
    if check:
        lines += [
            "rm -f /tmp/d.sha; nc -l -p %d -e sh -c 'dd bs=%d 2>/dev/null | sha256sum "
            "> /tmp/d.sha' 2>/dev/null & s=$!; " % (CHECK_DOWN_PORT, BLOCK),
            "echo 'down %d %d %s' | nc %s %d; kill $s 2>/dev/null; wait; "
            % (size, CHECK_DOWN_PORT, GUEST, PEER, CONTROL_PORT),
            "echo %s downsha $(cut -d' ' -f1 /tmp/d.sha); " % MARK,
            "dd if=/dev/urandom of=/tmp/up bs=%d count=%d 2>/dev/null; " % (BLOCK, blocks),
            "echo %s upsha $(sha256sum /tmp/up | cut -d' ' -f1); " % MARK,
            "nc -l -p %d -e dd if=/tmp/up bs=%d 2>/dev/null & s=$!; " % (CHECK_UP_PORT, BLOCK),
            "echo 'up %d %s 1' | nc %s %d; kill $s 2>/dev/null; wait; rm -f /tmp/up; "
            % (CHECK_UP_PORT, GUEST, PEER, CONTROL_PORT),
        ]
    return "".join(lines)


# ---------------------------------------------------------------- the engines


def _cpu_seconds(pid):
    """User + system CPU of a process and its threads so far, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class NetTimeline(Timeline):
    """The console sink: each NETBENCH line, with the device model's CPU and
    host_sim's own when it arrived."""

    def __init__(self):
        super().__init__()
        self.engine = None
        self.lines = []  # (words, dm cpu s, host_sim cpu s)
        self._pos = 0

    def write(self, chunk):
        super().write(chunk)
        end = self.buf.rfind(b"\n")
        if end < self._pos:
            return
        text = bytes(self.buf[self._pos:end]).decode(errors="replace")
        self._pos = end + 1
        for line in text.split("\n"):
            i = line.find(MARK + " ")
            if i < 0:
                continue
            dm = getattr(self.engine, "dm", None)
            cpu = _cpu_seconds(dm.pid) if dm is not None else None
            ru = resource.getrusage(resource.RUSAGE_SELF)
            self.lines.append((line[i:].strip().split()[1:], cpu, ru.ru_utime + ru.ru_stime))


class _BenchPeer:
    """Mixin: the bench's peer in the run's namespace, beside host_sim's netpeer."""

    def _start_peers(self):
        super()._start_peers()
        self.peers.append(start_peer(self.ns))


def start_peer(ns):
    p = ns.popen([sys.executable, "-m", "host_sim.bench_net", "--peer", "0.0.0.0"],
                 stdout=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    if p.stdout.readline().strip() != b"ready":
        p.kill()
        raise BenchError("the bench's network peer did not start")
    return p


class StubdmNetEngine(_BenchPeer, _Timed, Engine):
    pass


class QemuNicEngine(_Timed, Engine):
    """The same guest on QEMU's own NIC model, on a TAP in a namespace of its own."""

    model = "e1000"

    def start_dm(self):
        from host_sim.netns import Namespace

        self.hv = None
        self.dm = None
        self.ns = Namespace()
        self.peers = [start_peer(self.ns)]

    def start_servers(self):
        pass

    def qemu_args(self):
        args = super().qemu_args() + [
            "-netdev", "tap,id=n0,fd=@TAP@,vhost=off",
            "-device", "%s,netdev=n0,mac=%s" % (self.model, MAC)]
        return [sys.executable, "-m", "host_sim.bench_net", "--exec-with-tap", self.ns.path,
                "tap0", PEER + "/24", "--"] + args


def _qemu_xen_engine():
    from host_sim import qemu_xen

    why = qemu_xen.missing()
    if why is not None:
        return None, why

    class QemuXenNetEngine(_BenchPeer, _Timed, qemu_xen.engine_class()):
        pass

    return QemuXenNetEngine, None


# ---------------------------------------------------------------- one configuration


STALLED = ("down: timed out", "up: timed out")  # the peer's words for a stalled transfer


def parse(lines, size):
    """The figures of one boot from its NETBENCH lines (see guest_script)."""
    r = {"down": [], "up": [], "ping": [], "dm_s": 0.0, "host_s": 0.0, "packets": 0,
         "rx": 0, "missed": 0, "bytes": 0, "errors": [], "sha": {}, "stalled": [],
         "check_stalled": []}
    start = None
    for words, cpu, host in lines:
        kind = words[0] if words else ""
        if kind == "mark" and len(words) in (4, 5):
            rx, tx = int(words[2]), int(words[3])
            missed = int(words[4]) if len(words) == 5 else 0
            if words[1] == "b":
                start = (rx, tx, missed, cpu, host)
            elif start is not None:
                rx0, tx0, m0, c0, h0 = start
                r["packets"] += rx + tx - rx0 - tx0
                r["rx"] += rx - rx0
                r["missed"] += missed - m0
                if cpu is not None and c0 is not None:
                    r["dm_s"] += cpu - c0
                r["host_s"] += host - h0
                start = None
        elif kind in ("down", "up") and len(words) == 4:
            n, ns = int(words[1]), int(words[2])
            if start is not None:  # a timed round (the checked transfers are not)
                r[kind].append(n / 1e6 / (ns / 1e9))
                r["bytes"] += n
                if n != size:
                    r["errors"].append("%s moved %d bytes, not %d" % (kind, n, size))
            else:
                r["sha"]["peer_" + kind] = (n, words[3])
        elif kind == "ping":
            r["ping"] = [float(x) for x in words[1:] if x != "none"]
        elif kind in ("downsha", "upsha") and len(words) == 2:
            r["sha"]["guest_" + kind[:-3]] = words[1]
        elif kind == "error":
            why = " ".join(words[1:])
            if why in STALLED:  # the round's kind, in or outside the marks
                (r["stalled"] if start is not None else r["check_stalled"]).append(
                    why.split(":")[0])
            else:
                r["errors"].append(why)
    return r


def stall_text(config, model, r):
    """Why a configuration's rounds stalled, as the row's note (None if none did)."""
    if not r["stalled"] and not r["check_stalled"]:
        return None
    parts = []
    for kind, label in (("down", "to guest"), ("up", "from guest")):
        n = r["stalled"].count(kind)
        if n:
            parts.append("%d of %d rounds %s" % (n, n + len(r[kind]), label))
        if kind in r["check_stalled"]:
            parts.append("the checked transfer %s" % label)
    seen = r["rx"] + r["missed"]
    text = ("%s stalled (nothing moved for %d s: the peer's TCP backed its retransmit timer "
            "off); the guest's NIC dropped %d of %d frames (%.0f%%, rx_missed_errors)"
            % (", ".join(parts), STALL_S, r["missed"], seen,
               100.0 * r["missed"] / seen if seen else 0.0))
    if model == "rtl8139" and config != "stubdm":
        text += (": QEMU's rtl8139 in C+ mode has no receive flow control (a frame that "
                 "finds no free descriptor is dropped: rtl8139_can_receive always says yes)")
        if config == "qemu-xen":
            text += ("; QEMU's own model drops a like share, at round trips short enough "
                     "for TCP to recover, but through this transport qemu-xen's round trips "
                     "(and so the peer's retransmit timeout) run to seconds")
    return text


def run_one(config, qemu, kernel, initrd, model, script, size, runtime):
    tl = NetTimeline()
    kw = dict(run=script, quiet=True, out=tl, timeout=TIMEOUT)
    if config == "stubdm":
        e = StubdmNetEngine(qemu, kernel, initrd, runtime=runtime, nics=[(model, MAC)], **kw)
    elif config == "qemu-xen":
        cls, _why = _qemu_xen_engine()
        e = cls(qemu, kernel, initrd, nics=[(model, MAC)], **kw)
    else:
        e = QemuNicEngine(qemu, kernel, initrd, **kw)
        e.model = model
    tl.engine = e
    vifs = []  # netback's counters, kept past the run's close
    if config == "stubdm":
        real_close = getattr(e, "close", None)

        def close_keeping_vifs(*a, **k):
            pv = getattr(e, "pvenv", None)
            for b in (pv.backends if pv is not None else ()):
                if b.TYPE == "vif":
                    vifs.append(dict(b.stats))
            return real_close(*a, **k)
        if real_close is not None:
            e.close = close_keeping_vifs
    try:
        rc = e.boot()
    except Exception as err:
        where = ""
        if not isinstance(err, SimError):  # not a reported failure: a bug, say where
            where = " (%s)" % " <- ".join(
                "%s:%d %s" % (os.path.basename(f.filename), f.lineno, f.name)
                for f in reversed(traceback.extract_tb(err.__traceback__)[-3:]))
        raise BenchError("%s: %s%s\n%s" % (config, err or type(err).__name__, where,
                                           bytes(tl.buf[-1500:]).decode(errors="replace")))
    out = bytes(tl.buf).decode(errors="replace")
    r = parse(tl.lines, size)
    if config == "stubdm":
        # stubdm's NICs back-pressure the wire and drop nothing: a stall is a fault.
        r["errors"] += ["%s: timed out" % k for k in r["stalled"] + r["check_stalled"]]
    if rc != 0 or r["errors"] or not (r["down"] or r["up"] or r["stalled"]):
        raise BenchError("%s: no result (status %s; %s):\n%s" % (
            config, rc, "; ".join(r["errors"]) or "no transfers", out[-1500:]))
    r["ioreqs"] = e.ioreqs
    r["vifs"] = vifs
    return r


# ---------------------------------------------------------------- the table


def _med(xs):
    return statistics.median(xs) if xs else None


def _f(v, fmt="%.1f"):
    return fmt % v if v is not None else "-"


def _ratio(a, b):
    return "%.2fx" % (a / b) if a is not None and b else "-"


def bench_net(qemu, kernel, initrd, model="e1000", size_mib=64, runs=5, check=True,
              runtime="cpython", configs=("stubdm", "qemu-xen", "qemu"), out=None):
    out = out or sys.stdout
    bench._need(qemu, kernel, initrd)
    if model not in MODELS:
        raise BenchError("no NIC model %r (%s)" % (model, ", ".join(MODELS)))
    size = size_mib << 20
    script = guest_script(size, runs, check)
    results, skipped, failed = {}, {}, {}
    load0 = os.getloadavg()
    for config in configs:
        if config == "qemu-xen":
            _cls, why = _qemu_xen_engine()
            if why is not None:
                skipped[config] = why
                continue
        t0 = time.monotonic()
        try:
            results[config] = run_one(config, qemu, kernel, initrd, model, script, size,
                                      runtime)
        except BenchError as e:
            # One configuration failing (a stalled NIC) leaves the others' figures.
            failed[config] = str(e)
            continue
        results[config]["wall"] = time.monotonic() - t0
    load1 = os.getloadavg()
    names = {"stubdm": "stubdm %s (%s): netfront, netback, TAP" % (model, runtime),
             "qemu-xen": "qemu-xen %s, same transport, TAP" % model,
             "qemu": "QEMU's own %s on a TAP" % model}
    out.write("bench net (%s): %d MiB TCP each way, %d interleaved rounds (medians; MB/s by "
              "the peer's clock); ping: %d from the peer (median)\n"
              % (model, size_mib, runs, PINGS))
    out.write("  %-50s %9s %9s %8s %10s %9s\n" % ("", "to guest", "from gst", "ping ms",
                                                 "DM us/pkt", "DM ms/MiB"))
    med = {}
    for c in configs:
        if c not in results:
            continue
        r = results[c]
        m = {"down": _med(r["down"]), "up": _med(r["up"]), "ping": _med(r["ping"])}
        if c != "qemu" and r["packets"] and r["bytes"]:
            m["us_pkt"] = r["dm_s"] * 1e6 / r["packets"]
            m["ms_mib"] = r["dm_s"] * 1e3 / (r["bytes"] / (1 << 20))
        med[c] = m
        out.write("  %-50s %9s %9s %8s %10s %9s\n" % (
            names[c], _f(m["down"]), _f(m["up"]), _f(m["ping"], "%.2f"),
            _f(m.get("us_pkt"), "%.1f"), _f(m.get("ms_mib"), "%.1f")))
    for c, why in skipped.items():
        out.write("  %-50s skipped: %s\n" % (names[c], why))
    for c, why in failed.items():
        out.write("  %-50s FAILED: %s\n" % (names[c], why.strip().splitlines()[0][:200]))
    s = med.get("stubdm")
    for other, label in (("qemu", "ratio stubdm / QEMU's own"),
                         ("qemu-xen", "ratio stubdm / qemu-xen")):
        o = med.get(other)
        if s and o:
            out.write("  %-50s %9s %9s %8s %10s %9s\n" % (
                label, _ratio(s["down"], o["down"]), _ratio(s["up"], o["up"]),
                _ratio(s["ping"], o["ping"]),
                _ratio(s.get("us_pkt"), o.get("us_pkt")),
                _ratio(s.get("ms_mib"), o.get("ms_mib"))))
    for c in configs:
        r = results.get(c)
        if r is None:
            continue
        out.write("  %s: rounds to guest %s, from guest %s MB/s; %d packets (NIC dropped %d "
                  "received), DM CPU %.2f s, host_sim CPU %.2f s, %d ioreqs, %.0f s in all\n"
                  % (c, " ".join("%.1f" % x for x in r["down"]) or "-",
                     " ".join("%.1f" % x for x in r["up"]) or "-", r["packets"],
                     r["missed"], r["dm_s"], r["host_s"], r["ioreqs"], r["wall"]))
        for v in r.get("vifs", ()):
            out.write("  %s: netback took %d packets from the guest's side (%d GSO, %d more "
                      "with the checksum to fill), %d refused\n"
                      % (c, v.get("tx_packets", 0), v.get("tx_gso", 0),
                         v.get("tx_csum_blank", 0), v.get("tx_errors", 0)))
        stalled = stall_text(c, model, r)
        if stalled:
            out.write("  %s: %s\n" % (c, stalled))
        if check:
            out.write("  %s: sha256 of %d MiB each way: %s\n" % (c, size_mib,
                                                                 check_text(r, size)))
    out.write("  load average %.2f %.2f %.2f before, %.2f %.2f %.2f after\n" % (load0 + load1))
    for c, why in failed.items():
        out.write("\n%s failed:\n%s\n" % (c, why))
    if "stubdm" in failed:
        raise BenchError("stubdm failed")
    return results


def check_ok(r, size):
    sha = r["sha"]
    down = sha.get("peer_down")
    up = sha.get("peer_up")
    ok_down = down is not None and down[0] == size and sha.get("guest_down") == down[1]
    ok_up = up is not None and up[0] == size and sha.get("guest_up") == up[1]
    return ok_down, ok_up


def check_text(r, size):
    ok_down, ok_up = check_ok(r, size)
    stalled = r.get("check_stalled", ())

    def word(ok, kind):
        return "equal" if ok else "stalled" if kind in stalled else "DIFFER"

    return "to guest %s, from guest %s" % (word(ok_down, "down"), word(ok_up, "up"))


def cmd_bench_net(args):
    from host_sim import engine, qtest_qemu
    from host_sim.cli import parse_nic_spec

    qemu = qtest_qemu.find_qemu()
    kernel, initrd = engine.find_kernel()
    model = "e1000"
    if args.nic:
        try:
            model = parse_nic_spec(args.nic)[0]
        except ValueError as e:
            sys.stderr.write("stubdm-sim bench net: --nic %s\n" % e)
            return 2
    configs = tuple(c for c in (args.configs or "stubdm,qemu-xen,qemu").split(",") if c)
    bad = [c for c in configs if c not in ("stubdm", "qemu-xen", "qemu")]
    if bad or not configs:
        sys.stderr.write("stubdm-sim bench net: --configs takes stubdm, qemu-xen, qemu\n")
        return 2
    try:
        results = bench_net(qemu, kernel, initrd, model=model, size_mib=args.size_mib,
                            runs=args.runs, check=not args.no_check, runtime=args.dm_runtime,
                            configs=configs)
    except BenchError as e:
        sys.stderr.write("stubdm-sim bench net: %s\n" % e)
        return 1
    if not args.no_check:
        for c, r in results.items():
            ok = check_ok(r, args.size_mib << 20)
            # A stalled checked transfer is on its row; a wrong checksum fails the bench.
            if any(not good and kind not in r["check_stalled"]
                   for good, kind in zip(ok, ("down", "up"))):
                return 1
    return 0


def add_command(bsub, common):
    b = bsub.add_parser("net", parents=[common],
                        help="TCP throughput both ways and ping between a real guest and "
                        "its peer: stubdm's NIC, qemu-xen's, and QEMU's own")
    b.add_argument("--nic", metavar="model=MODEL",
                   help="the NIC model, rtl8139 or e1000 (default model=e1000)")
    b.add_argument("--size-mib", type=int, default=64, metavar="MiB",
                   help="bytes each way per round (default 64)")
    b.add_argument("--runs", type=int, default=5, metavar="N",
                   help="interleaved rounds per configuration (default 5)")
    b.add_argument("--no-check", action="store_true",
                   help="skip the sha256-checked transfer each way")
    b.add_argument("--configs", metavar="LIST",
                   help="which rows to run, comma-separated from stubdm,qemu-xen,qemu "
                   "(default all three)")
    b.set_defaults(func=cmd_bench_net)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peer"]:
        peer_main(sys.argv[2])
    elif sys.argv[1:2] == ["--exec-with-tap"]:
        exec_with_tap(sys.argv[2:])
    else:
        sys.exit("usage: python -m host_sim.bench_net --peer ADDR | --exec-with-tap ...")
