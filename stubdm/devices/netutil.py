# What NICs that offload checksums and TCP segmentation do before a frame
# goes out (stubdm/net.py takes complete frames only): the Internet checksum
# (RFC 1071), IPv4/IPv6 and TCP/UDP headers located in a frame, and TSO
# segmentation. Used by rtl8139 (C+ mode) and e1000.
#
# The ones'-complement sum is the glue's C (inet_sum, both runtimes); without
# a glue, py_ones_sum: the sum of big-endian 16-bit words equals the frame's
# bytes read as one big-endian integer modulo 0xffff (2^16 = 1 mod 0xffff),
# no per-byte or per-word Python loop (tests prove the two equal).
from stubdm import log
from stubdm.compat import const
from stubdm.hypervisor import glue
from stubdm.net import TX_CSUM, TX_CSUM6, TX_TSO4

_c_sum = getattr(glue, "inet_sum", None) if glue is not None else None

ETH_HLEN = const(14)
ETH_P_IP = const(0x0800)
ETH_P_IPV6 = const(0x86DD)
ETH_P_8021Q = const(0x8100)
IPPROTO_TCP = const(6)
IPPROTO_UDP = const(17)
TCP_FIN = const(0x01)
TCP_PSH = const(0x08)


def ones_sum(buf, start, end):
    """The ones'-complement sum (0..0xffff, 0 only for all-zero data) of buf[start:end]
    (0 <= start; end past the buffer is its end, as a slice's)."""
    n = len(buf)
    if end > n:
        end = n
    if end <= start:
        return 0
    if _c_sum is not None:
        return _c_sum(buf, start, end)
    return py_ones_sum(buf, start, end)


def py_ones_sum(buf, start, end):
    """ones_sum in Python alone (0 <= start < end <= len(buf))."""
    v = int.from_bytes(bytes(buf[start:end]), "big")
    if (end - start) & 1:
        v <<= 8  # an odd byte is the high half of a last word
    if v == 0:
        return 0
    s = v % 0xFFFF
    return 0xFFFF if s == 0 else s


def add(a, b):
    s = a + b
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def get16(buf, off):
    return (buf[off] << 8) | buf[off + 1]


def put16(buf, off, v):
    buf[off] = (v >> 8) & 0xFF
    buf[off + 1] = v & 0xFF


def get32(buf, off):
    return (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]


def put32(buf, off, v):
    buf[off] = (v >> 24) & 0xFF
    buf[off + 1] = (v >> 16) & 0xFF
    buf[off + 2] = (v >> 8) & 0xFF
    buf[off + 3] = v & 0xFF


def put_sum(buf, css, cso, cse):
    """e1000's checksum insertion (8254x SDM 3.3.6): the sum of bytes css..cse
    (inclusive; cse 0 = to the end) complemented into the 16 bits at cso. The
    driver has left the pseudo-header's sum in the field. Out-of-frame offsets
    insert nothing, as QEMU's e1000 (a guest error the caller may log)."""
    n = len(buf)
    end = n if cse == 0 or cse >= n else cse + 1
    if css >= end or cso + 2 > n:
        return False
    put16(buf, cso, (~ones_sum(buf, css, end)) & 0xFFFF)
    return True


class Headers:
    """Where an Ethernet frame's IP and TCP/UDP headers are, if it has them."""

    def __init__(self):
        self.ip = -1  # offset of the IP header
        self.v4 = False
        self.l4 = -1  # offset of the TCP/UDP header
        self.proto = -1
        self.l4_end = 0  # end of the IP datagram in the frame


def parse(frame):
    """Headers of an IPv4 or IPv6 (no extension headers) frame, one 802.1Q tag
    allowed; None when the frame is neither or is truncated."""
    n = len(frame)
    if n < ETH_HLEN:
        return None
    off = 12
    etype = get16(frame, off)
    if etype == ETH_P_8021Q:
        off += 4
        if n < off + 2:
            return None
        etype = get16(frame, off)
    ip = off + 2
    h = Headers()
    h.ip = ip
    if etype == ETH_P_IP:
        if n < ip + 20 or frame[ip] >> 4 != 4:
            return None
        ihl = (frame[ip] & 0xF) * 4
        total = get16(frame, ip + 2)
        if ihl < 20 or n < ip + ihl or total < ihl:
            return None
        h.v4 = True
        h.proto = frame[ip + 9]
        h.l4 = ip + ihl
        h.l4_end = min(n, ip + total)
        if get16(frame, ip + 6) & 0x3FFF:  # a fragment: no L4 header to fill
            h.proto = -1
    elif etype == ETH_P_IPV6:
        if n < ip + 40 or frame[ip] >> 4 != 6:
            return None
        h.proto = frame[ip + 6]
        h.l4 = ip + 40
        h.l4_end = min(n, ip + 40 + get16(frame, ip + 4))
    else:
        return None
    return h


def pseudo_sum(frame, h, l4_len):
    if h.v4:
        s = ones_sum(frame, h.ip + 12, h.ip + 20)
    else:
        s = ones_sum(frame, h.ip + 8, h.ip + 40)
    return add(add(s, h.proto), l4_len)


def l4_sum(frame, h):
    """The ones'-complement sum of the TCP/UDP segment and its pseudo-header
    (0xffff when a received segment's checksum is right). An IPv4 header
    without options ends with the addresses, right before the segment: one
    sum covers both (the 8 address bytes keep the words aligned)."""
    n = h.l4_end - h.l4
    if h.v4 and h.l4 == h.ip + 20:
        return add(ones_sum(frame, h.ip + 12, h.l4_end), h.proto + n)
    return add(pseudo_sum(frame, h, n), ones_sum(frame, h.l4, h.l4_end))


def fill_ip_checksum(frame, h):
    if not h.v4:
        return
    ihl = h.l4 - h.ip
    put16(frame, h.ip + 10, 0)
    put16(frame, h.ip + 10, (~ones_sum(frame, h.ip, h.ip + ihl)) & 0xFFFF)


def csum_offset(proto):
    if proto == IPPROTO_TCP:
        return 16
    if proto == IPPROTO_UDP:
        return 6
    return -1


def fill_l4_checksum(frame, h):
    """The whole TCP or UDP checksum, pseudo-header included (what an RTL8139C+
    computes for TCPCS/UDPCS). False if the frame has no such header."""
    co = csum_offset(h.proto)
    if co < 0 or h.l4 + co + 2 > h.l4_end:
        return False
    put16(frame, h.l4 + co, 0)
    s = l4_sum(frame, h)
    c = (~s) & 0xFFFF
    if c == 0 and h.proto == IPPROTO_UDP:
        c = 0xFFFF  # UDP sends a zero checksum as all ones (RFC 768)
    put16(frame, h.l4 + co, c)
    return True


def segment(frame, h, hdr_len, mss, limit):
    """TSO: the frames a TCP (or UDP) payload of `frame` is cut into, each with
    the first `hdr_len` bytes as its headers and at most `mss` bytes of
    payload; IP length and ID, TCP sequence and flags (FIN and PSH only on the
    last) and every checksum filled in. None if the headers don't allow it or
    more than `limit` frames would result."""
    n = len(frame)
    co = csum_offset(h.proto)
    if co < 0 or mss <= 0 or hdr_len < h.l4 + co + 2 or hdr_len >= n:
        return None
    tcp = h.proto == IPPROTO_TCP
    if tcp and hdr_len < h.l4 + 20:
        return None
    count = (n - hdr_len + mss - 1) // mss
    if count > limit:
        return None
    out = []
    seq = get32(frame, h.l4 + 4) if tcp else 0
    ip_id = get16(frame, h.ip + 4) if h.v4 else 0
    pos = hdr_len
    i = 0
    while pos < n:
        take = min(mss, n - pos)
        seg = bytearray(hdr_len + take)
        seg[0:hdr_len] = frame[0:hdr_len]
        seg[hdr_len:] = frame[pos : pos + take]
        if h.v4:
            put16(seg, h.ip + 2, len(seg) - h.ip)
            put16(seg, h.ip + 4, (ip_id + i) & 0xFFFF)
        else:
            put16(seg, h.ip + 4, len(seg) - h.ip - 40)
        if tcp:
            put32(seg, h.l4 + 4, (seq + pos - hdr_len) & 0xFFFFFFFF)
            if pos + take < n:
                seg[h.l4 + 13] &= ~(TCP_FIN | TCP_PSH) & 0xFF
        else:
            put16(seg, h.l4 + 4, len(seg) - h.l4)
        sh = Headers()
        sh.ip, sh.v4, sh.l4, sh.proto, sh.l4_end = h.ip, h.v4, h.l4, h.proto, len(seg)
        fill_ip_checksum(seg, sh)
        fill_l4_checksum(seg, sh)
        out.append(seg)
        pos += take
        i += 1
    return out


def tcp_hdr_len(frame, h):
    """The TCP header's length (its data offset), 0 if it is not a whole one."""
    if h.proto != IPPROTO_TCP or h.l4 + 20 > h.l4_end:
        return 0
    n = (frame[h.l4 + 12] >> 4) * 4
    return n if n >= 20 and h.l4 + n <= h.l4_end else 0


