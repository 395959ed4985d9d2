// The MicroPython HAL of stubdm's port: time and console, over platform.h.
#ifndef STUBDM_PORT_MPHALPORT_H
#define STUBDM_PORT_MPHALPORT_H

#include <errno.h>

#include "platform.h"

static inline mp_uint_t mp_hal_ticks_ms(void) {
    return (mp_uint_t)(platform_monotonic_ns() / 1000000u);
}

static inline mp_uint_t mp_hal_ticks_us(void) {
    return (mp_uint_t)(platform_monotonic_ns() / 1000u);
}

#define mp_hal_ticks_cpu() 0

static inline void mp_hal_delay_us(mp_uint_t us) {
    platform_sleep_us(us);
}

static inline void mp_hal_delay_ms(mp_uint_t ms) {
    platform_sleep_us(ms * 1000u);
}

static inline void mp_hal_set_interrupt_char(char c) {
    (void)c;
}

// PEP 475: retry system calls on EINTR (the POSIX file layer uses this).
#define MP_HAL_RETRY_SYSCALL(ret, syscall, raise) { \
        for (;;) { \
            ret = syscall; \
            if (ret == -1) { \
                int err = errno; \
                if (err == EINTR) { \
                    mp_handle_pending(true); \
                    continue; \
                } \
                raise; \
            } \
            break; \
        } \
}

#endif // STUBDM_PORT_MPHALPORT_H
