// vfio_floor: the least a vfio-user server can do, in C, to measure the
// physical floor of host_sim's guest engine on this machine (a TCG exit in
// QEMU, its vfio-user client, a unix-socket round trip, a reply).
//
//     vfio_floor [--spin-us S] SOCKET
//                              serve one client on SOCKET (a unix socket it
//                              creates), then exit when the client goes away;
//                              with S > 0, after each reply watch the socket
//                              for up to S us before sleeping in recv (the
//                              spin policy of host_sim's servers, bench pio's
//                              spinning rows)
//     vfio_floor --pingpong N  N round trips of a 32-byte request and a
//                              33-byte reply between two processes over a
//                              socketpair (the socket alone, no QEMU); prints
//                              "PINGPONG n=N ns=T"
//     vfio_floor --evtchn-pingpong N S  N round trips of the shape of host_sim's
//                              ioreq path (a word in a shared page, a pipe byte
//                              there, an eventfd write back), each side watching
//                              the page for S us before it sleeps in poll;
//                              prints "EVTCHN-PINGPONG n=N spin_us=S ns=T"
//
// It serves the function host_sim/bench.py's NullSerialFunction describes
// (1b36:0002's configuration space, one 8-byte I/O BAR that reads 0 and
// drops writes), answering exactly what the Python server answers for it
// (host_sim/vfio_user.py has the protocol notes; DESIGN.md section 10).
// It prints "VFIO-FLOOR ready" once listening and, at exit,
// "VFIO-FLOOR reads=R writes=W posted=P busy_ns=B" on stdout (B: time from
// a region request's arrival to its reply). Single-threaded, blocking: one
// client, one request at a time, as QEMU's vCPU waits for each reply. The
// peer is still checked: bad sizes close the connection, bad fields get an
// error reply, fds sent with any message are closed.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// Commands and flags (QEMU hw/vfio-user/protocol.h; linux/vfio.h).
enum {
    CMD_VERSION = 1,
    CMD_DMA_MAP = 2,
    CMD_DMA_UNMAP = 3,
    CMD_GET_INFO = 4,
    CMD_GET_REGION_INFO = 5,
    CMD_GET_IRQ_INFO = 7,
    CMD_SET_IRQS = 8,
    CMD_REGION_READ = 9,
    CMD_REGION_WRITE = 10,
};
#define FLAG_TYPE_MASK 0xfu
#define FLAG_REPLY 0x1u
#define FLAG_NO_REPLY 0x10u
#define FLAG_ERROR 0x20u

#define HDR_SIZE 16
#define RW_SIZE 16 // offset u64, region u32, count u32
#define MAX_DATA_XFER (1u << 20)
#define MAX_MSG (MAX_DATA_XFER + 4096)
#define MAX_FDS 8
#define NUM_REGIONS 9
#define CONFIG_REGION 7
#define CONFIG_SIZE 256
#define BAR0_SIZE 8

typedef struct {
    uint16_t msg_id;
    uint16_t command;
    uint32_t size;
    uint32_t flags;
    uint32_t error;
} hdr_t;

static uint8_t config[CONFIG_SIZE];
static uint8_t wmask[CONFIG_SIZE];
static uint64_t n_reads, n_writes, n_posted, busy_ns;
static uint64_t spin_ns;  // --spin-us: watch the socket this long before sleeping

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void put32(uint8_t *p, uint32_t v) {
    memcpy(p, &v, 4);
}

// bench.py's NullSerialFunction: the same bytes, the same writable bits.
static void init_config(void) {
    put32(config + 0x00, 0x1b36u | 0x0002u << 16);
    put32(config + 0x08, 0x01u | 0x070002u << 8);
    put32(config + 0x10, 1);
    put32(config + 0x2c, 0x1af4u | 0x1100u << 16);
    config[0x3d] = 1;
    wmask[0x04] = 0x07;
    wmask[0x05] = 0x05;
    put32(wmask + 0x10, ~(uint32_t)(BAR0_SIZE - 1) & 0xfffffffcu);
    wmask[0x3c] = 0xff;
}

