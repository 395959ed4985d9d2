"""stubdm.pv_abi against Xen's own PV headers (Debian's libxen-dev), compiled with cffi.

Sizes, offsets, constants, ring sizes and whole-record encodings come from
the C compiler: for each record, C fills the struct field by field and the
bytes are compared with struct.pack of our format over the same values.
"""
import os
import struct

import pytest

from stubdm import pv_abi as P

HEADERS = ("ring.h", "blkif.h", "netif.h", "fbif.h", "kbdif.h", "console.h", "xenbus.h")
MISSING = [h for h in HEADERS if not os.path.exists("/usr/include/xen/io/" + h)]

pytestmark = pytest.mark.skipif(
    bool(MISSING), reason="needs Xen's public headers: apt-get install libxen-dev"
)

SIZES = [
    ("struct blkif_request_segment", P.BLKIF_SEG_SIZE),
    ("struct blkif_request", P.BLKIF_REQ_SIZE),
    ("struct blkif_request_discard", P.BLKIF_DISCARD_SIZE),
    ("struct blkif_request_indirect", P.BLKIF_INDIRECT_SIZE),
    ("struct blkif_response", P.BLKIF_RSP_SIZE),
    ("union blkif_sring_entry", P.BLKIF_ENTRY_SIZE),
    ("struct netif_tx_request", P.NETIF_TX_REQ_SIZE),
    ("struct netif_tx_response", P.NETIF_TX_RSP_SIZE),
    ("struct netif_rx_request", P.NETIF_RX_REQ_SIZE),
    ("struct netif_rx_response", P.NETIF_RX_RSP_SIZE),
    ("struct netif_extra_info", P.NETIF_EXTRA_SIZE),
    ("union netif_tx_sring_entry", P.NETIF_TX_ENTRY_SIZE),
    ("union netif_rx_sring_entry", P.NETIF_RX_ENTRY_SIZE),
    ("struct xenfb_update", P.XENFB_UPDATE_SIZE),
    ("struct xenfb_resize", P.XENFB_RESIZE_SIZE),
    ("struct xenfb_refresh_period", P.XENFB_REFRESH_PERIOD_SIZE),
    ("union xenfb_out_event", P.XENFB_OUT_EVENT_SIZE),
    ("union xenfb_in_event", P.XENFB_IN_EVENT_SIZE),
    ("struct xenfb_page", P.XENFB_PAGE_SIZE),
    ("((struct xenfb_page *)0)->pd[0]", P.XENFB_PD_ENTRY_SIZE),
    ("struct xenkbd_motion", P.XENKBD_MOTION_SIZE),
    ("struct xenkbd_key", P.XENKBD_KEY_SIZE),
    ("struct xenkbd_position", P.XENKBD_POSITION_SIZE),
    ("struct xenkbd_mtouch", P.XENKBD_MTOUCH_SIZE),
    ("union xenkbd_in_event", P.XENKBD_IN_EVENT_SIZE),
    ("union xenkbd_out_event", P.XENKBD_OUT_EVENT_SIZE),
    ("struct xenkbd_page", P.XENKBD_PAGE_SIZE),
    ("struct xencons_interface", P.XENCONS_INTERFACE_SIZE),
    ("((struct xencons_interface *)0)->in", P.XENCONS_IN_SIZE),
    ("((struct xencons_interface *)0)->out", P.XENCONS_OUT_SIZE),
    ("((struct blkif_sring *)0)->pvt", P.SRING_PVT_SIZE),
    ("((struct blkif_sring *)0)->__pad", P.SRING_PAD_SIZE),
    ("grant_ref_t", P.GRANT_REF_SIZE),
    ("RING_IDX", 4),
]

