#define _GNU_SOURCE
#include "cmicrovm_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sched.h>
#include <unistd.h>

int cmv_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

int cmv_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int cmv_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

static int copy_ifname(struct ifreq *ifr, const char *name) {
    memset(ifr, 0, sizeof(*ifr));
    if (name == NULL || strlen(name) == 0 || strlen(name) >= IFNAMSIZ) {
        errno = EINVAL;
        return -1;
    }
    strncpy(ifr->ifr_name, name, IFNAMSIZ - 1);
    return 0;
}

static int tap_open(const char *name, struct ifreq *ifr) {
    if (copy_ifname(ifr, name) < 0) return -1;
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -1;
    ifr->ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(fd, TUNSETIFF, ifr) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int cmv_tap_create(const char *name, int owner_uid) {
    struct ifreq ifr;
    int fd = tap_open(name, &ifr);
    if (fd < 0) return -1;
    if (owner_uid >= 0 && ioctl(fd, TUNSETOWNER, (unsigned long)owner_uid) < 0) goto fail;
    if (ioctl(fd, TUNSETPERSIST, 1UL) < 0) goto fail;
    close(fd);
    return 0;
fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

int cmv_tap_delete(const char *name) {
    struct ifreq ifr;
    int fd = tap_open(name, &ifr);
    if (fd < 0) return -1;
    int rc = ioctl(fd, TUNSETPERSIST, 0UL);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc < 0 ? -1 : 0;
}

int cmv_interface_set_up(const char *name, int up) {
    struct ifreq ifr;
    if (copy_ifname(&ifr, name) < 0) return -1;
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    int rc = ioctl(sock, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        if (up) ifr.ifr_flags |= IFF_UP; else ifr.ifr_flags &= ~IFF_UP;
        rc = ioctl(sock, SIOCSIFFLAGS, &ifr);
    }
    int saved = errno;
    close(sock);
    errno = saved;
    return rc < 0 ? -1 : 0;
}

/* --- Jail support (MicroVMHost/Jail) --- */

#include <linux/fs.h>
#include <sys/statfs.h>
#include <sys/wait.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

int cmv_statfs_magic(const char *path, unsigned long *magic) {
    struct statfs st;
    if (statfs(path, &st) < 0) return -1;
    *magic = (unsigned long)st.f_type;
    return 0;
}

off_t cmv_seek_data(int fd, off_t offset) {
    return lseek(fd, offset, SEEK_DATA);
}

off_t cmv_seek_hole(int fd, off_t offset) {
    return lseek(fd, offset, SEEK_HOLE);
}

int cmv_ficlone(int dst_fd, int src_fd) {
    return ioctl(dst_fd, FICLONE, src_fd) < 0 ? -1 : 0;
}

int cmv_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int cmv_pipe_cloexec_nonblock(int fds[2]) {
    return pipe2(fds, O_CLOEXEC | O_NONBLOCK);
}

int cmv_memfd_cloexec(const char *name) {
    return memfd_create(name, MFD_CLOEXEC);
}

int cmv_is_dumpable(void) {
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
}

int cmv_sched_batch(void) {
    struct sched_param param = {.sched_priority = 0};
    return sched_setscheduler(0, SCHED_BATCH, &param);
}

int cmv_sched_batch_once(void) {
    static __thread int done;
    if (done) return 0;
    done = 1;
    return cmv_sched_batch();
}

int cmv_ofd_read_lock(int fd) {
    struct flock lock;
    memset(&lock, 0, sizeof(lock));
    lock.l_type = F_RDLCK;
    lock.l_whence = SEEK_SET;
    return fcntl(fd, F_OFD_SETLK, &lock);
}

int cmv_ofd_lock_held(int fd) {
    struct flock lock;
    memset(&lock, 0, sizeof(lock));
    lock.l_type = F_WRLCK;
    lock.l_whence = SEEK_SET;
    if (fcntl(fd, F_OFD_GETLK, &lock) < 0) return -1;
    return lock.l_type != F_UNLCK;
}

int cmv_pidfd_reap(int pidfd, int nohang, int *exited, int *value) {
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    if (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED | (nohang ? WNOHANG : 0)) < 0) return -1;
    if (info.si_pid == 0) return 0;
    *exited = info.si_code == CLD_EXITED ? 1 : 0;
    *value = info.si_status;
    return 1;
}

#include <sys/xattr.h>

int cmv_has_access_acl(const char *path) {
    ssize_t size = lgetxattr(path, "system.posix_acl_access", NULL, 0);
    if (size >= 0) return 1;
    if (errno == ENODATA || errno == ENOTSUP) return 0;
    return -1;
}

int cmv_fset_xattr(int fd, const char *name, const void *value, size_t size) {
    return fsetxattr(fd, name, value, size, 0);
}

long cmv_get_xattr(const char *path, const char *name, void *buffer, size_t capacity) {
    return (long)getxattr(path, name, buffer, capacity);
}

int cmv_epoll_create(void) {
    return epoll_create1(EPOLL_CLOEXEC);
}

int cmv_epoll_add_oneshot(int epfd, int fd, unsigned long long token) {
    struct epoll_event event;
    memset(&event, 0, sizeof(event));
    event.events = EPOLLIN | EPOLLONESHOT;
    event.data.u64 = token;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event);
}

