/* pio_bench: time port I/O round trips on one register, as the guest sees them.
 *
 *     pio_bench DEVICE COUNT [OFFSET]
 *
 * DEVICE is a PCI function's sysfs folder (/sys/bus/pci/devices/0000:00:04.0):
 * the port is the start of its first I/O BAR (from its `resource` file) plus
 * OFFSET (default 7, a 16550's scratch register); or a port number (0x3ff).
 * Times COUNT `inb` of that port and COUNT `outb` to it (after 100 of each
 * untimed), with CLOCK_MONOTONIC, in ROUNDS rounds (10, or 1 when COUNT < 10)
 * of COUNT/ROUNDS inb then COUNT/ROUNDS outb, and prints one line:
 *
 *     PIO port=0xc007 reads=COUNT ns=T writes=COUNT ns=T rounds=R
 *         best_read_ns=B best_write_ns=B        (all on one line)
 *
 * (T: nanoseconds for all COUNT accesses; B: the fastest round's among
 * those of exactly COUNT/ROUNDS accesses (integer division), less disturbed
 * by whatever else the host runs), preceded by `PIO-BEGIN port=...` just
 * before the timed loops. Errors: a line `PIO-ERROR <why>`, exit 1.
 *
 * Built statically by host_sim/bench.py with the host's gcc
 * (`gcc -static -O2`) and shipped to the guest in an extra cpio archive
 * appended to the initramfs. x86 only (iopl/ioperm, inb/outb).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <time.h>

#define IORESOURCE_IO 0x100UL
#define WARMUP 100

static int fail(const char *what, const char *detail)
{
    printf("PIO-ERROR %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* First I/O BAR of a PCI function from its sysfs resource file, or -1. */
static long io_bar(const char *dev)
{
    char path[512];
    snprintf(path, sizeof path, "%s/resource", dev);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    unsigned long long start, end, flags;
    long port = -1;
    int line = 0;
    while (line < 6 && fscanf(f, "%llx %llx %llx", &start, &end, &flags) == 3) {
        if ((flags & IORESOURCE_IO) && start && end >= start) {
            port = (long)start;
            break;
        }
        line++;
    }
    fclose(f);
    /* Make sure the function decodes its I/O (as a driver would enable it). */
    snprintf(path, sizeof path, "%s/enable", dev);
    f = fopen(path, "w");
    if (f) {
        fputs("1", f);
        fclose(f);
    }
    return port;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4)
        return fail("usage", "pio_bench DEVICE|PORT COUNT [OFFSET]");
    char *endp;
    long count = strtol(argv[2], &endp, 0);
    if (*endp || count <= 0)
        return fail("bad count", argv[2]);
    long offset = 7;
    if (argc == 4) {
        offset = strtol(argv[3], &endp, 0);
        if (*endp || offset < 0 || offset > 0xffff)
            return fail("bad offset", argv[3]);
    }
    long port;
    if (argv[1][0] == '/') {
        port = io_bar(argv[1]);
        if (port < 0)
            return fail("no I/O BAR in", argv[1]);
        port += offset;
    } else {
        port = strtol(argv[1], &endp, 0);
        if (*endp)
            return fail("bad port", argv[1]);
    }
    if (port <= 0 || port > 0xffff)
        return fail("port out of range", argv[1]);
    if (iopl(3) != 0 && ioperm((unsigned long)port, 1, 1) != 0)
        return fail("iopl/ioperm", strerror(errno));

    unsigned short p = (unsigned short)port;
    volatile unsigned char sink = 0;
    for (int i = 0; i < WARMUP; i++) {
        sink ^= inb(p);
        outb((unsigned char)i, p);
    }
    printf("PIO-BEGIN port=%#lx count=%ld\n", port, count);
    fflush(stdout);

    long rounds = count >= 10 ? 10 : 1;
    long long read_ns = 0, write_ns = 0, best_read = -1, best_write = -1;
    for (long r = 0; r < rounds; r++) {
        long n = count / rounds + (r < count % rounds);
        long long t0 = now_ns();
        for (long i = 0; i < n; i++)
            sink ^= inb(p);
        long long t1 = now_ns();
        for (long i = 0; i < n; i++)
            outb((unsigned char)i, p);
        long long t2 = now_ns();
        read_ns += t1 - t0;
        write_ns += t2 - t1;
        if (r >= count % rounds) {  /* rounds of exactly COUNT/ROUNDS accesses */
            if (best_read < 0 || t1 - t0 < best_read)
                best_read = t1 - t0;
            if (best_write < 0 || t2 - t1 < best_write)
                best_write = t2 - t1;
        }
    }

    printf("PIO port=%#lx reads=%ld ns=%lld writes=%ld ns=%lld rounds=%ld "
           "best_read_ns=%lld best_write_ns=%lld\n",
           port, count, read_ns, count, write_ns, rounds, best_read, best_write);
    fflush(stdout);
    return 0;
}
