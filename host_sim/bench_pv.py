"""stubdm-sim bench pv: what the PV plumbing costs.

- grant map + unmap: host_sim's table, domain 0 mapping one of the stub
  domain's grants (what a backend pays per page it does not keep mapped);
- event channel + ring round trip: the device model's echo frontend sends an
  empty request and waits for its reply, one at a time (frontend -> host_sim ->
  backend -> host_sim -> frontend), timed by the frontend itself;
- echo rounds: 16 requests of about 4 KiB, each page filled, transformed by
  the backend in place and checked by the frontend;
on each device model runtime, in one run. There is no QEMU counterpart to put
beside these: QEMU's own devices never cross a domain boundary.
"""
import time

from host_sim import scripted
from host_sim.backends.echo import EchoBackend
from host_sim.grants import GrantTables
from host_sim.xs import XsError
from stubdm import pv_echo


def grant_map_cost(n):
    gt = GrantTables(pages_per_domain=16)
    try:
        (ref, _), = gt.share(2, 0, 1, True)
        t0 = time.perf_counter()
        for _ in range(n):
            gt.map(0, 2, ref).unmap()
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        gt.close()


def _read(s, path):
    try:
        return s.xs.read(path).decode()
    except XsError:
        return None


def _appears(s, path, every=0.01):
    """A pump_until condition that asks xenstore only every so often (each read is a
    round trip to xenstored, which would otherwise be what the bench measures)."""
    last = [0.0]

    def cond():
        now = time.perf_counter()
        if now - last[0] < every:
            return False
        last[0] = now
        return _read(s, path) is not None
    return cond


def run_runtime(runtime, pings, rounds):
    with scripted.Session(runtime=runtime, pv_devices=((pv_echo.TYPE, 0, EchoBackend),)) as s:
        be = s.backends[0]
        fe = "/local/domain/%d/device/%s/0" % (s.stubdom_domid, pv_echo.TYPE)
        t0 = time.perf_counter()
        s.hv.pump_until(lambda: be.state == 4 and _read(s, fe + "/state") == "4",
                        "the PV handshake", timeout=20)
        connect_ms = (time.perf_counter() - t0) * 1e3
        s.xs.write(fe + "/echo-ping", str(pings))
        s.hv.pump_until(_appears(s, fe + "/echo-ping-us"), "pings", timeout=120)
        ping_us = int(_read(s, fe + "/echo-ping-us")) / pings
        t0 = time.perf_counter()
        s.xs.write(fe + "/echo-go", str(rounds))
        s.hv.pump_until(_appears(s, fe + "/echo-done"), "echo rounds", timeout=120)
        dt = time.perf_counter() - t0
        done, good, bad = [int(x) for x in _read(s, fe + "/echo-done").split()]
        if bad or done != rounds or good != rounds * 16 + pings:
            raise scripted.SimError("echo gave %d good and %d bad replies" % (good, bad))
        return {"connect_ms": connect_ms, "ping_us": ping_us,
                "round_us": dt / rounds * 1e6, "events": be.stats["events"],
                "notifies": be.stats["notifies"]}


def cmd_pv(args):
    print("grant map + unmap (host_sim, dom0 maps a stub domain grant): %.1f us"
          % grant_map_cost(args.maps))
    rows = []
    for runtime in ("cpython", "micropython", "port"):
        try:
            scripted.dm_command(runtime)
        except scripted.RuntimeMissing as e:
            print("%-11s skipped: %s" % (runtime, e))
            continue
        rows.append((runtime, run_runtime(runtime, args.pings, args.rounds)))
    print("%-11s %12s %16s %18s %14s" % ("runtime", "connect ms", "round trip us",
                                          "16 x 4 KiB us", "MB/s checked"))
    for runtime, r in rows:
        mbs = 16 * 4096 / r["round_us"]
        print("%-11s %12.1f %16.1f %18.0f %14.1f"
              % (runtime, r["connect_ms"], r["ping_us"], r["round_us"], mbs))
    if rows:
        base = rows[0][1]["ping_us"]
        print("round trip vs cpython: " + ", ".join(
            "%s %.2fx" % (rt, r["ping_us"] / base) for rt, r in rows))
    return 0


def add_command(bsub, common):
    b = bsub.add_parser("pv", parents=[common],
                        help="PV plumbing costs: grant map, event channel round trip, "
                        "echo rounds on every runtime")
    b.add_argument("--pings", type=int, default=2000, metavar="N",
                   help="sequential empty requests to time (default 2000)")
    b.add_argument("--rounds", type=int, default=200, metavar="N",
                   help="echo rounds of 16 x 4 KiB (default 200)")
    b.add_argument("--maps", type=int, default=20000, metavar="N",
                   help="grant map+unmap pairs (default 20000)")
    b.set_defaults(func=cmd_pv)

