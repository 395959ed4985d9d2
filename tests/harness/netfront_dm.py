# A device model with a test "NIC" on its PV NICs, for tests/test_netfront.py:
# stubdm's own DeviceModel, plus, on each vif frontend, a responder that uses
# netfront exactly as an emulated NIC does (stubdm/net.py): it answers ARP for
# its address and ICMP echo requests, and counts what it saw. Writing
# nic-pause = 1 to the frontend's node makes it refuse the next frame (the
# NIC has no room: back-pressure); nic-resume = 1 makes it take it after all.
# Runs on CPython and MicroPython.
import struct
import sys

from tests.harness.common import run_with_drivers

MY_IP = bytes([10, 0, 2, 15])


def ip_csum(data):
    n = len(data)
    total = sum(struct.unpack(">%dH" % (n // 2), data[:n - n % 2]))
    if n % 2:
        total += data[n - 1] << 8
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


class Responder:
    def __init__(self, fe):
        self.fe = fe
        self.seen = 0
        self.replies = 0
        self.refuse = 0
        self.pending = []
        fe.set_receiver(self.receive)
        fe.on_tx_room = self.flush
        fe.xs.watch(fe.path + "/nic-pause", "harness-pause:" + fe.devid, self.pause)
        fe.xs.watch(fe.path + "/nic-resume", "harness-resume:" + fe.devid, self.resume)

    def pause(self, _path):
        n = self.fe.xs.read_int(self.fe.path + "/nic-pause", 0, 1000)
        if n:
            self.refuse = n
            self.fe.xs.rm(self.fe.path + "/nic-pause")

    def resume(self, _path):
        if self.fe.xs.read(self.fe.path + "/nic-resume"):
            self.fe.xs.rm(self.fe.path + "/nic-resume")
            self.refuse = 0
            self.fe.rx_resume()

    def receive(self, mv):
        if self.refuse:
            self.fe.xs.write(self.fe.path + "/nic-refused", "yes")
            return False
        frame = bytes(mv)
        self.seen += 1
        reply = self.answer(frame)
        if reply is not None:
            self.pending.append(reply)
            self.flush()
        self.fe.xs.write(self.fe.path + "/nic-stats", "%d %d %s" % (
            self.seen, self.replies, self.fe.mac.hex() if self.fe.mac else "-"))
        return True

    def flush(self):
        while self.pending:
            if not self.fe.transmit(self.pending[0]):
                return
            self.pending.pop(0)
            self.replies += 1
        # Anything held back while we refused: take it now.
        self.fe.rx_resume()

    def answer(self, f):
        mac = self.fe.mac
        if mac is None or len(f) < 42:
            return None
        etype = (f[12] << 8) | f[13]
        if etype == 0x0806 and f[20:22] == b"\x00\x01" and f[38:42] == MY_IP:
            return (f[6:12] + mac + b"\x08\x06" + f[14:20] + b"\x00\x02" + mac + MY_IP
                    + f[22:28] + f[28:32])
        if etype == 0x0800 and f[23] == 1 and f[30:34] == MY_IP:
            ihl = (f[14] & 0xF) * 4
            tot = (f[16] << 8) | f[17]
            ip = bytearray(f[14:14 + ihl])
            ip[12:16], ip[16:20] = f[30:34], f[26:30]
            ip[10:12] = b"\x00\x00"
            c = ip_csum(ip)
            ip[10], ip[11] = c >> 8, c & 0xFF
            icmp = bytearray(f[14 + ihl:14 + tot])
            if icmp[0] != 8:
                return None
            icmp[0] = 0
            icmp[2:4] = b"\x00\x00"
            c = ip_csum(icmp)
            icmp[2], icmp[3] = c >> 8, c & 0xFF
            return f[6:12] + mac + b"\x08\x00" + bytes(ip) + bytes(icmp)
        return None


sys.exit(run_with_drivers("vif", Responder))
