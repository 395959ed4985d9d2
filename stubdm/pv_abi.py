# The PV protocols' shared-memory ABI, byte for byte as Xen's public headers
# lay it out for x86_64 (DESIGN.md section 13): the shared ring of
# xen/include/public/io/ring.h, and the records that travel on it for blkif.h,
# netif.h, fbif.h and kbdif.h, the console page of console.h and the xenbus
# states of xenbus.h. tests/test_pv_abi.py compiles Debian's libxen-dev headers
# and checks every size, offset, constant and encoding here.
#
# Formats are for struct.pack/unpack(_from) on MicroPython too: "<" with the
# compiler's padding spelled out as "x" (PORTABLE_PYTHON.md rule 2). MicroPython
# does not range-check packed values: callers mask them.
#
# Names: <PROTO>_<RECORD>_SIZE, <PROTO>_<RECORD>_OFF_<FIELD>, <PROTO>_<RECORD>_FMT
# (the fields in declaration order, padding skipped).
from stubdm.compat import const

# Rings and their grants are in 4 KiB pages whatever the guest's page size
# (ring.h, XEN_PAGE_SHIFT).
XEN_PAGE_SHIFT = const(12)
PAGE_SIZE = const(4096)
GRANT_REF_SIZE = const(4)  # grant_ref_t (grant_table.h)
RING_IDX_MASK = const(0xFFFFFFFF)  # RING_IDX is a free-running 32-bit unsigned

# ---- ring.h: struct <name>_sring, the header of every shared ring --------
SRING_OFF_REQ_PROD = const(0)  # u32, written by the frontend
SRING_OFF_REQ_EVENT = const(4)  # u32, written by the backend: notify at this req_prod
SRING_OFF_RSP_PROD = const(8)  # u32, written by the backend
SRING_OFF_RSP_EVENT = const(12)  # u32, written by the frontend: notify at this rsp_prod
SRING_OFF_PVT = const(16)  # 4 bytes (netif smartpoll_active, tapif msg), zeroed at init
SRING_PVT_SIZE = const(4)
SRING_OFF_PAD = const(20)  # 44 bytes, zeroed at init
SRING_PAD_SIZE = const(44)
SRING_OFF_RING = const(64)  # ring[0]: the entries start here (every entry aligns to <= 8)
SRING_HEADER_FMT = "<IIII"  # req_prod, req_event, rsp_prod, rsp_event


def rd32(n):
    """ring.h's __RD32: n rounded down to a power of two (0 stays 0)."""
    n &= 0xFFFFFFFF
    p = 1
    while p <= n >> 1:
        p <<= 1
    return p if n else 0


