"""The wire protocol spoken with host_sim/libsim/hostsim_libs.c.

The numbers and layouts are those of host_sim/libsim/hostsim_proto.h;
tests/test_host_sim.py checks the two agree.
"""

SOCKET_ENV = "HOST_SIM_SOCKET"

CREATE_IOREQ_SERVER = 1
GET_IOREQ_SERVER_INFO = 2
MAP_IO_RANGE = 3
UNMAP_IO_RANGE = 4
MAP_PCIDEV = 5
UNMAP_PCIDEV = 6
SET_IOREQ_SERVER_STATE = 7
DESTROY_IOREQ_SERVER = 8
SET_ISA_IRQ_LEVEL = 9
SET_PCI_INTX_LEVEL = 10
SET_PCI_LINK_ROUTE = 11
SHUTDOWN = 12
MEMORY_MAP = 13
EVTCHN_OPEN = 14
EVTCHN_BIND_INTERDOMAIN = 15
EVTCHN_UNBIND = 17
EVTCHN_CLOSE = 18
INJECT_MSI = 19
MODIFIED_MEMORY = 20
EVTCHN_BIND_UNBOUND = 21
GNTSHR_SHARE = 22
GNTSHR_UNSHARE = 23
POPULATE_PHYSMAP = 24
RELOCATE_MEMORY = 25
TRACK_DIRTY_VRAM = 26
HVM_PARAM = 27
SET_MEM_TYPE = 28
PIN_MEMORY_CACHEATTR = 29
OWN_ALLOC = 30
OWN_FREE = 31
IRQ_OPEN = 32

# Request payload layouts (struct formats, little-endian, packed).
REQUEST_FORMATS = {
    CREATE_IOREQ_SERVER: "<Hi",
    GET_IOREQ_SERVER_INFO: "<HH",
    MAP_IO_RANGE: "<HHIQQ",
    UNMAP_IO_RANGE: "<HHIQQ",
    MAP_PCIDEV: "<HHHBBB",
    UNMAP_PCIDEV: "<HHHBBB",
    SET_IOREQ_SERVER_STATE: "<HHI",
    DESTROY_IOREQ_SERVER: "<HH",
    SET_ISA_IRQ_LEVEL: "<HBI",
    SET_PCI_INTX_LEVEL: "<HHBBBI",
    SET_PCI_LINK_ROUTE: "<HBB",
    SHUTDOWN: "<HI",
    MEMORY_MAP: "<H",
    EVTCHN_OPEN: "<",
    EVTCHN_BIND_INTERDOMAIN: "<III",
    EVTCHN_UNBIND: "<II",
    EVTCHN_CLOSE: "<I",
    INJECT_MSI: "<HQI",
    MODIFIED_MEMORY: "<HQI",
    EVTCHN_BIND_UNBOUND: "<II",
    GNTSHR_SHARE: "<III",
    GNTSHR_UNSHARE: "<I",
    POPULATE_PHYSMAP: "<HI",
    RELOCATE_MEMORY: "<HIQQ",
    TRACK_DIRTY_VRAM: "<HQI",
    HVM_PARAM: "<HIIQ",
    SET_MEM_TYPE: "<HIQI",
    PIN_MEMORY_CACHEATTR: "<HQQI",
    OWN_ALLOC: "<I",
    OWN_FREE: "<I",
    IRQ_OPEN: "<H",
}
# Runs per POPULATE_PHYSMAP message, pages per TRACK_DIRTY_VRAM message.
POPULATE_MAX_RUNS = 255
DIRTY_MAX_PAGES = 32768

EVTCHN_OPS = frozenset([EVTCHN_OPEN, EVTCHN_BIND_INTERDOMAIN, EVTCHN_UNBIND, EVTCHN_CLOSE,
                        EVTCHN_BIND_UNBOUND])
GNTSHR_OPS = frozenset([GNTSHR_SHARE, GNTSHR_UNSHARE, OWN_ALLOC, OWN_FREE])
# Pages per share/unshare message (the reply carries 12 bytes a page within
# the 4096-byte payload); libsim splits bigger requests.
GNTSHR_MAX_PAGES = 256
# Pages per OWN_ALLOC/OWN_FREE message (8 bytes a page).
OWN_MAX_PAGES = 256

# Requests with no reply (none now: notifications go by the handle's shared
# memory, hostsim_proto.h's HS_EVTCHN_*).
ONE_WAY = frozenset()

REGION_FORMAT = "<QQQII"  # gfn, npages, fd_offset, fd_index, prot

# The ring of line levels (hostsim_proto.h's HS_IRQ_*; tests/test_host_sim.py
# checks the two agree).
IRQ_FD_SHM = 0
IRQ_FD_KICK = 1
IRQ_RING = 2048
IRQ_ISA = 0x8000
IRQ_MSI = 0x4000
IRQ_MSI_ENTRIES = 7
IRQ_OFF_PROD = 0
IRQ_OFF_CONS = 64
IRQ_OFF_RING = 4096
IRQ_SHM_SIZE = 8192
