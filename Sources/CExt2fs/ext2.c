#include "pvkit_ext2.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ext2fs/ext2fs.h>
#include <et/com_err.h>

// The disk behind one io channel: a read callback and the file system's byte range.
struct pvkit_disk {
    pvkit_ext2_read_fn read;
    void *context;
    uint64_t offset;
    uint64_t size;
    int block_size;
    // libext2fs reads a file one block at a time: a read-ahead window turns a file's blocks
    // into one callback per 256 KiB. `cache_start` is an offset within the file system.
    uint8_t *cache;
    uint64_t cache_start;
    size_t cache_length;
    // Where the last read ended: a read that starts there is sequential and reads ahead.
    uint64_t last_end;
};

enum { PVKIT_CACHE_SIZE = 256 * 1024 };

struct pvkit_ext2 {
    ext2_filsys fs;
    struct pvkit_disk *disk;
};

static struct struct_io_manager pvkit_io_manager;

// The channel's name carries the disk's address ("pvkit:%p"): libext2fs opens channels by name.
static errcode_t pvkit_io_open(const char *name, int flags, io_channel *channel) {
    struct pvkit_disk *disk = NULL;
    if (name == NULL || sscanf(name, "pvkit:%p", (void **)&disk) != 1 || disk == NULL) return EXT2_ET_BAD_DEVICE_NAME;
    if (flags & IO_FLAG_RW) return EROFS;
    io_channel io = calloc(1, sizeof(*io));
    if (io == NULL) return EXT2_ET_NO_MEMORY;
    io->magic = EXT2_ET_MAGIC_IO_CHANNEL;
    io->manager = &pvkit_io_manager;
    io->name = strdup(name);
    if (io->name == NULL) {
        free(io);
        return EXT2_ET_NO_MEMORY;
    }
    io->block_size = 1024;
    io->refcount = 1;
    io->private_data = disk;
    disk->block_size = 1024;
    *channel = io;
    return 0;
}

static errcode_t pvkit_io_close(io_channel channel) {
    if (--channel->refcount > 0) return 0;
    free(channel->name);
    free(channel);
    return 0;
}

static errcode_t pvkit_io_set_blksize(io_channel channel, int size) {
    if (size <= 0) return EXT2_ET_INVALID_ARGUMENT;
    channel->block_size = size;
    ((struct pvkit_disk *)channel->private_data)->block_size = size;
    return 0;
}

static errcode_t pvkit_io_read64(io_channel channel, unsigned long long block, int count, void *data) {
    struct pvkit_disk *disk = channel->private_data;
    // A negative count is a byte count (libext2fs's convention).
    uint64_t bytes = count < 0 ? (uint64_t)(-(int64_t)count) : (uint64_t)count * (uint64_t)channel->block_size;
    uint64_t start;
    if (__builtin_mul_overflow((uint64_t)block, (uint64_t)channel->block_size, &start)) return EXT2_ET_LLSEEK_FAILED;
    uint64_t end;
    if (__builtin_add_overflow(start, bytes, &end) || end > disk->size) {
        // Past the partition: what a short device returns.
        return EXT2_ET_SHORT_READ;
    }
    int sequential = start == disk->last_end;
    disk->last_end = end;
    int cached = disk->cache_length > 0 && start >= disk->cache_start && end <= disk->cache_start + disk->cache_length;
    if (!cached && (bytes > PVKIT_CACHE_SIZE || disk->cache == NULL || !sequential)) {
        int error = disk->read(disk->context, disk->offset + start, data, (size_t)bytes);
        return error == 0 ? 0 : (errcode_t)error;
    }
    if (!cached) {
        uint64_t length = disk->size - start < PVKIT_CACHE_SIZE ? disk->size - start : PVKIT_CACHE_SIZE;
        disk->cache_length = 0;
        int error = disk->read(disk->context, disk->offset + start, disk->cache, (size_t)length);
        if (error != 0) return (errcode_t)error;
        disk->cache_start = start;
        disk->cache_length = (size_t)length;
    }
    memcpy(data, disk->cache + (start - disk->cache_start), (size_t)bytes);
    return 0;
}

