"""Device state for save/restore: every device's state as a separate, versioned record.

API (QMP's xen-save-devices-state / xen-load-devices-state and the xenstore command
protocol's "save" call these; the caller stops the guest and drains the disks first:
stubdm.main.DeviceModel.save_devices() does the draining and returns save_machine's
bytes, DeviceModel.load_devices("file:PATH") is -incoming's load):

    save_machine(machine) -> bytes
        Every device of a stubdm.machine.Machine as records, in the stream format below.
        Raises StateError if the machine is not at a point it can be saved from
        (busy_devices(machine) not empty: a disk request still in flight).
    load_machine(machine, data)
        Loads a stream into a freshly built Machine of the same configuration. The whole
        stream is read and checked first (checksum, versions, every record present and
        decodable); StateError, with the machine untouched, if any of that fails. Only
        then are the records applied; a device that refuses its record (another
        configuration) also raises StateError, and the caller must not start the guest.
    busy_devices(machine) -> [name, ...]
        Devices with disk requests in flight, NICs with frames on their netfront's TX
        ring (save_machine refuses while there are any).
    encode(value) -> bytes, decode(data) -> value
        The field encoding on its own (tests, host_sim's wrapper).

Stream format (all integers little-endian), version FORMAT_VERSION:

    magic    8 bytes  b"STUBDMDS"
    format   u16      FORMAT_VERSION; a newer one is refused
    count    u16      number of records
    count x  record:  u8 name length, name (ASCII), u16 record version,
                      u32 body length, body (one encoded dict of fields)
    crc      u32      CRC-32 (zlib's) of every byte before it

A record's version is the device's own (its class's STATE_VERSION, 1 if it has
none): a reader refuses a record newer than the device it would load it into.
Fields are a tagged binary encoding rather than JSON: device state is mostly
bytes (config spaces, FIFOs, sector buffers), which JSON would have to inflate by
a third or more in base64 and a MicroPython JSON reader would copy again; the
tags are N None, T/F booleans, i int (zigzag LEB128, any size), b bytes, s str
(UTF-8), l list, d dict (str keys, written sorted so that equal state gives equal
bytes). No pickle: the stream comes from outside and is read by both runtimes
(../shared/PORTABLE_PYTHON.md).
"""
import struct

try:
    from binascii import crc32 as _crc32
except ImportError:  # the stub domain's port builds MicroPython without binascii
    _crc32 = None

MAGIC = b"STUBDMDS"
FORMAT_VERSION = 1
_HEADER = "<8sHH"
_HEADER_SIZE = 12
# Bounds a hostile stream can't push a reader past.
MAX_DEPTH = 8
MAX_RECORDS = 1024


class StateError(Exception):
    pass


_CRC_TABLE = None


def crc32(data):
    """CRC-32 (IEEE 802.3, as zlib's and binascii's)."""
    if _crc32 is not None:
        return _crc32(data) & 0xFFFFFFFF
    global _CRC_TABLE
    if _CRC_TABLE is None:
        t = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
            t.append(c)
        _CRC_TABLE = t
    t = _CRC_TABLE
    c = 0xFFFFFFFF
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# ---- the field encoding ------------------------------------------------------


def _varint(out, n):
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _enc(out, v, depth):
    if depth > MAX_DEPTH:
        raise StateError("state nested too deeply")
    if v is None:
        out.append(0x4E)  # N
    elif v is True:
        out.append(0x54)  # T
    elif v is False:
        out.append(0x46)  # F
    elif isinstance(v, int):
        out.append(0x69)  # i
        _varint(out, (v << 1) if v >= 0 else ((-v) << 1) - 1)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        out.append(0x62)  # b
        _varint(out, len(v))
        out.extend(v)
    elif isinstance(v, str):
        b = v.encode()
        out.append(0x73)  # s
        _varint(out, len(b))
        out.extend(b)
    elif isinstance(v, (list, tuple)):
        out.append(0x6C)  # l
        _varint(out, len(v))
        for x in v:
            _enc(out, x, depth + 1)
    elif isinstance(v, dict):
        out.append(0x64)  # d
        keys = sorted(v)
        _varint(out, len(keys))
        for k in keys:
            if not isinstance(k, str):
                raise StateError("state keys must be strings: %r" % (k,))
            b = k.encode()
            _varint(out, len(b))
            out.extend(b)
            _enc(out, v[k], depth + 1)
    else:
        raise StateError("can't save a %s" % type(v).__name__)


