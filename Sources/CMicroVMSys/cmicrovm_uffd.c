#define _GNU_SOURCE
#include "cmicrovm_sys.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

/* A userfaultfd page-fault handler for Firecracker's `Uffd` memory backend (snapshot load).
 *
 * Firecracker (1.12) connects to our socket once, sends one JSON array describing its guest
 * memory regions with the userfaultfd attached (SCM_RIGHTS), and never closes the connection:
 * it stays open until the VMM exits, which is how we learn that it is gone. Each fault on a
 * registered region is answered with the page from the snapshot's memory file (UFFDIO_COPY),
 * or with zeros (UFFDIO_ZEROPAGE) where the balloon removed memory (UFFD_EVENT_REMOVE). */

#define MAX_HANDSHAKE (64 * 1024)
#define MAX_EVENTS 64
#define MAX_DEFERRED 1024

struct cmv_uffd_server {
    pthread_t thread;
    int thread_started;
    int listen_fd;
    int memory_fd;
    int stop_fd; /* eventfd: written by cmv_uffd_server_stop */
    int done_fd; /* eventfd: written by the thread when it ends */
    int kill_peer;
    /* Owned by the thread while it runs. */
    int conn_fd;
    int uffd;
    int peer_pidfd;
    const uint8_t *memory;
    size_t memory_size;
    struct cmv_uffd_region regions[CMV_UFFD_MAX_REGIONS];
    int region_count;
    uint64_t *removed; /* pairs [start, end) of ranges the balloon removed */
    size_t removed_count, removed_capacity;
    uint8_t *zero_page; /* for page sizes UFFDIO_ZEROPAGE refuses (hugetlbfs) */
    /* Shared with readers. */
    pthread_mutex_t lock;
    struct cmv_uffd_stats stats;
};

static void set_failure(struct cmv_uffd_server *s, int step, int err, const char *detail) {
    pthread_mutex_lock(&s->lock);
    if (s->stats.error_step == CMV_UFFD_STEP_NONE) {
        s->stats.error_step = step;
        s->stats.error_errno = err;
        snprintf(s->stats.error_detail, sizeof(s->stats.error_detail), "%s", detail ? detail : "");
    }
    s->stats.state = CMV_UFFD_FAILED;
    pthread_mutex_unlock(&s->lock);
}

static void set_state(struct cmv_uffd_server *s, int state) {
    pthread_mutex_lock(&s->lock);
    if (s->stats.state != CMV_UFFD_FAILED) s->stats.state = state;
    pthread_mutex_unlock(&s->lock);
}

static void count(unsigned long long *counter) {
    __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

/* --- The handshake's JSON ---------------------------------------------------------------- */

struct json {
    const char *p, *end;
};

static void skip_ws(struct json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int expect_char(struct json *j, char c) {
    skip_ws(j);
    if (j->p >= j->end || *j->p != c) return -1;
    j->p++;
    return 0;
}

/* A string without escapes we care about: the keys are plain ASCII. Copies at most cap-1 bytes. */
static int parse_string(struct json *j, char *out, size_t cap) {
    skip_ws(j);
    if (j->p >= j->end || *j->p != '"') return -1;
    j->p++;
    size_t n = 0;
    while (j->p < j->end && *j->p != '"') {
        if (*j->p == '\\') {
            j->p++;
            if (j->p >= j->end) return -1;
        }
        if (n + 1 < cap) out[n++] = *j->p;
        j->p++;
    }
    if (j->p >= j->end) return -1;
    j->p++;
    out[n] = 0;
    return 0;
}

/* A non-negative integer that fits in 64 bits (no sign, fraction or exponent). */
static int parse_u64(struct json *j, uint64_t *out) {
    skip_ws(j);
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return -1;
    uint64_t v = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        uint64_t digit = (uint64_t)(*j->p - '0');
        if (v > (UINT64_MAX - digit) / 10) return -1;
        v = v * 10 + digit;
        j->p++;
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) return -1;
    *out = v;
    return 0;
}

/* Skips any JSON value (an unknown key's), nesting included. */
static int skip_value(struct json *j, int depth) {
    if (depth > 16) return -1;
    skip_ws(j);
    if (j->p >= j->end) return -1;
    char c = *j->p;
    if (c == '"') {
        char scratch[2];
        return parse_string(j, scratch, sizeof(scratch));
    }
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        skip_ws(j);
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                char key[2];
                if (parse_string(j, key, sizeof(key)) < 0 || expect_char(j, ':') < 0) return -1;
            }
            if (skip_value(j, depth + 1) < 0) return -1;
            skip_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            return expect_char(j, close);
        }
    }
    /* number, true, false, null */
    const char *start = j->p;
    while (j->p < j->end && (isalnum((unsigned char)*j->p) || *j->p == '-' || *j->p == '+' || *j->p == '.')) j->p++;
    return j->p > start ? 0 : -1;
}

