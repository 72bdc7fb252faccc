// Linux calls that Swift's Glibc module lacks: it is built without _GNU_SOURCE, so
// memfd_create, memmem, fallocate (with FALLOC_FL_*) and the eventfd header are not visible. Header-only: nothing to link.
// This can go when the Glibc module exports them.
#ifndef PVKIT_CLINUX_SHIM_H
#define PVKIT_CLINUX_SHIM_H
#include <stddef.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/epoll.h>
#include <linux/memfd.h>
#include <linux/falloc.h>
#include <sys/types.h>

int memfd_create(const char *name, unsigned int flags);
int fallocate(int fd, int mode, off_t offset, off_t len);
void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen);

#endif
