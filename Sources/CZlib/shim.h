// zlib for gzip payloads and IKCONFIG.
#include <zlib.h>
