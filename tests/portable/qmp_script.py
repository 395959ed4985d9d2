# stubdm.vchan's server and stubdm.qmp's session on a fake hypervisor and
# xenstore, with the client's part played by this script writing the shared
# page with struct: a QMP session (greeting, capabilities, commands, errors),
# bytes across the ring's wrap, the strict JSON check, and hostile clients
# (indices out of range: the ring is dropped and a new one offered). Compared
# between CPython and MicroPython by tests/test_micropython_portable.py.
import json
import struct

from stubdm import log
from stubdm import qjson
from stubdm import qmp as Q
from stubdm import vchan as V

log.verbose = 0
M = 0xFFFFFFFF


class Shared:
    def __init__(self, refs, n):
        self.refs = refs
        self.mem = memoryview(bytearray(4096 * n))

    def unshare(self):
        self.mem = None


class Hyp:
    def __init__(self):
        self.next_ref = 8
        self.next_port = 1
        self.notifies = 0
        self.unbound = []

    def share_pages(self, remote, count, writable=True):
        refs = list(range(self.next_ref, self.next_ref + count))
        self.next_ref += count
        return Shared(refs, count)

    def bind_unbound_port(self, remote):
        self.next_port += 1
        return self.next_port

    def unbind(self, port):
        self.unbound.append(port)

    def notify(self, port):
        self.notifies += 1

    def barrier(self):
        pass

    def atomic_add32(self, word, n):
        struct.pack_into("<I", word, 0, (struct.unpack_from("<I", word, 0)[0] + n) & M)


class Xs:
    def __init__(self):
        self.kv = {"domid": "2"}
        self.perms = {}

    def read_int(self, path, lo, hi, tx=0):
        v = self.kv.get(path)
        return int(v) if v is not None else None

    def write(self, path, value, tx=0):
        self.kv[path] = str(value)

    def set_perms(self, path, perms, tx=0):
        self.perms[path] = perms

    def rm(self, path, tx=0):
        for k in list(self.kv):
            if k.startswith(path):
                del self.kv[k]

    def transaction(self, body, tries=16):
        return body(1)


class Client:
    """The client end, by hand (what host_sim/vchan.py does on CPython)."""

    def __init__(self, srv):
        self.srv = srv
        self.mem = srv.page.mem
        self.wr = struct.unpack_from("<I", self.mem, V.OFF_LEFT_PROD)[0]
        self.rd = struct.unpack_from("<I", self.mem, V.OFF_RIGHT_CONS)[0]
        self.mem[V.OFF_CLI_LIVE] = V.LIVE_OPEN
        self.mem[V.OFF_SRV_NOTIFY] |= V.NOTIFY_WRITE
        srv.on_event()

    def send(self, data):
        buf = self.mem[1024:2048]
        for c in data:
            buf[self.wr & 1023] = c
            self.wr = (self.wr + 1) & M
        struct.pack_into("<I", self.mem, V.OFF_LEFT_PROD, self.wr)
        self.srv.on_event()

    def recv(self):
        prod = struct.unpack_from("<I", self.mem, V.OFF_RIGHT_PROD)[0]
        buf = self.mem[2048:4096]
        out = bytearray()
        while self.rd != prod:
            out.append(buf[self.rd & 2047])
            self.rd = (self.rd + 1) & M
        struct.pack_into("<I", self.mem, V.OFF_RIGHT_CONS, self.rd)
        self.srv.on_event()
        return bytes(out)


class Machine:
    class Pci:
        def devfns(self):
            return [0, 8]

        def config_read(self, devfn, off, size):
            return (0x8086 if off == 0 else devfn) & ((1 << (8 * size)) - 1)

    def __init__(self):
        self.pci = Machine.Pci()
        self.suspended = False


class Dm:
    def __init__(self):
        self.machine = Machine()
        self.running = True
        self.dirty_log = False

    def media(self):
        return []

    def is_running(self):
        return self.running

    def pause(self):
        self.running = False

    def resume(self):
        self.running = True

    def machine_suspended(self):
        return False

    def serial_specs(self):
        return ["/dev/hvc3"]


def replies(text):
    out = []
    for line in text.split(b"\r\n"):
        if line:
            obj = json.loads(line)
            if "timestamp" in obj:
                obj["timestamp"] = "T"
            out.append(obj)
    return out