static errcode_t pvkit_io_read(io_channel channel, unsigned long block, int count, void *data) {
    return pvkit_io_read64(channel, block, count, data);
}

static errcode_t pvkit_io_refuse_write(io_channel channel, unsigned long block, int count, const void *data) {
    (void)channel; (void)block; (void)count; (void)data;
    return EROFS;
}

static errcode_t pvkit_io_refuse_write64(io_channel channel, unsigned long long block, int count, const void *data) {
    (void)channel; (void)block; (void)count; (void)data;
    return EROFS;
}

static errcode_t pvkit_io_refuse_write_byte(io_channel channel, unsigned long offset, int count, const void *data) {
    (void)channel; (void)offset; (void)count; (void)data;
    return EROFS;
}

static errcode_t pvkit_io_flush(io_channel channel) {
    (void)channel;
    return 0;
}

static errcode_t pvkit_io_set_option(io_channel channel, const char *option, const char *arg) {
    (void)channel; (void)option; (void)arg;
    return EXT2_ET_INVALID_ARGUMENT;
}

static struct struct_io_manager pvkit_io_manager = {
    .magic = EXT2_ET_MAGIC_IO_MANAGER,
    .name = "pvkit read-only disk image",
    .open = pvkit_io_open,
    .close = pvkit_io_close,
    .set_blksize = pvkit_io_set_blksize,
    .read_blk = pvkit_io_read,
    .write_blk = pvkit_io_refuse_write,
    .flush = pvkit_io_flush,
    .write_byte = pvkit_io_refuse_write_byte,
    .set_option = pvkit_io_set_option,
    .read_blk64 = pvkit_io_read64,
    .write_blk64 = pvkit_io_refuse_write64,
};

long pvkit_ext2_open(pvkit_ext2_read_fn read, void *context, uint64_t offset, uint64_t size, pvkit_ext2 **out) {
    static int tables_loaded = 0;
    if (!__atomic_exchange_n(&tables_loaded, 1, __ATOMIC_ACQ_REL)) initialize_ext2_error_table();
    struct pvkit_ext2 *handle = calloc(1, sizeof(*handle));
    struct pvkit_disk *disk = calloc(1, sizeof(*disk));
    if (handle == NULL || disk == NULL) {
        free(handle);
        free(disk);
        return EXT2_ET_NO_MEMORY;
    }
    disk->cache = malloc(PVKIT_CACHE_SIZE);
    disk->read = read;
    disk->context = context;
    disk->offset = offset;
    disk->size = size;
    char name[64];
    snprintf(name, sizeof(name), "pvkit:%p", (void *)disk);
    ext2_filsys fs = NULL;
    errcode_t error = ext2fs_open2(name, NULL, EXT2_FLAG_64BITS, 0, 0, &pvkit_io_manager, &fs);
    if (error != 0) {
        free(disk->cache);
        free(disk);
        free(handle);
        return (long)error;
    }
    handle->fs = fs;
    handle->disk = disk;
    *out = handle;
    return 0;
}

void pvkit_ext2_close(pvkit_ext2 *handle) {
    if (handle == NULL) return;
    ext2fs_close_free(&handle->fs);
    free(handle->disk->cache);
    free(handle->disk);
    free(handle);
}

long pvkit_ext2_stat(pvkit_ext2 *handle, const char *path, uint32_t *inode, uint16_t *mode, uint64_t *size) {
    ext2_ino_t ino = 0;
    errcode_t error = ext2fs_namei(handle->fs, EXT2_ROOT_INO, EXT2_ROOT_INO, path, &ino);
    if (error != 0) return (long)error;
    struct ext2_inode node;
    error = ext2fs_read_inode(handle->fs, ino, &node);
    if (error != 0) return (long)error;
    *inode = ino;
    *mode = node.i_mode;
    *size = EXT2_I_SIZE(&node);
    return 0;
}

