#ifndef CMICROVM_SYS_H
#define CMICROVM_SYS_H

#include <sys/types.h>

/* Thin wrappers for syscalls and ioctls the Swift importer cannot reach (macros, variadic
 * calls, _GNU_SOURCE-only declarations). Every function returns -1 and leaves errno set on
 * failure; Swift turns that into a typed error in one place (MicroVMHost.SystemCallError). */

/* prctl(PR_SET_CHILD_SUBREAPER, 1): orphans below us (a VMM whose jailer exited) are
 * reparented to this process, so we can reap them and read their exit status. */
int cmv_set_child_subreaper(void);

/* pidfd_open(2): a file descriptor that refers to one process, immune to pid reuse. */
int cmv_pidfd_open(pid_t pid);

/* pidfd_send_signal(2). */
int cmv_pidfd_send_signal(int pidfd, int sig);

/* Creates (or attaches to) a persistent TAP device named `name` (at most 15 bytes), without
 * packet information, owned by `owner_uid` (or -1 for no owner). Returns 0. */
int cmv_tap_create(const char *name, int owner_uid);

/* Removes a persistent TAP device created by cmv_tap_create. Returns 0. */
int cmv_tap_delete(const char *name);

/* Sets or clears IFF_UP on an interface. Returns 0. */
int cmv_interface_set_up(const char *name, int up);

/* --- Jail support (MicroVMHost/Jail) --- */

/* statfs(2)'s f_type (the filesystem magic) of `path` into *magic. Returns 0. */
int cmv_statfs_magic(const char *path, unsigned long *magic);

/* lseek(fd, offset, SEEK_DATA) / SEEK_HOLE: the sparse-file cursor moves (_GNU_SOURCE only). */
off_t cmv_seek_data(int fd, off_t offset);
off_t cmv_seek_hole(int fd, off_t offset);

/* ioctl(dst, FICLONE, src): share src's extents with dst (reflink). Returns 0. */
int cmv_ficlone(int dst_fd, int src_fd);

/* pipe2(fds, O_CLOEXEC). Returns 0. */
int cmv_pipe_cloexec(int fds[2]);

/* pipe2(fds, O_CLOEXEC | O_NONBLOCK). Returns 0. */
int cmv_pipe_cloexec_nonblock(int fds[2]);

/* memfd_create(name, MFD_CLOEXEC): an anonymous file in memory. Returns the fd. */
int cmv_memfd_cloexec(const char *name);

/* prctl(PR_GET_DUMPABLE): 1 when this process's /proc entries belong to its user. */
int cmv_is_dumpable(void);

/* sched_setscheduler(SCHED_BATCH) for the calling thread: it no longer preempts a running
 * thread when it wakes. Returns 0. */
int cmv_sched_batch(void);
/* cmv_sched_batch, once per thread (later calls on that thread return 0 at once). */
int cmv_sched_batch_once(void);

/* fsetxattr(2) of `name` (a "user." attribute) on fd. Returns 0. */
int cmv_fset_xattr(int fd, const char *name, const void *value, size_t size);

/* getxattr(2) of `name` on path into `buffer`. Returns the value's size. */
long cmv_get_xattr(const char *path, const char *name, void *buffer, size_t capacity);

/* A shared open-file-description lock (F_OFD_SETLK, F_RDLCK) on the whole of fd's file, which
 * may be a directory opened O_RDONLY. Independent of flock(2) locks. Returns 0. */
int cmv_ofd_read_lock(int fd);

/* Whether another open file description holds an OFD or POSIX lock on fd's file (F_OFD_GETLK
 * for a write lock). Returns 1 or 0. */
int cmv_ofd_lock_held(int fd);

/* waitid(P_PIDFD, pidfd, WEXITED [| WNOHANG]): reaps the process the pidfd refers to if it has
 * exited. Returns 1 and fills *exited (1: exit code in *value; 0: killed by signal *value) when it
 * reaped it, 0 when it is still running (only with nohang), -1/errno otherwise (ECHILD: not our
 * child). */
int cmv_pidfd_reap(int pidfd, int nohang, int *exited, int *value);

/* Whether `path` (not followed if a symlink) carries a POSIX access ACL (system.posix_acl_access).
 * Returns 1 or 0; -1/errno on other errors. */
int cmv_has_access_acl(const char *path);