def finish(frame, offload, mss):
    """What the network makes of a frame handed over with stubdm.net's TX_*
    offload (a bytearray): the complete frames, or None if the frame is not
    one that offload describes."""
    h = parse(frame)
    if h is None or csum_offset(h.proto) < 0:
        return None
    if offload & (TX_CSUM | TX_CSUM6):
        if not fill_l4_checksum(frame, h):
            return None
        return [frame]
    hl = tcp_hdr_len(frame, h)
    if not hl or h.v4 != bool(offload & TX_TSO4):
        return None
    if len(frame) - h.l4 - hl <= mss:  # one segment: just the checksum
        fill_l4_checksum(frame, h)
        return [frame]
    return segment(frame, h, h.l4 + hl, mss, 1 << 16)


def ether_crc(data):
    """The Ethernet CRC-32 as a big-endian register (Linux's ether_crc): bits
    of each byte in wire order (LSB first), no final inversion. NICs hash
    multicast addresses with its top bits."""
    crc = 0xFFFFFFFF
    for b in data:
        for _ in range(8):
            bit = ((crc >> 31) ^ b) & 1
            crc = (crc << 1) & 0xFFFFFFFF
            b >>= 1
            if bit:
                crc ^= 0x04C11DB7
    return crc


class Eeprom93c46:
    """A 93C46 Microwire serial EEPROM of 64 16-bit words (6 address bits), as
    both NICs' drivers bit-bang it: chip select, a clock, data in sampled on
    the rising edge, data out (a dummy 0 after the address, then D15..D0, the
    next word following on a sequential read). Opcodes after the start bit:
    10 READ, 01 WRITE, 11 ERASE, 00 11xxxx EWEN, 00 00xxxx EWDS, 00 10xxxx
    ERAL, 00 01xxxx WRAL (Microchip 93C46 datasheet). Writes need EWEN first
    and complete at once."""

    WORDS = const(64)
    ADDR_BITS = const(6)

    def __init__(self, words):
        self.words = [w & 0xFFFF for w in words] + [0xFFFF] * (64 - len(words))
        self.cs = 0
        self.sk = 0
        self.do = 1
        self.write_enabled = False
        self._idle()

    def _idle(self):
        self.state = 0  # 0 waiting for start bit, 1 command, 2 read out, 3 write data
        self.bits = 0
        self.value = 0
        self.addr = 0
        self.shift = 0

    def pins(self, cs, sk, di):
        """New pin levels from the host; returns DO."""
        if not cs:
            if self.cs:
                self._idle()
                self.do = 1  # ready/busy: ready
            self.cs = 0
            self.sk = sk
            return self.do
        self.cs = 1
        rising = sk and not self.sk
        self.sk = sk
        if rising:
            self._clock(1 if di else 0)
        return self.do

    def _clock(self, di):
        st = self.state
        if st == 0:
            if di:
                self.state = 1
                self.bits = 0
                self.value = 0
            return
        if st == 1:
            self.value = (self.value << 1) | di
            self.bits += 1
            if self.bits == 2 + self.ADDR_BITS:
                self._command(self.value >> self.ADDR_BITS, self.value & 0x3F)
            return
        if st == 2:
            self.shift -= 1
            if self.shift < 0:  # sequential read: the next word
                self.addr = (self.addr + 1) & 0x3F
                self.shift = 15
            self.do = (self.words[self.addr] >> self.shift) & 1
            return
        if st == 3:
            self.value = (self.value << 1) | di
            self.bits += 1
            if self.bits == 16:
                if self.write_enabled:
                    if self.addr < 0:
                        self.words = [self.value] * 64
                    else:
                        self.words[self.addr] = self.value
                self.do = 1
                self.state = 4
            return
        # state 4: command done, ignore clocks until CS drops

    def _command(self, op, addr):
        if op == 2:  # READ
            self.state = 2
            self.addr = addr
            self.shift = 16
            self.do = 0  # the dummy bit
        elif op == 1:  # WRITE
            self.state = 3
            self.addr = addr
            self.bits = 0
            self.value = 0
        elif op == 3:  # ERASE
            if self.write_enabled:
                self.words[addr] = 0xFFFF
            self.state = 4
        else:
            sub = addr >> 4
            if sub == 3:
                self.write_enabled = True
            elif sub == 0:
                self.write_enabled = False
            elif sub == 2 and self.write_enabled:  # ERAL
                self.words = [0xFFFF] * 64
            elif sub == 1:  # WRAL
                self.state = 3
                self.addr = -1
                self.bits = 0
                self.value = 0
                return
            self.state = 4


def saved_txq(txq, name):
    """A NIC's frames waiting for the network as its saved record keeps them:
    an offloaded one ((frame, offload, mss)) finished into its segments, so the
    record and the network it is restored onto need not know of offloads."""
    out = []
    for e in txq:
        if isinstance(e, tuple):
            segs = finish(bytearray(e[0]), e[1], e[2])
            if segs is None:
                log.guest_error(name, "an offloaded TX frame could not be saved")
                continue
            out.extend(bytes(f) for f in segs)
        else:
            out.append(e)
    return out