OFFSETS = [
    ("struct blkif_sring", "req_prod", P.SRING_OFF_REQ_PROD),
    ("struct blkif_sring", "req_event", P.SRING_OFF_REQ_EVENT),
    ("struct blkif_sring", "rsp_prod", P.SRING_OFF_RSP_PROD),
    ("struct blkif_sring", "rsp_event", P.SRING_OFF_RSP_EVENT),
    ("struct blkif_sring", "pvt", P.SRING_OFF_PVT),
    ("struct blkif_sring", "__pad", P.SRING_OFF_PAD),
    ("struct blkif_sring", "ring", P.SRING_OFF_RING),
    ("struct netif_tx_sring", "ring", P.SRING_OFF_RING),
    ("struct netif_rx_sring", "ring", P.SRING_OFF_RING),
    ("struct blkif_request_segment", "gref", P.BLKIF_SEG_OFF_GREF),
    ("struct blkif_request_segment", "first_sect", P.BLKIF_SEG_OFF_FIRST_SECT),
    ("struct blkif_request_segment", "last_sect", P.BLKIF_SEG_OFF_LAST_SECT),
    ("struct blkif_request", "operation", P.BLKIF_REQ_OFF_OPERATION),
    ("struct blkif_request", "nr_segments", P.BLKIF_REQ_OFF_NR_SEGMENTS),
    ("struct blkif_request", "handle", P.BLKIF_REQ_OFF_HANDLE),
    ("struct blkif_request", "id", P.BLKIF_REQ_OFF_ID),
    ("struct blkif_request", "sector_number", P.BLKIF_REQ_OFF_SECTOR_NUMBER),
    ("struct blkif_request", "seg", P.BLKIF_REQ_OFF_SEG),
    ("struct blkif_request_discard", "operation", P.BLKIF_DISCARD_OFF_OPERATION),
    ("struct blkif_request_discard", "flag", P.BLKIF_DISCARD_OFF_FLAG),
    ("struct blkif_request_discard", "handle", P.BLKIF_DISCARD_OFF_HANDLE),
    ("struct blkif_request_discard", "id", P.BLKIF_DISCARD_OFF_ID),
    ("struct blkif_request_discard", "sector_number", P.BLKIF_DISCARD_OFF_SECTOR_NUMBER),
    ("struct blkif_request_discard", "nr_sectors", P.BLKIF_DISCARD_OFF_NR_SECTORS),
    ("struct blkif_request_indirect", "operation", P.BLKIF_INDIRECT_OFF_OPERATION),
    ("struct blkif_request_indirect", "indirect_op", P.BLKIF_INDIRECT_OFF_INDIRECT_OP),
    ("struct blkif_request_indirect", "nr_segments", P.BLKIF_INDIRECT_OFF_NR_SEGMENTS),
    ("struct blkif_request_indirect", "id", P.BLKIF_INDIRECT_OFF_ID),
    ("struct blkif_request_indirect", "sector_number", P.BLKIF_INDIRECT_OFF_SECTOR_NUMBER),
    ("struct blkif_request_indirect", "handle", P.BLKIF_INDIRECT_OFF_HANDLE),
    ("struct blkif_request_indirect", "indirect_grefs", P.BLKIF_INDIRECT_OFF_INDIRECT_GREFS),
    ("struct blkif_response", "id", P.BLKIF_RSP_OFF_ID),
    ("struct blkif_response", "operation", P.BLKIF_RSP_OFF_OPERATION),
    ("struct blkif_response", "status", P.BLKIF_RSP_OFF_STATUS),
    ("struct netif_tx_request", "gref", P.NETIF_TX_REQ_OFF_GREF),
    ("struct netif_tx_request", "offset", P.NETIF_TX_REQ_OFF_OFFSET),
    ("struct netif_tx_request", "flags", P.NETIF_TX_REQ_OFF_FLAGS),
    ("struct netif_tx_request", "id", P.NETIF_TX_REQ_OFF_ID),
    ("struct netif_tx_request", "size", P.NETIF_TX_REQ_OFF_SIZE),
    ("struct netif_tx_response", "id", P.NETIF_TX_RSP_OFF_ID),
    ("struct netif_tx_response", "status", P.NETIF_TX_RSP_OFF_STATUS),
    ("struct netif_rx_request", "id", P.NETIF_RX_REQ_OFF_ID),
    ("struct netif_rx_request", "gref", P.NETIF_RX_REQ_OFF_GREF),
    ("struct netif_rx_response", "id", P.NETIF_RX_RSP_OFF_ID),
    ("struct netif_rx_response", "offset", P.NETIF_RX_RSP_OFF_OFFSET),
    ("struct netif_rx_response", "flags", P.NETIF_RX_RSP_OFF_FLAGS),
    ("struct netif_rx_response", "status", P.NETIF_RX_RSP_OFF_STATUS),
    ("struct netif_extra_info", "type", P.NETIF_EXTRA_OFF_TYPE),
    ("struct netif_extra_info", "flags", P.NETIF_EXTRA_OFF_FLAGS),
    ("struct netif_extra_info", "u", P.NETIF_EXTRA_OFF_U),
    ("struct netif_extra_info", "u.gso.size", P.NETIF_EXTRA_OFF_GSO_SIZE),
    ("struct netif_extra_info", "u.gso.type", P.NETIF_EXTRA_OFF_GSO_TYPE),
    ("struct netif_extra_info", "u.gso.features", P.NETIF_EXTRA_OFF_GSO_FEATURES),
    ("struct netif_extra_info", "u.mcast.addr", P.NETIF_EXTRA_OFF_MCAST_ADDR),
    ("struct netif_extra_info", "u.hash.type", P.NETIF_EXTRA_OFF_HASH_TYPE),
    ("struct netif_extra_info", "u.hash.algorithm", P.NETIF_EXTRA_OFF_HASH_ALGORITHM),
    ("struct netif_extra_info", "u.hash.value", P.NETIF_EXTRA_OFF_HASH_VALUE),
    ("struct xenfb_update", "x", P.XENFB_UPDATE_OFF_X),
    ("struct xenfb_resize", "width", P.XENFB_RESIZE_OFF_WIDTH),
    ("struct xenfb_refresh_period", "period", P.XENFB_REFRESH_PERIOD_OFF_PERIOD),
    ("struct xenfb_page", "in_cons", P.XENFB_PAGE_OFF_IN_CONS),
    ("struct xenfb_page", "in_prod", P.XENFB_PAGE_OFF_IN_PROD),
    ("struct xenfb_page", "out_cons", P.XENFB_PAGE_OFF_OUT_CONS),
    ("struct xenfb_page", "out_prod", P.XENFB_PAGE_OFF_OUT_PROD),
    ("struct xenfb_page", "width", P.XENFB_PAGE_OFF_WIDTH),
    ("struct xenfb_page", "height", P.XENFB_PAGE_OFF_HEIGHT),
    ("struct xenfb_page", "line_length", P.XENFB_PAGE_OFF_LINE_LENGTH),
    ("struct xenfb_page", "mem_length", P.XENFB_PAGE_OFF_MEM_LENGTH),
    ("struct xenfb_page", "depth", P.XENFB_PAGE_OFF_DEPTH),
    ("struct xenfb_page", "pd", P.XENFB_PAGE_OFF_PD),
    ("struct xenkbd_motion", "rel_x", P.XENKBD_MOTION_OFF_REL_X),
    ("struct xenkbd_key", "pressed", P.XENKBD_KEY_OFF_PRESSED),
    ("struct xenkbd_key", "keycode", P.XENKBD_KEY_OFF_KEYCODE),
    ("struct xenkbd_position", "abs_x", P.XENKBD_POSITION_OFF_ABS_X),
    ("struct xenkbd_mtouch", "event_type", P.XENKBD_MTOUCH_OFF_EVENT_TYPE),
    ("struct xenkbd_mtouch", "contact_id", P.XENKBD_MTOUCH_OFF_CONTACT_ID),
    ("struct xenkbd_mtouch", "u", P.XENKBD_MTOUCH_OFF_U),
    ("struct xenkbd_page", "in_cons", P.XENKBD_PAGE_OFF_IN_CONS),
    ("struct xenkbd_page", "in_prod", P.XENKBD_PAGE_OFF_IN_PROD),
    ("struct xenkbd_page", "out_cons", P.XENKBD_PAGE_OFF_OUT_CONS),
    ("struct xenkbd_page", "out_prod", P.XENKBD_PAGE_OFF_OUT_PROD),
    ("struct xencons_interface", "in", P.XENCONS_OFF_IN),
    ("struct xencons_interface", "out", P.XENCONS_OFF_OUT),
    ("struct xencons_interface", "in_cons", P.XENCONS_OFF_IN_CONS),
    ("struct xencons_interface", "in_prod", P.XENCONS_OFF_IN_PROD),
    ("struct xencons_interface", "out_cons", P.XENCONS_OFF_OUT_CONS),
    ("struct xencons_interface", "out_prod", P.XENCONS_OFF_OUT_PROD),
]

