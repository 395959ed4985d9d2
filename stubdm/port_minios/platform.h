// The platform boundary of stubdm's MicroPython port: what differs between
// a MiniOS stub domain (platform_minios.c) and the same port built as a
// Linux program against host_sim (platform_hostsim.c). Everything else in
// this directory is shared.
#ifndef STUBDM_PORT_PLATFORM_H
#define STUBDM_PORT_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#include "dmargv.h"

#define PLATFORM_CONSOLE_OUT (1)
#define PLATFORM_CONSOLE_ERR (2)

// Console: stdout/stderr on Linux; MiniOS's console (the stub domain's
// console 0, the device-model log) in a stub domain. Never allocates from
// the MicroPython heap, so it works when that heap is exhausted.
void platform_console_write(int stream, const char *buf, size_t len);

// Monotonic time in nanoseconds; sleep without busy-waiting.
uint64_t platform_monotonic_ns(void);
void platform_sleep_us(uint64_t us);

// The device model's arguments from xenstore (DESIGN.md 7): libxl writes one
// key per argument, <vm>/image/dm-argv/NNN. Fills list (entries point into
// storage that lives as long as the program) and returns:
//   PLATFORM_DMARGV_NONE   no dm-argv here: use the command line
//   PLATFORM_DMARGV_FOUND  list holds the raw keys and values, unchecked
//   PLATFORM_DMARGV_ERROR  dm-argv exists but could not be read; err says why
#define PLATFORM_DMARGV_NONE (0)
#define PLATFORM_DMARGV_FOUND (1)
#define PLATFORM_DMARGV_ERROR (-1)
int platform_dm_argv(dmargv_list_t *list, char *err, size_t errlen);

// End the device model. status 0: a clean end (MiniOS: SHUTDOWN_poweroff);
// anything else is a failure (MiniOS: SHUTDOWN_crash, so the toolstack sees a
// crashed stub domain; Linux: exit status). Never returns.
void platform_shutdown(int status) __attribute__((noreturn));

// Shared entry point (main.c): the platform's main()/app_main() calls it
// with the command line, program name first.
int stubdm_port_main(int argc, char **argv);

#endif // STUBDM_PORT_PLATFORM_H
