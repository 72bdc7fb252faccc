// libqcow (libyal) for QEMU copy-on-write disk images, read-only.
#include <libqcow.h>