def encode(value):
    out = bytearray()
    _enc(out, value, 0)
    return bytes(out)


class _Reader:
    def __init__(self, data, pos, end):
        self.d = data
        self.pos = pos
        self.end = end

    def byte(self):
        if self.pos >= self.end:
            raise StateError("truncated")
        b = self.d[self.pos]
        self.pos += 1
        return b

    def varint(self):
        n = 0
        shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 70000:  # bigger than any field: a corrupt stream
                raise StateError("integer too long")

    def take(self, n):
        if n > self.end - self.pos:
            raise StateError("truncated")
        b = bytes(self.d[self.pos:self.pos + n])
        self.pos += n
        return b

    def value(self, depth):
        if depth > MAX_DEPTH:
            raise StateError("nested too deeply")
        t = self.byte()
        if t == 0x4E:
            return None
        if t == 0x54:
            return True
        if t == 0x46:
            return False
        if t == 0x69:
            z = self.varint()
            return -((z + 1) >> 1) if z & 1 else z >> 1
        if t == 0x62:
            return self.take(self.varint())
        if t == 0x73:
            try:
                return self.take(self.varint()).decode()
            except UnicodeError:
                raise StateError("bad string")
        if t == 0x6C:
            n = self.varint()
            if n > self.end - self.pos:  # every item takes a byte at least
                raise StateError("truncated")
            return [self.value(depth + 1) for _ in range(n)]
        if t == 0x64:
            n = self.varint()
            if n > self.end - self.pos:
                raise StateError("truncated")
            d = {}
            for _ in range(n):
                try:
                    k = self.take(self.varint()).decode()
                except UnicodeError:
                    raise StateError("bad key")
                d[k] = self.value(depth + 1)
            return d
        raise StateError("unknown tag %#x" % t)


def decode(data):
    r = _Reader(data, 0, len(data))
    v = r.value(0)
    if r.pos != r.end:
        raise StateError("%d bytes after the value" % (r.end - r.pos))
    return v


# ---- the stream of records ---------------------------------------------------


def write_records(records):
    """records: [(name, version, fields dict)] -> the stream's bytes."""
    if len(records) > MAX_RECORDS:
        raise StateError("too many records")
    out = bytearray(struct.pack(_HEADER, MAGIC, FORMAT_VERSION, len(records)))
    for name, version, fields in records:
        nb = name.encode()
        body = encode(fields)
        out.extend(struct.pack("<B", len(nb)))
        out.extend(nb)
        out.extend(struct.pack("<HI", version & 0xFFFF, len(body)))
        out.extend(body)
    out.extend(struct.pack("<I", crc32(out)))
    return bytes(out)


def read_records(data):
    """The stream's records as [(name, version, fields)], or StateError saying what
    is wrong with it (too short, not a device state stream, newer format, checksum)."""
    n = len(data)
    if n < _HEADER_SIZE + 4:
        raise StateError("device state: %d bytes, too short to be a stream (truncated?)" % n)
    magic, fmt, count = struct.unpack_from(_HEADER, data, 0)
    if magic != MAGIC:
        raise StateError("device state: not a stubdm device state stream (bad magic)")
    if fmt > FORMAT_VERSION:
        raise StateError("device state: format version %d is newer than this stubdm's (%d)"
                         % (fmt, FORMAT_VERSION))
    if fmt < 1:
        raise StateError("device state: format version %d is invalid" % fmt)
    crc = struct.unpack_from("<I", data, n - 4)[0]
    if crc32(memoryview(data)[0:n - 4]) != crc:
        raise StateError("device state: checksum mismatch: the stream is truncated or "
                         "corrupted")
    if count > MAX_RECORDS:
        raise StateError("device state: %d records" % count)
    pos = _HEADER_SIZE
    end = n - 4
    out = []
    for _ in range(count):
        r = _Reader(data, pos, end)
        name_len = r.byte()
        try:
            name = r.take(name_len).decode()
        except UnicodeError:
            raise StateError("device state: a record name is not text")
        hdr = r.take(6)
        version, size = struct.unpack("<HI", hdr)
        if size > end - r.pos:
            raise StateError("device state: record %s is truncated" % name)
        body = _Reader(data, r.pos, r.pos + size)
        try:
            fields = body.value(0)
        except StateError as e:
            raise StateError("device state: record %s: %s" % (name, e))
        if body.pos != body.end or not isinstance(fields, dict):
            raise StateError("device state: record %s is malformed" % name)
        out.append((name, version, fields))
        pos = r.pos + size
    if pos != end:
        raise StateError("device state: %d bytes after the last record" % (end - pos))
    return out


