// stubdm's MicroPython port: the entry point shared by both platforms.
//
// The platform's own entry (platform_minios.c: MiniOS's main()/app_main();
// platform_hostsim.c: Linux's main()) calls stubdm_port_main() with the
// command line. It takes the port's own options, finds the device model's
// arguments (xenstore dm-argv when the platform has them, else the command
// line), sets up the GC heap in a static region, runs the frozen
// stubdm.main.main(), and ends the domain with the result:
//
//   0  the device model ended cleanly           (MiniOS: SHUTDOWN_poweroff)
//   1  hypervisor error (stubdm.main)           (MiniOS: SHUTDOWN_crash, all below)
//   2  bad arguments: stubdm.main's usage error, or a malformed dm-argv
//   3  out of memory: the heap is exhausted (MemoryError)
//   4  any other uncaught exception or internal error
//
// Whatever goes wrong ends in one clear console line and a shutdown, never a
// hang: a stub domain that hangs holds its guest hostage.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "py/builtin.h"
#include "py/gc.h"
#include "py/mperrno.h"
#include "py/mphal.h"
#include "py/runtime.h"
#include "py/stackctrl.h"
#include "extmod/vfs.h"
#include "extmod/vfs_posix.h"
#include "shared/runtime/gchelper.h"

#include "platform.h"
#include "stubdm_port.h"

// The GC heap: a static region (a stub domain has no memory to grow into);
// -X heapsize= uses less of it.
static uint8_t stubdm_heap[STUBDM_PORT_HEAP_MAX] __attribute__((aligned(16)));

stubdm_port_stats_t stubdm_port_stats;

// ---- console ---------------------------------------------------------------

mp_uint_t mp_hal_stdout_tx_strn(const char *str, size_t len) {
    platform_console_write(PLATFORM_CONSOLE_OUT, str, len);
    return len;
}

void mp_hal_stdout_tx_strn_cooked(const char *str, size_t len) {
    platform_console_write(PLATFORM_CONSOLE_OUT, str, len);
}

void mp_hal_stdout_tx_str(const char *str) {
    platform_console_write(PLATFORM_CONSOLE_OUT, str, strlen(str));
}

int mp_hal_stdin_rx_chr(void) {
    // The device model never reads the console; a stub domain has no one there.
    return -1;
}

static void stderr_strn(void *env, const char *str, size_t len) {
    (void)env;
    platform_console_write(PLATFORM_CONSOLE_ERR, str, len);
}

static const mp_print_t stderr_print = {NULL, stderr_strn};

// One line on the console's error stream, formatted without the MicroPython
// heap (it may be the thing that is exhausted).
void stubdm_port_message(const char *fmt, ...) {
    static char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if ((size_t)n > sizeof(line) - 2) {
        n = sizeof(line) - 2;
    }
    line[n++] = '\n';
    platform_console_write(PLATFORM_CONSOLE_ERR, "stubdm-port: ", 13);
    platform_console_write(PLATFORM_CONSOLE_ERR, line, (size_t)n);
}

// ---- GC --------------------------------------------------------------------

void gc_collect(void) {
    gc_info_t info;
    gc_info(&info);
    if (info.used > stubdm_port_stats.peak_used) {
        stubdm_port_stats.peak_used = info.used;
    }
    gc_collect_start();
    gc_helper_collect_regs_and_stack();
    gc_collect_end();
    gc_info(&info);
    stubdm_port_stats.collections++;
    if (info.used > stubdm_port_stats.peak_live) {
        stubdm_port_stats.peak_live = info.used;
    }
}

// ---- fatal paths -------------------------------------------------------------

void nlr_jump_fail(void *val) {
    (void)val;
    stubdm_port_message("internal error: exception with no handler; stopping");
    platform_shutdown(STUBDM_EXIT_INTERNAL);
}

void NORETURN __fatal_error(const char *msg) {
    stubdm_port_message("fatal error: %s; stopping", msg);
    platform_shutdown(STUBDM_EXIT_INTERNAL);
}

#ifndef NDEBUG
void MP_WEAK __assert_func(const char *file, int line, const char *func, const char *expr) {
    stubdm_port_message("assertion '%s' failed at %s:%d", expr, file, line);
    platform_shutdown(STUBDM_EXIT_INTERNAL);
}
#endif

