// libblkid (util-linux) for partition tables and file-system superblocks.
#include <blkid/blkid.h>
