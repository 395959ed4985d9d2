// The port's platform in a MiniOS stub domain (platform.h, DESIGN.md 7, 8).
//
//   console   MiniOS's console (console 0: the stub domain's log, which
//             xenconsoled keeps as the device-model log)
//   arguments libxl's dm-argv in xenstore, one key per argument:
//             <vm>/image/dm-argv/NNN, where <vm> is the guest's vm path,
//             /local/domain/<target>/vm, and <target> (the guest's domid) is
//             the stub domain's own "target" key. No target key (a MiniOS
//             domain started by hand) means no dm-argv: the command line
//             (start_info's cmd_line, which MiniOS hands to main) is used.
//   shutdown  SCHEDOP_shutdown: SHUTDOWN_poweroff on a clean end,
//             SHUTDOWN_crash otherwise, so the toolstack sees a crashed stub
//             domain and a stuck guest is not left waiting on a silent one.
//   heap      the static region in main.c (.bss of the image).
//
// Built with newlib (HAVE_LIBC), as every Xen stub domain is: MiniOS's
// main.c then runs main(argc, argv) in its "main" thread. Without newlib an
// app overrides app_main() instead; that entry is here too, but Xen's
// libraries (xenevtchn, xenforeignmemory, ...) need newlib, so it is only a
// fallback for a port without them.
//
// Untested on the machines this project is developed on: MiniOS is not
// packaged anywhere they reach. platform_hostsim.c is the same boundary on
// Linux, and dmargv.c (all the checks of dm-argv) runs on both.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mini-os/os.h>
#include <mini-os/console.h>
#include <mini-os/hypervisor.h>
#include <mini-os/time.h>
#include <mini-os/xenbus.h>
#include <xen/sched.h>

#include "platform.h"

// Longest xenstore path read here ("/local/domain/<id>/vm" is short, the vm
// path is "/vm/<uuid>": both far below this).
#define PATH_MAX_LEN (256)

void platform_console_write(int stream, const char *buf, size_t len) {
    (void)stream;  // one console: stdout and stderr both go to the log
    while (len > 0) {
        int n = len > 4096 ? 4096 : (int)len;
        console_print(NULL, (char *)buf, n);
        buf += n;
        len -= (size_t)n;
    }
}

uint64_t platform_monotonic_ns(void) {
    return (uint64_t)monotonic_clock();
}

void platform_sleep_us(uint64_t us) {
    struct timespec ts = {(time_t)(us / 1000000u), (long)(us % 1000000u) * 1000};
    nanosleep(&ts, NULL);
}

// xenbus calls return a malloc'd error string, or NULL on success.
static int xb_failed(char *msg, const char *what, char *err, size_t errlen) {
    if (msg == NULL) {
        return 0;
    }
    snprintf(err, errlen, "%s: %s", what, msg);
    free(msg);
    return 1;
}

int platform_dm_argv(dmargv_list_t *list, char *err, size_t errlen) {
    char path[PATH_MAX_LEN];
    char *target = NULL;
    char *vm = NULL;
    char **keys = NULL;
    list->n = 0;

    // Our own "target" key, relative to this domain's home: the guest's domid.
    char *msg = xenbus_read(XBT_NIL, "target", &target);
    if (msg != NULL) {
        free(msg);
        return PLATFORM_DMARGV_NONE;
    }
    char *end;
    long domid = strtol(target, &end, 10);
    if (end == target || *end != '\0' || domid <= 0 || domid >= 0x7ff0) {
        snprintf(err, errlen, "the stub domain's target key is not a domain id");
        free(target);
        return PLATFORM_DMARGV_ERROR;
    }
    free(target);

    snprintf(path, sizeof(path), "/local/domain/%ld/vm", domid);
    if (xb_failed(xenbus_read(XBT_NIL, path, &vm), path, err, errlen)) {
        return PLATFORM_DMARGV_ERROR;
    }
    if (strlen(vm) + sizeof("/image/dm-argv/") + DMARGV_MAX_KEY_LEN >= sizeof(path)
        || vm[0] != '/') {
        snprintf(err, errlen, "the guest's vm path is not a xenstore path");
        free(vm);
        return PLATFORM_DMARGV_ERROR;
    }
    snprintf(path, sizeof(path), "%s/image/dm-argv", vm);
    free(vm);
    msg = xenbus_ls(XBT_NIL, path, &keys);
    if (msg != NULL) {
        // A target but no dm-argv: not a stub domain libxl started for a
        // qemu-xen-style device model. Fall back to the command line.
        free(msg);
        return PLATFORM_DMARGV_NONE;
    }
    size_t dir_len = strlen(path);
    int rc = PLATFORM_DMARGV_FOUND;
    for (size_t i = 0; keys[i] != NULL; i++) {
        if (rc != PLATFORM_DMARGV_FOUND) {
            free(keys[i]);
            continue;
        }
        if (list->n > DMARGV_MAX_ARGS) {
            // One over the limit is kept, the rest not even read: dmargv_build
            // reports "too many" from the count.
            free(keys[i]);
            continue;
        }
        dmargv_entry_t *e = &list->entry[list->n++];
        e->key = keys[i];  // kept: the entry points at it until the end
        e->value = "";
        e->value_len = 0;
        if (strlen(keys[i]) > DMARGV_MAX_KEY_LEN) {
            continue;  // dmargv_build says what is wrong with the key
        }
        char *value = NULL;
        snprintf(path + dir_len, sizeof(path) - dir_len, "/%s", keys[i]);
        if (xb_failed(xenbus_read(XBT_NIL, path, &value), path, err, errlen)) {
            rc = PLATFORM_DMARGV_ERROR;
            continue;
        }
        e->value = value;
        e->value_len = strlen(value);
    }
    free(keys);
    return rc;
}

void platform_shutdown(int status) {
    struct sched_shutdown sd = {
        .reason = status == 0 ? SHUTDOWN_poweroff : SHUTDOWN_crash,
    };
    printk("stubdm-port: stub domain %s (status %d)\n",
        status == 0 ? "powers off" : "crashes", status);
    for (;;) {
        HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
    }
}

#ifdef HAVE_LIBC
int main(int argc, char **argv) {
    return stubdm_port_main(argc, argv);
}
#else
int app_main(void *p) {
    static char name[] = "stubdm-port";
    static char *argv[] = {name, NULL};
    (void)p;
    return stubdm_port_main(1, argv);
}
#endif
