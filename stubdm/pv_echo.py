# stubdm-echo: the PV plumbing's own test device (like QEMU's pci-testdev),
# device type "stubdm-echo". Not a Xen protocol: it exercises what every PV
# device stands on (the xenbus handshake, a ring.h ring in a granted page,
# data pages granted once and reused, event channels both ways) with nothing
# else in the way. Its layout is shared by the frontend (stubdm/frontends/
# echo.py) and host_sim's backend (host_sim/backends/echo.py).
#
# xenstore: the backend publishes feature-transform ("xor" or "none") before
# InitWait; the frontend writes ring-ref and event-channel. The toolstack
# (or a test) writes echo-go = N in the frontend's directory to ask for N
# rounds; each round sends one request per data page and checks every reply;
# the frontend then writes echo-done = "<rounds> <good> <bad>".
from stubdm.compat import const

TYPE = "stubdm-echo"
# Request: id u64, grant ref of a data page u32, offset u16, length u16.
REQ_FORMAT = "<QIHH"
REQ_SIZE = const(16)
# Response: id u64, status i16, pad u16, length u32.
RSP_FORMAT = "<QhHI"
RSP_SIZE = const(16)
STATUS_OK = const(0)
STATUS_ERROR = const(-1)
# What the backend does to each byte with feature-transform = "xor".
XOR_BYTE = const(0x5A)
