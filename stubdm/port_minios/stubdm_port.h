// Shared declarations of stubdm's MicroPython port (main.c and its modules).
#ifndef STUBDM_PORT_H
#define STUBDM_PORT_H

#include <stddef.h>

// Exit statuses (main.c says what each means); on MiniOS anything but 0 is a
// SHUTDOWN_crash.
#define STUBDM_EXIT_OK (0)
#define STUBDM_EXIT_HYPERVISOR (1)
#define STUBDM_EXIT_USAGE (2)
#define STUBDM_EXIT_NO_MEMORY (3)
#define STUBDM_EXIT_INTERNAL (4)

#define STUBDM_PORT_HEAP_MIN (16 * 1024)

// MicroPython's recursion guard. A MiniOS thread has a 64 KiB stack
// (STACK_SIZE_PAGE_ORDER 4 on x86-64): leave it room for C below Python.
#ifndef STUBDM_PORT_STACK_LIMIT
#ifdef STUBDM_PLATFORM_MINIOS
#define STUBDM_PORT_STACK_LIMIT (40 * 1024)
#else
#define STUBDM_PORT_STACK_LIMIT (256 * 1024)
#endif
#endif

// Heap figures, kept by gc_collect(): used bytes just before a collection
// (the most the heap held) and just after one (what was live).
typedef struct {
    size_t peak_used;
    size_t peak_live;
    size_t collections;
} stubdm_port_stats_t;

extern stubdm_port_stats_t stubdm_port_stats;

// One "stubdm-port: ..." line on the console's error stream; no heap used.
void stubdm_port_message(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif // STUBDM_PORT_H