static uint32_t region_size(uint32_t index) {
    return index == 0 ? BAR0_SIZE : index == CONFIG_REGION ? CONFIG_SIZE : 0;
}

static int send_all(int fd, const void *buf, size_t len) {
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int reply(int fd, const hdr_t *req, const void *payload, uint32_t len) {
    uint8_t out[HDR_SIZE + 512];
    hdr_t h = {req->msg_id, req->command, HDR_SIZE + len, FLAG_REPLY, 0};
    if (len > sizeof out - HDR_SIZE) {
        return -1;
    }
    memcpy(out, &h, HDR_SIZE);
    memcpy(out + HDR_SIZE, payload, len);
    return send_all(fd, out, HDR_SIZE + len);
}

static int reply_error(int fd, const hdr_t *req, uint32_t err) {
    hdr_t h = {req->msg_id, req->command, HDR_SIZE, FLAG_REPLY | FLAG_ERROR, err};
    if (req->flags & FLAG_NO_REPLY) {
        return 0;
    }
    return send_all(fd, &h, HDR_SIZE);
}

// Reads exactly len bytes; fds that arrive on the way are closed (this
// server keeps none). 0 on success, -1 on EOF or error.
static int recv_all(int fd, void *buf, size_t len) {
    uint8_t *p = buf;
    while (len) {
        union {
            struct cmsghdr h;
            char room[CMSG_SPACE(sizeof(int) * 64)];
        } ctl;
        struct iovec iov = {p, len};
        struct msghdr m = {0};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = &ctl;
        m.msg_controllen = sizeof ctl;
        ssize_t n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                    int got;
                    memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
                    close(got);
                }
            }
        }
        if (n <= 0 || (m.msg_flags & MSG_CTRUNC)) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static uint32_t get32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

// One region access; returns the reply's length or -errno.
static int region_rw(const hdr_t *h, const uint8_t *body, uint8_t *out) {
    uint32_t len = h->size - HDR_SIZE;
    if (len < RW_SIZE) {
        return -EINVAL;
    }
    uint64_t offset = get64(body);
    uint32_t region = get32(body + 8);
    uint32_t count = get32(body + 12);
    if (region >= NUM_REGIONS || count == 0 || count > MAX_DATA_XFER ||
        offset > region_size(region) || count > region_size(region) - offset) {
        return -EINVAL;
    }
    memcpy(out, body, RW_SIZE);
    if (h->command == CMD_REGION_READ) {
        if (len != RW_SIZE) {
            return -EINVAL;
        }
        if (region == CONFIG_REGION) {
            memcpy(out + RW_SIZE, config + offset, count);
        } else {
            memset(out + RW_SIZE, 0, count);
        }
        n_reads++;
        return (int)(RW_SIZE + count);
    }
    if (len != RW_SIZE + count) {
        return -EINVAL;
    }
    if (region == CONFIG_REGION) {
        for (uint32_t i = 0; i < count; i++) {
            uint8_t m = wmask[offset + i];
            config[offset + i] = (uint8_t)((config[offset + i] & ~m) | (body[RW_SIZE + i] & m));
        }
    }
    if (h->flags & FLAG_NO_REPLY) {
        n_posted++;
    } else {
        n_writes++;
    }
    return RW_SIZE;
}