int cmv_epoll_remove(int epfd, int fd) {
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
}

int cmv_epoll_wait(int epfd, unsigned long long *tokens, int capacity, int timeout_ms) {
    struct epoll_event events[64];
    if (capacity > 64) capacity = 64;
    int count = epoll_wait(epfd, events, capacity, timeout_ms);
    for (int i = 0; i < count; i++) tokens[i] = events[i].data.u64;
    return count;
}

/* --- Network namespaces (MicroVMHost/Network) --- */

#include <sched.h>

int cmv_netns_enter(const char *path) {
    int previous = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (previous < 0) return -1;
    int target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0) goto fail;
    if (setns(target, CLONE_NEWNET) < 0) {
        int saved = errno;
        close(target);
        errno = saved;
        goto fail;
    }
    close(target);
    return previous;
fail:;
    int saved = errno;
    close(previous);
    errno = saved;
    return -1;
}

int cmv_netns_restore(int previous_fd) {
    int rc = setns(previous_fd, CLONE_NEWNET);
    int saved = errno;
    close(previous_fd);
    errno = saved;
    return rc < 0 ? -1 : 0;
}

int cmv_netns_socket(const char *path, int domain, int type, int protocol) {
    int previous = cmv_netns_enter(path);
    if (previous < 0) return -1;
    int fd = socket(domain, type | SOCK_CLOEXEC, protocol);
    int saved = errno;
    if (cmv_netns_restore(previous) < 0) {
        saved = errno;
        if (fd >= 0) close(fd);
        errno = saved;
        return -1;
    }
    errno = saved;
    return fd;
}

int cmv_netns_tap_attach(const char *path, const char *name) {
    struct ifreq ifr;
    if (copy_ifname(&ifr, name) < 0) return -1;
    int previous = cmv_netns_enter(path);
    if (previous < 0) return -1;
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    int saved = errno;
    if (fd >= 0) {
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        int size = 12;
        if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &size) < 0) {
            saved = errno;
            close(fd);
            fd = -1;
        }
    }
    if (cmv_netns_restore(previous) < 0) {
        saved = errno;
        if (fd >= 0) close(fd);
        fd = -1;
    }
    errno = saved;
    return fd;
}

/* --- The per-VM monitor (microvm-monitor) --- */

#include <spawn.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

extern char **environ;

int cmv_epoll_watch(int epfd, int fd, unsigned int events, unsigned long long token, int modify) {
    struct epoll_event event;
    memset(&event, 0, sizeof(event));
    event.events = events;
    event.data.u64 = token;
    return epoll_ctl(epfd, modify ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &event);
}

