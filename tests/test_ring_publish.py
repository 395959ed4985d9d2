"""host_sim's BackRing publishes its indices with one store each (issue 12's
rtl8139 RX-ring bug).

netfront (another process) read `rsp_prod 0` from the RX ring in long
transfers and broke the ring: BackRing stored rsp_prod with struct.pack_into,
which clears the 4 bytes before it writes the value, so a reader running
between the two saw 0; a writer preempted there (2 busy cores) held the zero
past netfront's re-reads. Here a child process pushes responses as fast as it
can while this one reads rsp_prod as a frontend does (one 4-byte load) and
checks every value it sees is one the backend published: never 0, never
backwards. With pack_into this saw zero in about 5% of reads.
"""
import mmap
import os
import struct
import time

from host_sim.backends.ring import BackRing
from stubdm import pv_abi as A

START = 0x3E2F0  # a producer near a byte carry, as after ~250k responses
PUSHES = 150000
SECONDS = 20.0


def load32(mem, off):
    return int.from_bytes(mem[off:off + 4], "little")


def test_rsp_prod_is_never_seen_half_written():
    page = mmap.mmap(-1, 4096)
    mem = memoryview(page)
    # A frontend's shared ring: indices at START, rsp_event far away (no notify).
    struct.pack_into("<IIII", mem, 0, START, START + 1, START, START + 1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            ring = BackRing(mem, A.NETIF_RX_REQ_SIZE, A.NETIF_RX_RSP_SIZE,
                            barrier=lambda: None, log=lambda m: None)
            os.write(w, b"go")
            for i in range(PUSHES):
                # The frontend's side, done here: one more request published.
                mem[0:4] = ((START + i + 1) & 0xFFFFFFFF).to_bytes(4, "little")
                req = ring.get_request()
                if req is None or ring.new_response() is None:
                    break
                ring.push_responses()
            else:
                code = 0
        finally:
            os._exit(code)
    os.close(w)
    assert os.read(r, 2) == b"go"
    os.close(r)
    bad = []
    last = START
    reads = 0
    deadline = time.monotonic() + SECONDS
    done = None
    while done is None and time.monotonic() < deadline:
        for _ in range(2000):
            v = load32(mem, A.SRING_OFF_RSP_PROD)
            reads += 1
            if v < last or v > START + PUSHES:
                bad.append(v)
            else:
                last = v
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            done = status
    if done is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done == 0, "the backend child did not finish its %d pushes" % PUSHES
    assert load32(mem, A.SRING_OFF_RSP_PROD) == START + PUSHES
    assert not bad, "%d of %d reads saw rsp_prod torn or zero (first %r)" % (
        len(bad), reads, [hex(v) for v in bad[:5]])