// ---- arguments -------------------------------------------------------------

// "123", "64k", "4M" -> bytes; 0 if malformed.
static size_t parse_size(const char *s) {
    size_t v = 0;
    if (*s < '0' || *s > '9') {
        return 0;
    }
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > SIZE_MAX / 10 - 10) {
            return 0;
        }
        v = v * 10 + (size_t)(*s - '0');
    }
    size_t mult = 1;
    if (*s == 'k' || *s == 'K') {
        mult = 1024;
        s++;
    } else if (*s == 'm' || *s == 'M') {
        mult = 1024 * 1024;
        s++;
    }
    if (*s != '\0' || v > SIZE_MAX / mult) {
        return 0;
    }
    return v * mult;
}

// The port's own options, anywhere on the command line (never in dm-argv),
// taken out before the device model sees its arguments (QEMU has no -X):
//   -X heapsize=N[k|M]   GC heap size (default STUBDM_PORT_HEAP_DEFAULT, at
//                        most STUBDM_PORT_HEAP_MAX, at least 16k)
// Compacts argv[1..] to the device model's arguments; returns their number,
// or -1 (message given).
static int port_options(int argc, char **argv, size_t *heap_size) {
    int out = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-X") != 0) {
            argv[out++] = argv[i];
            continue;
        }
        if (i + 1 >= argc) {
            stubdm_port_message("-X needs an option (heapsize=N)");
            return -1;
        }
        const char *o = argv[++i];
        if (strncmp(o, "heapsize=", 9) == 0) {
            size_t n = parse_size(o + 9);
            if (n < STUBDM_PORT_HEAP_MIN || n > STUBDM_PORT_HEAP_MAX) {
                stubdm_port_message("-X heapsize: '%s' is not a size from %u to %u bytes",
                    o + 9, (unsigned)STUBDM_PORT_HEAP_MIN, (unsigned)STUBDM_PORT_HEAP_MAX);
                return -1;
            }
            *heap_size = n & ~(size_t)15;
        } else {
            stubdm_port_message("-X: unknown port option '%s' (known: heapsize=N)", o);
            return -1;
        }
    }
    return out - 1;
}

// ---- running the device model ------------------------------------------------

static int exit_status_of(mp_obj_t v) {
    if (v == mp_const_none) {
        return 0;
    }
    mp_int_t n;
    if (mp_obj_get_int_maybe(v, &n)) {
        return (int)(n & 0xff);
    }
    mp_obj_print_helper(&stderr_print, v, PRINT_STR);
    mp_print_str(&stderr_print, "\n");
    return 1;
}

static void report_out_of_memory(void) {
    gc_info_t info;
    gc_info(&info);
    stubdm_port_message(
        "out of memory: the device model's heap (%lu bytes) is exhausted "
        "(%lu used, largest free block %lu bytes); stopping the stub domain",
        (unsigned long)info.total, (unsigned long)info.used,
        (unsigned long)(info.max_block * MICROPY_BYTES_PER_GC_BLOCK));
}

