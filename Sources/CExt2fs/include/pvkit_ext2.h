// A read-only view of an ext2/3/4 file system inside a disk image, on libext2fs (e2fsprogs),
// reading through a callback instead of a device: the image may be raw or qcow2.
#ifndef PVKIT_EXT2_H
#define PVKIT_EXT2_H

#include <stddef.h>
#include <stdint.h>

/// Reads `count` bytes at `offset` of the disk into `buffer`; returns 0 or an errno value.
typedef int (*pvkit_ext2_read_fn)(void *context, uint64_t offset, void *buffer, size_t count);
/// Called once per directory entry; returns 0 to go on, nonzero to stop.
typedef int (*pvkit_ext2_entry_fn)(void *context, const char *name, size_t length);

typedef struct pvkit_ext2 pvkit_ext2;

/// Opens the file system that starts at `offset` of the disk and spans `size` bytes, read-only.
/// Returns 0 or a libext2fs error code (see pvkit_ext2_message).
long pvkit_ext2_open(pvkit_ext2_read_fn read, void *context, uint64_t offset, uint64_t size, pvkit_ext2 **out);
void pvkit_ext2_close(pvkit_ext2 *fs);

/// Looks up an absolute path whose components are not symbolic links (the last one may be).
/// Fills the inode number, its mode and size. Returns 0, or a libext2fs error code.
long pvkit_ext2_stat(pvkit_ext2 *fs, const char *path, uint32_t *inode, uint16_t *mode, uint64_t *size);
/// Reads up to `count` bytes at `offset` of a regular file (or a slow symlink); `*got` is what was read.
long pvkit_ext2_read(pvkit_ext2 *fs, uint32_t inode, uint64_t offset, void *buffer, size_t count, size_t *got);
/// The target of a symbolic link, up to `capacity` bytes; `*length` is its full length.
long pvkit_ext2_readlink(pvkit_ext2 *fs, uint32_t inode, char *buffer, size_t capacity, size_t *length);
/// Calls `entry` for each name in a directory (without "." and "..").
long pvkit_ext2_list(pvkit_ext2 *fs, uint32_t inode, pvkit_ext2_entry_fn entry, void *context);
/// The file system's UUID (16 bytes) and volume label (up to 16 bytes, NUL-padded).
void pvkit_ext2_identity(pvkit_ext2 *fs, uint8_t uuid[16], char label[17]);
/// A libext2fs (com_err) error code as text.
const char *pvkit_ext2_message(long code);

#endif