static int handle(int fd, const hdr_t *h, const uint8_t *body, int *versioned) {
    uint32_t len = h->size - HDR_SIZE;
    uint8_t out[64];
    if ((h->flags & FLAG_TYPE_MASK) != 0) {
        return 0; // we send no requests: no reply is ours to take
    }
    if (!*versioned && h->command != CMD_VERSION) {
        return reply_error(fd, h, EINVAL);
    }
    switch (h->command) {
    case CMD_VERSION: {
        static const char caps[] = "{\"capabilities\":{\"max_msg_fds\":8,"
                                   "\"max_data_xfer_size\":1048576,\"pgsizes\":4096,"
                                   "\"max_dma_maps\":65535}}";
        uint8_t v[4 + sizeof caps] = {0};
        uint32_t n = 4 + sizeof caps;
        if (*versioned || len < 4 || get32(body) & 0xffffu) {
            return reply_error(fd, h, *versioned || len < 4 ? EINVAL : ENOTSUP);
        }
        memcpy(v + 4, caps, sizeof caps);
        if (n > len) { // never longer than the request: QEMU reads into it
            if (len < 7) {
                return reply_error(fd, h, EINVAL);
            }
            memcpy(v + 4, "{}", 3);
            n = 7;
        }
        *versioned = 1;
        return reply(fd, h, v, n);
    }
    case CMD_DMA_MAP:
    case CMD_DMA_UNMAP:
        if (len < (h->command == CMD_DMA_MAP ? 32u : 24u)) {
            return reply_error(fd, h, EINVAL);
        }
        return (h->flags & FLAG_NO_REPLY) ? 0 : reply(fd, h, NULL, 0);
    case CMD_GET_INFO:
        if (len < 4 || get32(body) < 16) {
            return reply_error(fd, h, EINVAL);
        }
        put32(out, 16);
        put32(out + 4, 2); // VFIO_DEVICE_FLAGS_PCI
        put32(out + 8, NUM_REGIONS);
        put32(out + 12, 3);
        return reply(fd, h, out, 16);
    case CMD_GET_REGION_INFO: {
        if (len < 12 || get32(body) < 32 || get32(body + 8) >= NUM_REGIONS) {
            return reply_error(fd, h, EINVAL);
        }
        uint32_t index = get32(body + 8);
        uint64_t size = region_size(index);
        memset(out, 0, 32);
        put32(out, 32);
        put32(out + 4, size ? 3 : 0);
        put32(out + 8, index);
        memcpy(out + 16, &size, 8);
        return reply(fd, h, out, 32);
    }
    case CMD_GET_IRQ_INFO: {
        if (len < 16 || get32(body) < 16 || get32(body + 8) >= 3) {
            return reply_error(fd, h, EINVAL);
        }
        uint32_t index = get32(body + 8);
        put32(out, 16);
        // INTx: eventfd, maskable, automasked; MSI: eventfd, no resizing (as
        // vfio-pci and host_sim's server); MSI-X: eventfd. No MSI vectors here.
        put32(out + 4, index == 0 ? 7 : index == 1 ? 9 : 1);
        put32(out + 8, index);
        put32(out + 12, index == 0 ? 1 : 0);
        return reply(fd, h, out, 16);
    }
    case CMD_SET_IRQS:
        // Nothing here ever interrupts: every (well-formed) setting is accepted.
        if (len < 20) {
            return reply_error(fd, h, EINVAL);
        }
        return (h->flags & FLAG_NO_REPLY) ? 0 : reply(fd, h, NULL, 0);
    case CMD_REGION_READ:
    case CMD_REGION_WRITE: {
        uint64_t t0 = now_ns();
        uint8_t data[HDR_SIZE + RW_SIZE + CONFIG_SIZE];
        int n = region_rw(h, body, data + HDR_SIZE);
        int rc;
        if (n < 0) {
            rc = reply_error(fd, h, (uint32_t)-n);
        } else if (h->flags & FLAG_NO_REPLY) {
            rc = 0;
        } else {
            hdr_t r = {h->msg_id, h->command, HDR_SIZE + (uint32_t)n, FLAG_REPLY, 0};
            memcpy(data, &r, HDR_SIZE);
            rc = send_all(fd, data, HDR_SIZE + (size_t)n);
        }
        busy_ns += now_ns() - t0;
        return rc;
    }
    default:
        return reply_error(fd, h, ENOSYS);
    }
}