CONSTANTS = [
    ("XEN_PAGE_SHIFT", P.XEN_PAGE_SHIFT),
    ("1 << XEN_PAGE_SHIFT", P.PAGE_SIZE),
    ("XenbusStateUnknown", P.XenbusStateUnknown),
    ("XenbusStateInitialising", P.XenbusStateInitialising),
    ("XenbusStateInitWait", P.XenbusStateInitWait),
    ("XenbusStateInitialised", P.XenbusStateInitialised),
    ("XenbusStateConnected", P.XenbusStateConnected),
    ("XenbusStateClosing", P.XenbusStateClosing),
    ("XenbusStateClosed", P.XenbusStateClosed),
    ("XenbusStateReconfiguring", P.XenbusStateReconfiguring),
    ("XenbusStateReconfigured", P.XenbusStateReconfigured),
    ("BLKIF_OP_READ", P.BLKIF_OP_READ),
    ("BLKIF_OP_WRITE", P.BLKIF_OP_WRITE),
    ("BLKIF_OP_WRITE_BARRIER", P.BLKIF_OP_WRITE_BARRIER),
    ("BLKIF_OP_FLUSH_DISKCACHE", P.BLKIF_OP_FLUSH_DISKCACHE),
    ("BLKIF_OP_RESERVED_1", P.BLKIF_OP_RESERVED_1),
    ("BLKIF_OP_DISCARD", P.BLKIF_OP_DISCARD),
    ("BLKIF_OP_INDIRECT", P.BLKIF_OP_INDIRECT),
    ("BLKIF_MAX_SEGMENTS_PER_REQUEST", P.BLKIF_MAX_SEGMENTS_PER_REQUEST),
    ("BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST", P.BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST),
    ("XEN_PAGE_SIZE_ / sizeof(struct blkif_request_segment)", P.BLKIF_SEGS_PER_INDIRECT_FRAME),
    ("BLKIF_RSP_EOPNOTSUPP", P.BLKIF_RSP_EOPNOTSUPP),
    ("BLKIF_RSP_ERROR", P.BLKIF_RSP_ERROR),
    ("BLKIF_RSP_OKAY", P.BLKIF_RSP_OKAY),
    ("BLKIF_DISCARD_SECURE", P.BLKIF_DISCARD_SECURE),
    ("VDISK_CDROM", P.VDISK_CDROM),
    ("VDISK_REMOVABLE", P.VDISK_REMOVABLE),
    ("VDISK_READONLY", P.VDISK_READONLY),
    ("XEN_NETIF_NR_SLOTS_MIN", P.XEN_NETIF_NR_SLOTS_MIN),
    ("XEN_NETIF_MAX_TX_SIZE", P.XEN_NETIF_MAX_TX_SIZE),
    ("NETTXF_csum_blank", P.NETTXF_csum_blank),
    ("NETTXF_data_validated", P.NETTXF_data_validated),
    ("NETTXF_more_data", P.NETTXF_more_data),
    ("NETTXF_extra_info", P.NETTXF_extra_info),
    ("NETRXF_data_validated", P.NETRXF_data_validated),
    ("NETRXF_csum_blank", P.NETRXF_csum_blank),
    ("NETRXF_more_data", P.NETRXF_more_data),
    ("NETRXF_extra_info", P.NETRXF_extra_info),
    ("NETRXF_gso_prefix", P.NETRXF_gso_prefix),
    ("XEN_NETIF_EXTRA_TYPE_NONE", P.XEN_NETIF_EXTRA_TYPE_NONE),
    ("XEN_NETIF_EXTRA_TYPE_GSO", P.XEN_NETIF_EXTRA_TYPE_GSO),
    ("XEN_NETIF_EXTRA_TYPE_MCAST_ADD", P.XEN_NETIF_EXTRA_TYPE_MCAST_ADD),
    ("XEN_NETIF_EXTRA_TYPE_MCAST_DEL", P.XEN_NETIF_EXTRA_TYPE_MCAST_DEL),
    ("XEN_NETIF_EXTRA_TYPE_HASH", P.XEN_NETIF_EXTRA_TYPE_HASH),
    ("XEN_NETIF_EXTRA_TYPE_MAX", P.XEN_NETIF_EXTRA_TYPE_MAX),
    ("XEN_NETIF_EXTRA_FLAG_MORE", P.XEN_NETIF_EXTRA_FLAG_MORE),
    ("XEN_NETIF_GSO_TYPE_NONE", P.XEN_NETIF_GSO_TYPE_NONE),
    ("XEN_NETIF_GSO_TYPE_TCPV4", P.XEN_NETIF_GSO_TYPE_TCPV4),
    ("XEN_NETIF_GSO_TYPE_TCPV6", P.XEN_NETIF_GSO_TYPE_TCPV6),
    ("NETIF_RSP_DROPPED", P.NETIF_RSP_DROPPED),
    ("NETIF_RSP_ERROR", P.NETIF_RSP_ERROR),
    ("NETIF_RSP_OKAY", P.NETIF_RSP_OKAY),
    ("NETIF_RSP_NULL", P.NETIF_RSP_NULL),
    ("XENFB_TYPE_UPDATE", P.XENFB_TYPE_UPDATE),
    ("XENFB_TYPE_RESIZE", P.XENFB_TYPE_RESIZE),
    ("XENFB_TYPE_REFRESH_PERIOD", P.XENFB_TYPE_REFRESH_PERIOD),
    ("XENFB_NO_REFRESH", P.XENFB_NO_REFRESH),
    ("XENFB_OUT_EVENT_SIZE", P.XENFB_OUT_EVENT_SIZE),
    ("XENFB_IN_EVENT_SIZE", P.XENFB_IN_EVENT_SIZE),
    ("XENFB_IN_RING_SIZE", P.XENFB_IN_RING_SIZE),
    ("XENFB_IN_RING_LEN", P.XENFB_IN_RING_LEN),
    ("XENFB_IN_RING_OFFS", P.XENFB_IN_RING_OFFS),
    ("XENFB_OUT_RING_SIZE", P.XENFB_OUT_RING_SIZE),
    ("XENFB_OUT_RING_LEN", P.XENFB_OUT_RING_LEN),
    ("XENFB_OUT_RING_OFFS", P.XENFB_OUT_RING_OFFS),
    ("sizeof(((struct xenfb_page *)0)->pd) / sizeof(((struct xenfb_page *)0)->pd[0])",
     P.XENFB_PD_ENTRIES),
    ("(XENFB_IN_RING_OFFS - offsetof(struct xenfb_page, pd))"
     " / sizeof(((struct xenfb_page *)0)->pd[0])", P.XENFB_PD_USABLE),
    ("XEN_PAGE_SIZE_ / sizeof(((struct xenfb_page *)0)->pd[0])", P.XENFB_FRAMES_PER_PD_PAGE),
    ("XENKBD_TYPE_MOTION", P.XENKBD_TYPE_MOTION),
    ("XENKBD_TYPE_RESERVED", P.XENKBD_TYPE_RESERVED),
    ("XENKBD_TYPE_KEY", P.XENKBD_TYPE_KEY),
    ("XENKBD_TYPE_POS", P.XENKBD_TYPE_POS),
    ("XENKBD_TYPE_MTOUCH", P.XENKBD_TYPE_MTOUCH),
    ("XENKBD_MT_EV_DOWN", P.XENKBD_MT_EV_DOWN),
    ("XENKBD_MT_EV_UP", P.XENKBD_MT_EV_UP),
    ("XENKBD_MT_EV_MOTION", P.XENKBD_MT_EV_MOTION),
    ("XENKBD_MT_EV_SYN", P.XENKBD_MT_EV_SYN),
    ("XENKBD_MT_EV_SHAPE", P.XENKBD_MT_EV_SHAPE),
    ("XENKBD_MT_EV_ORIENT", P.XENKBD_MT_EV_ORIENT),
    ("XENKBD_IN_EVENT_SIZE", P.XENKBD_IN_EVENT_SIZE),
    ("XENKBD_OUT_EVENT_SIZE", P.XENKBD_OUT_EVENT_SIZE),
    ("XENKBD_IN_RING_SIZE", P.XENKBD_IN_RING_SIZE),
    ("XENKBD_IN_RING_LEN", P.XENKBD_IN_RING_LEN),
    ("XENKBD_IN_RING_OFFS", P.XENKBD_IN_RING_OFFS),
    ("XENKBD_OUT_RING_SIZE", P.XENKBD_OUT_RING_SIZE),
    ("XENKBD_OUT_RING_LEN", P.XENKBD_OUT_RING_LEN),
    ("XENKBD_OUT_RING_OFFS", P.XENKBD_OUT_RING_OFFS),
    # Ring sizes as ring.h computes them for one page, and for blkif's
    # ring-page-order 4 (16 pages) and the largest netif-sized rings.
    ("__CONST_RING_SIZE(blkif, XEN_PAGE_SIZE_)", P.BLKIF_RING_SIZE),
    ("__CONST_RING_SIZE(netif_tx, XEN_PAGE_SIZE_)", P.NETIF_TX_RING_SIZE),
    ("__CONST_RING_SIZE(netif_rx, XEN_PAGE_SIZE_)", P.NETIF_RX_RING_SIZE),
]

