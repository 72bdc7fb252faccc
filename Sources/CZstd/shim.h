// libzstd for zstd payloads.
#include <zstd.h>
#include <zstd_errors.h>
