// libvmdk (libyal) for VMware VMDK disk images, read-only.
#include <libvmdk.h>