# Ring sizes computed by our ring_size() over the entry sizes, per ring and
# size in bytes: the same expressions in C.
RING_SIZES = [
    ("blkif", P.BLKIF_ENTRY_SIZE, P.PAGE_SIZE),
    ("blkif", P.BLKIF_ENTRY_SIZE, P.ring_pages_bytes(1)),
    ("blkif", P.BLKIF_ENTRY_SIZE, P.ring_pages_bytes(2)),
    ("blkif", P.BLKIF_ENTRY_SIZE, P.ring_pages_bytes(3)),
    ("blkif", P.BLKIF_ENTRY_SIZE, P.ring_pages_bytes(4)),
    ("netif_tx", P.NETIF_TX_ENTRY_SIZE, P.PAGE_SIZE),
    ("netif_rx", P.NETIF_RX_ENTRY_SIZE, P.PAGE_SIZE),
    ("netif_tx", P.NETIF_TX_ENTRY_SIZE, 3 * P.PAGE_SIZE),
]

STRINGS = [
    ("XENKBD_FIELD_FEAT_ABS_POINTER", P.XENKBD_FIELD_FEAT_ABS_POINTER),
    ("XENKBD_FIELD_REQ_ABS_POINTER", P.XENKBD_FIELD_REQ_ABS_POINTER),
    ("XENKBD_FIELD_RING_GREF", P.XENKBD_FIELD_RING_GREF),
    ("XENKBD_FIELD_RING_REF", P.XENKBD_FIELD_RING_REF),
    ("XENKBD_FIELD_EVT_CHANNEL", P.XENKBD_FIELD_EVT_CHANNEL),
    ("XENKBD_FIELD_WIDTH", P.XENKBD_FIELD_WIDTH),
    ("XENKBD_FIELD_HEIGHT", P.XENKBD_FIELD_HEIGHT),
]


