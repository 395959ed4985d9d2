// stubdm's MicroPython port for MiniOS (DESIGN.md 8, 9).
//
// One configuration for both builds of the port: PLATFORM=minios (linked
// with MiniOS into a stub-domain image) and PLATFORM=hostsim (the same port
// as a Linux program, against host_sim's implementation of Xen's library
// API). The Makefile defines STUBDM_PLATFORM_MINIOS or
// STUBDM_PLATFORM_HOSTSIM; nothing else here differs between the two.
#include <stdint.h>

// EXTRA_FEATURES: bytearray, memoryview, struct, f-strings, ... (MINIMUM
// lacks them); arbitrary-precision ints for 64-bit guest addresses.
#define MICROPY_CONFIG_ROM_LEVEL (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)
#define MICROPY_LONGINT_IMPL (MICROPY_LONGINT_IMPL_MPZ)
#define MICROPY_FLOAT_IMPL (MICROPY_FLOAT_IMPL_DOUBLE)

// The device model is frozen bytecode; no compiler, no REPL, no scripts
// from a file system (a stub domain has none).
#define MICROPY_ENABLE_COMPILER (0)
#define MICROPY_HELPER_REPL (0)
#define MICROPY_PY_BUILTINS_COMPILE (0)
#define MICROPY_PY_BUILTINS_EXECFILE (0)
#define MICROPY_PY_BUILTINS_INPUT (0)
#define MICROPY_PY_BUILTINS_HELP (0)
// Frozen modules: FROZEN_MANIFEST makes py/mkrules.mk define
// MICROPY_MODULE_FROZEN_MPY and MICROPY_QSTR_EXTRA_POOL. It also asks for
// frozen source strings, which need the compiler this port leaves out.
#undef MICROPY_MODULE_FROZEN_STR
#define MICROPY_MODULE_FROZEN_STR (0)
#define MICROPY_PERSISTENT_CODE_LOAD (0)

// Memory: a GC heap in a static region (main.c), one thread, no finalisers
// to run in a hurry. The emergency buffer lets MemoryError carry a message
// when the heap is full.
#define MICROPY_ENABLE_GC (1)
#define MICROPY_ENABLE_FINALISER (1)
#define MICROPY_ENABLE_EMERGENCY_EXCEPTION_BUF (1)
#define MICROPY_EMERGENCY_EXCEPTION_BUF_SIZE (256)
#define MICROPY_STACK_CHECK (1)
#define MICROPY_ENABLE_PYSTACK (0)
#define MICROPY_PY_THREAD (0)
#define MICROPY_KBD_EXCEPTION (0)
#define MICROPY_ALLOC_PATH_MAX (256)
#define MICROPY_GCREGS_SETJMP (0)
// The GC heap is sized at start-up (-X heapsize=); this is the static
// region it comes from. The Makefile may set it (HEAP_SIZE=bytes).
#ifndef STUBDM_PORT_HEAP_MAX
#define STUBDM_PORT_HEAP_MAX (8 * 1024 * 1024)
#endif
#ifndef STUBDM_PORT_HEAP_DEFAULT
#define STUBDM_PORT_HEAP_DEFAULT (4 * 1024 * 1024)
#endif

// Error reporting: exceptions with their line numbers, for the console.
#define MICROPY_ERROR_REPORTING (MICROPY_ERROR_REPORTING_DETAILED)
#define MICROPY_ENABLE_SOURCE_LINE (1)
#define MICROPY_WARNINGS (1)

// Modules the device model imports (PORTABLE_PYTHON.md): sys, struct,
// errno (with errorcode), select.poll on file descriptors, time ticks,
// micropython, gc, collections. Files through the POSIX layer (host libc,
// or MiniOS's newlib + lib/sys.c): open() for -serial file:, and sys.stdout
// / sys.stderr on descriptors 1 and 2 (MiniOS: its console).
#define MICROPY_PY_SYS_PLATFORM "stubdm-port"
#define MICROPY_PY_SYS_EXIT (1)
#define MICROPY_PY_SYS_ARGV (1)
#define MICROPY_PY_SYS_STDFILES (1)
#define MICROPY_PY_SYS_STDIO_BUFFER (1)
#define MICROPY_PY_SYS_EXC_INFO (1)
#define MICROPY_PY_SYS_PS1_PS2 (0)
#define MICROPY_PY_ERRNO (1)
#define MICROPY_PY_ERRNO_ERRORCODE (1)
#define MICROPY_USE_INTERNAL_ERRNO (0)
#define MICROPY_PY_SELECT (1)
#define MICROPY_PY_SELECT_POSIX_OPTIMISATIONS (1)
#define MICROPY_PY_SELECT_SELECT (0)
#define MICROPY_PY_TIME (1)
#define MICROPY_PY_TIME_GMTIME_LOCALTIME_MKTIME (0)
#define MICROPY_PY_TIME_TIME_TIME_NS (0)
#define MICROPY_PY_GC (1)
#define MICROPY_PY_MICROPYTHON_MEM_INFO (1)
#define MICROPY_PY_COLLECTIONS_DEQUE (1)
#define MICROPY_PY_IO (1)
#define MICROPY_VFS (1)
#define MICROPY_VFS_POSIX (1)
#define MICROPY_READER_VFS (0)
#define MICROPY_PY_OS (0)
#define MICROPY_STREAMS_POSIX_API (0)

// Not needed by the device model, and each would want port support (a
// random source, a frame buffer, sockets): off, to keep the image small.
#define MICROPY_PY_ASYNCIO (0)
#define MICROPY_PY_UCTYPES (0)
#define MICROPY_PY_DEFLATE (0)
#define MICROPY_PY_JSON (0)
#define MICROPY_PY_RE (0)
#define MICROPY_PY_HEAPQ (0)
#define MICROPY_PY_HASHLIB (0)
#define MICROPY_PY_BINASCII (0)
#define MICROPY_PY_RANDOM (0)
#define MICROPY_PY_FRAMEBUF (0)
#define MICROPY_PY_PLATFORM (0)
#define MICROPY_PY_CMATH (0)
#define MICROPY_PY_MICROPYTHON_RINGIO (0)
#define MICROPY_PY_MACHINE (0)

// Type definitions for x86-64 (a stub domain is a 64-bit PV guest).
typedef intptr_t mp_int_t;
typedef uintptr_t mp_uint_t;
typedef long mp_off_t;

#include <alloca.h>

#define MICROPY_HW_BOARD_NAME "stubdm"
#ifdef STUBDM_PLATFORM_MINIOS
#define MICROPY_HW_MCU_NAME "MiniOS stub domain"
#else
#define MICROPY_HW_MCU_NAME "host_sim (Linux)"
#endif

#define MP_STATE_PORT MP_STATE_VM
