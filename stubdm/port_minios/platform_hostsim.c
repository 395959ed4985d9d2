// The port's platform on Linux, against host_sim (platform.h): the same port
// as the stub-domain image, so that its C code runs here the way it would
// there. Console = stdout/stderr, arguments from the command line, shutdown
// = exit status. Xen's library API comes from host_sim/libsim, linked in.
//
// host_sim has no xenstore yet, so dm-argv is "none" here, except through a
// test hook: STUBDM_PORT_FAKE_DM_ARGV holds fake dm-argv entries, each
// "KEY\x1fVALUE", entries separated by \x1e (ASCII unit and record
// separators), exactly as they would be listed in xenstore. Tests use it to
// feed malformed dm-argv to the real checks (dmargv.c). Only this file knows
// about it; the MiniOS build has no such hook.
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "platform.h"

#define FAKE_DM_ARGV_ENV "STUBDM_PORT_FAKE_DM_ARGV"
#define FAKE_RECORD_SEP '\x1e'
#define FAKE_UNIT_SEP '\x1f'

void platform_console_write(int stream, const char *buf, size_t len) {
    int fd = stream == PLATFORM_CONSOLE_ERR ? STDERR_FILENO : STDOUT_FILENO;
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return;  // nowhere left to complain to
        }
        buf += n;
        len -= (size_t)n;
    }
}

uint64_t platform_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void platform_sleep_us(uint64_t us) {
    struct timespec ts = {(time_t)(us / 1000000u), (long)(us % 1000000u) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

int platform_dm_argv(dmargv_list_t *list, char *err, size_t errlen) {
    const char *fake = getenv(FAKE_DM_ARGV_ENV);
    list->n = 0;
    if (fake == NULL) {
        return PLATFORM_DMARGV_NONE;
    }
    // A private copy, cut in place into keys and values (lives until exit).
    char *copy = strdup(fake);
    if (copy == NULL) {
        snprintf(err, errlen, "no memory for %s", FAKE_DM_ARGV_ENV);
        return PLATFORM_DMARGV_ERROR;
    }
    char *p = copy;
    while (*p != '\0') {
        char *end = strchr(p, FAKE_RECORD_SEP);
        if (end != NULL) {
            *end = '\0';
        }
        char *sep = strchr(p, FAKE_UNIT_SEP);
        if (sep == NULL) {
            snprintf(err, errlen, "%s: entry without a key/value separator", FAKE_DM_ARGV_ENV);
            return PLATFORM_DMARGV_ERROR;
        }
        *sep = '\0';
        if (list->n < DMARGV_MAX_ARGS + 1) {
            dmargv_entry_t *e = &list->entry[list->n];
            e->key = p;
            e->value = sep + 1;
            e->value_len = strlen(sep + 1);
        }
        // Counted past the array's end too, so that "too many" is reported.
        list->n++;
        if (end == NULL) {
            break;
        }
        p = end + 1;
    }
    if (list->n > DMARGV_MAX_ARGS + 1) {
        list->n = DMARGV_MAX_ARGS + 1;
    }
    return PLATFORM_DMARGV_FOUND;
}

void platform_shutdown(int status) {
    exit(status);
}

int main(int argc, char **argv) {
    return stubdm_port_main(argc, argv);
}