def _segs(n):
    fields, values = [], []
    for i in range(n):
        fields += [("seg[%d].gref" % i, 0x80000000 + 0x1001 * i),
                   ("seg[%d].first_sect" % i, i % 8), ("seg[%d].last_sect" % i, 7 - i % 4)]
        values += [0x80000000 + 0x1001 * i, i % 8, 7 - i % 4]
    return fields, values


_SEG_FIELDS, _SEG_VALUES = _segs(P.BLKIF_MAX_SEGMENTS_PER_REQUEST)
_GREFS = [0xF0000001 + 0x111 * i for i in range(8)]

# (C type, [(field, value)], our format, whole record?). Values are distinct
# and fill each field's width (negative ones for signed fields), so a field at
# the wrong place, width or signedness changes the bytes.
ENCODINGS = [
    ("struct blkif_sring",
     [("req_prod", 0xFFFFFFF0), ("req_event", 0x01020304), ("rsp_prod", 0x0A0B0C0D),
      ("rsp_event", 0x80000001)], P.SRING_HEADER_FMT, False),
    ("struct blkif_request_segment", [("gref", 0x11223344), ("first_sect", 3),
                                      ("last_sect", 7)], P.BLKIF_SEG_FMT, True),
    ("struct blkif_request",
     [("operation", P.BLKIF_OP_WRITE), ("nr_segments", 11), ("handle", 0xCAFE),
      ("id", 0x0102030405060708), ("sector_number", 0xF1F2F3F4F5F6F7F8)] + _SEG_FIELDS,
     P.BLKIF_REQ_FMT, True),
    ("struct blkif_request",
     [("operation", P.BLKIF_OP_READ), ("nr_segments", 1), ("handle", 0x0300),
      ("id", 0xFFFFFFFFFFFFFFFE), ("sector_number", 0x1234567)],
     P.BLKIF_REQ_HEAD_FMT, False),
    ("struct blkif_request_discard",
     [("operation", P.BLKIF_OP_DISCARD), ("flag", P.BLKIF_DISCARD_SECURE), ("handle", 0xBEEF),
      ("id", 0x1112131415161718), ("sector_number", 0x2122232425262728),
      ("nr_sectors", 0x3132333435363738)], P.BLKIF_DISCARD_FMT, True),
    ("struct blkif_request_indirect",
     [("operation", P.BLKIF_OP_INDIRECT), ("indirect_op", P.BLKIF_OP_WRITE),
      ("nr_segments", 0xF00D), ("id", 0x4142434445464748),
      ("sector_number", 0x5152535455565758), ("handle", 0xABCD)]
     + [("indirect_grefs[%d]" % i, g) for i, g in enumerate(_GREFS)],
     P.BLKIF_INDIRECT_FMT, True),
    ("struct blkif_response", [("id", 0x8877665544332211), ("operation", 0xFE),
                               ("status", P.BLKIF_RSP_EOPNOTSUPP)], P.BLKIF_RSP_FMT, True),
    ("struct blkif_response", [("id", 1), ("operation", 0),
                               ("status", 0x7FFF)], P.BLKIF_RSP_FMT, True),
    ("struct netif_tx_request",
     [("gref", 0xDEADBEEF), ("offset", 0x0FFF), ("flags", 0xA5C3), ("id", 0xFFFE),
      ("size", 0xFFFF)], P.NETIF_TX_REQ_FMT, True),
    ("struct netif_tx_response", [("id", 0xFEDC), ("status", P.NETIF_RSP_DROPPED)],
     P.NETIF_TX_RSP_FMT, True),
    ("struct netif_rx_request", [("id", 0xBEEF), ("gref", 0x87654321)],
     P.NETIF_RX_REQ_FMT, True),
    ("struct netif_rx_response",
     [("id", 0x1234), ("offset", 0x0800), ("flags", 0xF00F), ("status", -32768)],
     P.NETIF_RX_RSP_FMT, True),
    ("struct netif_extra_info",
     [("type", P.XEN_NETIF_EXTRA_TYPE_GSO), ("flags", 0x81), ("u.gso.size", 0xABCD),
      ("u.gso.type", 0xEE), ("u.gso.features", 0x1357)], P.NETIF_EXTRA_GSO_FMT, True),
    ("struct netif_extra_info",
     [("type", P.XEN_NETIF_EXTRA_TYPE_MCAST_ADD), ("flags", 0x7E),
      ("u.mcast.addr", b"\x01\x00\x5e\x7f\xfe\xfd")], P.NETIF_EXTRA_MCAST_FMT, True),
    ("struct netif_extra_info",
     [("type", P.XEN_NETIF_EXTRA_TYPE_HASH), ("flags", 0x01), ("u.hash.type", 0xC2),
      ("u.hash.algorithm", 0xD3), ("u.hash.value", b"\xa1\xb2\xc3\xd4")],
     P.NETIF_EXTRA_HASH_FMT, True),
    ("struct xenfb_update",
     [("type", P.XENFB_TYPE_UPDATE), ("x", -5), ("y", 0x7FFFFFFF), ("width", -0x80000000),
      ("height", 0x12345678)], P.XENFB_UPDATE_FMT, True),
    ("struct xenfb_resize",
     [("type", P.XENFB_TYPE_RESIZE), ("width", 1024), ("height", -768),
      ("stride", 0x1000), ("depth", 32), ("offset", 0x7EDCBA98)], P.XENFB_RESIZE_FMT, True),
    ("struct xenfb_refresh_period", [("type", P.XENFB_TYPE_REFRESH_PERIOD),
                                     ("period", 0xFFFFFFF0)], P.XENFB_REFRESH_PERIOD_FMT, True),
    ("struct xenfb_page",
     [("in_cons", 0xA1A2A3A4), ("in_prod", 0xB1B2B3B4), ("out_cons", 0xC1C2C3C4),
      ("out_prod", 0xD1D2D3D4), ("width", -1024), ("height", 0x7FFFFFFE),
      ("line_length", 0xFFFFFFFF), ("mem_length", 0x01000000), ("depth", 0xF8)],
     P.XENFB_PAGE_HEAD_FMT, False),
    ("struct xenkbd_motion",
     [("type", P.XENKBD_TYPE_MOTION), ("rel_x", -3), ("rel_y", 0x40302010),
      ("rel_z", -0x7FFFFFFF)], P.XENKBD_MOTION_FMT, True),
    ("struct xenkbd_key", [("type", P.XENKBD_TYPE_KEY), ("pressed", 0xFF),
                           ("keycode", 0xFEDCBA98)], P.XENKBD_KEY_FMT, True),
    ("struct xenkbd_position",
     [("type", P.XENKBD_TYPE_POS), ("abs_x", 0x7FFF), ("abs_y", -1), ("rel_z", 0x01020304)],
     P.XENKBD_POSITION_FMT, True),
    ("struct xenkbd_mtouch",
     [("type", P.XENKBD_TYPE_MTOUCH), ("event_type", P.XENKBD_MT_EV_MOTION),
      ("contact_id", 0x9A), ("u.pos.abs_x", -100), ("u.pos.abs_y", 0x11223344)],
     P.XENKBD_MTOUCH_POS_FMT, True),
    ("struct xenkbd_page",
     [("in_cons", 0x11111112), ("in_prod", 0x22222223), ("out_cons", 0x33333334),
      ("out_prod", 0xFFFFFFFF)], P.XENKBD_PAGE_FMT, True),
]