# ---- the machine's devices as records ---------------------------------------


def _records_of(machine):
    """(record name, device) for every device with state, in a fixed order."""
    out = []
    for devfn in machine.pci.devfns():
        out.append(("pci/%02x.%d" % (devfn >> 3, devfn & 7), machine.pci.find(devfn)))
    for i in range(len(machine.uarts)):
        out.append(("uart/%d" % i, machine.uarts[i]))
    for name, attr in (("i8042", "i8042"), ("port92", "port92"),
                       ("pci-host", "host_ports"), ("reset-control", "reset_control")):
        dev = getattr(machine, attr, None)
        if dev is not None:
            out.append((name, dev))
    return out


def busy_devices(machine):
    """Devices with disk requests in flight, and NICs whose frames are still on
    their PV network's TX ring: drain them (serve the events) first."""
    out = []
    for nic in getattr(machine, "nics", ()):
        in_flight = getattr(nic.net, "tx_in_flight", None)  # netfront's; MemoryNet has none
        if in_flight is not None and in_flight():
            out.append(nic.name)
    ide = machine.ide
    if ide is not None:
        for ch in ide.channels:
            for d in ch.drives:
                if getattr(d, "busy", False) and getattr(d, "dma_pending", None) is None:
                    out.append(d.name)
    ahci = machine.ahci
    if ahci is not None and ahci.busy():
        out.append(ahci.name)
    return out


def save_machine(machine):
    busy = busy_devices(machine)
    if busy:
        raise StateError("can't save: requests in flight on " + ", ".join(busy))
    records = [("machine", 1, {"suspended": bool(machine.suspended)})]
    for name, dev in _records_of(machine):
        if not hasattr(dev, "state") or not hasattr(dev, "load_state"):
            raise StateError("can't save %s (%s): it has no state record"
                             % (name, getattr(dev, "name", type(dev).__name__)))
        try:
            fields = dev.state()
        except ValueError as e:
            raise StateError("can't save %s: %s" % (name, e))
        records.append((name, getattr(dev, "STATE_VERSION", 1), fields))
    return write_records(records)


def load_machine(machine, data):
    records = read_records(data)  # all of it read and checked before any device changes
    devices = _records_of(machine)
    want = ["machine"] + [n for n, _ in devices]
    have = [r[0] for r in records]
    if have != want:
        missing = [n for n in want if n not in have]
        extra = [n for n in have if n not in want]
        raise StateError("device state is for another machine: %s%s" % (
            "missing " + ", ".join(missing) if missing else "",
            ("; " if missing and extra else "") + ("unknown " + ", ".join(extra[:8])
                                                   if extra else "")))
    by_name = {}
    for name, version, fields in records:
        by_name[name] = (version, fields)
    if by_name["machine"][0] > 1:
        raise StateError("device state: record machine is version %d, newer than this "
                         "stubdm's (1)" % by_name["machine"][0])
    for name, dev in devices:
        mine = getattr(dev, "STATE_VERSION", 1)
        if by_name[name][0] > mine:
            raise StateError("device state: record %s is version %d, newer than this "
                             "stubdm's (%d)" % (name, by_name[name][0], mine))
    for name, dev in devices:
        try:
            dev.load_state(by_name[name][1])
        except Exception as e:  # the fields come from outside: whatever they make fail
            raise StateError("device state: record %s refused: %s: %s"
                             % (name, type(e).__name__, e))
    machine.suspended = bool(by_name["machine"][1].get("suspended", False))
    # What waited for the guest (a DMA set up, the bus master not yet started) waits again.
    for _name, dev in devices:
        resume = getattr(dev, "resume", None)
        if resume is not None:
            try:
                resume()
            except Exception as e:
                raise StateError("device state: %s can't resume: %s: %s"
                                 % (_name, type(e).__name__, e))
