// libvhdi (libyal) for Microsoft VHD and VHDX disk images, read-only.
#include <libvhdi.h>