#define HAS_ADDR 1
#define HAS_SIZE 2
#define HAS_OFFSET 4
#define HAS_PAGE 8
#define HAS_PAGE_KIB 16

int cmv_uffd_parse_regions(const char *text, size_t length, struct cmv_uffd_region *out, int capacity, char *error, size_t error_capacity) {
    struct json j = {text, text + length};
    int n = 0;
#define FAIL(...)                                                        \
    do {                                                                 \
        if (error && error_capacity) snprintf(error, error_capacity, __VA_ARGS__); \
        errno = EINVAL;                                                  \
        return -1;                                                       \
    } while (0)
    if (expect_char(&j, '[') < 0) FAIL("expected a JSON array of memory regions");
    skip_ws(&j);
    if (j.p < j.end && *j.p == ']') FAIL("the array of memory regions is empty");
    for (;;) {
        if (n >= capacity) FAIL("more than %d memory regions", capacity);
        if (expect_char(&j, '{') < 0) FAIL("region %d: expected an object", n);
        struct cmv_uffd_region r = {0};
        uint64_t page_kib = 0;
        int seen = 0;
        skip_ws(&j);
        if (j.p < j.end && *j.p == '}') {
            j.p++;
        } else {
            for (;;) {
                char key[32];
                if (parse_string(&j, key, sizeof(key)) < 0) FAIL("region %d: expected a key", n);
                if (expect_char(&j, ':') < 0) FAIL("region %d: expected ':' after \"%s\"", n, key);
                uint64_t value;
                int bit = 0;
                if (strcmp(key, "base_host_virt_addr") == 0) bit = HAS_ADDR;
                else if (strcmp(key, "size") == 0) bit = HAS_SIZE;
                else if (strcmp(key, "offset") == 0) bit = HAS_OFFSET;
                else if (strcmp(key, "page_size") == 0) bit = HAS_PAGE;
                else if (strcmp(key, "page_size_kib") == 0) bit = HAS_PAGE_KIB;
                if (bit) {
                    if (parse_u64(&j, &value) < 0) FAIL("region %d: \"%s\" is not a non-negative integer", n, key);
                    if (seen & bit) FAIL("region %d: \"%s\" given twice", n, key);
                    seen |= bit;
                    switch (bit) {
                    case HAS_ADDR: r.base_host_virt_addr = value; break;
                    case HAS_SIZE: r.size = value; break;
                    case HAS_OFFSET: r.offset = value; break;
                    case HAS_PAGE: r.page_size = value; break;
                    case HAS_PAGE_KIB: page_kib = value; break;
                    }
                } else if (skip_value(&j, 0) < 0) {
                    FAIL("region %d: malformed value for \"%s\"", n, key);
                }
                skip_ws(&j);
                if (j.p < j.end && *j.p == ',') {
                    j.p++;
                    continue;
                }
                if (expect_char(&j, '}') < 0) FAIL("region %d: expected ',' or '}'", n);
                break;
            }
        }
        if (!(seen & HAS_ADDR)) FAIL("region %d: no base_host_virt_addr", n);
        if (!(seen & HAS_SIZE)) FAIL("region %d: no size", n);
        if (!(seen & HAS_OFFSET)) FAIL("region %d: no offset", n);
        if (!(seen & HAS_PAGE)) {
            if (!(seen & HAS_PAGE_KIB)) FAIL("region %d: neither page_size nor page_size_kib", n);
            /* Despite its name, Firecracker has always sent bytes here; a value below the
             * smallest page can only be KiB. */
            r.page_size = page_kib < 4096 ? page_kib * 1024 : page_kib;
        }
        if (r.page_size < 4096 || (r.page_size & (r.page_size - 1)) != 0) FAIL("region %d: page size %llu is not a power of two >= 4096", n, (unsigned long long)r.page_size);
        if (r.size == 0 || r.size % r.page_size != 0) FAIL("region %d: size %llu is not a positive multiple of the page size", n, (unsigned long long)r.size);
        if (r.base_host_virt_addr % r.page_size != 0) FAIL("region %d: address 0x%llx is not page-aligned", n, (unsigned long long)r.base_host_virt_addr);
        if (r.base_host_virt_addr + r.size < r.base_host_virt_addr || r.offset + r.size < r.offset) FAIL("region %d: overflows", n);
        out[n++] = r;
        skip_ws(&j);
        if (j.p < j.end && *j.p == ',') {
            j.p++;
            continue;
        }
        if (expect_char(&j, ']') < 0) FAIL("expected ',' or ']' after region %d", n - 1);
        break;
    }
    skip_ws(&j);
    if (j.p != j.end) FAIL("unexpected bytes after the array");
#undef FAIL
    return n;
}