/* --- Process supervision (MicroVM) --- */

/* epoll_create1(EPOLL_CLOEXEC). Returns the epoll fd. */
int cmv_epoll_create(void);

/* Adds `fd` to `epfd` for readability, one-shot, with `token` as its user data. Returns 0. */
int cmv_epoll_add_oneshot(int epfd, int fd, unsigned long long token);

/* Removes `fd` from `epfd`. Returns 0. */
int cmv_epoll_remove(int epfd, int fd);

/* epoll_wait into an array of tokens (struct epoll_event is packed on x86_64, which Swift cannot
 * lay out). Returns the number of tokens written. */
int cmv_epoll_wait(int epfd, unsigned long long *tokens, int capacity, int timeout_ms);


/* --- Network namespaces (MicroVMHost/Network) --- */

/* Moves the calling THREAD into the network namespace bound at `path` (setns(CLONE_NEWNET)).
 * Returns a descriptor of the namespace the thread was in, for cmv_netns_restore. Processes the
 * thread spawns while it is inside start in that namespace. */
int cmv_netns_enter(const char *path);

/* Moves the calling thread back into the namespace `previous_fd` (from cmv_netns_enter) and
 * closes it. Returns 0. */
int cmv_netns_restore(int previous_fd);

/* socket(2) created inside the network namespace at `path` (the thread returns to its own
 * namespace; the socket stays in the other one). SOCK_CLOEXEC is added. Returns the fd. */
int cmv_netns_socket(const char *path, int domain, int type, int protocol);

/* Attaches to the existing TAP `name` inside the namespace at `path` the way Firecracker does
 * (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte virtio-net header), non-blocking. Returns the fd. */
int cmv_netns_tap_attach(const char *path, const char *name);


/* --- The per-VM monitor (microvm-monitor) --- */

/* Registers `fd` (level-triggered) for `events` (EPOLLIN 1, EPOLLOUT 4) under `token`, or
 * changes an existing registration when `modify` is non-zero. Returns 0. */
#define CMV_EPOLLIN 1u
#define CMV_EPOLLOUT 4u
int cmv_epoll_watch(int epfd, int fd, unsigned int events, unsigned long long token, int modify);

/* accept4(2) of one pending connection, non-blocking and close-on-exec. Returns the fd. */
int cmv_accept(int listener);

/* Blocks SIGCHLD and returns a non-blocking signalfd that reads when a child changes state;
 * SIGPIPE is ignored (a client that went away must not kill the monitor). Returns the fd. */
int cmv_signalfd_children(void);

/* Drains a signalfd (one or more pending siginfo records). Returns 0. */
int cmv_signalfd_drain(int fd);

/* A non-blocking, close-on-exec Unix stream socket listening at `path` (a stale file there is
 * replaced), mode 0600. Returns the fd. */
int cmv_unix_listen(const char *path, int backlog);

/* cmv_spawn's options. */
#define CMV_SPAWN_NEW_SESSION 1 /* the child leads a new session (setsid) */
#define CMV_SPAWN_CLOSE_OTHERS 2 /* every descriptor above 2 is closed in the child */

/* posix_spawn(3) of `path` with `argv` and this process's environment, `in`/`out`/`err` as its
 * standard streams, `cwd` (may be NULL) as its working directory, an empty signal mask and
 * every signal's default action (an ignored SIGINT or SIGPIPE would survive the exec), plus
 * `flags` (CMV_SPAWN_*). Runs on the calling thread, which waits only until the child has
 * exec'd. Returns 0 and sets *pid, and *pidfd when not NULL (a pidfd of the child, or -1 when
 * the kernel has none), or -1 with errno (the spawn's error: ENOENT, EACCES, ENOEXEC...). */
int cmv_spawn(const char *path, char *const argv[], const char *cwd, int in, int out, int err, int flags, pid_t *pid, int *pidfd);

/* waitpid(-1, WNOHANG) for any child: 1 with *pid and the status (as cmv_pidfd_reap) when one
 * was reaped, 0 when children remain but none has exited, -1 (ECHILD) when there are none. */
int cmv_reap_any(pid_t *pid, int *exited, int *value);

/* Catches `signo` with a handler that writes its number, as one byte, to `write_fd` (a
 * non-blocking pipe shared by every caught signal; the last call's fd is used). A handler,
 * unlike SIG_IGN, is reset by exec, so children start with the default action; and unlike a
 * signalfd, it sees a signal whichever thread it is delivered to. Returns 0. */
