// Linux calls that Swift's Glibc module lacks: it is built without _GNU_SOURCE, so
// memfd_create, memmem, fallocate (with FALLOC_FL_*), pipe2, accept4, pthread_setname_np, pidfd_open and the eventfd header are not visible. Header-only: nothing to link.
// This can go when the Glibc module exports them.
#ifndef PVKIT_CLINUX_SHIM_H
#define PVKIT_CLINUX_SHIM_H
#include <stddef.h>
#include <errno.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/epoll.h>
#include <linux/memfd.h>
#include <linux/falloc.h>
#include <sys/types.h>

int memfd_create(const char *name, unsigned int flags);
int fallocate(int fd, int mode, off_t offset, off_t len);
void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen);
int pipe2(int pipefd[2], int flags);
#include <sys/socket.h>
int accept4(int sockfd, struct sockaddr *addr, socklen_t *addrlen, int flags);
#include <pthread.h>
int pthread_setname_np(pthread_t thread, const char *name);
#include <sys/syscall.h>
#include <unistd.h>
/// pidfd_open(2): a descriptor that becomes readable when the process ends (glibc 2.36 has
/// the wrapper only in <sys/pidfd.h>, which Swift's Glibc module does not include).
static inline int pvkit_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <linux/if_tun.h>

/// Opens (creating if needed) the TAP device `name` in this process's network namespace:
/// Ethernet frames, no packet-information prefix. With `offloads`, each frame is preceded by
/// a 10-byte `virtio_net_hdr` (IFF_VNET_HDR) and the device takes and gives partial checksums
/// and TCP segments up to 64 KiB (TUNSETOFFLOAD: CSUM, TSO4, TSO6). Returns the descriptor,
/// or -1 with errno.
static inline int pvkit_tap_open(const char *name, int offloads) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -1;
    struct ifreq request;
    memset(&request, 0, sizeof request);
    request.ifr_flags = IFF_TAP | IFF_NO_PI | (offloads ? IFF_VNET_HDR : 0);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &request) < 0) { int e = errno; close(fd); errno = e; return -1; }
    if (offloads && ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) < 0) {
        int e = errno; close(fd); errno = e; return -1;
    }
    return fd;
}

/// Sets an interface of this network namespace up, and its MAC address when `mac` is not
/// NULL (6 bytes). Returns 0, or -1 with errno.
static inline int pvkit_link_up(const char *name, const unsigned char *mac) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    if (mac) {
        request.ifr_hwaddr.sa_family = ARPHRD_ETHER;
        memcpy(request.ifr_hwaddr.sa_data, mac, 6);
        if (ioctl(s, SIOCSIFHWADDR, &request) < 0) { int e = errno; close(s); errno = e; return -1; }
    }
    if (ioctl(s, SIOCGIFFLAGS, &request) < 0) { int e = errno; close(s); errno = e; return -1; }
    request.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &request) < 0) { int e = errno; close(s); errno = e; return -1; }
    close(s);
    return 0;
}

#include <signal.h>
#include <pthread.h>

/// Where the handler below writes: the write end of a pipe owned by TerminationSignals.
static int pvkit_signal_pipe = -1;

/// The signal handler: one byte (the signal's number) on the pipe, nothing else (write(2) is
/// async-signal-safe; errno is kept for the interrupted code).
static void pvkit_signal_note(int number) {
    int saved = errno;
    unsigned char byte = (unsigned char)number;
    ssize_t ignored = write(pvkit_signal_pipe, &byte, 1);
    (void)ignored;
    errno = saved;
}

/// Catches `number` with the handler above, writing to `pipe_write` (non-blocking), and unblocks
/// it in the calling thread. sigaction replaces the default action in one step: the signal is
/// never ignored or lost in between, as it can be when SIG_IGN is set first and a dispatch
/// source armed later. 0, or -1 (errno set by sigaction; pthread_sigmask fails only on a bad
/// argument).
static inline int pvkit_signal_catch(int number, int pipe_write) {
    pvkit_signal_pipe = pipe_write;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = pvkit_signal_note;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    if (sigaction(number, &action, NULL) != 0) return -1;
    // A process may start with it blocked (a parent's thread mask survives exec; Foundation's
    // Process launches from libdispatch threads that block nearly everything): unblock it here.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, number);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL) == 0 ? 0 : -1;
}

#endif

#include <setjmp.h>

/// Guarded copies out of a mapped file: touching a page the file no longer has (it was
/// truncated, or the device failed to read it) raises SIGBUS; inside a guarded copy the handler
/// jumps back and the copy fails instead of the process dying.
///
/// The escape of this thread's guarded copy in progress (NULL: none).
static __thread sigjmp_buf *pvkit_copy_escape = NULL;
/// The SIGBUS action before ours (for faults outside guarded copies).
static struct sigaction pvkit_sigbus_previous = { 0 };

static void pvkit_sigbus(int number, siginfo_t *info, void *context) {
    (void)number; (void)info; (void)context;
    sigjmp_buf *escape = pvkit_copy_escape;
    if (escape != NULL) {
        pvkit_copy_escape = NULL;
        siglongjmp(*escape, 1);
    }
    // Not ours: the previous action takes the fault when the instruction runs again.
    sigaction(SIGBUS, &pvkit_sigbus_previous, NULL);
}

/// Installs the SIGBUS handler for guarded copies (once per process). SA_NODEFER: the jump
/// out of the handler leaves SIGBUS unblocked without saving the signal mask per copy.
static inline int pvkit_guard_copies(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = pvkit_sigbus;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    return sigaction(SIGBUS, &action, &pvkit_sigbus_previous);
}

/// memcpy that returns -1 instead of dying when `from` faults (SIGBUS); 0 when copied.
static inline int pvkit_guarded_copy(void *to, const void *from, size_t count) {
    sigjmp_buf escape;
    if (sigsetjmp(escape, 0) != 0) return -1;
    pvkit_copy_escape = &escape;
    memcpy(to, from, count);
    pvkit_copy_escape = NULL;
    return 0;
}

/// ThreadSanitizer's annotations, weak so that they are null outside a `--sanitize=thread`
/// build. Synchronization.Mutex locks through a futex in the uninstrumented standard library
/// on Linux, so ThreadSanitizer sees no ordering between two holders of it; PVSystem's
/// `Locked` names each acquire and release here.
extern void __tsan_acquire(void *address) __attribute__((weak));
extern void __tsan_release(void *address) __attribute__((weak));
static inline void pvkit_tsan_acquire(void *address) { if (__tsan_acquire) __tsan_acquire(address); }
static inline void pvkit_tsan_release(void *address) { if (__tsan_release) __tsan_release(address); }