/* Whether `buffer` holds a complete top-level JSON value (brackets balanced outside strings):
 * Firecracker sends the array in one message but a stream socket may split it. */
static int json_complete(const char *buffer, size_t length) {
    int depth = 0, in_string = 0, escaped = 0, started = 0;
    for (size_t i = 0; i < length; i++) {
        char c = buffer[i];
        if (in_string) {
            if (escaped) escaped = 0;
            else if (c == '\\') escaped = 1;
            else if (c == '"') in_string = 0;
            continue;
        }
        if (c == '"') in_string = 1;
        else if (c == '[' || c == '{') depth++, started = 1;
        else if (c == ']' || c == '}') {
            depth--;
            if (started && depth == 0) return 1;
        }
    }
    return 0;
}

/* --- Serving ------------------------------------------------------------------------------ */

/* 1: stop signalled; 0: fd ready; -1: error. Waits with poll, never spins. */
static int wait_readable(struct cmv_uffd_server *s, int fd, short *revents) {
    struct pollfd fds[2] = {{.fd = fd, .events = POLLIN | POLLRDHUP}, {.fd = s->stop_fd, .events = POLLIN}};
    for (;;) {
        int rc = poll(fds, 2, -1);
        if (rc < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (fds[1].revents) return 1;
        *revents = fds[0].revents;
        return 0;
    }
}

static void kill_peer(struct cmv_uffd_server *s) {
    if (s->kill_peer && s->peer_pidfd >= 0) syscall(SYS_pidfd_send_signal, s->peer_pidfd, SIGKILL, NULL, 0);
}

static int accept_and_handshake(struct cmv_uffd_server *s) {
    short revents = 0;
    int rc = wait_readable(s, s->listen_fd, &revents);
    if (rc == 1) return 1;
    if (rc < 0) {
        set_failure(s, CMV_UFFD_STEP_ACCEPT, errno, "poll");
        return -1;
    }
    s->conn_fd = accept4(s->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (s->conn_fd < 0) {
        set_failure(s, CMV_UFFD_STEP_ACCEPT, errno, "accept4");
        return -1;
    }
    struct ucred cred;
    socklen_t cred_len = sizeof(cred);
    if (getsockopt(s->conn_fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0 && cred.pid > 0) {
        s->peer_pidfd = (int)syscall(SYS_pidfd_open, cred.pid, 0);
        pthread_mutex_lock(&s->lock);
        s->stats.peer_pid = cred.pid;
        pthread_mutex_unlock(&s->lock);
    }
    set_state(s, CMV_UFFD_HANDSHAKE);

    char *buffer = malloc(MAX_HANDSHAKE + 1);
    if (!buffer) {
        set_failure(s, CMV_UFFD_STEP_HANDSHAKE, ENOMEM, "malloc");
        return -1;
    }
    size_t length = 0;
    while (!json_complete(buffer, length)) {
        if (length >= MAX_HANDSHAKE) {
            free(buffer);
            set_failure(s, CMV_UFFD_STEP_HANDSHAKE, EMSGSIZE, "the region list is larger than 64 KiB");
            return -1;
        }
        char control[CMSG_SPACE(sizeof(int) * 4)];
        struct iovec iov = {.iov_base = buffer + length, .iov_len = MAX_HANDSHAKE - length};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
        ssize_t got = recvmsg(s->conn_fd, &msg, MSG_CMSG_CLOEXEC);
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
            rc = wait_readable(s, s->conn_fd, &revents);
            if (rc == 1) {
                free(buffer);
                return 1;
            }
            if (rc < 0) {
                free(buffer);
                set_failure(s, CMV_UFFD_STEP_HANDSHAKE, errno, "poll");
                return -1;
            }
            continue;
        }
        if (got < 0) {
            int err = errno;
            free(buffer);
            set_failure(s, CMV_UFFD_STEP_HANDSHAKE, err, "recvmsg");
            return -1;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            int fds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < fds; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                if (s->uffd < 0) s->uffd = fd;
                else close(fd);
            }
        }
        if (got == 0) {
            free(buffer);
            set_failure(s, CMV_UFFD_STEP_HANDSHAKE, ECONNRESET, "Firecracker closed the connection before sending its memory regions");
            return -1;
        }
        length += (size_t)got;
    }
    buffer[length] = 0;
    char error[160];
    int n = cmv_uffd_parse_regions(buffer, length, s->regions, CMV_UFFD_MAX_REGIONS, error, sizeof(error));
    free(buffer);
    if (n < 0) {
        set_failure(s, CMV_UFFD_STEP_HANDSHAKE, EINVAL, error);
        return -1;
    }
    if (s->uffd < 0) {
        set_failure(s, CMV_UFFD_STEP_HANDSHAKE, EBADMSG, "no userfaultfd came with the memory regions");
        return -1;
    }
    s->region_count = n;
    for (int i = 0; i < n; i++) {
        if (s->regions[i].offset + s->regions[i].size > s->memory_size) {
            snprintf(error, sizeof(error), "guest memory region %d needs bytes %llu-%llu of the memory file, which has %llu (truncated snapshot?)", i,
                     (unsigned long long)s->regions[i].offset, (unsigned long long)(s->regions[i].offset + s->regions[i].size),
                     (unsigned long long)s->memory_size);
            set_failure(s, CMV_UFFD_STEP_HANDSHAKE, ERANGE, error);
            return -1;
        }
    }
    pthread_mutex_lock(&s->lock);
    s->stats.regions = n;
    pthread_mutex_unlock(&s->lock);
    set_state(s, CMV_UFFD_SERVING);
    return 0;
}

static int is_removed(struct cmv_uffd_server *s, uint64_t page) {
    for (size_t i = 0; i < s->removed_count; i++) {
        if (page >= s->removed[2 * i] && page < s->removed[2 * i + 1]) return 1;
    }
    return 0;
}

static int mark_removed(struct cmv_uffd_server *s, uint64_t start, uint64_t end) {
    for (size_t i = 0; i < s->removed_count; i++) {
        uint64_t *r = &s->removed[2 * i];
        if (start <= r[1] && end >= r[0]) { /* overlaps or touches: merge */
            if (start < r[0]) r[0] = start;
            if (end > r[1]) r[1] = end;
            return 0;
        }
    }
    if (s->removed_count == s->removed_capacity) {
        size_t capacity = s->removed_capacity ? s->removed_capacity * 2 : 64;
        uint64_t *grown = realloc(s->removed, capacity * 2 * sizeof(uint64_t));
        if (!grown) return -1;
        s->removed = grown;
        s->removed_capacity = capacity;
    }
    s->removed[2 * s->removed_count] = start;
    s->removed[2 * s->removed_count + 1] = end;
    s->removed_count++;
    return 0;
}

enum { SERVED = 0, RETRY = 1, PEER_GONE = 2, FAILED = -1 };

static int serve_fault(struct cmv_uffd_server *s, uint64_t address) {
    const struct cmv_uffd_region *region = NULL;
    for (int i = 0; i < s->region_count; i++) {
        if (address >= s->regions[i].base_host_virt_addr && address < s->regions[i].base_host_virt_addr + s->regions[i].size) {
            region = &s->regions[i];
            break;
        }
    }
    if (!region) {
        char detail[96];
        snprintf(detail, sizeof(detail), "a fault at 0x%llx, outside every guest memory region", (unsigned long long)address);
        set_failure(s, CMV_UFFD_STEP_SERVE, EFAULT, detail);
        return FAILED;
    }
    uint64_t page = address & ~(region->page_size - 1);
    if (is_removed(s, page)) {
        struct uffdio_zeropage zero = {.range = {.start = page, .len = region->page_size}};
        if (ioctl(s->uffd, UFFDIO_ZEROPAGE, &zero) == 0) {
            count(&s->stats.zero_pages);
            return SERVED;
        }
        if (errno == EINVAL && region->page_size > 4096) {
            /* hugetlbfs has no zero page: copy zeros instead. */
            if (!s->zero_page) {
                void *z = mmap(NULL, region->page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (z == MAP_FAILED) {
                    set_failure(s, CMV_UFFD_STEP_SERVE, errno, "mmap of a zero page");
                    return FAILED;
                }
                s->zero_page = z;
            }
            struct uffdio_copy copy = {.dst = page, .src = (uint64_t)(uintptr_t)s->zero_page, .len = region->page_size};
            if (ioctl(s->uffd, UFFDIO_COPY, &copy) == 0) {
                count(&s->stats.zero_pages);
                return SERVED;
            }
        }
    } else {
        struct uffdio_copy copy = {
            .dst = page,
            .src = (uint64_t)(uintptr_t)(s->memory + region->offset + (page - region->base_host_virt_addr)),
            .len = region->page_size,
        };
        if (ioctl(s->uffd, UFFDIO_COPY, &copy) == 0) {
            count(&s->stats.pages_copied);
            return SERVED;
        }
    }
    switch (errno) {
    case EEXIST: /* another vCPU's fault on the same page was served first */
        count(&s->stats.already_present);
        return SERVED;
    case EAGAIN: /* a non-cooperative event (remove) waits in the queue: read it, then retry */
        return RETRY;
    case ESRCH:
    case ENOENT: /* the VMM's memory is gone: it exited */
        return PEER_GONE;
    default: {
        int err = errno;
        char detail[96];
        snprintf(detail, sizeof(detail), "populating the page at 0x%llx", (unsigned long long)page);
        set_failure(s, CMV_UFFD_STEP_SERVE, err, detail);
        return FAILED;
    }
    }
}

/* Serves until the peer is gone (1), stop is signalled (1) or a failure (-1). */
static int serve(struct cmv_uffd_server *s) {
    uint64_t deferred[MAX_DEFERRED];
    size_t deferred_count = 0;
    struct uffd_msg messages[MAX_EVENTS];
    for (;;) {
        struct pollfd fds[3] = {
            {.fd = s->uffd, .events = POLLIN},
            {.fd = s->conn_fd, .events = POLLIN | POLLRDHUP},
            {.fd = s->stop_fd, .events = POLLIN},
        };
        /* With faults waiting on a queued remove event, look again soon rather than sleep. */
        int rc = poll(fds, 3, deferred_count ? 1 : -1);
        if (rc < 0) {
            if (errno == EINTR) continue;
            set_failure(s, CMV_UFFD_STEP_SERVE, errno, "poll");
            return -1;
        }
        if (fds[2].revents) return 1;
        if (fds[1].revents & (POLLHUP | POLLRDHUP | POLLERR)) return 1;
        if (fds[1].revents & POLLIN) {
            char sink[256];
            ssize_t got = recv(s->conn_fd, sink, sizeof(sink), 0);
            if (got == 0) return 1;
        }
        if (fds[0].revents & (POLLERR | POLLHUP)) return 1;
        /* Read every queued event: removes first, so no fault is served from the file for a
         * range the balloon has already removed, and no copy waits on a queued remove. */
        size_t fault_count = 0;
        uint64_t faults[MAX_EVENTS];
        for (;;) {
            ssize_t got = read(s->uffd, messages, sizeof(messages));
            if (got < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN) break;
                set_failure(s, CMV_UFFD_STEP_SERVE, errno, "reading userfaultfd events");
                return -1;
            }
            if (got == 0) return 1;
            size_t n = (size_t)got / sizeof(struct uffd_msg);
            for (size_t i = 0; i < n; i++) {
                struct uffd_msg *m = &messages[i];
                if (m->event == UFFD_EVENT_PAGEFAULT) {
                    count(&s->stats.faults);
                    if (fault_count < MAX_EVENTS) faults[fault_count++] = m->arg.pagefault.address;
                    else if (deferred_count < MAX_DEFERRED) deferred[deferred_count++] = m->arg.pagefault.address;
                } else if (m->event == UFFD_EVENT_REMOVE) {
                    count(&s->stats.removes);
                    if (mark_removed(s, m->arg.remove.start, m->arg.remove.end) < 0) {
                        set_failure(s, CMV_UFFD_STEP_SERVE, ENOMEM, "remembering a removed range");
                        return -1;
                    }
                } else {
                    count(&s->stats.other_events);
                }
            }
            if (n < MAX_EVENTS) break;
        }
        /* Earlier deferred faults first, then this round's. */
        size_t kept = 0;
        for (size_t i = 0; i < deferred_count + fault_count; i++) {
            uint64_t address = i < deferred_count ? deferred[i] : faults[i - deferred_count];
            int result = serve_fault(s, address);
            if (result == FAILED) return -1;
            if (result == PEER_GONE) return 1;
            if (result == RETRY) {
                if (kept < MAX_DEFERRED) deferred[kept++] = address;
            }
        }
        deferred_count = kept;
    }
}

static void *server_main(void *arg) {
    struct cmv_uffd_server *s = arg;
    pthread_setname_np(pthread_self(), "microvm-uffd");
    int rc = accept_and_handshake(s);
    if (rc == 0) rc = serve(s);
    if (rc < 0) {
        kill_peer(s);
    } else {
        set_state(s, CMV_UFFD_ENDED);
    }
    uint64_t one = 1;
    ssize_t ignored = write(s->done_fd, &one, sizeof(one));
    (void)ignored;
    return NULL;
}

int cmv_uffd_server_start(int listen_fd, int memory_fd, int kill_peer_on_failure, cmv_uffd_server **out) {
    struct stat status;
    if (fstat(memory_fd, &status) < 0) return -1;
    if (status.st_size <= 0) {
        errno = ENODATA;
        return -1;
    }
    struct cmv_uffd_server *s = calloc(1, sizeof(*s));
    if (!s) return -1;
    s->listen_fd = listen_fd;
    s->memory_fd = memory_fd;
    s->kill_peer = kill_peer_on_failure;
    s->conn_fd = s->uffd = s->peer_pidfd = -1;
    s->memory_size = (size_t)status.st_size;
    s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&s->lock, NULL);
    s->stats.state = CMV_UFFD_WAITING;
    int err = 0;
    if (s->stop_fd < 0 || s->done_fd < 0) {
        err = errno;
        goto fail;
    }
    /* Private and read-only: UFFDIO_COPY reads the file's pages through it; nothing is written. */
    void *memory = mmap(NULL, s->memory_size, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, memory_fd, 0);
    if (memory == MAP_FAILED) {
        err = errno;
        goto fail;
    }
    s->memory = memory;
    /* A small stack: the thread keeps only a few event buffers. */
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setstacksize(&attributes, 256 * 1024);
    /* Signals go to other threads: a handler here could interrupt an ioctl mid-page. */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    err = pthread_create(&s->thread, &attributes, server_main, s);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    pthread_attr_destroy(&attributes);
    if (err != 0) goto fail;
    s->thread_started = 1;
    *out = s;
    return 0;
fail:
    if (s->memory) munmap((void *)s->memory, s->memory_size);
    if (s->stop_fd >= 0) close(s->stop_fd);
    if (s->done_fd >= 0) close(s->done_fd);
    pthread_mutex_destroy(&s->lock);
    free(s);
    errno = err;
    return -1;
}