// Before a blocking read: watch conn for up to spin_ns (the next request
// usually comes within tens of microseconds, a wake-up from sleep costs about
// as much); returns when it is readable, hung up, or the window is over.
static void spin_readable(int conn) {
    if (spin_ns == 0) {
        return;
    }
    uint64_t end = now_ns() + spin_ns;
    struct pollfd pfd = {.fd = conn, .events = POLLIN};
    while (poll(&pfd, 1, 0) == 0 && now_ns() < end) {
        __builtin_ia32_pause();
    }
}

static void serve(int conn) {
    uint8_t *body = malloc(MAX_MSG);
    int versioned = 0;
    if (!body) {
        return;
    }
    for (;;) {
        hdr_t h;
        spin_readable(conn);
        if (recv_all(conn, &h, HDR_SIZE) < 0) {
            break;
        }
        if (h.size < HDR_SIZE || h.size > MAX_MSG) {
            fprintf(stderr, "vfio_floor: message size %u: closing\n", h.size);
            break;
        }
        if (recv_all(conn, body, h.size - HDR_SIZE) < 0) {
            break;
        }
        if (handle(conn, &h, body, &versioned) < 0) {
            break;
        }
    }
    free(body);
}

static int serve_socket(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    if (strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "vfio_floor: socket path too long\n");
        return 2;
    }
    strcpy(sa.sun_path, path);
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        unlink(path);
    }
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 1) < 0) {
        perror("vfio_floor: listen");
        return 1;
    }
    printf("VFIO-FLOOR ready\n");
    fflush(stdout);
    int conn;
    do {
        conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    } while (conn < 0 && errno == EINTR);
    close(lfd);
    unlink(path);
    if (conn < 0) {
        perror("vfio_floor: accept");
        return 1;
    }
    serve(conn);
    close(conn);
    printf("VFIO-FLOOR reads=%llu writes=%llu posted=%llu busy_ns=%llu\n",
           (unsigned long long)n_reads, (unsigned long long)n_writes,
           (unsigned long long)n_posted, (unsigned long long)busy_ns);
    return 0;
}

static int pingpong(long n) {
    int sv[2];
    uint8_t buf[64] = {0};
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        perror("vfio_floor: socketpair");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("vfio_floor: fork");
        return 1;
    }
    if (pid == 0) { // the server: answer each 32-byte request with 33 bytes
        close(sv[0]);
        while (recv_all(sv[1], buf, 32) == 0 && send_all(sv[1], buf, 33) == 0) {
        }
        _exit(0);
    }
    close(sv[1]);
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (send_all(sv[0], buf, 32) < 0 || recv_all(sv[0], buf, 33) < 0) {
            fprintf(stderr, "vfio_floor: the other side went away\n");
            return 1;
        }
    }
    uint64_t t = now_ns() - t0;
    close(sv[0]);
    waitpid(pid, NULL, 0);
    printf("PINGPONG n=%ld ns=%llu\n", n, (unsigned long long)t);
    return 0;
}

// Wait for *word to become want, watching it for up to spin_ns first, then
// sleeping in poll on fd and draining what it brought (8 bytes: an eventfd;
// otherwise one byte of a pipe). 0, or -1 when the other side went away.
static int evtchn_wait(volatile uint32_t *word, uint32_t want, int fd, size_t len,
                       uint64_t spin_ns) {
    uint64_t end = now_ns() + spin_ns;
    while (spin_ns && __atomic_load_n(word, __ATOMIC_ACQUIRE) != want) {
        __builtin_ia32_pause();
        if (now_ns() >= end) {
            break;
        }
    }
    uint64_t v;
    for (;;) {
        // Non-blocking fds: the signal may already be there (or not yet, when
        // the spin saw the word first: then the next wait takes it).
        ssize_t r = read(fd, &v, len);
        if (r == (ssize_t)len) {
            if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == want) {
                return 0;
            }
            continue;
        }
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            return -1;
        }
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == want) {
            return 0;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 5000) <= 0 || (pfd.revents & (POLLHUP | POLLERR))) {
            return -1;
        }
    }
}

