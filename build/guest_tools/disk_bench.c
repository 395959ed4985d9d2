/* disk_bench: a disk's throughput and random-read rate as the guest sees them.
 *
 *     disk_bench DEVICE SEQ_MIB RAND_READS JOBS
 *
 * With O_DIRECT (no page cache): reads SEQ_MIB MiB from the start of DEVICE
 * in 1 MiB preads, writes them back in 1 MiB pwrites and fsyncs, then JOBS
 * processes do RAND_READS 4 KiB preads between them at pseudo-random 4 KiB
 * offsets (each job its own seed), all timed with CLOCK_MONOTONIC. One line:
 *
 *     DISK seq_read_bytes=B ns=T seq_write_bytes=B ns=T rand_reads=N jobs=J ns=T
 *
 * Before each phase and after the last, a line `DISKMARK read|write|rand|end`
 * (flushed), so that the host can read the device model's CPU time per phase.
 *
 * Errors: `DISK-ERROR <why>`, exit 1. Built statically by host_sim/bench_disk.py
 * (`gcc -static -O2`) and shipped to the guest in an extra cpio archive.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BLOCK (1 << 20)
#define SMALL 4096

static int fail(const char *what)
{
    printf("DISK-ERROR %s: %s\n", what, strerror(errno));
    return 1;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void mark(const char *phase)
{
    printf("DISKMARK %s\n", phase);
    fflush(stdout);
}

static int rand_job(const char *dev, long n, unsigned seed, unsigned long long blocks)
{
    int fd = open(dev, O_RDONLY | O_DIRECT);
    void *buf;
    if (fd < 0 || posix_memalign(&buf, SMALL, SMALL))
        return 1;
    unsigned long long x = seed * 2654435761ULL + 1;
    for (long i = 0; i < n; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        off_t off = (off_t)((x >> 20) % blocks) * SMALL;
        if (pread(fd, buf, SMALL, off) != SMALL)
            return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        printf("DISK-ERROR usage: disk_bench DEVICE SEQ_MIB RAND_READS JOBS\n");
        return 1;
    }
    const char *dev = argv[1];
    long mib = atol(argv[2]), reads = atol(argv[3]), jobs = atol(argv[4]);
    if (mib <= 0 || reads <= 0 || jobs <= 0 || jobs > 64) {
        errno = EINVAL;
        return fail("arguments");
    }
    int fd = open(dev, O_RDWR | O_DIRECT);
    if (fd < 0)
        return fail("open");
    unsigned long long size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) < 0)
        return fail("BLKGETSIZE64");
    if ((unsigned long long)mib * BLOCK > size) {
        errno = ENOSPC;
        return fail("SEQ_MIB larger than the disk");
    }
    void *buf;
    if (posix_memalign(&buf, SMALL, BLOCK))
        return fail("posix_memalign");

    mark("read");
    long long t0 = now_ns();
    for (long i = 0; i < mib; i++)
        if (pread(fd, buf, BLOCK, (off_t)i * BLOCK) != BLOCK)
            return fail("sequential read");
    long long t_read = now_ns() - t0;

    mark("write");
    t0 = now_ns();
    for (long i = 0; i < mib; i++)
        if (pwrite(fd, buf, BLOCK, (off_t)i * BLOCK) != BLOCK)
            return fail("sequential write");
    if (fsync(fd) < 0)
        return fail("fsync");
    long long t_write = now_ns() - t0;
    close(fd);

    mark("rand");
    t0 = now_ns();
    for (long j = 0; j < jobs; j++) {
        pid_t p = fork();
        if (p < 0)
            return fail("fork");
        if (p == 0)
            _exit(rand_job(dev, reads / jobs + (j < reads % jobs), (unsigned)j + 1,
                           size / SMALL));
    }
    int bad = 0;
    for (long j = 0; j < jobs; j++) {
        int st;
        if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
            bad = 1;
    }
    long long t_rand = now_ns() - t0;
    mark("end");
    if (bad) {
        errno = EIO;
        return fail("random reads");
    }
    printf("DISK seq_read_bytes=%lld ns=%lld seq_write_bytes=%lld ns=%lld rand_reads=%ld "
           "jobs=%ld ns=%lld\n", (long long)mib * BLOCK, t_read, (long long)mib * BLOCK,
           t_write, reads, jobs, t_rand);
    return 0;
}