int cmv_uffd_server_done_fd(const cmv_uffd_server *s) {
    return s->done_fd;
}

void cmv_uffd_server_stats(cmv_uffd_server *s, struct cmv_uffd_stats *out) {
    pthread_mutex_lock(&s->lock);
    *out = s->stats;
    out->pages_copied = __atomic_load_n(&s->stats.pages_copied, __ATOMIC_RELAXED);
    out->zero_pages = __atomic_load_n(&s->stats.zero_pages, __ATOMIC_RELAXED);
    out->faults = __atomic_load_n(&s->stats.faults, __ATOMIC_RELAXED);
    out->removes = __atomic_load_n(&s->stats.removes, __ATOMIC_RELAXED);
    out->already_present = __atomic_load_n(&s->stats.already_present, __ATOMIC_RELAXED);
    out->other_events = __atomic_load_n(&s->stats.other_events, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&s->lock);
}

void cmv_uffd_server_signal_stop(cmv_uffd_server *s) {
    uint64_t one = 1;
    ssize_t ignored = write(s->stop_fd, &one, sizeof(one));
    (void)ignored;
}

void cmv_uffd_server_free(cmv_uffd_server *s) {
    if (!s) return;
    if (s->thread_started) {
        cmv_uffd_server_signal_stop(s);
        pthread_join(s->thread, NULL);
    }
    if (s->memory) munmap((void *)s->memory, s->memory_size);
    if (s->zero_page) munmap(s->zero_page, s->regions[0].page_size > 0 ? s->regions[0].page_size : 4096);
    int fds[] = {s->conn_fd, s->uffd, s->peer_pidfd, s->listen_fd, s->memory_fd, s->stop_fd, s->done_fd};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (fds[i] >= 0) close(fds[i]);
    }
    free(s->removed);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int cmv_uffd_listen(int directory_fd, const char *name, int uid, int gid) {
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    /* Through the directory's descriptor: the VM's directory may lie deeper than the 107
     * bytes a socket address holds. */
    int length = snprintf(address.sun_path, sizeof(address.sun_path), "/proc/self/fd/%d/%s", directory_fd, name);
    if (length < 0 || (size_t)length >= sizeof(address.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int saved;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    unlinkat(directory_fd, name, 0);
    if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0) goto fail;
    /* Only the VMM's user may connect: whoever connects first is served the guest's memory. */
    if (fchmodat(directory_fd, name, 0600, 0) < 0) goto fail_bound;
    if (uid >= 0 && fchownat(directory_fd, name, (uid_t)uid, (gid_t)gid, AT_SYMLINK_NOFOLLOW) < 0) goto fail_bound;
    if (listen(fd, 1) < 0) goto fail_bound;
    return fd;
fail_bound:
    saved = errno;
    unlinkat(directory_fd, name, 0);
    close(fd);
    errno = saved;
    return -1;
fail:
    saved = errno;
    close(fd);
    errno = saved;
    return -1;
}