static int run_device_model(size_t n, const char *const *args) {
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        // Only frozen modules: a stray stubdm/ folder next to the host binary
        // must not shadow the image's own code.
        mp_obj_list_init(MP_OBJ_TO_PTR(mp_sys_path), 0);
        mp_obj_list_append(mp_sys_path, MP_OBJ_NEW_QSTR(MP_QSTR__dot_frozen));
        mp_obj_list_init(MP_OBJ_TO_PTR(mp_sys_argv), 0);
        mp_obj_list_append(mp_sys_argv, MP_OBJ_NEW_QSTR(MP_QSTR_stubdm));
        for (size_t i = 0; i < n; i++) {
            mp_obj_list_append(mp_sys_argv, mp_obj_new_str(args[i], strlen(args[i])));
        }
        #if MICROPY_VFS_POSIX
        // The POSIX file layer at / (open() for -serial file:PATH).
        mp_obj_t vfs_args[2] = {
            MP_OBJ_TYPE_GET_SLOT(&mp_type_vfs_posix, make_new)(&mp_type_vfs_posix, 0, 0, NULL),
            MP_OBJ_NEW_QSTR(MP_QSTR__slash_),
        };
        mp_vfs_mount(2, vfs_args, (mp_map_t *)&mp_const_empty_map);
        MP_STATE_VM(vfs_cur) = MP_STATE_VM(vfs_mount_table);
        #endif
        mp_obj_t fromlist = mp_obj_new_tuple(1, (mp_obj_t[]) {MP_OBJ_NEW_QSTR(MP_QSTR_main)});
        mp_obj_t mod = mp_import_name(qstr_from_str("stubdm.main"), fromlist,
            MP_OBJ_NEW_SMALL_INT(0));
        mp_obj_t main_fn = mp_load_attr(mod, MP_QSTR_main);
        mp_obj_t ret = mp_call_function_0(main_fn);
        nlr_pop();
        return exit_status_of(ret);
    }
    mp_obj_t exc = MP_OBJ_FROM_PTR(nlr.ret_val);
    const mp_obj_type_t *type = mp_obj_get_type(exc);
    if (mp_obj_is_subclass_fast(MP_OBJ_FROM_PTR(type), MP_OBJ_FROM_PTR(&mp_type_SystemExit))) {
        return exit_status_of(mp_obj_exception_get_value(exc));
    }
    if (mp_obj_is_subclass_fast(MP_OBJ_FROM_PTR(type), MP_OBJ_FROM_PTR(&mp_type_MemoryError))) {
        mp_obj_print_exception(&stderr_print, exc);
        report_out_of_memory();
        return STUBDM_EXIT_NO_MEMORY;
    }
    mp_obj_print_exception(&stderr_print, exc);
    stubdm_port_message("the device model stopped on an uncaught exception; "
        "stopping the stub domain");
    return STUBDM_EXIT_INTERNAL;
}

static void report_stats(void) {
    gc_info_t info;
    gc_info(&info);
    if (info.used > stubdm_port_stats.peak_used) {
        stubdm_port_stats.peak_used = info.used;
    }
    char line[200];
    int n = snprintf(line, sizeof(line),
        "stubdm-port-stats: heap=%lu peak_used=%lu peak_live=%lu collections=%lu\n",
        (unsigned long)info.total, (unsigned long)stubdm_port_stats.peak_used,
        (unsigned long)stubdm_port_stats.peak_live,
        (unsigned long)stubdm_port_stats.collections);
    if (n > 0) {
        platform_console_write(PLATFORM_CONSOLE_ERR, line,
            (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    }
}

int stubdm_port_main(int argc, char **argv) {
    mp_stack_ctrl_init();
    mp_stack_set_limit(STUBDM_PORT_STACK_LIMIT);

    size_t heap_size = STUBDM_PORT_HEAP_DEFAULT;
    int nopts = port_options(argc, argv, &heap_size);
    if (nopts < 0) {
        platform_shutdown(STUBDM_EXIT_USAGE);
    }

    // The device model's arguments: dm-argv wins when the platform has one.
    static dmargv_list_t dm_list;
    static const char *dm_args[DMARGV_MAX_ARGS];
    const char *const *args = (const char *const *)(argv + 1);
    size_t nargs = (size_t)nopts;
    char err[256];
    switch (platform_dm_argv(&dm_list, err, sizeof(err))) {
        case PLATFORM_DMARGV_FOUND: {
            int n = dmargv_build(&dm_list, dm_args, DMARGV_MAX_ARGS, err, sizeof(err));
            if (n < 0) {
                stubdm_port_message("malformed dm-argv: %s; stopping the stub domain", err);
                platform_shutdown(STUBDM_EXIT_USAGE);
            }
            args = dm_args;
            nargs = (size_t)n;
            break;
        }
        case PLATFORM_DMARGV_ERROR:
            stubdm_port_message("cannot read dm-argv: %s; stopping the stub domain", err);
            platform_shutdown(STUBDM_EXIT_USAGE);
        default:
            break;
    }

    gc_init(stubdm_heap, stubdm_heap + heap_size);
    mp_init();
    int status = run_device_model(nargs, args);
    report_stats();
    mp_deinit();
    platform_shutdown(status);
}
