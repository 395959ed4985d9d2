# Internet checksums (RFC 1071) for the network paths: the NICs' checksum
# offload and TSO, netfront's csum_blank packets. Portable; the sum runs over
# 16-bit words unpacked in one struct call, not byte by byte.
import struct


def csum(data, start=0):
    """The Internet checksum of data (one's complement sum), seeded with start."""
    n = len(data)
    total = start
    if n >= 2:
        total += sum(struct.unpack(">%dH" % (n // 2), data[:n - n % 2]))
    if n % 2:
        total += data[n - 1] << 8
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def fill_checksum(frame):
    """Fill in the TCP or UDP checksum of an Ethernet frame (a bytearray) whose
    checksum was left to the receiver (csum_blank). IPv4 and IPv6 without extension
    headers; anything else is left alone. Returns True if it filled one in."""
    if len(frame) < 14:
        return False
    etype = (frame[12] << 8) | frame[13]
    l3 = 14
    if etype == 0x8100 and len(frame) >= 18:  # one VLAN tag
        etype = (frame[16] << 8) | frame[17]
        l3 = 18
    if etype == 0x0800 and len(frame) >= l3 + 20:
        ihl = (frame[l3] & 0xF) * 4
        proto = frame[l3 + 9]
        tot = (frame[l3 + 2] << 8) | frame[l3 + 3]
        l4 = l3 + ihl
        end = l3 + tot
        if ihl < 20 or end > len(frame) or end < l4:
            return False
        pseudo = csum(frame[l3 + 12:l3 + 20]) + proto + (end - l4)
    elif etype == 0x86DD and len(frame) >= l3 + 40:
        proto = frame[l3 + 6]
        plen = (frame[l3 + 4] << 8) | frame[l3 + 5]
        l4 = l3 + 40
        end = l4 + plen
        if end > len(frame):
            return False
        pseudo = csum(frame[l3 + 8:l3 + 40]) + proto + plen
    else:
        return False
    if proto == 6:
        off = l4 + 16
    elif proto == 17:
        off = l4 + 6
    else:
        return False
    if off + 2 > end:
        return False
    frame[off] = 0
    frame[off + 1] = 0
    c = (~csum(frame[l4:end], pseudo)) & 0xFFFF
    if proto == 17 and c == 0:
        c = 0xFFFF
    frame[off] = c >> 8
    frame[off + 1] = c & 0xFF
    return True
