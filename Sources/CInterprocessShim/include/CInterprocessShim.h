// The one C shim of Interprocess: every call Swift cannot make directly (variadic syscalls, macros,
// GNU-only declarations, packed structs). Internal to the package; never public API.
// Do not define _GNU_SOURCE here: the module would clash with SwiftGlibc. GNU-only calls live in the .c file.
#ifndef CINTERPROCESS_SHIM_H
#define CINTERPROCESS_SHIM_H

#include <stdint.h>
#include <sys/types.h>

/// Peer credentials of a connected Unix socket (SO_PEERCRED). Returns 0 or -1 with errno.
int cipc_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

/// accept4 with SOCK_CLOEXEC | SOCK_NONBLOCK. Returns the fd or -1 with errno.
int cipc_accept_nonblocking(int fd);

/// A socket created with SOCK_CLOEXEC (and SOCK_NONBLOCK when nonblocking != 0).
int cipc_socket(int domain, int type, int nonblocking);

/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC).
int cipc_socketpair(int fds[2]);

/// One event reported by epoll, unpacked (struct epoll_event is packed on x86_64).
typedef struct {
    uint64_t token;
    uint32_t events;
} cipc_event;

enum {
    CIPC_EV_READ = 1,
    CIPC_EV_WRITE = 2,
    CIPC_EV_HUP = 4,
    CIPC_EV_ERROR = 8,
};

int cipc_epoll_create(void);
/// Adds (op 0) or modifies (op 1) a one-shot registration for `events` (CIPC_EV_READ | CIPC_EV_WRITE).
int cipc_epoll_arm(int epfd, int fd, int op, uint32_t events, uint64_t token);
int cipc_epoll_remove(int epfd, int fd);
/// Waits for events; returns the number written to `out`, 0 on timeout or EINTR, -1 with errno.
int cipc_epoll_wait(int epfd, cipc_event *out, int capacity, int timeout_ms);

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK).
int cipc_eventfd(void);

/// A monotonic timerfd (non-blocking, close-on-exec).
int cipc_timerfd(void);
/// Arms the timerfd to fire once after `nanoseconds`.
int cipc_timerfd_arm(int fd, uint64_t nanoseconds);
/// Disarms the timerfd (a pending expiration is cleared too).
int cipc_timerfd_disarm(int fd);

/// writev of up to `count` buffers. Returns bytes written or -1 with errno.
ssize_t cipc_writev(int fd, const void *const *bases, const size_t *lengths, int count);

/// The CPU's spin-loop hint (`pause` on x86, `yield` on ARM).
void cipc_cpu_relax(void);
/// sched_yield(): lets another runnable thread on this CPU run.
void cipc_yield(void);

/// Monotonic clock in nanoseconds.
uint64_t cipc_monotonic_ns(void);

/// posix_spawn of `path` with `argv` (NULL-terminated); `inherit_fd` (if >= 0) becomes fd 3 in the child.
/// stdin/stdout/stderr are inherited. Returns the pid or -1 with errno.
pid_t cipc_spawn(const char *path, char *const argv[], int inherit_fd);

/// Like cipc_spawn with an explicit environment (NULL-terminated "NAME=value" strings).
pid_t cipc_spawn_env(const char *path, char *const argv[], char *const envp[], int inherit_fd);
/// The process's environment (`environ`).
char *const *cipc_environment(void);
/// Makes `fd` non-blocking and close-on-exec. Returns 0 or -1 with errno.
int cipc_set_nonblocking_cloexec(int fd);

/// waitpid decoding: returns 0 when the child exited (exit code in *code), 1 when a signal ended it
/// (signal in *code), -1 with errno on failure.
int cipc_wait(pid_t pid, int *code);

/// The CPU affinity list of this process as a bit mask (first 64 CPUs), or 0 when unknown.
uint64_t cipc_affinity_mask(void);
/// Pins every thread of this process (and so every thread it creates later) to one CPU. Returns 0 or -1.
int cipc_pin_to_cpu(int cpu);

/// Peak resident set size of this process, in KiB.
long cipc_peak_rss_kib(void);

// MARK: Shared memory

/// An anonymous shared-memory file (memfd, close-on-exec) of `size` bytes, sealed against shrinking and
/// growing so that a peer holding it can never make our mapping fault. Returns the fd or -1 with errno.
int cipc_memfd_sealed(const char *name, uint64_t size);
/// Whether `fd` is sealed against shrinking and growing (1), not (0), or cannot be asked (-1).
int cipc_memfd_is_sealed(int fd);
/// Faults in the pages of a shared mapping for writing now (MADV_POPULATE_WRITE, Linux 5.14+), so the first
/// messages through it do not pay a page fault per page. Returns 0, or -1 with errno where not supported.
int cipc_populate_write(void *address, size_t length);
/// Sends `count` descriptors and `length` bytes of data in one message (SCM_RIGHTS). Returns bytes sent or -1.
ssize_t cipc_send_fds(int socket, const int *fds, int count, const void *data, size_t length);
/// Receives up to `capacity` descriptors (close-on-exec) and up to `length` bytes. Returns bytes received
/// (0 at end of stream) or -1 with errno; `*count` is the number of descriptors received. Descriptors beyond
/// `capacity` are closed.
ssize_t cipc_recv_fds(int socket, int *fds, int capacity, int *count, void *data, size_t length);

// Atomic access to words in memory shared with another process (which may not be trusted: these only load
// and store; callers check every value they load).
static inline uint64_t cipc_load_acquire_u64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
static inline void cipc_store_release_u64(void *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }
static inline uint32_t cipc_load_u32(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_SEQ_CST); }
static inline void cipc_store_u32(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t cipc_exchange_u32(void *p, uint32_t v) { return __atomic_exchange_n((uint32_t *)p, v, __ATOMIC_ACQ_REL); }
static inline void cipc_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif
