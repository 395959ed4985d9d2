// xenevtchn_pending without blocking, for the event loop's burst
// (stubdm/main.py): the C both glues compile (build/glue_build.py for cffi,
// stubdm/port_common/modstubdm_hyp.c for MicroPython), kept beside the
// mapcache because both already build from here. -1 with EAGAIN when nothing
// is delivered. MiniOS's xenevtchn_pending does not block (it returns -1 when
// no port is pending); Linux's evtchn device blocks in read, so look first;
// host_sim's libsim looks at its delivery ring instead (no syscall).
#ifndef STUBDM_EVTCHN_NOWAIT_H
#define STUBDM_EVTCHN_NOWAIT_H

#include <errno.h>
#include <xenevtchn.h>

#if defined(STUBDM_PLATFORM_MINIOS)
static inline int stubdm_evtchn_pending_nowait(xenevtchn_handle *xce) {
    int r = xenevtchn_pending(xce);
    if (r < 0) {
        errno = EAGAIN;
    }
    return r;
}
#elif defined(STUBDM_GLUE_SIM)
int hostsim_evtchn_pending_nowait(xenevtchn_handle *xce);  // hostsim_internal.h
static inline int stubdm_evtchn_pending_nowait(xenevtchn_handle *xce) {
    return hostsim_evtchn_pending_nowait(xce);
}
#else
#include <poll.h>
static inline int stubdm_evtchn_pending_nowait(xenevtchn_handle *xce) {
    struct pollfd p = {.fd = xenevtchn_fd(xce), .events = POLLIN};
    int n = poll(&p, 1, 0);
    if (n <= 0) {
        if (n == 0) {
            errno = EAGAIN;
        }
        return -1;
    }
    return xenevtchn_pending(xce);
}
#endif

#endif