def _c_value(v):
    if isinstance(v, bytes):
        return None
    return "(%s)%dLL" % ("long long", v) if v < 0 else "%dULL" % v


def _c_source():
    out = [r"""
#define __XEN_TOOLS__ 1
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <xen/xen.h>
/* ring.h leaves the barriers to its user. */
#define xen_mb() __sync_synchronize()
#define xen_rmb() __sync_synchronize()
#define xen_wmb() __sync_synchronize()
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/io/fbif.h>
#include <xen/io/kbdif.h>
#include <xen/io/console.h>
#include <xen/io/xenbus.h>
#define XEN_PAGE_SIZE_ (1UL << XEN_PAGE_SHIFT)
"""]
    out.append("static const size_t sizes[] = {%s};" % ", ".join(
        "sizeof(%s)" % t for t, _ in SIZES))
    out.append("static const size_t offsets[] = {%s};" % ", ".join(
        "offsetof(%s, %s)" % (t, f) for t, f, _ in OFFSETS))
    out.append("static const long long constants[] = {%s};" % ", ".join(
        "(long long)(%s)" % e for e, _ in CONSTANTS))
    out.append("static const size_t ring_sizes[] = {%s};" % ", ".join(
        "__CONST_RING_SIZE(%s, %d)" % (name, nbytes) for name, _, nbytes in RING_SIZES))
    out.append("static const char *const strings[] = {%s};" % ", ".join(e for e, _ in STRINGS))
    out.append("size_t size_of(int i) { return sizes[i]; }")
    out.append("size_t offset_of(int i) { return offsets[i]; }")
    out.append("long long constant(int i) { return constants[i]; }")
    out.append("size_t c_ring_size(int i) { return ring_sizes[i]; }")
    out.append("const char *string(int i) { return strings[i]; }")
    out.append("unsigned int rd32(unsigned int x) { return __RD32(x); }")
    out.append(r"""
size_t event_ref(int which, unsigned int idx) {
    static unsigned char page[XEN_PAGE_SIZE_];
    switch (which) {
    case 0: return (unsigned char *)&XENFB_IN_RING_REF(page, idx) - page;
    case 1: return (unsigned char *)&XENFB_OUT_RING_REF(page, idx) - page;
    case 2: return (unsigned char *)&XENKBD_IN_RING_REF(page, idx) - page;
    case 3: return (unsigned char *)&XENKBD_OUT_RING_REF(page, idx) - page;
    }
    return (size_t)-1;
}""")
    out.append("size_t encode(int i, unsigned char *out) {\n    switch (i) {")
    for i, (ctype, fields, _fmt, _whole) in enumerate(ENCODINGS):
        body = ["    case %d: {" % i, "        %s s;" % ctype, "        memset(&s, 0, sizeof(s));"]
        for f, v in fields:
            if isinstance(v, bytes):
                lit = "".join("\\x%02x" % b for b in v)
                body.append('        memcpy(s.%s, "%s", %d);' % (f, lit, len(v)))
            else:
                body.append("        s.%s = %s;" % (f, _c_value(v)))
        body += ["        memcpy(out, &s, sizeof(s));", "        return sizeof(s);", "    }"]
        out += body
    out.append("    }\n    return 0;\n}")
    return "\n".join(out)


CDEF = """
    size_t size_of(int i);
    size_t offset_of(int i);
    long long constant(int i);
    size_t c_ring_size(int i);
    const char *string(int i);
    unsigned int rd32(unsigned int x);
    size_t event_ref(int which, unsigned int idx);
    size_t encode(int i, unsigned char *out);
"""


@pytest.fixture(scope="module")
def xen(tmp_path_factory):
    import importlib
    import sys

    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_pv_abi_probe", _c_source())
    out = tmp_path_factory.mktemp("pv_abi")
    ffi.compile(tmpdir=str(out), verbose=False)
    sys.path.insert(0, str(out))
    try:
        mod = importlib.import_module("_pv_abi_probe")
    finally:
        sys.path.remove(str(out))
    return mod


def test_sizes(xen):
    got = [(t, xen.lib.size_of(i)) for i, (t, _) in enumerate(SIZES)]
    assert got == [(t, ours) for t, ours in SIZES]


def test_offsets(xen):
    got = [(t, f, xen.lib.offset_of(i)) for i, (t, f, _) in enumerate(OFFSETS)]
    assert got == [(t, f, ours) for t, f, ours in OFFSETS]


def test_constants(xen):
    got = [(e, xen.lib.constant(i)) for i, (e, _) in enumerate(CONSTANTS)]
    assert got == [(e, ours) for e, ours in CONSTANTS]


