// What hostsim_libs.c offers the rest of libsim (hostsim_xenlibs.c): the
// locked round trip to host_sim's hypervisor and the foreign-mapping core.
#ifndef HOSTSIM_INTERNAL_H
#define HOSTSIM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <xenevtchn.h>
#include <xenforeignmemory.h>
#include <xengnttab.h>

// One request (see hostsim_proto.h); returns the result or -1 with errno.
int hostsim_call(uint32_t op, const void *req, uint32_t req_len, void *reply,
                 uint32_t reply_cap, uint32_t *reply_len, int *fds, int *nfds, int one_way);
int hostsim_connect(void);
// Map pages guest frames at addr (a hint unless flags has MAP_FIXED).
void *hostsim_map(uint32_t dom, void *addr, int prot, int flags, size_t pages,
                  const xen_pfn_t arr[], int err[]);
// count fresh zeroed pages of the caller's own domain's memory, for itself
// (MiniOS's alloc_pages), mapped side by side; frames[i] gets page i's frame
// number, which a backend with foreign-mapping privilege may map. NULL with
// errno on failure.
void *hostsim_own_pages(uint32_t count, uint64_t *frames);
// Gives them back (addr and frames as hostsim_own_pages gave them).
int hostsim_free_own_pages(void *addr, uint32_t count, const uint64_t *frames);
// The frame numbers of the pages of a share of ours (xengntshr_share_pages'
// address and count), as a backend with foreign-mapping privilege names them
// (kbdif.h's page-ref beside page-gref; MiniOS: virt_to_mfn). -1, EINVAL: no
// such share.
int hostsim_share_frames(xengntshr_handle *xgs, void *addr, uint32_t count, uint64_t *frames);
// xenevtchn_pending, or -1 with EAGAIN at once when nothing is delivered.
int hostsim_evtchn_pending_nowait(xenevtchn_handle *xce);
// The guest's memory map changed (populate, relocate): fetch it afresh.
void hostsim_regions_changed(void);

#endif