def ring_size(entry_size, ring_bytes):
    """__CONST_RING_SIZE: entries of a ring whose sring spans ring_bytes, each
    entry being the union of the request and the response (entry_size bytes:
    the larger of the two, rounded up to their alignment)."""
    if entry_size <= 0 or ring_bytes < SRING_OFF_RING + entry_size:
        return 0
    return rd32((ring_bytes - SRING_OFF_RING) // entry_size)


def ring_pages_bytes(order):
    """Bytes of a ring of 2**order pages (blkif's ring-page-order)."""
    return PAGE_SIZE << order


# ---- xenbus.h: enum xenbus_state -----------------------------------------
XenbusStateUnknown = const(0)
XenbusStateInitialising = const(1)
XenbusStateInitWait = const(2)
XenbusStateInitialised = const(3)
XenbusStateConnected = const(4)
XenbusStateClosing = const(5)
XenbusStateClosed = const(6)
XenbusStateReconfiguring = const(7)
XenbusStateReconfigured = const(8)

# ---- blkif.h --------------------------------------------------------------
BLKIF_OP_READ = const(0)
BLKIF_OP_WRITE = const(1)
BLKIF_OP_WRITE_BARRIER = const(2)
BLKIF_OP_FLUSH_DISKCACHE = const(3)
BLKIF_OP_RESERVED_1 = const(4)
BLKIF_OP_DISCARD = const(5)
BLKIF_OP_INDIRECT = const(6)

BLKIF_MAX_SEGMENTS_PER_REQUEST = const(11)
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = const(8)
# Sector-based fields count 512-byte sectors unless the frontend advertises
# feature-large-sector-size (blkif.h, "sector-size").
BLKIF_SECTOR_SIZE = const(512)
BLKIF_SECTORS_PER_PAGE = const(8)  # last_sect of a segment is at most 7

BLKIF_RSP_EOPNOTSUPP = const(-2)
BLKIF_RSP_ERROR = const(-1)
BLKIF_RSP_OKAY = const(0)

BLKIF_DISCARD_SECURE = const(1)

VDISK_CDROM = const(0x1)
VDISK_REMOVABLE = const(0x2)
VDISK_READONLY = const(0x4)

# struct blkif_request_segment: 8 bytes. Also the element of an indirect page.
BLKIF_SEG_SIZE = const(8)
BLKIF_SEG_OFF_GREF = const(0)  # u32
BLKIF_SEG_OFF_FIRST_SECT = const(4)  # u8
BLKIF_SEG_OFF_LAST_SECT = const(5)  # u8
BLKIF_SEG_FMT = "<IBB2x"
# Segments in one indirect page (blkif.h: PAGE_SIZE / sizeof(segment)).
BLKIF_SEGS_PER_INDIRECT_FRAME = const(512)

# struct blkif_request: 112 bytes, 24 of header then 11 segments.
BLKIF_REQ_SIZE = const(112)
BLKIF_REQ_OFF_OPERATION = const(0)  # u8
BLKIF_REQ_OFF_NR_SEGMENTS = const(1)  # u8
BLKIF_REQ_OFF_HANDLE = const(2)  # u16 (blkif_vdev_t)
BLKIF_REQ_OFF_ID = const(8)  # u64, echoed in the response
BLKIF_REQ_OFF_SECTOR_NUMBER = const(16)  # u64
BLKIF_REQ_OFF_SEG = const(24)  # 11 x blkif_request_segment
BLKIF_REQ_HEAD_FMT = "<BBH4xQQ"  # operation, nr_segments, handle, id, sector_number
BLKIF_REQ_FMT = BLKIF_REQ_HEAD_FMT + "IBB2x" * BLKIF_MAX_SEGMENTS_PER_REQUEST

# struct blkif_request_discard: 32 bytes (in a 112-byte ring entry).
BLKIF_DISCARD_SIZE = const(32)
BLKIF_DISCARD_OFF_OPERATION = const(0)  # u8
BLKIF_DISCARD_OFF_FLAG = const(1)  # u8
BLKIF_DISCARD_OFF_HANDLE = const(2)  # u16
BLKIF_DISCARD_OFF_ID = const(8)  # u64
BLKIF_DISCARD_OFF_SECTOR_NUMBER = const(16)  # u64
BLKIF_DISCARD_OFF_NR_SECTORS = const(24)  # u64
BLKIF_DISCARD_FMT = "<BBH4xQQQ"

# struct blkif_request_indirect: 64 bytes on x86_64 (i386 adds a pad to match).
BLKIF_INDIRECT_SIZE = const(64)
BLKIF_INDIRECT_OFF_OPERATION = const(0)  # u8, BLKIF_OP_INDIRECT
BLKIF_INDIRECT_OFF_INDIRECT_OP = const(1)  # u8, READ or WRITE
BLKIF_INDIRECT_OFF_NR_SEGMENTS = const(2)  # u16
BLKIF_INDIRECT_OFF_ID = const(8)  # u64
BLKIF_INDIRECT_OFF_SECTOR_NUMBER = const(16)  # u64
BLKIF_INDIRECT_OFF_HANDLE = const(24)  # u16
BLKIF_INDIRECT_OFF_INDIRECT_GREFS = const(28)  # 8 x u32
BLKIF_INDIRECT_FMT = "<BBH4xQQH2x8I4x"

# struct blkif_response: 16 bytes.
BLKIF_RSP_SIZE = const(16)
BLKIF_RSP_OFF_ID = const(0)  # u64
BLKIF_RSP_OFF_OPERATION = const(8)  # u8
BLKIF_RSP_OFF_STATUS = const(10)  # s16
BLKIF_RSP_FMT = "<QBxh4x"

# union blkif_sring_entry, and the entries of a one-page ring (DESIGN.md 13: 32).
BLKIF_ENTRY_SIZE = const(112)
BLKIF_RING_SIZE = const(32)

# ---- netif.h --------------------------------------------------------------
XEN_NETIF_NR_SLOTS_MIN = const(18)
XEN_NETIF_MAX_TX_SIZE = const(0xFFFF)

NETTXF_csum_blank = const(1 << 0)
NETTXF_data_validated = const(1 << 1)
NETTXF_more_data = const(1 << 2)
NETTXF_extra_info = const(1 << 3)

NETRXF_data_validated = const(1 << 0)
NETRXF_csum_blank = const(1 << 1)
NETRXF_more_data = const(1 << 2)
NETRXF_extra_info = const(1 << 3)
NETRXF_gso_prefix = const(1 << 4)

XEN_NETIF_EXTRA_TYPE_NONE = const(0)
XEN_NETIF_EXTRA_TYPE_GSO = const(1)
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = const(2)
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = const(3)
XEN_NETIF_EXTRA_TYPE_HASH = const(4)
XEN_NETIF_EXTRA_TYPE_MAX = const(5)
XEN_NETIF_EXTRA_FLAG_MORE = const(1 << 0)

XEN_NETIF_GSO_TYPE_NONE = const(0)
XEN_NETIF_GSO_TYPE_TCPV4 = const(1)
XEN_NETIF_GSO_TYPE_TCPV6 = const(2)

NETIF_RSP_DROPPED = const(-2)
NETIF_RSP_ERROR = const(-1)
NETIF_RSP_OKAY = const(0)
NETIF_RSP_NULL = const(1)  # the response slot of an extra-info request

# struct netif_tx_request: 12 bytes.
NETIF_TX_REQ_SIZE = const(12)
NETIF_TX_REQ_OFF_GREF = const(0)  # u32
NETIF_TX_REQ_OFF_OFFSET = const(4)  # u16
NETIF_TX_REQ_OFF_FLAGS = const(6)  # u16, NETTXF_*
NETIF_TX_REQ_OFF_ID = const(8)  # u16
NETIF_TX_REQ_OFF_SIZE = const(10)  # u16: the whole packet's size in its first slot
NETIF_TX_REQ_FMT = "<IHHHH"

# struct netif_tx_response: 4 bytes.
NETIF_TX_RSP_SIZE = const(4)
NETIF_TX_RSP_OFF_ID = const(0)  # u16
NETIF_TX_RSP_OFF_STATUS = const(2)  # s16
NETIF_TX_RSP_FMT = "<Hh"

# struct netif_rx_request: 8 bytes.
NETIF_RX_REQ_SIZE = const(8)
NETIF_RX_REQ_OFF_ID = const(0)  # u16
NETIF_RX_REQ_OFF_GREF = const(4)  # u32
NETIF_RX_REQ_FMT = "<H2xI"

# struct netif_rx_response: 8 bytes.
NETIF_RX_RSP_SIZE = const(8)
NETIF_RX_RSP_OFF_ID = const(0)  # u16
NETIF_RX_RSP_OFF_OFFSET = const(2)  # u16
NETIF_RX_RSP_OFF_FLAGS = const(4)  # u16, NETRXF_*
NETIF_RX_RSP_OFF_STATUS = const(6)  # s16: < 0 NETIF_RSP_*, else bytes received
NETIF_RX_RSP_FMT = "<HHHh"

# struct netif_extra_info: 8 bytes, takes a tx request or an rx response slot.
NETIF_EXTRA_SIZE = const(8)
NETIF_EXTRA_OFF_TYPE = const(0)  # u8
NETIF_EXTRA_OFF_FLAGS = const(1)  # u8
NETIF_EXTRA_OFF_U = const(2)  # 6-byte union
NETIF_EXTRA_GSO_FMT = "<BBHBxH"  # type, flags, gso.size, gso.type, gso.features
NETIF_EXTRA_OFF_GSO_SIZE = const(2)
NETIF_EXTRA_OFF_GSO_TYPE = const(4)
NETIF_EXTRA_OFF_GSO_FEATURES = const(6)
NETIF_EXTRA_MCAST_FMT = "<BB6s"  # type, flags, mcast.addr
NETIF_EXTRA_OFF_MCAST_ADDR = const(2)
NETIF_EXTRA_HASH_FMT = "<BBBB4s"  # type, flags, hash.type, hash.algorithm, hash.value
NETIF_EXTRA_OFF_HASH_TYPE = const(2)
NETIF_EXTRA_OFF_HASH_ALGORITHM = const(3)
NETIF_EXTRA_OFF_HASH_VALUE = const(4)

NETIF_TX_ENTRY_SIZE = const(12)  # union netif_tx_sring_entry
NETIF_RX_ENTRY_SIZE = const(8)  # union netif_rx_sring_entry
NETIF_TX_RING_SIZE = const(256)  # one page each
NETIF_RX_RING_SIZE = const(256)

# ---- Event-page rings (fbif.h, kbdif.h, console.h) ------------------------
# These are not ring.h rings: fixed-size events in byte arrays at fixed offsets
# of one page, indexed by free-running u32 counters modulo the ring length
# (25 or 51 here, not powers of two: the slot sequence jumps at 2**32).


def event_offset(ring_offs, ring_len, event_size, idx):
    """Byte offset in the page of event idx (XENFB_IN_RING_REF and the like)."""
    return ring_offs + ((idx & 0xFFFFFFFF) % ring_len) * event_size


# fbif.h: out events, frontend -> backend.
XENFB_TYPE_UPDATE = const(2)
XENFB_TYPE_RESIZE = const(3)
# In events, backend -> frontend.
XENFB_TYPE_REFRESH_PERIOD = const(1)
XENFB_NO_REFRESH = const(0)

XENFB_UPDATE_SIZE = const(20)  # struct xenfb_update
XENFB_UPDATE_OFF_X = const(4)  # s32 (then y, width, height)
XENFB_UPDATE_FMT = "<B3xiiii"  # type, x, y, width, height

XENFB_RESIZE_SIZE = const(24)  # struct xenfb_resize
XENFB_RESIZE_OFF_WIDTH = const(4)  # s32 (then height, stride, depth, offset)
XENFB_RESIZE_FMT = "<B3xiiiii"  # type, width, height, stride, depth, offset

XENFB_REFRESH_PERIOD_SIZE = const(8)  # struct xenfb_refresh_period
XENFB_REFRESH_PERIOD_OFF_PERIOD = const(4)  # u32, ms
XENFB_REFRESH_PERIOD_FMT = "<B3xI"

XENFB_OUT_EVENT_SIZE = const(40)
XENFB_IN_EVENT_SIZE = const(40)
XENFB_IN_RING_SIZE = const(1024)
XENFB_IN_RING_LEN = const(25)
XENFB_IN_RING_OFFS = const(1024)
XENFB_OUT_RING_SIZE = const(2048)
XENFB_OUT_RING_LEN = const(51)
XENFB_OUT_RING_OFFS = const(2048)

# struct xenfb_page (x86_64: unsigned long pd[] is 8 bytes an entry).
XENFB_PAGE_OFF_IN_CONS = const(0)  # u32
XENFB_PAGE_OFF_IN_PROD = const(4)  # u32
XENFB_PAGE_OFF_OUT_CONS = const(8)  # u32
XENFB_PAGE_OFF_OUT_PROD = const(12)  # u32
XENFB_PAGE_OFF_WIDTH = const(16)  # s32, pixels
XENFB_PAGE_OFF_HEIGHT = const(20)  # s32, pixels
XENFB_PAGE_OFF_LINE_LENGTH = const(24)  # u32, bytes
XENFB_PAGE_OFF_MEM_LENGTH = const(28)  # u32, bytes
XENFB_PAGE_OFF_DEPTH = const(32)  # u8, bits
XENFB_PAGE_OFF_PD = const(40)  # unsigned long[256]: frames of the directory pages
XENFB_PAGE_HEAD_FMT = "<IIIIiiIIB"  # in_cons .. depth
XENFB_PD_ENTRY_SIZE = const(8)
XENFB_PD_ENTRIES = const(256)
XENFB_PAGE_SIZE = const(2088)  # sizeof(struct xenfb_page)
# pd[] as declared runs into the in ring at 1024: only the entries below it
# can be used, each directory page mapping 512 framebuffer pages (2 MiB).
XENFB_PD_USABLE = const(123)
XENFB_FRAMES_PER_PD_PAGE = const(512)

# kbdif.h: in events, backend -> frontend.
XENKBD_TYPE_MOTION = const(1)
XENKBD_TYPE_RESERVED = const(2)
XENKBD_TYPE_KEY = const(3)
XENKBD_TYPE_POS = const(4)
XENKBD_TYPE_MTOUCH = const(5)

XENKBD_MT_EV_DOWN = const(0)
XENKBD_MT_EV_UP = const(1)
XENKBD_MT_EV_MOTION = const(2)
XENKBD_MT_EV_SYN = const(3)
XENKBD_MT_EV_SHAPE = const(4)
XENKBD_MT_EV_ORIENT = const(5)

XENKBD_FIELD_FEAT_ABS_POINTER = "feature-abs-pointer"
XENKBD_FIELD_REQ_ABS_POINTER = "request-abs-pointer"
XENKBD_FIELD_RING_GREF = "page-gref"
XENKBD_FIELD_RING_REF = "page-ref"  # "OBSOLETE", yet the one QEMU's backend reads
XENKBD_FIELD_EVT_CHANNEL = "event-channel"
XENKBD_FIELD_WIDTH = "width"
XENKBD_FIELD_HEIGHT = "height"

XENKBD_MOTION_SIZE = const(16)  # struct xenkbd_motion
XENKBD_MOTION_OFF_REL_X = const(4)  # s32 (then rel_y, rel_z)
XENKBD_MOTION_FMT = "<B3xiii"  # type, rel_x, rel_y, rel_z

XENKBD_KEY_SIZE = const(8)  # struct xenkbd_key
XENKBD_KEY_OFF_PRESSED = const(1)  # u8
XENKBD_KEY_OFF_KEYCODE = const(4)  # u32, Linux input keycode
XENKBD_KEY_FMT = "<BB2xI"  # type, pressed, keycode

XENKBD_POSITION_SIZE = const(16)  # struct xenkbd_position
XENKBD_POSITION_OFF_ABS_X = const(4)  # s32 (then abs_y, rel_z)
XENKBD_POSITION_FMT = "<B3xiii"  # type, abs_x, abs_y, rel_z

XENKBD_MTOUCH_SIZE = const(16)  # struct xenkbd_mtouch
XENKBD_MTOUCH_OFF_EVENT_TYPE = const(1)  # u8
XENKBD_MTOUCH_OFF_CONTACT_ID = const(2)  # u8
XENKBD_MTOUCH_OFF_U = const(8)  # pos (s32 x, y) / shape (u32 major, minor) / s16 orientation
XENKBD_MTOUCH_POS_FMT = "<BBB5xii"  # type, event_type, contact_id, abs_x, abs_y

XENKBD_IN_EVENT_SIZE = const(40)
XENKBD_OUT_EVENT_SIZE = const(40)
XENKBD_IN_RING_SIZE = const(2048)
XENKBD_IN_RING_LEN = const(51)
XENKBD_IN_RING_OFFS = const(1024)
XENKBD_OUT_RING_SIZE = const(1024)
XENKBD_OUT_RING_LEN = const(25)
XENKBD_OUT_RING_OFFS = const(3072)

# struct xenkbd_page: 16 bytes at the start of the page.
XENKBD_PAGE_SIZE = const(16)
XENKBD_PAGE_OFF_IN_CONS = const(0)
XENKBD_PAGE_OFF_IN_PROD = const(4)
XENKBD_PAGE_OFF_OUT_CONS = const(8)
XENKBD_PAGE_OFF_OUT_PROD = const(12)
XENKBD_PAGE_FMT = "<IIII"

# console.h: struct xencons_interface; rings are powers of two, indices masked.
XENCONS_OFF_IN = const(0)
XENCONS_IN_SIZE = const(1024)
XENCONS_OFF_OUT = const(1024)
XENCONS_OUT_SIZE = const(2048)
XENCONS_OFF_IN_CONS = const(3072)  # u32 (then in_prod, out_cons, out_prod)
XENCONS_OFF_IN_PROD = const(3076)
XENCONS_OFF_OUT_CONS = const(3080)
XENCONS_OFF_OUT_PROD = const(3084)
XENCONS_INTERFACE_SIZE = const(3088)
XENCONS_IDX_FMT = "<IIII"  # in_cons, in_prod, out_cons, out_prod at XENCONS_OFF_IN_CONS
