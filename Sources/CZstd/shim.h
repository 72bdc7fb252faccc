// libzstd for zstd payloads.
#include <zstd.h>