def test_strings(xen):
    got = [xen.ffi.string(xen.lib.string(i)).decode() for i in range(len(STRINGS))]
    assert got == [s for _, s in STRINGS]


def test_ring_sizes(xen):
    got = [(n, b, xen.lib.c_ring_size(i)) for i, (n, _, b) in enumerate(RING_SIZES)]
    assert got == [(n, b, P.ring_size(e, b)) for n, e, b in RING_SIZES]
    # The figures DESIGN.md 13 quotes, and the 16-page blkif ring of Linux
    # blkback's max-ring-page-order 4.
    assert P.ring_size(P.BLKIF_ENTRY_SIZE, P.PAGE_SIZE) == 32
    assert P.ring_size(P.NETIF_TX_ENTRY_SIZE, P.PAGE_SIZE) == 256
    assert P.ring_size(P.NETIF_RX_ENTRY_SIZE, P.PAGE_SIZE) == 256
    assert xen.lib.c_ring_size(4) == P.ring_size(P.BLKIF_ENTRY_SIZE, P.ring_pages_bytes(4))
    assert P.ring_size(P.BLKIF_ENTRY_SIZE, P.ring_pages_bytes(4)) == 512


def test_ring_size_of_nothing():
    assert P.ring_size(P.BLKIF_ENTRY_SIZE, P.SRING_OFF_RING + P.BLKIF_ENTRY_SIZE - 1) == 0
    assert P.ring_size(P.BLKIF_ENTRY_SIZE, 0) == 0
    assert P.ring_size(0, P.PAGE_SIZE) == 0


def test_rd32(xen):
    values = [0, 1, 2, 3, 4, 5, 7, 8, 35, 36, 63, 64, 65, 584, 0xFFFF, 0x10000, 0x10001,
              0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    values += [(1 << k) + d for k in range(32) for d in (-1, 0, 1) if 0 <= (1 << k) + d < 2**32]
    assert [P.rd32(v) for v in values] == [xen.lib.rd32(v) for v in values]


def test_entry_sizes_are_the_unions():
    assert P.BLKIF_ENTRY_SIZE == max(P.BLKIF_REQ_SIZE, P.BLKIF_RSP_SIZE)
    assert P.NETIF_TX_ENTRY_SIZE == max(P.NETIF_TX_REQ_SIZE, P.NETIF_TX_RSP_SIZE)
    assert P.NETIF_RX_ENTRY_SIZE == max(P.NETIF_RX_REQ_SIZE, P.NETIF_RX_RSP_SIZE)
    # The other requests and extra-info slots fit the entries they travel in.
    assert P.BLKIF_DISCARD_SIZE <= P.BLKIF_ENTRY_SIZE
    assert P.BLKIF_INDIRECT_SIZE <= P.BLKIF_ENTRY_SIZE
    assert P.NETIF_EXTRA_SIZE <= min(P.NETIF_TX_REQ_SIZE, P.NETIF_RX_RSP_SIZE)


@pytest.mark.parametrize("i", range(len(ENCODINGS)),
                         ids=["%d-%s" % (i, e[0].split()[-1]) for i, e in enumerate(ENCODINGS)])
def test_encoding(xen, i):
    ctype, fields, fmt, whole = ENCODINGS[i]
    buf = xen.ffi.new("unsigned char[8192]")
    n = xen.lib.encode(i, buf)
    c_bytes = bytes(xen.ffi.buffer(buf, n))
    values = [v for _, v in fields]
    if fmt == P.BLKIF_REQ_FMT:
        values = values[:5] + _SEG_VALUES
    mine = struct.pack(fmt, *values)
    if whole:
        assert struct.calcsize(fmt) == n
        assert mine == c_bytes
    else:
        assert mine == c_bytes[: len(mine)]
    # And back: our format reads C's bytes into the same values.
    assert list(struct.unpack_from(fmt, c_bytes, 0)) == values


EVENT_RINGS = [
    (P.XENFB_IN_RING_OFFS, P.XENFB_IN_RING_LEN, P.XENFB_IN_EVENT_SIZE),
    (P.XENFB_OUT_RING_OFFS, P.XENFB_OUT_RING_LEN, P.XENFB_OUT_EVENT_SIZE),
    (P.XENKBD_IN_RING_OFFS, P.XENKBD_IN_RING_LEN, P.XENKBD_IN_EVENT_SIZE),
    (P.XENKBD_OUT_RING_OFFS, P.XENKBD_OUT_RING_LEN, P.XENKBD_OUT_EVENT_SIZE),
]


@pytest.mark.parametrize("which", range(len(EVENT_RINGS)))
def test_event_offsets(xen, which):
    # XENFB_IN_RING_REF and the like: idx % LEN over a u32 index, not a mask.
    offs, length, size = EVENT_RINGS[which]
    for idx in (0, 1, 24, 25, 26, 50, 51, 52, 1000, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF):
        assert P.event_offset(offs, length, size, idx) == xen.lib.event_ref(which, idx)
    assert P.event_offset(offs, length, size, length - 1) + size <= P.PAGE_SIZE