// The shape of host_sim's ioreq round trip (hostsim_proto.h, HS_EVTCHN_*) with
// nothing else in it: a request word in a shared page and a byte down a pipe to
// the "device model", its answer in the page and an eventfd write back; each
// side watching the page for up to spin_us before it sleeps in poll (0: the
// kernel's wake-up alone).
static int evtchn_pingpong(long n, long spin_us) {
    volatile uint32_t *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int pipefd[2];
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (page == MAP_FAILED || efd < 0 || pipe2(pipefd, O_NONBLOCK | O_CLOEXEC) < 0) {
        perror("vfio_floor: evtchn-pingpong");
        return 1;
    }
    uint64_t spin = (uint64_t)spin_us * 1000u;
    pid_t pid = fork();
    if (pid < 0) {
        perror("vfio_floor: fork");
        return 1;
    }
    if (pid == 0) {  // the device model: answer request i with i
        close(pipefd[1]);
        uint64_t one = 1;
        for (uint32_t i = 1; evtchn_wait(&page[0], i, pipefd[0], 1, spin) == 0; i++) {
            __atomic_store_n(&page[1], i, __ATOMIC_RELEASE);
            if (write(efd, &one, 8) != 8) {
                break;
            }
        }
        _exit(0);
    }
    close(pipefd[0]);
    char b = 1;
    uint64_t t0 = now_ns();
    for (uint32_t i = 1; i <= (uint32_t)n; i++) {
        __atomic_store_n(&page[0], i, __ATOMIC_RELEASE);
        if (write(pipefd[1], &b, 1) != 1 || evtchn_wait(&page[1], i, efd, 8, spin) < 0) {
            fprintf(stderr, "vfio_floor: the other side went away\n");
            return 1;
        }
    }
    uint64_t t = now_ns() - t0;
    close(pipefd[1]);
    waitpid(pid, NULL, 0);
    printf("EVTCHN-PINGPONG n=%ld spin_us=%ld ns=%llu\n", n, spin_us, (unsigned long long)t);
    return 0;
}

// A decimal argument in [lo, hi] into *out; false (nothing stored) for anything
// else, an empty string included.
static bool parse_bounded(const char *arg, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (end == arg || *end || errno || v < lo || v > hi) {
        return false;
    }
    *out = v;
    return true;
}

int main(int argc, char **argv) {
    // Never outlive whoever started us (a bench that dies leaves nothing).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) {
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    init_config();
    long n, spin;
    if (argc == 3 && strcmp(argv[1], "--pingpong") == 0) {
        if (!parse_bounded(argv[2], 1, 100000000, &n)) {
            fprintf(stderr, "vfio_floor: --pingpong takes a count of 1 to 10^8\n");
            return 2;
        }
        return pingpong(n);
    }
    if (argc == 4 && strcmp(argv[1], "--evtchn-pingpong") == 0) {
        if (!parse_bounded(argv[2], 1, 100000000, &n) || !parse_bounded(argv[3], 0, 1000, &spin)) {
            fprintf(stderr, "vfio_floor: --evtchn-pingpong takes a count of 1 to 10^8 and "
                            "a spin of 0 to 1000 us\n");
            return 2;
        }
        return evtchn_pingpong(n, spin);
    }
    if (argc == 4 && strcmp(argv[1], "--spin-us") == 0) {
        if (!parse_bounded(argv[2], 0, 1000, &spin)) {
            fprintf(stderr, "vfio_floor: --spin-us takes 0 to 1000 us\n");
            return 2;
        }
        spin_ns = (uint64_t)spin * 1000u;
        argc -= 2;
        argv += 2;
    }
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: vfio_floor [--spin-us S] SOCKET | vfio_floor --pingpong N | "
                        "vfio_floor --evtchn-pingpong N S\n");
        return 2;
    }
    return serve_socket(argv[1]);
}
