// liblzo2 for lzop-framed payloads. lzo_init() is a macro, which Swift cannot import.
#include <lzo/lzo1x.h>
static inline int pvkit_lzo_init(void) { return lzo_init(); }