def show(objs):
    for o in objs:
        print(json.dumps(_sorted(o)))


def _sorted(o):
    # MicroPython's dicts have no order: print them with sorted keys
    if isinstance(o, dict):
        return [[k, _sorted(o[k])] for k in sorted(o)]
    if isinstance(o, list):
        return [_sorted(x) for x in o]
    return o


hyp = Hyp()
xs = Xs()
path = "/local/domain/2/device-model/1/qmp-vchan"
srv = Q.QmpServer(hyp, xs, path, Dm(), remote=0)
print("published", xs.kv.get(path + "/ring-ref"), xs.kv.get(path + "/event-channel"),
      xs.perms.get(path + "/ring-ref"))
page = srv.chan.page.mem
print("orders", struct.unpack_from("<HH", page, V.OFF_LEFT_ORDER), "live", page[V.OFF_CLI_LIVE],
      page[V.OFF_SRV_LIVE], "notify", page[V.OFF_CLI_NOTIFY])
c = Client(srv.chan)
show(replies(c.recv()))
for req in (b'{"execute": "query-status"}', b'{"execute":"qmp_capabilities"}\n',
            b'{"execute": "query-status", "id": 1}', b'{"execute": "stop"}',
            b'{"execute": "query-status"}', b'{"execute": "cont", "id": [1, {"a": "b"}]}',
            b'{"execute": "query-pci"}', b'{"execute": "query-chardev"}',
            b'{"execute" "query-status"}', b'{"execute": "query-status",}', b'42\n',
            b'{"execute": "nope"}', b'{"execute": "eject"}', b'{"execute": "eject", "id": 1}',
            b'{"execute": "remove-fd", "arguments": {"fdset-id": 3}}',
            b'{"execute": "query-fdsets"}', b'{"execute": "add-fd"}',
            b'{"execute": "xen-set-global-dirty-log", "arguments": {"enable": 1}}',
            b'{"execute": "query-status", "arguments": {"x": 1}}'):
    c.send(req)
    show(replies(c.recv()))
# Many requests in one write, split at odd places, past the ring's wrap.
blob = b'{"execute": "query-status", "id": "\\"}{"}' * 40
for i in range(0, len(blob), 333):
    part = blob[i:i + 333]
    c.send(part)
    r = replies(c.recv())
    print("chunk", i, len(r), r[0]["id"] if r else None)
ix = struct.unpack_from("<IIII", page, 0)
# (the right ring's count depends on the events' timestamps: only that it is drained)
print("indices", ix[0], ix[1], ix[2] == ix[3])
# Strict JSON where MicroPython's parser is lax.
for t in (b'{"a": 1}', b' ["x\\u00e9\\n\\"", -0, 12e3, true, null, {}] ',
          b'{"a" 1}', b'{"a": [1 2]}', b'{"a": 1,}', b'{"a": 01}', b'[' * 40):
    try:
        print("json ok", t, qjson.dumps(qjson.loads(t)))
    except ValueError:
        print("json refused", t)

# Hostile: a left prod far past our cons.
struct.pack_into("<I", page, V.OFF_LEFT_PROD, (c.wr + 5000) & M)
srv.on_port(srv.chan.port)
print("dropped", srv.chan.drops, "srv_live", page[V.OFF_SRV_LIVE], "unbound", hyp.unbound,
      "new ring", xs.kv.get(path + "/ring-ref"), "new port", srv.port)
page = srv.chan.page.mem
c = Client(srv.chan)
show(replies(c.recv()))
c.send(b'{"execute": "qmp_capabilities"}')
show(replies(c.recv()))
# Hostile: a right cons beyond what we produced.
struct.pack_into("<I", page, V.OFF_RIGHT_CONS, (c.rd + 100000) & M)
c.send(b'{"execute": "query-status"}')
print("dropped", srv.chan.drops, "new ring", xs.kv.get(path + "/ring-ref"))
# A client that goes: the next gets a new greeting on the same ring.
page = srv.chan.page.mem
c = Client(srv.chan)
show(replies(c.recv()))
page[V.OFF_CLI_LIVE] = V.LIVE_CLOSED
srv.on_port(srv.chan.port)
print("connected", srv.chan.connected)
c = Client(srv.chan)
show(replies(c.recv()))
srv.close()
print("closed", xs.kv.get(path + "/ring-ref"), page[V.OFF_SRV_LIVE])
