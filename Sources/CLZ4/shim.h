// liblz4 for the legacy lz4 frame Linux uses (lz4 -l).
#include <lz4.h>