int cmv_catch_signal_into_pipe(int signo, int write_fd);

/* --- Lazy snapshot restore: a userfaultfd page-fault server (cmicrovm_uffd.c) --- */

#define CMV_UFFD_MAX_REGIONS 32

/* One guest memory region as Firecracker describes it in its handshake: `size` bytes mapped at
 * `base_host_virt_addr` in the VMM, found at `offset` in the snapshot's memory file. */
struct cmv_uffd_region {
    unsigned long long base_host_virt_addr;
    unsigned long long size;
    unsigned long long offset;
    unsigned long long page_size; /* bytes (from `page_size`, else the misnamed `page_size_kib`) */
};

/* The server's state (cmv_uffd_stats.state). */
#define CMV_UFFD_WAITING 0   /* listening; Firecracker has not connected */
#define CMV_UFFD_HANDSHAKE 1 /* connected; reading the regions and the userfaultfd */
#define CMV_UFFD_SERVING 2
#define CMV_UFFD_ENDED 3  /* Firecracker went away, or stop was asked: no error */
#define CMV_UFFD_FAILED 4 /* see error_step, error_errno, error_detail */

/* Where a failure happened (cmv_uffd_stats.error_step). */
#define CMV_UFFD_STEP_NONE 0
#define CMV_UFFD_STEP_ACCEPT 1
#define CMV_UFFD_STEP_HANDSHAKE 2
#define CMV_UFFD_STEP_SERVE 3

struct cmv_uffd_stats {
    unsigned long long faults;          /* page-fault events read */
    unsigned long long pages_copied;    /* answered from the memory file (UFFDIO_COPY) */
    unsigned long long zero_pages;      /* answered with zeros (ranges the balloon removed) */
    unsigned long long already_present; /* EEXIST: another fault on that page was served first */
    unsigned long long removes;         /* UFFD_EVENT_REMOVE events */
    unsigned long long other_events;
    int state;
    int regions;
    int peer_pid; /* Firecracker's pid (SO_PEERCRED), 0 before it connects */
    int error_step;
    int error_errno;
    char error_detail[192];
};

typedef struct cmv_uffd_server cmv_uffd_server;

/* Parses Firecracker's handshake (a JSON array of region objects). Unknown keys are skipped;
 * every region must have base_host_virt_addr, size, offset and a page size, aligned and
 * consistent. Returns the number of regions, or -1 (EINVAL) with a sentence in `error`. */
int cmv_uffd_parse_regions(const char *text, size_t length, struct cmv_uffd_region *out, int capacity, char *error, size_t error_capacity);

/* A close-on-exec, non-blocking Unix socket listening at `name` in the directory `directory_fd`
 * (a stale file there is replaced), mode 0600, owned by uid:gid when uid >= 0. Returns the fd. */
int cmv_uffd_listen(int directory_fd, const char *name, int uid, int gid);

/* Starts a thread that accepts ONE connection on `listen_fd`, takes the userfaultfd and regions
 * Firecracker sends, and serves page faults from `memory_fd` (mapped private, read-only) until
 * Firecracker goes away or cmv_uffd_server_signal_stop. The server owns both descriptors from
 * here on (on failure the caller still owns them). When
 * `kill_peer_on_failure`, a failure after Firecracker connected SIGKILLs it (through a pidfd):
 * a VMM whose faults nobody serves would freeze forever. Returns 0 and sets *server. */
int cmv_uffd_server_start(int listen_fd, int memory_fd, int kill_peer_on_failure, cmv_uffd_server **server);

/* An eventfd that turns readable once the serving thread has ended (for any reason). */
int cmv_uffd_server_done_fd(const cmv_uffd_server *server);

/* A consistent copy of the counters and state, from any thread. */
void cmv_uffd_server_stats(cmv_uffd_server *server, struct cmv_uffd_stats *out);

/* Asks the thread to end (it answers within one poll). */
void cmv_uffd_server_signal_stop(cmv_uffd_server *server);

/* Stops and joins the thread, unmaps the memory file and closes every descriptor the server
 * owns (the listener and memory file included). The socket file is the caller's to unlink. */
void cmv_uffd_server_free(cmv_uffd_server *server);

#endif