int cmv_accept(int listener) {
    return accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int cmv_signalfd_children(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) return -1;
    signal(SIGPIPE, SIG_IGN);
    return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

int cmv_signalfd_drain(int fd) {
    struct signalfd_siginfo info[8];
    while (read(fd, info, sizeof(info)) > 0) {
    }
    return 0;
}

int cmv_unix_listen(const char *path, int backlog) {
    struct sockaddr_un address;
    memset(&address, 0, sizeof(address));
    address.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(address.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strncpy(address.sun_path, path, sizeof(address.sun_path) - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    unlink(path);
    mode_t previous = umask(0177);
    int bound = bind(fd, (struct sockaddr *)&address, sizeof(address));
    umask(previous);
    if (bound < 0 || listen(fd, backlog) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int cmv_spawn(const char *path, char *const argv[], const char *cwd, int in, int out, int err, int flags, pid_t *pid, int *pidfd) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    if (pidfd != NULL) *pidfd = -1;
    if (posix_spawn_file_actions_init(&actions) != 0) return -1;
    if (posix_spawnattr_init(&attributes) != 0) {
        posix_spawn_file_actions_destroy(&actions);
        return -1;
    }
    int result = posix_spawn_file_actions_adddup2(&actions, in, 0);
    if (result == 0) result = posix_spawn_file_actions_adddup2(&actions, out, 1);
    if (result == 0) result = posix_spawn_file_actions_adddup2(&actions, err, 2);
    if (result == 0 && cwd != NULL) result = posix_spawn_file_actions_addchdir_np(&actions, cwd);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    if (result == 0 && (flags & CMV_SPAWN_CLOSE_OTHERS)) result = posix_spawn_file_actions_addclosefrom_np(&actions, 3);
#endif
    /* (An older C library has no close-from action: the driver's own descriptors are all
     * close-on-exec, and only a descriptor the embedding process left without it could leak.) */
    sigset_t empty, defaults;
    sigemptyset(&empty);
    sigfillset(&defaults);
    short spawnFlags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (flags & CMV_SPAWN_NEW_SESSION) spawnFlags |= POSIX_SPAWN_SETSID;
    if (result == 0) result = posix_spawnattr_setsigmask(&attributes, &empty);
    if (result == 0) result = posix_spawnattr_setsigdefault(&attributes, &defaults);
    if (result == 0) result = posix_spawnattr_setflags(&attributes, spawnFlags);
    if (result == 0) result = posix_spawn(pid, path, &actions, &attributes, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    if (result != 0) {
        errno = result;
        return -1;
    }
    /* The child is ours and unreaped: its pid cannot have been recycled yet. */
    if (pidfd != NULL) *pidfd = (int)syscall(SYS_pidfd_open, *pid, 0);
    return 0;
}

int cmv_reap_any(pid_t *pid, int *exited, int *value) {
    int status = 0;
    pid_t reaped = waitpid(-1, &status, WNOHANG);
    if (reaped < 0) return -1;
    if (reaped == 0) return 0;
    *pid = reaped;
    if (WIFEXITED(status)) {
        *exited = 1;
        *value = WEXITSTATUS(status);
    } else {
        *exited = 0;
        *value = WTERMSIG(status);
    }
    return 1;
}

/* --- Signals caught into a pipe (the command line's Interrupts) --- */

static volatile int cmv_signal_pipe_fd = -1;

static void cmv_signal_to_pipe(int signo) {
    int saved = errno;
    unsigned char byte = (unsigned char)signo;
    if (cmv_signal_pipe_fd >= 0) (void)write(cmv_signal_pipe_fd, &byte, 1);
    errno = saved;
}

int cmv_catch_signal_into_pipe(int signo, int write_fd) {
    cmv_signal_pipe_fd = write_fd;
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = cmv_signal_to_pipe;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    return sigaction(signo, &action, NULL);
}
