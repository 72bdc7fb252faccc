/*
 * Lets Xen's C xenstored (xen-utils-4.17) run without a hypervisor, as a dom0-only store, so
 * that PVKit's tests and benchmarks can use it as the reference peer. It answers the few
 * hypervisor calls xenstored makes, in-process:
 *   - libxenctrl: open/close succeed; every queried domain exists and runs;
 *   - libxenevtchn: an eventfd that never fires; ports count up; everything succeeds;
 *   - libxengnttab: a map returns a fresh anonymous shared page;
 *   - open("/proc/xen/xsd_port") / open("/proc/xen/xsd_kva"): small memfds.
 * Built by the tests: cc -shared -fPIC -O2 -o xenstored-preload.so xenstored-preload.c -ldl
 * (written for PVKit from the libxen-dev 4.17 headers' declarations).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

static int dummy_handle;

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger, unsigned open_flags) {
    (void)logger; (void)dombuild_logger; (void)open_flags;
    return (xc_interface *)&dummy_handle;
}

int xc_interface_close(xc_interface *xch) { (void)xch; return 0; }

int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info) {
    (void)xch;
    if (max_doms < 1) return 0;
    memset(info, 0, sizeof(*info));
    info->domid = first_domid;
    info->running = 1;
    return 1;
}

struct fake_evtchn { int fd; evtchn_port_t next; };

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags) {
    (void)logger; (void)flags;
    struct fake_evtchn *e = calloc(1, sizeof(*e));
    e->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    e->next = 1;
    return (xenevtchn_handle *)e;
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd, unsigned open_flags) {
    (void)fd;
    return xenevtchn_open(logger, open_flags);
}

int xenevtchn_close(xenevtchn_handle *xce) {
    struct fake_evtchn *e = (struct fake_evtchn *)xce;
    if (e) { close(e->fd); free(e); }
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce) { return ((struct fake_evtchn *)xce)->fd; }
int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port) { (void)xce; (void)port; return 0; }
xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq) {
    (void)virq;
    return ((struct fake_evtchn *)xce)->next++;
}
xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid, evtchn_port_t remote_port) {
    (void)domid; (void)remote_port;
    return ((struct fake_evtchn *)xce)->next++;
}
int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port) { (void)xce; (void)port; return 0; }
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce) { (void)xce; return -1; }
int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port) { (void)xce; (void)port; return 0; }

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags) {
    (void)logger; (void)open_flags;
    return (xengnttab_handle *)&dummy_handle;
}
int xengnttab_close(xengnttab_handle *xgt) { (void)xgt; return 0; }
int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants) { (void)xgt; (void)nr_grants; return 0; }
void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot) {
    (void)xgt; (void)domid; (void)ref; (void)prot;
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return page == MAP_FAILED ? NULL : page;
}
int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count) {
    (void)xgt;
    return munmap(start_address, count * 4096);
}

static int memfd_with(const char *name, const char *content, size_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) { close(fd); return -1; }
    if (content && write(fd, content, strlen(content)) < 0) { close(fd); return -1; }
    lseek(fd, 0, SEEK_SET);
    return fd;
}

int open(const char *path, int flags, ...) {
    static int (*real_open)(const char *, int, ...);
    if (!real_open) real_open = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    if (strcmp(path, "/proc/xen/xsd_port") == 0) return memfd_with("xsd_port", "1", 1);
    if (strcmp(path, "/proc/xen/xsd_kva") == 0) return memfd_with("xsd_kva", NULL, 4096);
    mode_t mode = 0;
    if (flags & O_CREAT) {
        va_list args;
        va_start(args, flags);
        mode = (mode_t)va_arg(args, int);
        va_end(args);
    }
    return real_open(path, flags, mode);
}
