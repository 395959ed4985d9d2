// The wire protocol between host_sim's implementation of Xen's user
// libraries (hostsim_libs.c, loaded into the device model's process) and the
// host_sim hypervisor process (host_sim/hypervisor.py). host_sim/proto.py
// holds the same numbers for the Python side.
//
// Request:  u32 op, u32 payload length, payload.
// Response: i32 result (>= 0, or -errno), u32 payload length, payload; file
//           descriptors ride along as SCM_RIGHTS. One-way ops get no response.
// All integers little-endian, payloads packed without padding.
#ifndef HOSTSIM_PROTO_H
#define HOSTSIM_PROTO_H

#define HOSTSIM_SOCKET_ENV "HOST_SIM_SOCKET"

enum {
    HS_OP_CREATE_IOREQ_SERVER = 1,  // u16 domid, i32 handle_bufioreq -> u16 id
    HS_OP_GET_IOREQ_SERVER_INFO = 2,  // u16 domid, u16 id -> u64 ioreq_gfn, u64 buf_gfn, u32 buf_port
    HS_OP_MAP_IO_RANGE = 3,  // u16 domid, u16 id, u32 is_mmio, u64 start, u64 end
    HS_OP_UNMAP_IO_RANGE = 4,  // same
    HS_OP_MAP_PCIDEV = 5,  // u16 domid, u16 id, u16 seg, u8 bus, u8 dev, u8 fn
    HS_OP_UNMAP_PCIDEV = 6,  // same
    HS_OP_SET_IOREQ_SERVER_STATE = 7,  // u16 domid, u16 id, u32 enabled
    HS_OP_DESTROY_IOREQ_SERVER = 8,  // u16 domid, u16 id
    HS_OP_SET_ISA_IRQ_LEVEL = 9,  // u16 domid, u8 irq, u32 level
    HS_OP_SET_PCI_INTX_LEVEL = 10,  // u16 domid, u16 seg, u8 bus, u8 dev, u8 intx, u32 level
    HS_OP_SET_PCI_LINK_ROUTE = 11,  // u16 domid, u8 link, u8 irq
    HS_OP_SHUTDOWN = 12,  // u16 domid, u32 reason
    HS_OP_MEMORY_MAP = 13,  // u16 domid -> u32 n, n * {u64 gfn, u64 npages, u64 fd_offset, u32 fd_index, u32 prot}
    HS_OP_EVTCHN_OPEN = 14,  // -> u32 handle; one fd: the stream the handle's pending ports arrive on
    HS_OP_EVTCHN_BIND_INTERDOMAIN = 15,  // u32 handle, u32 domid, u32 remote_port -> local port
    HS_OP_EVTCHN_NOTIFY = 16,  // u32 handle, u32 local_port (one-way)
    HS_OP_EVTCHN_UNBIND = 17,  // u32 handle, u32 local_port
    HS_OP_EVTCHN_CLOSE = 18,  // u32 handle
    HS_OP_INJECT_MSI = 19,  // u16 domid, u64 addr, u32 data
    HS_OP_MODIFIED_MEMORY = 20,  // u16 domid, u64 first_pfn, u32 nr
    HS_OP_EVTCHN_BIND_UNBOUND = 21,  // u32 handle, u32 remote_domid -> local port
    // The caller's domain grants count fresh pages of its own memory to
    // remote_domid -> count * {u32 ref, u64 offset in the fd}; one fd: the
    // domain's memory.
    HS_OP_GNTSHR_SHARE = 22,  // u32 remote_domid, u32 count, u32 writable
    HS_OP_GNTSHR_UNSHARE = 23,  // u32 count, count * u32 ref
    // What qemu-xen needs besides (hostsim_xenlibs.c):
    HS_OP_POPULATE_PHYSMAP = 24,  // u16 domid, u32 n, n * {u64 gfn, u64 npages}
    HS_OP_RELOCATE_MEMORY = 25,  // u16 domid, u32 size, u64 src_gfn, u64 dst_gfn
    HS_OP_TRACK_DIRTY_VRAM = 26,  // u16 domid, u64 first_pfn, u32 nr -> bitmap (nr bits)
    HS_OP_HVM_PARAM = 27,  // u16 domid, u32 index, u32 set, u64 value -> u64 value
    HS_OP_SET_MEM_TYPE = 28,  // u16 domid, u32 type, u64 first_pfn, u32 nr
    HS_OP_PIN_MEMORY_CACHEATTR = 29,  // u16 domid, u64 start, u64 end, u32 type
};

#define HS_POPULATE_MAX_RUNS 255
#define HS_DIRTY_MAX_PAGES 32768

#define HS_GNTSHR_MAX_PAGES 256

#endif
