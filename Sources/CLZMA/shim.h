// liblzma for xz and legacy lzma ("lzma-alone") payloads.
#include <lzma.h>
