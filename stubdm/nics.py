# The network behind each emulated NIC (stubdm/net.py's interface), from the
# -netdev the toolstack gave (DESIGN.md section 7: `-netdev type=tap,id=netD,
# ifname=vif<guest>.<D>-emu,br=...,script=no,downscript=no`).
#
# In a stub domain the frames go to dom0 over the stub domain's own PV NIC
# (netfront, stubdm/frontends/netfront.py): open_netdev chooses it whenever
# the device model has xenstore. Without one (a device model in a test, with
# no toolstack), a netdev is served by PeerNet, a wire with one peer on it
# that answers ARP and ICMP echo, so a guest sees its link up and can ping.
from stubdm import log
from stubdm.net import MAX_FRAME, MIN_FRAME, MemoryNet

PEER_MAC = b"\x02\x00\x00\x00\x00\x02"


class NetdevError(Exception):
    pass


def _csum(data):
    s = 0
    n = len(data)
    v = int.from_bytes(bytes(data) + (b"\x00" if n & 1 else b""), "big")
    if v:
        s = v % 0xFFFF or 0xFFFF
    return (~s) & 0xFFFF


class PeerNet(MemoryNet):
    """A network holding one peer: ARP requests for any address but the
    asker's are answered with PEER_MAC, ICMP echo requests to any address are
    echoed; everything else is counted and dropped. Frames are kept only as
    counts (a device model runs for long)."""

    def __init__(self, mac=None):
        super().__init__(mac)
        self.tx_frames = 0
        self.tx_bytes = 0
        self.answered = 0

    def transmit(self, frame):
        n = len(frame)
        if not MIN_FRAME <= n <= MAX_FRAME:
            return False
        self.tx_frames += 1
        self.tx_bytes += n
        reply = self._answer(bytes(frame))
        if reply is not None:
            self.answered += 1
            self.deliver(reply)
        return True

    def _answer(self, f):
        et = (f[12] << 8) | f[13]
        if et == 0x0806 and len(f) >= 42 and f[20:22] == b"\x00\x01":
            sha, spa, tpa = f[22:28], f[28:32], f[38:42]
            if tpa == spa:
                return None  # gratuitous ARP
            return (sha + PEER_MAC + b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x02"
                    + PEER_MAC + tpa + sha + spa)
        if et == 0x0800 and len(f) >= 34 and f[14] >> 4 == 4 and f[23] == 1:
            ihl = (f[14] & 0xF) * 4
            total = (f[16] << 8) | f[17]
            end = 14 + total
            if ihl < 20 or end > len(f) or 14 + ihl + 8 > end or f[14 + ihl] != 8:
                return None
            ip = bytearray(f[14 : 14 + ihl])
            ip[12:16], ip[16:20] = f[30:34], f[26:30]
            ip[8] = 64
            ip[10:12] = b"\x00\x00"
            c = _csum(ip)
            ip[10], ip[11] = c >> 8, c & 0xFF
            icmp = bytearray(f[14 + ihl : end])
            icmp[0] = 0
            icmp[2:4] = b"\x00\x00"
            c = _csum(icmp)
            icmp[2], icmp[3] = c >> 8, c & 0xFF
            return f[6:12] + f[0:6] + b"\x08\x00" + bytes(ip) + bytes(icmp)
        return None


def open_netdev(opts, context=None):
    """A stubdm.net network for one -netdev (its parsed options: type, id, ...).

    context: what the device model has to reach a backend (for netfront: the
    PV bus); unused until netfront lands. Raises NetdevError for a netdev
    type that can't be served.
    """
    kind = opts.get("type")
    if kind not in ("tap", "bridge", "user", "loopback"):
        raise NetdevError("-netdev %s: type %r can't be served (tap is what libxl writes)"
                          % (opts.get("id"), kind))
    bus = getattr(context, "pv", None)
    if bus is not None and kind == "tap":
        return _pv_nic(opts, bus, context)
    log.info("nics", "netdev %s (%s): no PV NIC to reach (no xenstore): served by the "
             "built-in peer" % (opts.get("id"), kind))
    return PeerNet()


def _vif_devid(opts):
    """Which of the stub domain's vifs carries this netdev: libxl gives the guest's NIC
    D the stub domain's vif D, names the netdev netD and its tap vif<guest>.<D>-emu."""
    ifname = opts.get("ifname", "")
    if ifname.startswith("vif") and ifname.endswith("-emu") and "." in ifname:
        d = ifname[:-4].split(".")[-1]
        if d.isdigit() and len(d) < 6:
            return int(d)
    nid = opts.get("id", "")
    if nid.startswith("net") and nid[3:].isdigit() and len(nid) < 9:
        return int(nid[3:])
    return None


def _pv_nic(opts, bus, context):
    devid = _vif_devid(opts)
    if devid is None:
        raise NetdevError("-netdev %s: no vif number in its id or ifname (libxl writes "
                          "id=netD,ifname=vif<guest>.<D>-emu)" % opts.get("id"))
    fe = bus.device("vif", devid)
    if fe is None:
        raise NetdevError("-netdev %s: the stub domain has no vif %d (device/vif/%d)"
                          % (opts.get("id"), devid, devid))
    needed = getattr(context, "needed_pv", None)
    if needed is not None and fe not in needed:
        needed.append(fe)
    return fe
