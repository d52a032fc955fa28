#define _GNU_SOURCE
#include "CInterprocessShim.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sched.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int cipc_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int cipc_accept_nonblocking(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); }

int cipc_socket(int domain, int type, int nonblocking) {
    return socket(domain, type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
}

int cipc_socketpair(int fds[2]) { return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds); }

int cipc_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int cipc_epoll_arm(int epfd, int fd, int op, uint32_t events, uint64_t token) {
    struct epoll_event ev;
    ev.events = EPOLLONESHOT | EPOLLRDHUP;
    if (events & CIPC_EV_READ) ev.events |= EPOLLIN;
    if (events & CIPC_EV_WRITE) ev.events |= EPOLLOUT;
    ev.data.u64 = token;
    return epoll_ctl(epfd, op == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev);
}

int cipc_epoll_remove(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }

int cipc_epoll_wait(int epfd, cipc_event *out, int capacity, int timeout_ms) {
    struct epoll_event evs[64];
    if (capacity > 64) capacity = 64;
    int n = epoll_wait(epfd, evs, capacity, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -1;
    for (int i = 0; i < n; i++) {
        uint32_t e = 0;
        if (evs[i].events & EPOLLIN) e |= CIPC_EV_READ;
        if (evs[i].events & EPOLLOUT) e |= CIPC_EV_WRITE;
        if (evs[i].events & (EPOLLHUP | EPOLLRDHUP)) e |= CIPC_EV_HUP;
        if (evs[i].events & EPOLLERR) e |= CIPC_EV_ERROR;
        out[i].token = evs[i].data.u64;
        out[i].events = e;
    }
    return n;
}

int cipc_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int cipc_timerfd(void) { return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC); }

int cipc_timerfd_arm(int fd, uint64_t nanoseconds) {
    struct itimerspec spec = {0};
    spec.it_value.tv_sec = (time_t)(nanoseconds / 1000000000ull);
    spec.it_value.tv_nsec = (long)(nanoseconds % 1000000000ull);
    if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) spec.it_value.tv_nsec = 1;
    return timerfd_settime(fd, 0, &spec, NULL);
}

int cipc_timerfd_disarm(int fd) {
    struct itimerspec spec = {0};
    return timerfd_settime(fd, 0, &spec, NULL);
}

ssize_t cipc_writev(int fd, const void *const *bases, const size_t *lengths, int count) {
    struct iovec iov[64];
    if (count > 64) count = 64;
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = (void *)bases[i];
        iov[i].iov_len = lengths[i];
    }
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)count;
    return sendmsg(fd, &msg, MSG_NOSIGNAL);
}

void cipc_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

uint64_t cipc_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

pid_t cipc_spawn(const char *path, char *const argv[], int inherit_fd) {
    return cipc_spawn_env(path, argv, environ, inherit_fd);
}

pid_t cipc_spawn_env(const char *path, char *const argv[], char *const envp[], int inherit_fd) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (inherit_fd >= 0) posix_spawn_file_actions_adddup2(&actions, inherit_fd, 3);
    pid_t pid;
    int rc = posix_spawn(&pid, path, &actions, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    return pid;
}

int cipc_wait(pid_t pid, int *code) {
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, 0);
        if (r >= 0) break;
        if (errno != EINTR) return -1;
    }
    if (WIFEXITED(status)) {
        *code = WEXITSTATUS(status);
        return 0;
    }
    *code = WIFSIGNALED(status) ? WTERMSIG(status) : -1;
    return 1;
}

uint64_t cipc_affinity_mask(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;
    uint64_t mask = 0;
    for (int i = 0; i < 64; i++)
        if (CPU_ISSET(i, &set)) mask |= (1ull << i);
    return mask;
}

int cipc_pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    DIR *dir = opendir("/proc/self/task");
    if (!dir) return sched_setaffinity(0, sizeof(set), &set);
    int rc = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.') continue;
        pid_t tid = (pid_t)atoi(entry->d_name);
        if (sched_setaffinity(tid, sizeof(set), &set) != 0) rc = -1;
    }
    closedir(dir);
    return rc;
}

long cipc_peak_rss_kib(void) {
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0) return -1;
    return usage.ru_maxrss;
}

int cipc_memfd_sealed(const char *name, uint64_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

int cipc_memfd_is_sealed(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) return -1;
    return (seals & F_SEAL_SHRINK) && (seals & F_SEAL_GROW) ? 1 : 0;
}

ssize_t cipc_send_fds(int socket, const int *fds, int count, const void *data, size_t length) {
    if (count < 0 || count > 8) { errno = EINVAL; return -1; }
    char control[CMSG_SPACE(sizeof(int) * 8)];
    memset(control, 0, sizeof control);
    struct iovec iov = { (void *)data, length };
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (count > 0) {
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)count);
    }
    ssize_t n;
    do { n = sendmsg(socket, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t cipc_recv_fds(int socket, int *fds, int capacity, int *count, void *data, size_t length) {
    char control[CMSG_SPACE(sizeof(int) * 16)];
    struct iovec iov = { data, length };
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    *count = 0;
    ssize_t n;
    do { n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int received = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *incoming = (int *)CMSG_DATA(c);
        for (int i = 0; i < received; i++) {
            if (*count < capacity) fds[(*count)++] = incoming[i];
            else close(incoming[i]);
        }
    }
    return n;
}

char *const *cipc_environment(void) { return environ; }

int cipc_set_nonblocking_cloexec(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return -1;
    int fdflags = fcntl(fd, F_GETFD);
    if (fdflags < 0 || fcntl(fd, F_SETFD, fdflags | FD_CLOEXEC) != 0) return -1;
    return 0;
}

void cipc_yield(void) { sched_yield(); }

int cipc_populate_write(void *address, size_t length) {
#ifdef MADV_POPULATE_WRITE
    return madvise(address, length, MADV_POPULATE_WRITE);
#else
    return madvise(address, length, 23 /* MADV_POPULATE_WRITE */);
#endif
}
