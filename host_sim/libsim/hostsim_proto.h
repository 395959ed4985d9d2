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
    HS_OP_EVTCHN_OPEN = 14,  // -> u32 handle; three fds (HS_EVTCHN_FD_*): see below
    HS_OP_EVTCHN_BIND_INTERDOMAIN = 15,  // u32 handle, u32 domid, u32 remote_port -> local port
    // (16 was a notify message: notifications no longer go over the socket)
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
    // Fresh pages of the caller's domain's own memory, for itself, named by
    // frame number (fbif.h's page-ref, pd[]): -> count * u64 frame (the page
    // at frame * 4096 in the fd); one fd: the domain's memory.
    HS_OP_OWN_ALLOC = 30,  // u32 count
    HS_OP_OWN_FREE = 31,  // u32 count, count * u64 frame
    // The ring of line levels for domid (HS_IRQ_*, below): two fds, the
    // memfd and the eventfd. One per connection (-EBUSY after the first).
    HS_OP_IRQ_OPEN = 32,  // u16 domid
};

#define HS_POPULATE_MAX_RUNS 255
#define HS_DIRTY_MAX_PAGES 32768

#define HS_GNTSHR_MAX_PAGES 256
#define HS_OWN_MAX_PAGES 256

// An event channel handle's events go by no message at all, as Xen's go by
// shared_info and an upcall. HS_OP_EVTCHN_OPEN hands the device model:
//   HS_EVTCHN_FD_PIPE  the read end of a pipe: one byte per port delivered,
//                      written after the port is in the ring; the fd that
//                      xenevtchn_fd gives (it hangs up when host_sim goes);
//   HS_EVTCHN_FD_KICK  an eventfd the device model writes after setting a
//                      bit in send[] or unmask[] (host_sim polls it);
//   HS_EVTCHN_FD_SHM   a memfd of HS_EVTCHN_SHM_SIZE bytes, laid out below.
// Delivery is the Linux evtchn device's: a port is masked as it is
// delivered and stays masked until xenevtchn_unmask; an event on a masked
// port sets its pending bit, and unmasking a pending port delivers it
// again (host_sim does that: unmask[] tells it). Every field is written by
// one side only, except state[] (atomic read-modify-writes by both).
#define HS_EVTCHN_FD_PIPE 0
#define HS_EVTCHN_FD_KICK 1
#define HS_EVTCHN_FD_SHM 2
#define HS_EVTCHN_PORTS 4096  // the 2-level ABI's ports (64 x 64)
#define HS_EVTCHN_RING 1024  // entries of the delivery ring (a power of two)
#define HS_EVTCHN_PENDING 0x01  // state[]: an event arrived while masked
#define HS_EVTCHN_MASKED 0x02  // state[]: delivered, not unmasked yet
#define HS_EVTCHN_OFF_STATE 0  // u8 state[HS_EVTCHN_PORTS], by local port
#define HS_EVTCHN_OFF_PROD 4096  // u32: ring entries written (host_sim)
#define HS_EVTCHN_OFF_CONS 4100  // u32: ring entries read (device model)
#define HS_EVTCHN_OFF_OVERFLOW 4104  // u32: host_sim found the ring full
#define HS_EVTCHN_OFF_SEND 4160  // u64[64]: ports notified (device model sets)
#define HS_EVTCHN_OFF_UNMASK 4672  // u64[64]: ports unmasked while pending
// u64[2], CLOCK_MONOTONIC ns, for benches only (host_sim trusts neither): when
// the device model last took a port from pending(), and last entered notify().
#define HS_EVTCHN_OFF_STAMPS 6144
// u32, ns: the longest the device model may watch the ring after a notify
// (hostsim_libs.c, hs_spin_for_event; host_sim sets it, 0: never).
#define HS_EVTCHN_OFF_DM_SPIN 6160
#define HS_EVTCHN_OFF_RING 8192  // u32 ring[HS_EVTCHN_RING] of local ports
#define HS_EVTCHN_SHM_SIZE 12288

// XEN_DMOP_set_pci_intx_level and XEN_DMOP_set_isa_irq_level go by no message
// either once HS_OP_IRQ_OPEN gave the ring (libsim checks their arguments as
// Xen's dm.c does and keeps the message for the rare full ring). Each call is
// one u16 entry: a PCI INTx (dev << 3) | (intx << 1) | level, an ISA IRQ
// HS_IRQ_ISA | (irq << 1) | level; XEN_DMOP_inject_msi with a vector (data's
// low byte not 0) is HS_IRQ_MSI_ENTRIES together: HS_IRQ_MSI, the address in
// four u16 and the data in two, least significant first. The device model writes entries and then
// prod, and writes the eventfd; host_sim applies every entry in order before
// it answers anything else of the device model's: a message on its socket, a
// notify, an ioreq's answer (so a level is in effect before the guest sees the
// access that set it complete, as after Xen's synchronous dm_op).
#define HS_IRQ_FD_SHM 0
#define HS_IRQ_FD_KICK 1
#define HS_IRQ_RING 2048  // entries (a power of two)
#define HS_IRQ_ISA 0x8000
#define HS_IRQ_MSI 0x4000
#define HS_IRQ_MSI_ENTRIES 7
#define HS_IRQ_OFF_PROD 0  // u32: entries written (device model)
#define HS_IRQ_OFF_CONS 64  // u32: entries applied (host_sim)
#define HS_IRQ_OFF_RING 4096  // u16 ring[HS_IRQ_RING]
#define HS_IRQ_SHM_SIZE 8192

#endif