long pvkit_ext2_read(pvkit_ext2 *handle, uint32_t inode, uint64_t offset, void *buffer, size_t count, size_t *got) {
    ext2_file_t file = NULL;
    *got = 0;
    errcode_t error = ext2fs_file_open(handle->fs, inode, 0, &file);
    if (error != 0) return (long)error;
    error = ext2fs_file_llseek(file, offset, EXT2_SEEK_SET, NULL);
    while (error == 0 && *got < count) {
        unsigned int chunk = count - *got > (1u << 30) ? (1u << 30) : (unsigned int)(count - *got);
        unsigned int n = 0;
        error = ext2fs_file_read(file, (char *)buffer + *got, chunk, &n);
        if (error != 0 || n == 0) break;
        *got += n;
    }
    errcode_t closed = ext2fs_file_close(file);
    return (long)(error != 0 ? error : closed);
}

long pvkit_ext2_readlink(pvkit_ext2 *handle, uint32_t inode, char *buffer, size_t capacity, size_t *length) {
    struct ext2_inode node;
    errcode_t error = ext2fs_read_inode(handle->fs, inode, &node);
    if (error != 0) return (long)error;
    if (!LINUX_S_ISLNK(node.i_mode)) return EXT2_ET_INVALID_ARGUMENT;
    uint64_t size = EXT2_I_SIZE(&node);
    *length = (size_t)size;
    if (node.i_flags & EXT4_INLINE_DATA_FL) {
        if (size > capacity) return EXT2_ET_INVALID_ARGUMENT;
        size_t inline_size = 0;
        char inline_buffer[EXT2_N_BLOCKS * 4 + 256];
        error = ext2fs_inline_data_size(handle->fs, inode, &inline_size);
        if (error != 0) return (long)error;
        if (inline_size > sizeof(inline_buffer)) return EXT2_ET_INVALID_ARGUMENT;
        error = ext2fs_inline_data_get(handle->fs, inode, &node, inline_buffer, &inline_size);
        if (error != 0) return (long)error;
        memcpy(buffer, inline_buffer, size < inline_size ? size : inline_size);
        return 0;
    }
    if (ext2fs_is_fast_symlink(&node)) {
        if (size > sizeof(node.i_block) || size > capacity) return EXT2_ET_INVALID_ARGUMENT;
        memcpy(buffer, node.i_block, (size_t)size);
        return 0;
    }
    size_t got = 0;
    if (size > capacity) return EXT2_ET_INVALID_ARGUMENT;
    error = pvkit_ext2_read(handle, inode, 0, buffer, (size_t)size, &got);
    if (error == 0 && got != size) return EXT2_ET_SHORT_READ;
    return (long)error;
}

struct pvkit_list_context {
    pvkit_ext2_entry_fn entry;
    void *context;
};

static int pvkit_list_one(ext2_ino_t dir, int entry, struct ext2_dir_entry *dirent, int offset, int blocksize, char *buf, void *priv) {
    (void)dir; (void)offset; (void)blocksize; (void)buf;
    if (entry == DIRENT_DOT_FILE || entry == DIRENT_DOT_DOT_FILE) return 0;
    struct pvkit_list_context *list = priv;
    int length = ext2fs_dirent_name_len(dirent);
    return list->entry(list->context, dirent->name, (size_t)length) ? DIRENT_ABORT : 0;
}

long pvkit_ext2_list(pvkit_ext2 *handle, uint32_t inode, pvkit_ext2_entry_fn entry, void *context) {
    struct pvkit_list_context list = {entry, context};
    return (long)ext2fs_dir_iterate2(handle->fs, inode, 0, NULL, pvkit_list_one, &list);
}

void pvkit_ext2_identity(pvkit_ext2 *handle, uint8_t uuid[16], char label[17]) {
    memcpy(uuid, handle->fs->super->s_uuid, 16);
    memcpy(label, handle->fs->super->s_volume_name, 16);
    label[16] = 0;
}

const char *pvkit_ext2_message(long code) {
    return error_message((errcode_t)code);
}
